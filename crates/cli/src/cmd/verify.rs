//! `telepound verify USER [--accept]`: safety numbers and key pins.

use telepound_client::KeyStatus;

use super::{login, parse_user};
use crate::args::ClientArgs;

pub async fn run(c: &ClientArgs, peer: &str, accept: bool) -> anyhow::Result<()> {
    let peer = parse_user(peer)?;
    let (mut session, _events) = login(c).await?;
    let me = session.user().clone();
    let (number, status) = session.safety_number(&peer).await?;
    println!("Safety number for {me} and {peer}:");
    let groups: Vec<&str> = number.split(' ').collect();
    for row in groups.chunks(4) {
        println!("    {}", row.join(" "));
    }
    println!(
        "Compare it with {peer} in person or over a channel you trust; it must be identical on both sides."
    );
    if accept {
        session.accept_key(&peer).await?;
        println!("{peer}'s current key is now pinned as verified.");
        session.client().close().await;
        return Ok(());
    }
    match status {
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
