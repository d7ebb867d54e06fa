//! The connection task and the [`Client`] handle to it.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use telepound_protocol::codec;
use telepound_protocol::message::UnixMillis;
use telepound_protocol::{ClientMessage, MsgId, ServerMessage, UserName};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::Connector;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::{Error, Result};

/// Largest frame the client accepts (group envelopes can be large).
const MAX_FRAME: usize = 16 * 1024 * 1024;

/// Something the server pushed.
#[derive(Debug)]
pub enum Event {
    /// A message for this user.
    Message {
        /// Mailbox sequence number, to acknowledge.
        seq: i64,
        /// The sender's message id.
        msg_id: MsgId,
        /// The sender, as authenticated by the server.
        from: UserName,
        /// When the server accepted it.
        server_ts: UnixMillis,
        /// The sealed envelope.
        envelope: Box<RawValue>,
    },
    /// A recipient received one of this user's messages.
    Delivered {
        /// Set for a stored receipt, which must be acknowledged.
        seq: Option<i64>,
        /// The message.
        msg_id: MsgId,
        /// Who received it.
        to: UserName,
        /// When.
        at: UnixMillis,
    },
    /// A group membership change, as its actor signed it.
    GroupChange {
        /// Mailbox sequence number, to acknowledge.
        seq: i64,
        /// When the server applied it.
        server_ts: UnixMillis,
        /// The signed record (not yet verified).
        record: Box<telepound_protocol::group::GroupRecord>,
    },
    /// The connection ended; the reason is the server's close reason.
    Closed(Option<String>),
}

/// The receiving end of a connection's pushes.
pub type Events = mpsc::UnboundedReceiver<Event>;

enum Command {
    Request {
        msg: ClientMessage,
        reply: oneshot::Sender<Result<ServerMessage>>,
    },
    Close(oneshot::Sender<()>),
}

/// A handle to one connection. Clone it freely; the connection closes when
/// the last handle is dropped.
#[derive(Clone)]
pub struct Client {
    tx: mpsc::Sender<Command>,
    url: String,
    options: ConnectOptions,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("url", &self.url).finish()
    }
}

impl Client {
    /// Connects to `url` (e.g. `ws://127.0.0.1:7878`; the `/v1/ws` path is
    /// added when missing) and returns the handle and the push events.
    ///
    /// The event channel is unbounded so that a caller awaiting an answer
    /// (a key lookup while opening a message) can never deadlock behind
    /// unread pushes; what bounds it is the protocol: the mailbox arrives
    /// in pages the caller asks for (see [`crate::Session::sync_page`]).
    ///
    /// # Errors
    /// [`Error::Connect`] when the server cannot be reached.
    pub async fn connect(url: &str) -> Result<(Client, Events)> {
        Self::connect_with(url, &ConnectOptions::default()).await
    }

    /// [`Client::connect`] with TLS and safety options.
    ///
    /// # Errors
    /// [`Error::Connect`] when the server cannot be reached (or does not
    /// finish the handshake within [`ConnectOptions::connect_timeout`]),
    /// the URL is not `ws://` or `wss://`, TLS fails, or the URL is plain
    /// `ws://` to a host other than this machine without
    /// [`ConnectOptions::allow_insecure`].
    pub async fn connect_with(url: &str, options: &ConnectOptions) -> Result<(Client, Events)> {
        let fail = |reason: String| Error::Connect {
            url: url.to_owned(),
            reason,
        };
        let full = ws_url(url);
        let (scheme, host) =
            scheme_and_host(&full).ok_or_else(|| fail("not a ws:// or wss:// URL".into()))?;
        let connector = match scheme {
            "wss" => Some(Connector::Rustls(
                tls_config(options.ca_file.as_deref()).map_err(fail)?,
            )),
            "ws" if is_loopback(host) || options.allow_insecure => Some(Connector::Plain),
            "ws" => {
                return Err(fail(format!(
                    "refusing unencrypted ws:// to {host}: use wss://, or allow it on a network you trust"
                )));
            }
            _ => return Err(fail("not a ws:// or wss:// URL".into())),
        };
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_FRAME))
            .max_frame_size(Some(MAX_FRAME))
            .read_buffer_size(16 * 1024);
        // A server that accepts the TCP connection and then says nothing
        // must not hold the caller forever.
        let (ws, _) = tokio::time::timeout(
            options.connect_timeout,
            tokio_tungstenite::connect_async_tls_with_config(&full, Some(config), true, connector),
        )
        .await
        .map_err(|_| {
            fail(format!(
                "no answer within {} s",
                options.connect_timeout.as_secs_f32()
            ))
        })?
        .map_err(|e| fail(connect_reason(&e)))?;
        let (tx, rx) = mpsc::channel(64);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        tokio::spawn(run(ws, rx, events_tx, options.idle_timeout));
        Ok((
            Client {
                tx,
                url: url.to_owned(),
                options: options.clone(),
            },
            events_rx,
        ))
    }

    /// The options it connected with.
    pub fn options(&self) -> &ConnectOptions {
        &self.options
    }

    /// The URL this client was given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends a request and waits for its answer. An `error` answer becomes
    /// [`Error::Server`].
    ///
    /// # Errors
    /// [`Error::Server`], [`Error::Disconnected`] when the connection ends
    /// first, or [`Error::Timeout`] after [`ConnectOptions::request_timeout`].
    pub async fn request(&self, msg: ClientMessage) -> Result<ServerMessage> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Request { msg, reply })
            .await
            .map_err(|_| Error::Disconnected(None))?;
        let answer = tokio::time::timeout(self.options.request_timeout, rx)
            .await
            .map_err(|_| Error::Timeout)?;
        match answer.map_err(|_| Error::Disconnected(None))?? {
            ServerMessage::Error { code, message, .. } => Err(Error::Server {
                code,
                message: crate::error::printable(&message),
            }),
            other => Ok(other),
        }
    }
}

impl Client {
    /// Closes the connection cleanly (a WebSocket close handshake) and
    /// waits for it; other handles see [`Error::Disconnected`] afterwards.
    pub async fn close(&self) {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Command::Close(done)).await.is_ok() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), rx).await;
        }
    }
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// A PEM file of extra certificate authorities to trust for `wss://`
    /// (e.g. a server's self-signed certificate), besides the usual roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// Allow unencrypted `ws://` to a host other than this machine.
    pub allow_insecure: bool,
    /// How long connecting (TCP, TLS, the WebSocket handshake) may take.
    pub connect_timeout: Duration,
    /// How long a request waits for its answer.
    pub request_timeout: Duration,
    /// Silence after which the server counts as gone although the
    /// connection is still open (a half-open TCP connection: the server's
    /// machine vanished, a NAT forgot the mapping). The client pings every
    /// third of it, so a live server always has something to answer.
    pub idle_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            ca_file: None,
            allow_insecure: false,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

pub(crate) fn scheme_and_host(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split('/').next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        authority.split(':').next()?
    };
    Some((scheme, host))
}

pub(crate) fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

pub(crate) fn tls_config(
    ca_file: Option<&std::path::Path>,
) -> std::result::Result<std::sync::Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("invalid CA file {}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("invalid certificate in {}: {e}", path.display()))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(std::sync::Arc::new(config))
}

fn ws_url(url: &str) -> String {
    let trimmed = url.trim_end_matches('/');
    if trimmed.ends_with("/v1/ws") {
        trimmed.to_owned()
    } else {
        format!("{trimmed}/v1/ws")
    }
}

fn connect_reason(e: &tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error as E;
    match e {
        E::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            "connection refused (is `telepound serve` running there?)".into()
        }
        E::Io(io) => io.to_string(),
        E::Url(u) => format!("bad server URL: {u}"),
        E::Http(resp) => {
            let body = resp
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).trim().to_owned())
                .unwrap_or_default();
            format!(
                "server refused the connection: HTTP {} {body}",
                resp.status()
            )
        }
        other => other.to_string(),
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The connection task: the only owner of the socket.
///
/// Writing happens in a sibling task fed by an unbounded queue, so this
/// task always keeps reading: a client and a server that both send large
/// frames at once can never each wait for the other to read.
///
/// It pings the server every third of `idle`, and ends the connection
/// (as lost, with a reason) when nothing at all arrived for `idle`: TCP
/// alone never notices a peer that vanished without closing.
async fn run(
    ws: Ws,
    mut commands: mpsc::Receiver<Command>,
    events: mpsc::UnboundedSender<Event>,
    idle: Duration,
) {
    let (mut sink, mut stream) = ws.split();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Message>();
    let writer = tokio::spawn(async move {
        while let Some(frame) = out_rx.recv().await {
            if sink.send(frame).await.is_err() {
                return;
            }
        }
        // The queue closed: say goodbye properly.
        let _ = sink.close().await;
    });
    let writer = AbortOnDrop(writer);
    let mut out_tx = Some(out_tx);
    let mut closed: Option<oneshot::Sender<()>> = None;
    let mut pending: HashMap<u64, oneshot::Sender<Result<ServerMessage>>> = HashMap::new();
    let mut next_rid: u64 = 1;
    let every = (idle / 3).max(Duration::from_millis(10));
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let silence = tokio::time::sleep(idle);
    tokio::pin!(silence);
    let reason = loop {
        tokio::select! {
            cmd = commands.recv(), if out_tx.is_some() => {
                match cmd {
                    Some(Command::Request { mut msg, reply }) => {
                        let rid = next_rid;
                        next_rid += 1;
                        msg.set_rid(rid);
                        let frame = Message::Text(codec::encode(&msg).into());
                        if out_tx.as_ref().is_some_and(|tx| tx.send(frame).is_ok()) {
                            pending.insert(rid, reply);
                        } else {
                            let _ = reply.send(Err(Error::Disconnected(None)));
                        }
                    }
                    Some(Command::Close(done)) => {
                        // Dropping the queue makes the writer send a close
                        // frame; keep reading until the server answers it.
                        out_tx = None;
                        closed = Some(done);
                    }
                    None => out_tx = None,
                }
            }
            () = tokio::time::sleep(Duration::from_secs(2)), if out_tx.is_none() => {
                break None;
            }
            () = &mut silence => {
                tracing::info!(idle_secs = idle.as_secs_f32(), "no answer from the server; counting the connection as lost");
                break Some(format!("no answer from the server for {} s", idle.as_secs_f32()));
            }
            _ = ping.tick(), if out_tx.is_some() => {
                if let Some(tx) = &out_tx {
                    let _ = tx.send(Message::Ping(Default::default()));
                }
            }
            frame = stream.next() => {
                // Anything at all, a pong included, shows the server is there.
                silence.as_mut().reset(tokio::time::Instant::now() + idle);
                let text = match frame {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(c))) => break c.map(|c| c.reason.to_string()).filter(|r| !r.is_empty()),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => break Some(e.to_string()),
                    None => break None,
                };
                let msg = match codec::decode_server(text.as_str(), MAX_FRAME) {
                    Ok(m) => m,
                    Err(e) => {
                        // An answer this client cannot read must still end
                        // its request, or the caller would wait forever.
                        if let Some(reply) = e.rid().and_then(|rid| pending.remove(&rid)) {
                            let _ = reply.send(Err(Error::Protocol(e.to_string())));
                        } else {
                            tracing::warn!(cause = %e, "ignoring a frame this client does not understand");
                        }
                        continue;
                    }
                };
                if let Some(reply) = msg.rid().and_then(|rid| pending.remove(&rid)) {
                    let _ = reply.send(Ok(msg));
                    continue;
                }
                let event = match msg {
                    ServerMessage::Message { seq, msg_id, from, server_ts, envelope } =>
                        Event::Message { seq, msg_id, from, server_ts, envelope },
                    ServerMessage::Delivered { seq, msg_id, to, at } =>
                        Event::Delivered { seq, msg_id, to, at },
                    ServerMessage::GroupChange { seq, server_ts, record } =>
                        Event::GroupChange { seq, server_ts, record },
                    ServerMessage::Error { code, message, .. } => {
                        tracing::warn!(%code, %message, "server error without a request");
                        continue;
                    }
                    other => {
                        tracing::debug!(?other, "unsolicited answer ignored");
                        continue;
                    }
                };
                let _ = events.send(event);
            }
        }
    };
    drop(out_tx);
    drop(writer);
    for (_, reply) in pending.drain() {
        let _ = reply.send(Err(Error::Disconnected(reason.clone())));
    }
    let _ = events.send(Event::Closed(reason));
    if let Some(done) = closed {
        let _ = done.send(());
    }
}

/// Aborts the writer task when the connection task ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_may_be_plain() {
        assert_eq!(
            scheme_and_host("ws://127.0.0.1:7878/v1/ws"),
            Some(("ws", "127.0.0.1"))
        );
        assert_eq!(
            scheme_and_host("wss://[::1]:7878/v1/ws"),
            Some(("wss", "::1"))
        );
        assert_eq!(
            scheme_and_host("ws://chat.example:80"),
            Some(("ws", "chat.example"))
        );
        assert!(is_loopback("localhost") && is_loopback("127.0.0.2") && is_loopback("::1"));
        assert!(!is_loopback("10.0.0.1") && !is_loopback("chat.example"));
    }

    #[tokio::test]
    async fn plain_ws_to_a_remote_host_is_refused() {
        let e = Client::connect("ws://192.0.2.1:7878").await.unwrap_err();
        assert!(e.to_string().contains("refusing unencrypted"), "{e}");
    }
}
