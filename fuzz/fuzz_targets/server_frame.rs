//! The client's decoder of server frames (a hostile server must not crash
//! a client), with the same round-trip property.
//!
//! The check itself is `fuzz/checks/server_frame.rs`, which `cargo test` also runs
//! over `fuzz/seeds/server_frame/`.
#![no_main]

#[path = "../checks/server_frame.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
