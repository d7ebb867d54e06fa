//! `keys`: the key directory.

use telepound_protocol::message::UserKeys;
use telepound_protocol::{ErrorCode, ServerMessage, UserName};

use super::{HandlerError, HandlerResult, MAX_LIST};
use crate::server::Shared;

/// Returns the published keys of `users`; names without an account are
/// listed under `unknown`.
///
/// # Errors
/// `malformed` for too many names, `internal`.
pub async fn handle(shared: &Shared, users: Vec<UserName>, rid: Option<u64>) -> HandlerResult {
    if users.len() > MAX_LIST {
        return Err(HandlerError::with(
            ErrorCode::Malformed,
            format!("at most {MAX_LIST} users per request"),
        ));
    }
    let found = shared.store.public_keys(&users).await?;
    let unknown = users
        .into_iter()
        .filter(|u| !found.iter().any(|(n, _)| n == u))
        .collect();
    Ok(ServerMessage::Keys {
        rid,
        keys: found
            .into_iter()
            .map(|(user, keys)| UserKeys { user, keys })
            .collect(),
        unknown,
    })
}
