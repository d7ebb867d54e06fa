//! Envelope parsing and opening: a hostile sender or server must not crash
//! a recipient, and nothing forged may open.
//!
//! The check itself is `fuzz/checks/envelope.rs`, which `cargo test` also runs
//! over `fuzz/seeds/envelope/`.
#![no_main]

#[path = "../checks/envelope.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
