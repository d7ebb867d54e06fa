//! `send`: store the sealed envelope durably in the recipient's mailbox
//! (the writer pushes it live once committed), then answer `accepted`.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use telepound_protocol::message::RawJson;
use telepound_protocol::{ErrorCode, MsgId, ServerMessage, UserName};

use super::{HandlerError, HandlerResult};
use crate::server::Shared;
use crate::store::{EntryKind, NewEntry};

/// A send that passed its checks.
pub struct Prepared {
    from: UserName,
    to: UserName,
}

/// Checks the sender is the session's user and the recipient exists.
///
/// # Errors
/// `sender_mismatch`, `unknown_user` ("User Not Found"), `internal`.
pub async fn prepare(
    shared: &Shared,
    user: &UserName,
    from: UserName,
    to: UserName,
    _envelope: &RawJson,
) -> Result<Prepared, HandlerError> {
    if &from != user {
        return Err(HandlerError::with(
            ErrorCode::SenderMismatch,
            format!("you are logged in as {user}, not {from}"),
        ));
    }
    if !shared.user_exists(&to).await? {
        return Err(HandlerError::with(
            ErrorCode::UnknownUser,
            format!("User Not Found: {to}"),
        ));
    }
    Ok(Prepared { from, to })
}

impl Prepared {
    /// Writes the message to the mailbox, waits for the commit, pushes it.
    ///
    /// # Errors
    /// `internal` when the write does not commit (nothing was accepted).
    pub async fn commit(
        self,
        shared: &Arc<Shared>,
        msg_id: MsgId,
        envelope: RawJson,
        rid: Option<u64>,
    ) -> HandlerResult {
        let now = crate::now_ms();
        let entry = NewEntry {
            recipient: self.to,
            kind: EntryKind::Message,
            sender: self.from,
            msg_id,
            server_ts: now,
            expires_at: now + shared.config.message_ttl.as_millis() as i64,
            envelope: envelope.into_shared(),
        };
        let (recipient, sender) = (entry.recipient.clone(), entry.sender.clone());
        // Returns after the commit; the writer has pushed it live by then.
        let stored = shared.store.enqueue(vec![entry]).await?;
        let server_ts = if stored.first().copied().flatten().is_some() {
            shared.metrics.messages_accepted.fetch_add(1, Relaxed);
            now
        } else {
            // A retry of a message still waiting: nothing new was stored;
            // answer as the first time (unless it was just acknowledged).
            shared.metrics.messages_duplicate.fetch_add(1, Relaxed);
            shared
                .store
                .waiting_since(&recipient, EntryKind::Message, &sender, msg_id)
                .await?
                .unwrap_or(now)
        };
        Ok(ServerMessage::Accepted {
            rid,
            msg_id,
            server_ts,
            recipient_online: shared.hub.is_live(&recipient),
        })
    }
}
