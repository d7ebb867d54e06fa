//! `telepound send TO TEXT`: one message, retried within a bounded time if
//! the server is unreachable or goes away, never sent twice.

use std::time::Duration;

use anyhow::Context;
use std::sync::atomic::{AtomicBool, Ordering};

use telepound_client::{Backoff, Error as ClientError, Event, Events, SendOutcome, Session};
use tokio::time::Instant;

use super::{connect_options, login_keeping_password};
use crate::args::ClientArgs;
use crate::output;
use telepound_client::outbox::Pending;
use telepound_client::{is_refusal, is_transient};
use telepound_protocol::{GroupName, UserName};

/// How long `send` waits for an online recipient's delivery receipt.
const DELIVERY_WAIT: Duration = Duration::from_secs(5);

/// How long `send` keeps trying to reach the server, unless
/// `TELEPOUND_SEND_TIMEOUT_SECS` says otherwise.
const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(20);

fn retry_for() -> Duration {
    std::env::var("TELEPOUND_SEND_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(DEFAULT_RETRY_FOR, Duration::from_secs)
}

fn transient(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<ClientError>())
        .any(is_transient)
}

/// Who a queued message is for, as shown.
fn queued_to(p: &Pending) -> String {
    match &p.group {
        Some(g) => format!("#{g}"),
        None => p.to.to_string(),
    }
}

/// Whom a message goes to.
pub enum Target {
    /// One user.
    User(UserName),
    /// A group's members.
    Group(GroupName),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::User(u) => write!(f, "{u}"),
            Self::Group(g) => write!(f, "#{g}"),
        }
    }
}

pub async fn run(
    c: &ClientArgs,
    to: Target,
    text: &str,
    files: &[std::path::PathBuf],
) -> anyhow::Result<()> {
    let limit = retry_for();
    let deadline = Instant::now() + limit;
    let queued = AtomicBool::new(false);
    // Everything up to the server's `accepted` is under the deadline:
    // connecting, logging in, uploading, each request and every retry, so
    // a server that accepts connections and never answers cannot hold a
    // one-shot send (and a script waiting on it) for ever.
    let sent = tokio::time::timeout_at(
        deadline,
        deliver(c, &to, text, files, deadline, limit, &queued),
    )
    .await;
    let (session, mut events, outcome) = match sent {
        Ok(r) => r?,
        Err(_) => {
            let what = if queued.load(Ordering::SeqCst) {
                "the message stays queued and is sent (once) the next time telepound connects"
            } else {
                "nothing was sent"
            };
            return Err(anyhow::Error::new(ClientError::Timeout).context(format!(
                "could not send within {} s (TELEPOUND_SEND_TIMEOUT_SECS); {what}",
                limit.as_secs()
            )));
        }
    };
    println!(
        "Sent to {to}: stored by the server at {} (id {}).",
        output::stamp(outcome.server_ts),
        outcome.msg_id
    );
    if matches!(to, Target::Group(_)) {
        session.client().close().await;
        return Ok(());
    }
    if !outcome.recipient_online {
        println!("{to} is offline; the message waits in their mailbox until they log in.");
        session.client().close().await;
        return Ok(());
    }
    let delivered = tokio::time::timeout(DELIVERY_WAIT, async {
        while let Some(ev) = events.recv().await {
            if matches!(ev, Event::Delivered { msg_id, .. } if msg_id == outcome.msg_id) {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    if delivered {
        println!("Message Delivered");
    } else {
        println!("{to} has not confirmed it yet; it stays in their mailbox until they do.");
    }
    session.client().close().await;
    Ok(())
}

/// Logs in, uploads the files, queues the message and sends it (with
/// anything queued earlier), retrying connection failures until
/// `deadline`; sets `queued` once the message is in the outbox.
async fn deliver(
    c: &ClientArgs,
    to: &Target,
    text: &str,
    files: &[std::path::PathBuf],
    deadline: Instant,
    limit: Duration,
    queued: &AtomicBool,
) -> anyhow::Result<(Session, Events, SendOutcome)> {
    let mut backoff = Backoff::default();
    let wait = |backoff: &mut Backoff, e: anyhow::Error| {
        let delay = backoff.next_delay();
        if Instant::now() + delay > deadline {
            return Err(e);
        }
        if backoff.attempts() == 1 {
            eprintln!(
                "telepound: {e:#}; retrying for up to {} s...",
                limit.as_secs()
            );
        }
        Ok(delay)
    };

    let (mut session, mut events, password) = loop {
        match login_keeping_password(c).await {
            Ok(x) => break x,
            Err(e) if transient(&e) => tokio::time::sleep(wait(&mut backoff, e)?).await,
            Err(e) => return Err(e),
        }
    };
    // Files first (a missing one stops everything before anything is
    // sent); an upload cut off resumes where it stopped on the next try.
    let mut attachments = Vec::new();
    if !files.is_empty() {
        let recipients = match to {
            Target::User(u) => {
                session.peer_keys(u).await?;
                vec![u.clone()]
            }
            // Only the verified members may fetch the files.
            Target::Group(g) => session.group_recipients(g).await?,
        };
        let progress = crate::progress::bars("sending");
        attachments = loop {
            match session
                .upload_files(&recipients, files, progress.clone())
                .await
            {
                Ok(a) => break a,
                Err(e) if is_transient(&e) => {
                    let delay = wait(&mut backoff, anyhow::Error::new(e)).map_err(|e| {
                        e.context("could not upload in time; run the same command again to resume the upload")
                    })?;
                    tokio::time::sleep(delay).await;
                    match session
                        .reconnect(&connect_options(c), Some(password.as_bytes()))
                        .await
                    {
                        Ok(ev) => events = ev,
                        Err(e) if is_transient(&e) => {}
                        Err(e) => return Err(e).context("cannot log in again"),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        };
        for a in &attachments {
            println!("Attached {}.", crate::preview::describe(a));
        }
    }
    // Sealed once, with one msg_id, and kept on disk until the server has
    // it: every retry is the same message, stored once.
    let msg_id = match to {
        Target::User(u) => session.queue_with_files(u, text, attachments).await?,
        Target::Group(g) => session.queue_group(g, text, attachments).await?,
    };
    queued.store(true, Ordering::SeqCst);
    let to_target = &to;
    let outcome = loop {
        match session.flush_outbox().await {
            Ok(flushed) => {
                let mut mine = None;
                let mut blocked = None;
                for (pending, result) in flushed {
                    if pending.msg_id == msg_id {
                        mine = Some(result);
                        continue;
                    }
                    let to = queued_to(&pending);
                    match result {
                        Ok(_) => println!("Sent a message to {to} queued earlier."),
                        Err(e) if is_refusal(&e) => eprintln!(
                            "telepound: warning: a message to {to} queued earlier was not sent and is dropped: {}",
                            output::one_line(&e.to_string())
                        ),
                        // It stays queued; ours waits behind it only if
                        // it is in the same conversation.
                        Err(e) => {
                            let same = match (to_target, &pending.group) {
                                (Target::Group(g), Some(pg)) => g == pg,
                                (Target::User(u), None) => *u == pending.to,
                                _ => false,
                            };
                            if same {
                                blocked = Some((to, e));
                            } else {
                                eprintln!(
                                    "telepound: warning: a message to {to} queued earlier could not be sent yet ({}); it stays queued",
                                    output::one_line(&e.to_string())
                                );
                            }
                        }
                    }
                }
                match (mine, blocked) {
                    (Some(Ok(outcome)), _) => break outcome,
                    (Some(Err(e)), _) if is_refusal(&e) => return Err(e.into()),
                    (Some(Err(e)), _) => {
                        return Err(anyhow::Error::new(e).context(
                            "the server could not take the message; it stays queued and is sent (once) the next time telepound connects",
                        ));
                    }
                    (None, Some((to, e))) => {
                        return Err(anyhow::Error::new(e).context(format!(
                            "a message to {to} queued earlier could not be sent, so yours waits behind it; both stay queued and are sent (once) the next time telepound connects"
                        )));
                    }
                    // Cut off after sending some: go round again.
                    (None, None) => {}
                }
            }
            Err(e) if is_transient(&e) => {
                let e = anyhow::Error::new(e);
                let delay = wait(&mut backoff, e).map_err(|e| {
                    e.context(
                        "could not reach the server in time; the message stays queued and is sent (once) the next time telepound connects",
                    )
                })?;
                tokio::time::sleep(delay).await;
                match session
                    .reconnect(&connect_options(c), Some(password.as_bytes()))
                    .await
                {
                    Ok(ev) => events = ev,
                    Err(e) if is_transient(&e) => {}
                    Err(e) => return Err(e).context("cannot log in again"),
                }
            }
            Err(e) => return Err(e.into()),
        }
    };
    Ok((session, events, outcome))
}
