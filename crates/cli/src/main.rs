//! `telepound`: the server (`telepound serve`) and the client subcommands in
//! one binary. This file is glue: argument parsing, logging setup, the
//! runtime, and turning errors into one readable line and an exit code.

mod args;
mod cmd;
mod output;
mod password;
mod preview;
mod progress;

use clap::Parser;

#[cfg(test)]
mod tests {
    #[test]
    fn clap_errors_become_one_line() {
        use clap::Parser;
        let e = crate::args::Cli::try_parse_from(["telepound", "--user", "a", "send"]).unwrap_err();
        let line = super::usage_line(&e.to_string());
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.contains("<TO TEXT>") && line.contains("usage: telepound send"),
            "{line}"
        );
        let e = crate::args::Cli::try_parse_from(["telepound", "frob"]).unwrap_err();
        let line = super::usage_line(&e.to_string());
        assert!(line.starts_with("unrecognized subcommand 'frob'"), "{line}");
    }
}

/// Exit codes: 1 for most failures, 2 for bad usage (clap's own), 3 when the
/// server cannot be reached, 4 for refused credentials or unknown users.
mod exit {
    pub const ERROR: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const UNREACHABLE: i32 = 3;
    pub const REFUSED: i32 = 4;
}

fn main() {
    let args = parse_args();
    // The local time zone must be read while the process has one thread
    // (the `time` crate refuses later, for soundness).
    output::init_local_offset();
    // The server runs one worker per CPU it may use (its affinity mask and
    // cgroup quota, as `available_parallelism` reads them): more workers
    // than CPUs only wake each other to steal work and switch between
    // themselves. A client needs no more than two.
    let workers = match args.command {
        args::Command::Serve(_) => std::thread::available_parallelism().map_or(1, |n| n.get()),
        _ => 2,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("telepound: error: cannot start the async runtime: {e}");
            std::process::exit(exit::ERROR);
        }
    };
    let result = runtime.block_on(cmd::run(args));
    // Don't wait for the stdin reader thread or other blocking tasks.
    runtime.shutdown_background();
    if let Err(e) = result {
        // One line whatever the causes hold: a server's sentence or a
        // sender's file name must not add lines or escape sequences.
        eprintln!("telepound: error: {}", output::one_line(&format!("{e:#}")));
        std::process::exit(exit_code(&e));
    }
}

/// The arguments, or exit: help and version as clap prints them, a usage
/// error as one line and exit code 2.
fn parse_args() -> args::Cli {
    match args::Cli::try_parse() {
        Ok(a) => a,
        Err(e) => {
            use clap::error::ErrorKind as K;
            // Asked for, or `telepound` alone: the help is what is wanted.
            if matches!(
                e.kind(),
                K::DisplayHelp | K::DisplayVersion | K::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            eprintln!("telepound: error: {}", usage_line(&e.to_string()));
            std::process::exit(exit::USAGE);
        }
    }
}

/// clap's error, rendered over several lines (message, tips, usage, a
/// pointer to --help), as one: the message and tips, then the usage.
fn usage_line(rendered: &str) -> String {
    let mut parts = Vec::new();
    let mut usage = None;
    for line in rendered.lines().map(str::trim) {
        if line.is_empty() || line.starts_with("For more information") {
            continue;
        }
        match line.strip_prefix("Usage:") {
            Some(u) => usage = Some(u.trim()),
            None => parts.push(line.strip_prefix("error:").unwrap_or(line).trim()),
        }
    }
    let mut s = parts.join(" ");
    if let Some(u) = usage {
        s.push_str(&format!(" (usage: {u})"));
    }
    output::one_line(&s)
}

fn exit_code(e: &anyhow::Error) -> i32 {
    use telepound_client::Error as E;
    use telepound_protocol::ErrorCode as C;
    for cause in e.chain() {
        if cause.is::<cmd::Usage>() {
            return exit::USAGE;
        }
        if let Some(err) = cause.downcast_ref::<E>() {
            return match err {
                E::Connect { .. } | E::Disconnected(_) | E::Timeout => exit::UNREACHABLE,
                E::UnknownUser(_) => exit::REFUSED,
                E::Server {
                    code: C::AuthFailed | C::UnknownUser | C::UserTaken,
                    ..
                } => exit::REFUSED,
                _ => exit::ERROR,
            };
        }
    }
    exit::ERROR
}
