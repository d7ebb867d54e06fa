//! A user's key pairs and a peer's public keys.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hpke::{Deserializable, Kem as _, Serializable, kem::XWing};
use telepound_protocol::message::{B64, PublicKeys};
use zeroize::{Zeroize, Zeroizing};

use crate::{Error, Result};

use telepound_protocol::auth::KEM_SIG_CONTEXT;

/// Serialized private-key bundle format version.
const BUNDLE_V1: u8 = 1;

/// Length of a serialized private-key bundle.
pub(crate) const BUNDLE_LEN: usize = 1 + 32 + 32;

/// An X-Wing private key.
pub(crate) type KemSecret = <XWing as hpke::Kem>::PrivateKey;
/// An X-Wing public key.
pub(crate) type KemPublic = <XWing as hpke::Kem>::PublicKey;

/// HKDF info for the key that wraps the content key of this user's own
/// copy of each message they send (suite `tp2`, see `envelope`).
const SELF_WRAP_INFO: &[u8] = b"telepound/tp2/self-wrap";

/// A user's own key pairs. Zeroized on drop; `Debug` shows no secret.
pub struct Identity {
    signing: SigningKey,
    kem_secret: KemSecret,
    kem_public: KemPublic,
    /// Derived from the KEM private key (so every machine that opens the
    /// key backup has it): wraps the sender's own copy of a message
    /// without a KEM ciphertext.
    self_wrap: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field(
                "identity_key",
                &hex(&self.signing.verifying_key().to_bytes()),
            )
            .field("private_keys", &"<present>")
            .finish()
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Identity {
    /// Generates fresh key pairs from the OS random number generator.
    pub fn generate() -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        crate::random_bytes(seed.as_mut());
        let signing = SigningKey::from_bytes(&seed);
        crate::random_bytes(seed.as_mut());
        let (kem_secret, kem_public) = XWing::derive_keypair(seed.as_ref());
        Self::assemble(signing, kem_secret, kem_public)
    }

    /// Puts the keys together with the self-wrap key derived from the KEM
    /// private key. (The `hkdf` crate does not wipe its own state; it is
    /// dropped at once.)
    fn assemble(signing: SigningKey, kem_secret: KemSecret, kem_public: KemPublic) -> Self {
        let mut self_wrap = Zeroizing::new([0u8; 32]);
        let mut kem = kem_secret.to_bytes();
        hkdf::Hkdf::<sha2::Sha256>::new(None, &kem)
            .expand(SELF_WRAP_INFO, self_wrap.as_mut())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        kem.as_mut_slice().zeroize();
        Self {
            signing,
            kem_secret,
            kem_public,
            self_wrap,
        }
    }

    /// The public keys to publish, with the KEM key signed by the identity key.
    pub fn public_keys(&self) -> PublicKeys {
        let kem = self.kem_public.to_bytes().to_vec();
        let sig = self.signing.sign(&kem_sig_message(&kem));
        PublicKeys {
            identity: B64(self.signing.verifying_key().to_bytes().to_vec()),
            kem: B64(kem),
            kem_sig: B64(sig.to_bytes().to_vec()),
        }
    }

    /// The Ed25519 identity public key.
    pub fn identity_key(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    /// This identity's own public keys, verified, as a peer would see them.
    pub fn peer_keys(&self) -> PeerKeys {
        PeerKeys {
            identity: self.signing.verifying_key(),
            kem: self.kem_public.clone(),
        }
    }

    pub(crate) fn sign(&self, msg: &[u8]) -> Signature {
        self.signing.sign(msg)
    }

    pub(crate) fn kem_secret(&self) -> &KemSecret {
        &self.kem_secret
    }

    /// The key that wraps this user's own copy of what they send.
    pub(crate) fn self_wrap_key(&self) -> &[u8; 32] {
        &self.self_wrap
    }

    /// The raw private keys (identity, KEM, then the derived self-wrap
    /// key, 32 bytes each). Only for tests that prove secrets never leave
    /// the client (they search the server's database for these bytes);
    /// nothing else may call it.
    #[doc(hidden)]
    #[cfg(feature = "test-secrets")]
    pub fn dangerous_secret_bytes(&self) -> Zeroizing<Vec<u8>> {
        let b = self.to_bundle();
        let mut out = Zeroizing::new(Vec::with_capacity(96));
        out.extend_from_slice(&b[1..]);
        out.extend_from_slice(self.self_wrap.as_ref());
        out
    }

    /// The private keys as bytes, for sealing into a backup.
    pub(crate) fn to_bundle(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(BUNDLE_LEN));
        out.push(BUNDLE_V1);
        out.extend_from_slice(self.signing.as_bytes());
        let mut kem = self.kem_secret.to_bytes();
        out.extend_from_slice(&kem);
        kem.as_mut_slice().zeroize();
        out
    }

    /// Rebuilds an identity from [`Identity::to_bundle`] bytes.
    pub(crate) fn from_bundle(bytes: &[u8]) -> Result<Self> {
        if bytes.len() != BUNDLE_LEN || bytes[0] != BUNDLE_V1 {
            return Err(Error::InvalidKey("private key bundle"));
        }
        let mut seed = Zeroizing::new([0u8; 32]);
        seed.copy_from_slice(&bytes[1..33]);
        let signing = SigningKey::from_bytes(&seed);
        let kem_secret = KemSecret::from_bytes(&bytes[33..65])
            .map_err(|_| Error::InvalidKey("kem private key"))?;
        let kem_public = XWing::sk_to_pk(&kem_secret);
        Ok(Self::assemble(signing, kem_secret, kem_public))
    }
}

fn kem_sig_message(kem: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(KEM_SIG_CONTEXT.len() + kem.len());
    m.extend_from_slice(KEM_SIG_CONTEXT);
    m.extend_from_slice(kem);
    m
}

/// A peer's public keys, checked: the KEM key is signed by the identity key.
#[derive(Clone, PartialEq, Eq)]
pub struct PeerKeys {
    identity: VerifyingKey,
    kem: KemPublic,
}

impl std::fmt::Debug for PeerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerKeys")
            .field("identity", &hex(self.identity.as_bytes()))
            .finish_non_exhaustive()
    }
}

impl PeerKeys {
    /// Checks published keys: lengths, encodings, and the identity key's
    /// signature over the KEM key.
    ///
    /// # Errors
    /// [`Error::InvalidKey`] for bad encodings, [`Error::BadKeySignature`]
    /// when the signature does not verify.
    pub fn verify(keys: &PublicKeys) -> Result<Self> {
        let id: [u8; 32] = keys
            .identity
            .0
            .as_slice()
            .try_into()
            .map_err(|_| Error::InvalidKey("identity key length"))?;
        let identity =
            VerifyingKey::from_bytes(&id).map_err(|_| Error::InvalidKey("identity key"))?;
        let kem = KemPublic::from_bytes(&keys.kem.0).map_err(|_| Error::InvalidKey("kem key"))?;
        let sig = Signature::from_slice(&keys.kem_sig.0)
            .map_err(|_| Error::InvalidKey("kem key signature"))?;
        identity
            .verify_strict(&kem_sig_message(&keys.kem.0), &sig)
            .map_err(|_| Error::BadKeySignature)?;
        Ok(Self { identity, kem })
    }

    /// The Ed25519 identity key.
    pub fn identity_key(&self) -> [u8; 32] {
        self.identity.to_bytes()
    }

    pub(crate) fn verifying_key(&self) -> &VerifyingKey {
        &self.identity
    }

    pub(crate) fn kem(&self) -> &KemPublic {
        &self.kem
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_keys_verify_and_round_trip() {
        let id = Identity::generate();
        let pk = id.public_keys();
        assert_eq!(pk.kem.0.len(), 1216);
        let peer = PeerKeys::verify(&pk).unwrap();
        assert_eq!(peer.identity_key(), id.identity_key());

        let back = Identity::from_bundle(&id.to_bundle()).unwrap();
        assert_eq!(back.public_keys().kem, pk.kem);
        assert_eq!(back.identity_key(), id.identity_key());
    }

    #[test]
    fn swapped_kem_key_is_refused() {
        let a = Identity::generate().public_keys();
        let b = Identity::generate().public_keys();
        let forged = PublicKeys {
            identity: a.identity.clone(),
            kem: b.kem.clone(),
            kem_sig: a.kem_sig.clone(),
        };
        assert!(matches!(
            PeerKeys::verify(&forged),
            Err(Error::BadKeySignature)
        ));
    }

    #[test]
    fn debug_hides_secrets() {
        let id = Identity::generate();
        let dbg = format!("{id:?}");
        assert!(dbg.contains("<present>"));
        let bundle = id.to_bundle();
        assert!(!dbg.contains(&hex(&bundle[1..33])));
    }
}
