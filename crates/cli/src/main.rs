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

/// Exit codes: 1 for most failures, 2 for bad usage (clap's own), 3 when the
/// server cannot be reached, 4 for refused credentials or unknown users.
mod exit {
    pub const ERROR: i32 = 1;
    pub const UNREACHABLE: i32 = 3;
    pub const REFUSED: i32 = 4;
}

fn main() {
    let args = args::Cli::parse();
    // The local time zone must be read while the process has one thread
    // (the `time` crate refuses later, for soundness).
    output::init_local_offset();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
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
        eprintln!("telepound: error: {e:#}");
        std::process::exit(exit_code(&e));
    }
}

fn exit_code(e: &anyhow::Error) -> i32 {
    use telepound_client::Error as E;
    use telepound_protocol::ErrorCode as C;
    for cause in e.chain() {
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
