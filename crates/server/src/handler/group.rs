//! Group requests: create, add, remove, leave, promote, list, info, send.
//! The rules themselves are applied by the store's writer, in the same
//! transaction as the change (see `store::groups`). Each change carries the
//! record its actor signed; its signature is checked here, under the
//! actor's published identity key, before the writer sees it.

use std::sync::Arc;

use serde_json::value::RawValue;
use telepound_protocol::group::{ChangeKind, GroupRecord, MAX_RECORDS_PER_ANSWER};
use telepound_protocol::message::GroupInfo;
use telepound_protocol::{ErrorCode, GroupName, MsgId, ServerMessage, UserName};

use super::{HandlerError, HandlerResult, MAX_LIST};
use crate::server::Shared;
use crate::store::groups::{ChangeOp, GroupDone, GroupOp, GroupRefusal};
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

fn bad_record(message: impl Into<String>) -> HandlerError {
    HandlerError::with(ErrorCode::BadRecord, message)
}

/// Checks that `record` is for this request and signed by `user`.
async fn check_record(
    shared: &Shared,
    user: &UserName,
    group: &GroupName,
    kind: ChangeKind,
    record: &GroupRecord,
) -> Result<(), HandlerError> {
    record.check_shape().map_err(bad_record)?;
    if &record.group != group || record.change.kind != kind || &record.change.actor != user {
        return Err(bad_record(format!(
            "the signed record is not a {} by {user} in #{group}",
            kind.request()
        )));
    }
    let keys = shared.store.public_keys(std::slice::from_ref(user)).await?;
    let bad_sig = || bad_record("the record's signature does not verify under your identity key");
    let (_, keys) = keys.first().ok_or_else(bad_sig)?;
    let id: [u8; 32] = keys
        .identity
        .0
        .as_slice()
        .try_into()
        .map_err(|_| bad_sig())?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&id).map_err(|_| bad_sig())?;
    let sig = ed25519_dalek::Signature::from_slice(&record.sig.0).map_err(|_| bad_sig())?;
    key.verify_strict(&record.signed_bytes(), &sig)
        .map_err(|_| bad_sig())
}

/// Checks the record, runs the change and answers with the group as it is
/// now.
async fn change(
    shared: &Shared,
    user: &UserName,
    rid: Option<u64>,
    group: GroupName,
    kind: ChangeKind,
    users: Vec<UserName>,
    record: Box<GroupRecord>,
) -> HandlerResult {
    check_record(shared, user, &group, kind, &record).await?;
    let now = crate::now_ms();
    let op = GroupOp::Change(Box::new(ChangeOp {
        group: group.clone(),
        actor: user.clone(),
        kind,
        users,
        record_json: Arc::from(telepound_protocol::codec::encode(&record)),
        hash: record.hash(),
        record: *record,
        msg_id: MsgId::new(),
        expires_at: now + shared.config.message_ttl.as_millis() as i64,
    }));
    let result = shared
        .store
        .group(op, shared.config.max_group_members, now)
        .await?;
    match result {
        Ok(GroupDone::Changed(c)) => Ok(ServerMessage::Group {
            rid,
            info: GroupInfo {
                group,
                epoch: c.epoch,
                members: c.members,
            },
            records: Vec::new(),
        }),
        Ok(GroupDone::Sent(_)) => Err(HandlerError::new(ErrorCode::Internal)),
        Err(GroupRefusal::Rule(code, message)) => Err(HandlerError::with(code, message)),
        Err(GroupRefusal::Membership(_)) => Err(HandlerError::new(ErrorCode::Internal)),
    }
}

/// `group_create`.
///
/// # Errors
/// `unknown_user`, `group_exists`, `group_full`, `bad_record`, `internal`.
pub async fn create(
    shared: &Shared,
    user: &UserName,
    rid: Option<u64>,
    group: GroupName,
    members: Vec<UserName>,
    record: Box<GroupRecord>,
) -> HandlerResult {
    check_users(shared, &members).await?;
    let r = change(
        shared,
        user,
        rid,
        group.clone(),
        ChangeKind::Created,
        members,
        record,
    )
    .await;
    if r.is_ok() {
        tracing::info!(group = %group, "group created");
    }
    r
}

/// `group_add`.
///
/// # Errors
/// `unknown_user`, `unknown_group`, `not_an_admin`, `group_full`,
/// `group_changed`, `bad_record`.
pub async fn add(
    shared: &Shared,
    user: &UserName,
    rid: Option<u64>,
    group: GroupName,
    users: Vec<UserName>,
    record: Box<GroupRecord>,
) -> HandlerResult {
    check_users(shared, &users).await?;
    change(shared, user, rid, group, ChangeKind::Added, users, record).await
}

/// `group_remove`.
///
/// # Errors
/// `unknown_group`, `not_an_admin`, `cannot_remove_owner`, `group_changed`,
/// `bad_record`.
pub async fn remove(
    shared: &Shared,
    user: &UserName,
    rid: Option<u64>,
    group: GroupName,
    users: Vec<UserName>,
    record: Box<GroupRecord>,
) -> HandlerResult {
    if users.len() > MAX_LIST {
        return Err(HandlerError::with(
            ErrorCode::Malformed,
            format!("at most {MAX_LIST} users per request"),
        ));
    }
    change(shared, user, rid, group, ChangeKind::Removed, users, record).await
}

/// `group_leave`: answers with the group as it is after (without the user).
///
/// # Errors
/// `unknown_group`, `group_changed`, `bad_record`.
pub async fn leave(
    shared: &Shared,
    user: &UserName,
    rid: Option<u64>,
    group: GroupName,
    record: Box<GroupRecord>,
) -> HandlerResult {
    change(
        shared,
        user,
        rid,
        group,
        ChangeKind::Left,
        Vec::new(),
        record,
    )
    .await
}

/// `group_promote`.
///
/// # Errors
/// `unknown_group`, `not_an_admin`, `group_changed`, `bad_record`.
pub async fn promote(
    shared: &Shared,
    user: &UserName,
    rid: Option<u64>,
    group: GroupName,
    target: UserName,
    record: Box<GroupRecord>,
) -> HandlerResult {
    change(
        shared,
        user,
        rid,
        group,
        ChangeKind::Promoted,
        vec![target],
        record,
    )
    .await
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

/// `group_info`, for members only: the members, and the signed records
/// after `since` (absent: from the one that last added the user).
///
/// # Errors
/// `unknown_group` (also for a group the user is not in).
pub async fn info(
    shared: &Shared,
    user: &UserName,
    rid: Option<u64>,
    group: GroupName,
    since: Option<u64>,
) -> HandlerResult {
    match shared
        .store
        .group_view(&group, user, since, MAX_RECORDS_PER_ANSWER)
        .await?
    {
        Some(view) if view.members.iter().any(|m| &m.user == user) => {
            let records = view
                .records
                .iter()
                .map(|r| serde_json::from_str::<GroupRecord>(r))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    tracing::error!(cause = %e, group = %group, "stored group record does not decode");
                    HandlerError::new(ErrorCode::Internal)
                })?;
            Ok(ServerMessage::Group {
                rid,
                info: GroupInfo {
                    group,
                    epoch: view.epoch,
                    members: view.members,
                },
                records,
            })
        }
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
        Ok(GroupDone::Changed(_)) => Err(HandlerError::new(ErrorCode::Internal)),
        Err(GroupRefusal::Membership(members)) => Ok(ServerMessage::Membership {
            rid,
            group,
            members,
        }),
        Err(GroupRefusal::Rule(code, message)) => Err(HandlerError::with(code, message)),
    }
}
