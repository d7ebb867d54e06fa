//! One file per request kind. Requests before login go through
//! [`register`] and [`login`]; the rest run with the session's user.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use telepound_protocol::{ClientMessage, ErrorCode, ServerMessage, UserName};

use crate::server::Shared;
use crate::store::StoreError;

pub mod ack;
pub mod group;
pub mod keys;
pub mod login;
pub mod presence;
pub mod register;
pub mod send;

/// Most names in one `keys` or `presence` request, or seqs in one `ack`.
pub const MAX_LIST: usize = 1024;

/// A request's failure: a stable code and a sentence for people.
#[derive(Debug)]
pub struct HandlerError {
    /// Wire code.
    pub code: ErrorCode,
    /// Readable detail (never internals).
    pub message: String,
}

impl HandlerError {
    /// An error with the code's standard sentence.
    pub fn new(code: ErrorCode) -> Self {
        Self {
            code,
            message: code.describe().to_owned(),
        }
    }

    /// An error with a specific sentence.
    pub fn with(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The `error` frame answering request `rid`.
    pub fn reply(self, rid: Option<u64>) -> ServerMessage {
        ServerMessage::Error {
            rid,
            code: self.code,
            message: self.message,
        }
    }
}

impl From<StoreError> for HandlerError {
    fn from(e: StoreError) -> Self {
        // The cause stays in the server log; the client learns only that it
        // was the server's fault.
        tracing::error!(cause = %e, "store failure");
        Self::new(ErrorCode::Internal)
    }
}

/// A handler's result.
pub type HandlerResult = Result<ServerMessage, HandlerError>;

/// A request being answered concurrently with the connection's other work.
pub type Pending = BoxFuture<'static, ServerMessage>;

fn finish(rid: Option<u64>, r: HandlerResult) -> ServerMessage {
    r.unwrap_or_else(|e| e.reply(rid))
}

/// Starts a logged-in request. Validation that decides ordering runs here,
/// before returning, so that sends from one connection reach the writer in
/// the order they arrived; the returned future does the rest.
pub async fn dispatch(shared: &Arc<Shared>, user: &UserName, msg: ClientMessage) -> Pending {
    let rid = msg.rid();
    match msg {
        ClientMessage::Send {
            msg_id,
            from,
            to,
            envelope,
            ..
        } => match send::prepare(shared, user, from, to, &envelope).await {
            Ok(prepared) => {
                let shared = shared.clone();
                Box::pin(async move {
                    finish(rid, prepared.commit(&shared, msg_id, envelope, rid).await)
                })
            }
            Err(e) => ready(e.reply(rid)),
        },
        ClientMessage::Ack { seqs, .. } => {
            let (shared, user) = (shared.clone(), user.clone());
            Box::pin(async move { finish(rid, ack::handle(&shared, &user, seqs, rid).await) })
        }
        ClientMessage::Keys { users, .. } => {
            let shared = shared.clone();
            Box::pin(async move { finish(rid, keys::handle(&shared, users, rid).await) })
        }
        ClientMessage::Presence { users, .. } => {
            let shared = shared.clone();
            Box::pin(async move { finish(rid, presence::handle(&shared, users, rid).await) })
        }
        ClientMessage::GroupCreate {
            group,
            members,
            record,
            ..
        } => {
            let (shared, user) = (shared.clone(), user.clone());
            Box::pin(async move {
                finish(
                    rid,
                    group::create(&shared, &user, rid, group, members, record).await,
                )
            })
        }
        ClientMessage::GroupAdd {
            group,
            users,
            record,
            ..
        } => {
            let (shared, user) = (shared.clone(), user.clone());
            Box::pin(async move {
                finish(
                    rid,
                    group::add(&shared, &user, rid, group, users, record).await,
                )
            })
        }
        ClientMessage::GroupRemove {
            group,
            users,
            record,
            ..
        } => {
            let (shared, user) = (shared.clone(), user.clone());
            Box::pin(async move {
                finish(
                    rid,
                    group::remove(&shared, &user, rid, group, users, record).await,
                )
            })
        }
        ClientMessage::GroupLeave { group, record, .. } => {
            let (shared, user) = (shared.clone(), user.clone());
            Box::pin(
                async move { finish(rid, group::leave(&shared, &user, rid, group, record).await) },
            )
        }
        ClientMessage::GroupPromote {
            group,
            user: target,
            record,
            ..
        } => {
            let (shared, user) = (shared.clone(), user.clone());
            Box::pin(async move {
                finish(
                    rid,
                    group::promote(&shared, &user, rid, group, target, record).await,
                )
            })
        }
        ClientMessage::GroupList { .. } => {
            let (shared, user) = (shared.clone(), user.clone());
            Box::pin(async move { finish(rid, group::list(&shared, &user, rid).await) })
        }
        ClientMessage::GroupInfo { group, since, .. } => {
            let (shared, user) = (shared.clone(), user.clone());
            Box::pin(
                async move { finish(rid, group::info(&shared, &user, rid, group, since).await) },
            )
        }
        ClientMessage::GroupSend {
            msg_id,
            from,
            group,
            recipients,
            envelope,
            ..
        } => {
            let (shared, user) = (shared.clone(), user.clone());
            Box::pin(async move {
                finish(
                    rid,
                    group::send(
                        &shared, &user, rid, msg_id, from, group, recipients, envelope,
                    )
                    .await,
                )
            })
        }
        ClientMessage::RegisterStart { .. }
        | ClientMessage::RegisterFinish { .. }
        | ClientMessage::LoginStart { .. }
        | ClientMessage::LoginFinish { .. }
        | ClientMessage::Resume { .. } => {
            ready(HandlerError::new(ErrorCode::AlreadyAuthenticated).reply(rid))
        }
        // The connection handles sync itself; it never reaches here.
        ClientMessage::Sync { .. } => ready(HandlerError::new(ErrorCode::Internal).reply(rid)),
    }
}

/// A [`Pending`] that is already answered.
pub fn ready(msg: ServerMessage) -> Pending {
    Box::pin(std::future::ready(msg))
}
