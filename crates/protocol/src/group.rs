//! Signed group state records: how a group's membership is authenticated
//! to its members, so that the server that keeps the group cannot add,
//! keep or invent a member unnoticed.
//!
//! Every membership change is one [`GroupRecord`]: the group, an epoch
//! (0 at creation, +1 per change), the hash of the previous record, the
//! change (kind, actor, the users it actually changed, and the member who
//! inherited ownership, if anyone did) and the full resulting member list
//! with roles, signed by the actor's Ed25519 identity key over
//! [`GroupRecord::signed_bytes`]. The server checks a record against the
//! change it applies and keeps the chain; clients check each record against
//! the state they verified before it.
//!
//! The rules (who may do what, who inherits) are [`apply_change`], one pure
//! function that the server enforces and every client re-runs when it
//! verifies a record, so both sides agree on the result by construction.
//!
//! Signing and verifying are not here (this crate has no key handling): the
//! client signs with `telepound-crypto`, the server verifies with
//! `ed25519-dalek` directly, both over [`GroupRecord::signed_bytes`] with
//! [`RECORD_SIG_CONTEXT`].

use serde::{Deserialize, Serialize};
use sha2_010::{Digest, Sha256};

use crate::message::{B64, Role, UnixMillis};
use crate::{ErrorCode, GroupName, UserName};

/// Domain separation for record signatures.
pub const RECORD_SIG_CONTEXT: &[u8] = b"telepound/group-record/v1\0";
/// Domain separation for record hashes (the chain's `prev`).
const RECORD_HASH_CONTEXT: &[u8] = b"telepound/group-record-hash/v1\0";
/// The `prev` of an epoch-0 record.
pub const GENESIS_PREV: [u8; 32] = [0; 32];
/// Most records in one `group` answer; a client asks again for the rest.
pub const MAX_RECORDS_PER_ANSWER: usize = 32;

/// What a membership change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// The actor created the group (and is its owner) with `users`.
    Created,
    /// The actor added `users`.
    Added,
    /// The actor removed `users`.
    Removed,
    /// The actor left.
    Left,
    /// The actor made `users` (one) an admin.
    Promoted,
}

impl ChangeKind {
    fn byte(self) -> u8 {
        match self {
            Self::Created => 0,
            Self::Added => 1,
            Self::Removed => 2,
            Self::Left => 3,
            Self::Promoted => 4,
        }
    }

    /// The request type that makes this change.
    pub fn request(self) -> &'static str {
        match self {
            Self::Created => "group_create",
            Self::Added => "group_add",
            Self::Removed => "group_remove",
            Self::Left => "group_leave",
            Self::Promoted => "group_promote",
        }
    }
}

fn role_byte(r: Role) -> u8 {
    match r {
        Role::Member => 0,
        Role::Admin => 1,
        Role::Owner => 2,
    }
}

/// The change a record makes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// What happened.
    pub kind: ChangeKind,
    /// Who did it (and signed the record).
    pub actor: UserName,
    /// Whom it changed: only users it actually added, removed or promoted
    /// (empty for `left`: the actor left).
    #[serde(default)]
    pub users: Vec<UserName>,
    /// Who became owner because the owner went (succession).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heir: Option<UserName>,
}

/// One member in a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordMember {
    /// The user.
    pub user: UserName,
    /// Their role.
    pub role: Role,
}

/// A signed group state record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// The group.
    pub group: GroupName,
    /// 0 at creation, +1 per change.
    pub epoch: u64,
    /// [`GroupRecord::hash`] of the record before (zeros at epoch 0).
    pub prev: B64,
    /// The actor's clock when it signed (ms since the epoch), for display.
    pub at: UnixMillis,
    /// The change.
    pub change: Change,
    /// Every member after the change, longest-standing first.
    pub members: Vec<RecordMember>,
    /// Ed25519 signature by the actor's identity key over
    /// [`GroupRecord::signed_bytes`].
    pub sig: B64,
}

fn put_name(out: &mut Vec<u8>, s: &str) {
    // Names are [a-z0-9_-]: a zero byte cannot occur in them, so it ends
    // each one unambiguously.
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

impl GroupRecord {
    /// The bytes the actor signs: a fixed binary encoding of every field
    /// but `sig`, after [`RECORD_SIG_CONTEXT`].
    ///
    /// ```text
    /// context ‖ group 0 ‖ epoch (u64 BE) ‖ prev (32) ‖ at (i64 BE) ‖ kind (1) ‖ actor 0
    ///   ‖ n (u32 BE) ‖ (user 0)×n ‖ heir? (0, or 1 ‖ heir 0)
    ///   ‖ m (u32 BE) ‖ (user 0 ‖ role (1))×m
    /// ```
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96 + 40 * self.members.len());
        out.extend_from_slice(RECORD_SIG_CONTEXT);
        put_name(&mut out, self.group.as_str());
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.prev.0);
        out.extend_from_slice(&self.at.to_be_bytes());
        out.push(self.change.kind.byte());
        put_name(&mut out, self.change.actor.as_str());
        out.extend_from_slice(&(self.change.users.len() as u32).to_be_bytes());
        for u in &self.change.users {
            put_name(&mut out, u.as_str());
        }
        match &self.change.heir {
            None => out.push(0),
            Some(h) => {
                out.push(1);
                put_name(&mut out, h.as_str());
            }
        }
        out.extend_from_slice(&(self.members.len() as u32).to_be_bytes());
        for m in &self.members {
            put_name(&mut out, m.user.as_str());
            out.push(role_byte(m.role));
        }
        out
    }

    /// SHA-256 over the signed bytes and the signature: what the next
    /// record names as `prev`.
    pub fn hash(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(RECORD_HASH_CONTEXT);
        h.update(self.signed_bytes());
        h.update(&self.sig.0);
        h.finalize().into()
    }

    /// Checks lengths: a 32-byte `prev` and a 64-byte `sig`.
    ///
    /// # Errors
    /// A readable reason.
    pub fn check_shape(&self) -> Result<(), String> {
        if self.prev.0.len() != 32 {
            return Err("the record's prev is not a 32-byte hash".into());
        }
        if self.sig.0.len() != 64 {
            return Err("the record's signature is not 64 bytes".into());
        }
        Ok(())
    }

    /// Whether `user` is a member after this record.
    pub fn has_member(&self, user: &UserName) -> bool {
        self.members.iter().any(|m| &m.user == user)
    }
}

/// A change refused by the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The wire code.
    pub code: ErrorCode,
    /// A sentence for people.
    pub message: String,
}

fn refuse<T>(code: ErrorCode, message: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal {
        code,
        message: message.into(),
    })
}

/// The result of a change under the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Every member after, longest-standing first (empty: the group goes).
    pub members: Vec<RecordMember>,
    /// The users actually changed (see [`Change::users`]).
    pub users: Vec<UserName>,
    /// Who inherited ownership, if the owner went.
    pub heir: Option<UserName>,
}

impl Applied {
    /// Whether the change changes anything.
    pub fn changes_anything(&self, kind: ChangeKind) -> bool {
        matches!(kind, ChangeKind::Created | ChangeKind::Left) || !self.users.is_empty()
    }
}

fn dedup(users: &[UserName]) -> Vec<UserName> {
    let mut out: Vec<UserName> = Vec::with_capacity(users.len());
    for u in users {
        if !out.contains(u) {
            out.push(u.clone());
        }
    }
    out
}

/// After members went: with no owner left, the longest-standing admin
/// becomes owner, or with no admin either, the longest-standing member.
fn succeed(members: &mut [RecordMember]) -> Option<UserName> {
    if members.is_empty() || members.iter().any(|m| m.role == Role::Owner) {
        return None;
    }
    let i = members
        .iter()
        .position(|m| m.role == Role::Admin)
        .unwrap_or(0);
    members[i].role = Role::Owner;
    Some(members[i].user.clone())
}

/// Applies a change to `current` (longest-standing first; empty when the
/// group does not exist) under the group rules, all of it or nothing:
/// a refusal is decided before anything is changed.
///
/// The rules: the creator is the owner; owners and admins add, remove and
/// promote; an admin cannot remove the owner; anyone may leave; when the
/// owner goes, the longest-standing admin becomes owner, or with no admin,
/// the longest-standing member; at most `max` members. Added users join at
/// the end, in the order given.
///
/// # Errors
/// [`Refusal`] with `group_exists`, `unknown_group`, `not_an_admin`,
/// `cannot_remove_owner`, `group_full` or `malformed`.
pub fn apply_change(
    group: &GroupName,
    current: &[RecordMember],
    kind: ChangeKind,
    actor: &UserName,
    users: &[UserName],
    max: usize,
) -> Result<Applied, Refusal> {
    if kind == ChangeKind::Created {
        if !current.is_empty() {
            return refuse(
                ErrorCode::GroupExists,
                format!("#{group} exists; choose another name"),
            );
        }
        let others: Vec<UserName> = dedup(users).into_iter().filter(|u| u != actor).collect();
        if others.len() + 1 > max {
            return refuse(
                ErrorCode::GroupFull,
                format!("groups have at most {max} members"),
            );
        }
        let mut members = vec![RecordMember {
            user: actor.clone(),
            role: Role::Owner,
        }];
        members.extend(others.iter().map(|u| RecordMember {
            user: u.clone(),
            role: Role::Member,
        }));
        return Ok(Applied {
            members,
            users: others,
            heir: None,
        });
    }
    let Some(actor_role) = current.iter().find(|m| &m.user == actor).map(|m| m.role) else {
        return refuse(
            ErrorCode::UnknownGroup,
            format!("no group #{group}, or {actor} is not in it"),
        );
    };
    let admin = actor_role != Role::Member;
    let not_admin = || refuse(ErrorCode::NotAnAdmin, ErrorCode::NotAnAdmin.describe());
    let mut members = current.to_vec();
    match kind {
        ChangeKind::Created => unreachable!("handled above"),
        ChangeKind::Added => {
            if !admin {
                return not_admin();
            }
            let new: Vec<UserName> = dedup(users)
                .into_iter()
                .filter(|u| !current.iter().any(|m| &m.user == u))
                .collect();
            if current.len() + new.len() > max {
                return refuse(
                    ErrorCode::GroupFull,
                    format!("#{group} would have more than {max} members"),
                );
            }
            members.extend(new.iter().map(|u| RecordMember {
                user: u.clone(),
                role: Role::Member,
            }));
            Ok(Applied {
                members,
                users: new,
                heir: None,
            })
        }
        ChangeKind::Removed => {
            if !admin {
                return not_admin();
            }
            let gone: Vec<UserName> = dedup(users)
                .into_iter()
                .filter(|u| current.iter().any(|m| &m.user == u))
                .collect();
            // Every target is checked before any is removed.
            if actor_role != Role::Owner
                && current
                    .iter()
                    .any(|m| m.role == Role::Owner && gone.contains(&m.user))
            {
                return refuse(
                    ErrorCode::CannotRemoveOwner,
                    ErrorCode::CannotRemoveOwner.describe(),
                );
            }
            members.retain(|m| !gone.contains(&m.user));
            let heir = succeed(&mut members);
            Ok(Applied {
                members,
                users: gone,
                heir,
            })
        }
        ChangeKind::Left => {
            if !users.is_empty() {
                return refuse(ErrorCode::Malformed, "leaving names no one else");
            }
            members.retain(|m| &m.user != actor);
            let heir = succeed(&mut members);
            Ok(Applied {
                members,
                users: Vec::new(),
                heir,
            })
        }
        ChangeKind::Promoted => {
            if !admin {
                return not_admin();
            }
            let [user] = users else {
                return refuse(ErrorCode::Malformed, "promote one user at a time");
            };
            let Some(m) = members.iter_mut().find(|m| &m.user == user) else {
                return refuse(
                    ErrorCode::UnknownGroup,
                    format!("no group #{group}, or {user} is not in it"),
                );
            };
            let users = if m.role == Role::Member {
                m.role = Role::Admin;
                vec![user.clone()]
            } else {
                Vec::new()
            };
            Ok(Applied {
                members,
                users,
                heir: None,
            })
        }
    }
}

/// The verified state a record builds on: its epoch, hash and members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head<'a> {
    /// The epoch.
    pub epoch: u64,
    /// The record's hash.
    pub hash: [u8; 32],
    /// Its members, longest-standing first.
    pub members: &'a [RecordMember],
}

/// Checks that `record` is a correct next step after `prev` (`None`: it
/// must be a creation record, epoch 0): linked by hash, one epoch on, a
/// change the rules allow its actor to make from `prev`'s state, and the
/// members, users and heir it lists exactly what that change produces.
/// The signature is the caller's to check.
///
/// # Errors
/// A readable reason, naming the actor and what is wrong.
pub fn check_next(
    group: &GroupName,
    prev: Option<&Head<'_>>,
    record: &GroupRecord,
    max: usize,
) -> Result<(), String> {
    record.check_shape()?;
    if &record.group != group {
        return Err(format!("the record is for #{}", record.group));
    }
    let (epoch, hash, members) = match prev {
        None => (0, GENESIS_PREV, &[][..]),
        Some(h) => (h.epoch + 1, h.hash, h.members),
    };
    if record.epoch != epoch {
        return Err(match prev {
            None => format!("a first record must be epoch 0, not {}", record.epoch),
            Some(h) => format!(
                "epoch {} does not follow the verified epoch {}",
                record.epoch, h.epoch
            ),
        });
    }
    if record.prev.0 != hash {
        return Err(format!(
            "epoch {} does not build on the verified record before it",
            record.epoch
        ));
    }
    if prev.is_none() && record.change.kind != ChangeKind::Created {
        return Err("epoch 0 is not a creation".into());
    }
    let c = &record.change;
    let applied = apply_change(group, members, c.kind, &c.actor, &c.users, max).map_err(|r| {
        format!(
            "{} may not make this change ({}): {}",
            c.actor,
            c.kind.request(),
            r.message
        )
    })?;
    if applied.users != c.users || applied.heir != c.heir {
        return Err(format!(
            "the users named by {}'s change are not the ones it changes",
            c.actor
        ));
    }
    if applied.members != record.members {
        return Err(format!(
            "the member list signed by {} is not what the change produces",
            c.actor
        ));
    }
    if !applied.changes_anything(c.kind) {
        return Err(format!("{}'s change changes nothing", c.actor));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> UserName {
        UserName::new(s).unwrap()
    }

    fn m(s: &str, role: Role) -> RecordMember {
        RecordMember { user: n(s), role }
    }

    fn g() -> GroupName {
        GroupName::new("team").unwrap()
    }

    #[test]
    fn rules_and_succession() {
        let created = apply_change(
            &g(),
            &[],
            ChangeKind::Created,
            &n("alice"),
            &[n("bob"), n("alice"), n("bob"), n("carol")],
            4,
        )
        .unwrap();
        assert_eq!(created.users, vec![n("bob"), n("carol")]);
        let s = created.members;
        let err = |k, a: &str, u: &[&str]| {
            let users: Vec<UserName> = u.iter().map(|x| n(x)).collect();
            apply_change(&g(), &s, k, &n(a), &users, 4)
                .unwrap_err()
                .code
        };
        assert_eq!(
            err(ChangeKind::Added, "bob", &["dave"]),
            ErrorCode::NotAnAdmin
        );
        assert_eq!(
            err(ChangeKind::Added, "dave", &["dave"]),
            ErrorCode::UnknownGroup
        );
        assert_eq!(
            err(ChangeKind::Added, "alice", &["dave", "erin"]),
            ErrorCode::GroupFull
        );
        assert_eq!(
            err(ChangeKind::Created, "dave", &[]),
            ErrorCode::GroupExists
        );
        let s = apply_change(
            &g(),
            &s,
            ChangeKind::Promoted,
            &n("alice"),
            &[n("carol")],
            4,
        )
        .unwrap()
        .members;
        // An admin removing several users, one of them the owner: nothing
        // at all is removed.
        let users = [n("bob"), n("alice")];
        let r = apply_change(&g(), &s, ChangeKind::Removed, &n("carol"), &users, 4);
        assert_eq!(r.unwrap_err().code, ErrorCode::CannotRemoveOwner);
        // The owner leaves: the admin inherits, though bob is older.
        let left = apply_change(&g(), &s, ChangeKind::Left, &n("alice"), &[], 4).unwrap();
        assert_eq!(left.heir, Some(n("carol")));
        assert_eq!(
            left.members,
            vec![m("bob", Role::Member), m("carol", Role::Owner)]
        );
        // The last admin leaves: the longest-standing member inherits.
        let left =
            apply_change(&g(), &left.members, ChangeKind::Left, &n("carol"), &[], 4).unwrap();
        assert_eq!(left.heir, Some(n("bob")));
        assert_eq!(left.members, vec![m("bob", Role::Owner)]);
    }

    fn record(
        prev: Option<&GroupRecord>,
        kind: ChangeKind,
        actor: &str,
        users: &[&str],
    ) -> GroupRecord {
        let users: Vec<UserName> = users.iter().map(|u| n(u)).collect();
        let members = prev.map(|p| p.members.clone()).unwrap_or_default();
        let a = apply_change(&g(), &members, kind, &n(actor), &users, 256).unwrap();
        GroupRecord {
            group: g(),
            epoch: prev.map_or(0, |p| p.epoch + 1),
            prev: B64(prev.map_or(GENESIS_PREV, GroupRecord::hash).to_vec()),
            at: 1,
            change: Change {
                kind,
                actor: n(actor),
                users: a.users,
                heir: a.heir,
            },
            members: a.members,
            sig: B64(vec![7; 64]),
        }
    }

    fn head(r: &GroupRecord) -> Head<'_> {
        Head {
            epoch: r.epoch,
            hash: r.hash(),
            members: &r.members,
        }
    }

    #[test]
    fn chains_check_links_rules_and_results() {
        let r0 = record(None, ChangeKind::Created, "alice", &["bob"]);
        check_next(&g(), None, &r0, usize::MAX).unwrap();
        let r1 = record(Some(&r0), ChangeKind::Added, "alice", &["carol"]);
        check_next(&g(), Some(&head(&r0)), &r1, usize::MAX).unwrap();

        // Not linked, or skipping an epoch.
        let mut bad = r1.clone();
        bad.prev = B64(vec![1; 32]);
        assert!(check_next(&g(), Some(&head(&r0)), &bad, usize::MAX).is_err());
        assert!(check_next(&g(), Some(&head(&r1)), &r1, usize::MAX).is_err());
        // A plain member adding someone.
        let mut bad = r1.clone();
        bad.change.actor = n("bob");
        let e = check_next(&g(), Some(&head(&r0)), &bad, usize::MAX).unwrap_err();
        assert!(e.contains("bob may not"), "{e}");
        // A member list with someone the change did not add.
        let mut bad = r1.clone();
        bad.members.push(m("mallory", Role::Member));
        assert!(check_next(&g(), Some(&head(&r0)), &bad, usize::MAX).is_err());
        // Users listed who were not changed.
        let mut bad = r1.clone();
        bad.change.users.push(n("bob"));
        assert!(check_next(&g(), Some(&head(&r0)), &bad, usize::MAX).is_err());
        // Any edit changes what was signed and the hash.
        let mut edited = r1.clone();
        edited.at = 2;
        assert_ne!(edited.signed_bytes(), r1.signed_bytes());
        assert_ne!(edited.hash(), r1.hash());
    }
}
