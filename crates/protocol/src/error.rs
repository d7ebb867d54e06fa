//! Stable wire error codes.

use serde::{Deserialize, Serialize};

/// Every error the server can put in an `error` frame or a close reason.
///
/// The snake_case names are the stable contract; the human-readable text that
/// travels beside them may change. Never carries server internals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame was not valid JSON or lacked a required field.
    Malformed,
    /// The frame's `type` is not one this server knows.
    UnknownType,
    /// The frame exceeded the server's size limit; the connection is closed.
    FrameTooLarge,
    /// Binary frames are not part of the protocol.
    BinaryFrame,
    /// The request needs a logged-in session.
    NotAuthenticated,
    /// The connection is already logged in.
    AlreadyAuthenticated,
    /// Sign-up for a name that is taken.
    UserTaken,
    /// No such user ("User Not Found").
    UnknownUser,
    /// Wrong password (the OPAQUE login did not verify).
    AuthFailed,
    /// `login_finish` without a `login_start` before it on this connection.
    NoLoginInProgress,
    /// `register_finish` without a `register_start` for that name before it
    /// on this connection.
    NoRegistrationInProgress,
    /// A `from` field that is not the session's user.
    SenderMismatch,
    /// A public key, signature or OPAQUE message that does not decode.
    BadKey,
    /// A session token that is unknown or expired.
    InvalidToken,
    /// Too many requests; slow down.
    RateLimited,
    /// Too many connections from this address or in total.
    TooManyConnections,
    /// The server is shutting down; reconnect later.
    ShuttingDown,
    /// Something failed on the server; the cause is in its log.
    Internal,
    /// A file larger than the server accepts.
    FileTooLarge,
    /// The upload would exceed the user's storage quota.
    QuotaExceeded,
    /// No such blob, or not one this user may see.
    NotFound,
    /// An upload at an offset other than the blob's current size.
    OffsetMismatch,
    /// A download of a blob not fully uploaded yet.
    Incomplete,
    /// No such group, or not one this user is in.
    UnknownGroup,
    /// A group of that name exists.
    GroupExists,
    /// Only owners and admins may do that.
    NotAnAdmin,
    /// The group is at its member limit.
    GroupFull,
    /// The owner cannot be removed (they may leave).
    CannotRemoveOwner,
    /// A membership change signed for a state that is no longer the
    /// group's latest: the client fetches the new records and signs again.
    GroupChanged,
    /// A signed group record that does not verify or does not match the
    /// change requested.
    BadRecord,
}

impl ErrorCode {
    /// The stable snake_case name, as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnknownType => "unknown_type",
            Self::FrameTooLarge => "frame_too_large",
            Self::BinaryFrame => "binary_frame",
            Self::NotAuthenticated => "not_authenticated",
            Self::AlreadyAuthenticated => "already_authenticated",
            Self::UserTaken => "user_taken",
            Self::UnknownUser => "unknown_user",
            Self::AuthFailed => "auth_failed",
            Self::NoLoginInProgress => "no_login_in_progress",
            Self::NoRegistrationInProgress => "no_registration_in_progress",
            Self::SenderMismatch => "sender_mismatch",
            Self::BadKey => "bad_key",
            Self::InvalidToken => "invalid_token",
            Self::RateLimited => "rate_limited",
            Self::TooManyConnections => "too_many_connections",
            Self::ShuttingDown => "shutting_down",
            Self::Internal => "internal",
            Self::FileTooLarge => "file_too_large",
            Self::QuotaExceeded => "quota_exceeded",
            Self::NotFound => "not_found",
            Self::OffsetMismatch => "offset_mismatch",
            Self::Incomplete => "incomplete",
            Self::UnknownGroup => "unknown_group",
            Self::GroupExists => "group_exists",
            Self::NotAnAdmin => "not_an_admin",
            Self::GroupFull => "group_full",
            Self::CannotRemoveOwner => "cannot_remove_owner",
            Self::GroupChanged => "group_changed",
            Self::BadRecord => "bad_record",
        }
    }

    /// A short readable sentence for this code, used when nothing more
    /// specific is known.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Malformed => "the frame is not a valid request",
            Self::UnknownType => "unknown request type",
            Self::FrameTooLarge => "frame too large",
            Self::BinaryFrame => "binary frames are not supported",
            Self::NotAuthenticated => "log in first",
            Self::AlreadyAuthenticated => "already logged in on this connection",
            Self::UserTaken => "that user name is taken",
            Self::UnknownUser => "User Not Found",
            Self::AuthFailed => "wrong user name or password",
            Self::NoLoginInProgress => "no login in progress",
            Self::NoRegistrationInProgress => {
                "no sign-up in progress for that name: send register_start first"
            }
            Self::SenderMismatch => "the sender is not the logged-in user",
            Self::BadKey => "invalid key material",
            Self::InvalidToken => "session expired; log in again",
            Self::RateLimited => "too many requests; slow down",
            Self::TooManyConnections => "too many connections",
            Self::ShuttingDown => "the server is shutting down",
            Self::Internal => "internal server error",
            Self::FileTooLarge => "the file is larger than this server accepts",
            Self::QuotaExceeded => "not enough storage left for your files",
            Self::NotFound => "no such file",
            Self::OffsetMismatch => "the upload does not continue where the server's copy ends",
            Self::Incomplete => "the file has not been fully uploaded yet",
            Self::UnknownGroup => "no such group, or you are not in it",
            Self::GroupExists => "a group of that name exists",
            Self::NotAnAdmin => "only the group's owner and admins may do that",
            Self::GroupFull => "the group is full",
            Self::CannotRemoveOwner => "the owner cannot be removed",
            Self::GroupChanged => "the group changed since your client last looked; try again",
            Self::BadRecord => "the signed group record does not match the change",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
