//! `telepound classic`: the original Telepound's prompt flow on standard
//! input, line by line, so it can be driven through a pipe as the
//! original's own test driver did. It survives the server going away:
//! messages typed meanwhile are queued and sent once it is back.

use std::io::{IsTerminal, Write};

use std::path::{Path, PathBuf};

use telepound_client::{Error as ClientError, Inbound, Received};
use telepound_protocol::UserName;
use zeroize::Zeroizing;

use super::inbox::{self, Style};
use super::lines::Lines;
use crate::args::ClientArgs;
use crate::output::one_line;
use telepound_client::{Link, Step, is_transient};

fn prompt(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "{text}");
    let _ = out.flush();
}

/// Reads one line while printing what arrives; `None` at end of input.
/// In the chat (`chat` given), incoming messages are shown as they come,
/// and for one that carries files the original's download question is
/// asked before the prompt is shown again.
async fn ask(
    text: &str,
    lines: &mut Lines,
    chat: Option<(&mut Link, &Path)>,
) -> anyhow::Result<Option<String>> {
    prompt(text);
    let Some((link, downloads)) = chat else {
        return Ok(lines.next().await);
    };
    loop {
        tokio::select! {
            line = lines.next() => return Ok(line),
            step = link.step() => {
                println!();
                let with_files = on_step(link, step?).await?;
                offer_downloads(link, &with_files, lines, downloads).await;
                prompt(text);
            }
        }
    }
}

/// The original's question, once for each message that carries files.
async fn offer_downloads(link: &Link, with_files: &[Received], lines: &mut Lines, dir: &Path) {
    for r in with_files {
        prompt("A file is attached, do you want to download it? (y/n)[n] > ");
        let answer = lines.next().await.unwrap_or_default();
        if answer.trim().eq_ignore_ascii_case("y") {
            inbox::download_all(&link.session, r, dir, Style::Classic).await;
        }
    }
}

/// Prints an incoming message, a lost connection, or a recovery; returns
/// the messages shown that carry files.
async fn on_step(link: &mut Link, step: Step) -> anyhow::Result<Vec<Received>> {
    match step {
        Step::Event(ev) => {
            let mut acks = Vec::new();
            let mut with_files = Vec::new();
            match link.session.handle_event(ev, &mut acks).await {
                Ok(Some(inbound)) => {
                    inbox::show(&inbound, Style::Classic);
                    if let Inbound::Message(r) = inbound
                        && !r.payload.attachments.is_empty()
                    {
                        with_files.push(r);
                    }
                }
                Ok(None) => {}
                Err(e) if is_transient(&e) => return Ok(with_files),
                Err(e) => return Err(e.into()),
            }
            match link.session.ack(acks).await {
                Err(e) if !is_transient(&e) => Err(e.into()),
                _ => Ok(with_files),
            }
        }
        Step::Lost(reason) => {
            let why = reason
                .map(|r| format!(" ({})", one_line(&r)))
                .unwrap_or_default();
            println!(
                "Connection to the server lost{why}; reconnecting. Messages you type are kept and sent when it is back."
            );
            Ok(Vec::new())
        }
        Step::Restored => {
            println!("Reconnected.");
            let resumed = async {
                inbox::report_flush(&mut link.session, Style::Classic).await?;
                let (_, with_files) =
                    inbox::catch_up(&mut link.session, &mut link.events, Style::Classic).await?;
                anyhow::Ok(with_files)
            };
            match resumed.await {
                Err(e) if !e.downcast_ref::<ClientError>().is_some_and(is_transient) => Err(e),
                Err(_) => Ok(Vec::new()),
                Ok(with_files) => Ok(with_files),
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
            Err(e) => println!("{}", one_line(&e.to_string())),
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
    let (_, with_files) = inbox::catch_up(&mut session, &mut events, Style::Classic).await?;
    let downloads = super::download_folder(c, &user)?;
    let mut link = Link::new(
        session,
        events,
        super::connect_options(c),
        Some(zeroize::Zeroizing::new(password.as_bytes().to_vec())),
    );
    offer_downloads(&link, &with_files, &mut lines, &downloads).await;
    let result = chat(&mut link, &mut lines, &downloads).await;
    link.session.client().close().await;
    result
}

async fn chat(link: &mut Link, lines: &mut Lines, downloads: &Path) -> anyhow::Result<()> {
    loop {
        let Some(text) = ask("Enter Message > ", lines, Some((&mut *link, downloads))).await?
        else {
            return Ok(());
        };
        if text.trim() == "EXIT" {
            println!("Bye.");
            return Ok(());
        }
        let Some(to) = ask("Send To > ", lines, Some((&mut *link, downloads))).await? else {
            return Ok(());
        };
        let Some(file) = ask(
            "Enter Filename if you want to attach it > ",
            lines,
            Some((&mut *link, downloads)),
        )
        .await?
        else {
            return Ok(());
        };
        let file = file.trim();
        if text.is_empty() && file.is_empty() {
            println!("Empty message not sent.");
            continue;
        }
        let to = to.trim();
        if let Some(group) = to.strip_prefix('#') {
            let Ok(group) = telepound_protocol::GroupName::new(group) else {
                println!("No such group: {to}");
                continue;
            };
            send_to_group(link, &group, &text, file).await?;
            continue;
        }
        let Ok(to) = UserName::new(to) else {
            println!("User Not Found");
            continue;
        };
        let mut attachments = Vec::new();
        if !file.is_empty() {
            let path = PathBuf::from(file);
            if !path.exists() {
                println!("File not found: {file}; sending the text without it.");
            } else if path.is_dir() {
                println!("{file} is a folder, not a file; sending the text without it.");
            } else if !link.is_up() {
                println!("Not connected: the file cannot be uploaded now; message not sent.");
                continue;
            } else {
                let progress = crate::progress::bars("sending");
                match link
                    .session
                    .upload_files(std::slice::from_ref(&to), &[path], progress)
                    .await
                {
                    Ok(a) => attachments = a,
                    Err(ClientError::UnknownUser(_)) => {
                        println!("User Not Found");
                        continue;
                    }
                    Err(e) if is_transient(&e) => {
                        println!(
                            "The connection broke during the upload; message not sent (sending it again resumes the upload)."
                        );
                        continue;
                    }
                    Err(e) => {
                        println!("Not sent: {}", one_line(&e.to_string()));
                        continue;
                    }
                }
            }
        }
        match link.session.queue_with_files(&to, &text, attachments).await {
            Ok(_) => {}
            Err(ClientError::UnknownUser(_)) => {
                println!("User Not Found");
                continue;
            }
            Err(e @ ClientError::KeyChanged { .. }) => {
                println!("Not sent. {}", one_line(&e.to_string()));
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

/// `Send To > #NAME`: a group message, with the file if one was named.
async fn send_to_group(
    link: &mut Link,
    group: &telepound_protocol::GroupName,
    text: &str,
    file: &str,
) -> anyhow::Result<()> {
    if !link.is_up() {
        println!("Not connected: group messages need the connection; message not sent.");
        return Ok(());
    }
    let mut attachments = Vec::new();
    if !file.is_empty() {
        let path = PathBuf::from(file);
        if !path.exists() {
            println!("File not found: {file}; sending the text without it.");
        } else if path.is_dir() {
            println!("{file} is a folder, not a file; sending the text without it.");
        } else {
            // Only the verified members may fetch the file.
            let members = match link.session.group_recipients(group).await {
                Ok(m) => m,
                Err(e) => {
                    println!("Not sent: {}", one_line(&e.to_string()));
                    return Ok(());
                }
            };
            match link
                .session
                .upload_files(&members, &[path], crate::progress::bars("sending"))
                .await
            {
                Ok(a) => attachments = a,
                Err(e) => {
                    println!("Not sent: {}", one_line(&e.to_string()));
                    return Ok(());
                }
            }
        }
    }
    match link.session.queue_group(group, text, attachments).await {
        Ok(_) => {}
        Err(e) if is_transient(&e) => {
            println!("Not connected: message not sent.");
            return Ok(());
        }
        Err(e) => {
            println!("Not sent: {}", one_line(&e.to_string()));
            return Ok(());
        }
    }
    match inbox::report_flush(&mut link.session, Style::Classic).await {
        Err(e) if e.downcast_ref::<ClientError>().is_some_and(is_transient) => {
            println!(
                "Not connected: the message is queued and will be sent when the connection is back."
            );
            Ok(())
        }
        other => other,
    }
}
