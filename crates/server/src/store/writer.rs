//! The group-commit writer: one task per store owns the write connection and
//! turns every queued mailbox write into one transaction per batch.

use async_trait::async_trait;
use telepound_protocol::UserName;
use tokio::sync::{mpsc, oneshot};

use super::{AckedEntry, NewEntry, Result, StoreError};

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

/// One queued write.
pub(crate) enum WriteOp {
    Insert(Vec<NewEntry>),
    Ack { recipient: UserName, seqs: Vec<i64> },
    Expire { now: i64 },
}

/// What a write produced.
pub(crate) enum WriteResult {
    Inserted(Vec<Option<i64>>),
    Acked(Vec<AckedEntry>),
    Expired(u64),
}

/// A backend's way of applying a batch in one transaction.
#[async_trait]
pub(crate) trait BatchApply: Send + 'static {
    /// Applies every op in one transaction and commits it durably; returns
    /// one result per op, or an error if the transaction did not commit.
    async fn apply(&mut self, ops: &[WriteOp]) -> Result<Vec<WriteResult>>;
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
    pub(crate) fn spawn<B: BatchApply>(backend: B, cfg: WriterConfig) -> Self {
        let (tx, rx) = mpsc::channel::<Job>(cfg.queue.max(1));
        tokio::spawn(run(backend, cfg, rx));
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

    pub(crate) async fn ack(&self, recipient: UserName, seqs: Vec<i64>) -> Result<Vec<AckedEntry>> {
        match self.submit(WriteOp::Ack { recipient, seqs }).await? {
            WriteResult::Acked(v) => Ok(v),
            _ => unreachable!("ack yields Acked"),
        }
    }

    pub(crate) async fn expire(&self, now: i64) -> Result<u64> {
        match self.submit(WriteOp::Expire { now }).await? {
            WriteResult::Expired(n) => Ok(n),
            _ => unreachable!("expire yields Expired"),
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

/// The writer loop: take one job, then everything else already queued (up to
/// the batch limit), commit it as one transaction, answer every caller.
async fn run<B: BatchApply>(mut backend: B, cfg: WriterConfig, mut rx: mpsc::Receiver<Job>) {
    let mut ops = Vec::with_capacity(cfg.max_batch);
    let mut replies = Vec::with_capacity(cfg.max_batch);
    let mut closing = None;
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
            match backend.apply(&ops).await {
                Ok(results) => {
                    tracing::trace!(
                        batch = ops.len(),
                        micros = started.elapsed().as_micros() as u64,
                        "committed"
                    );
                    for (reply, result) in replies.drain(..).zip(results) {
                        let _ = reply.send(Ok(result));
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
            let _ = done.send(());
            break;
        }
    }
}
