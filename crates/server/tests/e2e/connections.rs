//! Plain TCP and HTTP connections: every one counts under the connection
//! caps from the moment it is accepted, a request must send its headers in
//! time, and none can hold a stopping server past its deadline.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use telepound_testkit::{http_get, metric, test_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::*;

/// Reads until the server closes the connection (or resets it); `None`
/// when it is still open after `within`.
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> Option<String> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok()
        .map(|()| String::from_utf8_lossy(&got).into_owned())
}

/// `/metrics` once the server has a free place for the request.
async fn metrics_when_free(addr: SocketAddr) -> String {
    for _ in 0..100 {
        let (status, body) = http_get(addr, "/metrics").await;
        if status == 200 {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("/metrics never answered 200");
}

/// Opens `n` connections that send nothing and that the server keeps. (A
/// place taken by a connection that just closed may be given back a moment
/// late; a refusal then is retried.)
async fn idle_connections(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut kept = Vec::new();
    for _ in 0..100 {
        if kept.len() == n {
            return kept;
        }
        let mut s = TcpStream::connect(addr).await.unwrap();
        match read_until_closed(&mut s, Duration::from_millis(300)).await {
            None => kept.push(s),
            Some(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!("the server kept only {} idle connections", kept.len());
}

/// Opens one more connection, which must be refused: answered at once
/// and closed.
async fn refused(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    read_until_closed(&mut s, Duration::from_secs(10))
        .await
        .expect("a connection over the cap is closed")
}

/// Waits until the `telepound_connections_open` gauge reads `n`.
async fn wait_open(addr: SocketAddr, n: f64) {
    let start = Instant::now();
    loop {
        let m = metrics_when_free(addr).await;
        let open = metric(&m, "telepound_connections_open").expect("the gauge");
        if open == n {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{open} connections open, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The gauge counts the hub's own record of open connections (which a
/// shutdown reaches): every way a connection ends takes it out again.
#[tokio::test]
async fn every_ended_connection_leaves_the_open_count() {
    let server = spawn_server().await;
    let url = server.url();
    let home = tempfile::tempdir().unwrap();
    signup(&url, "alice").await;
    let anonymous = Raw::connect(&url).await;
    let (logged_in, session) = Raw::logged_in(&url, "alice", home.path()).await;
    session.client().close().await;
    let mut closing = Raw::connect(&url).await;
    let vanishing = Raw::connect(&url).await;
    wait_open(server.addr, 4.0).await;
    // A close handshake, a dropped TCP connection, a logged-in one dropped.
    closing.ws.close(None).await.unwrap();
    drop(vanishing);
    drop(logged_in);
    wait_open(server.addr, 1.0).await;
    drop(anonymous);
    wait_open(server.addr, 0.0).await;
    server.stop().await;
}

#[tokio::test]
async fn idle_tcp_connections_count_toward_the_connection_cap() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.max_connections = 4;
    let server = spawn_server_with(config).await;
    // Never a byte of HTTP: before, these were accepted without limit.
    let kept = idle_connections(server.addr, 4).await;
    for _ in 0..2 {
        let r = refused(server.addr).await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert!(r.ends_with("too_many_connections\n"), "{r}");
    }
    // A WebSocket client is told why.
    let e = telepound_client::Client::connect(&server.url())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("too_many_connections"), "{e}");
    drop(kept);
    let m = metrics_when_free(server.addr).await;
    assert!(
        metric(
            &m,
            "telepound_connections_refused_total{reason=\"too_many\"}"
        )
        .unwrap()
            >= 3.0,
        "{m}"
    );
    server.stop().await;
}

#[tokio::test]
async fn idle_tcp_connections_count_toward_the_per_address_cap() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.limits.max_connections_per_address = 3;
    let server = spawn_server_with(config).await;
    let kept = idle_connections(server.addr, 3).await;
    for _ in 0..2 {
        let r = refused(server.addr).await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert!(r.contains("too many from your address"), "{r}");
    }
    drop(kept);
    let m = metrics_when_free(server.addr).await;
    assert!(
        metric(
            &m,
            "telepound_connections_refused_total{reason=\"too_many_from_address\"}"
        )
        .unwrap()
            >= 2.0,
        "{m}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_request_whose_headers_stall_is_closed_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.header_read_timeout = Duration::from_secs(1);
    let server = spawn_server_with(config).await;

    // Half a request line, then nothing.
    let start = Instant::now();
    let mut half = TcpStream::connect(server.addr).await.unwrap();
    half.write_all(b"GET /heal").await.unwrap();
    // A kept-alive connection that sends no next request.
    let mut kept_alive = TcpStream::connect(server.addr).await.unwrap();
    kept_alive
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();

    assert!(
        read_until_closed(&mut half, Duration::from_secs(20))
            .await
            .is_some(),
        "a half-sent request kept its connection open"
    );
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "closed before the timeout"
    );
    let answered = read_until_closed(&mut kept_alive, Duration::from_secs(20))
        .await
        .expect("an idle kept-alive connection is closed too");
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    // Other clients are unaffected.
    assert_eq!(http_get(server.addr, "/healthz").await.0, 200);
    server.stop().await;
}

/// Regression: the shutdown deadline started only once every HTTP
/// connection had closed, so a held upload kept the server up forever.
#[tokio::test]
async fn a_held_upload_or_a_half_sent_request_does_not_hold_up_a_stop() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.shutdown_grace = Duration::from_secs(1);
    config.header_read_timeout = Duration::from_secs(600);
    let server = spawn_server_with(config).await;
    let url = server.url();
    let home = tempfile::tempdir().unwrap();
    signup(&url, "bob").await;
    let (alice, _events) = user(&url, "alice", home.path()).await;
    // An upload that sends a little of its body and then holds.
    let mut upload = telepound_testkit::hold_upload(server.addr, alice.token(), "bob").await;
    // A request that stops in the middle of its headers.
    let mut half = TcpStream::connect(server.addr).await.unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    tokio::time::timeout(Duration::from_secs(30), server.stop())
        .await
        .expect("the server stopped despite the connections held open");
    // Both were cut off.
    assert!(
        read_until_closed(&mut upload, Duration::from_secs(5))
            .await
            .is_some()
    );
    assert!(
        read_until_closed(&mut half, Duration::from_secs(5))
            .await
            .is_some()
    );
    alice.client().close().await;
}
