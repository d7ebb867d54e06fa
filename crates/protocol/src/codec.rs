//! JSON text frames: encoding, and decoding with a size cap.
//!
//! Decoding reads the `type` and `rid` first and then the variant's own
//! fields, so that envelopes stay raw JSON (see the crate docs).

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use crate::auth::KsfParams;
use crate::group::GroupRecord;
use crate::message::{
    B64, GroupInfo, GroupSummary, PresenceInfo, PublicKeys, RawJson, UnixMillis, UserKeys,
};
use crate::{ClientMessage, ErrorCode, GroupName, MsgId, ServerMessage, UserName};

/// Why a frame could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Larger than the cap.
    #[error("frame of {size} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The frame's size.
        size: usize,
        /// The cap.
        max: usize,
    },
    /// Not JSON, no `type`, or a field missing or of the wrong shape.
    #[error("malformed frame: {reason}")]
    Malformed {
        /// The request id, when it could be read.
        rid: Option<u64>,
        /// What was wrong (serde's message; no frame content).
        reason: String,
    },
    /// A `type` this side does not know.
    #[error("unknown message type {kind:?}")]
    UnknownType {
        /// The request id, when it could be read.
        rid: Option<u64>,
        /// The type as sent (truncated to 64 bytes).
        kind: String,
    },
}

impl DecodeError {
    /// The wire error code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::TooLarge { .. } => ErrorCode::FrameTooLarge,
            Self::Malformed { .. } => ErrorCode::Malformed,
            Self::UnknownType { .. } => ErrorCode::UnknownType,
        }
    }

    /// The request id, when it could be read.
    pub fn rid(&self) -> Option<u64> {
        match self {
            Self::TooLarge { .. } => None,
            Self::Malformed { rid, .. } | Self::UnknownType { rid, .. } => *rid,
        }
    }
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    rid: Option<u64>,
}

/// Reads `type` and `rid` and stops as soon as it has both: clients write
/// them first, and the rest of the frame (a send's envelope is most of
/// it) is read once, by the variant's own parse, which also checks that
/// the whole frame is well-formed JSON.
fn head(text: &str, max: usize) -> Result<Head<'_>, DecodeError> {
    use serde::de::{Deserializer as _, Error as _, IgnoredAny, MapAccess, Visitor};
    use std::cell::Cell;

    if text.len() > max {
        return Err(DecodeError::TooLarge {
            size: text.len(),
            max,
        });
    }
    /// Said (as an error) to stop reading once the head is complete.
    const DONE: &str = "telepound: head complete";
    struct HeadVisitor<'c, 'a>(&'c Cell<Option<Head<'a>>>);
    impl<'de> Visitor<'de> for HeadVisitor<'_, 'de> {
        type Value = Head<'de>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object with a \"type\"")
        }
        fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Head<'de>, M::Error> {
            let (mut kind, mut rid): (Option<Cow<'de, str>>, Option<Option<u64>>) = (None, None);
            while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                match &*key {
                    "type" if kind.is_some() => return Err(M::Error::duplicate_field("type")),
                    "rid" if rid.is_some() => return Err(M::Error::duplicate_field("rid")),
                    "type" => kind = Some(map.next_value::<BorrowedOrOwned<'de>>()?.0),
                    "rid" => rid = Some(map.next_value()?),
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                if let (Some(k), Some(r)) = (&kind, rid) {
                    self.0.set(Some(Head {
                        kind: k.clone(),
                        rid: r,
                    }));
                    return Err(M::Error::custom(DONE));
                }
            }
            Ok(Head {
                kind: kind.ok_or_else(|| M::Error::missing_field("type"))?,
                rid: rid.flatten(),
            })
        }
    }
    let mut found = Cell::new(None);
    let mut de = serde_json::Deserializer::from_str(text);
    match (&mut de).deserialize_map(HeadVisitor(&found)) {
        Ok(head) => {
            de.end().map_err(|e| DecodeError::Malformed {
                rid: head.rid,
                reason: e.to_string(),
            })?;
            Ok(head)
        }
        Err(_) if found.get_mut().is_some() => Ok(found.into_inner().expect("checked")),
        Err(e) => Err(DecodeError::Malformed {
            rid: None,
            reason: e.to_string(),
        }),
    }
}

/// A string borrowed from the frame when it has no escapes, else owned.
struct BorrowedOrOwned<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for BorrowedOrOwned<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Cow<'de, str>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v.to_owned()))
            }
        }
        d.deserialize_str(V).map(BorrowedOrOwned)
    }
}

fn body<T: DeserializeOwned>(text: &str, rid: Option<u64>) -> Result<T, DecodeError> {
    serde_json::from_str(text).map_err(|e| DecodeError::Malformed {
        rid,
        reason: e.to_string(),
    })
}

fn unknown(kind: &str, rid: Option<u64>) -> DecodeError {
    let mut end = kind.len().min(64);
    while !kind.is_char_boundary(end) {
        end -= 1;
    }
    DecodeError::UnknownType {
        rid,
        kind: kind[..end].to_owned(),
    }
}

/// Default and largest `sync` page.
pub const DEFAULT_PAGE: u32 = 256;
/// Largest `sync` page a server serves.
pub const MAX_PAGE: u32 = 1024;

fn default_page() -> u32 {
    DEFAULT_PAGE
}

/// Decodes one client frame.
///
/// # Errors
/// [`DecodeError`] for an oversize frame, malformed JSON or fields, or an
/// unknown type. The error carries the `rid` when it could be read, so the
/// server can answer the right request.
pub fn decode_client(text: &str, max: usize) -> Result<ClientMessage, DecodeError> {
    if text.len() <= max
        && let Some(send) = crate::scan::send(text)
    {
        return Ok(send);
    }
    decode_client_general(text, max)
}

/// Whether [`decode_client`] reads `text` with its one-pass reader for
/// `send` frames (rather than serde). For tests that check real clients'
/// frames take it; not part of the API.
#[doc(hidden)]
pub fn reads_send_in_one_pass(text: &str) -> bool {
    crate::scan::send(text).is_some()
}

/// [`decode_client`] without its reader for `send` frames: serde for every
/// frame. Public for the tests and the fuzz target that check the two
/// agree; not part of the API.
#[doc(hidden)]
pub fn decode_client_general(text: &str, max: usize) -> Result<ClientMessage, DecodeError> {
    let Head { kind, rid } = head(text, max)?;
    Ok(match &*kind {
        "register_start" => {
            #[derive(Deserialize)]
            struct B {
                user: UserName,
                request: B64,
            }
            let b: B = body(text, rid)?;
            ClientMessage::RegisterStart {
                rid,
                user: b.user,
                request: b.request,
            }
        }
        "register_finish" => {
            #[derive(Deserialize)]
            struct B {
                user: UserName,
                upload: B64,
                ksf: KsfParams,
                keys: PublicKeys,
                backup: B64,
            }
            let b: B = body(text, rid)?;
            ClientMessage::RegisterFinish {
                rid,
                user: b.user,
                upload: b.upload,
                ksf: b.ksf,
                keys: b.keys,
                backup: b.backup,
            }
        }
        "login_start" => {
            #[derive(Deserialize)]
            struct B {
                user: UserName,
                request: B64,
            }
            let b: B = body(text, rid)?;
            ClientMessage::LoginStart {
                rid,
                user: b.user,
                request: b.request,
            }
        }
        "login_finish" => {
            #[derive(Deserialize)]
            struct B {
                finalization: B64,
            }
            let b: B = body(text, rid)?;
            ClientMessage::LoginFinish {
                rid,
                finalization: b.finalization,
            }
        }
        "resume" => {
            #[derive(Deserialize)]
            struct B {
                user: UserName,
                token: B64,
            }
            let b: B = body(text, rid)?;
            ClientMessage::Resume {
                rid,
                user: b.user,
                token: b.token,
            }
        }
        "send" => {
            #[derive(Deserialize)]
            struct B {
                msg_id: MsgId,
                from: UserName,
                to: UserName,
                envelope: RawJson,
            }
            let b: B = body(text, rid)?;
            ClientMessage::Send {
                rid,
                msg_id: b.msg_id,
                from: b.from,
                to: b.to,
                envelope: b.envelope,
            }
        }
        "sync" => {
            #[derive(Deserialize)]
            struct B {
                #[serde(default)]
                after: i64,
                #[serde(default = "default_page")]
                limit: u32,
            }
            let b: B = body(text, rid)?;
            ClientMessage::Sync {
                rid,
                after: b.after,
                limit: b.limit,
            }
        }
        "ack" => {
            #[derive(Deserialize)]
            struct B {
                seqs: Vec<i64>,
            }
            let b: B = body(text, rid)?;
            ClientMessage::Ack { rid, seqs: b.seqs }
        }
        "keys" => {
            #[derive(Deserialize)]
            struct B {
                users: Vec<UserName>,
            }
            let b: B = body(text, rid)?;
            ClientMessage::Keys {
                rid,
                users: b.users,
            }
        }
        "presence" => {
            #[derive(Deserialize)]
            struct B {
                users: Vec<UserName>,
            }
            let b: B = body(text, rid)?;
            ClientMessage::Presence {
                rid,
                users: b.users,
            }
        }
        "group_create" => {
            #[derive(Deserialize)]
            struct B {
                group: GroupName,
                #[serde(default)]
                members: Vec<UserName>,
                record: Box<GroupRecord>,
            }
            let b: B = body(text, rid)?;
            ClientMessage::GroupCreate {
                rid,
                group: b.group,
                members: b.members,
                record: b.record,
            }
        }
        "group_add" | "group_remove" => {
            #[derive(Deserialize)]
            struct B {
                group: GroupName,
                users: Vec<UserName>,
                record: Box<GroupRecord>,
            }
            let b: B = body(text, rid)?;
            if kind == "group_add" {
                ClientMessage::GroupAdd {
                    rid,
                    group: b.group,
                    users: b.users,
                    record: b.record,
                }
            } else {
                ClientMessage::GroupRemove {
                    rid,
                    group: b.group,
                    users: b.users,
                    record: b.record,
                }
            }
        }
        "group_leave" => {
            #[derive(Deserialize)]
            struct B {
                group: GroupName,
                record: Box<GroupRecord>,
            }
            let b: B = body(text, rid)?;
            ClientMessage::GroupLeave {
                rid,
                group: b.group,
                record: b.record,
            }
        }
        "group_info" => {
            #[derive(Deserialize)]
            struct B {
                group: GroupName,
                #[serde(default)]
                since: Option<u64>,
            }
            let b: B = body(text, rid)?;
            ClientMessage::GroupInfo {
                rid,
                group: b.group,
                since: b.since,
            }
        }
        "group_promote" => {
            #[derive(Deserialize)]
            struct B {
                group: GroupName,
                user: UserName,
                record: Box<GroupRecord>,
            }
            let b: B = body(text, rid)?;
            ClientMessage::GroupPromote {
                rid,
                group: b.group,
                user: b.user,
                record: b.record,
            }
        }
        "group_list" => {
            // No fields of its own, but the whole frame is still checked
            // (the head is read without the rest).
            body::<serde::de::IgnoredAny>(text, rid)?;
            ClientMessage::GroupList { rid }
        }
        "group_send" => {
            #[derive(Deserialize)]
            struct B {
                msg_id: MsgId,
                from: UserName,
                group: GroupName,
                recipients: Vec<UserName>,
                envelope: Box<RawValue>,
            }
            let b: B = body(text, rid)?;
            ClientMessage::GroupSend {
                rid,
                msg_id: b.msg_id,
                from: b.from,
                group: b.group,
                recipients: b.recipients,
                envelope: b.envelope,
            }
        }
        other => return Err(unknown(other, rid)),
    })
}

/// Decodes one server frame.
///
/// # Errors
/// As [`decode_client`].
pub fn decode_server(text: &str, max: usize) -> Result<ServerMessage, DecodeError> {
    let Head { kind, rid } = head(text, max)?;
    Ok(match &*kind {
        "register_challenge" => {
            #[derive(Deserialize)]
            struct B {
                response: B64,
                min_ksf: KsfParams,
            }
            let b: B = body(text, rid)?;
            ServerMessage::RegisterChallenge {
                rid,
                response: b.response,
                min_ksf: b.min_ksf,
            }
        }
        "registered" => {
            #[derive(Deserialize)]
            struct B {
                user: UserName,
            }
            let b: B = body(text, rid)?;
            ServerMessage::Registered { rid, user: b.user }
        }
        "login_challenge" => {
            #[derive(Deserialize)]
            struct B {
                response: B64,
                ksf: KsfParams,
            }
            let b: B = body(text, rid)?;
            ServerMessage::LoginChallenge {
                rid,
                response: b.response,
                ksf: b.ksf,
            }
        }
        "login_ok" => {
            #[derive(Deserialize)]
            struct B {
                user: UserName,
                backup: B64,
                keys: PublicKeys,
                token: B64,
                token_ttl_secs: u64,
            }
            let b: B = body(text, rid)?;
            ServerMessage::LoginOk {
                rid,
                user: b.user,
                backup: b.backup,
                keys: b.keys,
                token: b.token,
                token_ttl_secs: b.token_ttl_secs,
            }
        }
        "resumed" => {
            #[derive(Deserialize)]
            struct B {
                user: UserName,
            }
            let b: B = body(text, rid)?;
            ServerMessage::Resumed { rid, user: b.user }
        }
        "accepted" => {
            #[derive(Deserialize)]
            struct B {
                msg_id: MsgId,
                server_ts: UnixMillis,
                recipient_online: bool,
            }
            let b: B = body(text, rid)?;
            ServerMessage::Accepted {
                rid,
                msg_id: b.msg_id,
                server_ts: b.server_ts,
                recipient_online: b.recipient_online,
            }
        }
        "message" => {
            #[derive(Deserialize)]
            struct B {
                seq: i64,
                msg_id: MsgId,
                from: UserName,
                server_ts: UnixMillis,
                envelope: Box<RawValue>,
            }
            let b: B = body(text, rid)?;
            ServerMessage::Message {
                seq: b.seq,
                msg_id: b.msg_id,
                from: b.from,
                server_ts: b.server_ts,
                envelope: b.envelope,
            }
        }
        "delivered" => {
            #[derive(Deserialize)]
            struct B {
                #[serde(default)]
                seq: Option<i64>,
                msg_id: MsgId,
                to: UserName,
                at: UnixMillis,
            }
            let b: B = body(text, rid)?;
            ServerMessage::Delivered {
                seq: b.seq,
                msg_id: b.msg_id,
                to: b.to,
                at: b.at,
            }
        }
        "synced" => {
            #[derive(Deserialize)]
            struct B {
                count: u64,
                more: bool,
                cursor: i64,
            }
            let b: B = body(text, rid)?;
            ServerMessage::Synced {
                rid,
                count: b.count,
                more: b.more,
                cursor: b.cursor,
            }
        }
        "acked" => {
            #[derive(Deserialize)]
            struct B {
                count: u64,
            }
            let b: B = body(text, rid)?;
            ServerMessage::Acked {
                rid,
                count: b.count,
            }
        }
        "keys" => {
            #[derive(Deserialize)]
            struct B {
                keys: Vec<UserKeys>,
                unknown: Vec<UserName>,
            }
            let b: B = body(text, rid)?;
            ServerMessage::Keys {
                rid,
                keys: b.keys,
                unknown: b.unknown,
            }
        }
        "presence" => {
            #[derive(Deserialize)]
            struct B {
                users: Vec<PresenceInfo>,
                unknown: Vec<UserName>,
            }
            let b: B = body(text, rid)?;
            ServerMessage::Presence {
                rid,
                users: b.users,
                unknown: b.unknown,
            }
        }
        "group" => {
            #[derive(Deserialize)]
            struct B {
                info: GroupInfo,
                #[serde(default)]
                records: Vec<GroupRecord>,
            }
            let b: B = body(text, rid)?;
            ServerMessage::Group {
                rid,
                info: b.info,
                records: b.records,
            }
        }
        "group_change" => {
            #[derive(Deserialize)]
            struct B {
                seq: i64,
                server_ts: UnixMillis,
                record: Box<GroupRecord>,
            }
            let b: B = body(text, rid)?;
            ServerMessage::GroupChange {
                seq: b.seq,
                server_ts: b.server_ts,
                record: b.record,
            }
        }
        "groups" => {
            #[derive(Deserialize)]
            struct B {
                groups: Vec<GroupSummary>,
            }
            let b: B = body(text, rid)?;
            ServerMessage::Groups {
                rid,
                groups: b.groups,
            }
        }
        "membership" => {
            #[derive(Deserialize)]
            struct B {
                group: GroupName,
                members: Vec<UserName>,
            }
            let b: B = body(text, rid)?;
            ServerMessage::Membership {
                rid,
                group: b.group,
                members: b.members,
            }
        }
        "error" => {
            #[derive(Deserialize)]
            struct B {
                code: ErrorCode,
                message: String,
            }
            let b: B = body(text, rid)?;
            ServerMessage::Error {
                rid,
                code: b.code,
                message: b.message,
            }
        }
        other => return Err(unknown(other, rid)),
    })
}

/// Renders a `message` push without parsing the envelope again: `envelope`
/// must be JSON text that was accepted as such when the sender sent it.
/// Produces exactly what [`encode`] produces for [`ServerMessage::Message`].
pub fn render_message(
    seq: i64,
    msg_id: &MsgId,
    from: &UserName,
    server_ts: UnixMillis,
    envelope: &str,
) -> String {
    use std::fmt::Write as _;
    // Names are [a-z0-9_-] and ids are hyphenated hex: neither needs escaping.
    let mut out = String::with_capacity(envelope.len() + 160);
    let _ = write!(
        out,
        r#"{{"type":"message","seq":{seq},"msg_id":"{msg_id}","from":"{}","server_ts":{server_ts},"envelope":"#,
        from.as_str()
    );
    out.push_str(envelope);
    out.push('}');
    out
}

/// Renders a `group_change` push from a stored record: `record` must be
/// the JSON [`encode`] wrote for a [`GroupRecord`]. Produces exactly what
/// [`encode`] produces for [`ServerMessage::GroupChange`].
pub fn render_group_change(seq: i64, server_ts: UnixMillis, record: &str) -> String {
    let mut out = String::with_capacity(record.len() + 64);
    out.push_str(r#"{"type":"group_change","seq":"#);
    out.push_str(&seq.to_string());
    out.push_str(r#","server_ts":"#);
    out.push_str(&server_ts.to_string());
    out.push_str(r#","record":"#);
    out.push_str(record);
    out.push('}');
    out
}

/// Encodes a server frame: the frames sent once per message (`accepted`,
/// `delivered`) are written by hand, the rest through serde. Produces
/// exactly what [`encode`] produces.
pub fn encode_server(msg: &ServerMessage) -> String {
    use std::fmt::Write as _;
    // Names are [a-z0-9_-] and ids are hyphenated hex: neither needs escaping.
    let mut out = String::with_capacity(160);
    match msg {
        ServerMessage::Accepted {
            rid,
            msg_id,
            server_ts,
            recipient_online,
        } => {
            out.push_str(r#"{"type":"accepted""#);
            if let Some(rid) = rid {
                let _ = write!(out, r#","rid":{rid}"#);
            }
            let _ = write!(
                out,
                r#","msg_id":"{msg_id}","server_ts":{server_ts},"recipient_online":{recipient_online}}}"#
            );
        }
        ServerMessage::Delivered {
            seq,
            msg_id,
            to,
            at,
        } => {
            out.push_str(r#"{"type":"delivered""#);
            if let Some(seq) = seq {
                let _ = write!(out, r#","seq":{seq}"#);
            }
            let _ = write!(
                out,
                r#","msg_id":"{msg_id}","to":"{}","at":{at}}}"#,
                to.as_str()
            );
        }
        other => return encode(other),
    }
    out
}

/// Encodes a message as one JSON text frame.
pub fn encode<T: serde::Serialize>(msg: &T) -> String {
    // Serialising these types cannot fail: every map key is a string and no
    // Serialize impl here returns an error.
    serde_json::to_string(msg).expect("protocol messages always serialise")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = crate::DEFAULT_MAX_FRAME;

    fn envelope() -> Box<RawValue> {
        RawValue::from_string(r#"{"v":1, "ct":"AAAA"}"#.to_owned()).unwrap()
    }

    #[test]
    fn client_messages_round_trip() {
        let msgs = vec![
            ClientMessage::Send {
                rid: Some(7),
                msg_id: "0190f0a8-7b1c-7c3e-8b7a-0f0e0d0c0b0a".parse().unwrap(),
                from: UserName::new("alice").unwrap(),
                to: UserName::new("bob").unwrap(),
                envelope: RawJson::parse(envelope().get()).unwrap(),
            },
            ClientMessage::Sync {
                rid: None,
                after: 0,
                limit: 10,
            },
            ClientMessage::Ack {
                rid: Some(1),
                seqs: vec![1, 2, 3],
            },
        ];
        for m in msgs {
            let text = encode(&m);
            let back = decode_client(&text, MAX).unwrap();
            assert_eq!(encode(&back), text);
        }
    }

    #[test]
    fn envelope_bytes_are_forwarded_verbatim() {
        let text = r#"{"envelope":{"v":1, "ct":"AAAA"},"type":"send","rid":3,"msg_id":"0190f0a8-7b1c-7c3e-8b7a-0f0e0d0c0b0a","from":"alice","to":"bob"}"#;
        let ClientMessage::Send { envelope, rid, .. } = decode_client(text, MAX).unwrap() else {
            panic!("not a send")
        };
        assert_eq!(rid, Some(3));
        assert_eq!(envelope.get(), r#"{"v":1, "ct":"AAAA"}"#);
    }

    #[test]
    fn bad_frames_get_codes() {
        let e = decode_client("not json", MAX).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Malformed);
        let e = decode_client(r#"{"type":"launch","rid":9}"#, MAX).unwrap_err();
        assert_eq!(e.code(), ErrorCode::UnknownType);
        assert_eq!(e.rid(), Some(9));
        let e = decode_client(r#"{"type":"send","rid":4,"to":"bob"}"#, MAX).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Malformed);
        assert_eq!(e.rid(), Some(4));
        let e = decode_client(r#"{"type":"keys","users":["Bad Name"]}"#, MAX).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Malformed);
        let big = format!(r#"{{"type":"sync","pad":"{}"}}"#, "x".repeat(100));
        let e = decode_client(&big, 50).unwrap_err();
        assert_eq!(e.code(), ErrorCode::FrameTooLarge);
    }

    #[test]
    fn the_head_is_read_wherever_it_is_and_the_rest_still_checked() {
        // rid after the body, and a type with an escape in it.
        let id = MsgId::new();
        let m = decode_client(r#"{"type":"ack","seqs":[1,2],"rid":7}"#, MAX).unwrap();
        assert_eq!(m.rid(), Some(7));
        let e = decode_client(r#"{"rid":3,"type":"s\u0065nd"}"#, MAX).unwrap_err();
        assert_eq!(
            (e.code(), e.rid()),
            (ErrorCode::Malformed, Some(3)),
            "an escaped type is read (as send, then missing its fields)"
        );
        // No rid at all, or null.
        assert_eq!(
            decode_client(r#"{"type":"ack","seqs":[1]}"#, MAX)
                .unwrap()
                .rid(),
            None
        );
        assert_eq!(
            decode_client(r#"{"type":"ack","rid":null,"seqs":[1]}"#, MAX)
                .unwrap()
                .rid(),
            None
        );
        // Reading stops after the head, but a broken rest is still refused,
        // naming the request.
        let broken = format!(
            r#"{{"type":"send","rid":5,"msg_id":"{id}","from":"alice","to":"bob","envelope":{{"#
        );
        let e = decode_client(&broken, MAX).unwrap_err();
        assert_eq!((e.code(), e.rid()), (ErrorCode::Malformed, Some(5)));
        let e = decode_client(r#"{"type":"ack","rid":1,"seqs":[1]} trailing"#, MAX).unwrap_err();
        assert_eq!((e.code(), e.rid()), (ErrorCode::Malformed, Some(1)));
        let e = decode_client(r#"{"type":"group_list","rid":2,"#, MAX).unwrap_err();
        assert_eq!((e.code(), e.rid()), (ErrorCode::Malformed, Some(2)));
        // Duplicates, a missing type, a non-object.
        for bad in [
            r#"{"type":"ack","type":"sync","rid":1}"#,
            r#"{"rid":1,"rid":2,"type":"ack"}"#,
            r#"{"rid":1,"seqs":[]}"#,
            r#"["type","ack"]"#,
            r#"{"type":7,"rid":1}"#,
        ] {
            assert_eq!(
                decode_client(bad, MAX).unwrap_err().code(),
                ErrorCode::Malformed,
                "{bad}"
            );
        }
    }

    #[test]
    fn rendered_message_matches_encode() {
        let id = MsgId::new();
        let from = UserName::new("alice").unwrap();
        let env = r#"{"v":1, "ct":"AAAA"}"#;
        let fast = render_message(9, &id, &from, 123, env);
        let slow = encode(&ServerMessage::Message {
            seq: 9,
            msg_id: id,
            from,
            server_ts: 123,
            envelope: RawValue::from_string(env.to_owned()).unwrap(),
        });
        assert_eq!(fast, slow);
    }

    #[test]
    fn hand_written_frames_match_serde() {
        let id = MsgId::new();
        let bob = UserName::new("bob-2_x").unwrap();
        let mut frames = Vec::new();
        for rid in [None, Some(0), Some(u64::MAX)] {
            for (server_ts, recipient_online) in
                [(0, false), (i64::MIN, true), (1_764_000_000_000, true)]
            {
                frames.push(ServerMessage::Accepted {
                    rid,
                    msg_id: id,
                    server_ts,
                    recipient_online,
                });
            }
        }
        for seq in [None, Some(1), Some(-3), Some(i64::MAX)] {
            frames.push(ServerMessage::Delivered {
                seq,
                msg_id: id,
                to: bob.clone(),
                at: 17,
            });
        }
        frames.push(ServerMessage::Acked {
            rid: Some(4),
            count: 2,
        });
        for frame in &frames {
            assert_eq!(encode_server(frame), encode(frame));
        }
    }

    #[test]
    fn rendered_group_change_matches_encode() {
        use crate::group::{Change, ChangeKind, GroupRecord, RecordMember};
        let alice = UserName::new("alice").unwrap();
        let record = GroupRecord {
            group: GroupName::new("team").unwrap(),
            epoch: 3,
            prev: B64(vec![1; 32]),
            at: 5,
            change: Change {
                kind: ChangeKind::Left,
                actor: UserName::new("bob").unwrap(),
                users: vec![],
                heir: Some(alice.clone()),
            },
            members: vec![RecordMember {
                user: alice,
                role: crate::message::Role::Owner,
            }],
            sig: B64(vec![2; 64]),
        };
        let fast = render_group_change(7, 123, &encode(&record));
        let slow = encode(&ServerMessage::GroupChange {
            seq: 7,
            server_ts: 123,
            record: Box::new(record.clone()),
        });
        assert_eq!(fast, slow);
        match decode_server(&fast, MAX).unwrap() {
            ServerMessage::GroupChange { record: back, .. } => assert_eq!(*back, record),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn server_messages_round_trip() {
        let msgs = vec![
            ServerMessage::Message {
                seq: 5,
                msg_id: MsgId::new(),
                from: UserName::new("alice").unwrap(),
                server_ts: 1_700_000_000_000,
                envelope: envelope(),
            },
            ServerMessage::error(Some(2), ErrorCode::UnknownUser),
            ServerMessage::Presence {
                rid: None,
                users: vec![PresenceInfo {
                    user: UserName::new("bob").unwrap(),
                    online: false,
                    last_seen: Some(1),
                }],
                unknown: vec![],
            },
        ];
        for m in msgs {
            let text = encode(&m);
            let back = decode_server(&text, MAX).unwrap();
            assert_eq!(encode(&back), text);
        }
    }
}
