//! Accepting connections: every TCP connection takes its place under the
//! connection caps (in total and per address) the moment it is accepted,
//! before a byte is read, and TLS handshakes run off the accept loop so one
//! slow client cannot hold up the others.
//!
//! Design decision: the caps are applied here, not at the WebSocket
//! upgrade, because an HTTP connection that never upgrades (a blob
//! transfer, a `/metrics` scrape, or a peer that sends half a request and
//! waits) holds a socket and memory just the same.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::either::Either;

use crate::limits::PerAddress;
use crate::metrics::Metrics;

/// A connection's stream: plain or TLS. The TLS state is boxed: inline it
/// would make every plain connection's stream as large (over a kilobyte).
pub type Io = Either<TcpStream, Box<TlsStream<TcpStream>>>;

/// Most TLS handshakes in progress at once.
const MAX_HANDSHAKES: usize = 256;
/// Longest a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most refusals being written at once; past that a refused connection is
/// just closed.
const MAX_REFUSALS: usize = 64;
/// Longest a refusal may take to write and to see the peer hang up.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(2);

/// The caps every accepted connection is counted under.
#[derive(Clone)]
pub struct Caps {
    /// Connections at once, in total.
    pub total: Arc<Semaphore>,
    /// Connections at once, per address.
    pub per_address: Arc<PerAddress>,
    /// The per-address cap.
    pub per_address_max: u32,
    /// Where refusals are counted.
    pub metrics: Arc<Metrics>,
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    TooMany,
    TooManyFromAddress,
}

impl Caps {
    fn take(&self, ip: IpAddr) -> Result<Places, Refusal> {
        let permit = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::TooMany)?;
        let slot = AddressSlot::take(&self.per_address, ip, self.per_address_max)
            .ok_or(Refusal::TooManyFromAddress)?;
        Ok(Places {
            _permit: permit,
            _slot: slot,
        })
    }
}

/// A connection's places under the total and the per-address cap, given
/// back when the last holder drops it: the HTTP connection, and after an
/// upgrade the WebSocket task.
pub struct Places {
    _permit: OwnedSemaphorePermit,
    _slot: AddressSlot,
}

/// One connection's place in the per-address count, released on drop.
struct AddressSlot {
    per_address: Arc<PerAddress>,
    ip: IpAddr,
}

impl AddressSlot {
    fn take(per_address: &Arc<PerAddress>, ip: IpAddr, max: u32) -> Option<Self> {
        per_address.try_add(ip, max).then(|| Self {
            per_address: per_address.clone(),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        self.per_address.remove(self.ip);
    }
}

/// Accepted connections, counted under the caps and ready to serve. The
/// accept loop stops when this is dropped.
pub struct Incoming {
    rx: mpsc::Receiver<(Io, SocketAddr, Places)>,
    _task: AbortOnDrop,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Incoming {
    /// Serves `listener`, with TLS when `tls` is set.
    pub fn new(listener: TcpListener, tls: Option<Arc<rustls::ServerConfig>>, caps: Caps) -> Self {
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(accept_loop(listener, tls.map(TlsAcceptor::from), caps, tx));
        Self {
            rx,
            _task: AbortOnDrop(task),
        }
    }

    /// The next accepted connection, with its places under the caps.
    ///
    /// # Cancel safety
    /// Cancel safe: a connection is either returned or stays queued.
    pub async fn accept(&mut self) -> (Io, SocketAddr, Places) {
        match self.rx.recv().await {
            Some(x) => x,
            // The accept task only ends with the listener; never resolve.
            None => std::future::pending().await,
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    caps: Caps,
    tx: mpsc::Sender<(Io, SocketAddr, Places)>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: wait, then go on.
                tracing::warn!(cause = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let places = match caps.take(peer.ip()) {
            Ok(places) => places,
            Err(refusal) => {
                refuse(&caps.metrics, &refusals, tcp, peer, refusal, tls.is_some());
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        match &tls {
            None => {
                if tx.send((Either::Left(tcp), peer, places)).await.is_err() {
                    return;
                }
            }
            Some(acceptor) => {
                let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, "too many TLS handshakes in progress; dropping a connection");
                    continue;
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx
                                .send((Either::Right(Box::new(stream)), peer, places))
                                .await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, cause = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

/// Turns a connection over a cap away: over plain TCP with an HTTP 503
/// naming the reason (what a WebSocket client shows its user), over TLS by
/// closing it (a handshake per refusal would cost more than the refusal
/// saves).
fn refuse(
    metrics: &Metrics,
    refusals: &Arc<Semaphore>,
    mut tcp: TcpStream,
    peer: SocketAddr,
    refusal: Refusal,
    tls: bool,
) {
    let (label, body) = match refusal {
        Refusal::TooMany => ("too_many", "too_many_connections\n"),
        Refusal::TooManyFromAddress => (
            "too_many_from_address",
            "too_many_connections: too many from your address\n",
        ),
    };
    tracing::warn!(%peer, reason = label, "connection refused");
    metrics.connections_refused.inc(label);
    if tls {
        return;
    }
    let Ok(permit) = refusals.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        let response = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        // Write, then read until the peer hangs up: closing with its
        // request unread would reset the connection and could discard the
        // answer before the peer reads it.
        let _ = tokio::time::timeout(REFUSAL_TIMEOUT, async {
            tcp.write_all(response.as_bytes()).await?;
            tcp.shutdown().await?;
            let mut buf = [0u8; 4096];
            let mut seen = 0;
            while seen < 64 * 1024 {
                match tcp.read(&mut buf).await? {
                    0 => break,
                    n => seen += n,
                }
            }
            Ok::<_, std::io::Error>(())
        })
        .await;
    });
}

/// The peer's address, as the handlers see it (`ConnectInfo<PeerAddr>`).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);
