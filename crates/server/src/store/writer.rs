//! The group-commit writer: one task per store owns the write connection and
//! turns every queued mailbox write into one transaction per batch.
//!
//! After a batch commits, and before any caller hears back, the writer tells
//! the [`CommitListener`] about every new entry in commit (seq) order. Live
//! pushes therefore leave in exactly the order a later fetch would return
//! them, and a push never depends on the sender's connection still being
//! there to make it.

use async_trait::async_trait;
use std::sync::Arc;
use telepound_protocol::message::{GroupMember, Role, UnixMillis};
use telepound_protocol::{GroupName, MsgId, UserName};
use tokio::sync::{mpsc, oneshot};

use super::groups::{GroupDone, GroupOp, GroupResult};
use super::{AckedEntry, EntryKind, NewEntry, Result, StoreError, StoredEntry};

/// Writer tuning.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// Most operations in one transaction.
    pub max_batch: usize,
    /// Queue length before callers wait.
    pub queue: usize,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            max_batch: 1024,
            queue: 8192,
        }
    }
}

/// Told about committed mailbox changes, from the writer task, in commit
/// order. The server's hub implements it to push live.
pub trait CommitListener: Send + Sync + 'static {
    /// A new entry for `recipient` is durable.
    fn stored(&self, recipient: &UserName, entry: StoredEntry);
    /// `to` acknowledged `msg_id`, which `sender` sent: a live notice for
    /// the sender's connections. When the receipt was also stored, it comes
    /// after [`CommitListener::stored`] for that receipt, and only
    /// connections that are not synced take notice of it (a one-shot
    /// `send` waiting for its receipt).
    fn delivered(&self, sender: &UserName, msg_id: MsgId, to: &UserName, at: UnixMillis);
    /// Asked inside the transaction: whether the receipt for a message of
    /// `sender` must be stored (the sender has no live connection to tell).
    fn must_store_receipt(&self, sender: &UserName) -> bool;
    /// A batch of `ops` operations committed in `elapsed`.
    fn batch_committed(&self, _ops: usize, _elapsed: std::time::Duration) {}
}

/// A listener that hears nothing and stores no receipts (store tests).
pub struct Quiet;

impl CommitListener for Quiet {
    fn stored(&self, _: &UserName, _: StoredEntry) {}
    fn delivered(&self, _: &UserName, _: MsgId, _: &UserName, _: UnixMillis) {}
    fn must_store_receipt(&self, _: &UserName) -> bool {
        false
    }
}

/// One queued write.
pub(crate) enum WriteOp {
    Insert(Vec<NewEntry>),
    Ack {
        recipient: UserName,
        seqs: Vec<i64>,
        now: UnixMillis,
        receipt_expires_at: UnixMillis,
    },
    Expire {
        now: UnixMillis,
    },
    Group {
        op: GroupOp,
        max: usize,
        now: UnixMillis,
    },
}

/// What a write produced.
pub(crate) enum WriteResult {
    Inserted(Vec<Option<i64>>),
    Acked(u64),
    Expired(u64),
    Group(GroupResult),
}

/// The statements a backend offers on its single write connection. The
/// batch logic (transactions, receipts, notices, recovery) is shared.
#[async_trait]
pub(crate) trait WriteConn: Send + 'static {
    /// Starts a transaction.
    async fn begin(&mut self) -> Result<()>;
    /// Commits it durably.
    async fn commit(&mut self) -> Result<()>;
    /// Abandons it (best effort).
    async fn rollback(&mut self);
    /// Inserts unless the same (recipient, kind, sender, msg_id) exists;
    /// with `body`, the row points at that stored body instead of holding
    /// the envelope itself.
    async fn insert(&mut self, e: &NewEntry, body: Option<i64>) -> Result<Option<i64>>;
    /// Inserts `entries` (no shared bodies) in order, as [`WriteConn::insert`]
    /// would one by one; one result per entry. Backends override it to
    /// write many rows per statement.
    async fn insert_many(&mut self, entries: &[&NewEntry]) -> Result<Vec<Option<i64>>> {
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            out.push(self.insert(e, None).await?);
        }
        Ok(out)
    }
    /// Deletes those of `seqs` that are `recipient`'s, as
    /// [`WriteConn::delete`] would one by one; returns them in the order of
    /// `seqs`. Backends override it to delete many rows per statement.
    async fn delete_many(&mut self, recipient: &UserName, seqs: &[i64]) -> Result<Vec<AckedEntry>> {
        let mut out = Vec::with_capacity(seqs.len());
        for &seq in seqs {
            if let Some(gone) = self.delete(recipient, seq).await? {
                out.push(gone);
            }
        }
        Ok(out)
    }
    /// For a backend whose `commit` is not durable by itself (SQLite with
    /// `synchronous = NORMAL`): what makes every commit so far durable.
    /// The writer then pushes a batch's entries as soon as it commits and
    /// answers its callers only after this has run, so a slow disk delays
    /// `accepted` but neither live delivery nor the next batch.
    fn durability(&self) -> Option<SyncFn> {
        None
    }
    /// Stores an envelope body shared by several rows.
    async fn insert_body(&mut self, envelope: &str) -> Result<i64>;
    /// Deletes one of `recipient`'s entries, returning it if it existed,
    /// and its shared body once no row points at it.
    async fn delete(&mut self, recipient: &UserName, seq: i64) -> Result<Option<AckedEntry>>;
    /// Deletes expired entries and sessions.
    async fn expire(&mut self, now: UnixMillis) -> Result<u64>;
    /// Replaces the connection after a failure.
    async fn reconnect(&mut self) -> Result<()>;
    /// A group's members, longest-standing first; `None` if no such group.
    async fn group_members(&mut self, group: &GroupName) -> Result<Option<Vec<GroupMember>>>;
    /// Creates an empty group.
    async fn create_group(&mut self, group: &GroupName, now: UnixMillis) -> Result<()>;
    /// Adds a member, who joined with the record of `epoch`.
    async fn add_member(
        &mut self,
        group: &GroupName,
        user: &UserName,
        role: Role,
        now: UnixMillis,
        epoch: u64,
    ) -> Result<()>;
    /// Removes a member.
    async fn remove_member(&mut self, group: &GroupName, user: &UserName) -> Result<()>;
    /// Changes a member's role.
    async fn set_role(&mut self, group: &GroupName, user: &UserName, role: Role) -> Result<()>;
    /// Deletes an empty group and its log.
    async fn delete_group(&mut self, group: &GroupName) -> Result<()>;
    /// The epoch and hash of a group's latest record.
    async fn group_head(&mut self, group: &GroupName) -> Result<Option<(u64, Vec<u8>)>>;
    /// The hash of a group's record of `epoch`.
    async fn group_record_hash(&mut self, group: &GroupName, epoch: u64)
    -> Result<Option<Vec<u8>>>;
    /// Appends a record to a group's log.
    async fn insert_record(
        &mut self,
        group: &GroupName,
        epoch: u64,
        hash: &[u8; 32],
        record: &str,
    ) -> Result<()>;
}

/// Makes committed writes durable (blocking; run off the async threads).
pub(crate) type SyncFn = Arc<dyn Fn() -> std::io::Result<()> + Send + Sync>;

/// Answers waiting for their batch to be durable.
type Answers = Vec<(oneshot::Sender<Result<WriteResult>>, WriteResult)>;

/// Syncs after commits and then answers: every answer queued before a sync
/// starts belongs to a batch that sync covers.
async fn sync_loop(sync: SyncFn, mut rx: mpsc::UnboundedReceiver<Answers>) {
    let mut answers = Answers::new();
    while let Some(first) = rx.recv().await {
        answers.extend(first);
        while let Ok(more) = rx.try_recv() {
            answers.extend(more);
        }
        let sync = sync.clone();
        match tokio::task::spawn_blocking(move || sync()).await {
            Ok(Ok(())) => {
                for (reply, result) in answers.drain(..) {
                    let _ = reply.send(Ok(result));
                }
            }
            outcome => {
                let cause = match outcome {
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                    Ok(Ok(())) => unreachable!("handled above"),
                };
                tracing::error!(%cause, batch = answers.len(), "syncing committed writes failed; their senders are told to retry");
                for (reply, _) in answers.drain(..) {
                    let _ = reply.send(Err(StoreError::BatchFailed));
                }
            }
        }
    }
}

/// What to announce once a batch has committed.
enum Notice {
    Stored(UserName, StoredEntry),
    Delivered {
        sender: UserName,
        msg_id: MsgId,
        to: UserName,
        at: UnixMillis,
    },
}

/// Handle to the writer task.
#[derive(Clone)]
pub(crate) struct Writer {
    tx: mpsc::Sender<Job>,
}

/// An op, or the request to stop after everything queued before it.
enum Job {
    Op(WriteOp, oneshot::Sender<Result<WriteResult>>),
    Close(oneshot::Sender<()>),
}

impl Writer {
    pub(crate) fn spawn<C: WriteConn>(
        conn: C,
        cfg: WriterConfig,
        listener: Arc<dyn CommitListener>,
    ) -> Self {
        let (tx, rx) = mpsc::channel::<Job>(cfg.queue.max(1));
        tokio::spawn(run(conn, cfg, listener, rx));
        Self { tx }
    }

    async fn submit(&self, op: WriteOp) -> Result<WriteResult> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job::Op(op, reply))
            .await
            .map_err(|_| StoreError::WriterGone)?;
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    pub(crate) async fn insert(&self, entries: Vec<NewEntry>) -> Result<Vec<Option<i64>>> {
        match self.submit(WriteOp::Insert(entries)).await? {
            WriteResult::Inserted(v) => Ok(v),
            _ => unreachable!("insert yields Inserted"),
        }
    }

    pub(crate) async fn ack(
        &self,
        recipient: UserName,
        seqs: Vec<i64>,
        now: UnixMillis,
        receipt_expires_at: UnixMillis,
    ) -> Result<u64> {
        let op = WriteOp::Ack {
            recipient,
            seqs,
            now,
            receipt_expires_at,
        };
        match self.submit(op).await? {
            WriteResult::Acked(n) => Ok(n),
            _ => unreachable!("ack yields Acked"),
        }
    }

    pub(crate) async fn expire(&self, now: UnixMillis) -> Result<u64> {
        match self.submit(WriteOp::Expire { now }).await? {
            WriteResult::Expired(n) => Ok(n),
            _ => unreachable!("expire yields Expired"),
        }
    }

    pub(crate) async fn group(
        &self,
        op: GroupOp,
        max: usize,
        now: UnixMillis,
    ) -> Result<GroupResult> {
        match self.submit(WriteOp::Group { op, max, now }).await? {
            WriteResult::Group(r) => Ok(r),
            _ => unreachable!("group yields Group"),
        }
    }

    /// Commits everything queued so far, then stops the task; later writes
    /// fail with [`StoreError::WriterGone`].
    pub(crate) async fn close(&self) {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Job::Close(done)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Applies `ops` in one transaction; on success returns one result per op
/// and fills `notices`.
async fn apply<C: WriteConn>(
    conn: &mut C,
    ops: &[WriteOp],
    listener: &dyn CommitListener,
    notices: &mut Vec<Notice>,
) -> Result<Vec<WriteResult>> {
    notices.clear();
    conn.begin().await?;
    let mut out = Vec::with_capacity(ops.len());
    let body = async {
        let mut i = 0;
        while i < ops.len() {
            // A run of inserts (the common case: sends from many
            // connections) goes to the backend as one batch.
            let run = ops[i..]
                .iter()
                .take_while(|op| matches!(op, WriteOp::Insert(_)))
                .count();
            if run > 0 {
                let entries: Vec<&NewEntry> = ops[i..i + run]
                    .iter()
                    .flat_map(|op| match op {
                        WriteOp::Insert(entries) => entries.as_slice(),
                        _ => &[],
                    })
                    .collect();
                let mut seqs = conn.insert_many(&entries).await?.into_iter();
                for op in &ops[i..i + run] {
                    let WriteOp::Insert(entries) = op else {
                        unreachable!("a run of inserts")
                    };
                    let mine: Vec<Option<i64>> = seqs.by_ref().take(entries.len()).collect();
                    for (e, seq) in entries.iter().zip(&mine) {
                        if let Some(seq) = seq {
                            notices.push(Notice::Stored(e.recipient.clone(), stored(e, *seq)));
                        }
                    }
                    out.push(WriteResult::Inserted(mine));
                }
                i += run;
                continue;
            }
            let op = &ops[i];
            i += 1;
            out.push(match op {
                WriteOp::Insert(_) => unreachable!("runs of inserts are handled above"),
                WriteOp::Ack {
                    recipient,
                    seqs,
                    now,
                    receipt_expires_at,
                } => {
                    let gone_all = conn.delete_many(recipient, seqs).await?;
                    let count = gone_all.len() as u64;
                    // Receipts are for one-to-one messages only: a group of
                    // 256 would send its sender 255 of them.
                    let gone_all: Vec<AckedEntry> = gone_all
                        .into_iter()
                        .filter(|gone| gone.kind == EntryKind::Message)
                        .collect();
                    let receipts: Vec<NewEntry> = gone_all
                        .iter()
                        .filter(|gone| listener.must_store_receipt(&gone.sender))
                        .map(|gone| NewEntry {
                            recipient: gone.sender.clone(),
                            kind: EntryKind::Receipt,
                            sender: recipient.clone(),
                            msg_id: gone.msg_id,
                            server_ts: *now,
                            expires_at: *receipt_expires_at,
                            envelope: Arc::from(""),
                        })
                        .collect();
                    if !receipts.is_empty() {
                        let refs: Vec<&NewEntry> = receipts.iter().collect();
                        let seqs = conn.insert_many(&refs).await?;
                        for (receipt, seq) in receipts.iter().zip(seqs) {
                            if let Some(seq) = seq {
                                notices.push(Notice::Stored(
                                    receipt.recipient.clone(),
                                    stored(receipt, seq),
                                ));
                            }
                        }
                    }
                    for gone in gone_all {
                        notices.push(Notice::Delivered {
                            sender: gone.sender,
                            msg_id: gone.msg_id,
                            to: recipient.clone(),
                            at: *now,
                        });
                    }
                    WriteResult::Acked(count)
                }
                WriteOp::Expire { now } => WriteResult::Expired(conn.expire(*now).await?),
                WriteOp::Group { op, max, now } => {
                    let result = super::groups::apply(conn, op, *max, *now).await?;
                    match (&result, op) {
                        (Ok(GroupDone::Sent(seqs)), GroupOp::Send { entries, .. }) => {
                            for (e, seq) in entries.iter().zip(seqs) {
                                if let Some(seq) = seq {
                                    notices
                                        .push(Notice::Stored(e.recipient.clone(), stored(e, *seq)));
                                }
                            }
                        }
                        (Ok(GroupDone::Changed(c)), _) => {
                            for (e, seq) in &c.lines {
                                notices.push(Notice::Stored(e.recipient.clone(), stored(e, *seq)));
                            }
                        }
                        _ => {}
                    }
                    WriteResult::Group(result)
                }
            });
        }
        Ok::<(), StoreError>(())
    };
    match body.await {
        Ok(()) => {
            conn.commit().await?;
            Ok(out)
        }
        Err(e) => {
            conn.rollback().await;
            Err(e)
        }
    }
}

fn stored(e: &NewEntry, seq: i64) -> StoredEntry {
    StoredEntry {
        seq,
        kind: e.kind,
        sender: e.sender.clone(),
        msg_id: e.msg_id,
        server_ts: e.server_ts,
        envelope: e.envelope.clone(),
    }
}

/// The writer loop: take one job, then everything else already queued (up to
/// the batch limit), commit it as one transaction, announce, answer.
async fn run<C: WriteConn>(
    mut conn: C,
    cfg: WriterConfig,
    listener: Arc<dyn CommitListener>,
    mut rx: mpsc::Receiver<Job>,
) {
    let mut ops = Vec::with_capacity(cfg.max_batch);
    let mut replies = Vec::with_capacity(cfg.max_batch);
    let mut notices = Vec::new();
    let mut closing = None;
    let (sync_tx, sync_task) = match conn.durability() {
        Some(sync) => {
            let (tx, rx) = mpsc::unbounded_channel();
            (Some(tx), Some(tokio::spawn(sync_loop(sync, rx))))
        }
        None => (None, None),
    };
    while let Some(job) = rx.recv().await {
        let mut next = Some(job);
        while let Some(job) = next.take() {
            match job {
                Job::Op(op, reply) => {
                    ops.push(op);
                    replies.push(reply);
                }
                Job::Close(done) => {
                    closing = Some(done);
                    break;
                }
            }
            if ops.len() < cfg.max_batch {
                next = rx.try_recv().ok();
            }
        }
        if !ops.is_empty() {
            let started = std::time::Instant::now();
            let mut result = apply(&mut conn, &ops, &*listener, &mut notices).await;
            if let Err(e) = &result {
                // The connection may be broken (database restarted): get a
                // new one and try the batch once more before giving up.
                tracing::warn!(cause = %e, batch = ops.len(), "mailbox batch failed; reconnecting and retrying once");
                match conn.reconnect().await {
                    Ok(()) => result = apply(&mut conn, &ops, &*listener, &mut notices).await,
                    Err(e) => tracing::error!(cause = %e, "cannot reconnect the writer"),
                }
            }
            match result {
                Ok(results) => {
                    listener.batch_committed(ops.len(), started.elapsed());
                    for notice in notices.drain(..) {
                        match notice {
                            Notice::Stored(recipient, entry) => listener.stored(&recipient, entry),
                            Notice::Delivered {
                                sender,
                                msg_id,
                                to,
                                at,
                            } => listener.delivered(&sender, msg_id, &to, at),
                        }
                    }
                    let answers = replies.drain(..).zip(results);
                    match &sync_tx {
                        Some(sync) => {
                            if let Err(unsent) = sync.send(answers.collect()) {
                                for (reply, _) in unsent.0 {
                                    let _ = reply.send(Err(StoreError::WriterGone));
                                }
                            }
                        }
                        None => {
                            for (reply, result) in answers {
                                let _ = reply.send(Ok(result));
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(cause = %e, batch = ops.len(), "mailbox batch failed; nothing in it was committed");
                    for reply in replies.drain(..) {
                        let _ = reply.send(Err(StoreError::BatchFailed));
                    }
                }
            }
            ops.clear();
        }
        if let Some(done) = closing.take() {
            rx.close();
            // Everything committed is synced and answered before the close
            // is.
            drop(sync_tx);
            if let Some(task) = sync_task {
                let _ = task.await;
            }
            let _ = done.send(());
            return;
        }
    }
}
