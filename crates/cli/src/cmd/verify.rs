//! `telepound verify USER [--accept [--expect DIGITS]]`: safety numbers and
//! key pins.

use std::io::{IsTerminal, Write};

use anyhow::bail;
use telepound_client::KeyStatus;

use super::{login, parse_user};
use crate::args::ClientArgs;

fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

pub async fn run(
    c: &ClientArgs,
    peer: &str,
    accept: bool,
    expect: Option<&str>,
) -> anyhow::Result<()> {
    let peer = parse_user(peer)?;
    let (mut session, _events) = login(c).await?;
    let me = session.user().clone();
    let v = session.safety_number(&peer).await?;
    println!("Safety number for {me} and {peer}:");
    let groups: Vec<&str> = v.number.split(' ').collect();
    for row in groups.chunks(4) {
        println!("    {}", row.join(" "));
    }
    println!(
        "Compare it with {peer} in person or over a channel you trust; it must be identical on both sides."
    );
    if accept {
        // The key accepted is the one this number was computed from, never
        // whatever the directory serves a moment later.
        match expect {
            Some(e) if digits(e) != digits(&v.number) => {
                bail!(
                    "the safety number is not the one you compared; {peer}'s key was NOT accepted"
                )
            }
            Some(_) => {}
            None if std::io::stdin().is_terminal() => {
                print!("Do the numbers match? Type yes to accept {peer}'s key: ");
                std::io::stdout().flush()?;
                let mut answer = String::new();
                std::io::stdin().read_line(&mut answer)?;
                if answer.trim() != "yes" {
                    println!("Not accepted.");
                    session.client().close().await;
                    return Ok(());
                }
            }
            None => bail!("without a terminal, pass --expect with the number you compared"),
        }
        session.accept_key(&peer, &v.identity_key).await?;
        println!("{peer}'s key is now pinned as verified.");
        session.client().close().await;
        return Ok(());
    }
    match v.status {
        KeyStatus::New => println!(
            "Status: first contact; {peer}'s key is now pinned. Run `telepound verify --accept {peer}` once the numbers match."
        ),
        KeyStatus::Pinned => println!(
            "Status: matches the key pinned on first contact (not yet verified). Run `telepound verify --accept {peer}` once the numbers match."
        ),
        KeyStatus::Verified => println!("Status: verified."),
        KeyStatus::Changed => {
            println!(
                "Status: CHANGED. {peer}'s key differs from the one you pinned; messages to and from {peer} are refused until you accept it."
            );
            println!("If the numbers match, run `telepound verify --accept {peer}`.");
        }
    }
    session.client().close().await;
    Ok(())
}
