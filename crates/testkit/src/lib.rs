//! Test helpers (dev-only): a real server on `127.0.0.1:0` over a
//! temporary SQLite database, fresh PostgreSQL databases, and fast Argon2
//! parameters.
//!
//! Design decision: tests run the real server in-process through
//! [`telepound_server::run`], the same entry point the binary uses, with a
//! oneshot as the shutdown signal; nothing is mocked.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use telepound_server::Config;
use telepound_server::store::DatabaseUrl;

pub mod pg;

/// Argon2 parameters cheap enough for tests (64 KiB, one pass). Real
/// accounts use [`telepound_protocol`]'s default.
pub const FAST_KSF: &str = "m=64,t=1,p=1";

/// A server running in this process.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its data folder (removed when the server is dropped, unless kept).
    pub data_dir: PathBuf,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    /// `ws://` URL of the server.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Stops the server gracefully and waits for it.
    ///
    /// # Panics
    /// When the server returns an error.
    pub async fn stop(mut self) {
        self.stop_inner().await;
    }

    async fn stop_inner(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("server task")
                .expect("server ran cleanly");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A default test configuration in `dir`: SQLite, short timeouts.
pub fn test_config(dir: &Path) -> Config {
    let mut c = Config::with_data_dir(dir);
    c.shutdown_grace = Duration::from_secs(5);
    c.min_ksf = FAST_KSF.parse().expect("valid ksf");
    // Every test user signs up from 127.0.0.1.
    c.limits.signups_per_address = 10_000;
    c
}

/// Starts a server on a fresh temporary SQLite database.
pub async fn spawn_server() -> TestServer {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = test_config(dir.path());
    let mut s = spawn_server_with(config).await;
    s._dir = Some(dir);
    s
}

/// Starts a server with `config` on `127.0.0.1:0`.
pub async fn spawn_server_with(config: Config) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind port 0");
    let addr = listener.local_addr().expect("local addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let data_dir = config.data_dir.clone();
    let task = tokio::spawn(telepound_server::run(listener, config, async move {
        let _ = rx.await;
    }));
    // Wait until it answers /healthz, so tests never race the start.
    for _ in 0..200 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = s
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .await;
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf).await;
            if buf.starts_with(b"HTTP/1.1 200") {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    TestServer {
        addr,
        data_dir,
        shutdown: Some(tx),
        task: Some(task),
        _dir: None,
    }
}

/// The password test users get.
pub const PASSWORD: &str = "correct horse battery staple";

/// Signs `name` up (with [`FAST_KSF`]) on the server at `url`.
///
/// # Panics
/// When sign-up fails.
pub async fn signup(url: &str, name: &str) {
    let (client, _events) = telepound_client::Client::connect(url)
        .await
        .expect("connect");
    telepound_client::account::signup(
        &client,
        &telepound_protocol::UserName::new(name).expect("valid name"),
        PASSWORD.as_bytes(),
        FAST_KSF.parse().expect("valid ksf"),
    )
    .await
    .expect("signup");
    client.close().await;
}

/// Logs `name` in with local state under `home`.
///
/// # Panics
/// When login fails.
pub async fn login(
    url: &str,
    name: &str,
    home: &Path,
) -> (telepound_client::Session, telepound_client::Events) {
    let (client, events) = telepound_client::Client::connect(url)
        .await
        .expect("connect");
    let session = telepound_client::account::login(
        &client,
        &telepound_protocol::UserName::new(name).expect("valid name"),
        PASSWORD.as_bytes(),
        home,
    )
    .await
    .expect("login");
    (session, events)
}

/// Signs up and logs in.
pub async fn user(
    url: &str,
    name: &str,
    home: &Path,
) -> (telepound_client::Session, telepound_client::Events) {
    signup(url, name).await;
    login(url, name, home).await
}

/// Receives the waiting mailbox (all pages), acknowledges it, and returns
/// what was shown. The connection is live afterwards.
///
/// # Panics
/// On connection errors.
pub async fn drain(
    session: &mut telepound_client::Session,
    events: &mut telepound_client::Events,
) -> Vec<telepound_client::Inbound> {
    let mut shown = Vec::new();
    session
        .catch_up(events, |i| shown.push(i.clone()))
        .await
        .expect("catch up");
    shown
}

/// Waits up to `secs` for the next shown event on a live connection.
///
/// # Panics
/// On timeout or connection errors.
pub async fn next_inbound(
    session: &mut telepound_client::Session,
    events: &mut telepound_client::Events,
    secs: u64,
) -> telepound_client::Inbound {
    tokio::time::timeout(Duration::from_secs(secs), async {
        loop {
            let ev = events.recv().await.expect("events open");
            let mut acks = Vec::new();
            let shown = session.handle_event(ev, &mut acks).await.expect("event");
            session.ack(acks).await.expect("ack");
            if let Some(i) = shown {
                return i;
            }
        }
    })
    .await
    .expect("an event in time")
}

/// The text of shown messages, in order.
pub fn texts(items: &[telepound_client::Inbound]) -> Vec<String> {
    items
        .iter()
        .filter_map(|i| match i {
            telepound_client::Inbound::Message(r) => Some(r.payload.text.clone()),
            _ => None,
        })
        .collect()
}

/// A plain HTTP GET on the server's port; returns the status code and body.
///
/// # Panics
/// When the server does not answer.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("an HTTP status");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of one Prometheus sample line (`name{labels} value`).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.trim().parse().ok())
    })
}

/// A SQLite database URL inside `dir`.
pub fn sqlite_url(dir: &Path) -> DatabaseUrl {
    DatabaseUrl::Sqlite(dir.join("telepound.sqlite3"))
}

/// Starts an upload that never finishes: declares a 1 MB file from the
/// holder of `token` for `recipient`, sends the `PATCH` headers and 4 KiB
/// of the body, waits until the server has received them (so the upload is
/// surely in progress there), and returns the connection, held open by the
/// caller.
///
/// # Panics
/// When the server refuses the file or never receives the bytes.
pub async fn hold_upload(addr: SocketAddr, token: &[u8], recipient: &str) -> tokio::net::TcpStream {
    use base64::Engine;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let token = base64::engine::general_purpose::STANDARD.encode(token);
    let size = 1_000_000;
    let body = format!(r#"{{"size":{size},"recipients":["{recipient}"]}}"#);
    let mut create = tokio::net::TcpStream::connect(addr).await.expect("connect");
    create
        .write_all(
            format!(
                "POST /v1/blobs HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .expect("write");
    let mut created = String::new();
    create.read_to_string(&mut created).await.expect("read");
    assert!(created.starts_with("HTTP/1.1 201"), "{created}");
    let id = created
        .split("\"blob_id\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a blob id");
    let bytes_in = || async {
        let (_, m) = http_get(addr, "/metrics").await;
        metric(&m, "telepound_blob_bytes_in_total").unwrap_or(0.0)
    };
    let before = bytes_in().await;
    let mut upload = tokio::net::TcpStream::connect(addr).await.expect("connect");
    upload
        .write_all(
            format!(
                "PATCH /v1/blobs/{id} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\
                 Upload-Offset: 0\r\nContent-Length: {size}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .expect("write");
    upload.write_all(&[7u8; 4096]).await.expect("write");
    for _ in 0..500 {
        if bytes_in().await >= before + 4096.0 {
            return upload;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the server never received the upload's first bytes");
}
