//! `telepound-bench`: drives a real Telepound server through its own
//! protocol, and NATS (core and JetStream) and Prosody through theirs, with
//! the same load-generator code in one run, and writes the figures as
//! JSON, Markdown and an SVG plot.
//!
//! ```text
//! cargo build --release -p telepound-cli -p telepound-bench
//! target/release/telepound-bench --pin --out bench-results
//! ```

mod links;
mod peers;
mod procs;
mod report;
mod scenarios;
mod xmpp;
mod xmpp_links;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::peers::Peer;

/// What the harness measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Online routing, closed loop.
    Routing,
    /// Durable accept with recipients offline.
    Durable,
    /// Open-loop latency at fixed offered rates.
    Latency,
    /// A queued backlog drained at login.
    Backlog,
    /// Idle authenticated connections: memory per connection.
    Idle,
    /// Password logins per second, and routing p99 during a login storm.
    Logins,
    /// The client's seal and open cost (no server).
    Crypto,
}

/// Benchmark Telepound against NATS and Prosody in one run.
#[derive(Debug, Parser)]
#[command(name = "telepound-bench", version)]
pub struct Args {
    /// Scenarios to run.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "routing,durable,latency,backlog,idle,logins,crypto"
    )]
    pub scenarios: Vec<Scenario>,
    /// Systems to measure.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "telepound,nats,jetstream,nats-env,jetstream-env,prosody"
    )]
    pub peers: Vec<Peer>,
    /// Pin each server to CPU 0 and the load generator to CPU 1.
    #[arg(long)]
    pub pin: bool,
    /// Runs per point (median, min and max are reported).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Warm-up before each measured interval, in seconds (discarded).
    #[arg(long, default_value_t = 1.0)]
    pub warm: f64,
    /// Measured interval, in seconds.
    #[arg(long, default_value_t = 3.0)]
    pub measure: f64,
    /// Sender→recipient pairs for routing and latency.
    #[arg(long, default_value_t = 8)]
    pub pairs: usize,
    /// Messages in flight per pair in online routing.
    #[arg(long, default_value_t = 32)]
    pub in_flight: usize,
    /// Messages in flight in all for durable accept.
    #[arg(long, value_delimiter = ',', default_value = "1,64,512")]
    pub durable_in_flight: Vec<usize>,
    /// Offline recipients for durable accept, one sender each, sharing the
    /// messages in flight evenly (1: one sender to one recipient). Each
    /// count is measured at every `--durable-in-flight` it divides.
    /// The target's spread row is read at 64 recipients.
    #[arg(long, value_delimiter = ',', default_values_t = [1, peers::SPREAD_RECIPIENTS])]
    pub durable_recipients: Vec<usize>,
    /// Offered rates for the latency scenario, messages per second (the
    /// scenario stops past the knee, but not before 10000, the target's).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000,5000,10000,25000,50000,100000"
    )]
    pub rates: Vec<u64>,
    /// Messages queued for the backlog scenario.
    #[arg(long, default_value_t = 100_000)]
    pub backlog: u64,
    /// Idle connections held.
    #[arg(long, default_value_t = 1000)]
    pub idle: usize,
    /// Logins per login measurement.
    #[arg(long, default_value_t = 200)]
    pub logins: usize,
    /// Folder for results.json, results.md and latency.svg.
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
    /// The `telepound` binary to benchmark (default: next to this one).
    #[arg(long)]
    pub telepound: Option<PathBuf>,
    /// A line added to the server's config file, such as
    /// `hibernate_after_ms = 0` (repeatable): for measuring what a setting
    /// does.
    #[arg(long = "server-setting", value_name = "LINE")]
    pub server_settings: Vec<String>,
}

impl Args {
    fn warm(&self) -> Duration {
        Duration::from_secs_f64(self.warm)
    }

    fn measure(&self) -> Duration {
        Duration::from_secs_f64(self.measure)
    }

    /// CPU for servers under `--pin`.
    fn server_cpu(&self) -> Option<usize> {
        self.pin.then_some(0)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("telepound-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    if args.repeat == 0
        || args.pairs == 0
        || args.durable_recipients.contains(&0)
        || args.durable_in_flight.contains(&0)
    {
        anyhow::bail!(
            "--repeat, --pairs, --durable-recipients and --durable-in-flight must be at least 1"
        );
    }
    if let Some(n) = args
        .durable_recipients
        .iter()
        .find(|&&n| !args.durable_in_flight.iter().any(|&k| k % n == 0))
    {
        anyhow::bail!("--durable-recipients {n} divides none of --durable-in-flight");
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if args.pin {
        if cores < 2 {
            anyhow::bail!("--pin needs two CPUs (this machine has {cores})");
        }
        procs::pin_self(1)?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(if args.pin { 1 } else { cores })
        .enable_all()
        .build()?;
    let results = rt.block_on(peers::run_all(&args))?;
    std::fs::create_dir_all(&args.out)?;
    report::write(&args, &results)?;
    println!("results in {}", args.out.display());
    Ok(())
}
