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
    // Who is online is read before when they were last seen: a user who
    // leaves records "last seen" first and leaves the hub second, so one
    // found offline here has their time recorded by now. Read the other
    // way round, a user leaving in between would show offline with no time.
    let online: std::collections::HashSet<UserName> = users
        .iter()
        .filter(|u| shared.hub.is_online(u))
        .cloned()
        .collect();
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
                let online = online.contains(&user);
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
