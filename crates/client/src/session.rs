//! A logged-in user: sending, receiving, presence, key verification.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::value::RawValue;
use telepound_crypto::envelope::{self, Envelope};
use telepound_crypto::safety::safety_number;
use telepound_crypto::{Attachment, Identity, Payload, PeerKeys};
use telepound_protocol::group::{Change, ChangeKind, GENESIS_PREV, GroupRecord, apply_change};
use telepound_protocol::message::RawJson;
use telepound_protocol::message::{
    B64, GroupInfo, GroupSummary, PresenceInfo, PublicKeys, UnixMillis,
};
use telepound_protocol::{ClientMessage, GroupName, MsgId, ServerMessage, UserName};
use zeroize::Zeroizing;

use crate::files::{Progress, Uploads};
use crate::groups::{GroupState, GroupStates, adds};
use crate::history::{Direction, History, Record};
use crate::http::Http;
use crate::outbox::{Outbox, Pending};
use crate::pins::{PinCheck, PinStore};
use crate::{Client, ConnectOptions, Error, Event, Events, Result};

/// The current time in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The server's answer to a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendOutcome {
    /// The message id.
    pub msg_id: MsgId,
    /// When the server stored it.
    pub server_ts: UnixMillis,
    /// Whether the recipient was connected and synced at that moment.
    pub recipient_online: bool,
}

/// The answer to one [`Session::sync_page`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncPage {
    /// Entries pushed in this page.
    pub count: u64,
    /// Whether to ask again (with `after = cursor`).
    pub more: bool,
    /// Highest seq pushed so far.
    pub cursor: i64,
}

/// A received message, opened and verified.
#[derive(Debug, Clone)]
pub struct Received {
    /// Mailbox sequence number, to acknowledge.
    pub seq: i64,
    /// The sender's server-side acceptance time.
    pub server_ts: UnixMillis,
    /// The verified content (sender, recipients, `sent_at`, text, files).
    pub payload: Payload,
}

/// What came of an incoming message.
#[derive(Debug, Clone)]
pub enum Incoming {
    /// A new message.
    New(Received),
    /// Already received earlier (a redelivery): acknowledge and skip.
    Duplicate {
        /// Mailbox sequence number, to acknowledge.
        seq: i64,
    },
}

/// A membership change, verified against the group's signed history: the
/// line members see in the conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupLine {
    /// The group.
    pub group: GroupName,
    /// The change's epoch.
    pub epoch: u64,
    /// What changed, who did it, whom it changed, and who inherited
    /// ownership if anyone did.
    pub change: Change,
    /// The actor's clock when they signed it.
    pub at: UnixMillis,
    /// When the server applied it.
    pub server_ts: UnixMillis,
}

/// What an event amounts to, for display.
#[derive(Debug, Clone)]
pub enum Inbound {
    /// A new message, opened and verified.
    Message(Received),
    /// A membership change line, verified.
    GroupChange(GroupLine),
    /// A recipient got one of this user's messages.
    Delivered {
        /// The message.
        msg_id: MsgId,
        /// Who received it.
        to: UserName,
        /// When.
        at: UnixMillis,
    },
    /// A message that was not shown: the reason is one readable line.
    /// `kept` says whether it stays in the mailbox (to be read later, e.g.
    /// after accepting a changed key) or was discarded.
    Refused {
        /// The sender.
        from: UserName,
        /// Why.
        reason: String,
        /// Whether it remains in the mailbox.
        kept: bool,
    },
}

/// How a peer's directory key relates to the pinned one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    /// Never pinned before (now pinned).
    New,
    /// Matches the pin, not yet verified by the user.
    Pinned,
    /// Matches the pin and the user verified it.
    Verified,
    /// Differs from the pin.
    Changed,
}

/// A logged-in user with their private keys and local state.
pub struct Session {
    client: Client,
    user: UserName,
    identity: Identity,
    dir: PathBuf,
    pins: PinStore,
    history: History,
    outbox: Outbox,
    uploads: Uploads,
    groups: GroupStates,
    token: Zeroizing<Vec<u8>>,
    keys: HashMap<UserName, PeerKeys>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("user", &self.user)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Session {
    pub(crate) fn new(
        client: Client,
        user: UserName,
        identity: Identity,
        home: &Path,
        token: Vec<u8>,
    ) -> Result<Self> {
        let dir = home.join(user.as_str());
        create_private_dir(&dir)?;
        // The directory's copy of our own keys was checked against the
        // opened backup at login; pins are for peers.
        let pins = PinStore::load(&dir)?;
        let history = History::open(&dir)?;
        let outbox = Outbox::load(&dir)?;
        let uploads = Uploads::load(&dir)?;
        let groups = GroupStates::open(&dir);
        Ok(Self {
            outbox,
            uploads,
            groups,
            client,
            user,
            identity,
            dir,
            pins,
            history,
            token: Zeroizing::new(token),
            keys: HashMap::new(),
        })
    }

    /// The logged-in user.
    pub fn user(&self) -> &UserName {
        &self.user
    }

    /// The connection.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// This user's local folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The resume token from login.
    pub fn token(&self) -> &[u8] {
        &self.token
    }

    /// This user's keys.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Local history.
    pub fn history(&self) -> &History {
        &self.history
    }

    async fn directory(&self, user: &UserName) -> Result<PeerKeys> {
        Ok(self.directory_entry(user).await?.0)
    }

    async fn directory_entry(&self, user: &UserName) -> Result<(PeerKeys, PublicKeys)> {
        let answer = self
            .client
            .request(ClientMessage::Keys {
                rid: None,
                users: vec![user.clone()],
            })
            .await?;
        let ServerMessage::Keys { keys, .. } = answer else {
            return Err(Error::Protocol(format!("expected keys, got {answer:?}")));
        };
        let entry = keys
            .into_iter()
            .find(|k| &k.user == user)
            .ok_or_else(|| Error::UnknownUser(user.clone()))?;
        Ok((PeerKeys::verify(&entry.keys)?, entry.keys))
    }

    /// A peer's keys from the directory, checked against the pin (pinned on
    /// first contact).
    ///
    /// # Errors
    /// [`Error::UnknownUser`], [`Error::KeyChanged`], or the key's signature
    /// failing.
    pub async fn peer_keys(&mut self, user: &UserName) -> Result<PeerKeys> {
        if user == &self.user {
            return Ok(self.identity.peer_keys());
        }
        if let Some(k) = self.keys.get(user) {
            return Ok(k.clone());
        }
        let (keys, published) = match self.directory_entry(user).await {
            Ok(k) => k,
            // Unreachable server: a pinned peer's remembered keys still
            // let a message be sealed now and sent later.
            Err(e @ (Error::Disconnected(_) | Error::Timeout)) => {
                let remembered = self.pins.get(user).and_then(|p| p.keys.clone()).ok_or(e)?;
                let keys = PeerKeys::verify(&remembered)?;
                self.keys.insert(user.clone(), keys.clone());
                return Ok(keys);
            }
            Err(e) => return Err(e),
        };
        match self.pins.check(user, &keys.identity_key())? {
            PinCheck::New | PinCheck::Match => {}
            PinCheck::Changed => return Err(Error::KeyChanged { user: user.clone() }),
        }
        self.pins.remember_keys(user, &published)?;
        self.keys.insert(user.clone(), keys.clone());
        Ok(keys)
    }

    /// Seals a message to `to` (and this user's own copy).
    ///
    /// # Errors
    /// As [`Session::peer_keys`].
    pub async fn seal(
        &mut self,
        to: &UserName,
        msg_id: MsgId,
        text: &str,
        attachments: Vec<Attachment>,
    ) -> Result<String> {
        let theirs = self.peer_keys(to).await?;
        let recipients = envelope::canonical_recipients(vec![self.user.clone(), to.clone()]);
        let mut keys = vec![(self.user.clone(), self.identity.peer_keys())];
        if to != &self.user {
            keys.push((to.clone(), theirs));
        }
        let payload = Payload {
            msg_id,
            sender: self.user.clone(),
            recipients,
            group: None,
            sent_at: now_ms(),
            text: text.to_owned(),
            attachments,
            group_epoch: None,
        };
        Ok(envelope::seal(&self.identity, &payload, &keys)?)
    }

    /// The keys of many users at once: one directory request for all that
    /// are not known yet, each checked against its pin.
    ///
    /// # Errors
    /// [`Error::UnknownUser`] (the first), [`Error::KeyChanged`], a bad key
    /// signature, or a connection error for users never seen before.
    pub async fn peer_keys_many(
        &mut self,
        users: &[UserName],
    ) -> Result<Vec<(UserName, PeerKeys)>> {
        let missing: Vec<UserName> = users
            .iter()
            .filter(|u| **u != self.user && !self.keys.contains_key(*u))
            .cloned()
            .collect();
        if !missing.is_empty() {
            let answer = self
                .client
                .request(ClientMessage::Keys {
                    rid: None,
                    users: missing.clone(),
                })
                .await;
            match answer {
                Ok(ServerMessage::Keys { keys, unknown, .. }) => {
                    if let Some(u) = unknown.into_iter().next() {
                        return Err(Error::UnknownUser(u));
                    }
                    for entry in keys {
                        let peer = PeerKeys::verify(&entry.keys)?;
                        if self.pins.check(&entry.user, &peer.identity_key())? == PinCheck::Changed
                        {
                            return Err(Error::KeyChanged { user: entry.user });
                        }
                        self.pins.remember_keys(&entry.user, &entry.keys)?;
                        self.keys.insert(entry.user, peer);
                    }
                }
                Ok(other) => return Err(Error::Protocol(format!("expected keys, got {other:?}"))),
                // Offline: pinned peers' remembered keys still serve.
                Err(Error::Disconnected(_) | Error::Timeout) => {
                    for u in &missing {
                        self.peer_keys(u).await?;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        users
            .iter()
            .map(|u| {
                let k = if *u == self.user {
                    self.identity.peer_keys()
                } else {
                    self.keys
                        .get(u)
                        .cloned()
                        .ok_or_else(|| Error::UnknownUser(u.clone()))?
                };
                Ok((u.clone(), k))
            })
            .collect()
    }

    /// Seals `payload` for its recipients.
    async fn seal_payload(&mut self, payload: &Payload) -> Result<String> {
        let keys = self.peer_keys_many(&payload.recipients).await?;
        Ok(envelope::seal(&self.identity, payload, &keys)?)
    }

    /// Sends a sealed envelope; returns once the server has stored it
    /// durably. Retrying with the same `msg_id` is safe.
    ///
    /// # Errors
    /// [`Error::Server`] (`unknown_user` for a recipient without an
    /// account) or a connection error.
    pub async fn send_sealed(
        &mut self,
        to: &UserName,
        msg_id: MsgId,
        envelope: String,
    ) -> Result<SendOutcome> {
        // A server that asks us to slow down gets the same message again
        // after a pause: same msg_id, so it is stored once whatever happens.
        let mut backoff = crate::Backoff::new(
            std::time::Duration::from_millis(100),
            std::time::Duration::from_secs(2),
        );
        let answer = loop {
            let raw = RawJson::parse(&envelope)
                .map_err(|e| Error::Protocol(format!("sealed envelope is not JSON: {e}")))?;
            let sent = self
                .client
                .request(ClientMessage::Send {
                    rid: None,
                    msg_id,
                    from: self.user.clone(),
                    to: to.clone(),
                    envelope: raw,
                })
                .await;
            match sent {
                Err(e)
                    if e.code() == Some(telepound_protocol::ErrorCode::RateLimited)
                        && backoff.attempts() < 20 =>
                {
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(e) if e.code() == Some(telepound_protocol::ErrorCode::UnknownUser) => {
                    return Err(Error::UnknownUser(to.clone()));
                }
                other => break other?,
            }
        };
        let ServerMessage::Accepted {
            server_ts,
            recipient_online,
            ..
        } = answer
        else {
            return Err(Error::Protocol(format!(
                "expected accepted, got {answer:?}"
            )));
        };
        self.history.append(&Record {
            dir: Direction::Out,
            msg_id,
            from: self.user.clone(),
            server_ts,
            envelope,
        })?;
        Ok(SendOutcome {
            msg_id,
            server_ts,
            recipient_online,
        })
    }

    /// Sends the outbox entry `msg_id` to `group`. When the server says the
    /// membership changed, the group's new signed records are fetched and
    /// verified, and the message is re-sealed for the verified membership
    /// from this user's own copy (the sender is always a recipient, so no
    /// plaintext is ever kept on disk) and sent again, same msg_id.
    async fn send_group_sealed(&mut self, group: &GroupName, msg_id: MsgId) -> Result<SendOutcome> {
        // While admins keep changing the group, a send can lose the race
        // again and again: after a few tries, pause (with jitter) so the
        // changes settle.
        let mut backoff =
            crate::Backoff::new(Duration::from_millis(10), Duration::from_millis(250));
        for attempt in 0..40 {
            if attempt >= 3 {
                tokio::time::sleep(backoff.next_delay()).await;
            }
            let envelope = self
                .outbox
                .find(&msg_id)
                .map(|p| p.envelope.clone())
                .ok_or_else(|| Error::Protocol("group message vanished from the outbox".into()))?;
            let env = Envelope::parse(&envelope)?;
            let raw = RawValue::from_string(envelope.clone())
                .map_err(|e| Error::Protocol(format!("sealed envelope is not JSON: {e}")))?;
            let answer = self
                .client
                .request(ClientMessage::GroupSend {
                    rid: None,
                    msg_id,
                    from: self.user.clone(),
                    group: group.clone(),
                    recipients: env.recipients.clone(),
                    envelope: raw,
                })
                .await?;
            match answer {
                ServerMessage::Accepted {
                    server_ts,
                    recipient_online,
                    ..
                } => {
                    self.history.append(&Record {
                        dir: Direction::Out,
                        msg_id,
                        from: self.user.clone(),
                        server_ts,
                        envelope,
                    })?;
                    return Ok(SendOutcome {
                        msg_id,
                        server_ts,
                        recipient_online,
                    });
                }
                ServerMessage::Membership { .. } => {
                    // The server's list is only a hint that something
                    // changed: what is sealed for is the verified state.
                    let (_, state) = self.sync_group(group).await?;
                    if !state.is_member(&self.user) {
                        return Err(Error::Server {
                            code: telepound_protocol::ErrorCode::UnknownGroup,
                            message: format!("you are no longer in #{group}"),
                        });
                    }
                    let mut payload = env
                        .open(&self.identity, &self.user, &self.identity.peer_keys())?
                        .payload;
                    payload.recipients = envelope::canonical_recipients(
                        state.members.iter().map(|m| m.user.clone()).collect(),
                    );
                    payload.group_epoch = Some(state.epoch);
                    let resealed = self.seal_payload(&payload).await?;
                    self.outbox.reseal(&msg_id, resealed)?;
                }
                other => return Err(Error::Protocol(format!("expected accepted, got {other:?}"))),
            }
        }
        Err(Error::Protocol(format!(
            "#{group}'s membership keeps changing; try again"
        )))
    }

    /// Seals a group message for the group's verified members and queues
    /// it. The group's new signed records are fetched and verified first;
    /// when the server's member list is not the verified one, nothing is
    /// sealed.
    ///
    /// # Errors
    /// As [`Session::sync_group`] and [`Session::peer_keys_many`].
    pub async fn queue_group(
        &mut self,
        group: &GroupName,
        text: &str,
        attachments: Vec<Attachment>,
    ) -> Result<MsgId> {
        let (_, state) = self.sync_group(group).await?;
        let members = state.members.iter().map(|m| m.user.clone()).collect();
        let msg_id = MsgId::new();
        let payload = Payload {
            msg_id,
            sender: self.user.clone(),
            recipients: envelope::canonical_recipients(members),
            group: Some(group.clone()),
            sent_at: now_ms(),
            text: text.to_owned(),
            attachments,
            group_epoch: Some(state.epoch),
        };
        let sealed = self.seal_payload(&payload).await?;
        let ids: Vec<String> = payload
            .attachments
            .iter()
            .map(|a| a.blob_id.clone())
            .collect();
        self.outbox.push(Pending {
            to: self.user.clone(),
            group: Some(group.clone()),
            msg_id,
            envelope: sealed,
        })?;
        for id in ids {
            self.uploads.forget(&id)?;
        }
        Ok(msg_id)
    }

    /// Queues and sends a message to a group; returns the server's answer.
    ///
    /// # Errors
    /// As [`Session::queue_group`] and [`Session::flush_outbox`].
    pub async fn send_group(
        &mut self,
        group: &GroupName,
        text: &str,
        attachments: Vec<Attachment>,
    ) -> Result<SendOutcome> {
        let msg_id = self.queue_group(group, text, attachments).await?;
        self.flush_for(msg_id).await
    }

    /// Flushes the outbox and returns the outcome of `msg_id`.
    async fn flush_for(&mut self, msg_id: MsgId) -> Result<SendOutcome> {
        outcome_in(self.flush_outbox().await?, msg_id)
    }

    fn untrusted(group: &GroupName, reason: impl Into<String>) -> Error {
        Error::GroupUntrusted {
            group: group.clone(),
            reason: reason.into(),
        }
    }

    /// Checks a record's signature under its actor's pinned keys.
    async fn verify_record(&mut self, record: &GroupRecord) -> Result<()> {
        let keys = self.peer_keys(&record.change.actor).await?;
        telepound_crypto::group::verify_record(record, &keys).map_err(|_| {
            Self::untrusted(
                &record.group,
                format!(
                    "the record of epoch {} is not signed by {}, whom it names as its author",
                    record.epoch, record.change.actor
                ),
            )
        })
    }

    /// Brings this client's verified state of `group` up to the server's
    /// latest record, verifying each new one (signed by its actor, who the
    /// state before allowed to make that change, linked by hash), and
    /// checks that the members the server reports are exactly the verified
    /// ones. A user without a verified state (new to the group, or on a new
    /// machine) starts from the record that added them: trust on first use.
    ///
    /// # Errors
    /// [`Error::GroupUntrusted`] naming what does not match;
    /// `unknown_group` for a group this user is not in; a connection error.
    pub async fn sync_group(&mut self, group: &GroupName) -> Result<(GroupInfo, GroupState)> {
        let old = self.groups.load(group)?;
        // A state this user is no longer in cannot be extended (the server
        // shows the group only to members): start from the record that
        // brings them back, keeping what the old one verified.
        let (mut state, old) = match old {
            Some(s) if s.is_member(&self.user) => (Some(s), None),
            other => (None, other),
        };
        let start = state.clone();
        loop {
            let answer = self
                .client
                .request(ClientMessage::GroupInfo {
                    rid: None,
                    group: group.clone(),
                    since: state.as_ref().map(|s| s.epoch),
                })
                .await?;
            let ServerMessage::Group { info, records, .. } = answer else {
                return Err(Error::Protocol(format!("expected group, got {answer:?}")));
            };
            let fetched = records.len();
            for r in &records {
                if &r.group != group {
                    return Err(Self::untrusted(
                        group,
                        "the server sent another group's record",
                    ));
                }
                self.verify_record(r).await?;
                match &mut state {
                    None => {
                        state = Some(
                            GroupState::rejoin(old.clone(), r, &self.user)
                                .map_err(|why| Self::untrusted(group, why))?,
                        );
                    }
                    Some(s) => s.apply(r).map_err(|why| Self::untrusted(group, why))?,
                }
            }
            let Some(s) = &state else {
                return Err(Self::untrusted(
                    group,
                    "the server showed no signed record of your membership",
                ));
            };
            match info.epoch {
                Some(e) if e == s.epoch => {
                    if state != start {
                        self.groups.save(s)?;
                    }
                    compare_members(&info, s).map_err(|why| Self::untrusted(group, why))?;
                    return Ok((info, state.expect("checked")));
                }
                Some(e) if e > s.epoch && fetched > 0 => continue,
                e => {
                    return Err(Self::untrusted(
                        group,
                        format!(
                            "the server says its latest record is epoch {}, but the records it sends end at epoch {}",
                            e.map_or("none".to_owned(), |e| e.to_string()),
                            s.epoch
                        ),
                    ));
                }
            }
        }
    }

    /// The members of `group` other than this user, as verified (see
    /// [`Session::sync_group`]): whom a file for the group is shared with.
    ///
    /// # Errors
    /// As [`Session::sync_group`].
    pub async fn group_recipients(&mut self, group: &GroupName) -> Result<Vec<UserName>> {
        let (_, state) = self.sync_group(group).await?;
        let me = self.user.clone();
        let others: Vec<UserName> = state
            .members
            .into_iter()
            .map(|m| m.user)
            .filter(|u| *u != me)
            .collect();
        self.peer_keys_many(&others).await?;
        Ok(others)
    }

    /// Signs and makes a membership change: from the verified state, works
    /// out the change under the group rules (refusing here what the server
    /// would refuse), signs the record of the result and sends it with the
    /// request. When another change got there first (`group_changed`), it
    /// fetches the new records and signs again, so concurrent admins both
    /// get their changes made. A change that changes nothing is not sent.
    async fn change_group(
        &mut self,
        group: &GroupName,
        kind: ChangeKind,
        users: Vec<UserName>,
    ) -> Result<GroupInfo> {
        let mut backoff =
            crate::Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
        loop {
            let (info, state) = if kind == ChangeKind::Created {
                (None, None)
            } else {
                let (i, s) = self.sync_group(group).await?;
                (Some(i), Some(s))
            };
            let current = state
                .as_ref()
                .map(|s| s.members.clone())
                .unwrap_or_default();
            let applied = apply_change(group, &current, kind, &self.user, &users, usize::MAX)
                .map_err(|r| Error::Rule {
                    code: r.code,
                    message: r.message,
                })?;
            if let Some(info) = info
                && !applied.changes_anything(kind)
            {
                return Ok(info);
            }
            let (epoch, prev) = match &state {
                None => (0, GENESIS_PREV.to_vec()),
                Some(s) => (s.epoch + 1, s.hash.0.clone()),
            };
            let mut record = GroupRecord {
                group: group.clone(),
                epoch,
                prev: B64(prev),
                at: now_ms(),
                change: Change {
                    kind,
                    actor: self.user.clone(),
                    users: applied.users.clone(),
                    heir: applied.heir.clone(),
                },
                members: applied.members,
                sig: B64(Vec::new()),
            };
            telepound_crypto::group::sign_record(&self.identity, &mut record);
            let (g, record_sent) = (group.clone(), Box::new(record.clone()));
            let msg = match kind {
                ChangeKind::Created => ClientMessage::GroupCreate {
                    rid: None,
                    group: g,
                    members: applied.users,
                    record: record_sent,
                },
                ChangeKind::Added => ClientMessage::GroupAdd {
                    rid: None,
                    group: g,
                    users: applied.users,
                    record: record_sent,
                },
                ChangeKind::Removed => ClientMessage::GroupRemove {
                    rid: None,
                    group: g,
                    users: applied.users,
                    record: record_sent,
                },
                ChangeKind::Left => ClientMessage::GroupLeave {
                    rid: None,
                    group: g,
                    record: record_sent,
                },
                ChangeKind::Promoted => ClientMessage::GroupPromote {
                    rid: None,
                    group: g,
                    user: users.first().cloned().unwrap_or_else(|| self.user.clone()),
                    record: record_sent,
                },
            };
            match self.client.request(msg).await {
                Ok(ServerMessage::Group { info, .. }) => {
                    // Our own record is verified by construction; the state
                    // moves by it exactly as by anyone else's.
                    let next = match state {
                        Some(mut s) => {
                            s.apply(&record)
                                .map_err(|why| Self::untrusted(group, why))?;
                            s
                        }
                        None => GroupState::first(&record, &self.user)
                            .map_err(|why| Self::untrusted(group, why))?,
                    };
                    self.groups.save(&next)?;
                    return Ok(info);
                }
                Ok(other) => {
                    return Err(Error::Protocol(format!("expected group, got {other:?}")));
                }
                Err(e)
                    if matches!(
                        e.code(),
                        Some(
                            telepound_protocol::ErrorCode::GroupChanged
                                | telepound_protocol::ErrorCode::RateLimited
                        )
                    ) && backoff.attempts() < 30 =>
                {
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Creates `group` with this user as owner.
    ///
    /// # Errors
    /// `group_exists`, `unknown_user`, `group_full`, or a connection error.
    pub async fn group_create(
        &mut self,
        group: &GroupName,
        members: Vec<UserName>,
    ) -> Result<GroupInfo> {
        self.change_group(group, ChangeKind::Created, members).await
    }

    /// Adds users (owners and admins). Every member, the new ones
    /// included, gets the signed change line.
    ///
    /// # Errors
    /// `not_an_admin`, `unknown_user`, `unknown_group`, `group_full`,
    /// [`Error::GroupUntrusted`].
    pub async fn group_add(
        &mut self,
        group: &GroupName,
        users: Vec<UserName>,
    ) -> Result<GroupInfo> {
        self.change_group(group, ChangeKind::Added, users).await
    }

    /// Removes users (owners and admins), all or none; the remaining
    /// members and each removed user get the signed change line.
    ///
    /// # Errors
    /// `not_an_admin`, `cannot_remove_owner`, `unknown_group`,
    /// [`Error::GroupUntrusted`].
    pub async fn group_remove(
        &mut self,
        group: &GroupName,
        users: Vec<UserName>,
    ) -> Result<GroupInfo> {
        self.change_group(group, ChangeKind::Removed, users).await
    }

    /// Leaves the group; the members get the signed change line (which
    /// names who inherits ownership, if anyone does).
    ///
    /// # Errors
    /// `unknown_group`, [`Error::GroupUntrusted`].
    pub async fn group_leave(&mut self, group: &GroupName) -> Result<GroupInfo> {
        self.change_group(group, ChangeKind::Left, Vec::new()).await
    }

    /// Makes a member an admin (owners and admins).
    ///
    /// # Errors
    /// `not_an_admin`, `unknown_group`, [`Error::GroupUntrusted`].
    pub async fn group_promote(&mut self, group: &GroupName, user: &UserName) -> Result<GroupInfo> {
        self.change_group(group, ChangeKind::Promoted, vec![user.clone()])
            .await
    }

    /// A group's members and roles (members only), verified against its
    /// signed records (see [`Session::sync_group`]).
    ///
    /// # Errors
    /// `unknown_group`, [`Error::GroupUntrusted`].
    pub async fn group_info(&mut self, group: &GroupName) -> Result<GroupInfo> {
        Ok(self.sync_group(group).await?.0)
    }

    /// Takes in a pushed membership change: verified against the state
    /// before it (fetching records first when some are missing), or
    /// recognised as one already verified. Returns its line unless the
    /// line was shown before.
    async fn receive_record(
        &mut self,
        record: &GroupRecord,
        server_ts: UnixMillis,
    ) -> Result<Option<GroupLine>> {
        let group = &record.group;
        let me = self.user.clone();
        let hash = record.hash();
        let line = || GroupLine {
            group: group.clone(),
            epoch: record.epoch,
            change: record.change.clone(),
            at: record.at,
            server_ts,
        };
        let mut synced = false;
        loop {
            let state = self.groups.load(group)?;
            if state
                .as_ref()
                .is_some_and(|s| s.retired.iter().any(|h| h.0 == hash))
            {
                // Verified for an earlier group of this name: delivered
                // again (a push and a mailbox page can overlap).
                return Ok(None);
            }
            if let Some(mut s) = state.clone()
                && let Some(same) = s.hashes.get(&record.epoch).map(|k| k.0 == hash)
            {
                if same {
                    let new = s.mark_shown(record.epoch);
                    if new {
                        self.groups.save(&s)?;
                    }
                    return Ok(new.then(line));
                }
                if s.is_member(&me) || !adds(record, &me) {
                    return Err(Self::untrusted(
                        group,
                        format!(
                            "a record of epoch {} from {} conflicts with the one this client verified",
                            record.epoch, record.change.actor
                        ),
                    ));
                }
            }
            match state {
                Some(mut s) if s.is_member(&me) && record.epoch == s.epoch + 1 => {
                    self.verify_record(record).await?;
                    s.apply(record).map_err(|why| Self::untrusted(group, why))?;
                    s.mark_shown(record.epoch);
                    self.groups.save(&s)?;
                    return Ok(Some(line()));
                }
                Some(s) if s.is_member(&me) && record.epoch > s.epoch && !synced => {
                    // Records are missing (expired, or acknowledged
                    // elsewhere): fetch them, then look again.
                    self.sync_group(group).await?;
                    synced = true;
                }
                Some(s) if s.is_member(&me) && record.epoch > s.epoch => {
                    return Err(Self::untrusted(
                        group,
                        format!(
                            "the server does not have the record of epoch {} that {} pushed",
                            record.epoch, record.change.actor
                        ),
                    ));
                }
                Some(s) if s.is_member(&me) => {
                    return Err(Self::untrusted(
                        group,
                        format!(
                            "the record of epoch {} is older than the history this client verified (from epoch {})",
                            record.epoch, s.since
                        ),
                    ));
                }
                // Not in the group as far as this client knows: only a
                // record that brings this user in can start a state.
                old if adds(record, &me) => {
                    self.verify_record(record).await?;
                    let mut s = GroupState::rejoin(old, record, &me)
                        .map_err(|why| Self::untrusted(group, why))?;
                    s.mark_shown(record.epoch);
                    self.groups.save(&s)?;
                    return Ok(Some(line()));
                }
                None if !synced => {
                    // A new machine: the server serves the chain from the
                    // record that added this user.
                    match self.sync_group(group).await {
                        Ok(_) => synced = true,
                        Err(e) if e.code() == Some(telepound_protocol::ErrorCode::UnknownGroup) => {
                            return Err(Self::untrusted(
                                group,
                                "a membership change for a group you are not in",
                            ));
                        }
                        Err(e) => return Err(e),
                    }
                }
                _ => {
                    return Err(Self::untrusted(
                        group,
                        format!(
                            "a change by {} that this client cannot check: you are not in #{group} in its verified history",
                            record.change.actor
                        ),
                    ));
                }
            }
        }
    }

    /// Checks an opened message that names a group: sealed for a membership
    /// epoch this client verified (fetching records when it is newer), by
    /// a member of that epoch, for exactly that epoch's members, and, when
    /// that epoch is older than the latest verified one, by someone still a
    /// member. So neither an outsider nor a member can make a one-to-one
    /// message pass for a group message, and a removed member cannot post.
    async fn check_group_message(&mut self, payload: &Payload) -> Result<()> {
        let Some(group) = &payload.group else {
            return Ok(());
        };
        let refuse = |reason: String| Error::GroupMessage {
            group: group.clone(),
            reason,
        };
        let epoch = payload
            .group_epoch
            .ok_or_else(|| refuse("it names no signed membership epoch".into()))?;
        let mut state = self.groups.load(group)?;
        let mut members = state.as_ref().and_then(|s| s.members_at(epoch));
        if members.is_none() {
            match self.sync_group(group).await {
                Ok((_, s)) => {
                    members = s.members_at(epoch);
                    state = Some(s);
                }
                // Kept for later: it may check once the connection is back
                // or a changed key is accepted.
                Err(
                    e @ (Error::KeyChanged { .. }
                    | Error::Io { .. }
                    | Error::Protocol(_)
                    | Error::Disconnected(_)
                    | Error::Timeout
                    | Error::Connect { .. }),
                ) => return Err(e),
                Err(e) if crate::is_transient(&e) => return Err(e),
                Err(Error::GroupUntrusted { reason, .. }) => return Err(refuse(reason)),
                Err(e) => return Err(refuse(e.to_string())),
            }
        }
        let Some(members) = members else {
            return Err(refuse(format!(
                "it is sealed for epoch {epoch} of #{group}'s membership, which this client has not verified"
            )));
        };
        if !members.contains(&payload.sender) {
            return Err(refuse(format!(
                "{} is not a member of #{group} (epoch {epoch})",
                payload.sender
            )));
        }
        // The server routes nothing into an envelope, so a member removed
        // since could seal a message for the membership they were still in
        // and send it one to one. Sealed for an epoch older than the latest
        // this client verified, a message is shown only if its sender is
        // still a member now. (A message a member sent just before leaving
        // arrives before the line saying so, while this client still holds
        // the older epoch, so it is shown.)
        if let Some(latest) = state.as_ref().filter(|s| s.epoch > epoch)
            && latest
                .members_at(latest.epoch)
                .is_some_and(|now| !now.contains(&payload.sender))
        {
            return Err(refuse(format!(
                "{} is no longer a member of #{group}, and it is sealed for an earlier membership (epoch {epoch}, now {})",
                payload.sender, latest.epoch
            )));
        }
        if members != payload.recipients {
            return Err(refuse(format!(
                "it was not sent to #{group}'s members (epoch {epoch}) but to {}",
                payload
                    .recipients
                    .iter()
                    .map(UserName::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(())
    }

    /// The groups this user is in.
    ///
    /// # Errors
    /// A connection error.
    pub async fn group_list(&self) -> Result<Vec<GroupSummary>> {
        match self
            .client
            .request(ClientMessage::GroupList { rid: None })
            .await?
        {
            ServerMessage::Groups { groups, .. } => Ok(groups),
            other => Err(Error::Protocol(format!("expected groups, got {other:?}"))),
        }
    }

    /// Seals and sends a text message: it goes through the outbox, so
    /// anything queued earlier leaves first and, if the connection drops,
    /// the message stays queued (see [`Session::flush_outbox`]).
    ///
    /// # Errors
    /// As [`Session::seal`] and [`Session::send_sealed`]; on a connection
    /// error the message is still in the outbox.
    pub async fn send_text(&mut self, to: &UserName, text: &str) -> Result<SendOutcome> {
        let msg_id = self.queue_text(to, text).await?;
        outcome_in(self.flush_outbox().await?, msg_id)
    }

    /// Seals a text message and puts it in the outbox on disk; it is sent
    /// by the next [`Session::flush_outbox`], with this msg_id however many
    /// tries that takes. Works while disconnected for peers whose keys were
    /// seen before.
    ///
    /// # Errors
    /// As [`Session::seal`], or the outbox file.
    pub async fn queue_text(&mut self, to: &UserName, text: &str) -> Result<MsgId> {
        self.queue(to, text, Vec::new()).await
    }

    /// [`Session::queue_text`] with attachments (already uploaded).
    ///
    /// # Errors
    /// As [`Session::queue_text`].
    pub async fn queue(
        &mut self,
        to: &UserName,
        text: &str,
        attachments: Vec<Attachment>,
    ) -> Result<MsgId> {
        let msg_id = MsgId::new();
        let envelope = self.seal(to, msg_id, text, attachments).await?;
        self.outbox.push(Pending {
            to: to.clone(),
            group: None,
            msg_id,
            envelope,
        })?;
        Ok(msg_id)
    }

    /// The HTTP side of the server, for files.
    ///
    /// # Errors
    /// As [`Http::new`].
    pub fn http(&self) -> Result<Http> {
        Http::new(self.client.url(), self.client.options())
    }

    /// Encrypts and uploads `files` for `recipients`, resuming earlier
    /// unfinished uploads of the same files; returns their descriptors.
    /// Nothing is sent as a message yet.
    ///
    /// # Errors
    /// [`Error::File`] for a missing, unreadable or folder path (before any
    /// upload); a server refusal (`file_too_large`, `quota_exceeded`); a
    /// connection error (call again: uploads resume where they stopped).
    pub async fn upload_files(
        &mut self,
        recipients: &[UserName],
        files: &[std::path::PathBuf],
        progress: std::sync::Arc<dyn Progress>,
    ) -> Result<Vec<Attachment>> {
        let mut prepared = Vec::with_capacity(files.len());
        for f in files {
            prepared.push(self.uploads.prepare(f, recipients).await?);
        }
        let http = self.http()?;
        let mut attachments = Vec::with_capacity(files.len());
        for o in &mut prepared {
            let att = self
                .uploads
                .upload(&http, &self.token, o, recipients, progress.clone())
                .await?;
            attachments.push(att);
        }
        Ok(attachments)
    }

    /// Queues a message carrying uploaded `attachments` and forgets the
    /// uploads (the outbox now holds the message).
    ///
    /// # Errors
    /// As [`Session::queue`].
    pub async fn queue_with_files(
        &mut self,
        to: &UserName,
        text: &str,
        attachments: Vec<Attachment>,
    ) -> Result<MsgId> {
        let ids: Vec<String> = attachments.iter().map(|a| a.blob_id.clone()).collect();
        let msg_id = self.queue(to, text, attachments).await?;
        for id in ids {
            self.uploads.forget(&id)?;
        }
        Ok(msg_id)
    }

    /// Uploads `files` for `to` and sends the message carrying them.
    ///
    /// # Errors
    /// As [`Session::upload_files`] and [`Session::flush_outbox`].
    pub async fn send_files(
        &mut self,
        to: &UserName,
        text: &str,
        files: &[std::path::PathBuf],
        progress: std::sync::Arc<dyn Progress>,
    ) -> Result<SendOutcome> {
        // Keys first, so a changed key stops us before any upload.
        self.peer_keys(to).await?;
        let attachments = self
            .upload_files(std::slice::from_ref(to), files, progress)
            .await?;
        let msg_id = self.queue_with_files(to, text, attachments).await?;
        outcome_in(self.flush_outbox().await?, msg_id)
    }

    /// Downloads, verifies and saves an attachment into `dir` (resuming an
    /// earlier cut download); returns where it was saved.
    ///
    /// # Errors
    /// As [`crate::files::download`].
    pub async fn download(
        &self,
        attachment: &Attachment,
        dir: &Path,
        progress: std::sync::Arc<dyn Progress>,
    ) -> Result<PathBuf> {
        crate::files::download(&self.http()?, &self.token, attachment, dir, progress).await
    }

    /// How many messages wait in the outbox.
    pub fn queued(&self) -> usize {
        self.outbox.len()
    }

    /// Sends the outbox oldest first, including what other processes of
    /// this user queued meanwhile (the file is read again first).
    ///
    /// - A message refused for good ([`crate::is_refusal`]: an unknown
    ///   recipient, a group this user is no longer in) leaves the outbox
    ///   and is listed with its error: tell the user.
    /// - Any other failure keeps the message queued, to go out (once, same
    ///   msg_id) on a later flush, and holds back the later messages of the
    ///   same conversation (that user, or that group) so that they stay in
    ///   order; other conversations go on. A connection error
    ///   ([`crate::is_transient`]) ends the flush and is returned as the
    ///   `Err` when nothing was sent before it; anything else (the server
    ///   failed to store it: `internal`; a group whose membership this
    ///   client cannot verify) is listed with the message still queued.
    ///
    /// # Errors
    /// A connection error before anything was sent; the outbox file.
    pub async fn flush_outbox(&mut self) -> Result<Vec<(Pending, Result<SendOutcome>)>> {
        self.outbox.reload()?;
        let mut done = Vec::new();
        // Conversations (a user, or a group) whose oldest waiting message
        // failed: what follows in them waits behind it, but other
        // conversations go on.
        let mut held: Vec<(Option<GroupName>, UserName)> = Vec::new();
        for p in self.outbox.items() {
            let conversation = match &p.group {
                Some(g) => (Some(g.clone()), self.user.clone()),
                None => (None, p.to.clone()),
            };
            if held.contains(&conversation) || self.outbox.find(&p.msg_id).is_none() {
                continue;
            }
            let sent = match &p.group {
                Some(g) => self.send_group_sealed(g, p.msg_id).await,
                None => self.send_sealed(&p.to, p.msg_id, p.envelope.clone()).await,
            };
            match sent {
                Err(e) if crate::is_transient(&e) => {
                    return if done.is_empty() { Err(e) } else { Ok(done) };
                }
                Err(e) if !crate::is_refusal(&e) => {
                    // Still queued; tried again by the next flush.
                    held.push(conversation);
                    done.push((p, Err(e)));
                }
                result => {
                    self.outbox.remove(&p.msg_id)?;
                    done.push((p, result));
                }
            }
        }
        Ok(done)
    }

    /// Replaces a lost connection: connects to the same server again and
    /// resumes with the session token, or, when the token is refused (it
    /// expired), logs in again with `password` if one is given. The caller
    /// then syncs the mailbox and flushes the outbox.
    ///
    /// # Errors
    /// [`Error::Connect`] while the server is down; an authentication error
    /// when neither the token nor the password is accepted.
    pub async fn reconnect(
        &mut self,
        options: &ConnectOptions,
        password: Option<&[u8]>,
    ) -> Result<Events> {
        let url = self.client.url().to_owned();
        let (client, events) = Client::connect_with(&url, options).await?;
        let resumed = client
            .request(ClientMessage::Resume {
                rid: None,
                user: self.user.clone(),
                token: telepound_protocol::message::B64(self.token.to_vec()),
            })
            .await;
        match resumed {
            Ok(ServerMessage::Resumed { .. }) => {}
            Ok(other) => return Err(Error::Protocol(format!("expected resumed, got {other:?}"))),
            Err(e) if e.code() == Some(telepound_protocol::ErrorCode::InvalidToken) => {
                let Some(password) = password else {
                    return Err(e);
                };
                let (identity, token) =
                    crate::account::authenticate(&client, &self.user, password).await?;
                if identity.identity_key() != self.identity.identity_key() {
                    return Err(Error::Protocol(
                        "the account's keys changed; log in again".into(),
                    ));
                }
                self.token = Zeroizing::new(token);
            }
            Err(e) => return Err(e),
        }
        let old = std::mem::replace(&mut self.client, client);
        drop(old);
        Ok(events)
    }

    /// Asks for one page of the mailbox after `after`. The returned future
    /// resolves once the page's entries have all been pushed as events
    /// (read events while awaiting it). When [`SyncPage::more`] is false
    /// the connection is live and new messages arrive as events.
    pub fn sync_page(
        &self,
        after: i64,
        limit: u32,
    ) -> impl Future<Output = Result<SyncPage>> + Send + 'static {
        let client = self.client.clone();
        async move {
            match client
                .request(ClientMessage::Sync {
                    rid: None,
                    after,
                    limit,
                })
                .await?
            {
                ServerMessage::Synced {
                    count,
                    more,
                    cursor,
                    ..
                } => Ok(SyncPage {
                    count,
                    more,
                    cursor,
                }),
                other => Err(Error::Protocol(format!("expected synced, got {other:?}"))),
            }
        }
    }

    /// Fetches the whole waiting mailbox page by page, calling `show` for
    /// each thing to show and acknowledging every page; returns how many
    /// messages were shown. The connection is live afterwards.
    ///
    /// # Errors
    /// A connection error (nothing unacknowledged is lost: it comes again),
    /// or a local-state error.
    pub async fn catch_up(
        &mut self,
        events: &mut Events,
        mut show: impl FnMut(&Inbound),
    ) -> Result<u64> {
        let mut after = 0;
        let mut shown = 0;
        loop {
            let page = self.sync_page(after, telepound_protocol::codec::DEFAULT_PAGE);
            tokio::pin!(page);
            let mut acks = Vec::new();
            let page = loop {
                tokio::select! {
                    biased;
                    Some(ev) = events.recv() => {
                        if let Some(inbound) = self.handle_event(ev, &mut acks).await? {
                            shown += u64::from(matches!(
                                inbound,
                                Inbound::Message(_) | Inbound::GroupChange(_)
                            ));
                            show(&inbound);
                        }
                    }
                    page = &mut page => break page?,
                }
            };
            // Everything of the page was pushed before its answer.
            while let Ok(ev) = events.try_recv() {
                if let Some(inbound) = self.handle_event(ev, &mut acks).await? {
                    shown += u64::from(matches!(
                        inbound,
                        Inbound::Message(_) | Inbound::GroupChange(_)
                    ));
                    show(&inbound);
                }
            }
            self.ack(acks).await?;
            if !page.more {
                return Ok(shown);
            }
            after = page.cursor;
        }
    }

    /// Opens a received message, verifying it came from `from` as pinned,
    /// and records it in history. A message already in history is reported
    /// as [`Incoming::Duplicate`] without opening it again.
    ///
    /// # Errors
    /// [`Error::KeyChanged`] (leave it unacknowledged: it opens after the new
    /// key is accepted), or [`Error::Crypto`] for a message that does not
    /// open or verify (acknowledge and drop it).
    pub async fn open(
        &mut self,
        seq: i64,
        msg_id: MsgId,
        from: &UserName,
        server_ts: UnixMillis,
        envelope: &RawValue,
    ) -> Result<Incoming> {
        if self.history.contains(from, &msg_id) {
            return Ok(Incoming::Duplicate { seq });
        }
        let env = Envelope::parse(envelope.get())?;
        if &env.sender != from || env.msg_id != msg_id {
            return Err(telepound_crypto::Error::Tampered(
                "envelope header differs from the server's routing",
            )
            .into());
        }
        let keys = self.peer_keys(from).await?;
        let opened = env.open(&self.identity, &self.user, &keys)?;
        self.check_group_message(&opened.payload).await?;
        self.history.append(&Record {
            dir: Direction::In,
            msg_id,
            from: from.clone(),
            server_ts,
            envelope: envelope.get().to_owned(),
        })?;
        Ok(Incoming::New(Received {
            seq,
            server_ts,
            payload: opened.payload,
        }))
    }

    /// Turns a pushed event into something to show, and adds the entries to
    /// acknowledge to `acks`: messages shown or duplicate, stored receipts,
    /// and messages that can never open. A message from a peer whose key
    /// changed, or in an unknown suite, is left in the mailbox.
    ///
    /// Returns `Ok(None)` for events with nothing to show.
    ///
    /// # Errors
    /// [`Error::Disconnected`] for [`Event::Closed`], or a local-state or
    /// connection error.
    pub async fn handle_event(
        &mut self,
        event: Event,
        acks: &mut Vec<i64>,
    ) -> Result<Option<Inbound>> {
        match event {
            Event::Closed(reason) => Err(Error::Disconnected(reason)),
            Event::Delivered {
                seq,
                msg_id,
                to,
                at,
            } => {
                // Receipts stored together come as frames in a row with one
                // seq: list it once.
                if let Some(seq) = seq.filter(|s| acks.last() != Some(s)) {
                    acks.push(seq);
                }
                Ok(Some(Inbound::Delivered { msg_id, to, at }))
            }
            Event::Message {
                seq,
                msg_id,
                from,
                server_ts,
                envelope,
            } => match self.open(seq, msg_id, &from, server_ts, &envelope).await {
                Ok(Incoming::New(r)) => {
                    acks.push(seq);
                    Ok(Some(Inbound::Message(r)))
                }
                Ok(Incoming::Duplicate { seq }) => {
                    acks.push(seq);
                    Ok(None)
                }
                Err(
                    e @ (Error::KeyChanged { .. }
                    | Error::Crypto(telepound_crypto::Error::UnknownSuite(_))),
                ) => Ok(Some(Inbound::Refused {
                    from,
                    reason: e.to_string(),
                    kept: true,
                })),
                Err(
                    e @ (Error::Crypto(_)
                    | Error::UnknownUser(_)
                    | Error::GroupMessage { .. }
                    | Error::GroupUntrusted { .. }),
                ) => {
                    acks.push(seq);
                    Ok(Some(Inbound::Refused {
                        from,
                        reason: e.to_string(),
                        kept: false,
                    }))
                }
                Err(e) => Err(e),
            },
            Event::GroupChange {
                seq,
                server_ts,
                record,
            } => match self.receive_record(&record, server_ts).await {
                Ok(line) => {
                    acks.push(seq);
                    Ok(line.map(Inbound::GroupChange))
                }
                Err(e @ Error::KeyChanged { .. }) => Ok(Some(Inbound::Refused {
                    from: record.change.actor.clone(),
                    reason: e.to_string(),
                    kept: true,
                })),
                Err(e) if crate::is_transient(&e) => Err(e),
                Err(e @ Error::Io { .. }) => Err(e),
                // The server answered something odd while the record was
                // being checked: try again with the next delivery.
                Err(e @ Error::Protocol(_)) => Ok(Some(Inbound::Refused {
                    from: record.change.actor.clone(),
                    reason: format!("a change to #{} could not be checked: {e}", record.group),
                    kept: true,
                })),
                // A change that does not verify is never shown as one.
                Err(e) => {
                    acks.push(seq);
                    let why = match e {
                        Error::GroupUntrusted { reason, .. } => reason,
                        other => other.to_string(),
                    };
                    Ok(Some(Inbound::Refused {
                        from: record.change.actor.clone(),
                        reason: format!("a change to #{} was not shown: {why}", record.group),
                        kept: false,
                    }))
                }
            },
        }
    }

    /// Acknowledges received entries so the server deletes them.
    ///
    /// # Errors
    /// A connection or server error.
    pub async fn ack(&self, seqs: Vec<i64>) -> Result<u64> {
        if seqs.is_empty() {
            return Ok(0);
        }
        // `request` sets the rid, so the server answers with the count.
        match self
            .client
            .request(ClientMessage::Ack { rid: None, seqs })
            .await?
        {
            ServerMessage::Acked { count, .. } => Ok(count),
            other => Err(Error::Protocol(format!("expected acked, got {other:?}"))),
        }
    }

    /// Presence of `users`; the second list holds names without accounts.
    ///
    /// # Errors
    /// A connection or server error.
    pub async fn presence(
        &self,
        users: Vec<UserName>,
    ) -> Result<(Vec<PresenceInfo>, Vec<UserName>)> {
        match self
            .client
            .request(ClientMessage::Presence { rid: None, users })
            .await?
        {
            ServerMessage::Presence { users, unknown, .. } => Ok((users, unknown)),
            other => Err(Error::Protocol(format!("expected presence, got {other:?}"))),
        }
    }

    /// The safety number between this user and `peer`, from the key the
    /// directory serves now, and how that key relates to the pin. On first
    /// contact the key is pinned (unverified).
    ///
    /// # Errors
    /// [`Error::UnknownUser`] or a bad key signature.
    pub async fn safety_number(&mut self, peer: &UserName) -> Result<Verification> {
        let keys = if peer == &self.user {
            self.identity.peer_keys()
        } else {
            self.directory(peer).await?
        };
        let status = match self.pins.get(peer) {
            None => {
                self.pins.set(peer, &keys.identity_key(), false)?;
                KeyStatus::New
            }
            Some(p) if p.identity.0 != keys.identity_key() => KeyStatus::Changed,
            Some(p) if p.verified => KeyStatus::Verified,
            Some(_) => KeyStatus::Pinned,
        };
        let number = safety_number(
            (&self.user, &self.identity.identity_key()),
            (peer, &keys.identity_key()),
        );
        Ok(Verification {
            number,
            status,
            identity_key: keys.identity_key(),
        })
    }

    /// Pins `peer`'s key as verified, after the user compared the safety
    /// number of [`Verification::identity_key`]. The directory is asked
    /// again and must still serve that same key: a server that showed one
    /// key for the comparison and another at acceptance is refused.
    ///
    /// # Errors
    /// [`Error::KeyChanged`] when the directory's key is no longer the one
    /// compared; [`Error::UnknownUser`]; a bad key signature; the pin file.
    pub async fn accept_key(&mut self, peer: &UserName, compared: &[u8; 32]) -> Result<()> {
        let keys = self.directory(peer).await?;
        if &keys.identity_key() != compared {
            return Err(Error::KeyChanged { user: peer.clone() });
        }
        self.pins.set(peer, compared, true)?;
        self.keys.insert(peer.clone(), keys);
        Ok(())
    }
}

/// The outcome of `msg_id` in a flush's list: its own result, or, when the
/// flush stopped before it, the error that stopped it (the message is then
/// still queued behind the one that failed).
fn outcome_in(flushed: Vec<(Pending, Result<SendOutcome>)>, msg_id: MsgId) -> Result<SendOutcome> {
    let mut stopped = None;
    for (pending, result) in flushed {
        if pending.msg_id == msg_id {
            return result;
        }
        if let Err(e) = result
            && !crate::is_refusal(&e)
        {
            stopped = Some(e);
        }
    }
    Err(stopped.unwrap_or(Error::Disconnected(None)))
}

/// A safety number and what it was computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// 60 digits in groups of 5.
    pub number: String,
    /// How the key relates to the pin.
    pub status: KeyStatus,
    /// The peer's identity key the number was computed from; pass it to
    /// [`Session::accept_key`].
    pub identity_key: [u8; 32],
}

/// Creates `dir` (and parents) readable only by the owner.
fn create_private_dir(dir: &Path) -> Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))
}

/// Whether the server's member list is exactly the verified one: the same
/// users, in the same order, with the same roles. The reason names who
/// differs.
fn compare_members(info: &GroupInfo, state: &GroupState) -> std::result::Result<(), String> {
    let server: Vec<_> = info.members.iter().map(|m| (&m.user, m.role)).collect();
    let verified: Vec<_> = state.members.iter().map(|m| (&m.user, m.role)).collect();
    if server == verified {
        return Ok(());
    }
    let names = |v: Vec<&UserName>| v.iter().map(|u| u.as_str()).collect::<Vec<_>>().join(", ");
    let extra: Vec<&UserName> = server
        .iter()
        .map(|(u, _)| *u)
        .filter(|u| !state.is_member(u))
        .collect();
    let missing: Vec<&UserName> = verified
        .iter()
        .map(|(u, _)| *u)
        .filter(|u| !info.members.iter().any(|m| &m.user == *u))
        .collect();
    let mut why = Vec::new();
    if !extra.is_empty() {
        why.push(format!(
            "the server lists {} as {}, but no signed record added {}",
            names(extra.clone()),
            if extra.len() == 1 {
                "a member"
            } else {
                "members"
            },
            if extra.len() == 1 {
                "them"
            } else {
                "any of them"
            },
        ));
    }
    if !missing.is_empty() {
        why.push(format!(
            "the server leaves out {}, whom no signed record removed",
            names(missing)
        ));
    }
    if why.is_empty() {
        why.push("the server shows roles or an order that no signed record made".into());
    }
    Err(format!(
        "{} (verified epoch {})",
        why.join("; "),
        state.epoch
    ))
}
