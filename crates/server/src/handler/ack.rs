//! `ack`: delete received entries from the mailbox and tell each sender
//! `delivered` (the original's "Message Delivered").

use std::sync::Arc;

use telepound_protocol::{ErrorCode, ServerMessage, UserName};

use super::{HandlerError, HandlerResult, MAX_LIST};
use crate::hub::Outbound;
use crate::server::Shared;
use crate::store::{EntryKind, NewEntry};

/// Deletes `seqs` from `user`'s mailbox. For every message deleted, its
/// sender gets a live `delivered`; a sender with no synced connection gets
/// the receipt stored in their mailbox instead, so it is not lost.
///
/// # Errors
/// `malformed` for too many seqs, `internal`.
pub async fn handle(
    shared: &Arc<Shared>,
    user: &UserName,
    seqs: Vec<i64>,
    rid: Option<u64>,
) -> HandlerResult {
    if seqs.len() > MAX_LIST {
        return Err(HandlerError::with(
            ErrorCode::Malformed,
            format!("at most {MAX_LIST} seqs per ack"),
        ));
    }
    let acked = shared.store.ack(user, seqs).await?;
    let count = acked.len() as u64;
    let now = crate::now_ms();
    let mut stored = Vec::new();
    for a in acked.into_iter().filter(|a| a.kind == EntryKind::Message) {
        shared.hub.push(
            &a.sender,
            Outbound::Delivered {
                msg_id: a.msg_id,
                to: user.clone(),
                at: now,
            },
        );
        if !shared.hub.is_live(&a.sender) {
            stored.push(NewEntry {
                recipient: a.sender,
                kind: EntryKind::Receipt,
                sender: user.clone(),
                msg_id: a.msg_id,
                server_ts: now,
                expires_at: now + shared.config.message_ttl.as_millis() as i64,
                envelope: String::new(),
            });
        }
    }
    if !stored.is_empty() {
        super::send::deliver(shared, stored).await?;
    }
    Ok(ServerMessage::Acked { rid, count })
}
