//! Client and server messages.
//!
//! Requests carry an optional `rid` (request id) chosen by the client; the
//! server copies it into the response or `error` for that request, so a client
//! can have several requests in flight. Pushes (`message`, `delivered`) carry
//! no `rid`.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::auth::KsfParams;
use crate::group::GroupRecord;
use crate::{ErrorCode, GroupName, MsgId, UserName};

/// Bytes carried as standard base64 text in JSON.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct B64(pub Vec<u8>);

impl std::fmt::Debug for B64 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "B64({} bytes)", self.0.len())
    }
}

impl Serialize for B64 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for B64 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use base64::Engine;
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map(B64)
            .map_err(serde::de::Error::custom)
    }
}

impl From<Vec<u8>> for B64 {
    fn from(v: Vec<u8>) -> Self {
        B64(v)
    }
}

/// Milliseconds since the Unix epoch, UTC.
pub type UnixMillis = i64;

/// One well-formed JSON value, kept exactly as its sender wrote it (a sealed
/// envelope the server forwards without looking inside). Shared, so that the
/// server can hand the same text to its store, its log and a live recipient
/// without copying it.
#[derive(Clone, PartialEq, Eq)]
pub struct RawJson(std::sync::Arc<str>);

impl RawJson {
    /// Checks that `json` is exactly one JSON value (surrounding whitespace
    /// is dropped).
    ///
    /// # Errors
    /// serde_json's error when it is not.
    pub fn parse(json: &str) -> Result<Self, serde_json::Error> {
        let raw: &RawValue = serde_json::from_str(json)?;
        Ok(Self(raw.get().into()))
    }

    /// Wraps text the caller has already checked to be one JSON value with
    /// no surrounding whitespace.
    pub(crate) fn checked(json: &str) -> Self {
        Self(json.into())
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        &self.0
    }

    /// The shared text itself.
    pub fn into_shared(self) -> std::sync::Arc<str> {
        self.0
    }
}

impl std::fmt::Debug for RawJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawJson({} bytes)", self.0.len())
    }
}

impl Serialize for RawJson {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Written through serde_json's raw value, as is. Borrowing one
        // scans the text again (serde_json makes no unchecked raw value):
        // a client's cost per send, next to sealing the envelope; the
        // server renders its frames without serde.
        let raw: &RawValue = serde_json::from_str(&self.0).map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }
}

impl<'de> Deserialize<'de> for RawJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(d)?;
        Ok(Self(Box::<str>::from(raw).into()))
    }
}

/// A user's public keys, as published in the key directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKeys {
    /// Ed25519 identity (signing) key, 32 bytes.
    pub identity: B64,
    /// X-Wing KEM public key, 1216 bytes.
    pub kem: B64,
    /// Ed25519 signature by `identity` over the KEM key (see the crypto crate).
    pub kem_sig: B64,
}

/// One user's entry in a `keys` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserKeys {
    /// Whose keys these are.
    pub user: UserName,
    /// The keys.
    pub keys: PublicKeys,
}

/// One user's entry in a `presence` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceInfo {
    /// The user.
    pub user: UserName,
    /// Whether the user has at least one logged-in connection now.
    pub online: bool,
    /// When the user's last connection ended; `None` if never, or online now.
    pub last_seen: Option<UnixMillis>,
}

/// A member's role in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Can post.
    Member,
    /// Can also add, remove and promote.
    Admin,
    /// The creator (or whoever inherited the group): an admin who cannot be
    /// removed by other admins.
    Owner,
}

/// One member of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMember {
    /// The user.
    pub user: UserName,
    /// Their role.
    pub role: Role,
    /// When they joined.
    pub joined_at: UnixMillis,
}

/// A group and its current members, longest-standing first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    /// The group.
    pub group: GroupName,
    /// The epoch of its latest signed record (see [`crate::group`]);
    /// absent for a group without a signed history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// Its members.
    pub members: Vec<GroupMember>,
}

/// One line of a `groups` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSummary {
    /// The group.
    pub group: GroupName,
    /// The asking user's role in it.
    pub role: Role,
    /// How many members it has.
    pub members: u32,
}

/// What a client sends.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// OPAQUE registration, first message.
    RegisterStart {
        /// Request id, echoed back.
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
        /// The name to register.
        user: UserName,
        /// OPAQUE `RegistrationRequest`.
        request: B64,
    },
    /// OPAQUE registration, final message, with the new user's public keys and
    /// sealed private-key backup.
    RegisterFinish {
        /// Request id, echoed back.
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
        /// The name to register (same as in `register_start`).
        user: UserName,
        /// OPAQUE `RegistrationUpload` (the record the server stores).
        upload: B64,
        /// The Argon2id parameters the client stretched the password with.
        ksf: KsfParams,
        /// The user's public keys for the key directory.
        keys: PublicKeys,
        /// The private keys, sealed under a key only the password can derive.
        backup: B64,
    },
    /// OPAQUE login, first message.
    LoginStart {
        /// Request id, echoed back.
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
        /// Who is logging in.
        user: UserName,
        /// OPAQUE `CredentialRequest`.
        request: B64,
    },
    /// OPAQUE login, final message.
    LoginFinish {
        /// Request id, echoed back.
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
        /// OPAQUE `CredentialFinalization`.
        finalization: B64,
    },
    /// Log in with a session token from an earlier `login_ok` (reconnects).
    Resume {
        /// Request id, echoed back.
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
        /// Who is resuming.
        user: UserName,
        /// The token from `login_ok`.
        token: B64,
    },
    /// Send an end-to-end encrypted message to one user.
    Send {
        /// Request id, echoed back.
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
        /// Client-chosen id; a retry with the same id is stored once.
        msg_id: MsgId,
        /// The sender; must be the session's user.
        from: UserName,
        /// The recipient.
        to: UserName,
        /// The sealed envelope, opaque to the server.
        envelope: RawJson,
    },
    /// Deliver one page of the waiting mailbox: the server pushes up to
    /// `limit` entries after `after` as `message` / `delivered` frames, in
    /// mailbox order, then answers `synced`. When `synced` says there is no
    /// more, the connection is live: new entries are pushed as they arrive.
    /// Asking page by page is the flow control: a client gets no more than
    /// it asked for while catching up.
    Sync {
        /// Request id, echoed back in `synced`.
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
        /// Deliver entries with `seq` greater than this (0: from the start).
        after: i64,
        /// Most entries in this page (1..=1024).
        limit: u32,
    },
    /// Acknowledge received messages by their mailbox sequence numbers; the
    /// server deletes them and tells each sender `delivered`.
    Ack {
        /// Request id, echoed back in `acked`.
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
        /// The `seq` of each message received.
        seqs: Vec<i64>,
    },
    /// Fetch users' public keys from the key directory.
    Keys {
        /// Request id, echoed back.
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
        /// Whose keys.
        users: Vec<UserName>,
    },
    /// Ask whether users are online and when they were last seen.
    Presence {
        /// Request id, echoed back.
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
        /// Which users.
        users: Vec<UserName>,
    },
    /// Create a group with the sender as owner and `members` as members.
    GroupCreate {
        /// Request id, echoed back.
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
        /// The new group's name.
        group: GroupName,
        /// Its first members besides the creator.
        members: Vec<UserName>,
        /// The signed epoch-0 record.
        record: Box<GroupRecord>,
    },
    /// Add users to a group (owners and admins).
    GroupAdd {
        /// Request id, echoed back.
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
        /// The group.
        group: GroupName,
        /// Who to add.
        users: Vec<UserName>,
        /// The signed record of the change.
        record: Box<GroupRecord>,
    },
    /// Remove users from a group (owners and admins).
    GroupRemove {
        /// Request id, echoed back.
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
        /// The group.
        group: GroupName,
        /// Who to remove.
        users: Vec<UserName>,
        /// The signed record of the change.
        record: Box<GroupRecord>,
    },
    /// Leave a group.
    GroupLeave {
        /// Request id, echoed back.
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
        /// The group.
        group: GroupName,
        /// The signed record of the change.
        record: Box<GroupRecord>,
    },
    /// Make a member an admin (owners and admins).
    GroupPromote {
        /// Request id, echoed back.
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
        /// The group.
        group: GroupName,
        /// Who.
        user: UserName,
        /// The signed record of the change.
        record: Box<GroupRecord>,
    },
    /// The groups the sender is in.
    GroupList {
        /// Request id, echoed back.
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
    },
    /// A group's members and roles, and its signed records (members only).
    GroupInfo {
        /// Request id, echoed back.
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
        /// The group.
        group: GroupName,
        /// The epoch the client has verified: records after it are sent.
        /// Absent: records from the one that added the asking user.
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
    },
    /// Send one envelope, wrapped for every current member, to a group.
    GroupSend {
        /// Request id, echoed back.
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
        /// Client-chosen id; a retry with the same id is stored once.
        msg_id: MsgId,
        /// The sender; must be the session's user and a member.
        from: UserName,
        /// The group.
        group: GroupName,
        /// Everyone the envelope is wrapped for (the sender included),
        /// which must be exactly the current membership.
        recipients: Vec<UserName>,
        /// The sealed envelope, opaque to the server.
        envelope: Box<RawValue>,
    },
}

impl ClientMessage {
    /// The request id, if the client set one.
    pub fn rid(&self) -> Option<u64> {
        match self {
            Self::RegisterStart { rid, .. }
            | Self::RegisterFinish { rid, .. }
            | Self::LoginStart { rid, .. }
            | Self::LoginFinish { rid, .. }
            | Self::Resume { rid, .. }
            | Self::Send { rid, .. }
            | Self::Sync { rid, .. }
            | Self::Ack { rid, .. }
            | Self::Keys { rid, .. }
            | Self::Presence { rid, .. }
            | Self::GroupCreate { rid, .. }
            | Self::GroupAdd { rid, .. }
            | Self::GroupRemove { rid, .. }
            | Self::GroupLeave { rid, .. }
            | Self::GroupPromote { rid, .. }
            | Self::GroupList { rid }
            | Self::GroupInfo { rid, .. }
            | Self::GroupSend { rid, .. } => *rid,
        }
    }

    /// Sets the request id.
    pub fn set_rid(&mut self, id: u64) {
        match self {
            Self::RegisterStart { rid, .. }
            | Self::RegisterFinish { rid, .. }
            | Self::LoginStart { rid, .. }
            | Self::LoginFinish { rid, .. }
            | Self::Resume { rid, .. }
            | Self::Send { rid, .. }
            | Self::Sync { rid, .. }
            | Self::Ack { rid, .. }
            | Self::Keys { rid, .. }
            | Self::Presence { rid, .. }
            | Self::GroupCreate { rid, .. }
            | Self::GroupAdd { rid, .. }
            | Self::GroupRemove { rid, .. }
            | Self::GroupLeave { rid, .. }
            | Self::GroupPromote { rid, .. }
            | Self::GroupList { rid }
            | Self::GroupInfo { rid, .. }
            | Self::GroupSend { rid, .. } => *rid = Some(id),
        }
    }

    /// The wire name of this message's type.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::RegisterStart { .. } => "register_start",
            Self::RegisterFinish { .. } => "register_finish",
            Self::LoginStart { .. } => "login_start",
            Self::LoginFinish { .. } => "login_finish",
            Self::Resume { .. } => "resume",
            Self::Send { .. } => "send",
            Self::Sync { .. } => "sync",
            Self::Ack { .. } => "ack",
            Self::Keys { .. } => "keys",
            Self::Presence { .. } => "presence",
            Self::GroupCreate { .. } => "group_create",
            Self::GroupAdd { .. } => "group_add",
            Self::GroupRemove { .. } => "group_remove",
            Self::GroupLeave { .. } => "group_leave",
            Self::GroupPromote { .. } => "group_promote",
            Self::GroupList { .. } => "group_list",
            Self::GroupInfo { .. } => "group_info",
            Self::GroupSend { .. } => "group_send",
        }
    }
}

/// What the server sends.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// OPAQUE registration response.
    RegisterChallenge {
        /// The request's id.
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
        /// OPAQUE `RegistrationResponse`.
        response: B64,
        /// The weakest Argon2id parameters this server accepts for a new
        /// account, so the client can refuse before stretching.
        min_ksf: KsfParams,
    },
    /// The account exists now.
    Registered {
        /// The request's id.
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
        /// The new user.
        user: UserName,
    },
    /// OPAQUE login challenge, with the account's Argon2 parameters.
    LoginChallenge {
        /// The request's id.
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
        /// OPAQUE `CredentialResponse`.
        response: B64,
        /// The parameters the password was registered with.
        ksf: KsfParams,
    },
    /// The login verified; the connection is now the user's session.
    LoginOk {
        /// The request's id.
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
        /// The logged-in user.
        user: UserName,
        /// The sealed private-key backup stored at sign-up.
        backup: B64,
        /// The user's published public keys, so the client can check that the
        /// directory matches its private keys.
        keys: PublicKeys,
        /// A session token for `resume` on reconnect.
        token: B64,
        /// Seconds until the token expires.
        token_ttl_secs: u64,
    },
    /// A `resume` succeeded.
    Resumed {
        /// The request's id.
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
        /// The logged-in user.
        user: UserName,
    },
    /// The message is stored durably in every recipient's mailbox.
    Accepted {
        /// The request's id.
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
        /// The message.
        msg_id: MsgId,
        /// Server time of acceptance.
        server_ts: UnixMillis,
        /// Whether the recipient had a live session when the message was
        /// stored (so a `delivered` may follow soon).
        recipient_online: bool,
    },
    /// A message for this user (pushed live or from the mailbox).
    Message {
        /// Mailbox sequence number; acknowledge with `ack`.
        seq: i64,
        /// The sender's message id.
        msg_id: MsgId,
        /// The sender, as authenticated by the server.
        from: UserName,
        /// Server time of acceptance.
        server_ts: UnixMillis,
        /// The sealed envelope, byte for byte as the sender sent it.
        envelope: Box<RawValue>,
    },
    /// A recipient acknowledged one of this user's messages.
    Delivered {
        /// Set when the receipt was stored while this user was away:
        /// acknowledge it with `ack` like a message.
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<i64>,
        /// The message.
        msg_id: MsgId,
        /// The recipient who received it.
        to: UserName,
        /// When the recipient acknowledged it.
        at: UnixMillis,
    },
    /// A page of the mailbox has been pushed.
    Synced {
        /// The `sync` request's id.
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
        /// How many entries this page pushed.
        count: u64,
        /// Whether more may be waiting: ask again with `after = cursor`.
        /// When false, the connection is live.
        more: bool,
        /// The highest `seq` pushed so far (the `after` for the next page).
        cursor: i64,
    },
    /// The acknowledged messages are deleted from the mailbox.
    Acked {
        /// The request's id.
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
        /// How many were deleted (already-deleted ones are not counted).
        count: u64,
    },
    /// Key directory answer.
    Keys {
        /// The request's id.
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
        /// One entry per known user, in the order asked.
        keys: Vec<UserKeys>,
        /// Names asked for that have no account.
        unknown: Vec<UserName>,
    },
    /// Presence answer.
    Presence {
        /// The request's id.
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
        /// One entry per known user, in the order asked.
        users: Vec<PresenceInfo>,
        /// Names asked for that have no account.
        unknown: Vec<UserName>,
    },
    /// A group as it is now (answer to group changes and `group_info`).
    Group {
        /// The request's id.
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
        /// The group and its members.
        info: GroupInfo,
        /// Signed records the client asked for (`group_info`), oldest
        /// first, at most [`crate::group::MAX_RECORDS_PER_ANSWER`].
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        records: Vec<GroupRecord>,
    },
    /// A membership change, pushed to every member before and after it.
    GroupChange {
        /// Mailbox sequence number; acknowledge with `ack`.
        seq: i64,
        /// When the server applied it.
        server_ts: UnixMillis,
        /// The signed record.
        record: Box<GroupRecord>,
    },
    /// The groups the user is in.
    Groups {
        /// The request's id.
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
        /// One line per group.
        groups: Vec<GroupSummary>,
    },
    /// A `group_send` was wrapped for a membership that is no longer
    /// current: nothing was stored; wrap for `members` and send again.
    Membership {
        /// The request's id.
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
        /// The group.
        group: GroupName,
        /// Its current members, sorted.
        members: Vec<UserName>,
    },
    /// A request failed.
    Error {
        /// The failed request's id, when it could be read.
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
        /// Stable code.
        code: ErrorCode,
        /// Readable detail for people; not a contract.
        message: String,
    },
}

impl ServerMessage {
    /// The request id this answers, if any.
    pub fn rid(&self) -> Option<u64> {
        match self {
            Self::RegisterChallenge { rid, .. }
            | Self::Registered { rid, .. }
            | Self::LoginChallenge { rid, .. }
            | Self::LoginOk { rid, .. }
            | Self::Resumed { rid, .. }
            | Self::Accepted { rid, .. }
            | Self::Synced { rid, .. }
            | Self::Acked { rid, .. }
            | Self::Keys { rid, .. }
            | Self::Presence { rid, .. }
            | Self::Group { rid, .. }
            | Self::Groups { rid, .. }
            | Self::Membership { rid, .. }
            | Self::Error { rid, .. } => *rid,
            Self::Message { .. } | Self::Delivered { .. } | Self::GroupChange { .. } => None,
        }
    }

    /// An `error` frame with the code's standard text.
    pub fn error(rid: Option<u64>, code: ErrorCode) -> Self {
        Self::Error {
            rid,
            code,
            message: code.describe().to_owned(),
        }
    }
}
