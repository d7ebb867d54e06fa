//! Dead and vanished peers are noticed and shown offline.

use std::time::{Duration, Instant};

use crate::util::*;

async fn wait_offline(
    watcher: &telepound_client::Session,
    who: &str,
    within: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let (p, _) = watcher.presence(vec![name(who)]).await.unwrap();
        if !p[0].online {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{who} still online after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_silent_half_open_peer_is_dropped_and_shown_offline() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = telepound_testkit::test_config(dir.path());
    config.ping_interval = Duration::from_secs(1);
    config.idle_timeout = Duration::from_secs(3);
    let server = spawn_server_with(config).await;
    let url = server.url();
    let (ha, hb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (alice, _ae) = user(&url, "alice", ha.path()).await;
    signup(&url, "bob").await;
    // bob logs in and then never reads again: no pong ever goes back, as
    // with a peer whose network vanished.
    let (raw, bob_session) = Raw::logged_in(&url, "bob", hb.path()).await;
    bob_session.client().close().await;
    let (p, _) = alice.presence(vec![name("bob")]).await.unwrap();
    assert!(p[0].online);
    let took = wait_offline(&alice, "bob", Duration::from_secs(15)).await;
    assert!(
        took >= Duration::from_secs(2),
        "not before the idle timeout ({took:?})"
    );
    drop(raw);
    server.stop().await;
}

/// Regression: silence was checked only on ping ticks, so a peer could stay
/// online for up to a ping interval past its idle timeout (and then a
/// close frame written under another idle timeout).
#[tokio::test]
async fn a_silent_peer_is_dropped_at_its_idle_timeout_not_at_the_next_ping() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = telepound_testkit::test_config(dir.path());
    // The first tick after the idle timeout would come at 18 s.
    config.ping_interval = Duration::from_secs(9);
    config.idle_timeout = Duration::from_secs(10);
    let server = spawn_server_with(config).await;
    let url = server.url();
    let (ha, hb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (alice, _ae) = user(&url, "alice", ha.path()).await;
    signup(&url, "bob").await;
    let (raw, bob_session) = Raw::logged_in(&url, "bob", hb.path()).await;
    let silent_since = Instant::now();
    bob_session.client().close().await;
    // Generous for a noisy machine, but well before the tick at 18 s.
    wait_offline(&alice, "bob", Duration::from_secs(15)).await;
    assert!(
        silent_since.elapsed() >= Duration::from_secs(9),
        "dropped before its idle timeout ({:?})",
        silent_since.elapsed()
    );
    drop(raw);
    server.stop().await;
}

#[tokio::test]
async fn a_vanished_tcp_peer_is_offline_at_once_and_others_keep_chatting() {
    let server = spawn_server().await;
    let url = server.url();
    let (ha, hb, hc) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (mut alice, _ae) = user(&url, "alice", ha.path()).await;
    signup(&url, "bob").await;
    let (mut carol, mut ce) = user(&url, "carol", hc.path()).await;
    drain(&mut carol, &mut ce).await;
    let (raw, bob_session) = Raw::logged_in(&url, "bob", hb.path()).await;
    bob_session.client().close().await;
    // Drop the TCP connection without a close handshake.
    drop(raw);
    wait_offline(&alice, "bob", Duration::from_secs(30)).await;
    alice.send_text(&name("carol"), "still here").await.unwrap();
    let got = telepound_testkit::next_inbound(&mut carol, &mut ce, 5).await;
    assert_eq!(texts(&[got]), vec!["still here"]);
    server.stop().await;
}

/// bob goes live on a connection with a tiny receive buffer and never
/// reads again while alice sends 40 messages of 200 kB; he is cut off (not
/// buffered without bound) and finds all of them in order later.
async fn a_stuck_reader_is_dropped(config: telepound_server::Config) {
    let server = spawn_server_with(config).await;
    let url = server.url();
    let (ha, hb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut alice, _ae) = user(&url, "alice", ha.path()).await;
    signup(&url, "bob").await;
    // bob goes live, then never reads again.
    let small = Raw::connect_small_buffer(&url).await;
    let (mut raw, bob_session) = Raw::resume(small, &url, "bob", hb.path()).await;
    bob_session.client().close().await;
    let v = raw
        .recv_after(r#"{"type":"sync","rid":2,"after":0,"limit":10}"#)
        .await;
    assert_eq!(
        (v["type"].as_str(), v["more"].as_bool()),
        (Some("synced"), Some(false))
    );

    // alice keeps sending; each send is accepted whatever bob does.
    // About 11 MB: more than the kernel's socket buffers can hide.
    let n = 40;
    let big = "x".repeat(200_000);
    for i in 0..n {
        alice
            .send_text(&name("bob"), &format!("{i} {big}"))
            .await
            .unwrap();
    }
    // bob has been cut off rather than buffered without bound...
    wait_offline(&alice, "bob", Duration::from_secs(15)).await;
    let (_, m) = telepound_testkit::http_get(server.addr, "/metrics").await;
    assert_eq!(
        telepound_testkit::metric(&m, "telepound_disconnects_total{reason=\"slow_consumer\"}"),
        Some(1.0),
        "{m}"
    );
    drop(raw);
    // ...and everything waits for him in order.
    let (mut bob, mut be) = login(&url, "bob", hb.path()).await;
    let got = texts(&drain(&mut bob, &mut be).await);
    assert_eq!(got.len(), n);
    assert!(
        got.iter()
            .enumerate()
            .all(|(i, t)| t.starts_with(&format!("{i} ")))
    );
    server.stop().await;
}

fn stuck_reader_config(dir: &std::path::Path) -> telepound_server::Config {
    let mut config = telepound_testkit::test_config(dir);
    config.limits.messages_per_second = 10_000;
    config.limits.message_burst = 10_000;
    config
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_and_catches_up_later() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = stuck_reader_config(dir.path());
    config.outbox = 16;
    a_stuck_reader_is_dropped(config).await;
}

/// Regression: the outbox was capped only by count, so a reader stuck on
/// large envelopes could pin up to a gigabyte (1024 × 1 MiB).
#[tokio::test]
async fn a_stuck_reader_is_dropped_when_its_outbox_holds_too_many_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = stuck_reader_config(dir.path());
    // Room for every message by count; only the bytes can overflow.
    config.outbox = 100_000;
    config.outbox_bytes = config.max_frame;
    a_stuck_reader_is_dropped(config).await;
}

#[tokio::test]
async fn a_graceful_stop_tells_clients_and_answers_what_is_in_flight() {
    let server = spawn_server().await;
    let url = server.url();
    let (ha, hb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    signup(&url, "alice").await;
    signup(&url, "bob").await;
    let (mut raw, _s) = Raw::logged_in(&url, "alice", ha.path()).await;
    // Connected, not logged in: told too.
    let mut anonymous = Raw::connect(&url).await;
    // A send goes in right before the stop; its answer still comes.
    let id = MsgId::new();
    raw.send(&format!(
        r#"{{"type":"send","rid":5,"msg_id":"{id}","from":"alice","to":"bob","envelope":{ENVELOPE}}}"#
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stopping = tokio::spawn(server.stop());
    let v = raw.recv().await;
    assert_eq!(
        (v["type"].as_str(), v["rid"].as_u64()),
        (Some("accepted"), Some(5)),
        "{v}"
    );
    let close = raw.closed().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1001);
    assert_eq!(close.reason.as_str(), "shutting_down");
    let close = anonymous.closed().await.expect("a close frame");
    assert_eq!(
        (u16::from(close.code), close.reason.as_str()),
        (1001, "shutting_down")
    );
    stopping.await.unwrap();
    let _ = hb;
}
