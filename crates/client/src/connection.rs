//! The connection task and the [`Client`] handle to it.

use std::collections::HashMap;

use futures_util::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use telepound_protocol::codec;
use telepound_protocol::message::UnixMillis;
use telepound_protocol::{ClientMessage, MsgId, ServerMessage, UserName};
use tokio::sync::{mpsc, oneshot};
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
        let full = ws_url(url);
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_FRAME))
            .max_frame_size(Some(MAX_FRAME))
            .read_buffer_size(16 * 1024);
        let (ws, _) = tokio_tungstenite::connect_async_with_config(&full, Some(config), true)
            .await
            .map_err(|e| Error::Connect {
                url: url.to_owned(),
                reason: connect_reason(&e),
            })?;
        let (tx, rx) = mpsc::channel(64);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        tokio::spawn(run(ws, rx, events_tx));
        Ok((
            Client {
                tx,
                url: url.to_owned(),
            },
            events_rx,
        ))
    }

    /// The URL this client was given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends a request and waits for its answer. An `error` answer becomes
    /// [`Error::Server`].
    ///
    /// # Errors
    /// [`Error::Server`], or [`Error::Disconnected`] when the connection ends
    /// first.
    pub async fn request(&self, msg: ClientMessage) -> Result<ServerMessage> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Request { msg, reply })
            .await
            .map_err(|_| Error::Disconnected(None))?;
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, rx)
            .await
            .map_err(|_| Error::Timeout)?;
        match answer.map_err(|_| Error::Disconnected(None))?? {
            ServerMessage::Error { code, message, .. } => Err(Error::Server { code, message }),
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

/// How long a request waits for its answer.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The connection task: the only owner of the socket.
///
/// Writing happens in a sibling task fed by an unbounded queue, so this
/// task always keeps reading: a client and a server that both send large
/// frames at once can never each wait for the other to read.
async fn run(ws: Ws, mut commands: mpsc::Receiver<Command>, events: mpsc::UnboundedSender<Event>) {
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
            () = tokio::time::sleep(std::time::Duration::from_secs(2)), if out_tx.is_none() => {
                break None;
            }
            frame = stream.next() => {
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
