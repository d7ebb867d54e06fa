//! Group rules, applied inside the writer's transaction so that membership
//! changes and group sends are strictly ordered: a message accepted after
//! a removal is never delivered to the removed member.
//!
//! Every membership change comes with the record its actor signed (see
//! `telepound_protocol::group`). In one transaction the writer works out
//! the whole change under the rules (all of it or nothing: a refusal writes
//! nothing), checks that the record names exactly that result and builds on
//! the group's latest record, applies it, appends the record to the group's
//! log, and stores it as a change line for every member before and after.
//! So a change is never applied without its line, nor a line stored for a
//! change that did not happen.

use std::sync::Arc;

use telepound_protocol::group::{
    Applied, ChangeKind, GENESIS_PREV, GroupRecord, RecordMember, apply_change,
};
use telepound_protocol::message::{GroupMember, Role, UnixMillis};
use telepound_protocol::{ErrorCode, GroupName, MsgId, UserName};

use super::writer::WriteConn;
use super::{EntryKind, NewEntry, Result};

/// A membership change and the record signed for it.
#[derive(Debug, Clone)]
pub struct ChangeOp {
    /// The group.
    pub group: GroupName,
    /// Who acts (the session's user; the record's actor and signer).
    pub actor: UserName,
    /// What they do.
    pub kind: ChangeKind,
    /// Whom, as requested (for `group_create`: the first members).
    pub users: Vec<UserName>,
    /// The signed record (its signature already checked).
    pub record: GroupRecord,
    /// The record as stored and delivered.
    pub record_json: Arc<str>,
    /// [`GroupRecord::hash`] of it.
    pub hash: [u8; 32],
    /// The change lines' message id (one for all members).
    pub msg_id: MsgId,
    /// When the change lines expire if never acknowledged.
    pub expires_at: UnixMillis,
}

/// A change to a group, or a send to it.
#[derive(Debug, Clone)]
pub enum GroupOp {
    /// A membership change (create, add, remove, leave, promote).
    Change(Box<ChangeOp>),
    /// `sender` sends to the group, having wrapped for `recipients`.
    Send {
        /// The group.
        group: GroupName,
        /// Who sends.
        sender: UserName,
        /// Whom the envelope is wrapped for, sorted.
        recipients: Vec<UserName>,
        /// One mailbox entry per member other than the sender.
        entries: Vec<NewEntry>,
    },
}

/// A refused group request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupRefusal {
    /// Refused by a rule (or a stale or wrong record).
    Rule(ErrorCode, String),
    /// A send wrapped for another membership: here is the current one.
    Membership(Vec<UserName>),
}

/// A membership change done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    /// The members after it (none left: the group is gone).
    pub members: Vec<GroupMember>,
    /// The epoch of the group's latest record.
    pub epoch: Option<u64>,
    /// The change lines stored, with their sequence numbers (none for a
    /// retry of a change already made).
    pub lines: Vec<(NewEntry, i64)>,
}

/// What a group request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupDone {
    /// A membership change.
    Changed(Changed),
    /// The send's mailbox sequence numbers (`None` for a retry).
    Sent(Vec<Option<i64>>),
}

/// A group request's result.
pub type GroupResult = std::result::Result<GroupDone, GroupRefusal>;

pub(crate) fn role_to_i16(r: Role) -> i16 {
    match r {
        Role::Member => 0,
        Role::Admin => 1,
        Role::Owner => 2,
    }
}

pub(crate) fn role_from_i64(v: i64) -> Role {
    match v {
        2 => Role::Owner,
        1 => Role::Admin,
        _ => Role::Member,
    }
}

fn refuse(code: ErrorCode, msg: impl Into<String>) -> GroupResult {
    Err(GroupRefusal::Rule(code, msg.into()))
}

/// Applies `op` within the open transaction on `conn`. `max` is the member
/// limit; users named must exist and the record's signature must have been
/// checked (the handler does both before).
pub(crate) async fn apply<C: WriteConn>(
    conn: &mut C,
    op: &GroupOp,
    max: usize,
    now: UnixMillis,
) -> Result<GroupResult> {
    match op {
        GroupOp::Change(c) => change(conn, c, max, now).await,
        GroupOp::Send {
            group,
            sender,
            recipients,
            entries,
        } => {
            let members = conn.group_members(group).await?.unwrap_or_default();
            if !members.iter().any(|m| &m.user == sender) {
                return Ok(refuse(
                    ErrorCode::UnknownGroup,
                    format!("no group #{group}, or {sender} is not in it"),
                ));
            }
            let mut current: Vec<UserName> = members.into_iter().map(|m| m.user).collect();
            current.sort();
            if &current != recipients {
                return Ok(Err(GroupRefusal::Membership(current)));
            }
            // One body for everyone: a 256-member group writes the envelope
            // once, not 256 times.
            let body = match entries.first() {
                Some(e) => Some(conn.insert_body(&e.envelope).await?),
                None => None,
            };
            let mut seqs = Vec::with_capacity(entries.len());
            for e in entries {
                seqs.push(conn.insert(e, body).await?);
            }
            Ok(Ok(GroupDone::Sent(seqs)))
        }
    }
}

async fn change<C: WriteConn>(
    conn: &mut C,
    c: &ChangeOp,
    max: usize,
    now: UnixMillis,
) -> Result<GroupResult> {
    let group = &c.group;
    let record = &c.record;
    let current = conn.group_members(group).await?;
    let head = match current {
        Some(_) => conn.group_head(group).await?,
        None => None,
    };
    // A retry of a change already made (its answer was lost): the same
    // record is in the log, so answer as if it had just been made.
    if current.is_some()
        && conn
            .group_record_hash(group, record.epoch)
            .await?
            .as_deref()
            == Some(&c.hash[..])
    {
        // Only a current member hears the current membership (a former
        // member retrying their leave, or an old change, does not).
        let members = current.unwrap_or_default();
        let still_in = members.iter().any(|m| m.user == c.actor);
        return Ok(Ok(GroupDone::Changed(Changed {
            members: if still_in { members } else { Vec::new() },
            epoch: if still_in { head.map(|(e, _)| e) } else { None },
            lines: Vec::new(),
        })));
    }
    let old: Vec<RecordMember> = current
        .iter()
        .flatten()
        .map(|m| RecordMember {
            user: m.user.clone(),
            role: m.role,
        })
        .collect();
    // The whole change is worked out first; nothing is written unless all
    // of it is allowed.
    let applied = match apply_change(group, &old, c.kind, &c.actor, &c.users, max) {
        Ok(a) => a,
        Err(r) => return Ok(refuse(r.code, r.message)),
    };
    let (epoch, prev) = match (c.kind, head) {
        (ChangeKind::Created, _) => (0, GENESIS_PREV.to_vec()),
        (_, Some((e, h))) => (e + 1, h),
        (_, None) => {
            return Ok(refuse(
                ErrorCode::BadRecord,
                format!("#{group} has no signed membership history; create it anew"),
            ));
        }
    };
    if record.epoch != epoch || record.prev.0 != prev {
        return Ok(refuse(
            ErrorCode::GroupChanged,
            format!(
                "#{group} changed since your client looked (it is at epoch {}); try again",
                epoch.saturating_sub(1)
            ),
        ));
    }
    if let Err(why) = matches(&applied, c) {
        return Ok(refuse(ErrorCode::BadRecord, why));
    }
    if c.kind == ChangeKind::Created {
        conn.create_group(group, now).await?;
    }
    let new = &applied.members;
    for m in &old {
        match new.iter().find(|n| n.user == m.user) {
            None => conn.remove_member(group, &m.user).await?,
            Some(n) if n.role != m.role => conn.set_role(group, &m.user, n.role).await?,
            Some(_) => {}
        }
    }
    // In the record's order, so the server's "longest-standing first" is
    // the record's.
    for n in new {
        if !old.iter().any(|m| m.user == n.user) {
            conn.add_member(group, &n.user, n.role, now, record.epoch)
                .await?;
        }
    }
    // Everyone before and after hears of it: a removed member learns of
    // their removal, a new member of their joining.
    let mut told: Vec<&UserName> = old.iter().map(|m| &m.user).collect();
    for n in new {
        if !told.contains(&&n.user) {
            told.push(&n.user);
        }
    }
    let body = conn.insert_body(&c.record_json).await?;
    let mut lines = Vec::with_capacity(told.len());
    for u in told {
        let e = NewEntry {
            recipient: u.clone(),
            kind: EntryKind::GroupChange,
            sender: c.actor.clone(),
            msg_id: c.msg_id,
            server_ts: now,
            expires_at: c.expires_at,
            envelope: c.record_json.clone(),
        };
        if let Some(seq) = conn.insert(&e, Some(body)).await? {
            lines.push((e, seq));
        }
    }
    if new.is_empty() {
        // The last one out: the group, its log and its name go.
        conn.delete_group(group).await?;
        return Ok(Ok(GroupDone::Changed(Changed {
            members: Vec::new(),
            epoch: None,
            lines,
        })));
    }
    conn.insert_record(group, record.epoch, &c.hash, &c.record_json)
        .await?;
    Ok(Ok(GroupDone::Changed(Changed {
        members: conn.group_members(group).await?.unwrap_or_default(),
        epoch: Some(record.epoch),
        lines,
    })))
}

/// Whether the signed record names exactly the change the rules produce.
fn matches(applied: &Applied, c: &ChangeOp) -> std::result::Result<(), String> {
    let r = &c.record;
    if !applied.changes_anything(c.kind) {
        return Err(format!("that changes nothing in #{}", c.group));
    }
    if r.change.users != applied.users || r.change.heir != applied.heir {
        return Err("the signed record names other users than the change affects".into());
    }
    if r.members != applied.members {
        return Err("the signed record's member list is not the group after the change".into());
    }
    Ok(())
}
