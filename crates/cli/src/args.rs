//! Command-line arguments (clap derive lives only here, in the binary).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Telepound: end-to-end encrypted chat. One binary for the server and the
/// client.
#[derive(Debug, Parser)]
#[command(name = "telepound", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every client subcommand shares.
#[derive(Debug, Args, Clone)]
pub struct ClientArgs {
    /// Who you are.
    #[arg(long, short = 'u', global = true, env = "TELEPOUND_USER")]
    pub user: Option<String>,
    /// The server to talk to.
    #[arg(
        long,
        global = true,
        env = "TELEPOUND_SERVER",
        default_value = "ws://127.0.0.1:7878"
    )]
    pub server: String,
    /// Read the password from the first line of this file (for scripts).
    /// Otherwise TELEPOUND_PASSWORD, otherwise a hidden prompt.
    #[arg(long, global = true, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Local state (pinned keys, history, downloads). Default: the XDG data
    /// folder, e.g. ~/.local/share/telepound.
    #[arg(long, global = true, env = "TELEPOUND_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// Extra certificate authorities (PEM) to trust for wss://, e.g. a
    /// server's self-signed certificate.
    #[arg(long, global = true, env = "TELEPOUND_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Allow unencrypted ws:// to a host other than this machine.
    #[arg(long, global = true, env = "TELEPOUND_ALLOW_INSECURE")]
    pub allow_insecure: bool,
    /// Argon2id cost for new accounts, as m=KIB,t=PASSES,p=LANES. The
    /// default (m=19456,t=2,p=1) suits real use; lower it only for tests.
    #[arg(
        long,
        global = true,
        env = "TELEPOUND_ARGON2",
        value_name = "PARAMS",
        hide_env_values = true
    )]
    pub argon2: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Apply the PostgreSQL schema migrations (run as the owner role).
    Migrate {
        /// postgres://OWNER@HOST/DB
        #[arg(long, env = "TELEPOUND_DATABASE", hide_env_values = true)]
        database: String,
        /// Also grant the application role exactly the rights the server
        /// needs (see docs/POSTGRES.md).
        #[arg(long, value_name = "ROLE")]
        grant_to: Option<String>,
    },
    /// Create an account: generates your keys and registers your password.
    Signup,
    /// Check your password and unlock your keys on this machine.
    Login,
    /// Send an end-to-end encrypted message, with files if you like:
    /// `send USER TEXT…` or `send --group NAME TEXT…`.
    Send {
        /// Send to this group instead of a user.
        #[arg(long, value_name = "NAME")]
        group: Option<String>,
        /// The recipient, then the message (words are joined with spaces).
        /// With --group, only the message.
        // A Vec positional is optional to clap unless told otherwise.
        #[arg(num_args = 1.., value_name = "TO TEXT", required_unless_present = "group")]
        words: Vec<String>,
        /// Attach a file (repeat for several); encrypted before it leaves.
        #[arg(long = "file", value_name = "PATH")]
        files: Vec<PathBuf>,
    },
    /// Print waiting messages, acknowledge them, and exit.
    Inbox {
        /// Stay connected and print messages as they arrive.
        #[arg(long, short = 'f')]
        follow: bool,
        /// One JSON object per line, for scripts and bots.
        #[arg(long)]
        json: bool,
        /// Download attached files (into the download folder).
        #[arg(long)]
        download: bool,
        /// Download attached files into DIR.
        #[arg(long, value_name = "DIR")]
        download_dir: Option<PathBuf>,
    },
    /// The original Telepound's prompt-driven chat on standard input.
    Classic,
    /// Group chats: create, add, remove, leave, list, info, promote.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Show whether users are online, or when they were last seen.
    Who {
        /// Users to look up.
        #[arg(required = true, num_args = 1..)]
        users: Vec<String>,
    },
    /// Show the safety number you and USER should compare.
    Verify {
        /// The other user.
        #[arg(value_name = "USER")]
        peer: String,
        /// Trust the key whose number is shown (asks for confirmation on a
        /// terminal).
        #[arg(long)]
        accept: bool,
        /// With --accept and no terminal: the number you compared; the key is
        /// accepted only if it gives exactly this number.
        #[arg(long, value_name = "DIGITS", requires = "accept")]
        expect: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:7878].
    #[arg(long, env = "TELEPOUND_LISTEN")]
    pub listen: Option<String>,
    /// Data folder for the SQLite database [default: ./telepound-data].
    #[arg(long, env = "TELEPOUND_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// postgres://USER@HOST/DB to use PostgreSQL instead of SQLite.
    #[arg(long, env = "TELEPOUND_DATABASE", hide_env_values = true)]
    pub database: Option<String>,
    /// TOML configuration file; flags and environment override it.
    #[arg(long, env = "TELEPOUND_CONFIG")]
    pub config: Option<PathBuf>,
    /// Don't run migrations; only check they were run (for a
    /// least-privilege database role).
    #[arg(long)]
    pub no_migrate: bool,
    /// TLS certificate chain (PEM); serve wss:// with --tls-key.
    #[arg(
        long,
        env = "TELEPOUND_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(
        long,
        env = "TELEPOUND_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Serve wss:// with a self-signed certificate kept in DATA_DIR/tls/
    /// (clients trust it with --ca-file DATA_DIR/tls/cert.pem).
    #[arg(long, conflicts_with = "tls_cert")]
    pub tls_self_signed: bool,
    /// Weakest Argon2id parameters accepted for new accounts, m=KIB,t=N,p=N
    /// [default: m=19456,t=2,p=1].
    #[arg(long, env = "TELEPOUND_MIN_ARGON2", value_name = "PARAMS")]
    pub min_argon2: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Create a group (you are its owner) with these members.
    Create {
        /// The group's name.
        name: String,
        /// Its first members (none: a group of one, to add to later).
        users: Vec<String>,
    },
    /// Add members (owners and admins).
    Add {
        /// The group.
        name: String,
        /// Who to add.
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Remove members (owners and admins).
    Remove {
        /// The group.
        name: String,
        /// Who to remove.
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Leave a group.
    Leave {
        /// The group.
        name: String,
    },
    /// The groups you are in.
    List,
    /// A group's members and their roles.
    Info {
        /// The group.
        name: String,
    },
    /// Make a member an admin (owners and admins).
    Promote {
        /// The group.
        name: String,
        /// Who. (Not named `user`: that is the global --user.)
        #[arg(value_name = "USER")]
        member: String,
    },
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn arguments_are_consistent() {
        super::Cli::command().debug_assert();
    }

    #[test]
    fn a_positional_never_shadows_the_global_user() {
        use clap::Parser;
        let cli = super::Cli::try_parse_from([
            "telepound",
            "--user",
            "alice",
            "group",
            "promote",
            "team",
            "bob",
        ])
        .unwrap();
        assert_eq!(cli.client.user.as_deref(), Some("alice"));
        let cli =
            super::Cli::try_parse_from(["telepound", "--user", "alice", "verify", "bob"]).unwrap();
        assert_eq!(cli.client.user.as_deref(), Some("alice"));
    }
}
