//! The store behaviour suite against both backends.

use std::sync::Arc;

use telepound_server::store::conformance::Recorder;
use telepound_server::store::{self, DatabaseUrl, Store, WriterConfig};

/// The suite's writer: an ack window long enough that a test acknowledging
/// a message "in time" does so even on a loaded machine.
fn writer() -> WriterConfig {
    WriterConfig {
        ack_window: std::time::Duration::from_millis(500),
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
