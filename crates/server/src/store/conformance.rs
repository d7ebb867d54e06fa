//! The store behaviour suite, written once and run against every backend
//! (see `tests/store` and [`crate::store_conformance_tests`]).
//!
//! Each check takes a fresh, empty, migrated store, opened with the
//! [`Recorder`] as its commit listener, and panics on a violation.

use std::sync::{Arc, Mutex};

use telepound_protocol::auth::KsfParams;
use telepound_protocol::message::{B64, PublicKeys, UnixMillis};
use telepound_protocol::{MsgId, UserName};

use super::{CommitListener, EntryKind, NewEntry, NewUser, Store, StoredEntry};

/// A commit listener that records what it hears; senders named in
/// `away` get their receipts stored.
#[derive(Default)]
pub struct Recorder {
    /// Senders without a live connection.
    pub away: Mutex<Vec<UserName>>,
    /// Recipients with a live connection (their messages may wait in the
    /// ack window).
    pub live: Mutex<Vec<UserName>>,
    /// Ack-window outcomes heard: (acknowledged in time, written).
    pub window: Mutex<(usize, usize)>,
    /// `(recipient, seq, msg_id)` of stored entries, in announcement order.
    pub stored: Mutex<Vec<(UserName, i64, MsgId)>>,
    /// `(sender, msg_id, to)` of live receipts.
    pub delivered: Mutex<Vec<(UserName, MsgId, UserName)>>,
}

impl CommitListener for Recorder {
    fn stored(&self, recipient: &UserName, entry: StoredEntry) {
        self.stored
            .lock()
            .unwrap()
            .push((recipient.clone(), entry.seq, entry.msg_id));
    }
    fn delivered(&self, sender: &UserName, msg_id: MsgId, to: &UserName, _at: UnixMillis) {
        self.delivered
            .lock()
            .unwrap()
            .push((sender.clone(), msg_id, to.clone()));
    }
    fn must_store_receipt(&self, sender: &UserName) -> bool {
        self.away.lock().unwrap().contains(sender)
    }
    fn is_live(&self, recipient: &UserName) -> bool {
        self.live.lock().unwrap().contains(recipient)
    }
    fn ack_window(&self, acked: usize, written: usize) {
        let mut w = self.window.lock().unwrap();
        w.0 += acked;
        w.1 += written;
    }
}

impl Recorder {
    /// Waits (up to 10 s) until `msg_id` has been announced for
    /// `recipient`; returns its seq.
    pub async fn announced(&self, recipient: &str, msg_id: MsgId) -> i64 {
        for _ in 0..1000 {
            let found = self
                .stored
                .lock()
                .unwrap()
                .iter()
                .find(|(r, _, m)| r.as_str() == recipient && *m == msg_id)
                .map(|x| x.1);
            if let Some(seq) = found {
                return seq;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("{msg_id} was never announced for {recipient}");
    }
}

fn name(s: &str) -> UserName {
    UserName::new(s).expect("valid test name")
}

fn keys(tag: u8) -> PublicKeys {
    PublicKeys {
        identity: B64(vec![tag; 32]),
        kem: B64(vec![tag; 1216]),
        kem_sig: B64(vec![tag; 64]),
    }
}

fn user(n: &str) -> NewUser {
    NewUser {
        name: name(n),
        opaque_record: vec![1; 192],
        ksf: KsfParams {
            m_kib: 64,
            t: 1,
            p: 1,
        },
        keys: keys(n.len() as u8),
        key_backup: vec![9; 89],
        created_at: 1,
    }
}

fn entry(to: &str, from: &str, id: MsgId, envelope: &str) -> NewEntry {
    NewEntry {
        recipient: name(to),
        kind: EntryKind::Message,
        sender: name(from),
        msg_id: id,
        server_ts: 1000,
        expires_at: 10_000,
        envelope: envelope.into(),
    }
}

/// Accounts: creation, duplicates, lookups, key directory, last seen.
pub async fn users(store: Arc<dyn Store>, _: Arc<Recorder>) {
    assert!(store.create_user(&user("alice")).await.unwrap());
    assert!(
        !store.create_user(&user("alice")).await.unwrap(),
        "name taken"
    );
    assert!(store.create_user(&user("bob")).await.unwrap());

    let rec = store
        .user(&name("alice"))
        .await
        .unwrap()
        .expect("alice exists");
    assert_eq!(rec.opaque_record, vec![1; 192]);
    assert_eq!(rec.ksf.m_kib, 64);
    assert_eq!(rec.keys, keys(5));
    assert!(store.user(&name("carol")).await.unwrap().is_none());

    let exist = store
        .users_exist(&[name("bob"), name("carol"), name("alice")])
        .await
        .unwrap();
    assert_eq!(exist, vec![true, false, true]);

    let k = store
        .public_keys(&[name("bob"), name("nobody"), name("alice")])
        .await
        .unwrap();
    assert_eq!(k, vec![(name("bob"), keys(3)), (name("alice"), keys(5))]);

    assert_eq!(
        store.last_seen(&[name("alice")]).await.unwrap(),
        vec![(name("alice"), None)]
    );
    store.set_last_seen(&name("alice"), 42).await.unwrap();
    assert_eq!(
        store
            .last_seen(&[name("zed"), name("alice")])
            .await
            .unwrap(),
        vec![(name("alice"), Some(42))]
    );
}

/// The OPAQUE server setup is stored once and then always returned.
pub async fn server_setup_is_stable(store: Arc<dyn Store>, _: Arc<Recorder>) {
    let first = store.server_setup(b"first").await.unwrap();
    assert_eq!(first, b"first");
    let again = store.server_setup(b"second").await.unwrap();
    assert_eq!(again, b"first");
}

/// Sessions: lookups by hash, expiry.
pub async fn sessions(store: Arc<dyn Store>, _: Arc<Recorder>) {
    store.create_user(&user("alice")).await.unwrap();
    store
        .create_session(&[7; 32], &name("alice"), 5000)
        .await
        .unwrap();
    assert_eq!(
        store.session_user(&[7; 32], 4000).await.unwrap(),
        Some(name("alice"))
    );
    assert_eq!(store.session_user(&[7; 32], 6000).await.unwrap(), None);
    assert_eq!(store.session_user(&[8; 32], 4000).await.unwrap(), None);
    store.expire(6000).await.unwrap();
    assert_eq!(store.session_user(&[7; 32], 4000).await.unwrap(), None);
}

/// Mailbox: order, idempotent retries, per-recipient isolation, paging,
/// acknowledgement.
pub async fn mailbox(store: Arc<dyn Store>, rec: Arc<Recorder>) {
    let ids: Vec<MsgId> = (0..5).map(|_| MsgId::new()).collect();
    let mut seqs = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let s = store
            .enqueue(vec![entry("bob", "alice", *id, &format!("{{\"n\":{i}}}"))])
            .await
            .unwrap();
        seqs.push(s[0].expect("new entry gets a seq"));
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seqs increase");
    let heard: Vec<i64> = rec.stored.lock().unwrap().iter().map(|x| x.1).collect();
    assert_eq!(heard, seqs, "every commit announced, in seq order");

    // A retry of the same message is stored once.
    let again = store
        .enqueue(vec![entry("bob", "alice", ids[2], "{\"n\":2}")])
        .await
        .unwrap();
    assert_eq!(again, vec![None]);
    // A retry can learn when the original was accepted.
    let mut later = entry("bob", "alice", ids[2], "{\"n\":2}");
    later.server_ts = 2000;
    assert_eq!(store.enqueue(vec![later]).await.unwrap(), vec![None]);
    let since = |id: MsgId, from: &'static str| {
        let store = store.clone();
        async move {
            store
                .waiting_since(&name("bob"), EntryKind::Message, &name(from), id)
                .await
                .unwrap()
        }
    };
    assert_eq!(since(ids[2], "alice").await, Some(1000));
    assert_eq!(since(ids[2], "carol").await, None);
    // The same id from another sender, or to another recipient, is distinct.
    let other = store
        .enqueue(vec![
            entry("bob", "carol", ids[2], "{}"),
            entry("dave", "alice", ids[2], "{}"),
        ])
        .await
        .unwrap();
    assert!(other.iter().all(Option::is_some));

    let page = store.fetch(&name("bob"), 0, 3).await.unwrap();
    assert_eq!(page.len(), 3);
    assert_eq!(page[0].msg_id, ids[0]);
    assert_eq!(&*page[0].envelope, "{\"n\":0}");
    assert_eq!(page[0].sender, name("alice"));
    let rest = store.fetch(&name("bob"), page[2].seq, 100).await.unwrap();
    assert_eq!(rest.len(), 3, "two from alice and one from carol");
    assert_eq!(store.fetch(&name("dave"), 0, 100).await.unwrap().len(), 1);
    assert_eq!(store.mailbox_depth().await.unwrap(), 7);

    // Acknowledging deletes, counts what existed, and is idempotent.
    let acked = store
        .ack(&name("bob"), vec![seqs[0], seqs[1], 999_999], 5, 50)
        .await
        .unwrap();
    assert_eq!(acked, 2);
    let delivered = rec.delivered.lock().unwrap().clone();
    assert_eq!(
        delivered,
        vec![
            (name("alice"), ids[0], name("bob")),
            (name("alice"), ids[1], name("bob"))
        ],
        "the senders hear their receipts live"
    );
    assert_eq!(
        store.ack(&name("bob"), vec![seqs[0]], 5, 50).await.unwrap(),
        0
    );
    assert_eq!(since(ids[0], "alice").await, None, "acknowledged: gone");
    // Another user cannot acknowledge bob's mail.
    assert_eq!(
        store
            .ack(&name("dave"), vec![seqs[2]], 5, 50)
            .await
            .unwrap(),
        0
    );
    let left = store.fetch(&name("bob"), 0, 100).await.unwrap();
    assert_eq!(left.first().unwrap().msg_id, ids[2]);
    assert_eq!(left.len(), 4);
}

/// Entries past their expiry are deleted; others stay.
pub async fn expiry(store: Arc<dyn Store>, _: Arc<Recorder>) {
    let mut old = entry("bob", "alice", MsgId::new(), "{}");
    old.expires_at = 100;
    let fresh = entry("bob", "alice", MsgId::new(), "{}");
    store.enqueue(vec![old, fresh.clone()]).await.unwrap();
    assert_eq!(store.expire(200).await.unwrap(), 1);
    let left = store.fetch(&name("bob"), 0, 10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].msg_id, fresh.msg_id);
}

/// Many concurrent writers are all committed, each exactly once, and a
/// sequence number is never reused after a delete.
pub async fn concurrent_writes_group_commit(store: Arc<dyn Store>, rec: Arc<Recorder>) {
    let mut tasks = Vec::new();
    for t in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            for _ in 0..50 {
                let r = store
                    .enqueue(vec![entry("bob", &format!("s{t}"), MsgId::new(), "{}")])
                    .await
                    .unwrap();
                n += r.iter().filter(|s| s.is_some()).count();
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 400);
    let all = store.fetch(&name("bob"), 0, 1000).await.unwrap();
    assert_eq!(all.len(), 400);
    let heard: Vec<i64> = rec.stored.lock().unwrap().iter().map(|x| x.1).collect();
    let fetched: Vec<i64> = all.iter().map(|e| e.seq).collect();
    assert_eq!(heard, fetched, "announced in the order a fetch returns");
    let last = all.last().unwrap().seq;
    store.ack(&name("bob"), vec![last], 5, 50).await.unwrap();
    let s = store
        .enqueue(vec![entry("bob", "alice", MsgId::new(), "{}")])
        .await
        .unwrap();
    assert!(s[0].unwrap() > last, "seq not reused after delete");
}

/// A sender who is away gets the receipt stored, in the same transaction as
/// the delete, and announced like any entry; acknowledging a receipt makes
/// no receipt of its own.
pub async fn receipts(store: Arc<dyn Store>, rec: Arc<Recorder>) {
    rec.away.lock().unwrap().push(name("alice"));
    let id = MsgId::new();
    let seq = store
        .enqueue(vec![entry("bob", "alice", id, "{}")])
        .await
        .unwrap()[0]
        .unwrap();
    assert_eq!(
        store.ack(&name("bob"), vec![seq], 77, 999).await.unwrap(),
        1
    );
    assert_eq!(
        rec.delivered.lock().unwrap().clone(),
        vec![(name("alice"), id, name("bob"))],
        "announced live too, for connections that have not synced"
    );
    let got = store.fetch(&name("alice"), 0, 10).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].kind, EntryKind::Receipt);
    assert_eq!(
        (got[0].sender.clone(), got[0].msg_id, got[0].server_ts),
        (name("bob"), id, 77)
    );
    assert_eq!(rec.stored.lock().unwrap().last().unwrap().1, got[0].seq);
    // A message and a receipt with the same id are distinct entries.
    let again = store
        .enqueue(vec![entry("alice", "bob", id, "{}")])
        .await
        .unwrap();
    assert!(again[0].is_some());
    // Acknowledging the receipt stores nothing new.
    rec.away.lock().unwrap().push(name("bob"));
    assert_eq!(
        store
            .ack(&name("alice"), vec![got[0].seq], 78, 999)
            .await
            .unwrap(),
        1
    );
    assert!(store.fetch(&name("bob"), 0, 10).await.unwrap().is_empty());
}

/// Writes of many rows at once behave as one-by-one writes would: a
/// duplicate inside a batch or of a stored entry is skipped, seqs follow
/// the listed order, batches larger than any one statement work, and an
/// acknowledgement reports (and stores receipts) in the order it lists.
pub async fn batches(store: Arc<dyn Store>, rec: Arc<Recorder>) {
    let stored_id = MsgId::new();
    store
        .enqueue(vec![entry("bob", "alice", stored_id, "{}")])
        .await
        .unwrap();
    let (a, b, c) = (MsgId::new(), MsgId::new(), MsgId::new());
    let got = store
        .enqueue(vec![
            entry("bob", "alice", a, "{\"a\":1}"),
            entry("bob", "alice", b, "{}"),
            entry("bob", "alice", a, "{\"a\":2}"),
            entry("bob", "alice", stored_id, "{}"),
            entry("bob", "alice", c, "{}"),
        ])
        .await
        .unwrap();
    assert!(got[0].is_some() && got[1].is_some() && got[4].is_some());
    assert_eq!((got[2], got[3]), (None, None), "duplicates are skipped");
    assert!(got[0] < got[1] && got[1] < got[4], "seqs in listed order");
    let page = store.fetch(&name("bob"), 0, 10).await.unwrap();
    assert_eq!(page.len(), 4);
    assert_eq!(&*page[1].envelope, "{\"a\":1}", "the first copy is kept");

    // More rows than one statement takes (see the SQLite backend's chunks).
    let ids: Vec<MsgId> = (0..300).map(|_| MsgId::new()).collect();
    let seqs: Vec<i64> = store
        .enqueue(
            ids.iter()
                .map(|id| entry("carol", "dave", *id, "{}"))
                .collect(),
        )
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.expect("all new"))
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    let fetched = store.fetch(&name("carol"), 0, 1000).await.unwrap();
    assert_eq!(fetched.iter().map(|e| e.msg_id).collect::<Vec<_>>(), ids);

    // Acknowledged in reverse, with repeats and a stranger's seq.
    rec.away.lock().unwrap().push(name("dave"));
    rec.delivered.lock().unwrap().clear();
    let mut listed: Vec<i64> = seqs.iter().rev().copied().collect();
    listed.insert(5, seqs[0]);
    listed.push(page[0].seq);
    // First listings count: ids[0] comes sixth, its later repeat is moot.
    let mut expected: Vec<MsgId> = ids[1..].iter().rev().copied().collect();
    expected.insert(5, ids[0]);
    assert_eq!(store.ack(&name("carol"), listed, 9, 99).await.unwrap(), 300);
    let heard: Vec<MsgId> = rec.delivered.lock().unwrap().iter().map(|d| d.1).collect();
    assert_eq!(heard, expected, "receipts in the order acknowledged");
    // Stored a row per 32 of them, each listing its ids in order.
    let receipts = store.fetch(&name("dave"), 0, 1000).await.unwrap();
    assert_eq!(receipts.len(), 300usize.div_ceil(32));
    assert!(
        receipts.iter().all(|r| r.kind == EntryKind::Receipts
            && r.sender == name("carol")
            && r.server_ts == 9)
    );
    let listed: Vec<MsgId> = receipts
        .iter()
        .flat_map(|r| r.envelope.split(' ').map(|id| id.parse::<MsgId>().unwrap()))
        .collect();
    assert_eq!(listed, expected);
    // Each row has an id of its own, so rows never collide as duplicates.
    assert!(receipts.iter().all(|r| !ids.contains(&r.msg_id)));
    // Acknowledging them stores no receipts of receipts.
    let seqs: Vec<i64> = receipts.iter().map(|r| r.seq).collect();
    rec.away.lock().unwrap().push(name("carol"));
    assert_eq!(store.ack(&name("dave"), seqs, 10, 99).await.unwrap(), 10);
    assert!(store.fetch(&name("dave"), 0, 10).await.unwrap().is_empty());
    assert!(store.fetch(&name("carol"), 0, 10).await.unwrap().is_empty());
    assert_eq!(store.fetch(&name("bob"), 0, 10).await.unwrap().len(), 4);

    // A message stored again after its ack (a late retry) and acknowledged
    // again: its second receipt row is kept beside the first, with the other
    // message's receipt in it.
    let (m, n1, n2) = (MsgId::new(), MsgId::new(), MsgId::new());
    let ack_all = |ids: Vec<MsgId>| {
        let store = store.clone();
        async move {
            let seqs: Vec<i64> = store
                .enqueue(
                    ids.iter()
                        .map(|id| entry("erin", "frank", *id, "{}"))
                        .collect(),
                )
                .await
                .unwrap()
                .into_iter()
                .map(|s| s.expect("new"))
                .collect();
            store.ack(&name("erin"), seqs, 11, 99).await.unwrap()
        }
    };
    rec.away.lock().unwrap().push(name("frank"));
    assert_eq!(ack_all(vec![m, n1]).await, 2);
    assert_eq!(ack_all(vec![m, n2]).await, 2);
    let rows: Vec<String> = store
        .fetch(&name("frank"), 0, 10)
        .await
        .unwrap()
        .iter()
        .map(|r| r.envelope.to_string())
        .collect();
    assert_eq!(rows, [format!("{m} {n1}"), format!("{m} {n2}")]);
}

fn blob(
    id: &str,
    owner: &UserName,
    size: u64,
    recipients: Vec<UserName>,
    expires_at: i64,
) -> super::NewBlob {
    super::NewBlob {
        id: id.to_owned(),
        owner: owner.clone(),
        size,
        recipients,
        created_at: 1,
        expires_at,
    }
}

/// Blobs: quota, recipients, progress, completion by every recipient,
/// expiry.
pub async fn blobs(store: Arc<dyn Store>, _: Arc<Recorder>) {
    let (alice, bob, carol) = (name("alice"), name("bob"), name("carol"));
    let quota = 1000;
    assert_eq!(
        store
            .create_blob(
                &blob("b1", &alice, 600, vec![bob.clone(), carol.clone()], 100),
                quota
            )
            .await
            .unwrap(),
        Ok(())
    );
    assert_eq!(
        store
            .create_blob(&blob("b2", &alice, 500, vec![bob.clone()], 100), quota)
            .await
            .unwrap(),
        Err(600),
        "over quota: says what is used"
    );
    // Another owner has a quota of their own.
    assert_eq!(
        store
            .create_blob(&blob("b3", &bob, 500, vec![alice.clone()], 50), quota)
            .await
            .unwrap(),
        Ok(())
    );

    let rec = store.blob("b1").await.unwrap().unwrap();
    assert_eq!(
        (rec.owner.clone(), rec.size, rec.received),
        (alice.clone(), 600, 0)
    );
    assert_eq!(
        rec.recipients,
        vec![(bob.clone(), false), (carol.clone(), false)]
    );
    assert!(store.blob("nope").await.unwrap().is_none());

    store.set_blob_received("b1", 600).await.unwrap();
    assert_eq!(store.blob("b1").await.unwrap().unwrap().received, 600);
    assert!(
        !store.blob_fetched("b1", &bob).await.unwrap(),
        "carol has not fetched yet"
    );
    assert!(
        !store.blob_fetched("b1", &name("mallory")).await.unwrap(),
        "a stranger counts for nothing"
    );
    assert!(
        store.blob_fetched("b1", &carol).await.unwrap(),
        "now everyone has"
    );
    store.delete_blob("b1").await.unwrap();
    assert!(store.blob("b1").await.unwrap().is_none());
    // The quota is free again.
    assert_eq!(
        store
            .create_blob(&blob("b2", &alice, 500, vec![bob.clone()], 100), quota)
            .await
            .unwrap(),
        Ok(())
    );

    assert_eq!(
        store.expired_blobs(75).await.unwrap(),
        vec!["b3".to_owned()]
    );
}

/// Groups: the rules, succession, and sends checked against membership in
/// the same transaction.
pub async fn groups(store: Arc<dyn Store>, rec: Arc<Recorder>) {
    use super::groups::{ChangeOp, GroupDone, GroupOp, GroupRefusal, GroupResult};
    use telepound_protocol::group::{Change, ChangeKind, GENESIS_PREV, GroupRecord, apply_change};
    use telepound_protocol::message::Role;
    use telepound_protocol::{ErrorCode, GroupName};
    let g = GroupName::new("team").unwrap();
    let (alice, bob, carol, dave) = (name("alice"), name("bob"), name("carol"), name("dave"));
    // The record of a change as the rules make it from `prev` (dummy
    // signature: the handler checks signatures, not the store).
    let record = |prev: Option<&GroupRecord>, kind, actor: &UserName, users: &[UserName]| {
        let members = prev.map(|p| p.members.clone()).unwrap_or_default();
        let a = apply_change(&g, &members, kind, actor, users, usize::MAX).unwrap();
        GroupRecord {
            group: g.clone(),
            epoch: prev.map_or(0, |p| p.epoch + 1),
            prev: B64(prev.map_or(GENESIS_PREV, GroupRecord::hash).to_vec()),
            at: 10,
            change: Change {
                kind,
                actor: actor.clone(),
                users: a.users,
                heir: a.heir,
            },
            members: a.members,
            sig: B64(vec![0; 64]),
        }
    };
    let op = |r: &GroupRecord, users: &[UserName]| {
        GroupOp::Change(Box::new(ChangeOp {
            group: g.clone(),
            actor: r.change.actor.clone(),
            kind: r.change.kind,
            users: users.to_vec(),
            record_json: Arc::from(serde_json::to_string(r).unwrap()),
            hash: r.hash(),
            record: r.clone(),
            msg_id: MsgId::new(),
            expires_at: 1000,
        }))
    };
    let run = |op: GroupOp| {
        let store = store.clone();
        async move { store.group(op, 4, 10).await.unwrap() }
    };
    let members = |r: GroupResult| match r {
        Ok(GroupDone::Changed(c)) => c
            .members
            .into_iter()
            .map(|m| (m.user.as_str().to_owned(), m.role))
            .collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    let code = |r: GroupResult| match r {
        Err(GroupRefusal::Rule(c, _)) => c,
        other => panic!("{other:?}"),
    };
    let lines = || rec.stored.lock().unwrap().len();

    let r0 = record(
        None,
        ChangeKind::Created,
        &alice,
        std::slice::from_ref(&bob),
    );
    let m = members(run(op(&r0, std::slice::from_ref(&bob))).await);
    assert_eq!(
        m,
        vec![("alice".into(), Role::Owner), ("bob".into(), Role::Member)]
    );
    assert_eq!(lines(), 2, "alice and bob get the creation line");
    let view = store.group_view(&g, &bob, None, 10).await.unwrap().unwrap();
    assert_eq!((view.epoch, view.records.len()), (Some(0), 1));
    assert_eq!(
        serde_json::from_str::<GroupRecord>(&view.records[0]).unwrap(),
        r0
    );
    let again = record(None, ChangeKind::Created, &carol, &[]);
    assert_eq!(code(run(op(&again, &[])).await), ErrorCode::GroupExists);
    // A member who is not an admin cannot add or remove, whatever they
    // signed.
    let mut forged = record(
        Some(&r0),
        ChangeKind::Added,
        &alice,
        std::slice::from_ref(&carol),
    );
    forged.change.actor = bob.clone();
    assert_eq!(
        code(run(op(&forged, std::slice::from_ref(&carol))).await),
        ErrorCode::NotAnAdmin
    );
    forged.change.kind = ChangeKind::Removed;
    assert_eq!(
        code(run(op(&forged, std::slice::from_ref(&alice))).await),
        ErrorCode::NotAnAdmin
    );
    // Outsiders see no group at all.
    forged.change.actor = dave.clone();
    forged.change.kind = ChangeKind::Added;
    assert_eq!(
        code(run(op(&forged, std::slice::from_ref(&dave))).await),
        ErrorCode::UnknownGroup
    );
    let r1 = record(
        Some(&r0),
        ChangeKind::Added,
        &alice,
        &[carol.clone(), bob.clone()],
    );
    assert_eq!(r1.change.users, vec![carol.clone()], "only who changed");
    members(run(op(&r1, &[carol.clone(), bob.clone()])).await);
    assert_eq!(lines(), 5, "alice, bob and carol get the line");
    // A record naming a member the change does not make, or one signed
    // for an older state, changes nothing.
    let mut wrong = record(
        Some(&r1),
        ChangeKind::Promoted,
        &alice,
        std::slice::from_ref(&carol),
    );
    wrong.members[1].role = Role::Admin;
    assert_eq!(
        code(run(op(&wrong, std::slice::from_ref(&carol))).await),
        ErrorCode::BadRecord
    );
    let stale = record(
        Some(&r0),
        ChangeKind::Promoted,
        &alice,
        std::slice::from_ref(&bob),
    );
    assert_eq!(
        code(run(op(&stale, std::slice::from_ref(&bob))).await),
        ErrorCode::GroupChanged
    );
    let r2 = record(
        Some(&r1),
        ChangeKind::Promoted,
        &alice,
        std::slice::from_ref(&carol),
    );
    members(run(op(&r2, std::slice::from_ref(&carol))).await);
    // A retry of a change already made answers again and stores nothing.
    let before = lines();
    let m = members(run(op(&r2, std::slice::from_ref(&carol))).await);
    assert_eq!(m[2], ("carol".into(), Role::Admin));
    assert_eq!(lines(), before);
    // An admin cannot remove the owner, and a removal refused for one user
    // removes no one.
    let mut both = r2.clone();
    both.epoch = 3;
    both.change = Change {
        kind: ChangeKind::Removed,
        actor: carol.clone(),
        users: vec![bob.clone(), alice.clone()],
        heir: None,
    };
    assert_eq!(
        code(run(op(&both, &[bob.clone(), alice.clone()])).await),
        ErrorCode::CannotRemoveOwner
    );
    assert_eq!(
        store.group_members(&g).await.unwrap().unwrap().len(),
        3,
        "nobody removed"
    );
    let r3 = record(
        Some(&r2),
        ChangeKind::Added,
        &carol,
        std::slice::from_ref(&dave),
    );
    members(run(op(&r3, std::slice::from_ref(&dave))).await);
    let full = record(Some(&r3), ChangeKind::Added, &alice, &[name("erin")]);
    assert_eq!(
        code(run(op(&full, &[name("erin")])).await),
        ErrorCode::GroupFull
    );
    // dave is served the chain from the record that added him.
    let view = store
        .group_view(&g, &dave, None, 10)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((view.epoch, view.records.len()), (Some(3), 1));
    let view = store
        .group_view(&g, &bob, Some(1), 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        serde_json::from_str::<GroupRecord>(&view.records[0]).unwrap(),
        r2,
        "after epoch 1, at most 1"
    );

    // A send wrapped for the wrong membership is refused with the right one,
    // and stores nothing.
    let entry = |to: &UserName| NewEntry {
        recipient: to.clone(),
        kind: EntryKind::GroupMessage,
        sender: alice.clone(),
        msg_id: MsgId::new(),
        server_ts: 10,
        expires_at: 1000,
        envelope: "{\"g\":1}".into(),
    };
    let before = lines();
    let wrong = run(GroupOp::Send {
        group: g.clone(),
        sender: alice.clone(),
        recipients: vec![alice.clone(), bob.clone()],
        entries: vec![entry(&bob)],
    })
    .await;
    assert_eq!(
        wrong,
        Err(GroupRefusal::Membership(vec![
            alice.clone(),
            bob.clone(),
            carol.clone(),
            dave.clone()
        ]))
    );
    assert_eq!(lines(), before);
    let all = vec![alice.clone(), bob.clone(), carol.clone(), dave.clone()];
    let ok = run(GroupOp::Send {
        group: g.clone(),
        sender: alice.clone(),
        recipients: all.clone(),
        entries: vec![entry(&bob), entry(&carol), entry(&dave)],
    })
    .await;
    assert!(
        matches!(ok, Ok(GroupDone::Sent(ref s)) if s.iter().all(Option::is_some)),
        "{ok:?}"
    );
    assert_eq!(lines(), before + 3, "announced to each member");
    let dave_box = store.fetch(&dave, 0, 10).await.unwrap();
    assert_eq!(
        dave_box.iter().map(|e| e.kind).collect::<Vec<_>>(),
        vec![EntryKind::GroupChange, EntryKind::GroupMessage]
    );
    assert_eq!(
        serde_json::from_str::<GroupRecord>(&dave_box[0].envelope).unwrap(),
        r3
    );

    // The owner leaves: the longest-standing admin (carol) inherits, and
    // the record says so.
    let r4 = record(Some(&r3), ChangeKind::Left, &alice, &[]);
    assert_eq!(r4.change.heir, Some(carol.clone()));
    let m = members(run(op(&r4, &[])).await);
    assert_eq!(m[1], ("carol".into(), Role::Owner), "{m:?}");
    // The last admin leaves: the longest-standing member inherits.
    let r5 = record(Some(&r4), ChangeKind::Left, &carol, &[]);
    let m = members(run(op(&r5, &[])).await);
    assert_eq!(
        m,
        vec![("bob".into(), Role::Owner), ("dave".into(), Role::Member)]
    );
    let list = store.groups_of(&dave).await.unwrap();
    assert_eq!((list[0].group.clone(), list[0].members), (g.clone(), 2));
    // Everyone leaves: the group is gone and its name free.
    let r6 = record(Some(&r5), ChangeKind::Left, &bob, &[]);
    members(run(op(&r6, &[])).await);
    let r7 = record(Some(&r6), ChangeKind::Left, &dave, &[]);
    assert!(members(run(op(&r7, &[])).await).is_empty());
    assert!(store.group_members(&g).await.unwrap().is_none());
    assert!(
        store
            .group_view(&g, &dave, None, 10)
            .await
            .unwrap()
            .is_none()
    );
    let fresh = record(None, ChangeKind::Created, &dave, &[]);
    members(run(op(&fresh, &[])).await);
}

/// The ack window (the suite opens stores with a window of two seconds):
/// a message for a live recipient is announced at once and, acknowledged
/// in time, never written, its sender answered and told `delivered`;
/// unacknowledged, it is written when the window closes. A fetch sees
/// waiting messages, a later entry for the same recipient never overtakes
/// one, a retry is stored once, and an away sender's receipt is stored.
pub async fn ack_window(store: Arc<dyn Store>, rec: Arc<Recorder>) {
    let send = |to: &'static str, id: MsgId| {
        let store = store.clone();
        tokio::spawn(async move { store.enqueue(vec![entry(to, "alice", id, "{}")]).await })
    };
    rec.live.lock().unwrap().push(name("bob"));

    // Acknowledged in time: answered, delivered, never written.
    let id = MsgId::new();
    let sending = send("bob", id);
    let seq = rec.announced("bob", id).await;
    assert_eq!(store.ack(&name("bob"), vec![seq], 5, 999).await.unwrap(), 1);
    assert_eq!(sending.await.unwrap().unwrap(), vec![Some(seq)]);
    assert!(
        rec.delivered
            .lock()
            .unwrap()
            .contains(&(name("alice"), id, name("bob")))
    );
    assert_eq!(*rec.window.lock().unwrap(), (1, 0), "never written");
    assert_eq!(store.mailbox_depth().await.unwrap(), 0);
    assert!(store.fetch(&name("bob"), 0, 10).await.unwrap().is_empty());

    // Not acknowledged: written when the window closes, then acknowledged
    // as usual.
    let id = MsgId::new();
    let seq = send("bob", id).await.unwrap().unwrap()[0].unwrap();
    assert_eq!(*rec.window.lock().unwrap(), (1, 1));
    let got = store.fetch(&name("bob"), 0, 10).await.unwrap();
    assert_eq!((got.len(), got[0].seq, got[0].msg_id), (1, seq, id));
    assert_eq!(store.ack(&name("bob"), vec![seq], 6, 999).await.unwrap(), 1);

    // A fetch writes what waits first, and sees it.
    let id = MsgId::new();
    let sending = send("bob", id);
    let seq = rec.announced("bob", id).await;
    let got = store.fetch(&name("bob"), 0, 10).await.unwrap();
    assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![seq]);
    assert_eq!(sending.await.unwrap().unwrap(), vec![Some(seq)]);
    store.ack(&name("bob"), vec![seq], 7, 999).await.unwrap();

    // bob goes offline with a message waiting: the next one is written
    // after it, never before.
    let (first, second) = (MsgId::new(), MsgId::new());
    let sending = send("bob", first);
    let first_seq = rec.announced("bob", first).await;
    rec.live.lock().unwrap().clear();
    let second_seq = send("bob", second).await.unwrap().unwrap()[0].unwrap();
    assert_eq!(sending.await.unwrap().unwrap(), vec![Some(first_seq)]);
    assert!(first_seq < second_seq);
    let got = store.fetch(&name("bob"), 0, 10).await.unwrap();
    assert_eq!(
        got.iter().map(|e| (e.seq, e.msg_id)).collect::<Vec<_>>(),
        vec![(first_seq, first), (second_seq, second)]
    );
    store
        .ack(&name("bob"), vec![first_seq, second_seq], 8, 999)
        .await
        .unwrap();

    // A retry of a waiting message is stored once.
    rec.live.lock().unwrap().push(name("bob"));
    let id = MsgId::new();
    let sending = send("bob", id);
    let seq = rec.announced("bob", id).await;
    assert_eq!(send("bob", id).await.unwrap().unwrap(), vec![None]);
    assert_eq!(sending.await.unwrap().unwrap(), vec![Some(seq)]);
    assert_eq!(store.fetch(&name("bob"), 0, 10).await.unwrap().len(), 1);
    store.ack(&name("bob"), vec![seq], 9, 999).await.unwrap();

    // An away sender's receipt is stored even when nothing was written.
    rec.away.lock().unwrap().push(name("alice"));
    let id = MsgId::new();
    let sending = send("bob", id);
    let seq = rec.announced("bob", id).await;
    assert_eq!(
        store.ack(&name("bob"), vec![seq], 10, 999).await.unwrap(),
        1
    );
    sending.await.unwrap().unwrap();
    let receipts = store.fetch(&name("alice"), 0, 10).await.unwrap();
    assert_eq!(
        receipts
            .iter()
            .map(|e| (e.kind, e.msg_id))
            .collect::<Vec<_>>(),
        vec![(EntryKind::Receipt, id)]
    );

    // Every announcement for bob, first sightings only, rises.
    let mut seen = Vec::new();
    for (r, seq, _) in rec.stored.lock().unwrap().iter() {
        if r.as_str() == "bob" && !seen.contains(seq) {
            seen.push(*seq);
        }
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
}

/// A group operation's rows take their seqs as it runs, after the batch's
/// other inserts were handed theirs: announcements must still rise per
/// recipient, and a fetch must see every entry once, whether the
/// recipient is live (messages may wait in the ack window) or not.
pub async fn mixed_batches_announce_in_order(store: Arc<dyn Store>, rec: Arc<Recorder>) {
    use super::groups::{ChangeOp, GroupDone, GroupOp};
    use telepound_protocol::GroupName;
    use telepound_protocol::group::{Change, ChangeKind, GENESIS_PREV, GroupRecord, apply_change};
    let g = GroupName::new("mix").unwrap();
    let (alice, bob) = (name("alice"), name("bob"));
    let a = apply_change(
        &g,
        &[],
        ChangeKind::Created,
        &alice,
        std::slice::from_ref(&bob),
        4,
    )
    .unwrap();
    let r0 = GroupRecord {
        group: g.clone(),
        epoch: 0,
        prev: B64(GENESIS_PREV.to_vec()),
        at: 10,
        change: Change {
            kind: ChangeKind::Created,
            actor: alice.clone(),
            users: a.users,
            heir: a.heir,
        },
        members: a.members,
        sig: B64(vec![0; 64]),
    };
    let created = store
        .group(
            GroupOp::Change(Box::new(ChangeOp {
                group: g.clone(),
                actor: alice.clone(),
                kind: ChangeKind::Created,
                users: vec![bob.clone()],
                record_json: Arc::from(serde_json::to_string(&r0).unwrap()),
                hash: r0.hash(),
                record: r0.clone(),
                msg_id: MsgId::new(),
                expires_at: 1000,
            })),
            4,
            10,
        )
        .await
        .unwrap();
    assert!(matches!(created, Ok(GroupDone::Changed(_))), "{created:?}");

    for live in [false, true] {
        if live {
            rec.live.lock().unwrap().push(bob.clone());
        }
        let mut tasks = Vec::new();
        for i in 0..40 {
            let (store, g, alice, bob) = (store.clone(), g.clone(), alice.clone(), bob.clone());
            tasks.push(tokio::spawn(async move {
                if i % 2 == 0 {
                    let op = GroupOp::Send {
                        group: g,
                        sender: alice.clone(),
                        recipients: vec![alice, bob.clone()],
                        entries: vec![NewEntry {
                            recipient: bob,
                            kind: EntryKind::GroupMessage,
                            sender: name("alice"),
                            msg_id: MsgId::new(),
                            server_ts: 10,
                            expires_at: 1000,
                            envelope: "{}".into(),
                        }],
                    };
                    let sent = store.group(op, 4, 10).await.unwrap();
                    assert!(matches!(sent, Ok(GroupDone::Sent(_))), "{sent:?}");
                } else {
                    store
                        .enqueue(vec![entry("bob", "alice", MsgId::new(), "{}")])
                        .await
                        .unwrap();
                }
            }));
        }
        // Nothing is acknowledged here: with bob live, direct messages wait
        // out the window and are then written.
        for t in tasks {
            t.await.unwrap();
        }
        let got = store.fetch(&bob, 0, 1000).await.unwrap();
        let seqs: Vec<i64> = got.iter().map(|e| e.seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        store.ack(&bob, seqs, 11, 999).await.unwrap();
        let mut seen = Vec::new();
        for (r, seq, _) in rec.stored.lock().unwrap().iter() {
            if *r == bob && !seen.contains(seq) {
                seen.push(*seq);
            }
        }
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "announced out of order (live: {live}): {seen:?}"
        );
    }
}

/// Envelopes come back byte for byte, whatever they hold (quotes,
/// backslashes, escapes, control characters, non-ASCII), small ones and
/// ones large enough for the SQLite backend's envelope log, and their
/// acknowledgement reports each one once.
pub async fn envelopes_round_trip(store: Arc<dyn Store>, rec: Arc<Recorder>) {
    let nasty = "{\"t\":\"a \\\" quote, a \\\\ backslash, \\u0000 \\n escapes\",\
                 \"raw\":\"tab\t newline\n cr\r \u{1} \u{1f} del\u{7f} é ü 漢 😀 \u{2028}\"}";
    let big = format!("{nasty}{}", "x\"\\".repeat(2000));
    let texts: Vec<String> = (0..40)
        .map(|i| match i % 3 {
            0 => nasty.to_string(),
            1 => format!("{big}{i}"),
            _ => format!("[{i},\"\\u00e9\",null,true]"),
        })
        .collect();
    let entries: Vec<NewEntry> = texts
        .iter()
        .map(|t| entry("bob", "alice", MsgId::new(), t))
        .collect();
    let ids: Vec<MsgId> = entries.iter().map(|e| e.msg_id).collect();
    assert!(
        store
            .enqueue(entries)
            .await
            .unwrap()
            .iter()
            .all(Option::is_some)
    );
    // And alone, which the SQLite backend keeps in their rows: one
    // ordinary, one longer than a page's aggregate takes (read apart).
    let huge = format!("{big}{}", "y\\\"".repeat(8000));
    for text in [&big, &huge] {
        store
            .enqueue(vec![entry("bob", "alice", MsgId::new(), text)])
            .await
            .unwrap();
    }
    let page = store.fetch(&name("bob"), 0, 100).await.unwrap();
    let got: Vec<&str> = page.iter().map(|e| &*e.envelope).collect();
    let mut want: Vec<&str> = texts.iter().map(String::as_str).collect();
    want.extend([big.as_str(), huge.as_str()]);
    assert_eq!(got, want);
    assert_eq!(
        page.iter().take(40).map(|e| e.msg_id).collect::<Vec<_>>(),
        ids
    );
    assert!(
        page.iter()
            .all(|e| e.sender == name("alice") && e.server_ts == 1000)
    );
    // Acknowledged twice over, in one list: each counts once.
    let mut seqs: Vec<i64> = page.iter().map(|e| e.seq).collect();
    seqs.extend(seqs.clone());
    rec.delivered.lock().unwrap().clear();
    assert_eq!(
        store.ack(&name("bob"), seqs, 2000, 99_000).await.unwrap(),
        42
    );
    assert_eq!(rec.delivered.lock().unwrap().len(), 42);
    assert!(store.fetch(&name("bob"), 0, 100).await.unwrap().is_empty());
}

/// Generates one `#[tokio::test]` per behaviour check, each on a fresh store
/// made by `$make(listener)`, an async fn returning
/// `Option<(Arc<dyn Store>, guard)>` (`None` skips, after saying why).
#[macro_export]
macro_rules! store_conformance_tests {
    ($make:path) => {
        $crate::store_conformance_tests!(@each $make;
            users, server_setup_is_stable, sessions, mailbox, expiry,
            concurrent_writes_group_commit, receipts, batches, blobs, groups, ack_window,
            mixed_batches_announce_in_order, envelopes_round_trip);
    };
    (@each $make:path; $($check:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let rec = std::sync::Arc::new($crate::store::conformance::Recorder::default());
                let Some((store, _guard)) = $make(rec.clone()).await else { return };
                $crate::store::conformance::$check(store.clone(), rec).await;
                store.close().await;
            }
        )*
    };
}
