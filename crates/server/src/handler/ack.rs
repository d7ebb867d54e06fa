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
/// A seq listed again is dropped first (the first listing counts): receipts
/// stored together arrive as several `delivered` frames with one seq, and a
/// client that acknowledges every frame it saw lists that seq once per frame.
///
/// # Errors
/// `malformed` for more than [`MAX_LIST`] distinct seqs (or, before they
/// are counted, more than a page's worth of receipt frames), `internal`.
pub async fn handle(
    shared: &Shared,
    user: &UserName,
    mut seqs: Vec<i64>,
    rid: Option<u64>,
) -> HandlerResult {
    // A full page of stored receipts is the longest list a client needs.
    let most = MAX_LIST * crate::store::RECEIPTS_PER_ROW;
    if seqs.len() > most {
        return Err(HandlerError::with(
            ErrorCode::Malformed,
            format!("at most {most} seqs per ack"),
        ));
    }
    if seqs.len() > 1 {
        let mut seen = std::collections::HashSet::with_capacity(seqs.len());
        seqs.retain(|s| seen.insert(*s));
    }
    if seqs.len() > MAX_LIST {
        return Err(HandlerError::with(
            ErrorCode::Malformed,
            format!("at most {MAX_LIST} distinct seqs per ack"),
        ));
    }
    let now = crate::now_ms();
    let expires = now + shared.config.message_ttl.as_millis() as i64;
    let count = shared.store.ack(user, seqs, now, expires).await?;
    Ok(ServerMessage::Acked { rid, count })
}
