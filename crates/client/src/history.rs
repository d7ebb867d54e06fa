//! Local history: every message this user sent or received, kept as the
//! sealed envelope (so history at rest is as encrypted as on the wire and
//! opens only with the user's keys), plus the set of ids already seen, so a
//! message delivered twice is shown once.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use telepound_protocol::message::UnixMillis;
use telepound_protocol::{MsgId, UserName};

use crate::state::{self, OpenMode, open_private};
use crate::{Error, Result};

pub use crate::state::write_atomic;

/// One history line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// `in` or `out`.
    pub dir: Direction,
    /// The message id.
    pub msg_id: MsgId,
    /// The sender.
    pub from: UserName,
    /// Server acceptance time.
    pub server_ts: UnixMillis,
    /// The sealed envelope JSON.
    pub envelope: String,
}

/// Which way a message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Received.
    In,
    /// Sent.
    Out,
}

/// The history file of one local user.
#[derive(Debug)]
pub struct History {
    path: PathBuf,
    seen: HashSet<(UserName, MsgId)>,
}

impl History {
    /// Opens `dir/history.jsonl`, reading the ids already seen.
    ///
    /// # Errors
    /// When the file exists but cannot be read. Unparseable lines (a write
    /// cut short by a crash) are skipped.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("history.jsonl");
        let mut seen = HashSet::new();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                for line in text.lines() {
                    if let Ok(r) = serde_json::from_str::<Record>(line) {
                        seen.insert((r.from, r.msg_id));
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("cannot read {}", path.display()), e)),
        }
        Ok(Self { path, seen })
    }

    /// Whether a message from `from` with `msg_id` is already in history.
    pub fn contains(&self, from: &UserName, msg_id: &MsgId) -> bool {
        self.seen.contains(&(from.clone(), *msg_id))
    }

    /// Appends a record; returns false (and writes nothing) if the message
    /// was already recorded.
    ///
    /// # Errors
    /// When the file cannot be written.
    /// Only a record that was written counts as seen: after a failed write
    /// the message is neither in history nor treated as a duplicate, so it
    /// is shown (and recorded) when it comes again.
    pub fn append(&mut self, record: &Record) -> Result<bool> {
        let key = (record.from.clone(), record.msg_id);
        if self.seen.contains(&key) {
            return Ok(false);
        }
        let ctx = || format!("cannot write {}", self.path.display());
        let mut line =
            serde_json::to_vec(record).map_err(|e| Error::io(ctx(), std::io::Error::other(e)))?;
        line.push(b'\n');
        // Under the lock, so lines from two processes never interleave.
        let _lock = state::lock(&self.path)?;
        let mut f = open_private(&self.path, OpenMode::Append).map_err(|e| Error::io(ctx(), e))?;
        f.write_all(&line)
            .and_then(|()| f.sync_data())
            .map_err(|e| Error::io(ctx(), e))?;
        self.seen.insert(key);
        Ok(true)
    }

    /// Every record, oldest first.
    ///
    /// # Errors
    /// When the file cannot be read.
    pub fn records(&self) -> Result<Vec<Record>> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => Ok(text
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(Error::io(format!("cannot read {}", self.path.display()), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_once_and_remembers_across_opens() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Record {
            dir: Direction::In,
            msg_id: MsgId::new(),
            from: UserName::new("alice").unwrap(),
            server_ts: 1,
            envelope: "{}".into(),
        };
        let mut h = History::open(dir.path()).unwrap();
        assert!(h.append(&rec).unwrap());
        assert!(!h.append(&rec).unwrap());
        let h = History::open(dir.path()).unwrap();
        assert!(h.contains(&rec.from, &rec.msg_id));
        assert_eq!(h.records().unwrap().len(), 1);
    }

    #[test]
    fn a_record_that_was_not_written_is_not_seen() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Record {
            dir: Direction::In,
            msg_id: MsgId::new(),
            from: UserName::new("alice").unwrap(),
            server_ts: 1,
            envelope: "{}".into(),
        };
        let mut h = History::open(dir.path()).unwrap();
        // A folder where the file should be: every write fails.
        std::fs::create_dir(dir.path().join("history.jsonl")).unwrap();
        assert!(h.append(&rec).is_err());
        assert!(
            !h.contains(&rec.from, &rec.msg_id),
            "marked seen before it was written"
        );
        std::fs::remove_dir(dir.path().join("history.jsonl")).unwrap();
        assert!(h.append(&rec).unwrap(), "recorded when it comes again");
        assert!(h.contains(&rec.from, &rec.msg_id));
    }
}
