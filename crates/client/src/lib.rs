//! The Telepound client library: everything a client does except drawing
//! it. The command-line client and (later) the terminal UI are thin layers
//! over it.
//!
//! - [`Client`]: a cheap, clonable handle to one connection. A single task
//!   owns the WebSocket; the handle sends it requests over a bounded channel
//!   and gets answers on oneshots, matched by request id. Pushes arrive as
//!   [`Event`]s.
//! - [`account`]: sign-up and login (OPAQUE, key backup), giving a
//!   [`Session`].
//! - [`Session`]: a logged-in user with their private keys: sends sealed
//!   messages, opens received ones, acknowledges, checks presence, and keeps
//!   the local state under the user's home folder: pinned peer keys
//!   ([`pins`]), local history ([`history`]) and the verified membership
//!   of each group ([`groups`]).
//!
//! Design decision: peer identity keys are pinned on first use, and a
//! changed key is refused (with [`Error::KeyChanged`]) until the user
//! accepts it after comparing safety numbers; the server, which serves the
//! key directory, therefore cannot silently substitute keys after first
//! contact.

pub mod account;
pub mod backoff;
pub mod connection;
pub mod error;
pub mod files;
pub mod groups;
pub mod history;
pub mod http;
pub mod link;
pub mod outbox;
pub mod pins;
pub mod session;
pub mod state;

pub use backoff::Backoff;
pub use connection::{Client, ConnectOptions, Event, Events};
pub use error::{Error, Result};
pub use files::{NoProgress, Progress};
pub use link::{Link, Step, is_refusal, is_transient};
pub use session::{
    GroupLine, Inbound, Incoming, KeyStatus, Received, SendOutcome, Session, SyncPage, Verification,
};
