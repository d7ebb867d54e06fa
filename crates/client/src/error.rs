//! Client errors, each with a one-line readable message.

use telepound_protocol::{ErrorCode, GroupName, UserName};

/// Everything the client library can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server could not be reached.
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The URL tried.
        url: String,
        /// Why.
        reason: String,
    },
    /// The connection ended.
    #[error("connection to the server lost{}", .0.as_deref().map(|r| format!(" ({r})")).unwrap_or_default())]
    Disconnected(Option<String>),
    /// The server answered with an error.
    #[error("{message}")]
    Server {
        /// Stable code.
        code: ErrorCode,
        /// The server's sentence.
        message: String,
    },
    /// The server said something this client does not understand.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    /// A cryptographic check failed.
    #[error(transparent)]
    Crypto(#[from] telepound_crypto::Error),
    /// A pinned peer's identity key changed.
    #[error(
        "WARNING: {user}'s identity key has changed since you last talked. Someone may be impersonating {user}, or {user} has new keys. Compare safety numbers with `telepound verify {user}` and accept the new key with `telepound verify --accept {user}`."
    )]
    KeyChanged {
        /// The peer.
        user: UserName,
    },
    /// No such user.
    #[error("User Not Found: {0}")]
    UnknownUser(UserName),
    /// Local state could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A local file cannot be sent or a received one cannot be saved.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A request timed out.
    #[error("the server did not answer in time")]
    Timeout,
    /// Refused by this client under the group rules, before asking the
    /// server (the same rules the server enforces).
    #[error("{message}")]
    Rule {
        /// The code the server would have answered with.
        code: ErrorCode,
        /// Why.
        message: String,
    },
    /// The group's membership as the server reports it does not match the
    /// signed records this client verified (or the records do not verify):
    /// nothing is sealed for it.
    #[error(
        "#{group}: {reason}. The membership the server reports for #{group} is not what its owner and admins signed, so nothing is sent to it"
    )]
    GroupUntrusted {
        /// The group.
        group: GroupName,
        /// What is wrong.
        reason: String,
    },
    /// A message naming a group that does not check against the group's
    /// verified membership (not shown).
    #[error("not shown as a #{group} message: {reason}")]
    GroupMessage {
        /// The group it names.
        group: GroupName,
        /// What is wrong.
        reason: String,
    },
}

impl Error {
    /// The server's error code, if this is a server error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Server { code, .. } | Self::Rule { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// Text from the server (an error's sentence) with control characters
/// replaced, so it cannot carry escape sequences or extra lines into
/// whatever shows it.
pub(crate) fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
