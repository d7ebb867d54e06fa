//! The PostgreSQL backend. Commits wait for the WAL flush
//! (`synchronous_commit = on`, set on every connection the server makes, so
//! a server-wide or per-database `off` cannot weaken it), so `accepted`
//! follows a durable write.
//!
//! The server can run as a least-privilege application role: with
//! `migrate = false` it only checks that the owner has run the migrations.

use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Row};
use telepound_protocol::message::{B64, PublicKeys, UnixMillis};
use telepound_protocol::message::{GroupMember, GroupSummary, Role};
use telepound_protocol::{GroupName, UserName};

use super::groups::{GroupOp, GroupResult, role_from_i64, role_to_i16};
use super::writer::{CommitListener, WriteConn, Writer};
use super::{
    AckedEntry, BlobRecord, EntryKind, GroupView, NewBlob, NewEntry, NewUser, Result, Store,
    StoredEntry, UserRecord, WriterConfig, check_applied, group_name, ksf_from_text, ksf_to_text,
    migration, msg_id, user_name,
};

fn migrator() -> sqlx::migrate::Migrator {
    sqlx::migrate::Migrator::with_migrations(vec![
        migration(
            1,
            "init",
            include_str!("../../migrations/postgres/0001_init.sql"),
        ),
        migration(
            2,
            "blobs",
            include_str!("../../migrations/postgres/0002_blobs.sql"),
        ),
        migration(
            3,
            "groups",
            include_str!("../../migrations/postgres/0003_groups.sql"),
        ),
        migration(
            4,
            "shared bodies",
            include_str!("../../migrations/postgres/0004_shared_bodies.sql"),
        ),
        migration(
            5,
            "group log",
            include_str!("../../migrations/postgres/0005_group_log.sql"),
        ),
        migration(
            6,
            "partial body index",
            include_str!("../../migrations/postgres/0006_partial_body_index.sql"),
        ),
    ])
}

/// Runs the PostgreSQL migrations at `url` (as the owner role).
///
/// # Errors
/// Connection or migration failures.
pub async fn migrate(url: &str) -> Result<()> {
    let mut conn = PgConnectOptions::from_str(url)?.connect().await?;
    migrator().run(&mut conn).await?;
    conn.close().await?;
    Ok(())
}

/// The privileges the application role needs, and no more: it reads and
/// writes rows, never the schema. Kept here so the deployment guide, the
/// `telepound migrate --grant-to` command and the test all use one list.
pub const APP_ROLE_GRANTS: &[&str] = &[
    "GRANT USAGE ON SCHEMA public TO {role}",
    "GRANT SELECT, INSERT ON server_state TO {role}",
    "GRANT SELECT, INSERT, UPDATE ON users TO {role}",
    "GRANT SELECT, INSERT, DELETE ON sessions TO {role}",
    "GRANT SELECT, INSERT, DELETE ON mailbox TO {role}",
    "GRANT USAGE ON SEQUENCE mailbox_seq_seq TO {role}",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON blobs TO {role}",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON blob_recipients TO {role}",
    "GRANT SELECT, INSERT, DELETE ON groups TO {role}",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON group_members TO {role}",
    "GRANT SELECT, INSERT, DELETE ON bodies TO {role}",
    "GRANT SELECT, INSERT, DELETE ON group_log TO {role}",
    "GRANT SELECT ON _sqlx_migrations TO {role}",
];

/// Grants [`APP_ROLE_GRANTS`] (and `CONNECT` on the database) to `role`,
/// connecting as the owner at `owner_url`.
///
/// # Errors
/// An invalid role name, or the database refusing a grant.
pub async fn grant_app_role(owner_url: &str, role: &str) -> Result<()> {
    let valid = !role.is_empty()
        && role.len() <= 63
        && role.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && role
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid {
        return Err(super::StoreError::Corrupt(format!(
            "invalid role name {role:?}: use lowercase letters, digits and _"
        )));
    }
    let mut conn = PgConnectOptions::from_str(owner_url)?.connect().await?;
    let db: String = sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(&mut conn)
        .await?;
    // Identifiers cannot be bound parameters; both are quoted, and the role
    // was validated above.
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let mut statements = vec![format!(
        "GRANT CONNECT ON DATABASE {} TO {}",
        quote(&db),
        quote(role)
    )];
    statements.extend(
        APP_ROLE_GRANTS
            .iter()
            .map(|g| g.replace("{role}", &quote(role))),
    );
    for sql in statements {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await?;
    }
    conn.close().await?;
    Ok(())
}

/// The options the server connects to `url` with: the URL's, plus
/// `synchronous_commit = on`, which `accepted` depends on.
///
/// # Errors
/// A URL that does not parse.
pub fn connect_options(url: &str) -> Result<PgConnectOptions> {
    Ok(PgConnectOptions::from_str(url)?.options([("synchronous_commit", "on")]))
}

/// The PostgreSQL store.
pub struct PgStore {
    pool: PgPool,
    writer: Writer,
}

impl PgStore {
    /// Connects to `url`.
    ///
    /// # Errors
    /// When the database cannot be reached or migrated.
    pub async fn open(
        url: &str,
        migrate: bool,
        writer: WriterConfig,
        listener: Arc<dyn CommitListener>,
    ) -> Result<Self> {
        let opts = connect_options(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
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
        let conn = opts.connect().await?;
        Ok(Self {
            pool,
            writer: Writer::spawn(PgWriter { opts, conn }, writer, listener),
        })
    }
}

struct PgWriter {
    opts: PgConnectOptions,
    conn: PgConnection,
}

#[async_trait]
impl WriteConn for PgWriter {
    async fn begin(&mut self) -> Result<()> {
        sqlx::query("BEGIN").execute(&mut self.conn).await?;
        Ok(())
    }

    async fn commit(&mut self) -> Result<()> {
        sqlx::query("COMMIT").execute(&mut self.conn).await?;
        Ok(())
    }

    async fn rollback(&mut self) {
        let _ = sqlx::query("ROLLBACK").execute(&mut self.conn).await;
    }

    async fn reserve_seqs(&mut self, n: usize) -> Result<Vec<i64>> {
        // From the identity column's own sequence, so they never collide
        // with the seqs `insert` lets it assign.
        let mut seqs: Vec<i64> = sqlx::query_scalar(
            "SELECT nextval('mailbox_seq_seq') FROM generate_series(1, $1::bigint)",
        )
        .bind(n as i64)
        .fetch_all(&mut self.conn)
        .await?;
        seqs.sort_unstable();
        Ok(seqs)
    }

    async fn insert_at(&mut self, seq: i64, e: &NewEntry) -> Result<bool> {
        Ok(sqlx::query_scalar::<_, i64>(
            "INSERT INTO mailbox (seq, recipient, kind, sender, msg_id, server_ts, expires_at, envelope) \
             OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (recipient, kind, sender, msg_id) DO NOTHING RETURNING seq",
        )
        .bind(seq)
        .bind(e.recipient.as_str())
        .bind(e.kind.to_i16())
        .bind(e.sender.as_str())
        .bind(e.msg_id.to_string())
        .bind(e.server_ts)
        .bind(e.expires_at)
        .bind(&*e.envelope)
        .fetch_optional(&mut self.conn)
        .await?
        .is_some())
    }

    async fn insert(&mut self, e: &NewEntry, body: Option<i64>) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar(
            "INSERT INTO mailbox (recipient, kind, sender, msg_id, server_ts, expires_at, envelope, body_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (recipient, kind, sender, msg_id) DO NOTHING RETURNING seq",
        )
        .bind(e.recipient.as_str())
        .bind(e.kind.to_i16())
        .bind(e.sender.as_str())
        .bind(e.msg_id.to_string())
        .bind(e.server_ts)
        .bind(e.expires_at)
        .bind(if body.is_some() { "" } else { &*e.envelope })
        .bind(body)
        .fetch_optional(&mut self.conn)
        .await?)
    }

    async fn insert_body(&mut self, envelope: &str) -> Result<i64> {
        Ok(
            sqlx::query_scalar("INSERT INTO bodies (envelope) VALUES ($1) RETURNING id")
                .bind(envelope)
                .fetch_one(&mut self.conn)
                .await?,
        )
    }

    async fn delete(&mut self, recipient: &UserName, seq: i64) -> Result<Option<AckedEntry>> {
        let row = sqlx::query(
            "DELETE FROM mailbox WHERE recipient = $1 AND seq = $2 RETURNING kind, sender, msg_id, body_id",
        )
        .bind(recipient.as_str())
        .bind(seq)
        .fetch_optional(&mut self.conn)
        .await?;
        if let Some(body) = row
            .as_ref()
            .map(|r| r.try_get::<Option<i64>, _>("body_id"))
            .transpose()?
            .flatten()
        {
            sqlx::query(
                "DELETE FROM bodies WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM mailbox WHERE body_id = $2)",
            )
            .bind(body)
            .bind(body)
            .execute(&mut self.conn)
            .await?;
        }
        row.map(|row| {
            Ok(AckedEntry {
                kind: EntryKind::from_i64(i64::from(row.try_get::<i16, _>("kind")?))?,
                sender: user_name(row.try_get("sender")?)?,
                msg_id: msg_id(row.try_get("msg_id")?)?,
            })
        })
        .transpose()
    }

    async fn expire(&mut self, now: UnixMillis) -> Result<u64> {
        let n = sqlx::query("DELETE FROM mailbox WHERE expires_at < $1")
            .bind(now)
            .execute(&mut self.conn)
            .await?
            .rows_affected();
        sqlx::query(
            "DELETE FROM bodies WHERE NOT EXISTS (SELECT 1 FROM mailbox WHERE mailbox.body_id = bodies.id)",
        )
        .execute(&mut self.conn)
        .await?;
        sqlx::query("DELETE FROM sessions WHERE expires_at < $1")
            .bind(now)
            .execute(&mut self.conn)
            .await?;
        Ok(n)
    }

    async fn reconnect(&mut self) -> Result<()> {
        self.conn = self.opts.connect().await?;
        Ok(())
    }

    async fn group_members(&mut self, group: &GroupName) -> Result<Option<Vec<GroupMember>>> {
        let exists: Option<i64> =
            sqlx::query_scalar("SELECT 1::BIGINT FROM groups WHERE name = $1")
                .bind(group.as_str())
                .fetch_optional(&mut self.conn)
                .await?;
        if exists.is_none() {
            return Ok(None);
        }
        let rows = sqlx::query(
            "SELECT user_name, role, joined_at FROM group_members WHERE group_name = $1 ORDER BY id",
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
        sqlx::query("INSERT INTO groups (name, created_at) VALUES ($1, $2)")
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
            "INSERT INTO group_members (group_name, user_name, role, joined_at, joined_epoch) VALUES ($1, $2, $3, $4, $5)",
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
        sqlx::query("DELETE FROM group_members WHERE group_name = $1 AND user_name = $2")
            .bind(group.as_str())
            .bind(user.as_str())
            .execute(&mut self.conn)
            .await?;
        Ok(())
    }

    async fn set_role(&mut self, group: &GroupName, user: &UserName, role: Role) -> Result<()> {
        sqlx::query("UPDATE group_members SET role = $1 WHERE group_name = $2 AND user_name = $3")
            .bind(role_to_i16(role))
            .bind(group.as_str())
            .bind(user.as_str())
            .execute(&mut self.conn)
            .await?;
        Ok(())
    }

    async fn delete_group(&mut self, group: &GroupName) -> Result<()> {
        for sql in [
            "DELETE FROM group_members WHERE group_name = $1",
            "DELETE FROM group_log WHERE group_name = $1",
            "DELETE FROM groups WHERE name = $1",
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
            "SELECT epoch, hash FROM group_log WHERE group_name = $1 ORDER BY epoch DESC LIMIT 1",
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
            sqlx::query_scalar("SELECT hash FROM group_log WHERE group_name = $1 AND epoch = $2")
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
        sqlx::query(
            "INSERT INTO group_log (group_name, epoch, hash, record) VALUES ($1, $2, $3, $4)",
        )
        .bind(group.as_str())
        .bind(epoch as i64)
        .bind(&hash[..])
        .bind(record)
        .execute(&mut self.conn)
        .await?;
        Ok(())
    }
}

fn role_of(r: &sqlx::postgres::PgRow) -> Result<i64> {
    Ok(i64::from(r.try_get::<i16, _>("role")?))
}

fn member_from_row(r: &sqlx::postgres::PgRow) -> Result<GroupMember> {
    Ok(GroupMember {
        user: user_name(r.try_get("user_name")?)?,
        role: role_from_i64(role_of(r)?),
        joined_at: r.try_get("joined_at")?,
    })
}

fn keys_from_row(row: &sqlx::postgres::PgRow) -> Result<PublicKeys> {
    Ok(PublicKeys {
        identity: B64(row.try_get("identity_key")?),
        kem: B64(row.try_get("kem_key")?),
        kem_sig: B64(row.try_get("kem_sig")?),
    })
}

fn names_vec(names: &[UserName]) -> Vec<String> {
    names.iter().map(|n| n.as_str().to_owned()).collect()
}

#[async_trait]
impl Store for PgStore {
    async fn server_setup(&self, fresh: &[u8]) -> Result<Vec<u8>> {
        sqlx::query("INSERT INTO server_state (name, value) VALUES ('opaque_setup', $1) ON CONFLICT (name) DO NOTHING")
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
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (name) DO NOTHING",
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
            "SELECT opaque_record, ksf, identity_key, kem_key, kem_sig, key_backup FROM users WHERE name = $1",
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
        let found: Vec<String> = sqlx::query_scalar("SELECT name FROM users WHERE name = ANY($1)")
            .bind(names_vec(names))
            .fetch_all(&self.pool)
            .await?;
        Ok(names
            .iter()
            .map(|n| found.iter().any(|f| f == n.as_str()))
            .collect())
    }

    async fn public_keys(&self, names: &[UserName]) -> Result<Vec<(UserName, PublicKeys)>> {
        let rows = sqlx::query(
            "SELECT name, identity_key, kem_key, kem_sig FROM users WHERE name = ANY($1)",
        )
        .bind(names_vec(names))
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for n in names {
            if let Some(row) = rows
                .iter()
                .find(|r| r.try_get::<&str, _>("name").ok() == Some(n.as_str()))
            {
                out.push((n.clone(), keys_from_row(row)?));
            }
        }
        Ok(out)
    }

    async fn last_seen(&self, names: &[UserName]) -> Result<Vec<(UserName, Option<UnixMillis>)>> {
        let rows: Vec<(String, Option<i64>)> =
            sqlx::query_as("SELECT name, last_seen FROM users WHERE name = ANY($1)")
                .bind(names_vec(names))
                .fetch_all(&self.pool)
                .await?;
        Ok(names
            .iter()
            .filter_map(|n| {
                rows.iter()
                    .find(|(name, _)| name == n.as_str())
                    .map(|(_, seen)| (n.clone(), *seen))
            })
            .collect())
    }

    async fn set_last_seen(&self, name: &UserName, at: UnixMillis) -> Result<()> {
        sqlx::query(
            "UPDATE users SET last_seen = GREATEST(COALESCE(last_seen, 0), $1) WHERE name = $2",
        )
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
        sqlx::query("INSERT INTO sessions (token_hash, user_name, expires_at) VALUES ($1, $2, $3)")
            .bind(token_hash)
            .bind(user.as_str())
            .bind(expires_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn session_user(&self, token_hash: &[u8], now: UnixMillis) -> Result<Option<UserName>> {
        let name: Option<String> = sqlx::query_scalar(
            "SELECT user_name FROM sessions WHERE token_hash = $1 AND expires_at > $2",
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
        Ok(sqlx::query_scalar(
            "SELECT server_ts FROM mailbox \
             WHERE recipient = $1 AND kind = $2 AND sender = $3 AND msg_id = $4",
        )
        .bind(recipient.as_str())
        .bind(kind.to_i16())
        .bind(sender.as_str())
        .bind(msg_id.to_string())
        .fetch_optional(&self.pool)
        .await?)
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
        let rows = sqlx::query(
            "SELECT m.seq, m.kind, m.sender, m.msg_id, m.server_ts, COALESCE(b.envelope, m.envelope) AS envelope \
             FROM mailbox m LEFT JOIN bodies b ON b.id = m.body_id \
             WHERE m.recipient = $1 AND m.seq > $2 ORDER BY m.seq LIMIT $3",
        )
        .bind(recipient.as_str())
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                Ok(StoredEntry {
                    seq: row.try_get("seq")?,
                    kind: EntryKind::from_i64(i64::from(row.try_get::<i16, _>("kind")?))?,
                    sender: user_name(row.try_get("sender")?)?,
                    msg_id: msg_id(row.try_get("msg_id")?)?,
                    server_ts: row.try_get("server_ts")?,
                    envelope: Arc::from(row.try_get::<String, _>("envelope")?),
                })
            })
            .collect()
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
        let mut tx = self.pool.begin().await?;
        let used: i64 =
            sqlx::query_scalar("SELECT COALESCE(SUM(size), 0)::BIGINT FROM blobs WHERE owner = $1")
                .bind(owner.as_str())
                .fetch_one(&mut *tx)
                .await?;
        let used = used.max(0) as u64;
        if used.saturating_add(size) > quota {
            return Ok(Err(used));
        }
        sqlx::query(
            "INSERT INTO blobs (id, owner, size, received, created_at, expires_at) VALUES ($1, $2, $3, 0, $4, $5)",
        )
        .bind(id.as_str())
        .bind(owner.as_str())
        .bind(size as i64)
        .bind(now)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        for r in recipients {
            sqlx::query("INSERT INTO blob_recipients (blob_id, user_name) VALUES ($1, $2) ON CONFLICT DO NOTHING")
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
            sqlx::query("SELECT owner, size, received, expires_at FROM blobs WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
        else {
            return Ok(None);
        };
        let rows = sqlx::query(
            "SELECT user_name, done FROM blob_recipients WHERE blob_id = $1 ORDER BY user_name",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        let mut recipients = Vec::with_capacity(rows.len());
        for r in rows {
            recipients.push((
                user_name(r.try_get("user_name")?)?,
                r.try_get::<bool, _>("done")?,
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
        sqlx::query("UPDATE blobs SET received = $1 WHERE id = $2")
            .bind(received as i64)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn blob_fetched(&self, id: &str, user: &UserName) -> Result<bool> {
        sqlx::query("UPDATE blob_recipients SET done = TRUE WHERE blob_id = $1 AND user_name = $2")
            .bind(id)
            .bind(user.as_str())
            .execute(&self.pool)
            .await?;
        let left: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM blob_recipients WHERE blob_id = $1 AND NOT done",
        )
        .bind(id)
        .fetch_one(&self.pool)
        .await?;
        Ok(left == 0)
    }

    async fn delete_blob(&self, id: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM blob_recipients WHERE blob_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM blobs WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn expired_blobs(&self, now: UnixMillis) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT id FROM blobs WHERE expires_at < $1")
                .bind(now)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn group(&self, op: GroupOp, max: usize, now: UnixMillis) -> Result<GroupResult> {
        self.writer.group(op, max, now).await
    }

    async fn group_members(&self, group: &GroupName) -> Result<Option<Vec<GroupMember>>> {
        let exists: Option<i64> =
            sqlx::query_scalar("SELECT 1::BIGINT FROM groups WHERE name = $1")
                .bind(group.as_str())
                .fetch_optional(&self.pool)
                .await?;
        if exists.is_none() {
            return Ok(None);
        }
        let rows = sqlx::query(
            "SELECT user_name, role, joined_at FROM group_members WHERE group_name = $1 ORDER BY id",
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
        // One snapshot for every read, so the members and the records
        // always agree (READ COMMITTED would take one per statement).
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        let exists: Option<i64> =
            sqlx::query_scalar("SELECT 1::BIGINT FROM groups WHERE name = $1")
                .bind(group.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        if exists.is_none() {
            return Ok(None);
        }
        let rows = sqlx::query(
            "SELECT user_name, role, joined_at, joined_epoch FROM group_members WHERE group_name = $1 ORDER BY id",
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
            sqlx::query_scalar("SELECT MAX(epoch) FROM group_log WHERE group_name = $1")
                .bind(group.as_str())
                .fetch_one(&mut *tx)
                .await?;
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
                sqlx::query_scalar(
                    "SELECT record FROM group_log WHERE group_name = $1 AND epoch >= $2 ORDER BY epoch LIMIT $3",
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
             FROM group_members m WHERE m.user_name = $1 ORDER BY m.group_name",
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
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM mailbox")
            .fetch_one(&self.pool)
            .await?;
        Ok(n as u64)
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        self.writer.close().await;
        self.pool.close().await;
    }
}
