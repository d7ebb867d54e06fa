//! The sealed private-key backup stored on the server.
//!
//! The key that seals it is HKDF-SHA256 of OPAQUE's export key, which only a
//! client that knows the password can compute; the server stores the sealed
//! bytes and hands them back after a successful login. This is the original
//! Telepound's "private key encrypted with a password-derived key", without
//! the server ever being able to derive that key.

use hkdf::Hkdf;
use sha2::Sha256;
use telepound_protocol::UserName;
use zeroize::Zeroizing;

use crate::{Error, Identity, Result, xchacha};

const INFO: &[u8] = b"telepound/v1/key-backup";

fn backup_key(export_key: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut key = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(None, export_key)
        .expand(INFO, key.as_mut())
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    key
}

fn aad(user: &UserName) -> Vec<u8> {
    let mut a = INFO.to_vec();
    a.push(0);
    a.extend_from_slice(user.as_str().as_bytes());
    a
}

/// Seals `identity`'s private keys for `user` under `export_key`.
pub fn seal(identity: &Identity, user: &UserName, export_key: &[u8]) -> Vec<u8> {
    let key = backup_key(export_key);
    xchacha::seal(&key, &aad(user), &identity.to_bundle())
}

/// Opens a backup made by [`seal`].
///
/// # Errors
/// [`Error::BackupOpen`] if the export key is wrong (a different password) or
/// the bytes were altered, [`Error::InvalidKey`] if the contents are not keys.
pub fn open(sealed: &[u8], user: &UserName, export_key: &[u8]) -> Result<Identity> {
    let key = backup_key(export_key);
    let bundle = Zeroizing::new(xchacha::open(&key, &aad(user), sealed).ok_or(Error::BackupOpen)?);
    Identity::from_bundle(&bundle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_only_with_the_same_export_key_and_user() {
        let id = Identity::generate();
        let alice = UserName::new("alice").unwrap();
        let sealed = seal(&id, &alice, &[7u8; 64]);
        let back = open(&sealed, &alice, &[7u8; 64]).unwrap();
        assert_eq!(back.identity_key(), id.identity_key());
        assert!(matches!(
            open(&sealed, &alice, &[8u8; 64]),
            Err(Error::BackupOpen)
        ));
        let bob = UserName::new("bob").unwrap();
        assert!(open(&sealed, &bob, &[7u8; 64]).is_err());
        let mut bad = sealed.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(open(&bad, &alice, &[7u8; 64]).is_err());
    }
}
