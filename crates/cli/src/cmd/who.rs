//! `telepound who USER…`: online, or last seen.

use super::{login, parse_user};
use crate::args::ClientArgs;
use crate::output;

pub async fn run(c: &ClientArgs, users: &[String]) -> anyhow::Result<()> {
    let names = users
        .iter()
        .map(|u| parse_user(u))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (session, _events) = login(c).await?;
    let (found, unknown) = session.presence(names.clone()).await?;
    session.client().close().await;
    for name in &names {
        if let Some(p) = found.iter().find(|p| &p.user == name) {
            match (p.online, p.last_seen) {
                (true, _) => println!("{name}: online"),
                (false, Some(t)) => println!("{name}: offline, last seen {}", output::stamp(t)),
                (false, None) => println!("{name}: offline, never seen"),
            }
        } else {
            println!("{name}: User Not Found");
        }
    }
    if let Some(first) = unknown.first() {
        return Err(telepound_client::Error::UnknownUser(first.clone()).into());
    }
    Ok(())
}
