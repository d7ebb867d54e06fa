//! `register_start` / `register_finish`: OPAQUE registration plus the new
//! user's public keys and sealed key backup.

use opaque_ke::{RegistrationRequest, RegistrationUpload, ServerRegistration};
use telepound_protocol::auth::{KsfParams, Suite};
use telepound_protocol::message::{B64, PublicKeys};
use telepound_protocol::{ErrorCode, ServerMessage, UserName};

use super::{HandlerError, HandlerResult};
use crate::server::Shared;
use crate::store::NewUser;

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
    if keys.identity.0.len() != 32 || keys.kem.0.len() != 1216 || keys.kem_sig.0.len() != 64 {
        return Err(HandlerError::with(
            ErrorCode::BadKey,
            "public keys must be a 32-byte Ed25519 key, a 1216-byte X-Wing key and a 64-byte signature",
        ));
    }
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
