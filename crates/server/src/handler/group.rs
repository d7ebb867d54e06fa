//! Group requests: create, add, remove, leave, promote, list, info, send.
//! The rules themselves are applied by the store's writer, in the same
//! transaction as the change (see `store::groups`).

use std::sync::Arc;

use serde_json::value::RawValue;
use telepound_protocol::message::GroupInfo;
use telepound_protocol::{ErrorCode, GroupName, MsgId, ServerMessage, UserName};

use super::{HandlerError, HandlerResult, MAX_LIST};
use crate::server::Shared;
use crate::store::groups::{GroupDone, GroupOp, GroupRefusal};
use crate::store::{EntryKind, NewEntry};

/// Users named in a request must exist.
async fn check_users(shared: &Shared, users: &[UserName]) -> Result<(), HandlerError> {
    if users.len() > MAX_LIST {
        return Err(HandlerError::with(
            ErrorCode::Malformed,
            format!("at most {MAX_LIST} users per request"),
        ));
    }
    let found = shared.store.users_exist(users).await?;
    match users.iter().zip(found).find(|(_, f)| !f) {
        Some((u, _)) => Err(HandlerError::with(
            ErrorCode::UnknownUser,
            format!("User Not Found: {u}"),
        )),
        None => Ok(()),
    }
}

/// Runs a change and answers with the group as it is now.
async fn change(shared: &Shared, rid: Option<u64>, group: GroupName, op: GroupOp) -> HandlerResult {
    let result = shared
        .store
        .group(op, shared.config.max_group_members, crate::now_ms())
        .await?;
    match result {
        Ok(GroupDone::Members(members)) => Ok(ServerMessage::Group {
            rid,
            info: GroupInfo { group, members },
        }),
        Ok(GroupDone::Sent(_)) => Err(HandlerError::new(ErrorCode::Internal)),
        Err(GroupRefusal::Rule(code, message)) => Err(HandlerError::with(code, message)),
        Err(GroupRefusal::Membership(_)) => Err(HandlerError::new(ErrorCode::Internal)),
    }
}

/// `group_create`.
///
/// # Errors
/// `unknown_user`, `group_exists`, `group_full`, `internal`.
pub async fn create(
    shared: &Shared,
    user: &UserName,
    rid: Option<u64>,
    group: GroupName,
    members: Vec<UserName>,
) -> HandlerResult {
    check_users(shared, &members).await?;
    let op = GroupOp::Create {
        group: group.clone(),
        creator: user.clone(),
        members,
    };
    let r = change(shared, rid, group.clone(), op).await;
    if r.is_ok() {
        tracing::info!(group = %group, "group created");
    }
    r
}

/// `group_add`.
///
/// # Errors
/// `unknown_user`, `unknown_group`, `not_an_admin`, `group_full`.
pub async fn add(
    shared: &Shared,
    user: &UserName,
    rid: Option<u64>,
    group: GroupName,
    users: Vec<UserName>,
) -> HandlerResult {
    check_users(shared, &users).await?;
    let op = GroupOp::Add {
        group: group.clone(),
        actor: user.clone(),
        users,
    };
    change(shared, rid, group, op).await
}

/// `group_remove`.
///
/// # Errors
/// `unknown_group`, `not_an_admin`, `cannot_remove_owner`.
pub async fn remove(
    shared: &Shared,
    user: &UserName,
    rid: Option<u64>,
    group: GroupName,
    users: Vec<UserName>,
) -> HandlerResult {
    if users.len() > MAX_LIST {
        return Err(HandlerError::with(
            ErrorCode::Malformed,
            format!("at most {MAX_LIST} users per request"),
        ));
    }
    let op = GroupOp::Remove {
        group: group.clone(),
        actor: user.clone(),
        users,
    };
    change(shared, rid, group, op).await
}

/// `group_leave`: answers with the group as it is after (without the user).
///
/// # Errors
/// `unknown_group`.
pub async fn leave(
    shared: &Shared,
    user: &UserName,
    rid: Option<u64>,
    group: GroupName,
) -> HandlerResult {
    let op = GroupOp::Leave {
        group: group.clone(),
        user: user.clone(),
    };
    change(shared, rid, group, op).await
}

/// `group_promote`.
///
/// # Errors
/// `unknown_group`, `not_an_admin`.
pub async fn promote(
    shared: &Shared,
    user: &UserName,
    rid: Option<u64>,
    group: GroupName,
    target: UserName,
) -> HandlerResult {
    let op = GroupOp::Promote {
        group: group.clone(),
        actor: user.clone(),
        user: target,
    };
    change(shared, rid, group, op).await
}

/// `group_list`.
///
/// # Errors
/// `internal`.
pub async fn list(shared: &Shared, user: &UserName, rid: Option<u64>) -> HandlerResult {
    Ok(ServerMessage::Groups {
        rid,
        groups: shared.store.groups_of(user).await?,
    })
}

/// `group_info`, for members only.
///
/// # Errors
/// `unknown_group` (also for a group the user is not in).
pub async fn info(
    shared: &Shared,
    user: &UserName,
    rid: Option<u64>,
    group: GroupName,
) -> HandlerResult {
    match shared.store.group_members(&group).await? {
        Some(members) if members.iter().any(|m| &m.user == user) => Ok(ServerMessage::Group {
            rid,
            info: GroupInfo { group, members },
        }),
        _ => Err(HandlerError::with(
            ErrorCode::UnknownGroup,
            format!("no group #{group}, or you are not in it"),
        )),
    }
}

/// `group_send`: stored for every member but the sender, in one
/// transaction with the check that the envelope was wrapped for exactly
/// the current membership; otherwise the answer is that membership.
///
/// # Errors
/// `sender_mismatch`, `malformed`, `unknown_group`, `internal`.
#[allow(clippy::too_many_arguments)]
pub async fn send(
    shared: &Arc<Shared>,
    user: &UserName,
    rid: Option<u64>,
    msg_id: MsgId,
    from: UserName,
    group: GroupName,
    mut recipients: Vec<UserName>,
    envelope: Box<RawValue>,
) -> HandlerResult {
    if &from != user {
        return Err(HandlerError::with(
            ErrorCode::SenderMismatch,
            format!("you are logged in as {user}, not {from}"),
        ));
    }
    let n = recipients.len();
    recipients.sort();
    recipients.dedup();
    if recipients.len() != n || n > shared.config.max_group_members {
        return Err(HandlerError::with(
            ErrorCode::Malformed,
            "recipients must be distinct members",
        ));
    }
    let now = crate::now_ms();
    let expires_at = now + shared.config.message_ttl.as_millis() as i64;
    let envelope: Arc<str> = Arc::from(Box::<str>::from(envelope));
    let entries = recipients
        .iter()
        .filter(|r| *r != user)
        .map(|r| NewEntry {
            recipient: r.clone(),
            kind: EntryKind::GroupMessage,
            sender: user.clone(),
            msg_id,
            server_ts: now,
            expires_at,
            envelope: envelope.clone(),
        })
        .collect();
    let op = GroupOp::Send {
        group: group.clone(),
        sender: user.clone(),
        recipients,
        entries,
    };
    match shared
        .store
        .group(op, shared.config.max_group_members, now)
        .await?
    {
        Ok(GroupDone::Sent(_)) => {
            shared
                .metrics
                .messages_accepted
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(ServerMessage::Accepted {
                rid,
                msg_id,
                server_ts: now,
                recipient_online: false,
            })
        }
        Ok(GroupDone::Members(_)) => Err(HandlerError::new(ErrorCode::Internal)),
        Err(GroupRefusal::Membership(members)) => Ok(ServerMessage::Membership {
            rid,
            group,
            members,
        }),
        Err(GroupRefusal::Rule(code, message)) => Err(HandlerError::with(code, message)),
    }
}
