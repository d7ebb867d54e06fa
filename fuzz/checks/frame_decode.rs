//! The check behind the `frame_decode` fuzz target, kept apart so that
//! `crates/protocol/tests/fuzz_seeds.rs` runs every seed and every past
//! finding through the very same code in `cargo test` (no nightly needed).
//!
//! The server's request parser: bytes off the socket, as the connection
//! task takes them (UTF-8, size cap, two-step decode). Whatever decodes
//! must encode and decode back to the same frame.

use telepound_protocol::codec::{decode_client, encode};

/// Panics if `data` breaks the property.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(msg) = decode_client(text, 64 * 1024) {
        let again = encode(&msg);
        let back = decode_client(&again, usize::MAX).expect("an encoded request decodes");
        assert_eq!(encode(&back), again);
    }
}
