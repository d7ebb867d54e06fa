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
