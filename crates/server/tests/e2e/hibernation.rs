//! Idle connections hibernate (their WebSocket state dropped, the stream
//! kept) and wake, losing nothing, for a frame, a push, a ping, their
//! deadline or shutdown.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use telepound_testkit::{http_get, metric};
use tokio_tungstenite::tungstenite::Message;

use crate::util::*;

async fn gauge(addr: std::net::SocketAddr, series: &str) -> f64 {
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    metric(&body, series).unwrap_or_else(|| panic!("{series} in /metrics"))
}

/// Waits until `series` is at least `at_least`.
async fn wait_for(addr: std::net::SocketAddr, series: &str, at_least: f64) {
    let start = Instant::now();
    while gauge(addr, series).await < at_least {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{series} never reached {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads (so pings get their pongs) for `d`; the connection must stay open
/// and send nothing but pings.
async fn read_pings_for(raw: &mut Raw, d: Duration) -> usize {
    let mut pings = 0;
    let _ = tokio::time::timeout(d, async {
        loop {
            match raw.ws.next().await {
                Some(Ok(Message::Ping(_))) => pings += 1,
                other => panic!("expected only pings while idle, got {other:?}"),
            }
        }
    })
    .await;
    pings
}

/// A server whose connections hibernate after 100 ms of quiet (pinged every
/// second, dropped after 3 s of silence), with alice logged in through the
/// library and bob on a raw connection.
struct Scene {
    server: telepound_testkit::TestServer,
    alice: telepound_client::Session,
    _events: telepound_client::Events,
    bob: Raw,
    _dirs: (tempfile::TempDir, tempfile::TempDir, tempfile::TempDir),
}

impl Scene {
    async fn new() -> Scene {
        let dir = tempfile::tempdir().unwrap();
        let mut config = telepound_testkit::test_config(dir.path());
        config.hibernate_after = Some(Duration::from_millis(100));
        config.ping_interval = Duration::from_secs(1);
        config.idle_timeout = Duration::from_secs(3);
        let server = spawn_server_with(config).await;
        let url = server.url();
        let (ha, hb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (alice, events) = user(&url, "alice", ha.path()).await;
        signup(&url, "bob").await;
        let (bob, bob_session) = Raw::logged_in(&url, "bob", hb.path()).await;
        bob_session.client().close().await;
        Scene {
            server,
            alice,
            _events: events,
            bob,
            _dirs: (dir, ha, hb),
        }
    }
}

#[tokio::test]
async fn a_hibernating_connection_wakes_for_frames_pushes_and_pings_and_loses_nothing() {
    let Scene {
        server,
        mut alice,
        mut bob,
        _events,
        _dirs,
    } = Scene::new().await;
    let addr = server.addr;
    bob.send(r#"{"type":"sync","rid":2,"after":0,"limit":10}"#)
        .await;
    assert_eq!(bob.recv().await["type"], "synced");

    // Quiet: bob's connection hibernates.
    wait_for(addr, "telepound_connections_hibernating", 1.0).await;
    let woke = gauge(addr, "telepound_wakeups_total").await;

    // A push wakes it, and arrives.
    alice.send_text(&name("bob"), "wake up").await.unwrap();
    let v = bob.recv().await;
    assert_eq!(v["type"], "message", "{v}");
    let seq = v["seq"].as_i64().unwrap();
    assert!(gauge(addr, "telepound_wakeups_total").await > woke);

    // Asleep again, a frame larger than the first read on waking (which
    // reads 64 bytes) and a small one, sent in one write, both answered in
    // order.
    let woke = gauge(addr, "telepound_wakeups_total").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    wait_for(addr, "telepound_connections_hibernating", 1.0).await;
    let presence =
        r#"{"type":"presence","rid":3,"users":["alice","bob","nobody-at-all","someone-else"]}"#;
    assert!(presence.len() > 64);
    futures_util::SinkExt::feed(&mut bob.ws, Message::Text(presence.into()))
        .await
        .unwrap();
    futures_util::SinkExt::feed(
        &mut bob.ws,
        Message::Text(format!(r#"{{"type":"ack","rid":4,"seqs":[{seq}]}}"#).into()),
    )
    .await
    .unwrap();
    futures_util::SinkExt::flush(&mut bob.ws).await.unwrap();
    let v = bob.recv().await;
    assert_eq!(
        (v["type"].as_str(), v["rid"].as_u64()),
        (Some("presence"), Some(3)),
        "{v}"
    );
    let v = bob.recv().await;
    assert_eq!(v["rid"], 4, "{v}");
    assert!(gauge(addr, "telepound_wakeups_total").await > woke);

    // Longer than the idle timeout, asleep between pings: the pings go out
    // from hibernation, bob's pongs wake it, and it stays open.
    let pings = read_pings_for(&mut bob, Duration::from_secs(4)).await;
    assert!(pings >= 3, "{pings} pings in 4 s at one a second");
    bob.send(r#"{"type":"presence","rid":5,"users":["alice"]}"#)
        .await;
    let v = bob.recv().await;
    assert_eq!(v["rid"], 5, "{v}");
    let (p, _) = alice.presence(vec![name("bob")]).await.unwrap();
    assert!(p[0].online);

    // A message in fragments, a ping between them, sent while asleep: it is
    // answered, and the connection hibernates again afterwards.
    {
        use tokio_tungstenite::tungstenite::protocol::frame::Frame;
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        wait_for(addr, "telepound_connections_hibernating", 1.0).await;
        let (head, tail) = r#"{"type":"presence","rid":6,"users":["alice"]}"#.split_at(20);
        let frames = [
            Message::Frame(Frame::message(
                head.to_owned(),
                OpCode::Data(Data::Text),
                false,
            )),
            Message::Ping(Default::default()),
            Message::Frame(Frame::message(
                tail.to_owned(),
                OpCode::Data(Data::Continue),
                true,
            )),
        ];
        for f in frames {
            futures_util::SinkExt::send(&mut bob.ws, f).await.unwrap();
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        let v = bob.recv().await;
        assert_eq!(v["rid"], 6, "{v}");
        wait_for(addr, "telepound_connections_hibernating", 1.0).await;
    }

    // Shutdown reaches a hibernating connection at once.
    wait_for(addr, "telepound_connections_hibernating", 1.0).await;
    let stop = tokio::spawn(server.stop());
    let close = bob.closed().await.expect("a close frame");
    assert_eq!(close.reason.as_str(), "shutting_down");
    stop.await.unwrap();
}

#[tokio::test]
async fn a_hibernating_peer_that_goes_silent_is_dropped_at_its_deadline() {
    // bob never reads again: no pong ever goes back.
    let Scene {
        server,
        alice,
        bob: raw,
        _events,
        _dirs,
    } = Scene::new().await;
    let addr = server.addr;
    wait_for(addr, "telepound_connections_hibernating", 1.0).await;
    let start = Instant::now();
    loop {
        let (p, _) = alice.presence(vec![name("bob")]).await.unwrap();
        if !p[0].online {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "bob still online"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = http_get(addr, "/metrics").await.1;
    assert_eq!(
        metric(&m, "telepound_disconnects_total{reason=\"idle_timeout\"}"),
        Some(1.0),
        "{m}"
    );
    drop(raw);
    server.stop().await;
}
