//! Messages waiting in the outbox from an earlier run: what becomes of
//! each is said, and one the server failed to store is kept, not lost.

use sqlx::{Connection, Executor};
use telepound_protocol::UserName;

use crate::util::*;

#[test]
fn send_reports_an_earlier_queued_message_the_server_could_not_store() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = ServerProc::start(&data);
    let url = server.url.clone();
    let (ha, hb) = (dir.path().join("a"), dir.path().join("b"));
    ok(run(tp(&url, &ha, "alice").arg("signup")));
    ok(run(tp(&url, &hb, "bob").arg("signup")));
    let rt = tokio::runtime::Runtime::new().unwrap();
    // An earlier run left a message queued (as classic does when the
    // connection drops), and the server's database will fail to store it.
    rt.block_on(async {
        let (mut alice, _e) = telepound_testkit::login(&url, "alice", &ha).await;
        let earlier = alice
            .queue_text(&UserName::new("bob").unwrap(), "earlier")
            .await
            .unwrap();
        alice.client().close().await;
        let db = data.join("telepound.sqlite3");
        let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        c.execute(sqlx::AssertSqlSafe(format!(
            "CREATE TRIGGER broken_disk BEFORE INSERT ON mailbox WHEN NEW.msg_id = '{earlier}' \
             BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
        )))
        .await
        .unwrap();
    });

    let e = fails(run(tp(&url, &ha, "alice").args(["send", "bob", "now"])), 1);
    assert!(
        e.contains("a message to bob queued earlier could not be sent")
            && e.contains("stay queued"),
        "{e}"
    );

    rt.block_on(async {
        let db = data.join("telepound.sqlite3");
        let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        c.execute("DROP TRIGGER broken_disk").await.unwrap();
    });
    let out = ok(run(tp(&url, &ha, "alice").args(["send", "bob", "again"])));
    assert_eq!(
        out.matches("Sent a message to bob queued earlier.").count(),
        2,
        "{out}"
    );
    assert!(out.contains("Sent to bob"), "{out}");

    let out = ok(run(tp(&url, &hb, "bob").arg("inbox")));
    let got: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_once("alice: ").map(|(_, t)| t))
        .collect();
    assert_eq!(got, ["earlier", "now", "again"], "{out}");
}
