//! The SQLite store's mailbox index, in memory: which seqs each recipient
//! has waiting, in order, and which rows hold each (recipient, kind, sender,
//! msg_id), for the duplicate check. In the database these were two
//! B-tree indexes ordered by recipient, and a commit writes every page it
//! touched to the WAL whole: with the messages of a batch spread over many
//! recipients, each of the two took a page per recipient in every commit
//! (at 64 recipients an insert cost 13 µs a row on SQLite alone, 2.5 for
//! one recipient; docs/BENCHMARKS.md). Rows now go into the table alone
//! (its rowid is the seq, appended at its end) and the index lives here.
//!
//! - Built from the table when the store opens; the database's lock
//!   (`lock_database`) keeps every other process from writing the table,
//!   and within the process only the writer does, so the index stays true.
//! - The writer records its changes in a [`Pending`] while its transaction
//!   is open and applies them here only once the transaction has
//!   committed: what the index holds is always committed. A fetch that
//!   finds a seq here whose row a commit has just removed skips it.
//! - A key is kept as its msg id and a 64-bit keyed hash of the whole key
//!   ([`Tag`]). A hit is checked against the row itself before an entry
//!   is taken for a duplicate, so a hash collision costs a lookup, never a
//!   message.
//! - Everything is in a few large allocations (hash tables, and a sorted
//!   deque of seqs per recipient), none per row: with B-tree sets, a node
//!   per few rows, the long-lived nodes scattered through the heap made
//!   glibc's `malloc` six times dearer for everyone (3% of the durable
//!   profile to 18%), and the server slower than with the SQLite indexes
//!   (docs/BENCHMARKS.md). 46 to 91 bytes a waiting row (the tables grow
//!   by doubling).

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};

use telepound_protocol::{MsgId, UserName};

use super::EntryKind;

/// A row's duplicate-check key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RowKey {
    pub(crate) recipient: UserName,
    pub(crate) kind: EntryKind,
    pub(crate) sender: UserName,
    pub(crate) msg_id: MsgId,
}

/// What the index keeps of a key: the msg id and a keyed hash of the
/// whole key, which the index's tables take as their hash as it is (one
/// SipHash a key, and a client choosing its msg ids cannot aim them at
/// one bucket: it does not know the hash's key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tag {
    /// The msg id's two halves (a `u128` would align the tag to 16 bytes).
    id: (u64, u64),
    rest: u64,
}

impl Hash for Tag {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.rest);
    }
}

/// Passes a [`Tag`]'s keyed hash through.
#[derive(Default)]
pub(crate) struct TagHasher(u64);

impl Hasher for TagHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (`Tag::hash`); anything else is mixed in.
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

/// A table keyed by [`Tag`].
type TagMap<V> = HashMap<Tag, V, std::hash::BuildHasherDefault<TagHasher>>;

/// Makes [`Tag`]s, with a hash key of its own per process.
#[derive(Clone, Default)]
pub(crate) struct Tagger(RandomState);

impl Tagger {
    pub(crate) fn tag(&self, key: &RowKey) -> Tag {
        let mut h = self.0.build_hasher();
        key.recipient.as_str().hash(&mut h);
        key.kind.to_i16().hash(&mut h);
        key.sender.as_str().hash(&mut h);
        key.msg_id.as_uuid().as_bytes().hash(&mut h);
        Tag {
            id: key.msg_id.as_uuid().as_u64_pair(),
            rest: h.finish(),
        }
    }
}

/// The committed mailbox index.
pub(crate) struct MailboxIndex {
    tagger: Tagger,
    /// Each recipient's waiting seqs, ascending; a recipient with none has
    /// no entry.
    boxes: HashMap<UserName, VecDeque<i64>>,
    /// A tag to the seq of a row with that tag...
    keys: TagMap<i64>,
    /// ...and the seqs of any more (a hash collision, or a key written
    /// again after a delete in one transaction's changes).
    more: TagMap<Vec<i64>>,
    rows: u64,
}

/// Tables this much larger than their contents give memory back.
const SLACK: usize = 4;

/// ...once they have at least this many slots.
const SHRINK_FROM: usize = 4096;

fn shrink_deque(v: &mut VecDeque<i64>) {
    if v.capacity() >= SHRINK_FROM && v.len() * SLACK < v.capacity() {
        v.shrink_to(v.len() * 2);
    }
}

impl MailboxIndex {
    pub(crate) fn new() -> Self {
        Self {
            tagger: Tagger::default(),
            boxes: HashMap::new(),
            keys: TagMap::default(),
            more: TagMap::default(),
            rows: 0,
        }
    }

    /// The tagger keys are kept under.
    pub(crate) fn tagger(&self) -> &Tagger {
        &self.tagger
    }

    /// The tag a key is kept under.
    pub(crate) fn tag(&self, key: &RowKey) -> Tag {
        self.tagger.tag(key)
    }

    /// Adds a committed row.
    pub(crate) fn add(&mut self, recipient: &UserName, seq: i64, tag: Tag) {
        let seqs = match self.boxes.get_mut(recipient) {
            Some(seqs) => seqs,
            None => self.boxes.entry(recipient.clone()).or_default(),
        };
        // Nearly always at the end: seqs are handed out ascending.
        if seqs.back().is_none_or(|last| *last < seq) {
            seqs.push_back(seq);
        } else {
            match seqs.binary_search(&seq) {
                Ok(_) => return,
                Err(at) => seqs.insert(at, seq),
            }
        }
        self.rows += 1;
        match self.keys.entry(tag) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(seq);
            }
            std::collections::hash_map::Entry::Occupied(_) => {
                self.more.entry(tag).or_default().push(seq);
            }
        }
    }

    /// Removes a row whose delete has committed.
    pub(crate) fn remove(&mut self, recipient: &UserName, seq: i64, tag: Tag) {
        let Some(seqs) = self.boxes.get_mut(recipient) else {
            return;
        };
        let Ok(at) = seqs.binary_search(&seq) else {
            return;
        };
        seqs.remove(at);
        self.rows -= 1;
        if seqs.is_empty() {
            self.boxes.remove(recipient);
        } else {
            shrink_deque(seqs);
        }
        self.remove_key(seq, tag);
    }

    /// Removes a removed row's tag.
    fn remove_key(&mut self, seq: i64, tag: Tag) {
        if self.keys.get(&tag) == Some(&seq) {
            match self.more.get_mut(&tag) {
                Some(rest) => {
                    let next = rest.pop().expect("no empty lists are kept");
                    if rest.is_empty() {
                        self.more.remove(&tag);
                    }
                    self.keys.insert(tag, next);
                }
                None => {
                    self.keys.remove(&tag);
                    if self.keys.capacity() >= SHRINK_FROM
                        && self.keys.len() * SLACK < self.keys.capacity()
                    {
                        self.keys.shrink_to(self.keys.len() * 2);
                    }
                }
            }
        } else if let Some(rest) = self.more.get_mut(&tag) {
            rest.retain(|s| *s != seq);
            if rest.is_empty() {
                self.more.remove(&tag);
            }
        }
    }

    /// The seqs of committed rows whose key has this tag.
    pub(crate) fn candidates(&self, tag: Tag) -> Vec<i64> {
        let mut out: Vec<i64> = self.keys.get(&tag).copied().into_iter().collect();
        if let Some(rest) = self.more.get(&tag) {
            out.extend_from_slice(rest);
        }
        out
    }

    /// Up to `limit` of `recipient`'s seqs above `after`, ascending.
    pub(crate) fn page(&self, recipient: &UserName, after: i64, limit: usize) -> Vec<i64> {
        self.boxes.get(recipient).map_or_else(Vec::new, |seqs| {
            let from = seqs.partition_point(|s| *s <= after);
            seqs.range(from..).take(limit).copied().collect()
        })
    }

    /// Rows indexed.
    pub(crate) fn rows(&self) -> u64 {
        self.rows
    }

    /// Removes many of one recipient's rows: one pass over the deque
    /// instead of a shift per row from its middle (a client chooses which
    /// seqs it acknowledges).
    fn remove_many(&mut self, recipient: &UserName, gone: &mut [(i64, Tag)]) {
        let Some(seqs) = self.boxes.get_mut(recipient) else {
            return;
        };
        gone.sort_unstable_by_key(|(seq, _)| *seq);
        let before = seqs.len();
        seqs.retain(|s| gone.binary_search_by_key(s, |(seq, _)| *seq).is_err());
        let removed = before - seqs.len();
        if removed == 0 {
            return;
        }
        self.rows -= removed as u64;
        if seqs.is_empty() {
            self.boxes.remove(recipient);
        } else {
            shrink_deque(seqs);
        }
        for &(seq, tag) in gone.iter() {
            self.remove_key(seq, tag);
        }
    }

    /// Applies a committed transaction's changes. The additions first, in
    /// order, then the removals a recipient at a time: a seq is never
    /// handed out twice, so a removal only ever follows its row's addition,
    /// and the result is the same as in the order made.
    pub(crate) fn apply(&mut self, pending: &mut Pending) {
        let mut gone: HashMap<UserName, Vec<(i64, Tag)>> = HashMap::new();
        for change in pending.changes.drain(..) {
            match change {
                Change::Add(recipient, seq, tag) => self.add(&recipient, seq, tag),
                Change::Remove(recipient, seq, tag) => {
                    gone.entry(recipient).or_default().push((seq, tag));
                }
            }
        }
        for (recipient, mut rows) in gone {
            if rows.len() < 8 {
                for (seq, tag) in rows {
                    self.remove(&recipient, seq, tag);
                }
            } else {
                self.remove_many(&recipient, &mut rows);
            }
        }
        pending.clear();
    }
}

enum Change {
    Add(UserName, i64, Tag),
    Remove(UserName, i64, Tag),
}

/// The open transaction's changes to the mailbox, not in the index yet.
/// Its tables keep their room from one transaction to the next.
#[derive(Default)]
pub(crate) struct Pending {
    changes: Vec<Change>,
    /// The rows this transaction wrote and has not deleted, by tag, so
    /// that a duplicate within it is found before its rows are...
    written: TagMap<(i64, RowKey)>,
    /// ...and any more under a tag already there (a key deleted and
    /// written again in one transaction, or a hash collision).
    more: Vec<(Tag, i64, RowKey)>,
}

impl Pending {
    /// A row written in this transaction.
    pub(crate) fn add(&mut self, seq: i64, key: RowKey, tag: Tag) {
        self.changes
            .push(Change::Add(key.recipient.clone(), seq, tag));
        match self.written.entry(tag) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert((seq, key));
            }
            std::collections::hash_map::Entry::Occupied(_) => self.more.push((tag, seq, key)),
        }
    }

    /// A row deleted in this transaction.
    pub(crate) fn remove(&mut self, recipient: &UserName, seq: i64, tag: Tag) {
        self.changes
            .push(Change::Remove(recipient.clone(), seq, tag));
        if self.written.get(&tag).is_some_and(|(s, _)| *s == seq) {
            self.written.remove(&tag);
            if let Some(at) = self.more.iter().position(|(t, _, _)| *t == tag) {
                let (_, s, k) = self.more.swap_remove(at);
                self.written.insert(tag, (s, k));
            }
        } else {
            self.more.retain(|(t, s, _)| !(*t == tag && *s == seq));
        }
    }

    /// Whether this transaction wrote a row with `key` that is still there.
    pub(crate) fn holds(&self, key: &RowKey, tag: Tag) -> bool {
        self.written.get(&tag).is_some_and(|(_, k)| k == key)
            || self.more.iter().any(|(t, _, k)| *t == tag && k == key)
    }

    /// Forgets everything (the transaction rolled back, or was applied).
    pub(crate) fn clear(&mut self) {
        self.changes.clear();
        self.written.clear();
        self.more.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(recipient: &str, sender: &str) -> RowKey {
        RowKey {
            recipient: UserName::new(recipient).unwrap(),
            kind: EntryKind::Message,
            sender: UserName::new(sender).unwrap(),
            msg_id: MsgId::new(),
        }
    }

    /// Tags of different ids all under one hash, as a collision would
    /// make them.
    fn tag(n: u128) -> Tag {
        Tag {
            id: (0, n as u64),
            rest: 7,
        }
    }

    #[test]
    fn pages_are_a_recipients_seqs_in_order() {
        let mut ix = MailboxIndex::new();
        let bob = UserName::new("bob").unwrap();
        let carol = UserName::new("carol").unwrap();
        for seq in [5, 1, 9, 3] {
            ix.add(&bob, seq, tag(seq as u128));
        }
        ix.add(&carol, 4, tag(4));
        assert_eq!(ix.page(&bob, 0, 10), vec![1, 3, 5, 9]);
        assert_eq!(ix.page(&bob, 3, 2), vec![5, 9]);
        assert_eq!(ix.page(&carol, 0, 10), vec![4]);
        ix.remove(&bob, 3, tag(3));
        assert_eq!(ix.page(&bob, 0, 10), vec![1, 5, 9]);
        assert_eq!(ix.rows(), 4);
        for seq in [1, 5, 9] {
            ix.remove(&bob, seq, tag(seq as u128));
        }
        assert!(ix.page(&bob, 0, 10).is_empty());
        assert!(
            !ix.boxes.contains_key(&bob),
            "an empty mailbox keeps no entry"
        );
        assert_eq!(ix.rows(), 1);
    }

    #[test]
    fn rows_under_one_tag_are_all_candidates() {
        let mut ix = MailboxIndex::new();
        let bob = UserName::new("bob").unwrap();
        // Three rows under one tag (a collision of the whole hash and the
        // id), beside one whose tag only shares the hash.
        ix.add(&bob, 1, tag(1));
        ix.add(&bob, 2, tag(1));
        ix.add(&bob, 3, tag(1));
        ix.add(&bob, 4, tag(2));
        let sorted = |mut v: Vec<i64>| {
            v.sort_unstable();
            v
        };
        assert_eq!(sorted(ix.candidates(tag(1))), vec![1, 2, 3]);
        ix.remove(&bob, 1, tag(1));
        assert_eq!(sorted(ix.candidates(tag(1))), vec![2, 3]);
        ix.remove(&bob, 3, tag(1));
        assert_eq!(ix.candidates(tag(1)), vec![2]);
        ix.remove(&bob, 2, tag(1));
        assert!(ix.candidates(tag(1)).is_empty());
        assert!(ix.more.is_empty(), "no empty lists are kept");
        assert_eq!(ix.candidates(tag(2)), vec![4]);
    }

    #[test]
    fn pending_changes_reach_the_index_only_when_applied() {
        let mut ix = MailboxIndex::new();
        let k = key("bob", "alice");
        let t = ix.tag(&k);
        let mut p = Pending::default();
        p.add(10, k.clone(), t);
        assert!(p.holds(&k, t));
        let other = key("bob", "alice");
        assert!(!p.holds(&other, t), "another key under the same tag");
        assert!(ix.candidates(t).is_empty());
        ix.apply(&mut p);
        assert_eq!(ix.candidates(t), vec![10]);
        assert!(!p.holds(&k, t), "applied changes are forgotten");
        // Deleted and written again within one transaction, twice.
        p.remove(&k.recipient, 10, t);
        assert!(!p.holds(&k, t));
        p.add(11, k.clone(), t);
        p.add(12, other.clone(), t);
        p.remove(&k.recipient, 11, t);
        assert!(!p.holds(&k, t));
        assert!(p.holds(&other, t), "the row still written under the tag");
        p.add(13, k.clone(), t);
        ix.apply(&mut p);
        let mut c = ix.candidates(t);
        c.sort_unstable();
        assert_eq!(c, vec![12, 13]);
        assert_eq!(ix.page(&k.recipient, 0, 10), vec![12, 13]);
        // A rolled-back transaction leaves nothing behind.
        p.remove(&k.recipient, 13, t);
        p.clear();
        ix.apply(&mut p);
        assert_eq!(ix.candidates(t).len(), 2);
    }

    #[test]
    fn out_of_order_seqs_and_large_deletes() {
        let mut ix = MailboxIndex::new();
        let bob = UserName::new("bob").unwrap();
        // Seqs of the ack window are written after later ones.
        for seq in [10, 20, 15, 30, 5, 20] {
            ix.add(&bob, seq, tag(seq as u128));
        }
        assert_eq!(ix.page(&bob, 0, 10), vec![5, 10, 15, 20, 30], "20 once");
        assert_eq!(ix.page(&bob, 12, 10), vec![15, 20, 30]);
        ix.remove(&bob, 15, tag(15));
        ix.remove(&bob, 16, tag(16));
        assert_eq!(ix.page(&bob, 0, 10), vec![5, 10, 20, 30]);
        // A large mailbox drained from the front gives its room back.
        for seq in 100..20_100 {
            ix.add(&bob, seq, tag(seq as u128));
        }
        for seq in 100..20_000 {
            ix.remove(&bob, seq, tag(seq as u128));
        }
        assert_eq!(ix.rows(), 104);
        assert!(
            ix.boxes[&bob].capacity() <= SHRINK_FROM,
            "{}",
            ix.boxes[&bob].capacity()
        );
        assert!(
            ix.keys.capacity() <= 2 * SHRINK_FROM,
            "{}",
            ix.keys.capacity()
        );
        assert_eq!(ix.page(&bob, 30, 3), vec![20_000, 20_001, 20_002]);
    }

    #[test]
    fn many_removals_from_the_middle_apply_in_one_pass() {
        let mut ix = MailboxIndex::new();
        let mut p = Pending::default();
        let keys: Vec<RowKey> = (0..100).map(|_| key("bob", "alice")).collect();
        let tags: Vec<Tag> = keys.iter().map(|k| ix.tag(k)).collect();
        for (i, k) in keys.iter().enumerate() {
            p.add(i as i64, k.clone(), tags[i]);
        }
        ix.apply(&mut p);
        let bob = keys[0].recipient.clone();
        // Twenty from the middle, and a row written and deleted in the
        // same transaction.
        for (i, tag) in tags.iter().enumerate().take(60).skip(40) {
            p.remove(&bob, i as i64, *tag);
        }
        let extra = key("bob", "alice");
        let t = ix.tag(&extra);
        p.add(500, extra.clone(), t);
        p.remove(&bob, 500, t);
        ix.apply(&mut p);
        let want: Vec<i64> = (0..40).chain(60..100).collect();
        assert_eq!(ix.page(&bob, -1, 1000), want);
        assert_eq!(ix.rows(), 80);
        assert!(ix.candidates(tags[50]).is_empty());
        assert_eq!(ix.candidates(tags[60]), vec![60]);
        assert!(ix.candidates(t).is_empty());
    }

    #[test]
    fn tags_tell_keys_apart() {
        let ix = MailboxIndex::new();
        let k = key("bob", "alice");
        let mut other = k.clone();
        other.kind = EntryKind::Receipt;
        assert_ne!(ix.tag(&k), ix.tag(&other));
        assert_eq!(ix.tag(&k), ix.tag(&k.clone()));
        let mut later = k.clone();
        later.msg_id = MsgId::new();
        assert_ne!(ix.tag(&later), ix.tag(&k));
        assert_ne!(
            ix.tag(&later).rest,
            ix.tag(&k).rest,
            "the id is in the hash"
        );
    }
}
