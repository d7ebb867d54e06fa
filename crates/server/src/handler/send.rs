//! `send`: store the sealed envelope durably in the recipient's mailbox,
//! answer `accepted`, push it live if the recipient is connected.

use std::sync::Arc;

use serde_json::value::RawValue;
use telepound_protocol::{ErrorCode, MsgId, ServerMessage, UserName};

use super::{HandlerError, HandlerResult};
use crate::hub::Outbound;
use crate::server::Shared;
use crate::store::{EntryKind, NewEntry, StoredEntry};

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
    _envelope: &RawValue,
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
        envelope: Box<RawValue>,
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
            envelope: String::from(Box::<str>::from(envelope)),
        };
        let recipient = entry.recipient.clone();
        deliver(shared, vec![entry]).await?;
        Ok(ServerMessage::Accepted {
            rid,
            msg_id,
            server_ts: now,
            recipient_online: shared.hub.is_live(&recipient),
        })
    }
}

/// Stores entries durably, then pushes each newly stored one to its
/// recipient's connections. Entries already waiting (retries) are not
/// pushed again.
///
/// # Errors
/// The store's, when the batch did not commit.
pub async fn deliver(shared: &Shared, entries: Vec<NewEntry>) -> Result<(), HandlerError> {
    let seqs = shared.store.enqueue(entries.clone()).await?;
    for (e, seq) in entries.into_iter().zip(seqs) {
        if let Some(seq) = seq {
            let recipient = e.recipient;
            shared.hub.push(
                &recipient,
                Outbound::Entry(Arc::new(StoredEntry {
                    seq,
                    kind: e.kind,
                    sender: e.sender,
                    msg_id: e.msg_id,
                    server_ts: e.server_ts,
                    envelope: e.envelope,
                })),
            );
        }
    }
    Ok(())
}
