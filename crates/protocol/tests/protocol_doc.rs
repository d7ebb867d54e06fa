//! Every example in docs/PROTOCOL.md decodes with this crate's codec, and
//! every message type appears in an example, so the document stays true.

use telepound_protocol::codec::{decode_client, decode_server, encode};

const DOC: &str = include_str!("../../../docs/PROTOCOL.md");

fn blocks(tag: &str) -> Vec<&'static str> {
    let fence = format!("```json {tag}\n");
    DOC.split(fence.as_str())
        .skip(1)
        .map(|rest| rest.split("\n```").next().unwrap())
        .collect()
}

#[test]
fn client_examples_decode() {
    let mut kinds: Vec<&str> = Vec::new();
    for b in blocks("client") {
        let msg = decode_client(b, usize::MAX).unwrap_or_else(|e| panic!("{e}: {b}"));
        // The document is also the format's snapshot: encoding what was
        // decoded gives back the example byte for byte.
        assert_eq!(encode(&msg), b, "the encoder no longer writes this example");
        kinds.push(msg.kind());
    }
    for kind in [
        "register_start",
        "register_finish",
        "login_start",
        "login_finish",
        "resume",
        "send",
        "sync",
        "ack",
        "keys",
        "presence",
        "group_create",
        "group_add",
        "group_remove",
        "group_leave",
        "group_promote",
        "group_list",
        "group_info",
        "group_send",
    ] {
        assert!(kinds.contains(&kind), "no example for {kind}");
    }
}

#[test]
fn server_examples_decode() {
    let mut kinds = Vec::new();
    for b in blocks("server") {
        let msg = decode_server(b, usize::MAX).unwrap_or_else(|e| panic!("{e}: {b}"));
        assert_eq!(encode(&msg), b, "the encoder no longer writes this example");
        let v: serde_json::Value = serde_json::from_str(b).unwrap();
        kinds.push(v["type"].as_str().unwrap().to_owned());
    }
    for kind in [
        "register_challenge",
        "registered",
        "login_challenge",
        "login_ok",
        "resumed",
        "accepted",
        "message",
        "delivered",
        "synced",
        "acked",
        "keys",
        "presence",
        "error",
        "group",
        "groups",
        "membership",
        "group_change",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "no example for {kind}");
    }
}

#[test]
fn every_error_code_is_documented() {
    for code in [
        "malformed",
        "unknown_type",
        "frame_too_large",
        "binary_frame",
        "not_authenticated",
        "already_authenticated",
        "user_taken",
        "unknown_user",
        "auth_failed",
        "no_login_in_progress",
        "no_registration_in_progress",
        "sender_mismatch",
        "bad_key",
        "invalid_token",
        "rate_limited",
        "too_many_connections",
        "shutting_down",
        "internal",
        "file_too_large",
        "quota_exceeded",
        "not_found",
        "offset_mismatch",
        "incomplete",
        "unknown_group",
        "group_exists",
        "not_an_admin",
        "group_full",
        "cannot_remove_owner",
        "group_changed",
        "bad_record",
    ] {
        let parsed: telepound_protocol::ErrorCode =
            serde_json::from_str(&format!("\"{code}\"")).unwrap();
        assert_eq!(parsed.as_str(), code);
        assert!(
            DOC.contains(&format!("| `{code}` |")),
            "{code} not in the table"
        );
        listed(parsed);
    }
}

/// Names every code, with no wildcard: a new `ErrorCode` stops this test
/// from compiling until it is added here and to the list above (and so to
/// the document).
fn listed(code: telepound_protocol::ErrorCode) {
    use telepound_protocol::ErrorCode as C;
    match code {
        C::Malformed
        | C::UnknownType
        | C::FrameTooLarge
        | C::BinaryFrame
        | C::NotAuthenticated
        | C::AlreadyAuthenticated
        | C::UserTaken
        | C::UnknownUser
        | C::AuthFailed
        | C::NoLoginInProgress
        | C::NoRegistrationInProgress
        | C::SenderMismatch
        | C::BadKey
        | C::InvalidToken
        | C::RateLimited
        | C::TooManyConnections
        | C::ShuttingDown
        | C::Internal
        | C::FileTooLarge
        | C::QuotaExceeded
        | C::NotFound
        | C::OffsetMismatch
        | C::Incomplete
        | C::UnknownGroup
        | C::GroupExists
        | C::NotAnAdmin
        | C::GroupFull
        | C::CannotRemoveOwner
        | C::GroupChanged
        | C::BadRecord => {}
    }
}
