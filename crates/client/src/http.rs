//! A small HTTP/1.1 client for the blob endpoints, on hyper over the same
//! TCP/TLS setup as the WebSocket: one connection per request (transfers
//! are few and large), TLS with the same roots and `--ca-file`.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::{Request, Response};

use hyper_util::rt::TokioIo;
use telepound_protocol::blob::BlobError;

use crate::connection::{is_loopback, scheme_and_host, tls_config};
use crate::{ConnectOptions, Error, Result};

/// A request body.
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// Where the blob endpoints are, derived from the WebSocket URL.
#[derive(Clone)]
pub struct Http {
    host: String,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
    authority: String,
    connect_timeout: std::time::Duration,
    /// Longest a transfer may go without moving a byte.
    stall_limit: std::time::Duration,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Http({})", self.authority)
    }
}

impl Http {
    /// The HTTP side of the server at `ws_url` (`ws://` → `http://`,
    /// `wss://` → `https://`), with the same safety rules.
    ///
    /// # Errors
    /// [`Error::Connect`] for an unusable URL or TLS setting.
    pub fn new(ws_url: &str, options: &ConnectOptions) -> Result<Self> {
        let fail = |reason: String| Error::Connect {
            url: ws_url.to_owned(),
            reason,
        };
        let (scheme, host) =
            scheme_and_host(ws_url).ok_or_else(|| fail("not a ws:// or wss:// URL".into()))?;
        let after = ws_url.split_once("://").map(|x| x.1).unwrap_or_default();
        let authority = after.split('/').next().unwrap_or_default().to_owned();
        let default_port = if scheme == "wss" { 443 } else { 80 };
        let port = authority
            .rsplit_once(':')
            .filter(|(h, _)| !h.ends_with(':'))
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(default_port);
        let tls = match scheme {
            "wss" => Some(tls_config(options.ca_file.as_deref()).map_err(fail)?),
            "ws" if is_loopback(host) || options.allow_insecure => None,
            "ws" => return Err(fail(format!("refusing unencrypted http:// to {host}"))),
            _ => return Err(fail("not a ws:// or wss:// URL".into())),
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            tls,
            authority,
            connect_timeout: options.connect_timeout,
            stall_limit: options.idle_timeout,
        })
    }

    /// Sends one request on a fresh connection. The connection lives as
    /// long as the returned [`Answer`] (or, while waiting, this future):
    /// dropping either cuts it, which is how a transfer is interrupted.
    ///
    /// # Errors
    /// [`Error::Connect`] when the server cannot be reached,
    /// [`Error::Disconnected`] when the connection breaks.
    pub async fn send(&self, mut req: Request<Body>) -> Result<Answer> {
        let fail = |reason: String| Error::Connect {
            url: self.authority.clone(),
            reason,
        };
        req.headers_mut().insert(
            hyper::header::HOST,
            self.authority
                .parse()
                .map_err(|_| fail("bad host".into()))?,
        );
        let tcp = tokio::time::timeout(
            self.connect_timeout,
            tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| fail("no answer in time".into()))?
        .map_err(|e| fail(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let lost = |e: hyper::Error| Error::Disconnected(Some(e.to_string()));
        match &self.tls {
            None => {
                let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                    .await
                    .map_err(lost)?;
                let conn = Conn(tokio::spawn(async move {
                    let _ = conn.await;
                }));
                let resp = sender.send_request(req).await.map_err(lost)?;
                Ok(Answer { resp, conn })
            }
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|e| fail(e.to_string()))?;
                let stream = tokio::time::timeout(
                    self.connect_timeout,
                    tokio_rustls::TlsConnector::from(config.clone()).connect(name, tcp),
                )
                .await
                .map_err(|_| fail("no TLS handshake in time".into()))?
                .map_err(|e| fail(e.to_string()))?;
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .map_err(lost)?;
                let conn = Conn(tokio::spawn(async move {
                    let _ = conn.await;
                }));
                let resp = sender.send_request(req).await.map_err(lost)?;
                Ok(Answer { resp, conn })
            }
        }
    }

    /// Longest a transfer may go without moving a byte before it counts as
    /// lost (the connection's `idle_timeout`).
    pub fn stall_limit(&self) -> std::time::Duration {
        self.stall_limit
    }

    /// A request to `path` with the session token.
    pub fn request(
        &self,
        method: hyper::Method,
        path: &str,
        token: &[u8],
    ) -> hyper::http::request::Builder {
        use base64::Engine;
        Request::builder().method(method).uri(path).header(
            hyper::header::AUTHORIZATION,
            format!(
                "Bearer {}",
                base64::engine::general_purpose::STANDARD.encode(token)
            ),
        )
    }
}

/// Watches a transfer for progress: whoever moves bytes calls
/// [`Watchdog::moved`], and [`Watchdog::stalled`] resolves once nothing has
/// moved for the limit. A server that goes silent mid-transfer (a vanished
/// machine keeps TCP open) then ends the transfer with a clear error
/// instead of holding it forever; what arrived is kept for a resume.
#[derive(Clone)]
pub struct Watchdog {
    start: std::time::Instant,
    /// Milliseconds since `start` of the last progress.
    last: Arc<std::sync::atomic::AtomicU64>,
    limit: std::time::Duration,
}

impl Watchdog {
    /// A watchdog that fires after `limit` without progress.
    pub fn new(limit: std::time::Duration) -> Self {
        Self {
            start: std::time::Instant::now(),
            last: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            limit,
        }
    }

    /// Bytes moved just now.
    pub fn moved(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last
            .fetch_max(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for the limit.
    ///
    /// # Cancel safety
    /// Cancel safe: it only sleeps and reads the last stamp.
    pub async fn stalled(&self) {
        loop {
            let last = std::time::Duration::from_millis(
                self.last.load(std::sync::atomic::Ordering::Relaxed),
            );
            let idle = self.start.elapsed().saturating_sub(last);
            if idle >= self.limit {
                return;
            }
            tokio::time::sleep(self.limit - idle).await;
        }
    }

    /// The error for a stalled transfer.
    pub fn error(&self) -> Error {
        Error::Disconnected(Some(format!(
            "the transfer moved nothing for {} s; what arrived is kept, and the next try resumes",
            self.limit.as_secs()
        )))
    }
}

/// The connection task of one request; aborted when dropped.
pub struct Conn(tokio::task::JoinHandle<()>);

impl Drop for Conn {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A response and the connection it arrives on: keep it until the body
/// has been read.
pub struct Answer {
    /// The response.
    pub resp: Response<Incoming>,
    /// The connection (dropping it cuts the transfer).
    pub conn: Conn,
}

/// An empty body.
pub fn empty() -> Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body of bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Turns a non-success answer into [`Error::Server`] with its code.
///
/// # Errors
/// Always, for a non-success status.
pub async fn check(answer: Answer) -> Result<Answer> {
    if answer.resp.status().is_success() {
        return Ok(answer);
    }
    let status = answer.resp.status();
    let body = answer
        .resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    match serde_json::from_slice::<BlobError>(&body) {
        Ok(e) => Err(Error::Server {
            code: e.code,
            message: crate::error::printable(&e.message),
        }),
        Err(_) => Err(Error::Protocol(format!("HTTP {status}"))),
    }
}
