//! File encryption in chunks: the STREAM construction (Hoang, Reyhanitabar,
//! Rogaway, Vizár) over XChaCha20-Poly1305, with a fresh key per file.
//!
//! ```text
//! blob   = version(1) ‖ nonce_prefix(19) ‖ chunk_0 ‖ … ‖ chunk_n
//! chunk  = XChaCha20-Poly1305(key, nonce = prefix ‖ counter_be32 ‖ last, plaintext)
//! ```
//!
//! Every chunk holds [`CHUNK`] bytes of plaintext except the last, which
//! holds the rest (possibly nothing) and is the only one sealed with the
//! `last` flag. So a reordered, dropped, repeated or tampered chunk fails,
//! and so does a blob cut short (its last chunk is missing) or extended.
//! The layout is deterministic given the key and prefix, which is what lets
//! an interrupted upload resume by re-encrypting from the cut.

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use crate::{Error, Result};

pub use telepound_protocol::blob::{blob_len, chunks};

/// Plaintext bytes per chunk.
pub const CHUNK: usize = telepound_protocol::blob::CHUNK as usize;
/// Authentication tag per chunk.
pub const TAG: usize = telepound_protocol::blob::TAG as usize;
/// Blob header: version and nonce prefix.
pub const HEADER: usize = telepound_protocol::blob::HEADER as usize;
const PREFIX: usize = HEADER - 1;
const VERSION: u8 = 1;

/// A file's key and nonce prefix. Zeroized on drop.
#[derive(Clone)]
pub struct FileKey {
    key: Zeroizing<[u8; 32]>,
    prefix: [u8; PREFIX],
}

impl std::fmt::Debug for FileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileKey(<secret>)")
    }
}

impl FileKey {
    /// A fresh random key and prefix.
    pub fn generate() -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        crate::random_bytes(key.as_mut());
        let mut prefix = [0u8; PREFIX];
        crate::random_bytes(&mut prefix);
        Self { key, prefix }
    }

    /// Rebuilds a key from its 32 bytes and a blob header.
    ///
    /// # Errors
    /// [`Error::NewerFileFormat`] for a version above this one's (made by a
    /// newer client: upgrading helps), [`Error::InvalidKey`] for a wrong
    /// length or a version that never existed.
    pub fn from_parts(key: &[u8], header: &[u8]) -> Result<Self> {
        let key: [u8; 32] = key
            .try_into()
            .map_err(|_| Error::InvalidKey("file key length"))?;
        match header.first() {
            _ if header.len() != HEADER => return Err(Error::InvalidKey("blob header")),
            Some(&v) if v > VERSION => return Err(Error::NewerFileFormat(v)),
            Some(&VERSION) => {}
            _ => return Err(Error::InvalidKey("blob header")),
        }
        let mut prefix = [0u8; PREFIX];
        prefix.copy_from_slice(&header[1..]);
        Ok(Self {
            key: Zeroizing::new(key),
            prefix,
        })
    }

    /// The 32 key bytes, to put in the (encrypted) attachment descriptor.
    pub fn key_bytes(&self) -> &[u8; 32] {
        &self.key
    }

    /// The blob header.
    pub fn header(&self) -> [u8; HEADER] {
        let mut h = [0u8; HEADER];
        h[0] = VERSION;
        h[1..].copy_from_slice(&self.prefix);
        h
    }

    fn nonce(&self, counter: u64, last: bool) -> Result<XNonce> {
        let counter =
            u32::try_from(counter).map_err(|_| Error::Malformed("file too large".into()))?;
        let mut n = [0u8; 24];
        n[..PREFIX].copy_from_slice(&self.prefix);
        n[PREFIX..PREFIX + 4].copy_from_slice(&counter.to_be_bytes());
        n[23] = u8::from(last);
        Ok(XNonce::from(n))
    }

    /// Seals chunk number `index`; `plain` must be [`CHUNK`] bytes unless
    /// `last`.
    ///
    /// # Errors
    /// [`Error::Malformed`] for a wrongly sized chunk or more than 2^32
    /// chunks.
    pub fn seal_chunk(&self, index: u64, plain: &[u8], last: bool) -> Result<Vec<u8>> {
        if (!last && plain.len() != CHUNK) || plain.len() > CHUNK {
            return Err(Error::Malformed("chunk of the wrong size".into()));
        }
        let mut buf = Vec::with_capacity(plain.len() + TAG);
        buf.extend_from_slice(plain);
        XChaCha20Poly1305::new((&*self.key).into())
            .encrypt_in_place(&self.nonce(index, last)?, b"", &mut buf)
            .map_err(|_| Error::Malformed("chunk too large".into()))?;
        Ok(buf)
    }

    /// Opens chunk number `index`.
    ///
    /// # Errors
    /// [`Error::Tampered`] when it does not authenticate (altered, moved,
    /// or the wrong `last`).
    pub fn open_chunk(&self, index: u64, sealed: &[u8], last: bool) -> Result<Zeroizing<Vec<u8>>> {
        let mut buf = Zeroizing::new(sealed.to_vec());
        XChaCha20Poly1305::new((&*self.key).into())
            .decrypt_in_place(&self.nonce(index, last)?, b"", &mut *buf)
            .map_err(|_| Error::Tampered("file chunk"))?;
        Ok(buf)
    }
}

/// Where chunk `index` of a file of `plain_len` bytes sits in the blob:
/// `(offset, sealed length, last)`.
pub fn chunk_span(plain_len: u64, index: u64) -> (u64, usize, bool) {
    let n = chunks(plain_len);
    let last = index + 1 == n;
    let plain = if last {
        (plain_len - index * CHUNK as u64) as usize
    } else {
        CHUNK
    };
    let offset = HEADER as u64 + index * (CHUNK + TAG) as u64;
    (offset, plain + TAG, last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encrypt(key: &FileKey, data: &[u8]) -> Vec<u8> {
        let mut out = key.header().to_vec();
        let n = chunks(data.len() as u64);
        for i in 0..n {
            let start = (i as usize) * CHUNK;
            let end = (start + CHUNK).min(data.len());
            out.extend(key.seal_chunk(i, &data[start..end], i + 1 == n).unwrap());
        }
        assert_eq!(out.len() as u64, blob_len(data.len() as u64));
        out
    }

    fn decrypt(key_bytes: &[u8], blob: &[u8], plain_len: u64) -> Result<Vec<u8>> {
        if blob.len() as u64 != blob_len(plain_len) {
            return Err(Error::Tampered("length"));
        }
        let key = FileKey::from_parts(key_bytes, &blob[..HEADER])?;
        let mut out = Vec::new();
        for i in 0..chunks(plain_len) {
            let (off, len, last) = chunk_span(plain_len, i);
            out.extend_from_slice(&key.open_chunk(
                i,
                &blob[off as usize..off as usize + len],
                last,
            )?);
        }
        Ok(out)
    }

    #[test]
    fn round_trips_every_size_that_matters() {
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 17] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let key = FileKey::generate();
            let blob = encrypt(&key, &data);
            assert_eq!(
                decrypt(key.key_bytes(), &blob, len as u64).unwrap(),
                data,
                "{len}"
            );
        }
    }

    #[test]
    fn a_newer_format_says_to_upgrade() {
        let key = FileKey::generate();
        let mut header = key.header();
        header[0] = VERSION + 1;
        let e = FileKey::from_parts(key.key_bytes(), &header).unwrap_err();
        assert!(matches!(e, Error::NewerFileFormat(2)), "{e:?}");
        assert!(e.to_string().contains("newer Telepound") && e.to_string().contains("upgrade"));
        header[0] = 0;
        let e = FileKey::from_parts(key.key_bytes(), &header).unwrap_err();
        assert!(matches!(e, Error::InvalidKey(_)), "{e:?}");
        assert!(FileKey::from_parts(key.key_bytes(), &header[..5]).is_err());
    }

    #[test]
    fn tampering_reordering_and_truncation_fail() {
        let data = vec![7u8; 2 * CHUNK + 5];
        let key = FileKey::generate();
        let blob = encrypt(&key, &data);
        let len = data.len() as u64;

        let mut t = blob.clone();
        t[HEADER + 10] ^= 1;
        assert!(decrypt(key.key_bytes(), &t, len).is_err(), "flipped bit");

        // Swap the first two chunks.
        let c = CHUNK + TAG;
        let mut t = blob.clone();
        let (a, b) = (
            blob[HEADER..HEADER + c].to_vec(),
            blob[HEADER + c..HEADER + 2 * c].to_vec(),
        );
        t[HEADER..HEADER + c].copy_from_slice(&b);
        t[HEADER + c..HEADER + 2 * c].copy_from_slice(&a);
        assert!(decrypt(key.key_bytes(), &t, len).is_err(), "reordered");

        // Cut at a chunk boundary and claim the file was that long.
        let cut = &blob[..HEADER + 2 * c];
        let key2 = FileKey::from_parts(key.key_bytes(), &cut[..HEADER]).unwrap();
        assert!(
            key2.open_chunk(1, &cut[HEADER + c..], true).is_err(),
            "truncated: not a last chunk"
        );

        assert!(decrypt(&[0u8; 32], &blob, len).is_err(), "wrong key");
    }
}
