//! Group rules, applied inside the writer's transaction so that membership
//! changes and group sends are strictly ordered: a message accepted after
//! a removal is never delivered to the removed member.

use telepound_protocol::message::{GroupMember, Role, UnixMillis};
use telepound_protocol::{ErrorCode, GroupName, UserName};

use super::writer::WriteConn;
use super::{NewEntry, Result};

/// A change to a group, or a send to it.
#[derive(Debug, Clone)]
pub enum GroupOp {
    /// A new group, owned by `creator`.
    Create {
        /// The group.
        group: GroupName,
        /// Its owner.
        creator: UserName,
        /// Its other first members.
        members: Vec<UserName>,
    },
    /// `actor` adds `users`.
    Add {
        /// The group.
        group: GroupName,
        /// Who acts.
        actor: UserName,
        /// Who joins.
        users: Vec<UserName>,
    },
    /// `actor` removes `users`.
    Remove {
        /// The group.
        group: GroupName,
        /// Who acts.
        actor: UserName,
        /// Who goes.
        users: Vec<UserName>,
    },
    /// `user` leaves.
    Leave {
        /// The group.
        group: GroupName,
        /// Who leaves.
        user: UserName,
    },
    /// `actor` makes `user` an admin.
    Promote {
        /// The group.
        group: GroupName,
        /// Who acts.
        actor: UserName,
        /// Who becomes an admin.
        user: UserName,
    },
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
    /// Refused by a rule.
    Rule(ErrorCode, String),
    /// A send wrapped for another membership: here is the current one.
    Membership(Vec<UserName>),
}

/// What a group request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupDone {
    /// The members after the change (none left: the group is gone).
    Members(Vec<GroupMember>),
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

fn is_admin(members: &[GroupMember], user: &UserName) -> Option<bool> {
    members
        .iter()
        .find(|m| &m.user == user)
        .map(|m| m.role != Role::Member)
}

/// Applies `op` within the open transaction on `conn`. `max` is the member
/// limit; users named must exist (the handler checks before).
pub(crate) async fn apply<C: WriteConn>(
    conn: &mut C,
    op: &GroupOp,
    max: usize,
    now: UnixMillis,
) -> Result<GroupResult> {
    let group = match op {
        GroupOp::Create { group, .. }
        | GroupOp::Add { group, .. }
        | GroupOp::Remove { group, .. }
        | GroupOp::Leave { group, .. }
        | GroupOp::Promote { group, .. }
        | GroupOp::Send { group, .. } => group,
    };
    let current = conn.group_members(group).await?;
    if let GroupOp::Create {
        creator, members, ..
    } = op
    {
        if current.is_some() {
            return Ok(refuse(
                ErrorCode::GroupExists,
                format!("#{group} exists; choose another name"),
            ));
        }
        let mut others: Vec<&UserName> = members.iter().filter(|m| *m != creator).collect();
        others.sort();
        others.dedup();
        if others.len() + 1 > max {
            return Ok(refuse(
                ErrorCode::GroupFull,
                format!("groups have at most {max} members"),
            ));
        }
        conn.create_group(group, now).await?;
        conn.add_member(group, creator, Role::Owner, now).await?;
        for m in others {
            conn.add_member(group, m, Role::Member, now).await?;
        }
        return Ok(Ok(GroupDone::Members(
            conn.group_members(group).await?.unwrap_or_default(),
        )));
    }
    // Everything else needs the group, and the actor in it.
    let members = match current {
        Some(m) if !m.is_empty() => m,
        _ => {
            return Ok(refuse(
                ErrorCode::UnknownGroup,
                format!("no group #{group}, or you are not in it"),
            ));
        }
    };
    let not_in = |u: &UserName| {
        refuse(
            ErrorCode::UnknownGroup,
            format!("no group #{group}, or {u} is not in it"),
        )
    };
    match op {
        GroupOp::Create { .. } => unreachable!("handled above"),
        GroupOp::Add { actor, users, .. } => {
            match is_admin(&members, actor) {
                None => return Ok(not_in(actor)),
                Some(false) => {
                    return Ok(refuse(
                        ErrorCode::NotAnAdmin,
                        ErrorCode::NotAnAdmin.describe(),
                    ));
                }
                Some(true) => {}
            }
            let mut new: Vec<&UserName> = users
                .iter()
                .filter(|u| !members.iter().any(|m| &m.user == *u))
                .collect();
            new.sort();
            new.dedup();
            if members.len() + new.len() > max {
                return Ok(refuse(
                    ErrorCode::GroupFull,
                    format!("#{group} would have more than {max} members"),
                ));
            }
            for u in new {
                conn.add_member(group, u, Role::Member, now).await?;
            }
        }
        GroupOp::Remove { actor, users, .. } => {
            let actor_role = match members.iter().find(|m| &m.user == actor) {
                None => return Ok(not_in(actor)),
                Some(m) => m.role,
            };
            if actor_role == Role::Member {
                return Ok(refuse(
                    ErrorCode::NotAnAdmin,
                    ErrorCode::NotAnAdmin.describe(),
                ));
            }
            for u in users {
                match members.iter().find(|m| &m.user == u) {
                    None => {}
                    Some(m) if m.role == Role::Owner && actor_role != Role::Owner => {
                        return Ok(refuse(
                            ErrorCode::CannotRemoveOwner,
                            ErrorCode::CannotRemoveOwner.describe(),
                        ));
                    }
                    Some(_) => conn.remove_member(group, u).await?,
                }
            }
            succeed(conn, group).await?;
        }
        GroupOp::Leave { user, .. } => {
            if is_admin(&members, user).is_none() {
                return Ok(not_in(user));
            }
            conn.remove_member(group, user).await?;
            succeed(conn, group).await?;
        }
        GroupOp::Promote { actor, user, .. } => {
            match is_admin(&members, actor) {
                None => return Ok(not_in(actor)),
                Some(false) => {
                    return Ok(refuse(
                        ErrorCode::NotAnAdmin,
                        ErrorCode::NotAnAdmin.describe(),
                    ));
                }
                Some(true) => {}
            }
            match members.iter().find(|m| &m.user == user) {
                None => return Ok(not_in(user)),
                Some(m) if m.role == Role::Member => {
                    conn.set_role(group, user, Role::Admin).await?
                }
                Some(_) => {}
            }
        }
        GroupOp::Send {
            sender,
            recipients,
            entries,
            ..
        } => {
            if is_admin(&members, sender).is_none() {
                return Ok(not_in(sender));
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
            return Ok(Ok(GroupDone::Sent(seqs)));
        }
    }
    Ok(Ok(GroupDone::Members(
        conn.group_members(group).await?.unwrap_or_default(),
    )))
}

/// After members left: the group goes when empty; with no admin left, the
/// longest-standing member inherits it; with admins but no owner, the
/// longest-standing admin becomes owner.
async fn succeed<C: WriteConn>(conn: &mut C, group: &GroupName) -> Result<()> {
    let left = conn.group_members(group).await?.unwrap_or_default();
    if left.is_empty() {
        return conn.delete_group(group).await;
    }
    if left.iter().any(|m| m.role == Role::Owner) {
        return Ok(());
    }
    // Members are listed longest-standing first.
    let heir = left
        .iter()
        .find(|m| m.role == Role::Admin)
        .unwrap_or(&left[0]);
    conn.set_role(group, &heir.user, Role::Owner).await
}
