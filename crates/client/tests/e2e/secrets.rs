//! The server never holds a password, a private key or a plaintext: after a
//! conversation, the whole database is searched for them.

use sqlx::{Connection, Row};

use crate::util::*;

const SECRET_TEXT: &str = "the eagle lands at midnight 7f3a";

struct Secrets {
    needles: Vec<(String, Vec<u8>)>,
    /// Something that must be found (alice's public identity key), so the
    /// search is shown to look where the data is.
    control: Vec<u8>,
}

async fn converse(url: &str) -> Secrets {
    let (ha, hb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut alice, _ae) = user(url, "alice", ha.path()).await;
    let (mut bob, mut be) = user(url, "bob", hb.path()).await;
    alice.send_text(&name("bob"), SECRET_TEXT).await.unwrap();
    // One message read (deleted) and one left waiting.
    assert_eq!(texts(&drain(&mut bob, &mut be).await), vec![SECRET_TEXT]);
    alice.send_text(&name("bob"), SECRET_TEXT).await.unwrap();
    bob.send_text(&name("alice"), SECRET_TEXT).await.unwrap();

    let mut needles = vec![
        ("plaintext".to_owned(), SECRET_TEXT.as_bytes().to_vec()),
        (
            "password".to_owned(),
            telepound_testkit::PASSWORD.as_bytes().to_vec(),
        ),
    ];
    for (who, s) in [("alice", &alice), ("bob", &bob)] {
        let secret = s.identity().dangerous_secret_bytes();
        needles.push((format!("{who} identity private key"), secret[..32].to_vec()));
        needles.push((format!("{who} kem private key"), secret[32..64].to_vec()));
        needles.push((format!("{who} self-wrap key"), secret[64..96].to_vec()));
    }
    Secrets {
        needles,
        control: alice.identity().identity_key().to_vec(),
    }
}

fn found_control(hay: &[u8], secrets: &Secrets) -> bool {
    let hex: String = secrets.control.iter().map(|b| format!("{b:02x}")).collect();
    contains(hay, &secrets.control) || contains(hay, hex.as_bytes())
}

fn check(hay: &[u8], secrets: &Secrets, what: &str) {
    for (label, needle) in &secrets.needles {
        assert!(!contains(hay, needle), "{what} contains the {label}");
        let hex: String = needle.iter().map(|b| format!("{b:02x}")).collect();
        assert!(
            !contains(hay, hex.as_bytes()),
            "{what} contains the {label} in hex"
        );
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(needle);
        assert!(
            !contains(hay, &b64.as_bytes()[..b64.len() - 4]),
            "{what} contains the {label} in base64"
        );
    }
}

#[tokio::test]
async fn sqlite_database_holds_no_plaintext_password_or_private_key() {
    let server = spawn_server().await;
    let secrets = converse(&server.url()).await;
    let dir = server.data_dir.clone();
    // Read while running (WAL not yet checkpointed) and after a clean stop.
    let mut seen = 0;
    let mut control = false;
    for pass in 0..2 {
        if pass == 1 {
            server_stop(&server).await;
        }
        for path in files_under(&dir) {
            let bytes = std::fs::read(&path).unwrap();
            seen += bytes.len();
            control |= found_control(&bytes, &secrets);
            check(&bytes, &secrets, &path.display().to_string());
        }
    }
    assert!(seen > 10_000, "the database files were read ({seen} bytes)");
    assert!(
        control,
        "the public key was found, so the search reaches the data"
    );
    // The envelope really is in there (the search would have found it).
    let db = std::fs::read(dir.join("telepound.sqlite3")).unwrap();
    let wal = std::fs::read(dir.join("telepound.sqlite3-wal")).unwrap_or_default();
    assert!(contains(&db, b"\"suite\":\"tp2\"") || contains(&wal, b"\"suite\":\"tp2\""));
    drop(server);
}

/// Every file under `dir`, the envelope log's segments among them.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

async fn server_stop(_s: &telepound_testkit::TestServer) {
    // The server keeps running; a passive WAL checkpoint is forced through a
    // second connection so the main file holds the data too.
    let path = _s.data_dir.join("telepound.sqlite3");
    let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
        .execute(&mut c)
        .await
        .unwrap();
    c.close().await.unwrap();
}

#[tokio::test]
async fn postgres_database_holds_no_plaintext_password_or_private_key() {
    let Some(db) = telepound_testkit::pg::PgDb::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut config = telepound_testkit::test_config(dir.path());
    config.database = telepound_server::store::DatabaseUrl::Postgres(db.url.clone());
    let server = telepound_testkit::spawn_server_with(config).await;
    let secrets = converse(&server.url()).await;

    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(tables.iter().any(|t| t == "mailbox"), "{tables:?}");
    let mut dump = Vec::new();
    for t in &tables {
        // Every row of every table as text: bytea renders as \x hex, which
        // the hex search covers.
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT row_to_json(t)::text AS j FROM \"{t}\" t"
        )))
        .fetch_all(&mut conn)
        .await
        .unwrap();
        for r in rows {
            let j: String = r.get("j");
            dump.extend_from_slice(j.as_bytes());
        }
    }
    conn.close().await.unwrap();
    assert!(contains(&dump, b"tp2"), "the dump has the envelopes");
    assert!(
        found_control(&dump, &secrets),
        "the dump has the public key"
    );
    check(&dump, &secrets, "the PostgreSQL database");
    server.stop().await;
}
