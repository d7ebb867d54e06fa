//! `telepound classic`: the original Telepound's prompt flow on standard
//! input, line by line, so it can be driven through a pipe as the
//! original's own test driver did.

use std::io::{IsTerminal, Write};

use telepound_client::{Error as ClientError, Events, Session};
use telepound_protocol::UserName;
use zeroize::Zeroizing;

use super::inbox::{self, Style};
use super::lines::Lines;
use crate::args::ClientArgs;

fn prompt(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "{text}");
    let _ = out.flush();
}

/// Reads one line while printing incoming messages; `None` at end of input.
async fn ask(
    text: &str,
    lines: &mut Lines,
    live: Option<(&mut Session, &mut Events)>,
) -> anyhow::Result<Option<String>> {
    prompt(text);
    let Some((session, events)) = live else {
        return Ok(lines.next().await);
    };
    loop {
        tokio::select! {
            line = lines.next() => return Ok(line),
            Some(ev) = events.recv() => {
                let mut acks = Vec::new();
                if let Some(inbound) = session.handle_event(ev, &mut acks).await? {
                    println!();
                    inbox::show(&inbound, Style::Classic);
                    prompt(text);
                }
                session.ack(acks).await?;
            }
        }
    }
}

async fn ask_password(text: &str, lines: &mut Lines) -> anyhow::Result<Option<Zeroizing<String>>> {
    if std::io::stdin().is_terminal() {
        let p = rpassword::prompt_password(text)?;
        return Ok(Some(Zeroizing::new(p)));
    }
    Ok(ask(text, lines, None).await?.map(Zeroizing::new))
}

pub async fn run(c: &ClientArgs) -> anyhow::Result<()> {
    let mut lines = Lines::stdin();
    let home = super::home(c)?;
    let Some(choice) = ask("Sign-up(s) or Login(l) (s/l) [l] > ", &mut lines, None).await? else {
        return Ok(());
    };
    let signup = match choice.trim().to_ascii_lowercase().as_str() {
        "s" => true,
        "" | "l" => false,
        other => anyhow::bail!("expected s or l, got {other:?}"),
    };
    let user = loop {
        let Some(name) = ask("Enter Username: ", &mut lines, None).await? else {
            return Ok(());
        };
        match UserName::new(name.trim()) {
            Ok(u) => break u,
            Err(e) => println!("{e}"),
        }
    };
    let password = if signup {
        loop {
            let Some(first) = ask_password("Create Password: ", &mut lines).await? else {
                return Ok(());
            };
            let Some(second) = ask_password("Confirm Password: ", &mut lines).await? else {
                return Ok(());
            };
            if first.is_empty() {
                println!("The password cannot be empty.");
            } else if *first != *second {
                println!("The passwords do not match; try again.");
            } else {
                break first;
            }
        }
    } else {
        match ask_password("Enter Password: ", &mut lines).await? {
            Some(p) => p,
            None => return Ok(()),
        }
    };
    let (client, mut events) = super::connect(c).await?;
    if signup {
        super::signup_with(&client, &user, password.as_bytes(), super::ksf(c)?).await?;
        println!("Signed up as {user}.");
    }
    let mut session = super::login_with(&client, &user, password.as_bytes(), &home).await?;
    drop(password);
    println!("Logged in as {user}. Type EXIT to quit.");
    inbox::catch_up(&mut session, &mut events, Style::Classic).await?;
    let result = chat(&mut session, &mut events, &mut lines).await;
    session.client().close().await;
    result
}

async fn chat(session: &mut Session, events: &mut Events, lines: &mut Lines) -> anyhow::Result<()> {
    loop {
        let Some(text) = ask("Enter Message > ", lines, Some((session, events))).await? else {
            return Ok(());
        };
        if text.trim() == "EXIT" {
            println!("Bye.");
            return Ok(());
        }
        let Some(to) = ask("Send To > ", lines, Some((session, events))).await? else {
            return Ok(());
        };
        let Some(file) = ask(
            "Enter Filename if you want to attach it > ",
            lines,
            Some((session, events)),
        )
        .await?
        else {
            return Ok(());
        };
        if text.is_empty() {
            println!("Empty message not sent.");
            continue;
        }
        let to = to.trim();
        if to.starts_with('#') {
            println!("Group chats are not supported yet; message not sent.");
            continue;
        }
        let to = match UserName::new(to) {
            Ok(u) => u,
            Err(_) => {
                println!("User Not Found");
                continue;
            }
        };
        if !file.trim().is_empty() {
            println!(
                "Attaching files is not supported yet; sending the text without {}.",
                file.trim()
            );
        }
        match session.send_text(&to, &text).await {
            Ok(outcome) if outcome.recipient_online => {
                println!("Message sent to {to}; waiting for delivery.");
            }
            Ok(_) => println!(
                "{to} is offline: the message is queued and will be delivered when they log in."
            ),
            Err(ClientError::UnknownUser(_)) => println!("User Not Found"),
            Err(e @ ClientError::KeyChanged { .. }) => println!("Not sent. {e}"),
            Err(e) => return Err(e.into()),
        }
    }
}
