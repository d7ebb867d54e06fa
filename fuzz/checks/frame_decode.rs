//! The check behind the `frame_decode` fuzz target, kept apart so that
//! `crates/protocol/tests/fuzz_seeds.rs` runs every seed and every past
//! finding through the very same code in `cargo test` (no nightly needed).
//!
//! The server's request parser: bytes off the socket, as the connection
//! task takes them (UTF-8, size cap, two-step decode). Whatever decodes
//! must encode and decode back to the same frame. And the decoder's fast
//! reader for `send` frames must agree with the general (serde) one: the
//! same message when both take a frame, the general one's refusal when it
//! refuses.

use telepound_protocol::codec::{decode_client, decode_client_general, encode};

/// Panics if `data` breaks the property.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let max = 64 * 1024;
    match (decode_client(text, max), decode_client_general(text, max)) {
        (Ok(fast), Ok(general)) => assert_eq!(encode(&fast), encode(&general)),
        (Err(fast), Err(general)) => assert_eq!(fast.to_string(), general.to_string()),
        (fast, general) => panic!("the decoders disagree: {fast:?} against {general:?}"),
    }
    if let Ok(msg) = decode_client(text, max) {
        let again = encode(&msg);
        let back = decode_client(&again, usize::MAX).expect("an encoded request decodes");
        assert_eq!(encode(&back), again);
    }
}
