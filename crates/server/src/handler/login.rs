//! `login_start` / `login_finish` (OPAQUE) and `resume` (session token).

use std::time::Instant;

use opaque_ke::{
    CredentialFinalization, CredentialRequest, ServerLogin, ServerLoginParameters,
    ServerRegistration,
};
use rand_core_06::OsRng;
use sha2::{Digest, Sha256};
use telepound_protocol::auth::{LOGIN_CONTEXT, Suite, identifiers};
use telepound_protocol::message::{B64, PublicKeys};
use telepound_protocol::{ErrorCode, ServerMessage, UserName};

use super::{HandlerError, HandlerResult};
use crate::server::Shared;

/// A login between its two messages, kept by the connection.
pub struct PendingLogin {
    user: UserName,
    state: ServerLogin<Suite>,
    backup: Vec<u8>,
    keys: PublicKeys,
    started: Instant,
}

/// Evaluates the client's blinded password and starts the key exchange.
///
/// # Errors
/// `unknown_user`, `bad_key` for a malformed request, `internal`.
pub async fn start(
    shared: &Shared,
    rid: Option<u64>,
    user: UserName,
    request: &[u8],
) -> Result<(ServerMessage, PendingLogin), HandlerError> {
    let Some(record) = shared.store.user(&user).await? else {
        return Err(HandlerError::new(ErrorCode::UnknownUser));
    };
    let request = CredentialRequest::<Suite>::deserialize(request).map_err(|_| {
        HandlerError::with(ErrorCode::BadKey, "malformed OPAQUE credential request")
    })?;
    let password_file =
        ServerRegistration::<Suite>::deserialize(&record.opaque_record).map_err(|_| {
            tracing::error!(user = %user, "stored OPAQUE record does not decode");
            HandlerError::new(ErrorCode::Internal)
        })?;
    let r = ServerLogin::start(
        &mut OsRng,
        &shared.opaque,
        Some(password_file),
        request,
        user.as_str().as_bytes(),
        ServerLoginParameters {
            context: Some(LOGIN_CONTEXT),
            identifiers: identifiers(&user),
        },
    )
    .map_err(|_| HandlerError::with(ErrorCode::BadKey, "OPAQUE credential request refused"))?;
    Ok((
        ServerMessage::LoginChallenge {
            rid,
            response: B64(r.message.serialize().to_vec()),
            ksf: record.ksf,
        },
        PendingLogin {
            user,
            state: r.state,
            backup: record.key_backup,
            keys: record.keys,
            started: Instant::now(),
        },
    ))
}

/// Verifies the client's key-exchange MAC (proof of the password) and
/// issues a resume token. Returns the user on success.
///
/// # Errors
/// `auth_failed` for a wrong password or an expired attempt, `bad_key`,
/// `internal`.
pub async fn finish(
    shared: &Shared,
    rid: Option<u64>,
    pending: PendingLogin,
    finalization: &[u8],
) -> Result<(ServerMessage, UserName), HandlerError> {
    if pending.started.elapsed() > shared.config.login_timeout {
        return Err(HandlerError::with(
            ErrorCode::AuthFailed,
            "login took too long; try again",
        ));
    }
    let fin = CredentialFinalization::<Suite>::deserialize(finalization)
        .map_err(|_| HandlerError::with(ErrorCode::BadKey, "malformed OPAQUE finalization"))?;
    let mut done = pending
        .state
        .finish(
            fin,
            ServerLoginParameters {
                context: Some(LOGIN_CONTEXT),
                identifiers: identifiers(&pending.user),
            },
        )
        .map_err(|_| HandlerError::new(ErrorCode::AuthFailed))?;
    // OPAQUE's session key is not used (the token below is the session);
    // opaque-ke's result does not wipe it.
    zeroize::Zeroize::zeroize(done.session_key.as_mut_slice());

    let mut token = [0u8; 32];
    {
        use rand::Rng;
        rand::rng().fill_bytes(&mut token);
    }
    let ttl = shared.config.session_ttl;
    shared
        .store
        .create_session(
            &Sha256::digest(token),
            &pending.user,
            crate::now_ms() + ttl.as_millis() as i64,
        )
        .await?;
    Ok((
        ServerMessage::LoginOk {
            rid,
            user: pending.user.clone(),
            backup: B64(pending.backup),
            keys: pending.keys,
            token: B64(token.to_vec()),
            token_ttl_secs: ttl.as_secs(),
        },
        pending.user,
    ))
}

/// Logs a connection in with a token from an earlier `login_ok`.
///
/// # Errors
/// `invalid_token` when the token is unknown, expired or another user's.
pub async fn resume(
    shared: &Shared,
    rid: Option<u64>,
    user: UserName,
    token: &[u8],
) -> HandlerResult {
    let owner = shared
        .store
        .session_user(&Sha256::digest(token), crate::now_ms())
        .await?;
    if owner.as_ref() != Some(&user) {
        return Err(HandlerError::new(ErrorCode::InvalidToken));
    }
    Ok(ServerMessage::Resumed { rid, user })
}
