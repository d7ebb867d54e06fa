//! The group-commit writer: one task per store owns the write connection and
//! turns every queued mailbox write into one transaction per batch.
//!
//! After a batch commits, and before any caller hears back, the writer tells
//! the [`CommitListener`] about every new entry in commit (seq) order. Live
//! pushes therefore leave in exactly the order a later fetch would return
//! them, and a push never depends on the sender's connection still being
//! there to make it.
//!
//! The writer also hands out every mailbox seq itself, which allows its
//! fast path: a one-to-one message for a recipient who is live is pushed at
//! once and waits (the *ack window*, [`WriterConfig::ack_window`]) for the
//! recipient's acknowledgement before it is written. When the
//! acknowledgement comes first, the message is never written at all: it is
//! already where it was going, so the sender hears `accepted` (and
//! `delivered`) without a disk write. Otherwise it is written once the
//! window closes, and the sender hears `accepted` after that commit, as on
//! the slow path. Either way `accepted` means "on disk, or acknowledged by
//! its recipient". These rules keep the order a recipient sees:
//! - a recipient's waiting messages are written whenever their mailbox is
//!   fetched (see [`Writer::flush`]), and before a retry of one of them;
//! - within one batch, a message only waits if nothing of its recipient is
//!   being written in that batch, so live pushes keep ascending seqs;
//! - a batch announces its entries in seq order (a group operation's rows
//!   take their seqs as it runs, above those handed out when the batch was
//!   put together).

use async_trait::async_trait;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
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
    /// How long a message for a live recipient waits for the recipient's
    /// acknowledgement before it is written; zero writes every message.
    pub ack_window: Duration,
    /// Most messages waiting in the window at once; past it, messages are
    /// written at once.
    pub max_waiting: usize,
    /// Most envelope bytes waiting in the window at once, likewise.
    pub max_waiting_bytes: usize,
    /// SQLite: a run of inserts with at least this many bytes of one-to-one
    /// envelopes writes them to the envelope log instead of their rows
    /// (0: every run does).
    pub envelope_log_min_bytes: usize,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            max_batch: 1024,
            queue: 8192,
            ack_window: Duration::from_millis(250),
            max_waiting: 16_384,
            max_waiting_bytes: 64 * 1024 * 1024,
            envelope_log_min_bytes: 64 << 10,
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
    /// Whether `recipient` has a connection taking live pushes: a message
    /// for them may wait in the ack window instead of being written at
    /// once. (A connection still paging through the mailbox is served by
    /// the flush its fetch makes.)
    fn is_live(&self, _recipient: &UserName) -> bool {
        false
    }
    /// Of the messages that waited in the ack window, `acked` were
    /// acknowledged before they had to be written and `written` were not.
    fn ack_window(&self, _acked: usize, _written: usize) {}
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
    /// Entries whose seqs the writer has already handed out (every insert
    /// becomes one of these before it reaches the database).
    InsertAt(Vec<(i64, NewEntry)>),
    Ack {
        recipient: UserName,
        seqs: Vec<i64>,
        /// Entries acknowledged while still in the ack window (never
        /// written): they count and make receipts like deleted rows.
        waited: Vec<AckedEntry>,
        now: UnixMillis,
        receipt_expires_at: UnixMillis,
    },
    /// Writes whatever of `recipient` waits in the ack window.
    Flush(UserName),
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
    Flushed,
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
    /// Hands out `n` new mailbox seqs, ascending, above every seq used so
    /// far, including those [`WriteConn::insert`] assigns.
    async fn reserve_seqs(&mut self, n: usize) -> Result<Vec<i64>>;
    /// Inserts unless the same (recipient, kind, sender, msg_id) exists,
    /// with a seq of its own; with `body`, the row points at that stored
    /// body instead of holding the envelope itself.
    async fn insert(&mut self, e: &NewEntry, body: Option<i64>) -> Result<Option<i64>>;
    /// Inserts `e` at `seq` (from [`WriteConn::reserve_seqs`]) unless the
    /// same (recipient, kind, sender, msg_id) exists; whether it did.
    async fn insert_at(&mut self, seq: i64, e: &NewEntry) -> Result<bool>;
    /// Inserts `entries` (no shared bodies) in order, as
    /// [`WriteConn::insert_at`] would one by one; one result per entry.
    /// Backends override it to write many rows per statement.
    async fn insert_many(&mut self, entries: &[(i64, &NewEntry)]) -> Result<Vec<bool>> {
        let mut out = Vec::with_capacity(entries.len());
        for (seq, e) in entries {
            out.push(self.insert_at(*seq, e).await?);
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
    /// Recipients with messages in the ack window. A std Mutex: a set
    /// lookup or update, never held across an await.
    waiting: Arc<Mutex<HashSet<UserName>>>,
}

/// An op, or the request to stop after everything queued before it.
enum Job {
    Op(WriteOp, Reply),
    Close(oneshot::Sender<()>),
}

type Reply = oneshot::Sender<Result<WriteResult>>;

impl Writer {
    pub(crate) fn spawn<C: WriteConn>(
        conn: C,
        cfg: WriterConfig,
        listener: Arc<dyn CommitListener>,
    ) -> Self {
        let (tx, rx) = mpsc::channel::<Job>(cfg.queue.max(1));
        let waiting = Arc::new(Mutex::new(HashSet::new()));
        tokio::spawn(run(conn, cfg, listener, rx, waiting.clone()));
        Self { tx, waiting }
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
            waited: Vec::new(),
            now,
            receipt_expires_at,
        };
        match self.submit(op).await? {
            WriteResult::Acked(n) => Ok(n),
            _ => unreachable!("ack yields Acked"),
        }
    }

    /// Writes whatever of `recipient`'s messages waits in the ack window,
    /// so that a fetch of their mailbox finds it; returns at once when
    /// nothing waits.
    pub(crate) async fn flush(&self, recipient: &UserName) -> Result<()> {
        if !self
            .waiting
            .lock()
            .expect("waiting lock")
            .contains(recipient)
        {
            return Ok(());
        }
        self.submit(WriteOp::Flush(recipient.clone())).await?;
        Ok(())
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

    /// Commits everything queued so far (and everything in the ack
    /// window), then stops the task; later writes fail with
    /// [`StoreError::WriterGone`].
    pub(crate) async fn close(&self) {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Job::Close(done)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Seqs handed out but not used yet. Refilled from the backend in blocks;
/// emptied after a group operation, whose inserts take seqs of their own
/// (above these), so that a recipient's seqs keep rising.
struct Seqs {
    free: VecDeque<i64>,
}

impl Seqs {
    const BLOCK: usize = 256;

    async fn take<C: WriteConn>(&mut self, conn: &mut C, n: usize) -> Result<Vec<i64>> {
        if self.free.len() < n {
            let want = n.max(Self::BLOCK);
            let more = match conn.reserve_seqs(want).await {
                Ok(more) => more,
                Err(e) => {
                    // The connection may be broken (database restarted), and
                    // only a commit would otherwise replace it.
                    tracing::warn!(cause = %e, "cannot hand out mailbox seqs; reconnecting and retrying once");
                    conn.reconnect().await?;
                    conn.reserve_seqs(want).await?
                }
            };
            self.free.extend(more);
        }
        Ok(self.free.drain(..n).collect())
    }
}

/// Applies `ops` in one transaction; on success returns one result per op
/// and fills `notices`.
async fn apply<C: WriteConn>(
    conn: &mut C,
    seqs: &mut Seqs,
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
                .take_while(|op| matches!(op, WriteOp::InsertAt(_)))
                .count();
            if run > 0 {
                let entries: Vec<(i64, &NewEntry)> = ops[i..i + run]
                    .iter()
                    .flat_map(|op| match op {
                        WriteOp::InsertAt(entries) => entries.as_slice(),
                        _ => &[],
                    })
                    .map(|(seq, e)| (*seq, e))
                    .collect();
                let mut done = conn.insert_many(&entries).await?.into_iter();
                for op in &ops[i..i + run] {
                    let WriteOp::InsertAt(entries) = op else {
                        unreachable!("a run of inserts")
                    };
                    let mut mine = Vec::with_capacity(entries.len());
                    for ((seq, e), inserted) in entries.iter().zip(done.by_ref()) {
                        if inserted {
                            notices.push(Notice::Stored(e.recipient.clone(), stored(e, *seq)));
                        }
                        mine.push(inserted.then_some(*seq));
                    }
                    out.push(WriteResult::Inserted(mine));
                }
                i += run;
                continue;
            }
            let op = &ops[i];
            i += 1;
            out.push(match op {
                WriteOp::Insert(_) | WriteOp::InsertAt(_) => {
                    unreachable!("inserts get their seqs first and come in runs")
                }
                WriteOp::Flush(_) => WriteResult::Flushed,
                WriteOp::Ack {
                    recipient,
                    seqs: acked,
                    waited,
                    now,
                    receipt_expires_at,
                } => {
                    let mut gone_all = conn.delete_many(recipient, acked).await?;
                    gone_all.extend(waited.iter().cloned());
                    let count = gone_all.len() as u64;
                    // Receipts are for one-to-one messages only: a group of
                    // 256 would send its sender 255 of them.
                    let gone_all: Vec<AckedEntry> = gone_all
                        .into_iter()
                        .filter(|gone| gone.kind == EntryKind::Message)
                        .collect();
                    let receipts =
                        receipts(recipient, &gone_all, listener, *now, *receipt_expires_at);
                    if !receipts.is_empty() {
                        let at = seqs.take(conn, receipts.len()).await?;
                        let refs: Vec<(i64, &NewEntry)> = at.into_iter().zip(&receipts).collect();
                        let done = conn.insert_many(&refs).await?;
                        for ((seq, receipt), inserted) in refs.iter().zip(done) {
                            if inserted {
                                notices.push(Notice::Stored(
                                    receipt.recipient.clone(),
                                    stored(receipt, *seq),
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
                    // Its inserts took seqs above the ones set aside.
                    seqs.free.clear();
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

/// Most receipts one stored row holds: a `sync` page of rows becomes up to
/// this many `delivered` frames per row.
pub(crate) const RECEIPTS_PER_ROW: usize = 32;

/// The stored receipts telling the senders of `gone` who are away that
/// `recipient` has their messages: one row per sender and up to
/// [`RECEIPTS_PER_ROW`] messages, in the order acknowledged. In a 100k
/// backlog drain, a row per message was a third of SQLite's work.
fn receipts(
    recipient: &UserName,
    gone: &[AckedEntry],
    listener: &dyn CommitListener,
    now: UnixMillis,
    expires_at: UnixMillis,
) -> Vec<NewEntry> {
    if gone.is_empty() {
        return Vec::new();
    }
    // Each away sender's ids, senders in the order first met.
    let mut senders: Vec<(&UserName, Vec<MsgId>)> = Vec::new();
    let mut index: HashMap<&UserName, Option<usize>> = HashMap::new();
    for g in gone {
        let slot = *index.entry(&g.sender).or_insert_with(|| {
            listener.must_store_receipt(&g.sender).then(|| {
                senders.push((&g.sender, Vec::new()));
                senders.len() - 1
            })
        });
        if let Some(i) = slot {
            senders[i].1.push(g.msg_id);
        }
    }
    let mut out = Vec::new();
    for (sender, ids) in senders {
        for chunk in ids.chunks(RECEIPTS_PER_ROW) {
            let (kind, envelope) = match chunk {
                [_] => (EntryKind::Receipt, Arc::from("")),
                _ => (
                    EntryKind::Receipts,
                    Arc::from(
                        chunk
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(" "),
                    ),
                ),
            };
            out.push(NewEntry {
                recipient: sender.clone(),
                kind,
                sender: recipient.clone(),
                // A row of several takes an id of its own: keyed on one of
                // its messages, it could collide with a row holding an
                // earlier receipt for that message (a retry stored again
                // after its ack) and be dropped whole as a duplicate.
                msg_id: if kind == EntryKind::Receipts {
                    MsgId::new()
                } else {
                    chunk[0]
                },
                server_ts: now,
                expires_at,
                envelope,
            });
        }
    }
    out
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

/// A message pushed live and waiting for its recipient's acknowledgement.
struct Waiting {
    seq: i64,
    entry: NewEntry,
    reply: Reply,
}

/// The ack window: per recipient, their waiting messages in seq order.
struct Window {
    by_recipient: HashMap<UserName, VecDeque<Waiting>>,
    /// (due, recipient, seq) in arrival order, which is due order too.
    due: VecDeque<(Instant, UserName, i64)>,
    len: usize,
    /// Envelope bytes waiting.
    bytes: usize,
    /// Mirror of `by_recipient`'s keys for [`Writer::flush`].
    shared: Arc<Mutex<HashSet<UserName>>>,
}

impl Window {
    fn new(shared: Arc<Mutex<HashSet<UserName>>>) -> Self {
        Self {
            by_recipient: HashMap::new(),
            due: VecDeque::new(),
            len: 0,
            bytes: 0,
            shared,
        }
    }

    fn next_due(&self) -> Option<Instant> {
        self.due.front().map(|d| d.0)
    }

    fn add(&mut self, seq: i64, entry: NewEntry, reply: Reply, due: Instant) {
        self.due.push_back((due, entry.recipient.clone(), seq));
        let list = self
            .by_recipient
            .entry(entry.recipient.clone())
            .or_default();
        if list.is_empty() {
            self.shared
                .lock()
                .expect("waiting lock")
                .insert(entry.recipient.clone());
        }
        self.bytes += entry.envelope.len();
        list.push_back(Waiting { seq, entry, reply });
        self.len += 1;
    }

    /// Whether one more message of `bytes` fits under the caps.
    fn has_room(&self, cfg: &WriterConfig, bytes: usize) -> bool {
        self.len < cfg.max_waiting && self.bytes + bytes <= cfg.max_waiting_bytes
    }

    /// Whether `e` (same recipient, kind, sender and msg_id) is waiting.
    fn holds(&self, e: &NewEntry) -> bool {
        self.by_recipient.get(&e.recipient).is_some_and(|l| {
            l.iter().any(|w| {
                w.entry.msg_id == e.msg_id && w.entry.sender == e.sender && w.entry.kind == e.kind
            })
        })
    }

    /// Takes all of `recipient`'s waiting messages, in seq order.
    fn take_all(&mut self, recipient: &UserName) -> VecDeque<Waiting> {
        let list = self.by_recipient.remove(recipient).unwrap_or_default();
        if !list.is_empty() {
            self.shared.lock().expect("waiting lock").remove(recipient);
        }
        self.len -= list.len();
        self.bytes -= list.iter().map(|w| w.entry.envelope.len()).sum::<usize>();
        list
    }

    /// Takes those of `seqs` that wait for `recipient`; returns them and
    /// the seqs that do not.
    fn take_acked(&mut self, recipient: &UserName, seqs: &[i64]) -> (Vec<Waiting>, Vec<i64>) {
        let Some(list) = self.by_recipient.get_mut(recipient) else {
            return (Vec::new(), seqs.to_vec());
        };
        let (mut hits, mut misses) = (Vec::new(), Vec::new());
        for &seq in seqs {
            match list.binary_search_by_key(&seq, |w| w.seq) {
                Ok(i) => hits.extend(list.remove(i)),
                Err(_) => misses.push(seq),
            }
        }
        self.len -= hits.len();
        self.bytes -= hits.iter().map(|w| w.entry.envelope.len()).sum::<usize>();
        if list.is_empty() {
            self.by_recipient.remove(recipient);
            self.shared.lock().expect("waiting lock").remove(recipient);
        }
        (hits, misses)
    }

    /// Recipients with a message whose window has closed by `now`.
    fn expired(&mut self, now: Instant) -> Vec<UserName> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        while let Some((due, recipient, seq)) = self.due.front() {
            if *due > now {
                break;
            }
            let still_waiting = self
                .by_recipient
                .get(recipient)
                .and_then(|l| l.front())
                .is_some_and(|w| w.seq <= *seq);
            if still_waiting && seen.insert(recipient.clone()) {
                out.push(recipient.clone());
            }
            self.due.pop_front();
        }
        out
    }

    /// Everyone with waiting messages.
    fn recipients(&self) -> Vec<UserName> {
        self.by_recipient.keys().cloned().collect()
    }
}

/// One turn's operations on their way to the database, in order, with the
/// replies that wait for them (none for an internal write).
struct Batch {
    ops: Vec<WriteOp>,
    replies: Vec<Option<Reply>>,
    /// Recipients with an entry written in this batch.
    touched: HashSet<UserName>,
    /// Waiting messages written in this batch (for the window's metric).
    from_window: usize,
}

impl Batch {
    fn new() -> Self {
        Self {
            ops: Vec::new(),
            replies: Vec::new(),
            touched: HashSet::new(),
            from_window: 0,
        }
    }

    fn push(&mut self, op: WriteOp, reply: Option<Reply>) {
        self.ops.push(op);
        self.replies.push(reply);
    }

    /// Moves `recipient`'s waiting messages into the batch, as inserts at
    /// the seqs they were pushed with.
    fn write_waiting(&mut self, window: &mut Window, recipient: &UserName) {
        for w in window.take_all(recipient) {
            self.from_window += 1;
            self.touched.insert(recipient.clone());
            self.push(WriteOp::InsertAt(vec![(w.seq, w.entry)]), Some(w.reply));
        }
    }

    fn write_all_waiting(&mut self, window: &mut Window) {
        for r in window.recipients() {
            self.write_waiting(window, &r);
        }
    }
}

/// Sorts one turn's jobs: what can be answered from the ack window at once
/// is answered (and its notices collected in `now_notices`), the rest goes
/// to `batch` with its seqs handed out in arrival order.
#[allow(clippy::too_many_arguments)]
async fn sort_jobs<C: WriteConn>(
    conn: &mut C,
    seqs: &mut Seqs,
    cfg: &WriterConfig,
    listener: &dyn CommitListener,
    window: &mut Window,
    jobs: Vec<(WriteOp, Reply)>,
    batch: &mut Batch,
    now_notices: &mut Vec<Notice>,
) -> Result<(), (StoreError, Vec<Reply>)> {
    let now = Instant::now();
    for r in window.expired(now) {
        batch.write_waiting(window, &r);
    }
    let mut jobs = jobs.into_iter();
    while let Some((op, reply)) = jobs.next() {
        let fail = |e: StoreError, reply: Reply, jobs: std::vec::IntoIter<(WriteOp, Reply)>| {
            (e, std::iter::once(reply).chain(jobs.map(|j| j.1)).collect())
        };
        match op {
            WriteOp::Insert(entries) => {
                let at = match seqs.take(conn, entries.len()).await {
                    Ok(at) => at,
                    Err(e) => return Err(fail(e, reply, jobs)),
                };
                let may_wait = !cfg.ack_window.is_zero()
                    && entries.len() == 1
                    && entries[0].kind == EntryKind::Message
                    && window.has_room(cfg, entries[0].envelope.len())
                    && !batch.touched.contains(&entries[0].recipient)
                    && !window.holds(&entries[0])
                    && listener.is_live(&entries[0].recipient);
                if may_wait {
                    let (seq, entry) = (at[0], entries.into_iter().next().expect("one entry"));
                    now_notices.push(Notice::Stored(entry.recipient.clone(), stored(&entry, seq)));
                    window.add(seq, entry, reply, now + cfg.ack_window);
                    continue;
                }
                for e in &entries {
                    // Waiting messages of theirs go first (a retry of one
                    // is then dropped as a duplicate).
                    batch.write_waiting(window, &e.recipient);
                    batch.touched.insert(e.recipient.clone());
                }
                batch.push(
                    WriteOp::InsertAt(at.into_iter().zip(entries).collect()),
                    Some(reply),
                );
            }
            WriteOp::Ack {
                recipient,
                seqs: acked,
                now: at,
                receipt_expires_at,
                ..
            } => {
                let (hits, misses) = window.take_acked(&recipient, &acked);
                let waited: Vec<AckedEntry> = hits
                    .iter()
                    .map(|w| AckedEntry {
                        kind: w.entry.kind,
                        sender: w.entry.sender.clone(),
                        msg_id: w.entry.msg_id,
                    })
                    .collect();
                if !hits.is_empty() {
                    listener.ack_window(hits.len(), 0);
                }
                // Delivered before it had to be written: it is where it
                // was going, which is what `accepted` promises.
                for w in hits {
                    let _ = w.reply.send(Ok(WriteResult::Inserted(vec![Some(w.seq)])));
                }
                let needs_disk = !misses.is_empty()
                    || waited.iter().any(|g| {
                        g.kind == EntryKind::Message && listener.must_store_receipt(&g.sender)
                    });
                if needs_disk {
                    batch.push(
                        WriteOp::Ack {
                            recipient,
                            seqs: misses,
                            waited,
                            now: at,
                            receipt_expires_at,
                        },
                        Some(reply),
                    );
                } else {
                    for gone in &waited {
                        now_notices.push(Notice::Delivered {
                            sender: gone.sender.clone(),
                            msg_id: gone.msg_id,
                            to: recipient.clone(),
                            at,
                        });
                    }
                    let _ = reply.send(Ok(WriteResult::Acked(waited.len() as u64)));
                }
            }
            WriteOp::Flush(recipient) => {
                batch.write_waiting(window, &recipient);
                if batch.touched.contains(&recipient) {
                    batch.push(WriteOp::Flush(recipient), Some(reply));
                } else {
                    // Nothing of theirs waits or is being written.
                    let _ = reply.send(Ok(WriteResult::Flushed));
                }
            }
            // A group operation's rows take seqs above everything handed
            // out so far, and the batch announces in seq order, so waiting
            // messages may go on waiting.
            op @ (WriteOp::Group { .. } | WriteOp::Expire { .. } | WriteOp::InsertAt(_)) => {
                batch.push(op, Some(reply));
            }
        }
    }
    Ok(())
}

fn announce(listener: &dyn CommitListener, notices: &mut Vec<Notice>) {
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
}

/// The writer loop: take one job, then everything else already queued (up to
/// the batch limit); answer what the ack window can, commit the rest as one
/// transaction, announce, answer.
async fn run<C: WriteConn>(
    mut conn: C,
    cfg: WriterConfig,
    listener: Arc<dyn CommitListener>,
    mut rx: mpsc::Receiver<Job>,
    waiting: Arc<Mutex<HashSet<UserName>>>,
) {
    let mut seqs = Seqs {
        free: VecDeque::new(),
    };
    let mut window = Window::new(waiting);
    let mut notices = Vec::new();
    let mut now_notices = Vec::new();
    let mut closing = None;
    let mut ended = false;
    let (sync_tx, sync_task) = match conn.durability() {
        Some(sync) => {
            let (tx, rx) = mpsc::unbounded_channel();
            (Some(tx), Some(tokio::spawn(sync_loop(sync, rx))))
        }
        None => (None, None),
    };
    loop {
        // The next job, or the ack window's next deadline.
        let first = match window.next_due() {
            Some(due) => match tokio::time::timeout_at(due.into(), rx.recv()).await {
                Ok(job) => job.map(Some),
                Err(_) => Some(None),
            },
            None => rx.recv().await.map(Some),
        };
        let mut jobs = Vec::new();
        match first {
            None => ended = true,
            Some(None) => {}
            Some(Some(job)) => {
                let mut next = Some(job);
                while let Some(job) = next.take() {
                    match job {
                        Job::Op(op, reply) => jobs.push((op, reply)),
                        Job::Close(done) => {
                            closing = Some(done);
                            break;
                        }
                    }
                    if jobs.len() < cfg.max_batch {
                        next = rx.try_recv().ok();
                    }
                }
            }
        }
        let mut batch = Batch::new();
        let sorted = sort_jobs(
            &mut conn,
            &mut seqs,
            &cfg,
            &*listener,
            &mut window,
            jobs,
            &mut batch,
            &mut now_notices,
        )
        .await;
        if closing.is_some() || ended {
            batch.write_all_waiting(&mut window);
        }
        // Pushes of messages entering the window, and receipts of those
        // acknowledged in it: their recipients have nothing in this batch,
        // so these never overtake a lower seq.
        announce(&*listener, &mut now_notices);
        if let Err((e, replies)) = sorted {
            tracing::error!(cause = %e, "cannot hand out mailbox seqs; the writes are refused");
            for reply in replies {
                let _ = reply.send(Err(StoreError::BatchFailed));
            }
        }
        if !batch.ops.is_empty() {
            commit(
                &mut conn,
                &mut seqs,
                &*listener,
                batch,
                &mut notices,
                sync_tx.as_ref(),
            )
            .await;
        }
        if closing.is_some() || ended {
            rx.close();
            // Everything committed is synced and answered before the close
            // is.
            drop(sync_tx);
            if let Some(task) = sync_task {
                let _ = task.await;
            }
            // The connection, and what it holds such as the SQLite store's
            // lock, is dropped before the close is answered. (sqlx closes
            // the SQLite handle itself on its worker thread a moment later:
            // by then nothing writes the log or the seq mark.)
            drop(conn);
            if let Some(done) = closing.take() {
                let _ = done.send(());
            }
            return;
        }
    }
}

/// Commits `batch` (retrying once on a fresh connection), announces its
/// notices and hands its answers to the sync step.
async fn commit<C: WriteConn>(
    conn: &mut C,
    seqs: &mut Seqs,
    listener: &dyn CommitListener,
    batch: Batch,
    notices: &mut Vec<Notice>,
    sync_tx: Option<&mpsc::UnboundedSender<Answers>>,
) {
    let Batch {
        ops,
        replies,
        from_window,
        ..
    } = batch;
    let started = Instant::now();
    let mut result = apply(conn, seqs, &ops, listener, notices).await;
    if let Err(e) = &result {
        // The connection may be broken (database restarted): get a new one
        // and try the batch once more before giving up.
        tracing::warn!(cause = %e, batch = ops.len(), "mailbox batch failed; reconnecting and retrying once");
        match conn.reconnect().await {
            Ok(()) => result = apply(conn, seqs, &ops, listener, notices).await,
            Err(e) => tracing::error!(cause = %e, "cannot reconnect the writer"),
        }
    }
    match result {
        Ok(results) => {
            listener.batch_committed(ops.len(), started.elapsed());
            if from_window > 0 {
                listener.ack_window(0, from_window);
            }
            // In seq order: a group operation's rows took their seqs as it
            // ran, above inserts later in the batch. Receipts go last, after
            // any stored receipt they accompany.
            notices.sort_by_key(|n| match n {
                Notice::Stored(_, e) => (0, e.seq),
                Notice::Delivered { .. } => (1, 0),
            });
            announce(listener, notices);
            let mut answers = Answers::new();
            for (reply, result) in replies.into_iter().zip(results) {
                let Some(reply) = reply else { continue };
                match result {
                    // A fetch only needs the rows committed, not synced.
                    WriteResult::Flushed => {
                        let _ = reply.send(Ok(WriteResult::Flushed));
                    }
                    result => answers.push((reply, result)),
                }
            }
            match sync_tx {
                Some(sync) => {
                    if let Err(unsent) = sync.send(answers) {
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
            for reply in replies.into_iter().flatten() {
                let _ = reply.send(Err(StoreError::BatchFailed));
            }
        }
    }
}
