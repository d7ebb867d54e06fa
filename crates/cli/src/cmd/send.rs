//! `telepound send TO TEXT`.

use std::time::Duration;

use telepound_client::Event;

use super::{login, parse_user};
use crate::args::ClientArgs;
use crate::output;

/// How long `send` waits for an online recipient's delivery receipt.
const DELIVERY_WAIT: Duration = Duration::from_secs(5);

pub async fn run(c: &ClientArgs, to: &str, text: &str) -> anyhow::Result<()> {
    let to = parse_user(to)?;
    let (mut session, mut events) = login(c).await?;
    let outcome = session.send_text(&to, text).await?;
    println!(
        "Sent to {to}: stored by the server at {} (id {}).",
        output::stamp(outcome.server_ts),
        outcome.msg_id
    );
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
