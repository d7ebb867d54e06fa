//! The SQLite backend: one file in the data directory, WAL mode. The writer
//! commits with `synchronous = NORMAL` and the shared writer fsyncs the WAL
//! (see `WriteConn::durability`) before anyone hears `accepted`, so a commit
//! is on disk before it is acknowledged without the fsync stalling the next
//! batch.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, Row};
use telepound_protocol::message::{B64, PublicKeys, UnixMillis};
use telepound_protocol::message::{GroupMember, GroupSummary, Role};
use telepound_protocol::{GroupName, UserName};

use super::envlog::{EnvelopeLog, LogReader, LogRef};
use super::groups::{GroupOp, GroupResult, role_from_i64, role_to_i16};
use super::mbindex::{MailboxIndex, Pending, RowKey, Tag, Tagger};
use super::writer::{CommitListener, WriteConn, Writer};
use super::{
    AckedEntry, BlobRecord, EntryKind, GroupView, NewBlob, NewEntry, NewUser, Result, Store,
    StoredEntry, UserRecord, WriterConfig, check_applied, group_name, ksf_from_text, ksf_to_text,
    migration, msg_id, user_name, user_name_of,
};

fn migrator() -> sqlx::migrate::Migrator {
    sqlx::migrate::Migrator::with_migrations(vec![
        migration(
            1,
            "init",
            include_str!("../../migrations/sqlite/0001_init.sql"),
        ),
        migration(
            2,
            "blobs",
            include_str!("../../migrations/sqlite/0002_blobs.sql"),
        ),
        migration(
            3,
            "groups",
            include_str!("../../migrations/sqlite/0003_groups.sql"),
        ),
        migration(
            4,
            "shared bodies",
            include_str!("../../migrations/sqlite/0004_shared_bodies.sql"),
        ),
        migration(
            5,
            "group log",
            include_str!("../../migrations/sqlite/0005_group_log.sql"),
        ),
        migration(
            6,
            "envelope log",
            include_str!("../../migrations/sqlite/0006_envelope_log.sql"),
        ),
        migration(
            7,
            "partial body index",
            include_str!("../../migrations/sqlite/0007_partial_body_index.sql"),
        ),
        migration(
            8,
            "mailbox index in memory",
            include_str!("../../migrations/sqlite/0008_mailbox_index_in_memory.sql"),
        ),
    ])
}

/// The SQLite store.
pub struct SqliteStore {
    pool: SqlitePool,
    writer: Writer,
    log: LogReader,
    /// Which seqs each recipient has waiting: written by the writer as its
    /// transactions commit, read by fetches ([`MailboxIndex`]).
    index: SharedIndex,
    checkpointer: tokio::task::JoinHandle<()>,
}

/// Takes the lock (`PATH-lock`, beside the database) that keeps a second
/// server off the database at `path`. SQLite itself takes many processes,
/// but the envelope log and the seq mark take one writer: a second process
/// would remove segments the first still points into. The writer holds it
/// (it owns the log and the mark) until its task ends; the kernel drops it
/// when the process ends, however it ends.
fn lock_database(path: &Path) -> Result<std::fs::File> {
    let mut lock = path.as_os_str().to_owned();
    lock.push("-lock");
    let lock = std::path::PathBuf::from(lock);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock)
        .map_err(sqlx::Error::Io)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(super::StoreError::InUse(lock.display().to_string()))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(sqlx::Error::Io(e).into()),
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.checkpointer.abort();
    }
}

/// The page size of a new database file: SQLite's default, 4 KiB. While
/// envelopes lived in their rows 8 KiB did better (two or three envelopes
/// to a page); since the envelope log takes the envelopes of large runs,
/// the rows of a busy writer are small, and a commit writes every page it
/// touched to the WAL whole: with the messages spread over many
/// recipients, each index ordered by recipient took a page per recipient
/// (since migration 0008 there is none: [`MailboxIndex`]).
/// At 64 recipients and 512 in flight, durable accept went from 61-63k to
/// 67-69k msgs/s; with one recipient (1, 64 and 512 in flight), in the
/// backlog drain and in group sends 4 KiB was no worse (docs/BENCHMARKS.md).
const PAGE_SIZE: u32 = 4096;

/// WAL bytes after which the writer checkpoints by itself (the checkpoint
/// task normally keeps the WAL far smaller), whatever the file's page size.
const WRITER_AUTOCHECKPOINT_BYTES: u32 = 64 << 20;

/// How often the checkpoint task copies the WAL into the database.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// Copies committed WAL frames into the database file, off the writer's
/// path: PASSIVE never blocks the writer or readers.
async fn checkpoint_loop(pool: SqlitePool) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if pool.is_closed() {
            return;
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&pool)
            .await
        {
            tracing::warn!(cause = %e, "WAL checkpoint failed; the writer will checkpoint instead");
        }
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`.
    ///
    /// # Errors
    /// When the file cannot be opened or migrated.
    pub async fn open(
        path: &Path,
        migrate: bool,
        writer: WriterConfig,
        listener: Arc<dyn CommitListener>,
    ) -> Result<Self> {
        let lock = lock_database(path)?;
        let opts = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(std::time::Duration::from_secs(10))
            // sqlx hands rows from its SQLite thread to the task through a
            // channel (50 rows by default): a full one stops that thread
            // until the task has drained it, which on a busy CPU is a pair
            // of context switches every 50 rows. A page is read whole
            // anyway (`fetch_all`), so let the channel hold one.
            .row_buffer_size(telepound_protocol::codec::MAX_PAGE as usize)
            // Takes effect when the file is created; an existing file
            // keeps its size.
            .page_size(PAGE_SIZE);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts.clone())
            .await?;
        let m = migrator();
        if migrate {
            m.run(&pool).await?;
        } else {
            let applied: Vec<i64> =
                sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                    .fetch_all(&pool)
                    .await
                    .map_err(|e| super::StoreError::NotMigrated(e.to_string()))?;
            check_applied(&m, &applied)?;
        }
        // The writer leaves checkpoints to a task of their own, so that a
        // commit never waits for the WAL to be copied into the database
        // (it would stall every sender for that long). Should the task fall
        // behind, the writer still checkpoints past this many pages.
        // The writer commits without waiting for the disk and syncs the WAL
        // itself before answering (see `WriteConn::durability`): a process
        // crash loses nothing committed either way, and `accepted` still
        // waits for the fsync.
        let opts = opts
            .synchronous(SqliteSynchronous::Normal)
            .pragma("temp_store", "MEMORY");
        let mut conn = opts.connect().await?;
        // In pages of this file's own size (an older file keeps 8 KiB).
        // A PRAGMA takes no bound values: the text holds an integer of ours.
        let page: i64 = sqlx::query_scalar("PRAGMA page_size")
            .fetch_one(&mut conn)
            .await?;
        let pages = i64::from(WRITER_AUTOCHECKPOINT_BYTES) / page.max(512);
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "PRAGMA wal_autocheckpoint = {pages}"
        )))
        .execute(&mut conn)
        .await?;
        // The WAL file now exists: make its directory entry durable too.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(sqlx::Error::Io)?;
        }
        let log = open_log(&pool, path).await?;
        let index = load_index(&pool).await?;
        let tagger = index.tagger().clone();
        let index = Arc::new(std::sync::Mutex::new(index));
        let checkpointer = tokio::spawn(checkpoint_loop(pool.clone()));
        Ok(Self {
            pool,
            log: log.reader(),
            index: index.clone(),
            writer: Writer::spawn(
                SqliteWriter {
                    opts,
                    conn,
                    next_seq: None,
                    reserved_to: 0,
                    log,
                    in_tx: false,
                    log_min: writer.envelope_log_min_bytes,
                    tagger,
                    index,
                    pending: Pending::default(),
                    _lock: lock,
                },
                writer,
                listener,
            ),
            checkpointer,
        })
    }
}

/// The envelope log of the database at `path`: `PATH-envelopes/`, with
/// the rows pointing into each segment counted.
async fn open_log(pool: &SqlitePool, path: &Path) -> Result<EnvelopeLog> {
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT log_seg, COUNT(*) FROM mailbox WHERE log_seg IS NOT NULL GROUP BY log_seg",
    )
    .fetch_all(pool)
    .await?;
    let live = rows
        .into_iter()
        .map(|(seg, n)| Ok((log_int(seg, "segment")?, log_int(n, "count")?)))
        .collect::<Result<_>>()?;
    let mut dir = path.as_os_str().to_owned();
    dir.push("-envelopes");
    let dir = std::path::PathBuf::from(dir);
    let db = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        // After a process crash, deletes committed but never synced are
        // still visible; make them durable before removing what they freed.
        sync_database(&db)?;
        EnvelopeLog::open(&dir, live)
    })
    .await
    .map_err(|e| sqlx::Error::Io(std::io::Error::other(e)))?
    .map_err(|e| log_error(&e))
}

/// The mailbox index, shared by the writer and the fetches.
type SharedIndex = Arc<std::sync::Mutex<MailboxIndex>>;

/// Locks the index. A panic while it was held (none of its methods can
/// leave it half-changed) does not stop the others.
fn locked(index: &SharedIndex) -> std::sync::MutexGuard<'_, MailboxIndex> {
    index
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Rows read at a time while the index is built.
const INDEX_LOAD_ROWS: i64 = 65_536;

/// The mailbox index of the rows in the table, read in seq order, a block
/// of rows as one JSON value at a time.
async fn load_index(pool: &SqlitePool) -> Result<MailboxIndex> {
    let mut index = MailboxIndex::new();
    let mut after = i64::MIN;
    loop {
        let text: String = sqlx::query_scalar(
            "SELECT json_group_array(json_array(seq, recipient, kind, sender, msg_id)) FROM ( \
             SELECT seq, recipient, kind, sender, msg_id FROM mailbox WHERE seq > ? \
             ORDER BY seq LIMIT +?)",
        )
        .bind(after)
        .bind(INDEX_LOAD_ROWS)
        .fetch_one(pool)
        .await?;
        let rows: Vec<KeyRow> = json_rows(&text)?;
        let n = rows.len();
        for row in rows {
            let (seq, key) = key_of(row)?;
            let tag = index.tag(&key);
            index.add(&key.recipient, seq, tag);
            after = after.max(seq);
        }
        if (n as i64) < INDEX_LOAD_ROWS {
            return Ok(index);
        }
    }
}

/// A row's seq and key, as `json_array(seq, recipient, kind, sender,
/// msg_id)` gives them.
type KeyRow<'a> = (i64, &'a str, i64, &'a str, &'a str);

/// The seq and key of a [`KeyRow`].
fn key_of((seq, recipient, kind, sender, id): KeyRow) -> Result<(i64, RowKey)> {
    Ok((
        seq,
        RowKey {
            recipient: user_name_of(recipient)?,
            kind: EntryKind::from_i64(kind)?,
            sender: user_name_of(sender)?,
            msg_id: msg_id(id)?,
        },
    ))
}

/// The duplicate-check key of an entry.
fn row_key(e: &NewEntry) -> RowKey {
    RowKey {
        recipient: e.recipient.clone(),
        kind: e.kind,
        sender: e.sender.clone(),
        msg_id: e.msg_id,
    }
}

/// Makes the commits of the database at `db` durable: its WAL, or the file
/// itself when there is no WAL (only after everything was checkpointed and
/// the file removed). Blocking.
fn sync_database(db: &Path) -> std::io::Result<()> {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    match std::fs::File::open(&wal) {
        Ok(f) => f.sync_data(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::File::open(db)?.sync_data(),
        Err(e) => Err(e),
    }
}

/// An envelope log failure as a store error.
fn log_error(e: &std::io::Error) -> super::StoreError {
    sqlx::Error::Io(std::io::Error::new(e.kind(), format!("envelope log: {e}"))).into()
}

fn log_int<T: TryFrom<i64>>(v: i64, what: &str) -> Result<T> {
    T::try_from(v).map_err(|_| super::StoreError::Corrupt(format!("envelope log {what} {v}")))
}

/// Envelopes shorter than this stay in their row.
const LOG_MIN: usize = 256;

/// Rows per multi-row statement: a few fixed sizes, so that the prepared
/// statements stay few and cached.
const CHUNK_SIZES: [usize; 5] = [256, 64, 16, 4, 1];

/// Splits `items` into chunks of the sizes in [`CHUNK_SIZES`], largest first.
fn chunks<T>(mut items: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        let n = CHUNK_SIZES.into_iter().find(|&c| c <= items.len())?;
        let (head, tail) = items.split_at(n);
        items = tail;
        Some(head)
    })
}

/// The statement `build` makes for `n` rows, for each of the
/// [`CHUNK_SIZES`], built once into `cache`.
fn sized_sql(
    cache: &'static std::sync::OnceLock<Vec<String>>,
    n: usize,
    build: fn(usize) -> String,
) -> &'static str {
    let all = cache.get_or_init(|| CHUNK_SIZES.iter().map(|&n| build(n)).collect());
    let at = CHUNK_SIZES
        .iter()
        .position(|&size| size == n)
        .expect("a chunk size");
    &all[at]
}

/// `n` bound parameters, comma-separated, for an `IN (...)` list.
fn marks(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// `INSERT` of `n` mailbox rows at given seqs (duplicates were left out
/// before: [`SqliteWriter::waiting`]).
fn insert_sql(n: usize) -> &'static str {
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    sized_sql(&SQL, n, |n| {
        let rows = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; n].join(", ");
        format!(
            "INSERT INTO mailbox (seq, recipient, kind, sender, msg_id, server_ts, expires_at, envelope, \
             log_seg, log_off, log_len) VALUES {rows}"
        )
    })
}

/// `DELETE` of up to `n` of one recipient's rows by seq.
fn delete_sql(n: usize) -> &'static str {
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    sized_sql(&SQL, n, |n| {
        let seqs = marks(n);
        format!("DELETE FROM mailbox WHERE recipient = ? AND seq IN ({seqs})")
    })
}

/// What [`delete_sql`] will delete, as one JSON array of
/// `[seq, kind, sender, msg_id, body_id, log_seg]` ([`GoneRow`]).
fn doomed_sql(n: usize) -> &'static str {
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    sized_sql(&SQL, n, |n| {
        let seqs = marks(n);
        format!(
            "SELECT json_group_array(json_array(seq, kind, sender, msg_id, body_id, log_seg)) \
             FROM mailbox WHERE recipient = ? AND seq IN ({seqs})"
        )
    })
}

/// A row about to be deleted: seq, kind, sender, msg_id, body_id, log_seg.
type GoneRow<'a> = (i64, i64, &'a str, &'a str, Option<i64>, Option<i64>);

/// A page row: seq, kind, sender, msg_id, server_ts, envelope (empty when
/// it is in the log, absent when too long for the aggregate), log_seg,
/// log_off, log_len. Names and msg ids are borrowed: they were checked when
/// written and hold nothing JSON escapes.
type PageRow<'a> = (
    i64,
    i64,
    &'a str,
    &'a str,
    i64,
    Option<Text<'a>>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);

/// A JSON string, borrowed from the aggregate unless it had escapes.
#[derive(serde::Deserialize)]
struct Text<'a>(#[serde(borrow)] std::borrow::Cow<'a, str>);

/// Envelopes longer than this many characters are left out of a page's
/// aggregate and read on their own ([`envelopes_sql`]), so that a page of
/// large group bodies or inline envelopes stays far below SQLite's limit
/// on one value (a billion bytes), whatever the frame limit.
const AGGREGATE_ENVELOPE_MAX: i64 = 16 * 1024;

/// The envelopes of up to `n` rows by seq, from their row or shared body.
fn envelopes_sql(n: usize) -> &'static str {
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    sized_sql(&SQL, n, |n| {
        let seqs = marks(n);
        format!(
            "SELECT m.seq, COALESCE(b.envelope, m.envelope) FROM mailbox m \
             LEFT JOIN bodies b ON b.id = m.body_id WHERE m.seq IN ({seqs})"
        )
    })
}

/// Rows aggregated into one JSON array by SQLite: one value through sqlx
/// instead of one hand-off from its worker thread per row, which cost
/// 2-3 µs a row (see [`SqliteStore::fetch_once`]).
fn json_rows<'a, T: serde::Deserialize<'a>>(text: &'a str) -> Result<Vec<T>> {
    serde_json::from_str(text).map_err(|e| super::StoreError::Corrupt(format!("mailbox rows: {e}")))
}

struct SqliteWriter {
    opts: SqliteConnectOptions,
    conn: SqliteConnection,
    /// The next mailbox seq to hand out: this connection is the only
    /// writer, so it keeps the counter (read once from the database and the
    /// high-water mark) and every insert takes its seq from here, never
    /// from AUTOINCREMENT.
    next_seq: Option<i64>,
    /// Seqs below this are covered by the durable high-water mark.
    reserved_to: i64,
    /// Where one-to-one envelopes are written.
    log: EnvelopeLog,
    /// A transaction is open: rows may point at bytes not yet written only
    /// inside one (its commit flushes them first).
    in_tx: bool,
    /// Runs of inserts with fewer envelope bytes than this keep them in
    /// their rows ([`WriterConfig::envelope_log_min_bytes`]): the log costs
    /// a transaction a second `fdatasync` on its commit path, which a small
    /// one (a lone message) feels as latency, while a large one gains more
    /// from writing its envelopes once. `telepound-bench --scenarios
    /// durable`: at 1 in flight, logging every run took 2.1k to 1.1-1.35k msgs/s;
    /// at 512, 40-59k to 74-78k (docs/BENCHMARKS.md).
    log_min: usize,
    /// The database's lock ([`lock_database`]), for as long as this writer
    /// may write the log or the mark.
    _lock: std::fs::File,
    /// The committed mailbox index, which the writer alone changes...
    index: SharedIndex,
    /// ...with the open transaction's changes, applied once it commits.
    pending: Pending,
    /// The index's tagger.
    tagger: Tagger,
}

/// Seqs reserved at a time in the high-water-mark file.
const SEQ_BLOCK: i64 = 1 << 20;

impl SqliteWriter {
    /// Whether a row with `key` is waiting: one this transaction wrote, or
    /// one of `committed` (the index's candidates for its tag) that the row
    /// itself confirms (the index keeps hashes; a collision must not lose
    /// a message).
    async fn waiting(&mut self, key: &RowKey, tag: Tag, committed: &[i64]) -> Result<bool> {
        if self.pending.holds(key, tag) {
            return Ok(true);
        }
        for &seq in committed {
            // Read in the transaction: a row it deleted is gone.
            let found: Option<i64> = sqlx::query_scalar(
                "SELECT 1 FROM mailbox WHERE seq = ? AND recipient = ? AND kind = ? \
                 AND sender = ? AND msg_id = ?",
            )
            .bind(seq)
            .bind(key.recipient.as_str())
            .bind(key.kind.to_i16())
            .bind(key.sender.as_str())
            .bind(key.msg_id.to_string())
            .fetch_optional(&mut self.conn)
            .await?;
            if found.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The tag of a row's key in the index.
    fn tag(&self, key: &RowKey) -> Tag {
        self.tagger.tag(key)
    }

    /// Mailbox rows change only inside a transaction, so that the index
    /// learns of them exactly when they commit. The writer makes every
    /// change in one; a change outside one (the connection was replaced
    /// in the middle of a batch, which ended its transaction) fails, and
    /// the writer runs the whole batch again on the new connection.
    fn in_transaction(&self) -> Result<()> {
        if self.in_tx {
            Ok(())
        } else {
            Err(sqlx::Error::Protocol(
                "a mailbox write outside a transaction (the connection was replaced mid-batch)"
                    .into(),
            )
            .into())
        }
    }

    /// A committed row's delete, for the index.
    fn removed(&mut self, recipient: &UserName, seq: i64, entry: &AckedEntry) {
        let key = RowKey {
            recipient: recipient.clone(),
            kind: entry.kind,
            sender: entry.sender.clone(),
            msg_id: entry.msg_id,
        };
        let tag = self.tag(&key);
        self.pending.remove(recipient, seq, tag);
    }

    async fn insert_one(&mut self, e: &NewEntry, body: Option<i64>) -> Result<Option<i64>> {
        let key = row_key(e);
        let tag = self.tag(&key);
        let committed = locked(&self.index).candidates(tag);
        if self.waiting(&key, tag, &committed).await? {
            return Ok(None);
        }
        let seq = self.take_seqs(1).await?;
        sqlx::query(
            "INSERT INTO mailbox (seq, recipient, kind, sender, msg_id, server_ts, expires_at, envelope, body_id) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(seq)
        .bind(e.recipient.as_str())
        .bind(e.kind.to_i16())
        .bind(e.sender.as_str())
        .bind(e.msg_id.to_string())
        .bind(e.server_ts)
        .bind(e.expires_at)
        .bind(if body.is_some() { "" } else { &*e.envelope })
        .bind(body)
        .execute(&mut self.conn)
        .await?;
        self.pending.add(seq, key, tag);
        Ok(Some(seq))
    }

    async fn insert_rows(&mut self, entries: &[(i64, &NewEntry)]) -> Result<Vec<bool>> {
        // Duplicates first, in order (a repeat within the batch loses to
        // its first), recorded as written at once so that later entries see
        // them; should a statement fail, the transaction and these go.
        let keys: Vec<RowKey> = entries.iter().map(|(_, e)| row_key(e)).collect();
        let tags: Vec<Tag> = keys.iter().map(|key| self.tag(key)).collect();
        let committed: Vec<Vec<i64>> = {
            let index = locked(&self.index);
            tags.iter().map(|tag| index.candidates(*tag)).collect()
        };
        let mut out = Vec::with_capacity(entries.len());
        let mut kept: Vec<(i64, &NewEntry)> = Vec::with_capacity(entries.len());
        for (((&(seq, e), key), tag), committed) in
            entries.iter().zip(keys).zip(tags).zip(&committed)
        {
            let new = !self.waiting(&key, tag, committed).await?;
            if new {
                self.pending.add(seq, key, tag);
                kept.push((seq, e));
            }
            out.push(new);
        }
        let entries = kept.as_slice();
        // One-to-one envelopes only: receipts, group records (and bodies,
        // in their own table) stay in SQLite.
        let loggable = |e: &NewEntry| e.kind == EntryKind::Message && e.envelope.len() >= LOG_MIN;
        let to_log = self.in_tx
            && entries
                .iter()
                .filter(|(_, e)| loggable(e))
                .map(|(_, e)| e.envelope.len())
                .sum::<usize>()
                >= self.log_min;
        // The envelopes go to the log first, and their write and sync start
        // before the rows are inserted, so that the two overlap; the commit
        // waits for both.
        let mut at = Vec::with_capacity(if to_log { entries.len() } else { 0 });
        if to_log {
            for (_, e) in entries {
                at.push(if loggable(e) {
                    Some(self.log.append(&e.envelope).map_err(|e| log_error(&e))?)
                } else {
                    None
                });
            }
            self.log.start_flush();
        }
        let mut offset = 0;
        for chunk in chunks(entries) {
            let refs = at.get(offset..offset + chunk.len()).unwrap_or_default();
            offset += chunk.len();
            let mut q = sqlx::query(insert_sql(chunk.len()));
            let mut logged = 0;
            for (i, (seq, e)) in chunk.iter().enumerate() {
                let at = refs.get(i).copied().flatten();
                logged += u64::from(at.is_some());
                q = q
                    .bind(*seq)
                    .bind(e.recipient.as_str())
                    .bind(e.kind.to_i16())
                    .bind(e.sender.as_str())
                    .bind(e.msg_id.to_string())
                    .bind(e.server_ts)
                    .bind(e.expires_at)
                    .bind(if at.is_some() { "" } else { &*e.envelope })
                    .bind(at.map(|r| i64::from(r.seg)))
                    .bind(at.map(|r| r.off as i64))
                    .bind(at.map(|r| i64::from(r.len)));
            }
            // A seq is never handed out twice, and duplicates were left
            // out: every row goes in.
            let written = q.execute(&mut self.conn).await?.rows_affected();
            if written != chunk.len() as u64 {
                return Err(super::StoreError::Corrupt(format!(
                    "wrote {written} mailbox rows of {}",
                    chunk.len()
                )));
            }
            self.log.added(logged);
        }
        Ok(out)
    }

    async fn delete_rows(&mut self, recipient: &UserName, seqs: &[i64]) -> Result<Vec<AckedEntry>> {
        let mut gone = Vec::with_capacity(seqs.len());
        let mut bodies = Vec::new();
        for chunk in chunks(seqs) {
            // The rows first, as one value, then the delete, which must
            // take exactly those (this connection is the only writer, in a
            // transaction). `DELETE ... RETURNING` passed each row on its
            // own: 8.6-11.3 µs a row against 3.1-4.3 for the two statements
            // (a sqlx microbenchmark on one core, 256 rows per statement).
            let mut q =
                sqlx::query_scalar::<_, String>(doomed_sql(chunk.len())).bind(recipient.as_str());
            for seq in chunk {
                q = q.bind(*seq);
            }
            let text = q.fetch_one(&mut self.conn).await?;
            let rows: Vec<GoneRow> = json_rows(&text)?;
            let mut q = sqlx::query(delete_sql(chunk.len())).bind(recipient.as_str());
            for seq in chunk {
                q = q.bind(*seq);
            }
            let deleted = q.execute(&mut self.conn).await?.rows_affected();
            if deleted != rows.len() as u64 {
                return Err(super::StoreError::Corrupt(format!(
                    "deleted {deleted} mailbox rows where {} were found",
                    rows.len()
                )));
            }
            for (seq, kind, sender, id, body, seg) in rows {
                if let Some(body) = body {
                    bodies.push(body);
                }
                if let Some(seg) = seg {
                    self.log.deleted(log_int(seg, "segment")?, 1);
                }
                let entry = AckedEntry {
                    kind: EntryKind::from_i64(kind)?,
                    sender: user_name_of(sender)?,
                    msg_id: msg_id(id)?,
                };
                self.removed(recipient, seq, &entry);
                gone.push((seq, entry));
            }
        }
        bodies.sort_unstable();
        bodies.dedup();
        for body in bodies {
            sqlx::query(
                "DELETE FROM bodies WHERE id = ? AND NOT EXISTS (SELECT 1 FROM mailbox WHERE body_id = ?)",
            )
            .bind(body)
            .bind(body)
            .execute(&mut self.conn)
            .await?;
        }
        // In the order the client listed them, as one-by-one deletes would.
        let order: std::collections::HashMap<i64, usize> = seqs
            .iter()
            .enumerate()
            .rev()
            .map(|(i, s)| (*s, i))
            .collect();
        gone.sort_by_key(|(seq, _)| order.get(seq).copied().unwrap_or(usize::MAX));
        Ok(gone.into_iter().map(|(_, e)| e).collect())
    }

    async fn delete_row(&mut self, recipient: &UserName, seq: i64) -> Result<Option<AckedEntry>> {
        let row = sqlx::query(
            "DELETE FROM mailbox WHERE recipient = ? AND seq = ? RETURNING kind, sender, msg_id, body_id, log_seg",
        )
        .bind(recipient.as_str())
        .bind(seq)
        .fetch_optional(&mut self.conn)
        .await?;
        if let Some(seg) = row
            .as_ref()
            .map(|r| r.try_get::<Option<i64>, _>("log_seg"))
            .transpose()?
            .flatten()
        {
            self.log.deleted(log_int(seg, "segment")?, 1);
        }
        if let Some(body) = row
            .as_ref()
            .map(|r| r.try_get::<Option<i64>, _>("body_id"))
            .transpose()?
            .flatten()
        {
            sqlx::query(
                "DELETE FROM bodies WHERE id = ? AND NOT EXISTS (SELECT 1 FROM mailbox WHERE body_id = ?)",
            )
            .bind(body)
            .bind(body)
            .execute(&mut self.conn)
            .await?;
        }
        let gone = row
            .map(|row| {
                Ok::<_, super::StoreError>(AckedEntry {
                    kind: EntryKind::from_i64(row.try_get("kind")?)?,
                    sender: user_name(row.try_get("sender")?)?,
                    msg_id: msg_id(row.try_get("msg_id")?)?,
                })
            })
            .transpose()?;
        if let Some(entry) = &gone {
            self.removed(recipient, seq, entry);
        }
        Ok(gone)
    }

    async fn expire_rows(&mut self, now: UnixMillis) -> Result<u64> {
        let logged: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT log_seg, COUNT(*) FROM mailbox WHERE expires_at < ? AND log_seg IS NOT NULL \
             GROUP BY log_seg",
        )
        .bind(now)
        .fetch_all(&mut self.conn)
        .await?;
        for (seg, n) in logged {
            self.log
                .deleted(log_int(seg, "segment")?, log_int(n, "count")?);
        }
        // A block of rows at a time, each block's keys as one JSON value,
        // for the index.
        let mut n = 0;
        loop {
            let text: String = sqlx::query_scalar(
                "SELECT json_group_array(json_array(seq, recipient, kind, sender, msg_id)) FROM ( \
                 SELECT seq, recipient, kind, sender, msg_id FROM mailbox WHERE expires_at < ? \
                 ORDER BY expires_at LIMIT +?)",
            )
            .bind(now)
            .bind(INDEX_LOAD_ROWS)
            .fetch_one(&mut self.conn)
            .await?;
            let rows: Vec<KeyRow> = json_rows(&text)?;
            if rows.is_empty() {
                break;
            }
            let seqs: Vec<i64> = rows.iter().map(|r| r.0).collect();
            let deleted =
                sqlx::query("DELETE FROM mailbox WHERE seq IN (SELECT value FROM json_each(?))")
                    .bind(
                        serde_json::to_string(&seqs)
                            .map_err(|e| super::StoreError::Corrupt(e.to_string()))?,
                    )
                    .execute(&mut self.conn)
                    .await?
                    .rows_affected();
            if deleted != rows.len() as u64 {
                return Err(super::StoreError::Corrupt(format!(
                    "deleted {deleted} expired mailbox rows where {} were found",
                    rows.len()
                )));
            }
            n += deleted;
            let last = (rows.len() as i64) < INDEX_LOAD_ROWS;
            for row in rows {
                let (seq, key) = key_of(row)?;
                let tag = self.tag(&key);
                self.pending.remove(&key.recipient, seq, tag);
            }
            if last {
                break;
            }
        }
        sqlx::query(
            "DELETE FROM bodies WHERE NOT EXISTS (SELECT 1 FROM mailbox WHERE mailbox.body_id = bodies.id)",
        )
        .execute(&mut self.conn)
        .await?;
        sqlx::query("DELETE FROM sessions WHERE expires_at < ?")
            .bind(now)
            .execute(&mut self.conn)
            .await?;
        Ok(n)
    }

    /// The file beside the database that holds the seq high-water mark.
    fn seq_file(&self) -> std::path::PathBuf {
        let mut p = self.opts.get_filename().as_os_str().to_owned();
        p.push("-seq");
        p.into()
    }

    /// Hands out `n` seqs, returning the first. Seqs of messages acknowledged
    /// in the ack window are never stored, so the database alone cannot say
    /// which were used; the high-water mark, made durable in blocks before
    /// any seq of a block is handed out, can. A seq is therefore never
    /// reused, even after a crash.
    async fn take_seqs(&mut self, n: usize) -> Result<i64> {
        let (next, reserved_to) = match self.next_seq {
            Some(next) => (next, self.reserved_to),
            None => {
                // AUTOINCREMENT's record covers rows since deleted.
                let used: i64 = sqlx::query_scalar(
                    "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'mailbox'), 0), \
                            COALESCE((SELECT MAX(seq) FROM mailbox), 0))",
                )
                .fetch_one(&mut self.conn)
                .await?;
                let mark = read_seq_mark(&self.seq_file()).map_err(sqlx::Error::Io)?;
                let next = (used + 1).max(mark);
                (next, next)
            }
        };
        let end = next + n as i64;
        if end > reserved_to {
            let mark = end + SEQ_BLOCK;
            let path = self.seq_file();
            tokio::task::spawn_blocking(move || write_seq_mark(&path, mark))
                .await
                .map_err(|e| sqlx::Error::Io(std::io::Error::other(e)))?
                .map_err(sqlx::Error::Io)?;
            self.reserved_to = mark;
        }
        self.next_seq = Some(end);
        Ok(next)
    }
}

/// The high-water mark (every seq handed out is below it), 0 when there is
/// no file yet.
fn read_seq_mark(path: &Path) -> std::io::Result<i64> {
    match std::fs::read_to_string(path) {
        Ok(text) => text.trim().parse().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} does not hold a number", path.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

/// Replaces the high-water mark durably (write, sync, rename, sync the
/// folder), so a crash leaves the old mark or the new one.
fn write_seq_mark(path: &Path, mark: i64) -> std::io::Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp)?;
    writeln!(f, "{mark}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[async_trait]
impl WriteConn for SqliteWriter {
    fn durability(&self) -> Option<super::writer::SyncFn> {
        let db = self.opts.get_filename().to_path_buf();
        let doomed = self.log.doomed();
        Some(Arc::new(move || {
            // Segments emptied by commits before this sync, removed once
            // the sync has made those deletes durable.
            let spent = std::mem::take(&mut *doomed.lock().expect("doomed lock"));
            sync_database(&db)?;
            super::envlog::remove_segments(spent);
            Ok(())
        }))
    }

    async fn begin(&mut self) -> Result<()> {
        // IMMEDIATE takes the write lock now, not at the first write.
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut self.conn)
            .await?;
        self.in_tx = true;
        self.pending.clear();
        Ok(())
    }

    async fn commit(&mut self) -> Result<()> {
        self.in_tx = false;
        // The rows may only commit once the bytes they point at are durable.
        if let Err(e) = self.log.flush().await {
            let _ = sqlx::query("ROLLBACK").execute(&mut self.conn).await;
            self.log.rolled_back();
            self.pending.clear();
            return Err(log_error(&e));
        }
        match sqlx::query("COMMIT").execute(&mut self.conn).await {
            Ok(_) => {
                self.log.committed();
                // Before anyone hears of the batch (its pushes, a flush's
                // reply), so a fetch after them finds its rows.
                locked(&self.index).apply(&mut self.pending);
                Ok(())
            }
            Err(e) => {
                self.log.rolled_back();
                self.pending.clear();
                Err(e.into())
            }
        }
    }

    async fn rollback(&mut self) {
        self.in_tx = false;
        let _ = sqlx::query("ROLLBACK").execute(&mut self.conn).await;
        self.log.rolled_back();
        self.pending.clear();
    }

    async fn reserve_seqs(&mut self, n: usize) -> Result<Vec<i64>> {
        let first = self.take_seqs(n).await?;
        Ok((first..first + n as i64).collect())
    }

    async fn insert_at(&mut self, seq: i64, e: &NewEntry) -> Result<bool> {
        Ok(self.insert_many(&[(seq, e)]).await?[0])
    }

    async fn insert(&mut self, e: &NewEntry, body: Option<i64>) -> Result<Option<i64>> {
        self.in_transaction()?;
        self.insert_one(e, body).await
    }

    async fn insert_many(&mut self, entries: &[(i64, &NewEntry)]) -> Result<Vec<bool>> {
        self.in_transaction()?;
        self.insert_rows(entries).await
    }

    async fn delete_many(&mut self, recipient: &UserName, seqs: &[i64]) -> Result<Vec<AckedEntry>> {
        self.in_transaction()?;
        self.delete_rows(recipient, seqs).await
    }

    async fn insert_body(&mut self, envelope: &str) -> Result<i64> {
        Ok(
            sqlx::query_scalar("INSERT INTO bodies (envelope) VALUES (?) RETURNING id")
                .bind(envelope)
                .fetch_one(&mut self.conn)
                .await?,
        )
    }

    async fn delete(&mut self, recipient: &UserName, seq: i64) -> Result<Option<AckedEntry>> {
        self.in_transaction()?;
        self.delete_row(recipient, seq).await
    }

    async fn expire(&mut self, now: UnixMillis) -> Result<u64> {
        self.in_transaction()?;
        self.expire_rows(now).await
    }

    async fn reconnect(&mut self) -> Result<()> {
        // The old connection's transaction is gone with it, and what follows
        // runs outside one: nothing more may point into the log until the
        // next `begin`.
        self.in_tx = false;
        self.log.rolled_back();
        self.pending.clear();
        self.conn = self.opts.connect().await?;
        Ok(())
    }

    async fn group_members(&mut self, group: &GroupName) -> Result<Option<Vec<GroupMember>>> {
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM groups WHERE name = ?")
            .bind(group.as_str())
            .fetch_optional(&mut self.conn)
            .await?;
        if exists.is_none() {
            return Ok(None);
        }
        let rows = sqlx::query(
            "SELECT user_name, role, joined_at FROM group_members WHERE group_name = ? ORDER BY id",
        )
        .bind(group.as_str())
        .fetch_all(&mut self.conn)
        .await?;
        rows.into_iter()
            .map(|r| member_from_row(&r))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    async fn create_group(&mut self, group: &GroupName, now: UnixMillis) -> Result<()> {
        sqlx::query("INSERT INTO groups (name, created_at) VALUES (?, ?)")
            .bind(group.as_str())
            .bind(now)
            .execute(&mut self.conn)
            .await?;
        Ok(())
    }

    async fn add_member(
        &mut self,
        group: &GroupName,
        user: &UserName,
        role: Role,
        now: UnixMillis,
        epoch: u64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO group_members (group_name, user_name, role, joined_at, joined_epoch) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(group.as_str())
        .bind(user.as_str())
        .bind(role_to_i16(role))
        .bind(now)
        .bind(epoch as i64)
        .execute(&mut self.conn)
        .await?;
        Ok(())
    }

    async fn remove_member(&mut self, group: &GroupName, user: &UserName) -> Result<()> {
        sqlx::query("DELETE FROM group_members WHERE group_name = ? AND user_name = ?")
            .bind(group.as_str())
            .bind(user.as_str())
            .execute(&mut self.conn)
            .await?;
        Ok(())
    }

    async fn set_role(&mut self, group: &GroupName, user: &UserName, role: Role) -> Result<()> {
        sqlx::query("UPDATE group_members SET role = ? WHERE group_name = ? AND user_name = ?")
            .bind(role_to_i16(role))
            .bind(group.as_str())
            .bind(user.as_str())
            .execute(&mut self.conn)
            .await?;
        Ok(())
    }

    async fn delete_group(&mut self, group: &GroupName) -> Result<()> {
        for sql in [
            "DELETE FROM group_members WHERE group_name = ?",
            "DELETE FROM group_log WHERE group_name = ?",
            "DELETE FROM groups WHERE name = ?",
        ] {
            sqlx::query(sql)
                .bind(group.as_str())
                .execute(&mut self.conn)
                .await?;
        }
        Ok(())
    }

    async fn group_head(&mut self, group: &GroupName) -> Result<Option<(u64, Vec<u8>)>> {
        let row: Option<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT epoch, hash FROM group_log WHERE group_name = ? ORDER BY epoch DESC LIMIT 1",
        )
        .bind(group.as_str())
        .fetch_optional(&mut self.conn)
        .await?;
        Ok(row.map(|(e, h)| (e as u64, h)))
    }

    async fn group_record_hash(
        &mut self,
        group: &GroupName,
        epoch: u64,
    ) -> Result<Option<Vec<u8>>> {
        Ok(
            sqlx::query_scalar("SELECT hash FROM group_log WHERE group_name = ? AND epoch = ?")
                .bind(group.as_str())
                .bind(epoch as i64)
                .fetch_optional(&mut self.conn)
                .await?,
        )
    }

    async fn insert_record(
        &mut self,
        group: &GroupName,
        epoch: u64,
        hash: &[u8; 32],
        record: &str,
    ) -> Result<()> {
        sqlx::query("INSERT INTO group_log (group_name, epoch, hash, record) VALUES (?, ?, ?, ?)")
            .bind(group.as_str())
            .bind(epoch as i64)
            .bind(&hash[..])
            .bind(record)
            .execute(&mut self.conn)
            .await?;
        Ok(())
    }
}

fn role_of(r: &sqlx::sqlite::SqliteRow) -> Result<i64> {
    Ok(r.try_get::<i64, _>("role")?)
}

fn member_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<GroupMember> {
    Ok(GroupMember {
        user: user_name(r.try_get("user_name")?)?,
        role: role_from_i64(role_of(r)?),
        joined_at: r.try_get("joined_at")?,
    })
}

fn keys_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<PublicKeys> {
    Ok(PublicKeys {
        identity: B64(row.try_get("identity_key")?),
        kem: B64(row.try_get("kem_key")?),
        kem_sig: B64(row.try_get("kem_sig")?),
    })
}

impl SqliteStore {
    /// A page of the mailbox; `None` when an envelope's segment, or a row
    /// whose envelope is read apart, is gone (read the page again). A short
    /// page means the mailbox has no more: where a seq the index gave has
    /// no row (its delete committed, the index not told yet) the page is
    /// filled from the seqs after it.
    async fn fetch_once(
        &self,
        recipient: &UserName,
        after_seq: i64,
        limit: u32,
    ) -> Result<Option<Vec<StoredEntry>>> {
        let limit = limit as usize;
        let mut page = Vec::new();
        let mut after = after_seq;
        loop {
            let seqs = locked(&self.index).page(recipient, after, limit - page.len());
            let Some(&last) = seqs.last() else {
                return Ok(Some(page));
            };
            after = last;
            let Some(rows) = self.read_rows(recipient, &seqs).await? else {
                return Ok(None);
            };
            let all = rows.len() == seqs.len();
            page.extend(rows);
            if all {
                return Ok(Some(page));
            }
        }
    }

    /// The rows of `seqs` (ascending) that are `recipient`'s, in order;
    /// `None` as for [`SqliteStore::fetch_once`].
    async fn read_rows(
        &self,
        recipient: &UserName,
        seqs: &[i64],
    ) -> Result<Option<Vec<StoredEntry>>> {
        // The seqs as one JSON array, each looked up by rowid. The rows
        // come back as one JSON array too ([`json_rows`]): 0.6-1.0 µs a
        // row, against 3.1-3.3 for a row at a time through sqlx (a
        // microbenchmark on one core, pages of 1024).
        let wanted = serde_json::to_string(seqs)
            .map_err(|e| super::StoreError::Corrupt(format!("mailbox seqs: {e}")))?;
        let text: String = sqlx::query_scalar(
            "SELECT json_group_array(json_array(seq, kind, sender, msg_id, server_ts, \
             CASE WHEN length(envelope) <= ? THEN envelope END, \
             log_seg, log_off, log_len)) FROM ( \
             SELECT m.seq, m.kind, m.sender, m.msg_id, m.server_ts, \
             COALESCE(b.envelope, m.envelope) AS envelope, m.log_seg, m.log_off, m.log_len \
             FROM json_each(?) j JOIN mailbox m ON m.seq = j.value \
             LEFT JOIN bodies b ON b.id = m.body_id WHERE m.recipient = ?)",
        )
        .bind(AGGREGATE_ENVELOPE_MAX)
        .bind(wanted)
        .bind(recipient.as_str())
        .fetch_one(&self.pool)
        .await?;
        let mut rows: Vec<PageRow> = json_rows(&text)?;
        // An aggregate's order is not promised; the page's is.
        rows.sort_by_key(|r| r.0);
        let mut entries = Vec::with_capacity(rows.len());
        let mut logged = Vec::new();
        let mut long = Vec::new();
        for (seq, kind, sender, id, server_ts, envelope, seg, off, len) in rows {
            let envelope = if let Some(seg) = seg {
                let (Some(off), Some(len)) = (off, len) else {
                    return Err(super::StoreError::Corrupt(format!(
                        "mailbox row {seq} names envelope log segment {seg} without an offset and a length"
                    )));
                };
                let at = LogRef {
                    seg: log_int(seg, "segment")?,
                    off: log_int(off, "offset")?,
                    len: log_int(len, "length")?,
                };
                logged.push((entries.len(), at));
                Arc::from("")
            } else if let Some(Text(text)) = envelope {
                Arc::from(text)
            } else {
                long.push((entries.len(), seq));
                Arc::from("")
            };
            entries.push(StoredEntry {
                seq,
                kind: EntryKind::from_i64(kind)?,
                sender: user_name_of(sender)?,
                msg_id: msg_id(id)?,
                server_ts,
                envelope,
            });
        }
        for chunk in chunks(&long) {
            let mut q = sqlx::query_as::<_, (i64, String)>(envelopes_sql(chunk.len()));
            for (_, seq) in chunk {
                q = q.bind(*seq);
            }
            let found: std::collections::HashMap<i64, String> =
                q.fetch_all(&self.pool).await?.into_iter().collect();
            for (i, seq) in chunk {
                // Deleted since the page was read: read the page again.
                let Some(envelope) = found.get(seq) else {
                    return Ok(None);
                };
                entries[*i].envelope = Arc::from(envelope.as_str());
            }
        }
        if logged.is_empty() {
            return Ok(Some(entries));
        }
        let reader = self.log.clone();
        let refs: Vec<LogRef> = logged.iter().map(|(_, at)| *at).collect();
        let read = tokio::task::spawn_blocking(move || reader.read(&refs))
            .await
            .map_err(|e| sqlx::Error::Io(std::io::Error::other(e)))?
            .map_err(|e| log_error(&e))?;
        for ((i, _), envelope) in logged.into_iter().zip(read) {
            let Some(envelope) = envelope else {
                return Ok(None);
            };
            entries[i].envelope = envelope;
        }
        Ok(Some(entries))
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn server_setup(&self, fresh: &[u8]) -> Result<Vec<u8>> {
        sqlx::query("INSERT INTO server_state (name, value) VALUES ('opaque_setup', ?) ON CONFLICT (name) DO NOTHING")
            .bind(fresh)
            .execute(&self.pool)
            .await?;
        Ok(
            sqlx::query_scalar("SELECT value FROM server_state WHERE name = 'opaque_setup'")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn create_user(&self, u: &NewUser) -> Result<bool> {
        let r = sqlx::query(
            "INSERT INTO users (name, opaque_record, ksf, identity_key, kem_key, kem_sig, key_backup, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
        )
        .bind(u.name.as_str())
        .bind(&u.opaque_record)
        .bind(ksf_to_text(&u.ksf))
        .bind(&u.keys.identity.0)
        .bind(&u.keys.kem.0)
        .bind(&u.keys.kem_sig.0)
        .bind(&u.key_backup)
        .bind(u.created_at)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn user(&self, name: &UserName) -> Result<Option<UserRecord>> {
        let row = sqlx::query(
            "SELECT opaque_record, ksf, identity_key, kem_key, kem_sig, key_backup FROM users WHERE name = ?",
        )
        .bind(name.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(UserRecord {
                opaque_record: row.try_get("opaque_record")?,
                ksf: ksf_from_text(row.try_get("ksf")?)?,
                keys: keys_from_row(&row)?,
                key_backup: row.try_get("key_backup")?,
            })
        })
        .transpose()
    }

    async fn users_exist(&self, names: &[UserName]) -> Result<Vec<bool>> {
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM users WHERE name = ?")
                .bind(n.as_str())
                .fetch_optional(&self.pool)
                .await?;
            out.push(found.is_some());
        }
        Ok(out)
    }

    async fn public_keys(&self, names: &[UserName]) -> Result<Vec<(UserName, PublicKeys)>> {
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            let row =
                sqlx::query("SELECT identity_key, kem_key, kem_sig FROM users WHERE name = ?")
                    .bind(n.as_str())
                    .fetch_optional(&self.pool)
                    .await?;
            if let Some(row) = row {
                out.push((n.clone(), keys_from_row(&row)?));
            }
        }
        Ok(out)
    }

    async fn last_seen(&self, names: &[UserName]) -> Result<Vec<(UserName, Option<UnixMillis>)>> {
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            let row: Option<(Option<i64>,)> =
                sqlx::query_as("SELECT last_seen FROM users WHERE name = ?")
                    .bind(n.as_str())
                    .fetch_optional(&self.pool)
                    .await?;
            if let Some((seen,)) = row {
                out.push((n.clone(), seen));
            }
        }
        Ok(out)
    }

    async fn set_last_seen(&self, name: &UserName, at: UnixMillis) -> Result<()> {
        sqlx::query("UPDATE users SET last_seen = MAX(COALESCE(last_seen, 0), ?) WHERE name = ?")
            .bind(at)
            .bind(name.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn create_session(
        &self,
        token_hash: &[u8],
        user: &UserName,
        expires_at: UnixMillis,
    ) -> Result<()> {
        sqlx::query("INSERT INTO sessions (token_hash, user_name, expires_at) VALUES (?, ?, ?)")
            .bind(token_hash)
            .bind(user.as_str())
            .bind(expires_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn session_user(&self, token_hash: &[u8], now: UnixMillis) -> Result<Option<UserName>> {
        let name: Option<String> = sqlx::query_scalar(
            "SELECT user_name FROM sessions WHERE token_hash = ? AND expires_at > ?",
        )
        .bind(token_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        name.map(user_name).transpose()
    }

    async fn enqueue(&self, entries: Vec<NewEntry>) -> Result<Vec<Option<i64>>> {
        self.writer.insert(entries).await
    }

    async fn waiting_since(
        &self,
        recipient: &UserName,
        kind: EntryKind,
        sender: &UserName,
        msg_id: telepound_protocol::MsgId,
    ) -> Result<Option<UnixMillis>> {
        let key = RowKey {
            recipient: recipient.clone(),
            kind,
            sender: sender.clone(),
            msg_id,
        };
        let seqs = {
            let index = locked(&self.index);
            index.candidates(index.tag(&key))
        };
        for seq in seqs {
            let found: Option<UnixMillis> = sqlx::query_scalar(
                "SELECT server_ts FROM mailbox \
                 WHERE seq = ? AND recipient = ? AND kind = ? AND sender = ? AND msg_id = ?",
            )
            .bind(seq)
            .bind(recipient.as_str())
            .bind(kind.to_i16())
            .bind(sender.as_str())
            .bind(msg_id.to_string())
            .fetch_optional(&self.pool)
            .await?;
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    async fn fetch(
        &self,
        recipient: &UserName,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<StoredEntry>> {
        // Messages still in the ack window are written first, so a fetch
        // sees everything handed a seq so far.
        self.writer.flush(recipient).await?;
        // A row read here may be deleted, and its segment removed, before
        // its envelope is read: then the rows are read again, without it.
        let mut tries = 0;
        loop {
            tries += 1;
            if let Some(entries) = self.fetch_once(recipient, after_seq, limit).await? {
                return Ok(entries);
            }
            if tries == 3 {
                return Err(super::StoreError::Corrupt(
                    "mailbox rows point into envelope log segments that are gone".into(),
                ));
            }
        }
    }

    async fn ack(
        &self,
        recipient: &UserName,
        seqs: Vec<i64>,
        now: UnixMillis,
        receipt_expires_at: UnixMillis,
    ) -> Result<u64> {
        self.writer
            .ack(recipient.clone(), seqs, now, receipt_expires_at)
            .await
    }

    async fn expire(&self, now: UnixMillis) -> Result<u64> {
        self.writer.expire(now).await
    }

    async fn create_blob(
        &self,
        blob: &NewBlob,
        quota: u64,
    ) -> Result<std::result::Result<(), u64>> {
        let NewBlob {
            id,
            owner,
            size,
            recipients,
            created_at: now,
            expires_at,
        } = blob;
        let (size, now, expires_at) = (*size, *now, *expires_at);
        // IMMEDIATE: the quota is read and then written in one transaction,
        // and a deferred one could not upgrade if another write came between.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let used: i64 =
            sqlx::query_scalar("SELECT COALESCE(SUM(size), 0) FROM blobs WHERE owner = ?")
                .bind(owner.as_str())
                .fetch_one(&mut *tx)
                .await?;
        let used = used.max(0) as u64;
        if used.saturating_add(size) > quota {
            return Ok(Err(used));
        }
        sqlx::query(
            "INSERT INTO blobs (id, owner, size, received, created_at, expires_at) VALUES (?, ?, ?, 0, ?, ?)",
        )
        .bind(id.as_str())
        .bind(owner.as_str())
        .bind(size as i64)
        .bind(now)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        for r in recipients {
            sqlx::query("INSERT INTO blob_recipients (blob_id, user_name) VALUES (?, ?) ON CONFLICT DO NOTHING")
                .bind(id)
                .bind(r.as_str())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Ok(()))
    }

    async fn blob(&self, id: &str) -> Result<Option<BlobRecord>> {
        let Some(row) =
            sqlx::query("SELECT owner, size, received, expires_at FROM blobs WHERE id = ?")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
        else {
            return Ok(None);
        };
        let rows = sqlx::query(
            "SELECT user_name, done FROM blob_recipients WHERE blob_id = ? ORDER BY user_name",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        let mut recipients = Vec::with_capacity(rows.len());
        for r in rows {
            recipients.push((
                user_name(r.try_get("user_name")?)?,
                r.try_get::<i64, _>("done")? != 0,
            ));
        }
        Ok(Some(BlobRecord {
            owner: user_name(row.try_get("owner")?)?,
            size: row.try_get::<i64, _>("size")?.max(0) as u64,
            received: row.try_get::<i64, _>("received")?.max(0) as u64,
            expires_at: row.try_get("expires_at")?,
            recipients,
        }))
    }

    async fn set_blob_received(&self, id: &str, received: u64) -> Result<()> {
        sqlx::query("UPDATE blobs SET received = ? WHERE id = ?")
            .bind(received as i64)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn blob_fetched(&self, id: &str, user: &UserName) -> Result<bool> {
        sqlx::query("UPDATE blob_recipients SET done = 1 WHERE blob_id = ? AND user_name = ?")
            .bind(id)
            .bind(user.as_str())
            .execute(&self.pool)
            .await?;
        let left: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM blob_recipients WHERE blob_id = ? AND NOT done",
        )
        .bind(id)
        .fetch_one(&self.pool)
        .await?;
        Ok(left == 0)
    }

    async fn delete_blob(&self, id: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM blob_recipients WHERE blob_id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM blobs WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn expired_blobs(&self, now: UnixMillis) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT id FROM blobs WHERE expires_at < ?")
                .bind(now)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn group(&self, op: GroupOp, max: usize, now: UnixMillis) -> Result<GroupResult> {
        self.writer.group(op, max, now).await
    }

    async fn group_members(&self, group: &GroupName) -> Result<Option<Vec<GroupMember>>> {
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM groups WHERE name = ?")
            .bind(group.as_str())
            .fetch_optional(&self.pool)
            .await?;
        if exists.is_none() {
            return Ok(None);
        }
        let rows = sqlx::query(
            "SELECT user_name, role, joined_at FROM group_members WHERE group_name = ? ORDER BY id",
        )
        .bind(group.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| member_from_row(&r))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    async fn group_view(
        &self,
        group: &GroupName,
        user: &UserName,
        since: Option<u64>,
        limit: usize,
    ) -> Result<Option<GroupView>> {
        // One read transaction: in WAL mode every read in it sees the same
        // snapshot, so the members and the records always agree.
        let mut tx = self.pool.begin().await?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM groups WHERE name = ?")
            .bind(group.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Ok(None);
        }
        let rows = sqlx::query(
            "SELECT user_name, role, joined_at, joined_epoch FROM group_members WHERE group_name = ? ORDER BY id",
        )
        .bind(group.as_str())
        .fetch_all(&mut *tx)
        .await?;
        let mut members = Vec::with_capacity(rows.len());
        let mut joined = None;
        for r in &rows {
            let m = member_from_row(r)?;
            if &m.user == user {
                joined = r.try_get::<Option<i64>, _>("joined_epoch")?;
            }
            members.push(m);
        }
        let epoch: Option<i64> =
            sqlx::query_scalar("SELECT MAX(epoch) FROM group_log WHERE group_name = ?")
                .bind(group.as_str())
                .fetch_one(&mut *tx)
                .await?;
        // Records with epoch >= from.
        let from = match since {
            // Past the last epoch there can be (or beyond i64): nothing.
            Some(e) => Some(
                i64::try_from(e)
                    .ok()
                    .and_then(|e| e.checked_add(1))
                    .unwrap_or(i64::MAX),
            ),
            None => joined,
        };
        let records = match from {
            Some(from) => {
                // `LIMIT +?`: see `fetch_once`.
                sqlx::query_scalar(
                    "SELECT record FROM group_log WHERE group_name = ? AND epoch >= ? ORDER BY epoch LIMIT +?",
                )
                .bind(group.as_str())
                .bind(from)
                .bind(limit as i64)
                .fetch_all(&mut *tx)
                .await?
            }
            None => Vec::new(),
        };
        tx.commit().await?;
        Ok(Some(GroupView {
            members,
            epoch: epoch.map(|e| e as u64),
            records,
        }))
    }

    async fn groups_of(&self, user: &UserName) -> Result<Vec<GroupSummary>> {
        let rows = sqlx::query(
            "SELECT m.group_name, m.role, (SELECT COUNT(*) FROM group_members c WHERE c.group_name = m.group_name) AS n \
             FROM group_members m WHERE m.user_name = ? ORDER BY m.group_name",
        )
        .bind(user.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(GroupSummary {
                    group: group_name(r.try_get("group_name")?)?,
                    role: role_from_i64(role_of(&r)?),
                    members: r.try_get::<i64, _>("n")?.max(0) as u32,
                })
            })
            .collect()
    }

    async fn mailbox_depth(&self) -> Result<u64> {
        Ok(locked(&self.index).rows())
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        self.writer.close().await;
        self.checkpointer.abort();
        self.pool.close().await;
    }
}
