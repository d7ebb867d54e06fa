//! A whole conversation on PostgreSQL, with the server running as a
//! least-privilege application role.

use sqlx::{Connection, Executor};
use telepound_server::store::DatabaseUrl;
use telepound_testkit::pg::{PgDb, with_user};

use crate::util::*;

#[tokio::test]
async fn server_runs_as_the_application_role() {
    let Some(mut db) = PgDb::create().await else {
        return;
    };
    let owner = db.create_role("tp_owner", "ownerpw").await;
    let app = db.create_role("tp_app", "apppw").await;
    let stranger = db.create_role("tp_stranger", "strangerpw").await;
    // docs/POSTGRES.md step 1, statement by statement (`CREATE DATABASE …
    // OWNER` is `ALTER DATABASE … OWNER` here: the test database exists).
    for sql in [
        format!("ALTER DATABASE {} OWNER TO {owner}", db.name),
        format!("REVOKE ALL ON DATABASE {} FROM PUBLIC", db.name),
        // After `\c`: these run in the new database.
        format!("ALTER SCHEMA public OWNER TO {owner}"),
        "REVOKE ALL ON SCHEMA public FROM PUBLIC".to_owned(),
    ] {
        db.admin_exec(&sql).await;
    }
    let owner_url = with_user(&db.url, &owner, "ownerpw");
    let app_url = with_user(&db.url, &app, "apppw");
    // Other roles on the cluster cannot even connect.
    assert!(
        sqlx::PgConnection::connect(&with_user(&db.url, &stranger, "strangerpw"))
            .await
            .is_err()
    );

    // The deployment guide's steps: migrate and grant as the owner.
    telepound_server::store::postgres::migrate(&owner_url)
        .await
        .unwrap();
    telepound_server::store::postgres::grant_app_role(&owner_url, &app)
        .await
        .unwrap();

    // The application role cannot change the schema.
    let mut c = sqlx::PgConnection::connect(&app_url).await.unwrap();
    assert!(c.execute("CREATE TABLE intruder (x int)").await.is_err());
    assert!(c.execute("DROP TABLE mailbox").await.is_err());
    assert!(
        c.execute("ALTER TABLE users ADD COLUMN x int")
            .await
            .is_err()
    );
    assert!(
        c.execute("CREATE TEMP TABLE scratch (x int)")
            .await
            .is_err()
    );
    c.close().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut config = telepound_testkit::test_config(dir.path());
    config.database = DatabaseUrl::Postgres(app_url.clone());
    config.migrate = false;
    let server = telepound_testkit::spawn_server_with(config).await;
    let url = server.url();
    let (ha, hb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut alice, _ae) = user(&url, "alice", ha.path()).await;
    signup(&url, "bob").await;
    alice
        .send_text(&name("bob"), "over postgres")
        .await
        .unwrap();
    let (mut bob, mut be) = login(&url, "bob", hb.path()).await;
    assert_eq!(
        texts(&drain(&mut bob, &mut be).await),
        vec!["over postgres"]
    );
    let (p, _) = bob.presence(vec![name("alice")]).await.unwrap();
    assert!(p[0].online);
    server.stop().await;

    // Without migrations, a server refuses to start with a clear reason.
    let fresh = PgDb::create().await.unwrap();
    let err = telepound_server::store::open(
        &DatabaseUrl::Postgres(fresh.url.clone()),
        false,
        Default::default(),
        std::sync::Arc::new(telepound_server::store::Quiet),
    )
    .await
    .err()
    .expect("unmigrated database refused");
    assert!(err.to_string().contains("migrat"), "{err}");
}
