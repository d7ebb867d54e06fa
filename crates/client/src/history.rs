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

use crate::{Error, Result};

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
    pub fn append(&mut self, record: &Record) -> Result<bool> {
        if !self.seen.insert((record.from.clone(), record.msg_id)) {
            return Ok(false);
        }
        let mut line = serde_json::to_vec(record).expect("record serialises");
        line.push(b'\n');
        let mut f = open_private(&self.path, true)
            .map_err(|e| Error::io(format!("cannot write {}", self.path.display()), e))?;
        f.write_all(&line)
            .and_then(|()| f.sync_data())
            .map_err(|e| Error::io(format!("cannot write {}", self.path.display()), e))?;
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

/// Opens a file readable only by its owner (mode 0600 on Unix).
fn open_private(path: &Path, append: bool) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.create(true).write(true);
    if append {
        o.append(true);
    } else {
        o.truncate(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename).
///
/// # Errors
/// When any step fails.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let ctx = || format!("cannot write {}", path.display());
    let mut f = open_private(&tmp, false).map_err(|e| Error::io(ctx(), e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(ctx(), e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(ctx(), e))
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
}
