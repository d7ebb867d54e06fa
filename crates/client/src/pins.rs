//! Pinned peer identity keys (trust on first use), one JSON file per local
//! user.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use telepound_protocol::UserName;
use telepound_protocol::message::{B64, PublicKeys};

use crate::Result;

/// One pinned peer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pin {
    /// The Ed25519 identity key first seen (or last accepted).
    pub identity: B64,
    /// The peer's full published keys as last fetched and checked, so a
    /// message can be sealed while the server is unreachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<PublicKeys>,
    /// Whether the user compared safety numbers and accepted this key.
    pub verified: bool,
    /// When it was pinned (ms since the epoch).
    pub pinned_at: i64,
}

/// What checking a key against the pins found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinCheck {
    /// First contact: the key is now pinned.
    New,
    /// Same key as pinned.
    Match,
    /// A different key than pinned: refuse until accepted.
    Changed,
}

/// The pin file of one local user.
#[derive(Debug)]
pub struct PinStore {
    path: PathBuf,
    pins: BTreeMap<String, Pin>,
}

impl PinStore {
    /// Loads `dir/pins.json` (empty if absent).
    ///
    /// # Errors
    /// When the file exists but cannot be read or parsed.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("pins.json");
        let pins = crate::state::read_json(&path)?;
        Ok(Self { path, pins })
    }

    /// Changes the file under its lock, from its current content (another
    /// process of this user may have pinned or accepted keys since).
    fn update<R>(&mut self, change: impl FnOnce(&mut BTreeMap<String, Pin>) -> R) -> Result<R> {
        let (pins, r) = crate::state::update_json(&self.path, change)?;
        self.pins = pins;
        Ok(r)
    }

    /// The pin of `user`, if any.
    pub fn get(&self, user: &UserName) -> Option<&Pin> {
        self.pins.get(user.as_str())
    }

    /// Checks `key` for `user`, pinning it on first contact.
    ///
    /// # Errors
    /// When a new pin cannot be saved.
    pub fn check(&mut self, user: &UserName, key: &[u8; 32]) -> Result<PinCheck> {
        if self
            .pins
            .get(user.as_str())
            .is_some_and(|p| p.identity.0 == key)
        {
            return Ok(PinCheck::Match);
        }
        // Anything else is decided on the file as it is now: another
        // process may have pinned this peer, or accepted a new key.
        self.update(|pins| match pins.get(user.as_str()) {
            Some(p) if p.identity.0 == key => PinCheck::Match,
            Some(_) => PinCheck::Changed,
            None => {
                pins.insert(user.as_str().to_owned(), new_pin(key, false));
                PinCheck::New
            }
        })
    }

    /// Pins `key` for `user` (replacing any earlier pin) and saves.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn set(&mut self, user: &UserName, key: &[u8; 32], verified: bool) -> Result<()> {
        self.update(|pins| {
            pins.insert(user.as_str().to_owned(), new_pin(key, verified));
        })
    }

    /// Remembers the full keys of a pinned peer (when they match the pin).
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn remember_keys(&mut self, user: &UserName, keys: &PublicKeys) -> Result<()> {
        let stale = |p: &Pin| p.identity == keys.identity && p.keys.as_ref() != Some(keys);
        if !self.pins.get(user.as_str()).is_some_and(stale) {
            return Ok(());
        }
        self.update(|pins| {
            if let Some(p) = pins.get_mut(user.as_str())
                && stale(p)
            {
                p.keys = Some(keys.clone());
            }
        })
    }
}

fn new_pin(key: &[u8; 32], verified: bool) -> Pin {
    Pin {
        identity: B64(key.to_vec()),
        keys: None,
        verified,
        pinned_at: crate::session::now_ms(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_on_first_use_and_flags_changes() {
        let dir = tempfile::tempdir().unwrap();
        let bob = UserName::new("bob").unwrap();
        let mut pins = PinStore::load(dir.path()).unwrap();
        assert_eq!(pins.check(&bob, &[1; 32]).unwrap(), PinCheck::New);
        assert_eq!(pins.check(&bob, &[1; 32]).unwrap(), PinCheck::Match);
        let mut again = PinStore::load(dir.path()).unwrap();
        assert_eq!(again.check(&bob, &[2; 32]).unwrap(), PinCheck::Changed);
        again.set(&bob, &[2; 32], true).unwrap();
        assert_eq!(again.check(&bob, &[2; 32]).unwrap(), PinCheck::Match);
        assert!(again.get(&bob).unwrap().verified);
    }
}
