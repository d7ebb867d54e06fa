//! `presence`: online now, or when last seen (the original's status column).

use telepound_protocol::message::PresenceInfo;
use telepound_protocol::{ErrorCode, ServerMessage, UserName};

use super::{HandlerError, HandlerResult, MAX_LIST};
use crate::server::Shared;

/// Reports each user's presence; names without an account are listed under
/// `unknown`.
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
    let seen = shared.store.last_seen(&users).await?;
    let unknown = users
        .into_iter()
        .filter(|u| !seen.iter().any(|(n, _)| n == u))
        .collect();
    Ok(ServerMessage::Presence {
        rid,
        users: seen
            .into_iter()
            .map(|(user, last_seen)| {
                let online = shared.hub.is_online(&user);
                PresenceInfo {
                    online,
                    last_seen: if online { None } else { last_seen },
                    user,
                }
            })
            .collect(),
        unknown,
    })
}
