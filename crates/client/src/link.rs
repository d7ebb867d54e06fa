//! A session that survives the server going away: long-running clients
//! read events through a [`Link`], which notices a lost connection,
//! reconnects with capped exponential backoff and jitter, and resumes with
//! the session token (or the password kept in memory, should the token be
//! refused) without asking the user again.

use std::time::Duration;

use tokio::time::Instant;
use zeroize::Zeroizing;

use crate::{Backoff, ConnectOptions, Error, Event, Events, Session};

/// What happened on the link.
pub enum Step {
    /// A push from the server.
    Event(Event),
    /// The connection was lost (the server's reason, if it gave one).
    Lost(Option<String>),
    /// The connection is back: sync the mailbox and flush the outbox.
    Restored,
}

/// A session plus what it takes to bring it back.
pub struct Link {
    /// The logged-in session.
    pub session: Session,
    /// Its pushes.
    pub events: Events,
    options: ConnectOptions,
    password: Option<Zeroizing<Vec<u8>>>,
    /// Set while disconnected: the backoff and the next attempt's time.
    down: Option<(Backoff, Instant)>,
}

/// How long one reconnection attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

impl Link {
    /// Wraps a logged-in session; `password`, if given, is used only when
    /// the server refuses the session token on a reconnect.
    pub fn new(
        session: Session,
        events: Events,
        options: ConnectOptions,
        password: Option<Zeroizing<Vec<u8>>>,
    ) -> Self {
        Self {
            session,
            events,
            options,
            password,
            down: None,
        }
    }

    /// Treats the connection as lost now (e.g. after a request failed with
    /// a connection error before the closing event arrived).
    pub fn mark_down(&mut self) {
        if self.down.is_none() {
            self.go_down();
        }
    }

    /// Whether the connection is up.
    pub fn is_up(&self) -> bool {
        self.down.is_none()
    }

    /// The next step. While disconnected this waits for the next attempt
    /// and makes it.
    ///
    /// # Cancel safety
    /// Cancel safe: an event is only taken when returned, and an attempt
    /// cut short is simply made again later.
    ///
    /// # Errors
    /// When logging in again fails for a reason other than the server being
    /// unreachable (the account's keys changed, the password is refused).
    pub async fn step(&mut self) -> Result<Step, Error> {
        loop {
            match &mut self.down {
                None => match self.events.recv().await {
                    Some(Event::Closed(reason)) => {
                        self.go_down();
                        return Ok(Step::Lost(reason));
                    }
                    Some(ev) => return Ok(Step::Event(ev)),
                    None => {
                        self.go_down();
                        return Ok(Step::Lost(None));
                    }
                },
                Some((_, at)) => {
                    tokio::time::sleep_until(*at).await;
                    let attempt = tokio::time::timeout(
                        ATTEMPT_TIMEOUT,
                        self.session
                            .reconnect(&self.options, self.password.as_ref().map(|p| p.as_slice())),
                    )
                    .await;
                    match attempt {
                        Ok(Ok(events)) => {
                            self.events = events;
                            self.down = None;
                            return Ok(Step::Restored);
                        }
                        Ok(Err(e)) if is_transient(&e) => self.schedule(),
                        Ok(Err(e)) => return Err(e),
                        Err(_) => self.schedule(),
                    }
                }
            }
        }
    }

    fn go_down(&mut self) {
        let mut backoff = Backoff::default();
        let at = Instant::now() + backoff.next_delay();
        self.down = Some((backoff, at));
    }

    fn schedule(&mut self) {
        if let Some((backoff, at)) = &mut self.down {
            *at = Instant::now() + backoff.next_delay();
            tracing::debug!(attempt = backoff.attempts(), "reconnect failed; will retry");
        }
    }
}

/// Errors worth retrying after a pause: the server is down, restarting,
/// or asking this client to slow down.
pub fn is_transient(e: &Error) -> bool {
    use telepound_protocol::ErrorCode;
    matches!(
        e,
        Error::Connect { .. } | Error::Disconnected(_) | Error::Timeout
    ) || matches!(
        e.code(),
        Some(ErrorCode::ShuttingDown | ErrorCode::RateLimited)
    )
}

/// Errors that mean a queued message can never be sent as it is, however
/// often it is tried: the recipient has no account, the sender is not in
/// the group, the server cannot read the request, or this user's own copy
/// does not open. The outbox drops such a message (reporting it); every
/// other error keeps it queued. Not transient errors ([`is_transient`])
/// either: those are retried.
pub fn is_refusal(e: &Error) -> bool {
    use telepound_protocol::ErrorCode as C;
    match e {
        Error::UnknownUser(_) | Error::Crypto(_) => true,
        Error::Server { code, .. } => matches!(
            code,
            C::UnknownUser | C::UnknownGroup | C::Malformed | C::SenderMismatch | C::BadKey
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use telepound_protocol::ErrorCode as C;

    #[test]
    fn only_definitive_refusals_drop_a_queued_message() {
        let server = |code| Error::Server {
            code,
            message: String::new(),
        };
        for kept in [
            server(C::Internal),
            server(C::ShuttingDown),
            server(C::RateLimited),
            server(C::NotAuthenticated),
            Error::Timeout,
            Error::Disconnected(None),
            Error::Protocol("odd answer".into()),
            Error::io("history", std::io::Error::other("disk full")),
        ] {
            assert!(!is_refusal(&kept), "{kept:?}");
        }
        for dropped in [
            server(C::UnknownUser),
            server(C::UnknownGroup),
            Error::UnknownUser(telepound_protocol::UserName::new("nobody").unwrap()),
        ] {
            assert!(
                is_refusal(&dropped) && !is_transient(&dropped),
                "{dropped:?}"
            );
        }
    }
}
