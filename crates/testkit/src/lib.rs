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

/// A SQLite database URL inside `dir`.
pub fn sqlite_url(dir: &Path) -> DatabaseUrl {
    DatabaseUrl::Sqlite(dir.join("telepound.sqlite3"))
}
