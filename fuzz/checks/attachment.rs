//! The check behind the `attachment` fuzz target, kept apart so that
//! `crates/crypto/tests/fuzz_seeds.rs` runs every seed and every past
//! finding through the very same code in `cargo test` (no nightly needed).
//!
//! The decrypted payload and its attachment descriptors (name, size, media
//! type, key, hash): parsed after decryption from an authenticated but
//! possibly malicious sender. Must not panic, and must round-trip.

use telepound_crypto::{Attachment, Payload};

/// Panics if `data` breaks the property.
pub fn check(data: &[u8]) {
    if let Ok(p) = serde_json::from_slice::<Payload>(data) {
        let again = serde_json::to_vec(&p).unwrap();
        assert_eq!(serde_json::from_slice::<Payload>(&again).unwrap(), p);
    }
    if let Ok(a) = serde_json::from_slice::<Vec<Attachment>>(data) {
        let again = serde_json::to_vec(&a).unwrap();
        assert_eq!(
            serde_json::from_slice::<Vec<Attachment>>(&again).unwrap(),
            a
        );
    }
}
