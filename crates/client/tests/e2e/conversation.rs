//! Sign-up to read: the whole path, online and offline, order, duplicates.

use telepound_client::{Error, Inbound};
use telepound_protocol::ErrorCode;

use crate::util::*;
use telepound_testkit::{http_get, metric, spawn_server_with};

async fn metrics(server: &telepound_testkit::TestServer) -> String {
    http_get(server.addr, "/metrics").await.1
}

#[tokio::test]
async fn offline_message_is_read_on_a_fresh_machine_with_only_the_password() {
    let server = spawn_server().await;
    let url = server.url();
    let alice_home = tempfile::tempdir().unwrap();
    let (mut alice, _a) = user(&url, "alice", alice_home.path()).await;
    signup(&url, "bob").await;

    let out = alice.send_text(&name("bob"), "hello bob").await.unwrap();
    assert!(!out.recipient_online);

    // A brand-new home folder: nothing but the password.
    let fresh = tempfile::tempdir().unwrap();
    let (mut bob, mut events) = login(&url, "bob", fresh.path()).await;
    let got = drain(&mut bob, &mut events).await;
    assert_eq!(texts(&got), vec!["hello bob"]);
    let Inbound::Message(r) = &got[0] else {
        panic!()
    };
    assert_eq!(r.payload.sender, name("alice"));
    assert!(r.payload.sent_at > 0 && r.server_ts >= r.payload.sent_at - 60_000);

    // Acknowledged: a second login finds nothing waiting.
    let (mut bob2, mut events2) = login(&url, "bob", fresh.path()).await;
    assert!(drain(&mut bob2, &mut events2).await.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn online_recipient_gets_it_live_and_sender_gets_delivered() {
    let server = spawn_server().await;
    let url = server.url();
    let (ha, hb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut alice, mut alice_events) = user(&url, "alice", ha.path()).await;
    let (mut bob, mut bob_events) = user(&url, "bob", hb.path()).await;
    drain(&mut alice, &mut alice_events).await;
    drain(&mut bob, &mut bob_events).await;

    let out = alice
        .send_text(&name("bob"), "are you there?")
        .await
        .unwrap();
    assert!(out.recipient_online);
    let got = next_inbound(&mut bob, &mut bob_events, 5).await;
    assert_eq!(texts(&[got]), vec!["are you there?"]);
    match next_inbound(&mut alice, &mut alice_events, 5).await {
        Inbound::Delivered { msg_id, to, .. } => {
            assert_eq!(msg_id, out.msg_id);
            assert_eq!(to, name("bob"));
        }
        other => panic!("expected delivered, got {other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn receipt_for_an_offline_sender_waits_in_their_mailbox() {
    let server = spawn_server().await;
    let url = server.url();
    let (ha, hb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut alice, _ae) = user(&url, "alice", ha.path()).await;
    signup(&url, "bob").await;
    let out = alice
        .send_text(&name("bob"), "read me later")
        .await
        .unwrap();
    alice.client().close().await;

    let (mut bob, mut be) = login(&url, "bob", hb.path()).await;
    assert_eq!(
        texts(&drain(&mut bob, &mut be).await),
        vec!["read me later"]
    );

    let (mut alice, mut ae) = login(&url, "alice", ha.path()).await;
    let got = drain(&mut alice, &mut ae).await;
    assert!(
        got.iter().any(|i| matches!(i, Inbound::Delivered { msg_id, to, .. } if *msg_id == out.msg_id && *to == name("bob"))),
        "{got:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn messages_arrive_in_order_exactly_once_even_when_retried() {
    let server = spawn_server().await;
    let url = server.url();
    let (ha, hb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut alice, _ae) = user(&url, "alice", ha.path()).await;
    signup(&url, "bob").await;

    let mut expected = Vec::new();
    for i in 0..300 {
        let text = format!("message {i}");
        let id = MsgId::new();
        let env = alice.seal(&name("bob"), id, &text, vec![]).await.unwrap();
        alice
            .send_sealed(&name("bob"), id, env.clone())
            .await
            .unwrap();
        if i % 10 == 0 {
            // A retry (same id, e.g. after a lost `accepted`) is stored once.
            alice.send_sealed(&name("bob"), id, env).await.unwrap();
        }
        expected.push(text);
    }
    let (mut bob, mut be) = login(&url, "bob", hb.path()).await;
    let got = drain(&mut bob, &mut be).await;
    assert_eq!(texts(&got), expected, "in order, once each, across pages");

    // A retry that reaches the server after bob acknowledged is stored again,
    // and bob's client drops it as a duplicate.
    let id = MsgId::new();
    let env = alice
        .seal(&name("bob"), id, "only once", vec![])
        .await
        .unwrap();
    alice
        .send_sealed(&name("bob"), id, env.clone())
        .await
        .unwrap();
    assert_eq!(texts(&drain(&mut bob, &mut be).await), vec!["only once"]);
    let _ = next_or_none(&mut bob, &mut be).await;
    alice.send_sealed(&name("bob"), id, env).await.unwrap();
    assert!(
        next_or_none(&mut bob, &mut be).await.is_none(),
        "duplicate shown"
    );
    let (mut bob2, mut be2) = login(&url, "bob", hb.path()).await;
    assert!(
        drain(&mut bob2, &mut be2).await.is_empty(),
        "duplicate acknowledged"
    );
    server.stop().await;
}

async fn next_or_none(
    s: &mut telepound_client::Session,
    e: &mut telepound_client::Events,
) -> Option<Inbound> {
    tokio::time::timeout(std::time::Duration::from_millis(700), async {
        loop {
            let ev = e.recv().await?;
            let mut acks = Vec::new();
            let shown = s.handle_event(ev, &mut acks).await.ok()?;
            s.ack(acks).await.ok()?;
            if shown.is_some() {
                return shown;
            }
        }
    })
    .await
    .ok()
    .flatten()
}

#[tokio::test]
async fn account_errors_are_clear() {
    let server = spawn_server().await;
    let url = server.url();
    signup(&url, "alice").await;
    let (client, _e) = telepound_client::Client::connect(&url).await.unwrap();
    let ksf = telepound_testkit::FAST_KSF.parse().unwrap();

    let e = telepound_client::account::signup(&client, &name("alice"), b"pw", ksf)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UserTaken));

    let home = tempfile::tempdir().unwrap();
    let e = telepound_client::account::login(&client, &name("alice"), b"wrong", home.path())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::AuthFailed));
    assert_eq!(e.to_string(), "wrong user name or password");

    let e = telepound_client::account::login(&client, &name("nobody"), b"pw", home.path())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UnknownUser));

    // The same connection still works after the failures.
    let s = telepound_client::account::login(
        &client,
        &name("alice"),
        telepound_testkit::PASSWORD.as_bytes(),
        home.path(),
    )
    .await
    .unwrap();
    let e = {
        let mut s = s;
        s.send_text(&name("carol"), "hi").await.unwrap_err()
    };
    assert!(
        matches!(e, Error::UnknownUser(ref u) if *u == name("carol")),
        "{e}"
    );
    assert_eq!(e.to_string(), "User Not Found: carol");

    let e = telepound_client::Client::connect("ws://127.0.0.1:1")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("connection refused"), "{e}");
    server.stop().await;
}

#[tokio::test]
async fn presence_shows_online_then_last_seen() {
    let server = spawn_server().await;
    let url = server.url();
    let (ha, hb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (alice, _ae) = user(&url, "alice", ha.path()).await;
    let (bob, _be) = user(&url, "bob", hb.path()).await;
    let (p, unknown) = alice
        .presence(vec![name("bob"), name("zed")])
        .await
        .unwrap();
    assert_eq!(unknown, vec![name("zed")]);
    assert!(p[0].online);
    bob.client().close().await;
    let mut offline = None;
    for _ in 0..100 {
        let (p, _) = alice.presence(vec![name("bob")]).await.unwrap();
        if !p[0].online {
            offline = Some(p[0].clone());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let offline = offline.expect("bob shown offline");
    assert!(offline.last_seen.is_some());
    server.stop().await;
}

#[tokio::test]
async fn a_server_refuses_weak_password_stretching_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = telepound_testkit::test_config(dir.path());
    config.min_ksf = telepound_protocol::auth::KsfParams::DEFAULT;
    let server = telepound_testkit::spawn_server_with(config).await;
    let (client, _e) = telepound_client::Client::connect(&server.url())
        .await
        .unwrap();
    let weak = telepound_testkit::FAST_KSF.parse().unwrap();
    let e = telepound_client::account::signup(&client, &name("alice"), b"pw", weak)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::BadKey));
    assert!(e.to_string().contains("m=19456,t=2,p=1"), "{e}");
    // Nothing was created: the name is still free.
    let e = telepound_client::account::login(&client, &name("alice"), b"pw", dir.path())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UnknownUser));
    server.stop().await;
}

/// The ack window, end to end: a message bob acknowledges at once is
/// accepted without ever being written (the metrics say so and his
/// mailbox stays empty); one he leaves unacknowledged is written when the
/// window closes, and is still there for his next login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quick_ack_from_an_online_recipient_saves_the_disk_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = telepound_testkit::test_config(dir.path());
    // Long enough that bob's client acknowledges in time on a busy machine.
    config.writer.ack_window = std::time::Duration::from_secs(2);
    let server = spawn_server_with(config).await;
    let url = server.url();
    let (ha, hb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut alice, mut ae) = user(&url, "alice", ha.path()).await;
    let (mut bob, mut be) = user(&url, "bob", hb.path()).await;
    assert!(drain(&mut bob, &mut be).await.is_empty(), "bob is live");
    // alice too, so her receipts come live rather than stored.
    assert!(drain(&mut alice, &mut ae).await.is_empty());

    let sending = tokio::spawn(async move {
        let out = alice.send_text(&name("bob"), "quick").await;
        (alice, out)
    });
    let got = next_inbound(&mut bob, &mut be, 10).await; // shows and acknowledges
    assert_eq!(texts(&[got]), vec!["quick"]);
    let (mut alice, out) = sending.await.unwrap();
    assert!(out.unwrap().recipient_online);
    let m = metrics(&server).await;
    assert_eq!(
        metric(&m, "telepound_ack_window_total{outcome=\"acked\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "telepound_ack_window_total{outcome=\"written\"}"),
        Some(0.0)
    );
    assert_eq!(metric(&m, "telepound_mailbox_depth"), Some(0.0));

    // bob's client receives the next one but does not acknowledge it.
    let out = alice.send_text(&name("bob"), "later").await.unwrap();
    assert!(out.recipient_online);
    let m = metrics(&server).await;
    assert_eq!(
        metric(&m, "telepound_ack_window_total{outcome=\"written\"}"),
        Some(1.0)
    );
    assert_eq!(metric(&m, "telepound_mailbox_depth"), Some(1.0));
    drop((bob, be));
    let (mut bob, mut be) = login(&url, "bob", hb.path()).await;
    assert_eq!(texts(&drain(&mut bob, &mut be).await), vec!["later"]);
    server.stop().await;
}
