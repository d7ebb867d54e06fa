//! A raw WebSocket client for poking at the server.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

pub use telepound_protocol::{MsgId, UserName};
pub use telepound_testkit::{drain, login, signup, spawn_server, spawn_server_with, texts, user};

pub fn name(s: &str) -> UserName {
    UserName::new(s).unwrap()
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A raw connection.
pub struct Raw {
    pub ws: Ws,
}

impl Raw {
    pub async fn connect(url: &str) -> Raw {
        let (ws, _) = tokio_tungstenite::connect_async(format!("{url}/v1/ws"))
            .await
            .unwrap();
        Raw { ws }
    }

    /// Connects from another loopback address (`127.0.0.2`, say): another
    /// peer as far as per-address limits go.
    pub async fn connect_from(url: &str, ip: std::net::Ipv4Addr) -> Raw {
        let addr: std::net::SocketAddr = url.trim_start_matches("ws://").parse().unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((ip, 0).into()).unwrap();
        let stream = socket.connect(addr).await.unwrap();
        let (ws, _) = tokio_tungstenite::client_async(
            format!("{url}/v1/ws"),
            tokio_tungstenite::MaybeTlsStream::Plain(stream),
        )
        .await
        .unwrap();
        Raw { ws }
    }

    /// Connects with a tiny receive buffer (a client that barely reads).
    pub async fn connect_small_buffer(url: &str) -> Raw {
        let addr: std::net::SocketAddr = url.trim_start_matches("ws://").parse().unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(addr).await.unwrap();
        let (ws, _) = tokio_tungstenite::client_async(
            format!("{url}/v1/ws"),
            tokio_tungstenite::MaybeTlsStream::Plain(stream),
        )
        .await
        .unwrap();
        Raw { ws }
    }

    /// Connects and logs in as `user` with a session token from a library
    /// login (the `resume` request).
    pub async fn logged_in(
        url: &str,
        user: &str,
        home: &std::path::Path,
    ) -> (Raw, telepound_client::Session) {
        Self::resume(Raw::connect(url).await, url, user, home).await
    }

    /// Logs `raw` in as `user` with a session token from a library login.
    pub async fn resume(
        mut raw: Raw,
        url: &str,
        user: &str,
        home: &std::path::Path,
    ) -> (Raw, telepound_client::Session) {
        let (session, _events) = login(url, user, home).await;
        use base64::Engine;
        let token = base64::engine::general_purpose::STANDARD.encode(session.token());
        raw.send(&format!(
            r#"{{"type":"resume","rid":1,"user":"{user}","token":"{token}"}}"#
        ))
        .await;
        let v = raw.recv().await;
        assert_eq!(v["type"], "resumed", "{v}");
        (raw, session)
    }

    pub async fn send(&mut self, text: &str) {
        self.ws.send(Message::Text(text.into())).await.unwrap();
    }

    /// The next JSON frame (pings skipped), within 5 s.
    pub async fn recv(&mut self) -> Value {
        let msg = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    other => panic!("expected a text frame, got {other:?}"),
                }
            }
        })
        .await;
        msg.expect("a frame within 5 s")
    }

    /// Waits for the server to close; returns its close frame.
    pub async fn closed(&mut self) -> Option<CloseFrame> {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Close(c))) => return c,
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => return None,
                }
            }
        })
        .await
        .expect("closed within 10 s")
    }
}

/// A syntactically valid envelope for raw sends (the server never opens it).
pub const ENVELOPE: &str = r#"{"suite":"tp1","opaque":"to the server"}"#;
