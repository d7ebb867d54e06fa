//! The server entry point: [`run`].

use std::collections::HashSet;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use opaque_ke::ServerSetup;
use rand_core_06::OsRng;
use telepound_protocol::auth::Suite;
use telepound_protocol::message::UnixMillis;
use telepound_protocol::{MsgId, UserName};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, redact_url};
use crate::hub::Hub;
use crate::limits::{Keyed, PerAddress};
use crate::listener::{Caps, Incoming, PeerAddr, Places};
use crate::metrics::Metrics;
use crate::store::CommitListener;
use crate::store::{self, DatabaseUrl, Store};

/// State shared by every connection.
pub struct Shared {
    /// The database.
    pub store: Arc<dyn Store>,
    /// Live routing.
    pub hub: Arc<Hub>,
    /// Validated configuration.
    pub config: Config,
    /// The OPAQUE server keys (persisted in the store).
    pub opaque: ServerSetup<Suite>,
    /// Cancelled when the server starts shutting down, by
    /// [`Shared::begin_shutdown`] (HTTP connections and the accept loop
    /// watch it; WebSocket connections watch a flag the hub sets).
    pub shutdown: CancellationToken,
    /// Cancelled when the shutdown deadline has passed: every connection
    /// still open is dropped.
    pub abort: CancellationToken,
    /// Tracks connection tasks so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Login attempts per user name.
    pub login_by_user: Keyed<UserName>,
    /// Login and sign-up attempts per address.
    pub login_by_address: Keyed<IpAddr>,
    /// Sign-ups (`register_start`s answered) per address, an hourly budget.
    pub signups_by_address: Keyed<IpAddr>,
    /// Everything counted for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Blobs being uploaded right now.
    pub uploading: crate::blobs::Uploading,
    next_conn: AtomicU64,
    // Names known to exist. Accounts are never deleted, so a positive cache
    // never goes stale; it saves a query on every send. std Mutex: no await
    // while held.
    known_users: Mutex<HashSet<UserName>>,
}

impl Shared {
    /// Starts the shutdown: every HTTP connection and WebSocket is told.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
        self.hub.stop_all();
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether `user` has an account.
    ///
    /// # Errors
    /// Store failures.
    pub async fn user_exists(&self, user: &UserName) -> store::Result<bool> {
        if self.known_users.lock().expect("cache lock").contains(user) {
            return Ok(true);
        }
        let exists = self.store.users_exist(std::slice::from_ref(user)).await?[0];
        if exists {
            self.known_users
                .lock()
                .expect("cache lock")
                .insert(user.clone());
        }
        Ok(exists)
    }
}

/// Runs the server on `listener` until `shutdown` completes, then stops
/// accepting, tells every client it is going away, lets in-flight writes
/// finish, and closes the store.
///
/// The stop takes at most `config.shutdown_grace` from the moment
/// `shutdown` completes (plus a moment to record what uploads received):
/// whatever is still open then, a WebSocket, a blob transfer or a request
/// half sent, is dropped.
///
/// # Errors
/// When the store cannot be opened or the listener fails.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use anyhow::Context;

    if let DatabaseUrl::Sqlite(path) = &config.database
        && let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create data folder {}", dir.display()))?;
    }
    let hub = Arc::new(Hub::default());
    let metrics = Arc::new(Metrics::default());
    let announcer = Arc::new(Announcer {
        hub: hub.clone(),
        metrics: metrics.clone(),
    });
    let store = store::open(&config.database, config.migrate, config.writer, announcer)
        .await
        .with_context(|| match &config.database {
            DatabaseUrl::Sqlite(p) => format!("cannot open SQLite database {}", p.display()),
            DatabaseUrl::Postgres(u) => {
                format!("cannot open PostgreSQL database {}", redact_url(u))
            }
        })?;
    let fresh = ServerSetup::<Suite>::new(&mut OsRng);
    let setup_bytes = store
        .server_setup(&fresh.serialize())
        .await
        .context("cannot load the server's OPAQUE setup")?;
    let opaque = ServerSetup::<Suite>::deserialize(&setup_bytes)
        .map_err(|_| anyhow::anyhow!("the stored OPAQUE setup is corrupt"))?;

    let caps = Caps {
        total: Arc::new(Semaphore::new(config.max_connections)),
        per_address: Arc::new(PerAddress::default()),
        per_address_max: config.limits.max_connections_per_address,
        metrics: metrics.clone(),
    };
    let shared = Arc::new(Shared {
        store,
        hub,
        login_by_user: Keyed::per_minute(config.limits.login_attempts_per_user),
        login_by_address: Keyed::per_minute(config.limits.login_attempts_per_address),
        signups_by_address: Keyed::per_hour(config.limits.signups_per_address),
        metrics,
        uploading: Default::default(),
        config,
        opaque,
        shutdown: CancellationToken::new(),
        abort: CancellationToken::new(),
        tracker: TaskTracker::new(),
        next_conn: AtomicU64::new(1),
        known_users: Mutex::new(HashSet::new()),
    });

    let expiry = tokio::spawn(expire_loop(shared.clone()));
    let _expiry = AbortOnDrop(expiry);

    let app = Router::new()
        .route("/v1/ws", get(ws_upgrade))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_page))
        .route("/v1/blobs", axum::routing::post(crate::blobs::create))
        .route(
            "/v1/blobs/{id}",
            get(crate::blobs::download)
                .head(crate::blobs::status)
                .patch(crate::blobs::append)
                .delete(crate::blobs::done)
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .with_state(shared.clone());

    let addr = listener.local_addr().context("listener has no address")?;
    let tls = match &shared.config.tls {
        None => None,
        Some(source) => {
            let (config, cert) = crate::tls::server_config(source, &shared.config.data_dir, addr)?;
            tracing::info!(cert = %cert.display(), "TLS on");
            Some(config)
        }
    };
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    let incoming = Incoming::new(listener, tls, caps);
    tracing::info!(url = %format!("{scheme}://{addr}"), database = %describe(&shared.config.database), "telepound listening");

    let stopping = shared.clone();
    let signal = tokio::spawn(async move {
        shutdown.await;
        stopping.begin_shutdown();
    });
    let _signal = AbortOnDrop(signal);
    serve(incoming, app, &shared).await;
    // The deadline runs from the stop request (serve returns at once), and
    // holds whatever the connections do.
    let deadline = tokio::time::Instant::now() + shared.config.shutdown_grace;

    tracing::info!("shutting down: waiting for connections to finish");
    shared.tracker.close();
    if tokio::time::timeout_at(deadline, shared.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            remaining = shared.tracker.len(),
            "shutdown deadline passed; dropping remaining connections"
        );
        shared.abort.cancel();
        // Dropped connections end at once; uploads cut off record what
        // arrived, which needs the store a moment longer.
        if tokio::time::timeout(ABORT_WAIT, shared.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = shared.tracker.len(),
                "tasks still running after the deadline; closing the store anyway"
            );
        }
    }
    shared.store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// How long tasks get to end after the shutdown deadline dropped their
/// connections.
const ABORT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Serves HTTP/1.1 on every accepted connection until shutdown starts, then
/// asks each connection to finish its request in progress and close. Each
/// connection task ends at the latest when `shared.abort` is cancelled.
///
/// HTTP is served here rather than by `axum::serve`, which waits for open
/// connections without a limit and sets no timer, so hyper's header read
/// timeout (a peer sending half a request) would not apply.
async fn serve(mut incoming: Incoming, app: Router, shared: &Arc<Shared>) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower_service::Service;

    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(shared.config.header_read_timeout);
    loop {
        let (io, peer, places) = tokio::select! {
            () = shared.shutdown.cancelled() => break,
            next = incoming.accept() => next,
        };
        let places = Arc::new(places);
        let app = app.clone();
        let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(ConnectInfo(PeerAddr(peer)));
            req.extensions_mut().insert(places.clone());
            // A Router is always ready, so it may be called directly.
            app.clone().call(req)
        });
        let conn = http
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        let (stop, abort) = (shared.shutdown.clone(), shared.abort.clone());
        shared.tracker.spawn(async move {
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                biased;
                () = abort.cancelled() => return,
                result = conn.as_mut() => return log_http_end(peer, result),
                () = stop.cancelled() => {}
            }
            // Lets a request in progress finish, then closes.
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                () = abort.cancelled() => {}
                result = conn => log_http_end(peer, result),
            }
        });
    }
    // Stops accepting: new connections are refused by the OS from now on.
    drop(incoming);
}

fn log_http_end(peer: std::net::SocketAddr, result: Result<(), hyper::Error>) {
    if let Err(e) = result {
        if e.is_timeout() {
            tracing::debug!(%peer, "HTTP request headers not received in time; closed");
        } else {
            tracing::debug!(%peer, cause = %e, "HTTP connection ended with an error");
        }
    }
}

fn describe(db: &DatabaseUrl) -> String {
    match db {
        DatabaseUrl::Sqlite(p) => format!("sqlite:{}", p.display()),
        DatabaseUrl::Postgres(u) => redact_url(u),
    }
}

/// Aborts a background task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn expire_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.config.expiry_interval);
    loop {
        tick.tick().await;
        let now = crate::now_ms();
        match shared.store.expire(now).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(expired = n, "deleted expired undelivered messages"),
            Err(e) => tracing::warn!(cause = %e, "expiry failed"),
        }
        match shared.store.expired_blobs(now).await {
            Ok(ids) => {
                for id in ids {
                    if let Err(e) = crate::blobs::remove_blob(&shared, &id).await {
                        tracing::warn!(cause = %e, "could not delete an expired file");
                    }
                }
            }
            Err(e) => tracing::warn!(cause = %e, "file expiry failed"),
        }
    }
}

async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    if shared.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    match shared.store.ping().await {
        Ok(_) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => {
            tracing::warn!(cause = %e, "health check failed");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n").into_response()
        }
    }
}

async fn metrics_page(State(shared): State<Arc<Shared>>) -> Response {
    let depth = shared.store.mailbox_depth().await.ok();
    let text = shared
        .metrics
        .render(depth, shared.hub.sessions(), shared.hub.open_connections());
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
        .into_response()
}

/// What the store's writer announces after each commit: pushes go to the
/// hub, receipts and batch figures to the metrics.
struct Announcer {
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
}

impl CommitListener for Announcer {
    fn stored(&self, recipient: &UserName, entry: store::StoredEntry) {
        self.hub.stored(recipient, entry);
    }

    fn delivered(&self, sender: &UserName, msg_id: MsgId, to: &UserName, at: UnixMillis) {
        self.metrics
            .messages_delivered
            .fetch_add(1, Ordering::Relaxed);
        self.hub.delivered(sender, msg_id, to, at);
    }

    fn must_store_receipt(&self, sender: &UserName) -> bool {
        self.hub.must_store_receipt(sender)
    }

    fn batch_committed(&self, ops: usize, elapsed: std::time::Duration) {
        self.metrics.commit_batch.observe(ops as f64);
        self.metrics.commit_seconds.observe(elapsed.as_secs_f64());
    }

    fn is_live(&self, recipient: &UserName) -> bool {
        self.hub.is_live(recipient)
    }

    fn ack_window(&self, acked: usize, written: usize) {
        self.metrics.ack_window.add("acked", acked as u64);
        self.metrics.ack_window.add("written", written as u64);
    }
}

async fn ws_upgrade(
    upgrade: crate::ws::WsUpgrade,
    State(shared): State<Arc<Shared>>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    Extension(places): Extension<Arc<Places>>,
) -> Response {
    if shared.shutdown.is_cancelled() {
        shared.metrics.connections_refused.inc("shutting_down");
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting_down\n").into_response();
    }
    let (response, on_upgrade) = upgrade.accept();
    let (tracker, abort) = (shared.tracker.clone(), shared.abort.clone());
    tracker.spawn(async move {
        let io = match on_upgrade.await {
            Ok(upgraded) => hyper_util::rt::TokioIo::new(upgraded),
            Err(e) => {
                tracing::debug!(%peer, cause = %e, "WebSocket upgrade failed");
                return;
            }
        };
        // The WebSocket keeps the TCP connection's places under the caps.
        let run = crate::connection::run(shared, io, peer, places);
        tokio::select! {
            () = run => {}
            () = abort.cancelled() => {}
        }
    });
    response
}
