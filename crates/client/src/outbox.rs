//! Messages sealed but not yet accepted by the server, kept on disk so that
//! nothing typed is lost to a dropped connection or a crash, and so that a
//! retry reuses the original msg_id (the server stores it once).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use telepound_protocol::{GroupName, MsgId, UserName};

use crate::history::write_atomic;
use crate::{Error, Result};

/// One message waiting to be sent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pending {
    /// The recipient (for a group message: the sender, unused).
    pub to: UserName,
    /// The group, for a group message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupName>,
    /// Its id, fixed at sealing time.
    pub msg_id: MsgId,
    /// The sealed envelope.
    pub envelope: String,
}

/// The outbox file of one local user.
#[derive(Debug)]
pub struct Outbox {
    path: PathBuf,
    items: Vec<Pending>,
}

impl Outbox {
    /// Loads `dir/outbox.json` (empty if absent).
    ///
    /// # Errors
    /// When the file exists but cannot be read or parsed.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("outbox.json");
        let items = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::io(
                    format!("cannot parse {}", path.display()),
                    std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io(format!("cannot read {}", path.display()), e)),
        };
        Ok(Self { path, items })
    }

    /// Appends a message and saves.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn push(&mut self, p: Pending) -> Result<()> {
        self.items.push(p);
        self.save()
    }

    /// The waiting message with `msg_id`.
    pub fn find(&self, msg_id: &MsgId) -> Option<&Pending> {
        self.items.iter().find(|p| &p.msg_id == msg_id)
    }

    /// The oldest waiting message.
    pub fn first(&self) -> Option<&Pending> {
        self.items.first()
    }

    /// Removes the message with `msg_id` and saves.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn remove(&mut self, msg_id: &MsgId) -> Result<()> {
        self.items.retain(|p| &p.msg_id != msg_id);
        self.save()
    }

    /// Replaces a waiting message's envelope (re-sealed for a group's new
    /// membership) and saves.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn reseal(&mut self, msg_id: &MsgId, envelope: String) -> Result<()> {
        if let Some(p) = self.items.iter_mut().find(|p| &p.msg_id == msg_id) {
            p.envelope = envelope;
        }
        self.save()
    }

    /// How many are waiting.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn save(&self) -> Result<()> {
        let json = serde_json::to_vec(&self.items).expect("outbox serialises");
        write_atomic(&self.path, &json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_a_restart_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Outbox::load(dir.path()).unwrap();
        let a = Pending {
            to: UserName::new("bob").unwrap(),
            group: None,
            msg_id: MsgId::new(),
            envelope: "{}".into(),
        };
        let b = Pending {
            msg_id: MsgId::new(),
            ..a.clone()
        };
        o.push(a.clone()).unwrap();
        o.push(b.clone()).unwrap();
        let mut again = Outbox::load(dir.path()).unwrap();
        assert_eq!(again.first(), Some(&a));
        again.remove(&a.msg_id).unwrap();
        assert_eq!(Outbox::load(dir.path()).unwrap().first(), Some(&b));
    }
}
