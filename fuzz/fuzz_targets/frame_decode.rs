//! The server's request parser: bytes off the socket, as the connection
//! task takes them (UTF-8, size cap, two-step decode). Whatever decodes
//! must encode and decode back to the same frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use telepound_protocol::codec::{decode_client, encode};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(msg) = decode_client(text, 64 * 1024) {
        let again = encode(&msg);
        let back = decode_client(&again, usize::MAX).expect("an encoded request decodes");
        assert_eq!(encode(&back), again);
    }
});
