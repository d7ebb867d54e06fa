//! The decrypted payload and its attachment descriptors (name, size, media
//! type, key, hash): parsed after decryption from an authenticated but
//! possibly malicious sender. Must not panic, and must round-trip.
//!
//! The check itself is `fuzz/checks/attachment.rs`, which `cargo test` also runs
//! over `fuzz/seeds/attachment/`.
#![no_main]

#[path = "../checks/attachment.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
