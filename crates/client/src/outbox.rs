//! Messages sealed but not yet accepted by the server, kept on disk so that
//! nothing typed is lost to a dropped connection or a crash, and so that a
//! retry reuses the original msg_id (the server stores it once).
//!
//! Every process of the user shares the file: each change re-reads it
//! under a lock (see [`crate::state`]), so a `send` run while `classic` or
//! `inbox --follow` runs neither loses nor resurrects a message.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use telepound_protocol::{GroupName, MsgId, UserName};

use crate::Result;
use crate::state;

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
        let items = state::read_json(&path)?;
        Ok(Self { path, items })
    }

    /// Reads the file again, for what other processes queued or sent.
    ///
    /// # Errors
    /// When the file cannot be read or parsed.
    pub fn reload(&mut self) -> Result<()> {
        self.items = state::read_json(&self.path)?;
        Ok(())
    }

    /// Changes the file under its lock, from its current content.
    fn update(&mut self, change: impl FnOnce(&mut Vec<Pending>)) -> Result<()> {
        let (items, ()) = state::update_json(&self.path, change)?;
        self.items = items;
        Ok(())
    }

    /// Appends a message and saves.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn push(&mut self, p: Pending) -> Result<()> {
        self.update(|items| items.push(p))
    }

    /// The waiting message with `msg_id`.
    pub fn find(&self, msg_id: &MsgId) -> Option<&Pending> {
        self.items.iter().find(|p| &p.msg_id == msg_id)
    }

    /// The oldest waiting message.
    pub fn first(&self) -> Option<&Pending> {
        self.items.first()
    }

    /// The waiting messages, oldest first (a copy: sending changes the
    /// outbox).
    pub fn items(&self) -> Vec<Pending> {
        self.items.clone()
    }

    /// Removes the message with `msg_id` and saves.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn remove(&mut self, msg_id: &MsgId) -> Result<()> {
        self.update(|items| items.retain(|p| &p.msg_id != msg_id))
    }

    /// Replaces a waiting message's envelope (re-sealed for a group's new
    /// membership) and saves.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn reseal(&mut self, msg_id: &MsgId, envelope: String) -> Result<()> {
        self.update(|items| {
            if let Some(p) = items.iter_mut().find(|p| &p.msg_id == msg_id) {
                p.envelope = envelope;
            }
        })
    }

    /// How many are waiting.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
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

    #[test]
    fn two_processes_never_write_over_each_other() {
        // Two handles loaded at the same moment, as `inbox --follow` and a
        // `send` of the same user would be.
        let dir = tempfile::tempdir().unwrap();
        let mut follow = Outbox::load(dir.path()).unwrap();
        let mut send = Outbox::load(dir.path()).unwrap();
        let msg = |n: u8| Pending {
            to: UserName::new("bob").unwrap(),
            group: None,
            msg_id: MsgId::new(),
            envelope: format!("{{\"n\":{n}}}"),
        };
        let (a, b, c) = (msg(1), msg(2), msg(3));
        follow.push(a.clone()).unwrap();
        send.push(b.clone()).unwrap();
        // follow's copy is stale; its change must not drop b.
        follow.remove(&a.msg_id).unwrap();
        follow.push(c.clone()).unwrap();
        // Nor may send's stale copy bring a back.
        send.reseal(&b.msg_id, "{\"n\":22}".into()).unwrap();
        let on_disk = Outbox::load(dir.path()).unwrap();
        let ids: Vec<MsgId> = on_disk.items.iter().map(|p| p.msg_id).collect();
        assert_eq!(ids, vec![b.msg_id, c.msg_id]);
        assert_eq!(on_disk.find(&b.msg_id).unwrap().envelope, "{\"n\":22}");
        // And a handle catches up with what others did.
        follow.reload().unwrap();
        assert_eq!(follow.len(), 2);
    }
}
