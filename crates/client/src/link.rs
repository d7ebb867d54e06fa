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
