//! The store behaviour suite against both backends.

use std::sync::Arc;

use telepound_server::store::conformance::Recorder;
use telepound_server::store::{self, DatabaseUrl, Store, WriterConfig};

/// The suite's writer: an ack window long enough that a test acknowledging
/// a message "in time" does so even on a loaded machine.
fn writer() -> WriterConfig {
    WriterConfig {
        ack_window: std::time::Duration::from_secs(2),
        ..WriterConfig::default()
    }
}

mod sqlite {
    use super::*;

    async fn make(rec: Arc<Recorder>) -> Option<(Arc<dyn Store>, tempfile::TempDir)> {
        let dir = tempfile::tempdir().unwrap();
        let url = DatabaseUrl::Sqlite(dir.path().join("t.sqlite3"));
        let store = store::open(&url, true, super::writer(), rec).await.unwrap();
        Some((store, dir))
    }

    telepound_server::store_conformance_tests!(make);

    /// A new database file gets 8 KiB pages (two or three envelopes each,
    /// not one); a file made with another size keeps it, and still opens.
    #[tokio::test]
    async fn new_files_get_8_kib_pages_and_old_files_keep_theirs() {
        use sqlx::{ConnectOptions, Connection};
        let dir = tempfile::tempdir().unwrap();
        let page_size = |path: std::path::PathBuf| async move {
            let mut c = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(path)
                .connect()
                .await
                .unwrap();
            let n: i64 = sqlx::query_scalar("PRAGMA page_size")
                .fetch_one(&mut c)
                .await
                .unwrap();
            c.close().await.unwrap();
            n
        };
        let fresh = dir.path().join("new.sqlite3");
        // Opens (creating or migrating) and closes the store at `path`.
        let open_store = |path: std::path::PathBuf| async move {
            let url = DatabaseUrl::Sqlite(path);
            let s = store::open(&url, true, super::writer(), Arc::new(Recorder::default()))
                .await
                .unwrap();
            s.close().await;
        };
        open_store(fresh.clone()).await;
        assert_eq!(page_size(fresh).await, 8192);

        let old = dir.path().join("old.sqlite3");
        {
            let mut c = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&old)
                .create_if_missing(true)
                .page_size(2048)
                .connect()
                .await
                .unwrap();
            sqlx::query("CREATE TABLE t (x)")
                .execute(&mut c)
                .await
                .unwrap();
            c.close().await.unwrap();
        }
        open_store(old.clone()).await;
        assert_eq!(page_size(old).await, 2048);
    }
}

mod postgres {
    use super::*;
    use telepound_testkit::pg::PgDb;

    async fn make(rec: Arc<Recorder>) -> Option<(Arc<dyn Store>, PgDb)> {
        let db = PgDb::create().await?;
        let url = DatabaseUrl::Postgres(db.url.clone());
        let store = store::open(&url, true, super::writer(), rec).await.unwrap();
        Some((store, db))
    }

    telepound_server::store_conformance_tests!(make);

    /// `accepted` means durable only if commits wait for the WAL flush: the
    /// server sets that itself, whatever the database's default says.
    #[tokio::test]
    async fn connections_commit_synchronously_whatever_the_database_default() {
        use sqlx::{ConnectOptions, Connection};
        let Some(db) = PgDb::create().await else {
            return;
        };
        db.admin_exec(&format!(
            "ALTER DATABASE {} SET synchronous_commit = off",
            db.name
        ))
        .await;
        let mut plain = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let setting: String = sqlx::query_scalar("SHOW synchronous_commit")
            .fetch_one(&mut plain)
            .await
            .unwrap();
        assert_eq!(setting, "off", "the database default did not apply");
        plain.close().await.unwrap();
        let mut conn = store::postgres::connect_options(&db.url)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let setting: String = sqlx::query_scalar("SHOW synchronous_commit")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(setting, "on");
        conn.close().await.unwrap();
    }
}

/// Regression (found in review): a seq handed to a message acknowledged in
/// the ack window is never stored, so after a restart the database alone
/// would hand it out again; the durable high-water mark prevents that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_never_reuses_a_seq_after_a_restart() {
    use telepound_protocol::{MsgId, UserName};
    use telepound_server::store::{EntryKind, NewEntry};
    let dir = tempfile::tempdir().unwrap();
    let url = DatabaseUrl::Sqlite(dir.path().join("t.sqlite3"));
    let bob = UserName::new("bob").unwrap();
    let entry = || NewEntry {
        recipient: bob.clone(),
        kind: EntryKind::Message,
        sender: UserName::new("alice").unwrap(),
        msg_id: MsgId::new(),
        server_ts: 1,
        expires_at: i64::MAX,
        envelope: "{}".into(),
    };
    let rec = Arc::new(Recorder::default());
    rec.live.lock().unwrap().push(bob.clone());
    let store = store::open(&url, true, writer(), rec.clone())
        .await
        .unwrap();
    let e = entry();
    let id = e.msg_id;
    let sending = {
        let store = store.clone();
        tokio::spawn(async move { store.enqueue(vec![e]).await })
    };
    let seq = rec.announced("bob", id).await;
    assert_eq!(store.ack(&bob, vec![seq], 2, 99).await.unwrap(), 1);
    assert_eq!(sending.await.unwrap().unwrap(), vec![Some(seq)]);
    assert_eq!(store.mailbox_depth().await.unwrap(), 0, "never written");
    store.close().await;
    drop(store);

    let store = store::open(&url, true, writer(), Arc::new(Recorder::default()))
        .await
        .unwrap();
    let next = store.enqueue(vec![entry()]).await.unwrap()[0].unwrap();
    assert!(next > seq, "seq {seq} handed out again as {next}");
    store.close().await;
}
