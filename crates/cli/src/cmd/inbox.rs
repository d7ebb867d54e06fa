//! `telepound inbox [--follow] [--json]`, and the printing of incoming
//! messages that `classic` shares.

use std::io::Write;

use serde_json::json;
use telepound_client::{Events, Inbound, Session};
use telepound_protocol::codec::DEFAULT_PAGE;

use super::login;
use crate::args::ClientArgs;
use crate::output::{self, sanitize};

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

pub async fn run(c: &ClientArgs, follow: bool, json: bool) -> anyhow::Result<()> {
    let style = if json { Style::Json } else { Style::Line };
    let (mut session, mut events) = login(c).await?;
    let shown = catch_up(&mut session, &mut events, style).await?;
    if shown == 0 && style == Style::Line && !follow {
        println!("No new messages.");
    }
    if follow {
        if style == Style::Line {
            println!("Waiting for messages (Ctrl-C to stop)...");
        }
        follow_live(&mut session, &mut events, style).await?;
    }
    session.client().close().await;
    Ok(())
}

/// Fetches the mailbox page by page, printing and acknowledging each page;
/// returns how many messages were shown. Afterwards the connection is live.
pub async fn catch_up(
    session: &mut Session,
    events: &mut Events,
    style: Style,
) -> anyhow::Result<u64> {
    let mut after = 0;
    let mut shown = 0;
    loop {
        let page = session.sync_page(after, DEFAULT_PAGE);
        tokio::pin!(page);
        let mut acks = Vec::new();
        let page = loop {
            tokio::select! {
                biased;
                Some(ev) = events.recv() => {
                    if let Some(inbound) = session.handle_event(ev, &mut acks).await? {
                        shown += u64::from(matches!(inbound, Inbound::Message(_)));
                        show(&inbound, style);
                    }
                }
                page = &mut page => break page?,
            }
        };
        // Everything of the page was pushed before its answer.
        while let Ok(ev) = events.try_recv() {
            if let Some(inbound) = session.handle_event(ev, &mut acks).await? {
                shown += u64::from(matches!(inbound, Inbound::Message(_)));
                show(&inbound, style);
            }
        }
        session.ack(acks).await?;
        if !page.more {
            return Ok(shown);
        }
        after = page.cursor;
    }
}

/// Prints messages as they arrive, acknowledging each at once so senders
/// get their delivery receipt.
pub async fn follow_live(
    session: &mut Session,
    events: &mut Events,
    style: Style,
) -> anyhow::Result<()> {
    while let Some(ev) = events.recv().await {
        let mut acks = Vec::new();
        if let Some(inbound) = session.handle_event(ev, &mut acks).await? {
            show(&inbound, style);
        }
        session.ack(acks).await?;
    }
    Ok(())
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
                "attachments": p.attachments.iter().map(|a| json!({
                    "name": a.name, "size": a.size, "media_type": a.media_type,
                })).collect::<Vec<_>>(),
            });
            let _ = writeln!(out, "{v}");
        }
        (Inbound::Message(r), Style::Line) => {
            let p = &r.payload;
            let _ = writeln!(
                out,
                "[{}] {}: {}",
                output::stamp(p.sent_at),
                p.sender,
                sanitize(&p.text)
            );
        }
        (Inbound::Message(r), Style::Classic) => {
            let p = &r.payload;
            let _ = writeln!(
                out,
                "\nMessage from {}:\nDate: {}\nTime: {}\n{}",
                p.sender,
                output::date(p.sent_at),
                output::time_of_day(p.sent_at),
                sanitize(&p.text)
            );
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
            eprintln!("telepound: warning: a message from {from} was not shown ({what}): {reason}");
        }
    }
    let _ = out.flush();
}
