//! The outbox: shared by every process of a user, and a message leaves it
//! only once the server has it or has refused it for good.

use sqlx::{Connection, Executor};
use telepound_client::{Error, is_refusal};
use telepound_protocol::ErrorCode;

use crate::util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sessions_of_one_user_share_the_outbox() {
    let server = spawn_server().await;
    let url = server.url();
    let (ha, hb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut alice, _ae) = user(&url, "alice", ha.path()).await;
    let (mut bob, mut be) = user(&url, "bob", hb.path()).await;
    let bob_name = name("bob");
    // Pin bob's keys on this machine, so the second session can seal
    // without asking.
    alice.send_text(&bob_name, "hello").await.unwrap();

    // A second process of alice's on the same machine (`inbox --follow`
    // beside a `send`), which loaded the outbox before the first queued.
    let (mut follow, _fe) = login(&url, "alice", ha.path()).await;
    let queued = alice.queue_text(&bob_name, "queued by send").await.unwrap();
    // Its own send rewrites the outbox: it must not drop the other's
    // message, and it sends that one too, first.
    let out = follow.send_text(&bob_name, "sent by follow").await.unwrap();
    assert_ne!(out.msg_id, queued);
    assert_eq!(follow.queued(), 0);
    // Nor does the first session's stale copy bring anything back.
    assert!(alice.flush_outbox().await.unwrap().is_empty());
    assert_eq!(alice.queued(), 0);

    let got = texts(&drain(&mut bob, &mut be).await);
    assert_eq!(got, ["hello", "queued by send", "sent by follow"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_server_failed_to_store_stays_queued() {
    let server = spawn_server().await;
    let url = server.url();
    let (ha, hb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut alice, _ae) = user(&url, "alice", ha.path()).await;
    let (mut bob, mut be) = user(&url, "bob", hb.path()).await;
    let bob_name = name("bob");
    let first = alice.queue_text(&bob_name, "first").await.unwrap();
    let second = alice.queue_text(&bob_name, "second").await.unwrap();

    // The server's database refuses this one message: its commit fails,
    // and the server answers `internal`.
    let db = server.data_dir.join("telepound.sqlite3");
    let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    // (A trigger takes no bound values; the id is a UUID.)
    c.execute(sqlx::AssertSqlSafe(format!(
        "CREATE TRIGGER broken_disk BEFORE INSERT ON mailbox WHEN NEW.msg_id = '{first}' \
         BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
    )))
    .await
    .unwrap();
    let flushed = alice.flush_outbox().await.unwrap();
    assert_eq!(flushed.len(), 1, "stops at the failure, keeping the order");
    let (pending, result) = &flushed[0];
    assert_eq!(pending.msg_id, first);
    let e = result.as_ref().unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Internal), "{e}");
    assert!(!is_refusal(e));
    assert_eq!(alice.queued(), 2, "both still queued");
    // send_text reports what stopped it rather than a made-up disconnect.
    let e = alice.send_text(&bob_name, "third").await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Server {
                code: ErrorCode::Internal,
                ..
            }
        ),
        "{e}"
    );

    // The disk is mended: everything goes, in order, once.
    c.execute("DROP TRIGGER broken_disk").await.unwrap();
    let flushed = alice.flush_outbox().await.unwrap();
    let ids: Vec<_> = flushed.iter().map(|(p, _)| p.msg_id).collect();
    assert_eq!(&ids[..2], &[first, second]);
    assert!(flushed.iter().all(|(_, r)| r.is_ok()));
    assert_eq!(alice.queued(), 0);
    assert_eq!(
        texts(&drain(&mut bob, &mut be).await),
        ["first", "second", "third"]
    );
    server.stop().await;
}

/// A message that cannot go out holds back the later messages of its own
/// conversation only: a message to someone else goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_message_holds_back_its_own_conversation_only() {
    let server = spawn_server().await;
    let url = server.url();
    let (ha, hb, hc) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (mut alice, _ae) = user(&url, "alice", ha.path()).await;
    let (mut bob, mut be) = user(&url, "bob", hb.path()).await;
    let (mut carol, mut ce) = user(&url, "carol", hc.path()).await;
    let stuck = alice.queue_text(&name("bob"), "stuck").await.unwrap();
    let behind = alice.queue_text(&name("bob"), "behind it").await.unwrap();
    let other = alice.queue_text(&name("carol"), "for carol").await.unwrap();

    let db = server.data_dir.join("telepound.sqlite3");
    let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    // (A trigger takes no bound values; the id is a UUID.)
    c.execute(sqlx::AssertSqlSafe(format!(
        "CREATE TRIGGER broken_disk BEFORE INSERT ON mailbox WHEN NEW.msg_id = '{stuck}' \
         BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
    )))
    .await
    .unwrap();
    let flushed = alice.flush_outbox().await.unwrap();
    let ids: Vec<_> = flushed.iter().map(|(p, r)| (p.msg_id, r.is_ok())).collect();
    assert_eq!(ids, [(stuck, false), (other, true)], "{flushed:?}");
    assert_eq!(alice.queued(), 2, "bob's two stay, in order");
    assert_eq!(texts(&drain(&mut carol, &mut ce).await), ["for carol"]);

    c.execute("DROP TRIGGER broken_disk").await.unwrap();
    let flushed = alice.flush_outbox().await.unwrap();
    let ids: Vec<_> = flushed.iter().map(|(p, _)| p.msg_id).collect();
    assert_eq!(ids, [stuck, behind]);
    assert_eq!(
        texts(&drain(&mut bob, &mut be).await),
        ["stuck", "behind it"]
    );
    server.stop().await;
}
