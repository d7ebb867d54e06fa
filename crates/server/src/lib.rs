//! The Telepound server: WebSocket routing, durable mailboxes and the key
//! directory, on SQLite (embedded, the default) or PostgreSQL.
//!
//! [`run`] is the entry point: it takes a bound listener, a validated
//! [`Config`] and a shutdown future. Each WebSocket connection is one task
//! ([`connection`]) that owns its socket and a bounded outbox; the
//! [`hub`] routes live pushes between connections; [`handler`] holds one
//! file per request; [`store`] holds the [`store::Store`] trait and its
//! backends.
//!
//! Design decision: the server never links the code that opens messages. It
//! sees OPAQUE messages, public keys and sealed envelopes, and forwards
//! envelopes as the exact bytes the sender wrote. `accepted` is sent only
//! after the mailbox write has committed, and the mailbox, not memory, is the
//! source of truth: a connection that falls behind is disconnected and
//! catches up from its mailbox.

pub mod blobs;
pub mod config;
pub mod connection;
pub mod handler;
pub mod hub;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod server;
pub mod store;
pub mod tls;
pub mod ws;

pub use config::{Config, RawConfig};
pub use server::run;

/// The current time in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
