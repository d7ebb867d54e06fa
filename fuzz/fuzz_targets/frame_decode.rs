//! The server's request parser: bytes off the socket, as the connection
//! task takes them (UTF-8, size cap, two-step decode). Whatever decodes
//! must encode and decode back to the same frame.
//!
//! The check itself is `fuzz/checks/frame_decode.rs`, which `cargo test` also runs
//! over `fuzz/seeds/frame_decode/`.
#![no_main]

#[path = "../checks/frame_decode.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
