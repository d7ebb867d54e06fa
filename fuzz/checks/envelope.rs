//! The check behind the `envelope` fuzz target, kept apart so that
//! `crates/crypto/tests/fuzz_seeds.rs` runs every seed and every past
//! finding through the very same code in `cargo test` (no nightly needed).
//!
//! Envelope parsing and opening: a hostile sender or server must not crash
//! a recipient, and nothing forged may open.

use std::sync::LazyLock;

use telepound_crypto::Identity;
use telepound_crypto::envelope::Envelope;
use telepound_protocol::UserName;

static ME: LazyLock<(Identity, Identity, UserName)> = LazyLock::new(|| {
    (
        Identity::generate(),
        Identity::generate(),
        UserName::new("bob").unwrap(),
    )
});

/// Panics if `data` breaks the property.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(env) = Envelope::parse(text) {
        let (me, sender, name) = &*ME;
        // The fuzzer cannot know our keys: opening must fail, never panic.
        assert!(env.open(me, name, &sender.peer_keys()).is_err());
    }
}
