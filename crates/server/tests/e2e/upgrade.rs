//! The WebSocket upgrade (RFC 6455 section 4.2) and the closing handshake.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::util::*;

/// The answer's head to a `GET /v1/ws` with `headers`, read until the end
/// of the head.
async fn upgrade_head(addr: SocketAddr, headers: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET /v1/ws HTTP/1.1\r\nHost: t\r\n{headers}\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the answer's head");
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).to_lowercase()
}

const UPGRADE: &str = "Connection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n";

#[tokio::test]
async fn the_upgrade_is_answered_per_rfc_6455_and_bad_ones_are_refused() {
    let server = spawn_server().await;
    let addr = server.addr;
    // The example of RFC 6455 section 1.3.
    let head = upgrade_head(
        addr,
        &format!(
            "{UPGRADE}Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        ),
    )
    .await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );

    let head = upgrade_head(addr, "Sec-WebSocket-Version: 13\r\n").await;
    assert!(head.starts_with("http/1.1 426"), "no upgrade asked: {head}");
    assert!(head.contains("sec-websocket-version: 13"), "{head}");

    let head = upgrade_head(
        addr,
        &format!(
            "{UPGRADE}Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        ),
    )
    .await;
    assert!(head.starts_with("http/1.1 426"), "old version: {head}");
    assert!(head.contains("sec-websocket-version: 13"), "{head}");

    for key in [
        "",
        "Sec-WebSocket-Key: c2hvcnQ=\r\n",
        "Sec-WebSocket-Key: not base64!\r\n",
    ] {
        let head = upgrade_head(
            addr,
            &format!("{UPGRADE}Sec-WebSocket-Version: 13\r\n{key}"),
        )
        .await;
        assert!(head.starts_with("http/1.1 400"), "key {key:?}: {head}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_closes_hears_the_close_answered() {
    let server = spawn_server().await;
    let mut raw = Raw::connect(&server.url()).await;
    raw.ws.send(Message::Close(None)).await.unwrap();
    match raw.ws.next().await {
        Some(Ok(Message::Close(_))) => {}
        other => panic!("expected the server's close frame, got {other:?}"),
    }
    server.stop().await;
}
