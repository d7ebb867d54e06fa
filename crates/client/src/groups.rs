//! Verified group membership: per group, the latest signed record this
//! client checked, one JSON file per group under `USER/groups/`, kept like
//! pinned keys.
//!
//! A state starts from the record that added this user (or created the
//! group): trust on first use, as with identity keys. From there on it moves
//! only by records that check against it (`telepound_protocol::group::
//! check_next`, plus the actor's signature, which the session checks). It
//! also remembers, for every verified epoch, the record's hash (to know a
//! record seen again) and who was a member (so a message sealed for an
//! earlier epoch is checked against the membership of that epoch).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use telepound_protocol::group::{ChangeKind, GroupRecord, Head, RecordMember, check_next};
use telepound_protocol::message::{B64, Role};
use telepound_protocol::{GroupName, UserName};

use crate::history::write_atomic;
use crate::{Error, Result};

/// When a user was a member: from the epoch that added them, until the
/// epoch that removed them (not included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    /// The user.
    pub user: UserName,
    /// First epoch as a member.
    pub from: u64,
    /// The epoch of the record that removed them, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<u64>,
}

/// A group's verified state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    /// The group.
    pub group: GroupName,
    /// The latest verified epoch.
    pub epoch: u64,
    /// Its record's hash.
    pub hash: B64,
    /// Its members, longest-standing first.
    pub members: Vec<RecordMember>,
    /// The first epoch verified (where trust on first use started).
    pub since: u64,
    /// Hashes of the verified records, by epoch.
    pub hashes: BTreeMap<u64, B64>,
    /// Membership over the verified epochs.
    pub spans: Vec<Span>,
    /// The latest epoch whose change line has been shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shown: Option<u64>,
    /// Hashes of records verified for an earlier group of the same name
    /// (deleted when its last member left): a copy of one delivered again
    /// is recognised, not mistaken for part of this group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<B64>,
}

/// How many hashes of earlier groups of the same name are remembered.
const MAX_RETIRED: usize = 1024;

/// Whether `record` brings `me` into the group: it created the group with
/// them in it, or added them.
pub fn adds(record: &GroupRecord, me: &UserName) -> bool {
    match record.change.kind {
        ChangeKind::Created => record.has_member(me),
        ChangeKind::Added => record.change.users.contains(me),
        _ => false,
    }
}

impl GroupState {
    /// Starts from `record`, the one that added `me` (trust on first use;
    /// its signature is the caller's to check). A creation record is
    /// checked in full; an addition must name `me` and be made by someone
    /// it lists as an owner or admin.
    ///
    /// # Errors
    /// A readable reason.
    pub fn first(record: &GroupRecord, me: &UserName) -> std::result::Result<Self, String> {
        record.check_shape()?;
        match record.change.kind {
            ChangeKind::Created => check_next(&record.group, None, record, usize::MAX)?,
            ChangeKind::Added => {
                let actor_admin = record
                    .members
                    .iter()
                    .any(|m| m.user == record.change.actor && m.role != Role::Member);
                let all_listed = record.change.users.iter().all(|u| record.has_member(u));
                if !actor_admin || !all_listed || record.change.heir.is_some() {
                    return Err(format!(
                        "the record that adds you was not made by an owner or admin of #{}",
                        record.group
                    ));
                }
            }
            _ => {}
        }
        if !adds(record, me) || !record.has_member(me) {
            return Err(format!(
                "the first record shown to you for #{} is not the one that added you",
                record.group
            ));
        }
        Ok(Self {
            group: record.group.clone(),
            epoch: record.epoch,
            hash: B64(record.hash().to_vec()),
            members: record.members.clone(),
            since: record.epoch,
            hashes: BTreeMap::from([(record.epoch, B64(record.hash().to_vec()))]),
            spans: record
                .members
                .iter()
                .map(|m| Span {
                    user: m.user.clone(),
                    from: record.epoch,
                    until: None,
                })
                .collect(),
            shown: None,
            retired: Vec::new(),
        })
    }

    /// Starts again from `record` (which adds `me`) after `old`, a state in
    /// which `me` had left or been removed: what `old` verified about
    /// earlier epochs is kept, so lines and messages from then still check.
    ///
    /// # Errors
    /// As [`GroupState::first`].
    pub fn rejoin(
        old: Option<GroupState>,
        record: &GroupRecord,
        me: &UserName,
    ) -> std::result::Result<Self, String> {
        let mut new = Self::first(record, me)?;
        // A group deleted and created again under the same name starts at
        // epoch 0 again: nothing of the old one applies, but its records
        // are still recognised.
        let Some(old) = old else {
            return Ok(new);
        };
        if old.epoch >= record.epoch {
            let mut retired = old.retired;
            retired.extend(old.hashes.into_values());
            let excess = retired.len().saturating_sub(MAX_RETIRED);
            retired.drain(..excess);
            new.retired = retired;
        } else {
            let mut spans = old.spans;
            for s in &mut spans {
                if s.until.is_none() {
                    s.until = Some(old.epoch + 1);
                }
            }
            spans.extend(new.spans);
            new.spans = spans;
            let mut hashes = old.hashes;
            hashes.extend(new.hashes);
            new.hashes = hashes;
            new.since = old.since;
            new.shown = old.shown;
            new.retired = old.retired;
        }
        Ok(new)
    }

    /// Whether `user` is a member in the latest verified state.
    pub fn is_member(&self, user: &UserName) -> bool {
        self.members.iter().any(|m| &m.user == user)
    }

    /// The latest state, as the next record must build on it.
    pub fn head(&self) -> std::result::Result<Head<'_>, String> {
        let hash: [u8; 32] = self
            .hash
            .0
            .as_slice()
            .try_into()
            .map_err(|_| "the stored group state is damaged".to_owned())?;
        Ok(Head {
            epoch: self.epoch,
            hash,
            members: &self.members,
        })
    }

    /// Moves on by `record`, which must check against the latest state
    /// (its signature is the caller's to check).
    ///
    /// # Errors
    /// A readable reason from [`check_next`].
    pub fn apply(&mut self, record: &GroupRecord) -> std::result::Result<(), String> {
        check_next(&self.group, Some(&self.head()?), record, usize::MAX)?;
        let e = record.epoch;
        for m in &self.members {
            if !record.has_member(&m.user)
                && let Some(s) = self
                    .spans
                    .iter_mut()
                    .rev()
                    .find(|s| s.user == m.user && s.until.is_none())
            {
                s.until = Some(e);
            }
        }
        for m in &record.members {
            if !self.is_member(&m.user) {
                self.spans.push(Span {
                    user: m.user.clone(),
                    from: e,
                    until: None,
                });
            }
        }
        self.epoch = e;
        self.hash = B64(record.hash().to_vec());
        self.hashes.insert(e, self.hash.clone());
        self.members = record.members.clone();
        Ok(())
    }

    /// Who was a member at `epoch`, sorted; `None` when this client has not
    /// verified that epoch.
    pub fn members_at(&self, epoch: u64) -> Option<Vec<UserName>> {
        if epoch > self.epoch || !self.hashes.contains_key(&epoch) {
            return None;
        }
        let mut out: Vec<UserName> = self
            .spans
            .iter()
            .filter(|s| s.from <= epoch && s.until.is_none_or(|u| epoch < u))
            .map(|s| s.user.clone())
            .collect();
        out.sort();
        out.dedup();
        Some(out)
    }

    /// Records that the line of `epoch` is shown; false if it was before
    /// (lines of one group arrive in epoch order).
    pub fn mark_shown(&mut self, epoch: u64) -> bool {
        if self.shown.is_some_and(|s| s >= epoch) {
            return false;
        }
        self.shown = Some(epoch);
        true
    }
}

/// The verified group states of one local user.
#[derive(Debug)]
pub struct GroupStates {
    dir: PathBuf,
}

impl GroupStates {
    /// The states under `dir/groups` (created when first needed).
    pub fn open(dir: &Path) -> Self {
        Self {
            dir: dir.join("groups"),
        }
    }

    fn path(&self, group: &GroupName) -> PathBuf {
        // Group names are [a-z0-9_-]: always a plain file name.
        self.dir.join(format!("{group}.json"))
    }

    /// The state of `group`, if this client has verified one. Read from
    /// disk each time, so two processes of one user see each other's.
    ///
    /// # Errors
    /// When the file exists but cannot be read or parsed.
    pub fn load(&self, group: &GroupName) -> Result<Option<GroupState>> {
        let path = self.path(group);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Error::io(
                    format!("cannot parse {}", path.display()),
                    std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("cannot read {}", path.display()), e)),
        }
    }

    /// Saves a state (atomically), unless another process of this user has
    /// meanwhile saved a later epoch of the same chain: under the file's
    /// lock, the one further along wins, so verified state never goes back.
    ///
    /// # Errors
    /// When the file cannot be locked, read or written.
    pub fn save(&self, state: &GroupState) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| Error::io(format!("cannot create {}", self.dir.display()), e))?;
        let path = self.path(&state.group);
        let _lock = crate::state::lock(&path)?;
        // Further along the same chain (a group deleted and made again
        // under its name is another chain, and replaces it).
        if self.load(&state.group)?.is_some_and(|current| {
            current.epoch > state.epoch && current.hashes.get(&state.epoch) == Some(&state.hash)
        }) {
            return Ok(());
        }
        let json = serde_json::to_vec(state).expect("group state serialises");
        write_atomic(&path, &json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use telepound_protocol::group::{Change, GENESIS_PREV, apply_change};

    fn n(s: &str) -> UserName {
        UserName::new(s).unwrap()
    }

    fn next(
        prev: Option<&GroupRecord>,
        kind: ChangeKind,
        actor: &str,
        users: &[&str],
    ) -> GroupRecord {
        let g = GroupName::new("team").unwrap();
        let users: Vec<UserName> = users.iter().map(|u| n(u)).collect();
        let members = prev.map(|p| p.members.clone()).unwrap_or_default();
        let a = apply_change(&g, &members, kind, &n(actor), &users, 256).unwrap();
        GroupRecord {
            group: g,
            epoch: prev.map_or(0, |p| p.epoch + 1),
            prev: B64(prev.map_or(GENESIS_PREV, GroupRecord::hash).to_vec()),
            at: 0,
            change: Change {
                kind,
                actor: n(actor),
                users: a.users,
                heir: a.heir,
            },
            members: a.members,
            sig: B64(vec![0; 64]),
        }
    }

    #[test]
    fn membership_per_epoch_and_first_use() {
        let r0 = next(None, ChangeKind::Created, "alice", &["bob"]);
        let r1 = next(Some(&r0), ChangeKind::Added, "alice", &["carol"]);
        let r2 = next(Some(&r1), ChangeKind::Removed, "alice", &["bob"]);
        let mut s = GroupState::first(&r0, &n("bob")).unwrap();
        s.apply(&r1).unwrap();
        s.apply(&r2).unwrap();
        assert!(s.apply(&r2).is_err(), "an epoch applies once");
        assert_eq!(s.members_at(0), Some(vec![n("alice"), n("bob")]));
        assert_eq!(
            s.members_at(1),
            Some(vec![n("alice"), n("bob"), n("carol")])
        );
        assert_eq!(s.members_at(2), Some(vec![n("alice"), n("carol")]));
        assert_eq!(s.members_at(3), None);
        // carol trusts the record that added her, not the one before.
        assert!(GroupState::first(&r0, &n("carol")).is_err());
        let c = GroupState::first(&r1, &n("carol")).unwrap();
        assert_eq!(c.members_at(0), None);
        // An addition by someone who is not an admin is not trusted.
        let mut forged = r1.clone();
        forged.change.actor = n("bob");
        assert!(GroupState::first(&forged, &n("carol")).is_err());

        let dir = tempfile::tempdir().unwrap();
        let states = GroupStates::open(dir.path());
        states.save(&s).unwrap();
        assert_eq!(states.load(&s.group).unwrap(), Some(s));
    }
}
