//! The check behind the `server_frame` fuzz target, kept apart so that
//! `crates/protocol/tests/fuzz_seeds.rs` runs every seed and every past
//! finding through the very same code in `cargo test` (no nightly needed).
//!
//! The client's decoder of server frames (a hostile server must not crash
//! a client), with the same round-trip property as requests.

use telepound_protocol::codec::{decode_server, encode};

/// Panics if `data` breaks the property.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(msg) = decode_server(text, 64 * 1024) {
        let again = encode(&msg);
        let back = decode_server(&again, usize::MAX).expect("an encoded answer decodes");
        assert_eq!(encode(&back), again);
    }
}
