//! Persistent state behind one [`Store`] trait, with a SQLite backend (the
//! embedded default) and a PostgreSQL backend.
//!
//! Mailbox writes (the hot path) go through one writer task per store that
//! batches every waiting insert and delete into a single transaction (group
//! commit); each caller waits for its batch's commit, so `accepted` is only
//! ever sent for a durable write. Everything else is a plain query on a pool.
//!
//! SQL is built from constant strings only, and every value is a bound
//! parameter.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use telepound_protocol::message::{GroupMember, GroupSummary, PublicKeys, UnixMillis};
use telepound_protocol::{GroupName, MsgId, UserName, auth::KsfParams};

pub mod conformance;
mod envlog;
pub mod groups;
mod mbindex;
pub mod postgres;
pub mod sqlite;
mod writer;

pub(crate) use writer::RECEIPTS_PER_ROW;
pub use writer::{CommitListener, Quiet, WriterConfig};

/// Store errors. The cause is logged by the caller; clients see `internal`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed a query.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations failed or the schema is from a newer version.
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The schema is missing or behind and this server may not migrate.
    #[error("the database schema is not migrated ({0}); run `telepound migrate` as the owner role")]
    NotMigrated(String),
    /// The writer task is gone (the store is shutting down).
    #[error("the store's writer has stopped")]
    WriterGone,
    /// The batch this write was in did not commit (the cause is logged).
    #[error("the write did not commit")]
    BatchFailed,
    /// A stored value does not decode (corruption or manual edits).
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
    /// Another process has this SQLite database open (it holds the lock
    /// file named).
    #[error("{0} is locked: another telepound server has this database open")]
    InUse(String),
}

/// This module's result type.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A new account.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Its name.
    pub name: UserName,
    /// The OPAQUE registration record.
    pub opaque_record: Vec<u8>,
    /// Argon2 parameters the client registered with.
    pub ksf: KsfParams,
    /// Public keys for the directory.
    pub keys: PublicKeys,
    /// The sealed private-key backup.
    pub key_backup: Vec<u8>,
    /// Creation time.
    pub created_at: UnixMillis,
}

/// What login needs of an account.
#[derive(Debug, Clone)]
pub struct UserRecord {
    /// The OPAQUE registration record.
    pub opaque_record: Vec<u8>,
    /// Argon2 parameters.
    pub ksf: KsfParams,
    /// Published public keys.
    pub keys: PublicKeys,
    /// The sealed private-key backup.
    pub key_backup: Vec<u8>,
}

/// What a mailbox entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A sealed message.
    Message,
    /// A delivery receipt for a message the recipient sent; `sender` is who
    /// received it.
    Receipt,
    /// Receipts for several messages the recipient sent, from one
    /// acknowledgement by `sender`: `envelope` holds their ids, separated by
    /// spaces, in the order acknowledged (`msg_id` is a fresh id of the
    /// row's own). One row instead of one per message; a `sync` sends one
    /// `delivered` frame per id, all with this entry's seq. A server from
    /// before 2026-12-02 reads this kind as corrupt.
    Receipts,
    /// A sealed group message (acknowledging it makes no receipt).
    GroupMessage,
    /// A signed group record: a membership change line (`envelope` holds
    /// the record's JSON, `sender` its actor).
    GroupChange,
}

impl EntryKind {
    pub(crate) fn to_i16(self) -> i16 {
        match self {
            Self::Message => 0,
            Self::Receipt => 1,
            Self::GroupMessage => 2,
            Self::GroupChange => 3,
            Self::Receipts => 4,
        }
    }

    pub(crate) fn from_i64(v: i64) -> Result<Self> {
        match v {
            0 => Ok(Self::Message),
            1 => Ok(Self::Receipt),
            2 => Ok(Self::GroupMessage),
            3 => Ok(Self::GroupChange),
            4 => Ok(Self::Receipts),
            other => Err(StoreError::Corrupt(format!("mailbox kind {other}"))),
        }
    }
}

/// A mailbox entry to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    /// Whose mailbox.
    pub recipient: UserName,
    /// Message or receipt.
    pub kind: EntryKind,
    /// The message's sender (for a receipt: who received it).
    pub sender: UserName,
    /// The message id.
    pub msg_id: MsgId,
    /// Server time of acceptance.
    pub server_ts: UnixMillis,
    /// When it is deleted if never acknowledged.
    pub expires_at: UnixMillis,
    /// The sealed envelope JSON (empty for a receipt, the ids for
    /// [`EntryKind::Receipts`]), shared: a group message's entries all hold
    /// the same one.
    pub envelope: Arc<str>,
}

/// A stored mailbox entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    /// Mailbox sequence number, increasing per store.
    pub seq: i64,
    /// Message or receipt.
    pub kind: EntryKind,
    /// The sender (for a receipt: who received it).
    pub sender: UserName,
    /// The message id.
    pub msg_id: MsgId,
    /// Server time of acceptance.
    pub server_ts: UnixMillis,
    /// The sealed envelope JSON (empty for a receipt, the ids for
    /// [`EntryKind::Receipts`]).
    pub envelope: Arc<str>,
}

/// A mailbox entry deleted by an acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckedEntry {
    /// Message or receipt.
    pub kind: EntryKind,
    /// The message's sender.
    pub sender: UserName,
    /// The message id.
    pub msg_id: MsgId,
}

/// A blob to record.
#[derive(Debug, Clone)]
pub struct NewBlob {
    /// Its id.
    pub id: String,
    /// Who uploads it.
    pub owner: UserName,
    /// Declared size in bytes (ciphertext).
    pub size: u64,
    /// Who may fetch it.
    pub recipients: Vec<UserName>,
    /// Creation time.
    pub created_at: UnixMillis,
    /// Expiry time.
    pub expires_at: UnixMillis,
}

/// An encrypted file blob's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRecord {
    /// Who uploads it.
    pub owner: UserName,
    /// Declared size in bytes (ciphertext).
    pub size: u64,
    /// Bytes stored so far.
    pub received: u64,
    /// When it is deleted if not fetched by everyone before.
    pub expires_at: UnixMillis,
    /// Who may fetch it, and whether each has (done).
    pub recipients: Vec<(UserName, bool)>,
}

/// A group read in one snapshot (see [`Store::group_view`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    /// Members, longest-standing first.
    pub members: Vec<GroupMember>,
    /// The epoch of the latest signed record (`None`: no signed history).
    pub epoch: Option<u64>,
    /// The records asked for, as stored JSON, oldest first.
    pub records: Vec<String>,
}

/// The storage interface. One behaviour suite ([`conformance`]) runs against
/// every implementation.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Returns the stored OPAQUE server setup, storing `fresh` first if there
    /// is none. Concurrent first starts agree on one value.
    async fn server_setup(&self, fresh: &[u8]) -> Result<Vec<u8>>;

    /// Creates an account; `Ok(false)` if the name is taken.
    async fn create_user(&self, user: &NewUser) -> Result<bool>;

    /// Looks up an account.
    async fn user(&self, name: &UserName) -> Result<Option<UserRecord>>;

    /// Which of `names` have accounts, in the same order.
    async fn users_exist(&self, names: &[UserName]) -> Result<Vec<bool>>;

    /// Published keys of the named users that exist, in the order asked.
    async fn public_keys(&self, names: &[UserName]) -> Result<Vec<(UserName, PublicKeys)>>;

    /// Last-seen times of the named users that exist, in the order asked.
    async fn last_seen(&self, names: &[UserName]) -> Result<Vec<(UserName, Option<UnixMillis>)>>;

    /// Records when a user's last connection ended.
    async fn set_last_seen(&self, name: &UserName, at: UnixMillis) -> Result<()>;

    /// Stores a resume token's hash.
    async fn create_session(
        &self,
        token_hash: &[u8],
        user: &UserName,
        expires_at: UnixMillis,
    ) -> Result<()>;

    /// The user a token hash belongs to, if it has not expired at `now`.
    async fn session_user(&self, token_hash: &[u8], now: UnixMillis) -> Result<Option<UserName>>;

    /// Durably stores mailbox entries (group-committed). Returns each entry's
    /// sequence number, or `None` where the same (recipient, kind, sender,
    /// msg_id) was already waiting: retries are stored once.
    async fn enqueue(&self, entries: Vec<NewEntry>) -> Result<Vec<Option<i64>>>;

    /// When the entry with this (recipient, kind, sender, msg_id) was
    /// accepted, if it is still waiting: what a retried send is answered
    /// with, so a retry reports the original `server_ts`.
    async fn waiting_since(
        &self,
        recipient: &UserName,
        kind: EntryKind,
        sender: &UserName,
        msg_id: MsgId,
    ) -> Result<Option<UnixMillis>>;

    /// Up to `limit` entries of `recipient`'s mailbox after `after_seq`, in
    /// order.
    async fn fetch(
        &self,
        recipient: &UserName,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<StoredEntry>>;

    /// Deletes acknowledged entries of `recipient` (group-committed) and
    /// returns how many existed. For each message deleted, in the same
    /// transaction, a receipt is stored for its sender when the
    /// [`CommitListener`] says so (else the listener hears `delivered`).
    async fn ack(
        &self,
        recipient: &UserName,
        seqs: Vec<i64>,
        now: UnixMillis,
        receipt_expires_at: UnixMillis,
    ) -> Result<u64>;

    /// Deletes expired mailbox entries and sessions; returns how many
    /// mailbox entries went.
    async fn expire(&self, now: UnixMillis) -> Result<u64>;

    /// Records a new blob unless the owner's stored blobs plus `size` would
    /// exceed `quota`; `Err(used)` gives what the owner already uses.
    async fn create_blob(&self, blob: &NewBlob, quota: u64)
    -> Result<std::result::Result<(), u64>>;

    /// A blob's record.
    async fn blob(&self, id: &str) -> Result<Option<BlobRecord>>;

    /// Records how many bytes of a blob are stored (after an fsync).
    async fn set_blob_received(&self, id: &str, received: u64) -> Result<()>;

    /// Marks `user`'s copy fetched; returns whether every recipient is done.
    async fn blob_fetched(&self, id: &str, user: &UserName) -> Result<bool>;

    /// Forgets a blob (its file is the caller's to delete).
    async fn delete_blob(&self, id: &str) -> Result<()>;

    /// Blobs whose expiry is before `now`.
    async fn expired_blobs(&self, now: UnixMillis) -> Result<Vec<String>>;

    /// Applies a group change or send in the writer's transaction.
    async fn group(
        &self,
        op: groups::GroupOp,
        max: usize,
        now: UnixMillis,
    ) -> Result<groups::GroupResult>;

    /// A group's members, longest-standing first; `None` if no such group.
    async fn group_members(&self, group: &GroupName) -> Result<Option<Vec<GroupMember>>>;

    /// A group as `user` asks for it, read in one snapshot: its members,
    /// the epoch of its latest record, and up to `limit` records (as
    /// stored JSON, oldest first) after epoch `since`, or with `since`
    /// absent from the one that last added `user`. `None` if no such group.
    async fn group_view(
        &self,
        group: &GroupName,
        user: &UserName,
        since: Option<u64>,
        limit: usize,
    ) -> Result<Option<GroupView>>;

    /// The groups `user` is in, with their role and size.
    async fn groups_of(&self, user: &UserName) -> Result<Vec<GroupSummary>>;

    /// How many entries are waiting in all mailboxes.
    async fn mailbox_depth(&self) -> Result<u64>;

    /// Checks the database answers.
    async fn ping(&self) -> Result<()>;

    /// Stops the writer after it commits what it has; later writes fail.
    async fn close(&self);
}

/// How to reach a database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// A SQLite file.
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL URL (`postgres://…`).
    Postgres(String),
}

/// Opens the store at `url`, running migrations first when `migrate` is set
/// (otherwise checking that they have been run). `listener` hears about
/// every committed mailbox change.
///
/// # Errors
/// Connection, migration or schema-check failures.
pub async fn open(
    url: &DatabaseUrl,
    migrate: bool,
    writer: WriterConfig,
    listener: std::sync::Arc<dyn CommitListener>,
) -> Result<std::sync::Arc<dyn Store>> {
    Ok(match url {
        DatabaseUrl::Sqlite(path) => {
            std::sync::Arc::new(sqlite::SqliteStore::open(path, migrate, writer, listener).await?)
        }
        DatabaseUrl::Postgres(url) => {
            std::sync::Arc::new(postgres::PgStore::open(url, migrate, writer, listener).await?)
        }
    })
}

pub(crate) fn migration(
    version: i64,
    description: &'static str,
    sql: &'static str,
) -> sqlx::migrate::Migration {
    use sqlx::SqlSafeStr;
    sqlx::migrate::Migration::new(
        version,
        description.into(),
        sqlx::migrate::MigrationType::Simple,
        sql.into_sql_str(),
        false,
    )
}

/// Fails with a readable error when `migrator` has migrations the database
/// lacks (the server runs as a role that may not migrate).
pub(crate) fn check_applied(migrator: &sqlx::migrate::Migrator, applied: &[i64]) -> Result<()> {
    for m in migrator.iter() {
        if !applied.contains(&m.version) {
            return Err(StoreError::NotMigrated(format!(
                "migration {} ({}) has not been applied",
                m.version, m.description
            )));
        }
    }
    Ok(())
}

pub(crate) fn ksf_to_text(k: &KsfParams) -> String {
    serde_json::to_string(k).expect("ksf params serialise")
}

pub(crate) fn ksf_from_text(s: &str) -> Result<KsfParams> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("ksf: {e}")))
}

pub(crate) fn group_name(s: String) -> Result<GroupName> {
    GroupName::new(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(crate) fn user_name(s: String) -> Result<UserName> {
    user_name_of(&s)
}

pub(crate) fn user_name_of(s: &str) -> Result<UserName> {
    UserName::new(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(crate) fn msg_id(s: &str) -> Result<MsgId> {
    s.parse()
        .map_err(|e: telepound_protocol::IdError| StoreError::Corrupt(e.to_string()))
}

/// How long the writer waits for more work before committing a batch
/// that is not full. Zero: commit as soon as the queue is drained; batches
/// form naturally while the previous commit is in progress.
pub const DEFAULT_BATCH_LINGER: Duration = Duration::ZERO;
