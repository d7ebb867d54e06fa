//! The size arithmetic of encrypted file blobs, shared by the client that
//! encrypts them and the server that checks their sizes (and never opens
//! them). The construction itself is in `telepound-crypto`'s `stream`.

/// Plaintext bytes per chunk.
pub const CHUNK: u64 = 64 * 1024;
/// Authentication tag per chunk.
pub const TAG: u64 = 16;
/// Blob header: a version byte and a 19-byte nonce prefix.
pub const HEADER: u64 = 20;

/// Number of chunks for a file of `plain_len` bytes (the last may be empty).
pub fn chunks(plain_len: u64) -> u64 {
    plain_len / CHUNK + 1
}

/// Size of the encrypted blob for a file of `plain_len` bytes.
pub fn blob_len(plain_len: u64) -> u64 {
    HEADER + plain_len + TAG * chunks(plain_len)
}

/// Request body of `POST /v1/blobs`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CreateBlob {
    /// Size of the encrypted blob in bytes.
    pub size: u64,
    /// Who may fetch it (the message's recipients other than the sender).
    pub recipients: Vec<crate::UserName>,
}

/// Answer to `POST /v1/blobs`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CreatedBlob {
    /// The new blob's id (unguessable).
    pub blob_id: String,
}

/// Error body of the blob endpoints.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BlobError {
    /// Stable code.
    pub code: crate::ErrorCode,
    /// Readable detail.
    pub message: String,
}

/// Whether `id` has the shape of a blob id (22 characters of unpadded
/// base64url), checked before it is ever used in a path.
pub fn valid_id(id: &str) -> bool {
    id.len() == 22
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_ids() {
        assert_eq!(blob_len(0), 36);
        assert_eq!(blob_len(CHUNK), 20 + CHUNK + 32);
        assert!(valid_id("AAAAAAAAAAAAAAAAAAAA-_"));
        assert!(!valid_id("../../etc/passwd"));
        assert!(!valid_id("AAAAAAAAAAAAAAAAAAAA/."));
    }
}
