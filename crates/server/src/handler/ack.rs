//! `ack`: delete received entries from the mailbox; each sender hears
//! `delivered` (the original's "Message Delivered").

use telepound_protocol::{ErrorCode, ServerMessage, UserName};

use super::{HandlerError, HandlerResult, MAX_LIST};
use crate::server::Shared;

/// Deletes `seqs` from `user`'s mailbox. For every message deleted, the
/// store's writer tells its sender `delivered` live, or stores the receipt
/// in the sender's mailbox (same transaction) when the sender has no synced
/// connection, so it is not lost.
///
/// # Errors
/// `malformed` for too many seqs, `internal`.
pub async fn handle(
    shared: &Shared,
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
    let now = crate::now_ms();
    let expires = now + shared.config.message_ttl.as_millis() as i64;
    let count = shared.store.ack(user, seqs, now, expires).await?;
    Ok(ServerMessage::Acked { rid, count })
}
