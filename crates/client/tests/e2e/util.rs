//! Shared helpers.

pub use telepound_protocol::{MsgId, UserName};
pub use telepound_testkit::{drain, login, next_inbound, signup, spawn_server, texts, user};

pub fn name(s: &str) -> UserName {
    UserName::new(s).unwrap()
}

/// Finds `needle` anywhere in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}
