//! One task per WebSocket connection.
//!
//! The task owns the socket and `select!`s over: shutdown, being kicked (its
//! outbox overflowed), answers of requests in flight, pushes from its
//! bounded outbox, the next mailbox page while syncing, the next inbound
//! frame, the ping timer, and the peer's deadline (silence for
//! `idle_timeout`, or no login within `auth_timeout`). Requests are answered
//! in the order they arrived, errors included; `synced` is sent when its page
//! is read.
//!
//! A connection with nothing to do for `hibernate_after` hibernates: it
//! drops its WebSocket state (read and write buffers), its empty in-flight
//! queue and the loop above (boxed, so its memory goes too), and waits on a
//! small future for bytes, a push, shutdown, a kick, or its next ping or
//! deadline; then it builds them again. Most connections of a chat server are idle most of the time,
//! so this is most of its memory.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, SinkExt, StreamExt};
use telepound_protocol::codec::{self, DecodeError};
use telepound_protocol::{ClientMessage, ErrorCode, ServerMessage, UserName};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::WebSocketStream;
use tracing::Instrument;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Message, Utf8Bytes};

use crate::handler::{self, HandlerError, Pending, login::PendingLogin};
use crate::hub::{Member, Outbound, PushState, Signal};
use crate::limits::Bucket;
use crate::listener::Places;
use crate::server::Shared;
use crate::store::{self, EntryKind, StoredEntry};
use crate::ws::{Counted, Upgraded};

/// A connection's WebSocket.
type Ws = WebSocketStream<Counted<Upgraded>>;
/// What its reads and writes fail with.
type WsError = tungstenite::Error;

/// Bytes a hibernating connection reads when it wakes to incoming data;
/// they go to the WebSocket state built for them.
const WAKE_READ: usize = 64;

/// Buffered frames after which a busy connection writes out anyway.
const FLUSH_EVERY: usize = 64;

/// Longest a goodbye (close frame) may take to write: a peer that does not
/// read must not keep a connection that is ending.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// What a write in progress gets beyond the peer's idle deadline. With
/// [`CLOSE_TIMEOUT`], a half-open peer is gone at most `idle_timeout` plus
/// these two after it last sent anything.
const WRITE_MARGIN: std::time::Duration = std::time::Duration::from_secs(1);

/// WebSocket close codes used.
mod close {
    pub const GOING_AWAY: u16 = 1001;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
}

/// Where the connection is in delivering its mailbox.
enum SyncState {
    /// No `sync` yet: mailbox pushes are not wanted (a one-shot command).
    Idle,
    /// Fetching the page a `sync` asked for.
    Fetching {
        rid: Option<u64>,
        limit: u32,
        /// The highest seq pushed since the fetch began: the fetch may not
        /// include it, so if it is past the page, the answer must say there
        /// may be more.
        pushed: Option<i64>,
        fetch: BoxFuture<'static, store::Result<Vec<StoredEntry>>>,
    },
    /// Between pages: the client will ask for the next one. Pushes are
    /// dropped; the next page reads them from the mailbox.
    Paging,
    /// Caught up: pushes are forwarded as they come.
    Live,
}

enum Event {
    Shutdown,
    Kicked,
    Answer(ServerMessage),
    Push(Outbound),
    Page(store::Result<Vec<StoredEntry>>),
    Frame(Option<Result<Message, WsError>>),
    Tick,
    /// The peer's deadline or the connection's quiet time may be up:
    /// silence for `idle_timeout`, no login within `auth_timeout`, nothing
    /// to do for `hibernate_after`.
    Timer,
}

/// How a turn awake ends.
enum Turn {
    Ended(Ending),
    /// Nothing to do for `hibernate_after`: time to hibernate.
    Quiet,
}

/// What woke a hibernating connection, for the turn awake it starts.
enum Wake {
    /// The first bytes of incoming data.
    Bytes(Vec<u8>),
    Push(Outbound),
    /// Shutdown, a kick, the ping timer or the deadline: the loop awake
    /// sees which.
    Check,
}

/// The connection's stream: a WebSocket while awake, the bare stream while
/// hibernating.
enum Socket {
    Awake(Box<Ws>),
    Asleep(Counted<Upgraded>),
    /// Only between the two.
    Gone,
}

/// A hibernating connection's place in the `connections_hibernating`
/// gauge, given back when it wakes or ends.
struct Hibernating(Arc<crate::metrics::Metrics>);

impl Hibernating {
    fn count(metrics: &Arc<crate::metrics::Metrics>) -> Self {
        metrics
            .connections_hibernating
            .fetch_add(1, Ordering::Relaxed);
        Self(metrics.clone())
    }
}

impl Drop for Hibernating {
    fn drop(&mut self) {
        self.0
            .connections_hibernating
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// The WebSocket settings of every connection.
fn ws_config(max_frame: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame))
        // Each read asks the socket for up to this much (tungstenite zeroes
        // it first, so much larger costs more than the system calls it
        // saves). A hibernating connection holds neither buffer, though the
        // freed ones leave the heap a little fuller: 8 KiB reads and 64 KiB
        // batches cost 0.25 KiB per idle connection against 4 and 16 KiB
        // (docs/BENCHMARKS.md), for 10-15% more routing and durable throughput.
        .read_buffer_size(8 * 1024)
        // Frames collect up to this much before a write: a burst of pushes
        // goes out in a few system calls (the connection flushes when idle).
        .write_buffer_size(64 * 1024)
}

/// Why the connection ended, for the log and the metrics.
#[derive(Debug, Clone, Copy)]
enum Ending {
    ClientClosed,
    /// The peer went away without a close handshake (killed, network lost).
    ClientVanished,
    Shutdown,
    SlowConsumer,
    IdleTimeout,
    LoginTimeout,
    FrameTooLarge,
    RateLimited,
    ProtocolError,
    WriteFailed,
}

impl Ending {
    fn label(self) -> &'static str {
        match self {
            Self::ClientClosed => "client_closed",
            Self::ClientVanished => "client_vanished",
            Self::Shutdown => "shutdown",
            Self::SlowConsumer => "slow_consumer",
            Self::IdleTimeout => "idle_timeout",
            Self::LoginTimeout => "login_timeout",
            Self::FrameTooLarge => "frame_too_large",
            Self::RateLimited => "rate_limited",
            Self::ProtocolError => "protocol_error",
            Self::WriteFailed => "write_failed",
        }
    }
}

/// Runs one connection until it closes. `places` hold its TCP
/// connection's place under the connection cap and the per-address cap for
/// as long as it lives.
///
/// Not an `async fn`: that would keep its arguments in the task beside the
/// block that moves them, for the connection's whole life.
pub fn run(
    shared: Arc<Shared>,
    io: Upgraded,
    peer: SocketAddr,
    places: Arc<Places>,
) -> impl Future<Output = ()> {
    let conn_id = shared.next_conn_id();
    let span = tracing::info_span!("conn", conn_id, %peer, user = tracing::field::Empty);
    async move {
        let _places = places;
        tracing::info!("connected");
        let metrics = shared.metrics.clone();
        metrics.connections_total.fetch_add(1, Ordering::Relaxed);
        let config = ws_config(shared.config.max_frame);
        let socket =
            WebSocketStream::from_raw_socket(Counted::new(io), Role::Server, Some(config)).await;
        let mut conn = Connection::new(shared, socket, conn_id, peer);
        let ending = conn.serve().await;
        conn.abandon_login();
        if let Some(m) = conn.membership.take() {
            m.leave().await;
        }
        drop(conn);
        metrics.disconnects.inc(ending.label());
        tracing::info!(reason = ending.label(), "disconnected");
    }
    .instrument(span)
}

/// Requests being handled, answered in order. The queue is allocated on
/// the first request and given back when the connection hibernates (an
/// empty `FuturesOrdered` still holds a shared queue and a stub task).
#[derive(Default)]
struct InFlight(Option<FuturesOrdered<Pending>>);

impl InFlight {
    fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(FuturesOrdered::is_empty)
    }

    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, FuturesOrdered::len)
    }

    fn push_back(&mut self, pending: Pending) {
        self.0
            .get_or_insert_with(FuturesOrdered::new)
            .push_back(pending);
    }

    /// The next answer, in order; `None` when nothing is in flight.
    /// Cancel safe, as `FuturesOrdered::next` is.
    async fn next(&mut self) -> Option<ServerMessage> {
        match &mut self.0 {
            Some(queue) => queue.next().await,
            None => None,
        }
    }

    /// Gives the queue back, if it is empty.
    fn release(&mut self) {
        if self.is_empty() {
            self.0 = None;
        }
    }
}

struct Connection {
    shared: Arc<Shared>,
    socket: Socket,
    /// Set while hibernating.
    hibernating: Option<Hibernating>,
    /// Messages (control frames included) the WebSocket has handed over.
    handed_over: u64,
    conn_id: u64,
    user: Option<UserName>,
    membership: Option<Membership>,
    pending_login: Option<Box<PendingLogin>>,
    /// The name a `register_start` on this connection was answered for.
    pending_registration: Option<UserName>,
    /// Its push state and outbox, shared with the hub.
    push_state: Arc<PushState>,
    /// Counts the connection as open in the hub while it lives.
    _open: Open,
    sync: SyncState,
    /// Highest mailbox seq sent to the client since the last `sync`.
    cursor: i64,
    /// Frames buffered but not yet written out.
    unflushed: usize,
    in_flight: InFlight,
    last_heard: Instant,
    /// When the connection last had something to do.
    last_active: Instant,
    /// When the next ping is due.
    next_ping: Instant,
    connected_at: Instant,
    peer: SocketAddr,
    /// Frames this connection may send (the message rate limit).
    frames: Bucket,
    /// Frames refused in a row by the rate limit.
    refused_in_a_row: u32,
}

impl Connection {
    fn new(shared: Arc<Shared>, socket: Ws, conn_id: u64, peer: SocketAddr) -> Self {
        let limits = &shared.config.limits;
        let frames = Bucket::new(
            f64::from(limits.messages_per_second),
            f64::from(limits.message_burst),
        );
        let now = Instant::now();
        let push_state = Arc::new(PushState::default());
        shared.hub.open(conn_id, &push_state);
        Self {
            _open: Open {
                shared: shared.clone(),
                conn_id,
            },
            connected_at: now,
            last_active: now,
            next_ping: now + shared.config.ping_interval,
            peer,
            frames,
            refused_in_a_row: 0,
            shared,
            socket: Socket::Awake(Box::new(socket)),
            hibernating: None,
            handed_over: 0,
            conn_id,
            user: None,
            membership: None,
            pending_login: None,
            pending_registration: None,
            push_state,
            sync: SyncState::Idle,
            cursor: 0,
            unflushed: 0,
            in_flight: InFlight::default(),
            last_heard: Instant::now(),
        }
    }

    /// Serves the connection until it ends: turns awake (boxed, so a
    /// hibernating connection does not keep their memory) and hibernation.
    async fn serve(&mut self) -> Ending {
        let mut wake = Wake::Check;
        loop {
            match Box::pin(self.serve_awake(wake)).await {
                Turn::Ended(ending) => return ending,
                Turn::Quiet => {}
            }
            if let Err(ending) = self.fall_asleep().await {
                return ending;
            }
            wake = match self.hibernate().await {
                Ok(wake) => wake,
                Err(ending) => {
                    self.hibernating = None;
                    return ending;
                }
            };
            let part = match &mut wake {
                Wake::Bytes(part) => std::mem::take(part),
                _ => Vec::new(),
            };
            // Boxed: building the WebSocket state is a large future, and
            // inline it would size every hibernating connection's task.
            if let Err(ending) = Box::pin(self.wake_up(part)).await {
                return ending;
            }
        }
    }

    async fn serve_awake(&mut self, wake: Wake) -> Turn {
        let period = self.shared.config.ping_interval;
        let mut ping = tokio::time::interval_at(self.next_ping.into(), period);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let max_in_flight = self.shared.config.max_in_flight;
        if let Wake::Push(out) = wake
            && self.on_push(out).await.is_err()
        {
            return Turn::Ended(self.write_failed());
        }
        loop {
            // Frames are buffered, and written out in one go once nothing
            // else is ready: many pushes, one system call.
            let ready = self.next_event(&mut ping, max_in_flight).now_or_never();
            let event = match ready {
                Some(event) => event,
                None => {
                    if self.flush().await.is_err() {
                        return Turn::Ended(self.write_failed());
                    }
                    self.next_event(&mut ping, max_in_flight).await
                }
            };
            if !matches!(event, Event::Timer | Event::Tick) {
                self.last_active = Instant::now();
            }
            let step = match event {
                Event::Shutdown => return Turn::Ended(Box::pin(self.shut_down()).await),
                Event::Kicked => {
                    tracing::warn!("outbox full: disconnecting a client that is not reading");
                    let _ = self
                        .close(
                            close::POLICY,
                            "slow_consumer: reconnect to resume from your mailbox",
                        )
                        .await;
                    return Turn::Ended(Ending::SlowConsumer);
                }
                Event::Answer(answer) => self.answer_request(&answer).await,
                Event::Push(out) => self.on_push(out).await,
                Event::Page(page) => Box::pin(self.on_page(page)).await,
                // One clock read per frame: the activity just recorded is
                // also when it was heard and when the rate limit counts it.
                Event::Frame(frame) => match self.on_frame(frame, self.last_active).await {
                    Ok(()) => Ok(()),
                    Err(ending) => return Turn::Ended(ending),
                },
                Event::Tick => {
                    self.next_ping = Instant::now() + period;
                    self.send_frame(Message::Ping(Default::default())).await
                }
                Event::Timer => {
                    if Instant::now() >= self.deadline() {
                        if self.login_overdue() {
                            let _ = self.close(close::POLICY, "login_timeout").await;
                            return Turn::Ended(Ending::LoginTimeout);
                        }
                        let _ = self.close(close::POLICY, "idle_timeout").await;
                        return Turn::Ended(Ending::IdleTimeout);
                    }
                    if self.quiet_until().is_some_and(|at| Instant::now() >= at) {
                        return Turn::Quiet;
                    }
                    Ok(())
                }
            };
            if step.is_err() {
                return Turn::Ended(self.write_failed());
            }
        }
    }

    /// When the connection may hibernate, if it has nothing in progress:
    /// no request in flight, no page being read, nothing unwritten, and no
    /// bytes read but not yet handed over as a message.
    fn quiet_until(&self) -> Option<Instant> {
        let after = self.shared.config.hibernate_after?;
        let Socket::Awake(ws) = &self.socket else {
            return None;
        };
        let idle = self.in_flight.is_empty()
            && !matches!(self.sync, SyncState::Fetching { .. })
            && self.unflushed == 0
            && ws.get_ref().drained(self.handed_over);
        idle.then(|| self.last_active + after)
    }

    /// Drops the WebSocket state, keeping the stream, once what it holds to
    /// write (a pong, say) is written.
    async fn fall_asleep(&mut self) -> Result<(), Ending> {
        let Socket::Awake(mut ws) = std::mem::replace(&mut self.socket, Socket::Gone) else {
            return Err(Ending::WriteFailed);
        };
        let timeout = self.write_limit().timeout();
        if guarded(&self.push_state, timeout, ws.flush())
            .await
            .is_err()
        {
            return Err(self.write_failed());
        }
        self.socket = Socket::Asleep(ws.into_inner());
        self.push_state.shrink();
        self.in_flight.release();
        self.hibernating = Some(Hibernating::count(&self.shared.metrics));
        Ok(())
    }

    /// Waits, hibernating, for a reason to wake.
    ///
    /// # Cancel safety
    /// Every branch is cancel safe: nothing read is lost.
    async fn hibernate(&mut self) -> Result<Wake, Ending> {
        let until = tokio::time::Instant::from_std(self.deadline().min(self.next_ping));
        let Socket::Asleep(io) = &mut self.socket else {
            return Err(Ending::WriteFailed);
        };
        let mut first = [0u8; WAKE_READ];
        tokio::select! {
            biased;
            _ = self.push_state.signalled() => Ok(Wake::Check),
            read = io.read(&mut first) => match read {
                Ok(0) | Err(_) => Err(Ending::ClientVanished),
                Ok(n) => Ok(Wake::Bytes(first[..n].to_vec())),
            },
            out = self.push_state.recv() => Ok(Wake::Push(out)),
            () = tokio::time::sleep_until(until) => Ok(Wake::Check),
        }
    }

    /// Builds the WebSocket state again, over what was read while
    /// hibernating.
    async fn wake_up(&mut self, part: Vec<u8>) -> Result<(), Ending> {
        let Socket::Asleep(io) = std::mem::replace(&mut self.socket, Socket::Gone) else {
            return Err(Ending::WriteFailed);
        };
        self.hibernating = None;
        self.shared.metrics.wakeups.fetch_add(1, Ordering::Relaxed);
        let config = ws_config(self.shared.config.max_frame);
        let ws = WebSocketStream::from_partially_read(io, part, Role::Server, Some(config)).await;
        self.socket = Socket::Awake(Box::new(ws));
        self.last_active = Instant::now();
        Ok(())
    }

    /// When this connection must have heard from its peer again (and, until
    /// it logs in, when it must have logged in).
    fn deadline(&self) -> Instant {
        let idle = self.last_heard + self.shared.config.idle_timeout;
        if self.user.is_none() {
            idle.min(self.connected_at + self.shared.config.limits.auth_timeout)
        } else {
            idle
        }
    }

    fn login_overdue(&self) -> bool {
        self.user.is_none() && self.connected_at.elapsed() >= self.shared.config.limits.auth_timeout
    }

    /// Why a write failed: the client was kicked for not reading, or the
    /// socket broke.
    fn write_failed(&self) -> Ending {
        if self.push_state.is_kicked() {
            tracing::warn!("outbox full: disconnected a client that is not reading");
            return Ending::SlowConsumer;
        }
        Ending::WriteFailed
    }

    /// The WebSocket, while awake (every write happens awake).
    fn ws(&mut self) -> Result<&mut Ws, WsError> {
        match &mut self.socket {
            Socket::Awake(ws) => Ok(ws),
            _ => Err(WsError::AlreadyClosed),
        }
    }

    /// The next thing to do. Every branch is cancel-safe, so a turn that
    /// finds nothing ready can be dropped and retried.
    async fn next_event(
        &mut self,
        ping: &mut tokio::time::Interval,
        max_in_flight: usize,
    ) -> Event {
        let syncing = matches!(self.sync, SyncState::Fetching { .. });
        let reading = self.in_flight.len() < max_in_flight;
        let deadline = self.deadline();
        let timer = self
            .quiet_until()
            .map_or(deadline, |quiet| quiet.min(deadline));
        let timer = tokio::time::Instant::from_std(timer);
        tokio::select! {
                biased;
            signal = self.push_state.signalled() => match signal {
                Signal::Stopping => Event::Shutdown,
                Signal::Kicked => Event::Kicked,
            },
            Some(answer) = self.in_flight.next(), if !self.in_flight.is_empty() => Event::Answer(answer),
            // Frames before pushes: a steady stream of pushes must not
            // keep a client's requests (or pongs) unread.
            frame = recv(&mut self.socket), if reading => Event::Frame(frame),
            out = self.push_state.recv() => Event::Push(out),
            page = poll_fetch(&mut self.sync), if syncing => Event::Page(page),
            _ = ping.tick() => Event::Tick,
            // The deadline is checked on its own timer, not on ping ticks
            // (which could add a ping interval); not while the connection is
            // not reading, since then the silence is its own.
            () = tokio::time::sleep_until(timer), if reading => Event::Timer,
        }
    }

    /// Handles one inbound frame; `Err` ends the connection.
    async fn on_frame(
        &mut self,
        frame: Option<Result<Message, WsError>>,
        now: Instant,
    ) -> Result<(), Ending> {
        self.last_heard = now;
        if let Some(Ok(_)) = &frame {
            self.handed_over += 1;
        }
        let text = match frame {
            None => return Err(Ending::ClientClosed),
            Some(Ok(Message::Close(_))) => {
                // tungstenite has queued the closing handshake's answer:
                // send it, so the peer sees a clean close.
                if let Ok(ws) = self.ws() {
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.flush()).await;
                }
                return Err(Ending::ClientClosed);
            }
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => return Ok(()),
            Some(Ok(Message::Binary(_))) => {
                let e = ServerMessage::error(None, ErrorCode::BinaryFrame);
                return self.answer(e).await.map_err(|_| Ending::WriteFailed);
            }
            Some(Err(e)) => {
                if is_too_big(&e) {
                    tracing::warn!("frame over the size limit");
                    let _ = self
                        .close(close::TOO_BIG, ErrorCode::FrameTooLarge.as_str())
                        .await;
                    return Err(Ending::FrameTooLarge);
                }
                if is_reset(&e) {
                    return Err(Ending::ClientVanished);
                }
                tracing::debug!(cause = %e, "websocket error");
                return Err(Ending::ProtocolError);
            }
        };
        let decoded = codec::decode_client(text.as_str(), self.shared.config.max_frame);
        // Rate-limit after decoding (cheap next to the rest of a request),
        // so the refusal names the request it refuses.
        if !self.frames.take_at(now) {
            self.shared.metrics.limited.inc("message_rate");
            self.refused_in_a_row += 1;
            // A client that keeps sending into a refusal is not listening:
            // hang up rather than spend writes answering it.
            if self.refused_in_a_row > self.shared.config.limits.message_burst {
                let _ = self
                    .close(close::POLICY, ErrorCode::RateLimited.as_str())
                    .await;
                return Err(Ending::RateLimited);
            }
            let rid = match &decoded {
                Ok(msg) => msg.rid(),
                Err(e) => e.rid(),
            };
            let e = HandlerError::with(
                ErrorCode::RateLimited,
                format!(
                    "more than {} requests a second; slow down",
                    self.shared.config.limits.messages_per_second
                ),
            );
            return self
                .answer(e.reply(rid))
                .await
                .map_err(|_| Ending::WriteFailed);
        }
        self.refused_in_a_row = 0;
        match decoded {
            Ok(msg) => self.on_request(msg).await.map_err(|_| Ending::WriteFailed),
            Err(e @ DecodeError::TooLarge { .. }) => {
                let _ = self.close(close::TOO_BIG, e.code().as_str()).await;
                Err(Ending::FrameTooLarge)
            }
            Err(e) => {
                let reply = ServerMessage::Error {
                    rid: e.rid(),
                    code: e.code(),
                    message: e.to_string(),
                };
                self.answer(reply).await.map_err(|_| Ending::WriteFailed)
            }
        }
    }

    /// Answers a request that needed no work, in its place: after the
    /// answers to every request before it.
    async fn answer(&mut self, reply: ServerMessage) -> Result<(), WsError> {
        if self.in_flight.is_empty() {
            self.write(&reply).await
        } else {
            self.in_flight.push_back(handler::ready(reply));
            Ok(())
        }
    }

    async fn on_request(&mut self, msg: ClientMessage) -> Result<(), WsError> {
        let rid = msg.rid();
        let Some(user) = self.user.clone() else {
            // Boxed, here and on the other rare paths below: the login
            // futures are large, and inline they would make every idle
            // connection's task that large.
            let reply = Box::pin(self.on_unauthenticated(msg)).await;
            return self.write(&reply).await;
        };
        if let ClientMessage::Sync { rid, after, limit } = msg {
            return Box::pin(self.start_sync(rid, &user, after, limit)).await;
        }
        let pending = handler::dispatch(&self.shared, &user, msg).await;
        self.in_flight.push_back(pending);
        let _ = rid;
        Ok(())
    }

    /// Requests before login: registration, login, resume.
    async fn on_unauthenticated(&mut self, msg: ClientMessage) -> ServerMessage {
        let shared = self.shared.clone();
        let rid = msg.rid();
        if matches!(msg, ClientMessage::LoginStart { .. }) {
            self.abandon_login();
        }
        if let Err(e) = self.throttle(&msg) {
            return e.reply(rid);
        }
        let result = match msg {
            ClientMessage::RegisterStart { user, request, .. } => {
                self.pending_registration = None;
                let started = handler::register::start(&shared, rid, &user, &request.0).await;
                if started.is_ok() {
                    self.pending_registration = Some(user);
                } else {
                    // No challenge went out: nothing was attempted.
                    shared.signups_by_address.refund(&self.peer.ip());
                }
                started
            }
            ClientMessage::RegisterFinish {
                user,
                upload,
                ksf,
                keys,
                backup,
                ..
            } => {
                if self.pending_registration.as_ref() != Some(&user) {
                    Err(HandlerError::new(ErrorCode::NoRegistrationInProgress))
                } else {
                    self.pending_registration = None;
                    let done = handler::register::finish(
                        &shared, rid, user, &upload.0, ksf, keys, backup.0,
                    )
                    .await;
                    if done.is_ok() {
                        // A sign-up is not a guess: only the hourly sign-up
                        // budget keeps it.
                        shared.login_by_address.refund(&self.peer.ip());
                    }
                    done
                }
            }
            ClientMessage::LoginStart { user, request, .. } => {
                match handler::login::start(&shared, rid, user, &request.0).await {
                    Ok((reply, pending)) => {
                        self.pending_login = Some(Box::new(pending));
                        Ok(reply)
                    }
                    Err(e) => Err(e),
                }
            }
            ClientMessage::LoginFinish { finalization, .. } => match self.pending_login.take() {
                None => Err(HandlerError::new(ErrorCode::NoLoginInProgress)),
                Some(pending) => {
                    match handler::login::finish(&shared, rid, *pending, &finalization.0).await {
                        Ok((reply, user)) => {
                            self.shared.metrics.logins.inc("ok");
                            // Only failed or abandoned attempts count.
                            self.shared.login_by_user.refund(&user);
                            self.shared.login_by_address.refund(&self.peer.ip());
                            self.enter(user);
                            Ok(reply)
                        }
                        Err(e) => {
                            if e.code == ErrorCode::AuthFailed {
                                self.shared.metrics.logins.inc("failed");
                                tracing::info!("login failed");
                            }
                            Err(e)
                        }
                    }
                }
            },
            ClientMessage::Resume { user, token, .. } => {
                match handler::login::resume(&shared, rid, user.clone(), &token.0).await {
                    Ok(reply) => {
                        self.shared.metrics.logins.inc("resumed");
                        self.shared.login_by_user.refund(&user);
                        self.shared.login_by_address.refund(&self.peer.ip());
                        self.enter(user);
                        Ok(reply)
                    }
                    Err(e) => {
                        self.shared.metrics.logins.inc("failed");
                        Err(e)
                    }
                }
            }
            _ => Err(HandlerError::new(ErrorCode::NotAuthenticated)),
        };
        result.unwrap_or_else(|e| e.reply(rid))
    }

    /// A login that got its challenge but never finished (a new
    /// `login_start`, or the connection ended) counts as failed: that is how
    /// a wrong password looks from here, since the client notices it and
    /// walks away without sending `login_finish`.
    fn abandon_login(&mut self) {
        if self.pending_login.take().is_some() {
            self.shared.metrics.logins.inc("failed");
            tracing::info!("login abandoned after its challenge (a wrong password)");
        }
    }

    /// Login attempts are limited per user name and per address, resume
    /// attempts per address, `register_start` per address (as a login attempt, and
    /// against the hourly sign-up budget). OPAQUE puts the password work on
    /// the client, so this limits online guessing and mass sign-ups, not
    /// server CPU. A wrong password never reaches the server as such (the
    /// client gives up after `login_challenge`), so every start is charged
    /// and a successful login or resume refunds it.
    fn throttle(&self, msg: &ClientMessage) -> Result<(), HandlerError> {
        let (user, signup) = match msg {
            ClientMessage::LoginStart { user, .. } => (Some(user), false),
            // Per address only: a resume token cannot be guessed, and a
            // per-name budget would let anyone keep a user's clients from
            // reconnecting by spending it.
            ClientMessage::Resume { .. } => (None, false),
            ClientMessage::RegisterStart { .. } => (None, true),
            _ => return Ok(()),
        };
        let refuse = |what: &str, wait: u64| {
            self.shared.metrics.logins.inc("throttled");
            HandlerError::with(
                ErrorCode::RateLimited,
                format!("too many attempts {what}; try again in {wait} s"),
            )
        };
        let ip = self.peer.ip();
        if let Err(wait) = self.shared.login_by_address.take(&ip) {
            self.shared.metrics.limited.inc("login_address");
            return Err(refuse("from your address", wait));
        }
        if let Some(user) = user
            && let Err(wait) = self.shared.login_by_user.take(user)
        {
            self.shared.login_by_address.refund(&ip);
            self.shared.metrics.limited.inc("login_user");
            return Err(refuse(&format!("to log in as {user}"), wait));
        }
        if signup && let Err(wait) = self.shared.signups_by_address.take(&ip) {
            self.shared.login_by_address.refund(&ip);
            self.shared.metrics.limited.inc("signup_address");
            return Err(HandlerError::with(
                ErrorCode::RateLimited,
                format!("too many sign-ups from your address; try again in {wait} s"),
            ));
        }
        Ok(())
    }

    /// The connection becomes `user`'s session.
    fn enter(&mut self, user: UserName) {
        tracing::Span::current().record("user", tracing::field::display(&user));
        tracing::info!("logged in");
        self.shared.hub.join(
            &user,
            Member {
                conn_id: self.conn_id,
                state: self.push_state.clone(),
                outbox_len: self.shared.config.outbox,
                outbox_bytes: self.shared.config.outbox_bytes,
            },
        );
        self.membership = Some(Membership {
            shared: self.shared.clone(),
            user: user.clone(),
            conn_id: self.conn_id,
            state: self.push_state.clone(),
            left: false,
        });
        self.user = Some(user);
    }

    async fn start_sync(
        &mut self,
        rid: Option<u64>,
        user: &UserName,
        after: i64,
        limit: u32,
    ) -> Result<(), WsError> {
        if !(1..=codec::MAX_PAGE).contains(&limit) || after < 0 {
            let e = HandlerError::with(
                ErrorCode::Malformed,
                format!("sync needs after >= 0 and limit 1..={}", codec::MAX_PAGE),
            );
            return self.answer(e.reply(rid)).await;
        }
        if matches!(self.sync, SyncState::Fetching { .. }) {
            let e = HandlerError::with(ErrorCode::Malformed, "a sync is already in progress");
            return self.answer(e.reply(rid)).await;
        }
        self.push_state.set(PushState::SYNCING);
        self.cursor = after;
        self.sync = SyncState::Fetching {
            rid,
            limit,
            pushed: None,
            fetch: fetch(&self.shared, user, after, limit),
        };
        Ok(())
    }

    async fn on_page(&mut self, page: store::Result<Vec<StoredEntry>>) -> Result<(), WsError> {
        let SyncState::Fetching {
            rid, limit, pushed, ..
        } = std::mem::replace(&mut self.sync, SyncState::Paging)
        else {
            unreachable!("a page arrives only while fetching")
        };
        let page = match page {
            Ok(page) => page,
            Err(e) => {
                tracing::error!(cause = %e, "mailbox fetch failed");
                return self
                    .write(&ServerMessage::error(rid, ErrorCode::Internal))
                    .await;
            }
        };
        for entry in &page {
            self.send_entry(entry).await?;
        }
        // Entries pushed during the fetch are in this page unless they are
        // newer than its last one.
        let last = page.last().map_or(self.cursor, |e| e.seq);
        let more = page.len() == limit as usize || pushed.is_some_and(|seq| seq > last);
        if !more {
            self.sync = SyncState::Live;
            self.push_state.set(PushState::LIVE);
        }
        let reply = ServerMessage::Synced {
            rid,
            count: page.len() as u64,
            more,
            cursor: self.cursor,
        };
        self.write(&reply).await
    }

    async fn on_push(&mut self, out: Outbound) -> Result<(), WsError> {
        self.push_state.release(out.cost());
        match out {
            Outbound::Entry(entry) => match &mut self.sync {
                SyncState::Live if entry.seq > self.cursor => self.send_entry(&entry).await,
                SyncState::Fetching { pushed, .. } => {
                    *pushed = Some(pushed.map_or(entry.seq, |p| p.max(entry.seq)));
                    Ok(())
                }
                _ => Ok(()),
            },
            Outbound::Delivered { msg_id, to, at } => {
                self.write(&ServerMessage::Delivered {
                    seq: None,
                    msg_id,
                    to,
                    at,
                })
                .await
            }
        }
    }

    async fn send_entry(&mut self, entry: &StoredEntry) -> Result<(), WsError> {
        self.cursor = self.cursor.max(entry.seq);
        let text = match entry.kind {
            EntryKind::Message | EntryKind::GroupMessage => codec::render_message(
                entry.seq,
                &entry.msg_id,
                &entry.sender,
                entry.server_ts,
                &entry.envelope,
            ),
            EntryKind::Receipt => codec::encode_server(&ServerMessage::Delivered {
                seq: Some(entry.seq),
                msg_id: entry.msg_id,
                to: entry.sender.clone(),
                at: entry.server_ts,
            }),
            EntryKind::GroupChange => {
                codec::render_group_change(entry.seq, entry.server_ts, &entry.envelope)
            }
            EntryKind::Receipts => {
                for id in entry.envelope.split(' ') {
                    let Ok(msg_id) = id.parse() else {
                        tracing::warn!(
                            seq = entry.seq,
                            "skipping a stored receipt whose message id does not parse"
                        );
                        continue;
                    };
                    self.write(&ServerMessage::Delivered {
                        seq: Some(entry.seq),
                        msg_id,
                        to: entry.sender.clone(),
                        at: entry.server_ts,
                    })
                    .await?;
                }
                return Ok(());
            }
        };
        self.send_frame(Message::Text(text.into())).await
    }

    async fn write(&mut self, msg: &ServerMessage) -> Result<(), WsError> {
        self.send_frame(Message::Text(codec::encode_server(msg).into()))
            .await
    }

    /// Sends one frame, giving up after the idle timeout (and at the peer's
    /// idle deadline, plus [`WRITE_MARGIN`]): a peer that keeps its TCP
    /// connection open but stops reading must not hold this task (and its
    /// place under the connection cap) for long.
    ///
    /// A kick (this connection's outbox overflowed) also ends a write that
    /// is stuck: the connection is being dropped anyway.
    async fn send_frame(&mut self, frame: Message) -> Result<(), WsError> {
        self.unflushed += 1;
        let flush = self.unflushed >= FLUSH_EVERY;
        let limit = self.write_limit();
        let Socket::Awake(ws) = &mut self.socket else {
            return Err(WsError::AlreadyClosed);
        };
        bounded(&self.push_state, limit, ws.feed(frame)).await?;
        if flush {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes out buffered frames, within the same limits as a write.
    async fn flush(&mut self) -> Result<(), WsError> {
        if self.unflushed == 0 {
            return Ok(());
        }
        self.unflushed = 0;
        let limit = self.write_limit();
        let Socket::Awake(ws) = &mut self.socket else {
            return Err(WsError::AlreadyClosed);
        };
        bounded(&self.push_state, limit, ws.flush()).await
    }

    fn write_limit(&self) -> WriteLimit {
        WriteLimit {
            idle: self.shared.config.idle_timeout,
            last_heard: self.last_heard,
        }
    }

    /// Sends a close frame and whatever is buffered before it, best effort
    /// and within [`CLOSE_TIMEOUT`] (whether or not the connection was
    /// kicked: it is ending either way).
    async fn close(&mut self, code: u16, reason: &str) -> Result<(), WsError> {
        let frame = Message::Close(Some(CloseFrame {
            code: code.into(),
            reason: Utf8Bytes::from(reason.to_owned()),
        }));
        self.unflushed = 0;
        let socket = self.ws()?;
        tokio::time::timeout(CLOSE_TIMEOUT, async {
            socket.feed(frame).await?;
            socket.flush().await
        })
        .await
        .unwrap_or_else(|_| {
            Err(WsError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "close timed out",
            )))
        })
    }

    /// Writes a request's answer, unless the request asked for none: an
    /// `ack` without a `rid` is answered only when it fails (as an
    /// `error`). A live recipient acks every push, and an `acked` for each
    /// would add a frame, and a write, to every message.
    async fn answer_request(&mut self, answer: &ServerMessage) -> Result<(), WsError> {
        if let ServerMessage::Acked { rid: None, .. } = answer {
            return Ok(());
        }
        self.write(answer).await
    }

    /// Lets requests in flight finish (their writes may already be
    /// committed: the sender must hear `accepted`), then says goodbye.
    async fn shut_down(&mut self) -> Ending {
        while let Some(answer) = self.in_flight.next().await {
            if self.answer_request(&answer).await.is_err() {
                return Ending::Shutdown;
            }
        }
        let _ = self
            .close(close::GOING_AWAY, ErrorCode::ShuttingDown.as_str())
            .await;
        Ending::Shutdown
    }
}

/// A connection's place in the hub. [`Membership::leave`] ends it in order;
/// dropping it without that (a panic) still takes the connection out of the
/// hub, so nobody stays online forever.
struct Membership {
    shared: Arc<Shared>,
    user: UserName,
    conn_id: u64,
    state: Arc<PushState>,
    left: bool,
}

impl Membership {
    /// Records "last seen" first and leaves the hub second, so nobody sees
    /// the user offline with an old last-seen time.
    async fn leave(mut self) {
        self.state.set(PushState::IDLE);
        if let Err(e) = self
            .shared
            .store
            .set_last_seen(&self.user, crate::now_ms())
            .await
        {
            tracing::warn!(cause = %e, "could not record last seen");
        }
        self.shared.hub.leave(&self.user, self.conn_id);
        self.left = true;
    }
}

/// A connection's place among the hub's open connections.
struct Open {
    shared: Arc<Shared>,
    conn_id: u64,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.shared.hub.close(self.conn_id);
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        if self.left {
            return;
        }
        self.state.set(PushState::IDLE);
        if self.shared.hub.leave(&self.user, self.conn_id) {
            let (store, user) = (self.shared.store.clone(), self.user.clone());
            // Tracked, so shutdown waits for it before closing the store.
            self.shared.tracker.spawn(async move {
                if let Err(e) = store.set_last_seen(&user, crate::now_ms()).await {
                    tracing::warn!(cause = %e, "could not record last seen");
                }
            });
        }
    }
}

fn fetch(
    shared: &Arc<Shared>,
    user: &UserName,
    after: i64,
    limit: u32,
) -> BoxFuture<'static, store::Result<Vec<StoredEntry>>> {
    let (store, user) = (shared.store.clone(), user.clone());
    Box::pin(async move { store.fetch(&user, after, limit).await })
}

/// Polls the running fetch. Only called while syncing; the future is kept
/// across loop turns, so a busy connection does not restart it.
async fn poll_fetch(sync: &mut SyncState) -> store::Result<Vec<StoredEntry>> {
    match sync {
        SyncState::Fetching { fetch, .. } => fetch.await,
        _ => std::future::pending().await,
    }
}

/// What bounds a write: the idle timeout, and when the peer was last heard.
#[derive(Clone, Copy)]
struct WriteLimit {
    idle: std::time::Duration,
    last_heard: Instant,
}

impl WriteLimit {
    /// How long the next write may take: the idle timeout, but no later
    /// than a moment past the peer's idle deadline, so that a write stuck
    /// on a vanished peer does not add another idle timeout.
    fn timeout(self) -> std::time::Duration {
        let until_deadline =
            (self.last_heard + self.idle).saturating_duration_since(Instant::now());
        until_deadline.max(WRITE_MARGIN).min(self.idle)
    }
}

/// A socket write, tried once before it is [`guarded`]. Nearly every write
/// completes at once (the frame goes into the buffer, or the kernel takes
/// the bytes), and then needs no timer, no clock reading and no watch on
/// the kick. Setting those up and dropping them for every frame cost 8% of
/// the server's CPU in online routing (docs/BENCHMARKS.md).
async fn bounded(
    kick: &PushState,
    limit: WriteLimit,
    write: impl Future<Output = Result<(), WsError>>,
) -> Result<(), WsError> {
    let mut write = std::pin::pin!(write);
    if let std::task::Poll::Ready(done) =
        std::future::poll_fn(|cx| std::task::Poll::Ready(write.as_mut().poll(cx))).await
    {
        return done;
    }
    guarded(kick, limit.timeout(), write).await
}

/// A socket write that gives up after `timeout`, or when the connection is
/// kicked. While it waits, every push into the outbox wakes the task too (the
/// kick shares the outbox's waker), to poll the write again: cheap, and
/// bounded, since a full outbox is the kick.
async fn guarded(
    kick: &PushState,
    timeout: std::time::Duration,
    write: impl Future<Output = Result<(), WsError>>,
) -> Result<(), WsError> {
    tokio::select! {
        result = tokio::time::timeout(timeout, write) => result.unwrap_or_else(|_| {
            tracing::warn!("write timed out: the client is not reading");
            Err(WsError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "write timed out",
            )))
        }),
        () = kick.kicked() => Err(WsError::Io(std::io::Error::other("kicked"))),
    }
}

fn is_too_big(e: &WsError) -> bool {
    matches!(e, WsError::Capacity(_))
}

fn is_reset(e: &WsError) -> bool {
    use tungstenite::error::ProtocolError;
    matches!(
        e,
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)
            | WsError::Io(_)
            | WsError::ConnectionClosed
            | WsError::AlreadyClosed
    )
}

/// The next frame while awake; never while hibernating (not polled then).
async fn recv(socket: &mut Socket) -> Option<Result<Message, WsError>> {
    match socket {
        Socket::Awake(ws) => ws.next().await,
        _ => std::future::pending().await,
    }
}
