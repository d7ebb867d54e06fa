//! `telepound classic`: the original Telepound's prompt flow on standard
//! input, line by line, so it can be driven through a pipe as the
//! original's own test driver did. It survives the server going away:
//! messages typed meanwhile are queued and sent once it is back.

use std::io::{IsTerminal, Write};

use telepound_client::Error as ClientError;
use telepound_protocol::UserName;
use zeroize::Zeroizing;

use super::inbox::{self, Style};
use super::lines::Lines;
use crate::args::ClientArgs;
use telepound_client::{Link, Step, is_transient};

fn prompt(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "{text}");
    let _ = out.flush();
}

/// Reads one line while printing what arrives; `None` at end of input.
async fn ask(
    text: &str,
    lines: &mut Lines,
    link: Option<&mut Link>,
) -> anyhow::Result<Option<String>> {
    prompt(text);
    let Some(link) = link else {
        return Ok(lines.next().await);
    };
    loop {
        tokio::select! {
            line = lines.next() => return Ok(line),
            step = link.step() => {
                println!();
                on_step(link, step?).await?;
                prompt(text);
            }
        }
    }
}

/// Prints an incoming message, a lost connection, or a recovery.
async fn on_step(link: &mut Link, step: Step) -> anyhow::Result<()> {
    match step {
        Step::Event(ev) => {
            let mut acks = Vec::new();
            match link.session.handle_event(ev, &mut acks).await {
                Ok(Some(inbound)) => inbox::show(&inbound, Style::Classic),
                Ok(None) => {}
                Err(e) if is_transient(&e) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
            match link.session.ack(acks).await {
                Err(e) if !is_transient(&e) => Err(e.into()),
                _ => Ok(()),
            }
        }
        Step::Lost(reason) => {
            let why = reason.map(|r| format!(" ({r})")).unwrap_or_default();
            println!(
                "Connection to the server lost{why}; reconnecting. Messages you type are kept and sent when it is back."
            );
            Ok(())
        }
        Step::Restored => {
            println!("Reconnected.");
            let resumed = async {
                inbox::report_flush(&mut link.session, Style::Classic).await?;
                inbox::catch_up(&mut link.session, &mut link.events, Style::Classic).await?;
                anyhow::Ok(())
            };
            match resumed.await {
                Err(e) if !e.downcast_ref::<ClientError>().is_some_and(is_transient) => Err(e),
                _ => Ok(()),
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
    println!("Logged in as {user}. Type EXIT to quit.");
    inbox::report_flush(&mut session, Style::Classic).await?;
    inbox::catch_up(&mut session, &mut events, Style::Classic).await?;
    let mut link = Link::new(
        session,
        events,
        super::connect_options(c),
        Some(zeroize::Zeroizing::new(password.as_bytes().to_vec())),
    );
    let result = chat(&mut link, &mut lines).await;
    link.session.client().close().await;
    result
}

async fn chat(link: &mut Link, lines: &mut Lines) -> anyhow::Result<()> {
    loop {
        let Some(text) = ask("Enter Message > ", lines, Some(link)).await? else {
            return Ok(());
        };
        if text.trim() == "EXIT" {
            println!("Bye.");
            return Ok(());
        }
        let Some(to) = ask("Send To > ", lines, Some(link)).await? else {
            return Ok(());
        };
        let Some(file) = ask(
            "Enter Filename if you want to attach it > ",
            lines,
            Some(link),
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
        let Ok(to) = UserName::new(to) else {
            println!("User Not Found");
            continue;
        };
        if !file.trim().is_empty() {
            println!(
                "Attaching files is not supported yet; sending the text without {}.",
                file.trim()
            );
        }
        match link.session.queue_text(&to, &text).await {
            Ok(_) => {}
            Err(ClientError::UnknownUser(_)) => {
                println!("User Not Found");
                continue;
            }
            Err(e @ ClientError::KeyChanged { .. }) => {
                println!("Not sent. {e}");
                continue;
            }
            Err(e) if is_transient(&e) => {
                println!(
                    "Not connected, and {to}'s keys are not known here yet: message not sent."
                );
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        if !link.is_up() {
            println!(
                "Not connected: the message is queued and will be sent when the connection is back."
            );
            continue;
        }
        match inbox::report_flush(&mut link.session, Style::Classic).await {
            Err(e) if e.downcast_ref::<ClientError>().is_some_and(is_transient) => {
                println!(
                    "Not connected: the message is queued and will be sent when the connection is back."
                );
            }
            other => other?,
        }
    }
}
