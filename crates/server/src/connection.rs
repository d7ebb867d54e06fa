//! One task per WebSocket connection.
//!
//! The task owns the socket and `select!`s over: shutdown, being kicked (its
//! outbox overflowed), answers of requests in flight, pushes from its
//! bounded outbox, the next mailbox page while syncing, the next inbound
//! frame, the ping timer, and the peer's deadline (silence for
//! `idle_timeout`, or no login within `auth_timeout`). Requests are answered
//! in the order they arrived, errors included; `synced` is sent when its page
//! is read.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, SinkExt, StreamExt};
use telepound_protocol::codec::{self, DecodeError};
use telepound_protocol::{ClientMessage, ErrorCode, ServerMessage, UserName};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::handler::{self, HandlerError, Pending, login::PendingLogin};
use crate::hub::{Member, Outbound, PushState};
use crate::limits::Bucket;
use crate::listener::Places;
use crate::server::Shared;
use crate::store::{self, EntryKind, StoredEntry};

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
    Frame(Option<Result<Message, axum::Error>>),
    Tick,
    /// The peer has been silent for `idle_timeout`, or has not logged in
    /// within `auth_timeout`.
    Deadline,
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

/// Runs one connection until it closes. `_places` hold its TCP
/// connection's place under the connection cap and the per-address cap for
/// as long as it lives.
pub async fn run(shared: Arc<Shared>, socket: WebSocket, peer: SocketAddr, _places: Arc<Places>) {
    let conn_id = shared.next_conn_id();
    let span = tracing::info_span!("conn", conn_id, %peer, user = tracing::field::Empty);
    async move {
        tracing::info!("connected");
        let metrics = shared.metrics.clone();
        metrics.connections_total.fetch_add(1, Ordering::Relaxed);
        metrics.connections_open.fetch_add(1, Ordering::Relaxed);
        let mut conn = Connection::new(shared, socket, conn_id, peer);
        let ending = conn.serve().await;
        conn.abandon_login();
        if let Some(m) = conn.membership.take() {
            m.leave().await;
        }
        drop(conn);
        metrics.connections_open.fetch_sub(1, Ordering::Relaxed);
        metrics.disconnects.inc(ending.label());
        tracing::info!(reason = ending.label(), "disconnected");
    }
    .instrument(span)
    .await
}

struct Connection {
    shared: Arc<Shared>,
    socket: WebSocket,
    conn_id: u64,
    user: Option<UserName>,
    membership: Option<Membership>,
    pending_login: Option<PendingLogin>,
    /// The name a `register_start` on this connection was answered for.
    pending_registration: Option<UserName>,
    outbox_tx: mpsc::Sender<Outbound>,
    outbox_rx: mpsc::Receiver<Outbound>,
    push_state: Arc<PushState>,
    kick: CancellationToken,
    sync: SyncState,
    /// Highest mailbox seq sent to the client since the last `sync`.
    cursor: i64,
    /// Frames buffered but not yet written out.
    unflushed: usize,
    in_flight: FuturesOrdered<Pending>,
    last_heard: Instant,
    connected_at: Instant,
    peer: SocketAddr,
    /// Frames this connection may send (the message rate limit).
    frames: Bucket,
    /// Frames refused in a row by the rate limit.
    refused_in_a_row: u32,
}

impl Connection {
    fn new(shared: Arc<Shared>, socket: WebSocket, conn_id: u64, peer: SocketAddr) -> Self {
        let (outbox_tx, outbox_rx) = mpsc::channel(shared.config.outbox);
        let limits = &shared.config.limits;
        let frames = Bucket::new(
            f64::from(limits.messages_per_second),
            f64::from(limits.message_burst),
        );
        Self {
            connected_at: Instant::now(),
            peer,
            frames,
            refused_in_a_row: 0,
            shared,
            socket,
            conn_id,
            user: None,
            membership: None,
            pending_login: None,
            pending_registration: None,
            outbox_tx,
            outbox_rx,
            push_state: Arc::new(PushState::default()),
            kick: CancellationToken::new(),
            sync: SyncState::Idle,
            cursor: 0,
            unflushed: 0,
            in_flight: FuturesOrdered::new(),
            last_heard: Instant::now(),
        }
    }

    async fn serve(&mut self) -> Ending {
        let shutdown = self.shared.shutdown.clone();
        let kick = self.kick.clone();
        let mut ping = tokio::time::interval(self.shared.config.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let max_in_flight = self.shared.config.max_in_flight;
        loop {
            // Frames are buffered, and written out in one go once nothing
            // else is ready: many pushes, one system call.
            let ready = self
                .next_event(&shutdown, &kick, &mut ping, max_in_flight)
                .now_or_never();
            let event = match ready {
                Some(event) => event,
                None => {
                    if self.flush().await.is_err() {
                        return self.write_failed();
                    }
                    self.next_event(&shutdown, &kick, &mut ping, max_in_flight)
                        .await
                }
            };
            let step = match event {
                Event::Shutdown => return Box::pin(self.shut_down()).await,
                Event::Kicked => {
                    tracing::warn!("outbox full: disconnecting a client that is not reading");
                    let _ = self
                        .close(
                            close::POLICY,
                            "slow_consumer: reconnect to resume from your mailbox",
                        )
                        .await;
                    return Ending::SlowConsumer;
                }
                Event::Answer(answer) => self.write(&answer).await,
                Event::Push(out) => self.on_push(out).await,
                Event::Page(page) => Box::pin(self.on_page(page)).await,
                Event::Frame(frame) => match self.on_frame(frame).await {
                    Ok(()) => Ok(()),
                    Err(ending) => return ending,
                },
                Event::Tick => self.send_frame(Message::Ping(Default::default())).await,
                Event::Deadline => {
                    if self.login_overdue() {
                        let _ = self.close(close::POLICY, "login_timeout").await;
                        return Ending::LoginTimeout;
                    }
                    let _ = self.close(close::POLICY, "idle_timeout").await;
                    return Ending::IdleTimeout;
                }
            };
            if step.is_err() {
                return self.write_failed();
            }
        }
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
        if self.kick.is_cancelled() {
            tracing::warn!("outbox full: disconnected a client that is not reading");
            return Ending::SlowConsumer;
        }
        Ending::WriteFailed
    }

    /// The next thing to do. Every branch is cancel-safe, so a turn that
    /// finds nothing ready can be dropped and retried.
    async fn next_event(
        &mut self,
        shutdown: &CancellationToken,
        kick: &CancellationToken,
        ping: &mut tokio::time::Interval,
        max_in_flight: usize,
    ) -> Event {
        let syncing = matches!(self.sync, SyncState::Fetching { .. });
        let reading = self.in_flight.len() < max_in_flight;
        let deadline = tokio::time::Instant::from_std(self.deadline());
        tokio::select! {
                biased;
            () = shutdown.cancelled() => Event::Shutdown,
            () = kick.cancelled() => Event::Kicked,
            Some(answer) = self.in_flight.next(), if !self.in_flight.is_empty() => Event::Answer(answer),
            // Frames before pushes: a steady stream of pushes must not
            // keep a client's requests (or pongs) unread.
            frame = self.socket.recv(), if reading => Event::Frame(frame),
            Some(out) = self.outbox_rx.recv() => Event::Push(out),
            page = poll_fetch(&mut self.sync), if syncing => Event::Page(page),
            _ = ping.tick() => Event::Tick,
            // Checked on its own deadline, not on ping ticks (which could
            // add a ping interval); not while the connection is not reading,
            // since then the silence is its own.
            () = tokio::time::sleep_until(deadline), if reading => Event::Deadline,
        }
    }

    /// Handles one inbound frame; `Err` ends the connection.
    async fn on_frame(
        &mut self,
        frame: Option<Result<Message, axum::Error>>,
    ) -> Result<(), Ending> {
        self.last_heard = Instant::now();
        let text = match frame {
            None | Some(Ok(Message::Close(_))) => return Err(Ending::ClientClosed),
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => return Ok(()),
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
        if !self.frames.take() {
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
    async fn answer(&mut self, reply: ServerMessage) -> Result<(), axum::Error> {
        if self.in_flight.is_empty() {
            self.write(&reply).await
        } else {
            self.in_flight.push_back(handler::ready(reply));
            Ok(())
        }
    }

    async fn on_request(&mut self, msg: ClientMessage) -> Result<(), axum::Error> {
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
                        self.pending_login = Some(pending);
                        Ok(reply)
                    }
                    Err(e) => Err(e),
                }
            }
            ClientMessage::LoginFinish { finalization, .. } => match self.pending_login.take() {
                None => Err(HandlerError::new(ErrorCode::NoLoginInProgress)),
                Some(pending) => {
                    match handler::login::finish(&shared, rid, pending, &finalization.0).await {
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
                tx: self.outbox_tx.clone(),
                state: self.push_state.clone(),
                outbox_bytes: self.shared.config.outbox_bytes,
                kick: self.kick.clone(),
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
    ) -> Result<(), axum::Error> {
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

    async fn on_page(&mut self, page: store::Result<Vec<StoredEntry>>) -> Result<(), axum::Error> {
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

    async fn on_push(&mut self, out: Outbound) -> Result<(), axum::Error> {
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

    async fn send_entry(&mut self, entry: &StoredEntry) -> Result<(), axum::Error> {
        self.cursor = self.cursor.max(entry.seq);
        let text = match entry.kind {
            EntryKind::Message | EntryKind::GroupMessage => codec::render_message(
                entry.seq,
                &entry.msg_id,
                &entry.sender,
                entry.server_ts,
                &entry.envelope,
            ),
            EntryKind::Receipt => codec::encode(&ServerMessage::Delivered {
                seq: Some(entry.seq),
                msg_id: entry.msg_id,
                to: entry.sender.clone(),
                at: entry.server_ts,
            }),
            EntryKind::GroupChange => {
                codec::render_group_change(entry.seq, entry.server_ts, &entry.envelope)
            }
        };
        self.send_frame(Message::Text(text.into())).await
    }

    async fn write(&mut self, msg: &ServerMessage) -> Result<(), axum::Error> {
        self.send_frame(Message::Text(codec::encode(msg).into()))
            .await
    }

    /// Sends one frame, giving up after the idle timeout (and at the peer's
    /// idle deadline, plus [`WRITE_MARGIN`]): a peer that keeps its TCP
    /// connection open but stops reading must not hold this task (and its
    /// place under the connection cap) for long.
    ///
    /// A kick (this connection's outbox overflowed) also ends a write that
    /// is stuck: the connection is being dropped anyway.
    async fn send_frame(&mut self, frame: Message) -> Result<(), axum::Error> {
        self.unflushed += 1;
        let flush = self.unflushed >= FLUSH_EVERY;
        let timeout = self.write_timeout();
        guarded(&self.kick, timeout, self.socket.feed(frame)).await?;
        if flush {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes out buffered frames, within the same limits as a write.
    async fn flush(&mut self) -> Result<(), axum::Error> {
        if self.unflushed == 0 {
            return Ok(());
        }
        self.unflushed = 0;
        let timeout = self.write_timeout();
        guarded(&self.kick, timeout, self.socket.flush()).await
    }

    /// How long the next write may take: the idle timeout, but no later
    /// than a moment past the peer's idle deadline, so that a write stuck
    /// on a vanished peer does not add another idle timeout.
    fn write_timeout(&self) -> std::time::Duration {
        let idle = self.shared.config.idle_timeout;
        let until_deadline = (self.last_heard + idle).saturating_duration_since(Instant::now());
        until_deadline.max(WRITE_MARGIN).min(idle)
    }

    /// Sends a close frame and whatever is buffered before it, best effort
    /// and within [`CLOSE_TIMEOUT`] (whether or not the connection was
    /// kicked: it is ending either way).
    async fn close(&mut self, code: u16, reason: &str) -> Result<(), axum::Error> {
        let frame = Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from(reason.to_owned()),
        }));
        self.unflushed = 0;
        let socket = &mut self.socket;
        tokio::time::timeout(CLOSE_TIMEOUT, async {
            socket.feed(frame).await?;
            socket.flush().await
        })
        .await
        .unwrap_or_else(|_| {
            Err(axum::Error::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "close timed out",
            )))
        })
    }

    /// Lets requests in flight finish (their writes may already be
    /// committed: the sender must hear `accepted`), then says goodbye.
    async fn shut_down(&mut self) -> Ending {
        while let Some(answer) = self.in_flight.next().await {
            if self.write(&answer).await.is_err() {
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

/// A socket write that gives up after `timeout`, or when `kick` fires.
async fn guarded(
    kick: &CancellationToken,
    timeout: std::time::Duration,
    write: impl Future<Output = Result<(), axum::Error>>,
) -> Result<(), axum::Error> {
    tokio::select! {
        result = tokio::time::timeout(timeout, write) => result.unwrap_or_else(|_| {
            tracing::warn!("write timed out: the client is not reading");
            Err(axum::Error::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "write timed out",
            )))
        }),
        () = kick.cancelled() => Err(axum::Error::new(std::io::Error::other("kicked"))),
    }
}

fn tungstenite_error(e: &axum::Error) -> Option<&tungstenite::Error> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(t) = s.downcast_ref::<tungstenite::Error>() {
            return Some(t);
        }
        source = s.source();
    }
    None
}

fn is_too_big(e: &axum::Error) -> bool {
    matches!(tungstenite_error(e), Some(tungstenite::Error::Capacity(_)))
}

fn is_reset(e: &axum::Error) -> bool {
    use tungstenite::error::ProtocolError;
    matches!(
        tungstenite_error(e),
        Some(
            tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)
                | tungstenite::Error::Io(_)
                | tungstenite::Error::ConnectionClosed
                | tungstenite::Error::AlreadyClosed
        )
    )
}
