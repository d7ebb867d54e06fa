//! The subcommands. Each file is one command; this module holds what they
//! share: who the user is, where local state lives, connecting and logging
//! in.

use std::path::PathBuf;

use anyhow::{Context, bail};
use telepound_client::{Client, Events, Session, account};
use telepound_protocol::UserName;
use telepound_protocol::auth::KsfParams;

use crate::args::{ClientArgs, Command};

mod classic;
mod group;
mod inbox;
mod lines;
mod send;
mod serve;
mod verify;
mod who;

/// A command line that makes no sense, found after clap parsed it: exits
/// with the usage code (2), like clap's own errors.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// Runs the chosen command.
pub async fn run(cli: crate::args::Cli) -> anyhow::Result<()> {
    let c = cli.client;
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Migrate { database, grant_to } => {
            serve::migrate(&database, grant_to.as_deref()).await
        }
        Command::Signup => signup(&c).await,
        Command::Login => {
            let (session, _events) = login(&c).await?;
            println!(
                "Logged in as {}. Your keys are unlocked on this machine.",
                session.user()
            );
            session.client().close().await;
            Ok(())
        }
        Command::Send {
            group,
            words,
            files,
        } => {
            let (to, text) = match group {
                Some(g) => (send::Target::Group(parse_group(&g)?), words.join(" ")),
                None => {
                    // clap requires a word without --group; this is the
                    // belt to its braces.
                    let Some((to, text)) = words.split_first() else {
                        return Err(Usage("send needs a recipient: send USER TEXT…".into()).into());
                    };
                    (send::Target::User(parse_user(to)?), text.join(" "))
                }
            };
            if text.is_empty() && files.is_empty() {
                return Err(Usage("nothing to send: give a message or --file".into()).into());
            }
            send::run(&c, to, &text, &files).await
        }
        Command::Group(cmd) => group::run(&c, cmd).await,
        Command::Inbox {
            follow,
            json,
            download,
            download_dir,
        } => {
            let dir = match (download, download_dir) {
                (_, Some(d)) => Some(d),
                (true, None) => Some(download_folder(&c, &acting_user(&c)?)?),
                (false, None) => None,
            };
            inbox::run(&c, follow, json, dir).await
        }
        Command::Classic => classic::run(&c).await,
        Command::Who { users } => who::run(&c, &users).await,
        Command::Verify {
            peer,
            accept,
            expect,
        } => verify::run(&c, &peer, accept, expect.as_deref()).await,
    }
}

/// The TLS and safety options given.
/// `TELEPOUND_IDLE_TIMEOUT_SECS` sets how long a silent server is waited
/// for before the connection counts as lost (default 30 s; tests shorten it).
pub fn connect_options(c: &ClientArgs) -> telepound_client::ConnectOptions {
    let mut o = telepound_client::ConnectOptions {
        ca_file: c.ca_file.clone(),
        allow_insecure: c.allow_insecure,
        ..Default::default()
    };
    if let Some(secs) = std::env::var("TELEPOUND_IDLE_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
    {
        o.idle_timeout = std::time::Duration::from_secs_f64(secs.min(86_400.0));
    }
    o
}

/// Connects to the server with the TLS options given.
pub async fn connect(c: &ClientArgs) -> anyhow::Result<(Client, Events)> {
    Ok(Client::connect_with(&c.server, &connect_options(c)).await?)
}

/// Parses a user name given on the command line, with a readable error.
pub fn parse_user(s: &str) -> anyhow::Result<UserName> {
    UserName::new(s).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Parses a group name, with or without its leading `#`.
pub fn parse_group(s: &str) -> anyhow::Result<telepound_protocol::GroupName> {
    telepound_protocol::GroupName::new(s.strip_prefix('#').unwrap_or(s))
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// The acting user from `--user` / `TELEPOUND_USER`.
pub fn acting_user(c: &ClientArgs) -> anyhow::Result<UserName> {
    match &c.user {
        Some(u) => parse_user(u),
        None => bail!("who are you? pass --user NAME or set TELEPOUND_USER"),
    }
}

/// The local state folder.
pub fn home(c: &ClientArgs) -> anyhow::Result<PathBuf> {
    if let Some(h) = &c.home {
        return Ok(h.clone());
    }
    directories::ProjectDirs::from("", "", "telepound")
        .map(|d| d.data_dir().to_path_buf())
        .context("cannot find a home folder for local state; set TELEPOUND_HOME")
}

/// Where downloads go by default: `TELEPOUND_DOWNLOAD_DIR`, else the user's
/// download folder (XDG) in a `telepound` folder, else
/// `TELEPOUND_HOME/USER/downloads`.
pub fn download_folder(c: &ClientArgs, user: &UserName) -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os("TELEPOUND_DOWNLOAD_DIR") {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) =
        directories::UserDirs::new().and_then(|u| u.download_dir().map(|d| d.join("telepound")))
    {
        return Ok(d);
    }
    Ok(home(c)?.join(user.as_str()).join("downloads"))
}

/// The Argon2 parameters for a new account.
pub fn ksf(c: &ClientArgs) -> anyhow::Result<KsfParams> {
    match &c.argon2 {
        None => Ok(KsfParams::DEFAULT),
        Some(s) => s
            .parse()
            .map_err(|e| anyhow::anyhow!("invalid --argon2 / TELEPOUND_ARGON2 value: {e}")),
    }
}

async fn signup(c: &ClientArgs) -> anyhow::Result<()> {
    let user = acting_user(c)?;
    let ksf = ksf(c)?;
    let password = crate::password::obtain(c.password_file.as_deref(), true)?;
    let (client, _events) = connect(c).await?;
    signup_with(&client, &user, password.as_bytes(), ksf).await?;
    client.close().await;
    println!("Signed up as {user}. Log in from any machine with your password.");
    Ok(())
}

/// Signs up on an open connection, with the user-facing wording.
pub async fn signup_with(
    client: &Client,
    user: &UserName,
    password: &[u8],
    ksf: KsfParams,
) -> anyhow::Result<()> {
    account::signup(client, user, password, ksf)
        .await
        .map_err(|e| match e.code() {
            Some(telepound_protocol::ErrorCode::UserTaken) => {
                anyhow::Error::new(e).context(format!("cannot sign up as {user}"))
            }
            _ => anyhow::Error::new(e).context("sign-up failed"),
        })
}

/// Connects and logs in as the acting user.
pub async fn login(c: &ClientArgs) -> anyhow::Result<(Session, Events)> {
    let (session, events, _password) = login_keeping_password(c).await?;
    Ok((session, events))
}

/// [`login`], keeping the password (in memory, wiped on drop) for logging in
/// again should the session token be refused after a reconnect.
pub async fn login_keeping_password(
    c: &ClientArgs,
) -> anyhow::Result<(Session, Events, zeroize::Zeroizing<String>)> {
    let user = acting_user(c)?;
    let home = home(c)?;
    let password = crate::password::obtain(c.password_file.as_deref(), false)?;
    let (client, events) = connect(c).await?;
    let session = login_with(&client, &user, password.as_bytes(), &home).await?;
    Ok((session, events, password))
}

/// Logs in on an open connection, with the user-facing wording.
pub async fn login_with(
    client: &Client,
    user: &UserName,
    password: &[u8],
    home: &std::path::Path,
) -> anyhow::Result<Session> {
    account::login(client, user, password, home)
        .await
        .map_err(|e| anyhow::Error::new(e).context(format!("cannot log in as {user}")))
}
