//! Signing and verifying group state records (the format and the rules are
//! in `telepound_protocol::group`).

use ed25519_dalek::Signature;
use telepound_protocol::group::GroupRecord;
use telepound_protocol::message::B64;

use crate::identity::{Identity, PeerKeys};
use crate::{Error, Result};

/// Signs `record` (every field but `sig` filled in) as its actor.
pub fn sign_record(identity: &Identity, record: &mut GroupRecord) {
    let sig = identity.sign(&record.signed_bytes());
    record.sig = B64(sig.to_bytes().to_vec());
}

/// Checks `record`'s signature under `actor`, the pinned keys of the user
/// it names as actor.
///
/// # Errors
/// [`Error::Tampered`] when it does not verify.
pub fn verify_record(record: &GroupRecord, actor: &PeerKeys) -> Result<()> {
    let sig = Signature::from_slice(&record.sig.0)
        .map_err(|_| Error::Tampered("group record signature"))?;
    actor
        .verifying_key()
        .verify_strict(&record.signed_bytes(), &sig)
        .map_err(|_| Error::Tampered("group record signature"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use telepound_protocol::group::{Change, ChangeKind, GENESIS_PREV, RecordMember};
    use telepound_protocol::message::Role;
    use telepound_protocol::{GroupName, UserName};

    #[test]
    fn records_verify_under_their_actor_only() {
        let alice = Identity::generate();
        let mallory = Identity::generate();
        let a = UserName::new("alice").unwrap();
        let mut r = GroupRecord {
            group: GroupName::new("team").unwrap(),
            epoch: 0,
            prev: B64(GENESIS_PREV.to_vec()),
            at: 5,
            change: Change {
                kind: ChangeKind::Created,
                actor: a.clone(),
                users: vec![],
                heir: None,
            },
            members: vec![RecordMember {
                user: a,
                role: Role::Owner,
            }],
            sig: B64(vec![0; 64]),
        };
        sign_record(&alice, &mut r);
        verify_record(&r, &alice.peer_keys()).unwrap();
        assert!(verify_record(&r, &mallory.peer_keys()).is_err());
        let mut edited = r.clone();
        edited.members[0].role = Role::Admin;
        assert!(verify_record(&edited, &alice.peer_keys()).is_err());
    }
}
