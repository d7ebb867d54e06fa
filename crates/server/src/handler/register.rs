//! `register_start` / `register_finish`: OPAQUE registration plus the new
//! user's public keys and sealed key backup.

use opaque_ke::{RegistrationRequest, RegistrationUpload, ServerRegistration};
use telepound_protocol::auth::{KEM_SIG_CONTEXT, KsfParams, Suite};
use telepound_protocol::message::{B64, PublicKeys};
use telepound_protocol::{ErrorCode, ServerMessage, UserName};

use super::{HandlerError, HandlerResult};
use crate::server::Shared;
use crate::store::NewUser;

/// Checks the published keys' shapes and that the identity key signed the
/// KEM key, so the directory never serves keys a client would reject.
fn check_keys(keys: &PublicKeys) -> Result<(), HandlerError> {
    let bad = || {
        HandlerError::with(
            ErrorCode::BadKey,
            "public keys must be a 32-byte Ed25519 key, a 1216-byte X-Wing key, and the first's signature over the second",
        )
    };
    let id: [u8; 32] = keys.identity.0.as_slice().try_into().map_err(|_| bad())?;
    if keys.kem.0.len() != 1216 {
        return Err(bad());
    }
    let identity = ed25519_dalek::VerifyingKey::from_bytes(&id).map_err(|_| bad())?;
    let sig = ed25519_dalek::Signature::from_slice(&keys.kem_sig.0).map_err(|_| bad())?;
    let mut signed = KEM_SIG_CONTEXT.to_vec();
    signed.extend_from_slice(&keys.kem.0);
    identity.verify_strict(&signed, &sig).map_err(|_| bad())
}

/// Largest sealed key backup accepted, in bytes.
pub const MAX_BACKUP: usize = 4096;

/// Answers the client's blinded password with the OPAQUE evaluation. A taken
/// name is refused here, before the client spends any password-stretching.
///
/// # Errors
/// `user_taken`, `bad_key` for a malformed request, `internal`.
pub async fn start(
    shared: &Shared,
    rid: Option<u64>,
    user: &UserName,
    request: &[u8],
) -> HandlerResult {
    if shared.user_exists(user).await? {
        return Err(HandlerError::new(ErrorCode::UserTaken));
    }
    let request = RegistrationRequest::<Suite>::deserialize(request).map_err(|_| {
        HandlerError::with(ErrorCode::BadKey, "malformed OPAQUE registration request")
    })?;
    let r = ServerRegistration::<Suite>::start(&shared.opaque, request, user.as_str().as_bytes())
        .map_err(|_| {
        HandlerError::with(ErrorCode::BadKey, "OPAQUE registration request refused")
    })?;
    Ok(ServerMessage::RegisterChallenge {
        rid,
        response: B64(r.message.serialize().to_vec()),
        min_ksf: shared.config.min_ksf,
    })
}

/// Stores the account: the OPAQUE record, the Argon2 parameters, the public
/// keys and the sealed backup.
///
/// # Errors
/// `user_taken`, `bad_key` for malformed keys or record, `internal`.
pub async fn finish(
    shared: &Shared,
    rid: Option<u64>,
    user: UserName,
    upload: &[u8],
    ksf: KsfParams,
    keys: PublicKeys,
    backup: Vec<u8>,
) -> HandlerResult {
    let upload = RegistrationUpload::<Suite>::deserialize(upload).map_err(|_| {
        HandlerError::with(ErrorCode::BadKey, "malformed OPAQUE registration record")
    })?;
    ksf.validate()
        .map_err(|e| HandlerError::with(ErrorCode::BadKey, e))?;
    let min = shared.config.min_ksf;
    if !ksf.meets(&min) {
        return Err(HandlerError::with(
            ErrorCode::BadKey,
            format!("password stretching too weak: this server requires at least argon2 {min}"),
        ));
    }
    check_keys(&keys)?;
    if backup.is_empty() || backup.len() > MAX_BACKUP {
        return Err(HandlerError::with(
            ErrorCode::BadKey,
            "key backup size out of range",
        ));
    }
    let record = ServerRegistration::<Suite>::finish(upload);
    let created = shared
        .store
        .create_user(&NewUser {
            name: user.clone(),
            opaque_record: record.serialize().to_vec(),
            ksf,
            keys,
            key_backup: backup,
            created_at: crate::now_ms(),
        })
        .await?;
    if !created {
        return Err(HandlerError::new(ErrorCode::UserTaken));
    }
    tracing::info!(user = %user, "account created");
    Ok(ServerMessage::Registered { rid, user })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Signer;

    fn keys(sign_with: &ed25519_dalek::SigningKey, kem: Vec<u8>) -> PublicKeys {
        let mut signed = KEM_SIG_CONTEXT.to_vec();
        signed.extend_from_slice(&kem);
        PublicKeys {
            identity: B64(sign_with.verifying_key().to_bytes().to_vec()),
            kem_sig: B64(sign_with.sign(&signed).to_bytes().to_vec()),
            kem: B64(kem),
        }
    }

    #[test]
    fn published_keys_must_be_signed_by_the_identity_key() {
        let id = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let other = ed25519_dalek::SigningKey::from_bytes(&[8; 32]);
        assert!(check_keys(&keys(&id, vec![1; 1216])).is_ok());
        let mut forged = keys(&other, vec![1; 1216]);
        forged.identity = B64(id.verifying_key().to_bytes().to_vec());
        assert_eq!(check_keys(&forged).unwrap_err().code, ErrorCode::BadKey);
        assert!(check_keys(&keys(&id, vec![1; 100])).is_err(), "kem length");
    }
}
