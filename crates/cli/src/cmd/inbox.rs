//! `telepound inbox [--follow] [--json]`, and the printing of incoming
//! messages that `classic` shares.

use std::io::Write;

use serde_json::json;
use std::path::{Path, PathBuf};

use telepound_client::{Error as ClientError, Events, Inbound, Received, Session};

use super::login_keeping_password;
use crate::args::ClientArgs;
use crate::output::{self, one_line, sanitize};
use telepound_client::{Link, Step, is_refusal, is_transient};

/// How incoming messages are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// One line each: `[date time] sender: text`.
    Line,
    /// One JSON object per line.
    Json,
    /// The original's layout: sender, a date line, a time line, the text.
    Classic,
}

pub async fn run(
    c: &ClientArgs,
    follow: bool,
    json: bool,
    download: Option<PathBuf>,
) -> anyhow::Result<()> {
    let style = if json { Style::Json } else { Style::Line };
    let (mut session, mut events, password) = login_keeping_password(c).await?;
    report_flush(&mut session, style).await?;
    let (shown, with_files) = catch_up(&mut session, &mut events, style).await?;
    if let Some(dir) = &download {
        for r in &with_files {
            download_all(&session, r, dir, style).await;
        }
    }
    if shown == 0 && style == Style::Line && !follow {
        println!("No new messages.");
    }
    if follow {
        if style == Style::Line {
            println!("Waiting for messages (Ctrl-C to stop)...");
        }
        let mut link = Link::new(
            session,
            events,
            super::connect_options(c),
            Some(zeroize::Zeroizing::new(password.as_bytes().to_vec())),
        );
        follow_live(&mut link, style, download.as_deref()).await?;
        link.session.client().close().await;
    } else {
        session.client().close().await;
    }
    Ok(())
}

/// Fetches the mailbox page by page, printing and acknowledging each page;
/// returns how many messages were shown, and those that carry files.
/// Afterwards the connection is live.
pub async fn catch_up(
    session: &mut Session,
    events: &mut Events,
    style: Style,
) -> anyhow::Result<(u64, Vec<Received>)> {
    let mut with_files = Vec::new();
    let shown = session
        .catch_up(events, |inbound| {
            show(inbound, style);
            if let Inbound::Message(r) = inbound
                && !r.payload.attachments.is_empty()
            {
                with_files.push(r.clone());
            }
        })
        .await?;
    Ok((shown, with_files))
}

/// Saves every file of `r` into `dir`, reporting each; a failure is one
/// warning line and the rest go on.
pub async fn download_all(session: &Session, r: &Received, dir: &Path, style: Style) {
    for a in &r.payload.attachments {
        match session
            .download(a, dir, crate::progress::bars("receiving"))
            .await
        {
            Ok(path) if style == Style::Json => {
                let v = json!({"type": "saved", "msg_id": r.payload.msg_id, "name": a.name, "path": path});
                println!("{v}");
            }
            Ok(path) => crate::preview::show_saved(a, &path),
            Err(e) => eprintln!(
                "telepound: warning: {} from {} was not saved: {}",
                one_line(&a.name),
                r.payload.sender,
                one_line(&e.to_string())
            ),
        }
    }
}

/// Prints messages as they arrive, acknowledging each at once so senders
/// get their delivery receipt. Survives the server going away: says so,
/// reconnects, catches up and goes on.
pub async fn follow_live(
    link: &mut Link,
    style: Style,
    download: Option<&Path>,
) -> anyhow::Result<()> {
    loop {
        match link.step().await? {
            Step::Event(ev) => {
                let mut acks = Vec::new();
                match link.session.handle_event(ev, &mut acks).await {
                    Ok(Some(inbound)) => {
                        show(&inbound, style);
                        if let (Some(dir), Inbound::Message(r)) = (download, &inbound) {
                            download_all(&link.session, r, dir, style).await;
                        }
                    }
                    Ok(None) => {}
                    // The link will see the connection end and come back;
                    // unacknowledged messages are delivered again then.
                    Err(e) if is_transient(&e) => continue,
                    Err(e) => return Err(e.into()),
                }
                match link.session.ack(acks).await {
                    Err(e) if !is_transient(&e) => return Err(e.into()),
                    _ => {}
                }
            }
            Step::Lost(reason) => {
                let why = reason
                    .map(|r| format!(" ({})", one_line(&r)))
                    .unwrap_or_default();
                eprintln!("telepound: connection to the server lost{why}; reconnecting...");
            }
            Step::Restored => {
                eprintln!("telepound: reconnected.");
                let resumed = async {
                    report_flush(&mut link.session, style).await?;
                    let (shown, with_files) =
                        catch_up(&mut link.session, &mut link.events, style).await?;
                    if let Some(dir) = download {
                        for r in &with_files {
                            download_all(&link.session, r, dir, style).await;
                        }
                    }
                    anyhow::Ok(shown)
                };
                if let Err(e) = resumed.await {
                    match e.downcast_ref::<ClientError>() {
                        Some(ce) if is_transient(ce) => {}
                        _ => return Err(e),
                    }
                }
            }
        }
    }
}

/// Sends what waits in the outbox (typed while disconnected, or left by
/// an earlier run), saying what became of each.
pub async fn report_flush(session: &mut Session, style: Style) -> anyhow::Result<()> {
    // Not skipped when this process's count says none: another process of
    // this user (a `send`, a second `classic`) may have queued some.
    let flushed = session.flush_outbox().await?;
    for (pending, result) in flushed {
        let to = match &pending.group {
            Some(g) => format!("#{g}"),
            None => pending.to.to_string(),
        };
        let line = match result {
            Ok(_) if pending.group.is_some() => format!("Message to {to} sent."),
            Ok(o) if o.recipient_online => format!("Message to {to} sent; waiting for delivery."),
            Ok(_) => format!(
                "{to} is offline: the message is queued and will be delivered when they log in."
            ),
            Err(ClientError::UnknownUser(_)) => format!("Message to {to} not sent: User Not Found"),
            Err(e) if is_refusal(&e) => {
                format!("Message to {to} not sent: {}", one_line(&e.to_string()))
            }
            Err(e) => format!(
                "Message to {to} not sent yet ({}); it stays queued and is tried again.",
                one_line(&e.to_string())
            ),
        };
        if style == Style::Json {
            eprintln!("telepound: {line}");
        } else {
            println!("{line}");
        }
    }
    Ok(())
}

/// A membership change as one line, e.g. "alice added bob, carol". It is
/// shown only because it verified against the group's signed history: its
/// actor signed it and was allowed to make it, so the server cannot make
/// one up.
pub fn change_line(l: &telepound_client::GroupLine) -> String {
    use telepound_protocol::group::ChangeKind as K;
    let c = &l.change;
    let users = c
        .users
        .iter()
        .map(|u| u.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let mut line = match c.kind {
        K::Created if users.is_empty() => format!("{} created the group", c.actor),
        K::Created => format!("{} created the group with {users}", c.actor),
        K::Added => format!("{} added {users}", c.actor),
        K::Removed => format!("{} removed {users}", c.actor),
        K::Left => format!("{} left", c.actor),
        K::Promoted => format!("{} made {users} an admin", c.actor),
    };
    if let Some(heir) = &c.heir {
        line.push_str(&format!("; {heir} is now the owner"));
    }
    line
}

/// Prints one inbound item.
pub fn show(inbound: &Inbound, style: Style) {
    let mut out = std::io::stdout().lock();
    match (inbound, style) {
        (Inbound::Message(r), Style::Json) => {
            let p = &r.payload;
            let v = json!({
                "type": "message",
                "msg_id": p.msg_id,
                "from": p.sender,
                "to": p.recipients.iter().filter(|u| **u != p.sender || p.recipients.len() == 1).collect::<Vec<_>>(),
                "sent_at": output::rfc3339(p.sent_at),
                "server_ts": output::rfc3339(r.server_ts),
                "text": p.text,
                "group": p.group,
                "attachments": p.attachments.iter().map(|a| json!({
                    "name": a.name, "size": a.size, "media_type": a.media_type,
                    "width": a.image.map(|i| i.width), "height": a.image.map(|i| i.height),
                })).collect::<Vec<_>>(),
            });
            let _ = writeln!(out, "{v}");
        }
        (Inbound::Message(r), Style::Line) => {
            let p = &r.payload;
            let group = p
                .group
                .as_ref()
                .map(|g| format!("#{g} "))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "[{}] {group}{}: {}",
                output::stamp(p.sent_at),
                p.sender,
                sanitize(&p.text)
            );
            for a in &p.attachments {
                let _ = writeln!(out, "  attached: {}", crate::preview::describe(a));
            }
        }
        (Inbound::GroupChange(l), Style::Json) => {
            let v = json!({
                "type": "group_change",
                "group": l.group,
                "epoch": l.epoch,
                "kind": l.change.kind,
                "actor": l.change.actor,
                "users": l.change.users,
                "heir": l.change.heir,
                "at": output::rfc3339(l.at),
                "server_ts": output::rfc3339(l.server_ts),
                "line": change_line(l),
            });
            let _ = writeln!(out, "{v}");
        }
        (Inbound::GroupChange(l), Style::Line) => {
            let _ = writeln!(
                out,
                "[{}] #{} {}",
                output::stamp(l.server_ts),
                l.group,
                change_line(l)
            );
        }
        (Inbound::GroupChange(l), Style::Classic) => {
            let _ = writeln!(
                out,
                "\n#{}: {} ({} {})",
                l.group,
                change_line(l),
                output::date(l.server_ts),
                output::time_of_day(l.server_ts)
            );
        }
        (Inbound::Message(r), Style::Classic) => {
            let p = &r.payload;
            let place = p
                .group
                .as_ref()
                .map(|g| format!(" in #{g}"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "\nMessage from {}{place}:\nDate: {}\nTime: {}\n{}",
                p.sender,
                output::date(p.sent_at),
                output::time_of_day(p.sent_at),
                sanitize(&p.text)
            );
            for a in &p.attachments {
                let _ = writeln!(out, "Attached: {}", crate::preview::describe(a));
            }
        }
        (Inbound::Delivered { msg_id, to, at }, Style::Json) => {
            let v = json!({"type": "delivered", "msg_id": msg_id, "to": to, "at": output::rfc3339(*at)});
            let _ = writeln!(out, "{v}");
        }
        (Inbound::Delivered { msg_id, to, at }, Style::Line) => {
            let _ = writeln!(
                out,
                "[{}] {to} received your message {msg_id}",
                output::stamp(*at)
            );
        }
        (Inbound::Delivered { to, .. }, Style::Classic) => {
            let _ = writeln!(out, "Message Delivered (to {to})");
        }
        (Inbound::Refused { from, reason, kept }, _) => {
            let what = if *kept {
                "kept in your mailbox"
            } else {
                "discarded"
            };
            eprintln!(
                "telepound: warning: a message from {from} was not shown ({what}): {}",
                one_line(reason)
            );
        }
    }
    let _ = out.flush();
}
