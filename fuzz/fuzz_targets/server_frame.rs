//! The client's decoder of server frames (a hostile server must not crash
//! a client), with the same round-trip property.
#![no_main]

use libfuzzer_sys::fuzz_target;
use telepound_protocol::codec::{decode_server, encode};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(msg) = decode_server(text, 64 * 1024) {
        let again = encode(&msg);
        let back = decode_server(&again, usize::MAX).expect("an encoded answer decodes");
        assert_eq!(encode(&back), again);
    }
});
