//! Telepound's end-to-end cryptography, sans I/O: bytes and keys in, bytes out.
//!
//! - [`Identity`]: a user's key pairs (Ed25519 identity key that signs, X-Wing
//!   KEM key that receives) and [`PeerKeys`], a peer's verified public keys.
//! - [`backup`]: the private keys sealed under a key derived from OPAQUE's
//!   export key, so only the password can open them, on any machine.
//! - [`opaque`]: the client half of OPAQUE registration and login.
//! - [`envelope`]: sealing a message once for many recipients and opening it.
//! - [`safety`]: the safety number two users compare to verify each other.
//! - [`group`]: signing and verifying group state records.
//!
//! Design decision: the sender's signature is *inside* the encrypted
//! payload, over a payload that names the sender and every recipient. A
//! recipient who re-encrypts a signed payload to someone else cannot make it
//! look addressed to them (the recipient list would not match), and the
//! server, which sees only the outside, learns nothing from the signature.
//! Secrets are zeroized on drop and their `Debug` output never shows them.

pub mod backup;
pub mod envelope;
pub mod group;
pub mod identity;
pub mod opaque;
pub mod safety;
pub mod stream;

pub use envelope::{Attachment, ImageSize, OpenedMessage, Payload, SecretBytes};
pub use identity::{Identity, PeerKeys};

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A key, signature or ciphertext has the wrong length or encoding.
    #[error("invalid key material: {0}")]
    InvalidKey(&'static str),
    /// The KEM key is not signed by the identity key.
    #[error("the published keys are not signed by the identity key")]
    BadKeySignature,
    /// The sealed key backup did not open (wrong password or tampered data).
    #[error("the key backup could not be opened")]
    BackupOpen,
    /// An OPAQUE step failed; during login this means a wrong password.
    #[error("login failed: wrong user name or password")]
    Opaque,
    /// The envelope is not addressed to this user.
    #[error("this message is not addressed to you")]
    NotForMe,
    /// The envelope names a suite this client does not implement.
    #[error(
        "message uses encryption suite {0:?}, which this client does not support; upgrade telepound"
    )]
    UnknownSuite(String),
    /// A file blob in a format version newer than this client's.
    #[error(
        "the file was encrypted by a newer Telepound (file format {0}); upgrade telepound to open it"
    )]
    NewerFileFormat(u8),
    /// Decryption or signature verification failed.
    #[error("message failed authentication: {0}")]
    Tampered(&'static str),
    /// The envelope or payload is not well formed.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The Argon2 parameters are unusable.
    #[error("bad password-stretching parameters: {0}")]
    Ksf(String),
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Fills `buf` from the operating system's CSPRNG (through rand's thread RNG,
/// which is seeded from it).
pub(crate) fn random_bytes(buf: &mut [u8]) {
    use rand::Rng;
    rand::rng().fill_bytes(buf);
}

/// XChaCha20-Poly1305 with a random 192-bit nonce prefixed to the output.
pub(crate) mod xchacha {
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    use chacha20poly1305::{XChaCha20Poly1305, XNonce};

    /// Nonce length.
    pub const NONCE_LEN: usize = 24;

    /// Encrypts `plaintext` under `key`, binding `aad`; returns nonce ‖ ciphertext.
    pub fn seal(key: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let cipher = XChaCha20Poly1305::new(key.into());
        let mut nonce = [0u8; NONCE_LEN];
        crate::random_bytes(&mut nonce);
        let ct = cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            // Encryption fails only for inputs longer than 256 GiB.
            .expect("plaintext within XChaCha20-Poly1305 limits");
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Opens nonce ‖ ciphertext from [`seal`]; `None` if it does not verify.
    pub fn open(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN + 16 {
            return None;
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        XChaCha20Poly1305::new(key.into())
            .decrypt(&XNonce::from(nonce), Payload { msg: ct, aad })
            .ok()
    }
}
