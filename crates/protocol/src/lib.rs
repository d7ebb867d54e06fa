//! The Telepound wire protocol: what a client and a server say to each other.
//!
//! Every frame on `/v1/ws` is one JSON text message with a `"type"` field.
//! [`ClientMessage`] is what clients send, [`ServerMessage`] what the server
//! sends; [`codec`] turns text into those values with a size cap, and
//! [`ErrorCode`] is the stable list of wire errors. Identifiers
//! ([`UserName`], [`MsgId`]) validate on construction, so a value of those
//! types is always well formed.
//!
//! Design decision: message envelopes are carried as the JSON text the
//! sender wrote ([`message::RawJson`] in a `send`,
//! [`serde_json::value::RawValue`] elsewhere). The server never needs to look
//! inside an envelope (it cannot read it anyway), so it forwards the exact
//! bytes without building a JSON tree for them. The decoder therefore parses
//! in two steps (the `type` first, then that variant's struct), because
//! serde's internally tagged enums buffer their content and cannot hold a raw
//! value; a `send` is first offered to a one-pass reader of its own, which
//! takes the subset clients write and leaves the rest to serde.
//!
//! This crate has no async runtime in it; both the server and the client
//! build on it.

pub mod auth;
pub mod blob;
pub mod codec;
pub mod error;
pub mod group;
pub mod ids;
pub mod message;
mod scan;

pub use error::ErrorCode;
pub use ids::{GroupName, IdError, MsgId, UserName};
pub use message::{ClientMessage, ServerMessage};

/// The protocol version spoken on `/v1/ws`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default largest text frame either side accepts, in bytes.
pub const DEFAULT_MAX_FRAME: usize = 1024 * 1024;
