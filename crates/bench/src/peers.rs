//! Each scenario against each system: start the server, prepare accounts,
//! build links of the kind [`crate::scenarios`] drives, repeat, summarise.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::ValueEnum;
use tokio::sync::Semaphore;

use crate::links::{self, Durable, Rx, TpAccount, TpRx, TpTx, Tx};
use crate::procs::{Meter, Server, rss_kib};
use crate::report::{Curve, Results, Row};
use crate::scenarios;
use crate::{Args, Scenario};

/// A system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Peer {
    /// This project's server, on its embedded SQLite store.
    Telepound,
    /// NATS core (no storage): the routing reference.
    Nats,
    /// NATS JetStream on file storage: the durable-queue reference.
    Jetstream,
    /// NATS core carrying payloads as large as Telepound's envelopes.
    #[value(name = "nats-env")]
    NatsEnv,
    /// JetStream carrying payloads as large as Telepound's envelopes.
    #[value(name = "jetstream-env")]
    JetstreamEnv,
    /// Prosody, XMPP: the self-hosted chat-server reference.
    Prosody,
}

impl Peer {
    /// Its name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Peer::Telepound => "telepound",
            Peer::Nats => "nats",
            Peer::Jetstream => "jetstream",
            Peer::NatsEnv => "nats-env",
            Peer::JetstreamEnv => "jetstream-env",
            Peer::Prosody => "prosody",
        }
    }

    /// Whether the peer takes part in `s` (NATS core stores nothing and
    /// has no passwords; JetStream is measured where storage matters).
    fn takes_part(self, s: Scenario) -> bool {
        use Scenario::*;
        match self {
            Peer::Telepound | Peer::Prosody => s != Crypto,
            Peer::Nats => matches!(s, Routing | Latency | Idle),
            Peer::Jetstream => matches!(s, Durable | Backlog),
            Peer::NatsEnv => matches!(s, Routing | Latency),
            Peer::JetstreamEnv => matches!(s, Durable | Backlog),
        }
    }
}

/// Server settings for the benchmark: limits meant for abuse are lifted
/// (one machine makes all the load), and benchmark accounts may use a
/// cheap Argon2 (logins at the default cost are measured separately).
const TELEPOUND_CONFIG: &str = r#"
min_argon2 = "m=64,t=1,p=1"
max_connections = 200000
max_connections_per_address = 200000
messages_per_second = 100000000
message_burst = 100000000
login_attempts_per_user = 100000000
login_attempts_per_address = 100000000
signups_per_address = 100000000
max_in_flight = 1024
outbox = 4096
outbox_bytes = 67108864
"#;

/// A running system.
enum Running {
    Tp(Server),
    /// With the payload size its links carry.
    Nats(Server, usize),
    Prosody(crate::xmpp::Prosody),
}

impl Running {
    async fn start(peer: Peer, args: &Args) -> anyhow::Result<Running> {
        let cpu = args.server_cpu();
        Ok(match peer {
            Peer::Telepound => {
                let config = std::iter::once(TELEPOUND_CONFIG)
                    .chain(args.server_settings.iter().map(String::as_str))
                    .collect::<Vec<_>>()
                    .join("\n");
                Running::Tp(Server::telepound(&telepound_bin(args)?, cpu, &config).await?)
            }
            Peer::Nats => Running::Nats(Server::nats(cpu, false).await?, links::BODY),
            Peer::Jetstream => Running::Nats(Server::nats(cpu, true).await?, links::BODY),
            Peer::NatsEnv => Running::Nats(Server::nats(cpu, false).await?, links::envelope_len()),
            Peer::JetstreamEnv => {
                Running::Nats(Server::nats(cpu, true).await?, links::envelope_len())
            }
            Peer::Prosody => Running::Prosody(crate::xmpp::Prosody::start(cpu).await?),
        })
    }

    fn pid(&self) -> u32 {
        match self {
            Running::Tp(s) | Running::Nats(s, _) => s.pid,
            Running::Prosody(p) => p.pid,
        }
    }

    fn addr(&self) -> std::net::SocketAddr {
        match self {
            Running::Tp(s) | Running::Nats(s, _) => s.addr,
            Running::Prosody(p) => p.addr,
        }
    }

    fn url(&self) -> String {
        format!("ws://{}", self.addr())
    }
}

fn telepound_bin(args: &Args) -> anyhow::Result<std::path::PathBuf> {
    let bin = match &args.telepound {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("telepound"),
    };
    if !bin.is_file() {
        bail!(
            "no telepound binary at {} (build it with `cargo build --release -p telepound-cli`, or pass --telepound)",
            bin.display()
        );
    }
    Ok(bin)
}

/// Runs every chosen scenario against every chosen peer. A peer that fails
/// a scenario is noted and the run goes on.
pub async fn run_all(args: &Args) -> anyhow::Result<Results> {
    let mut results = Results::new(args);
    for &scenario in &args.scenarios {
        if scenario == Scenario::Crypto {
            eprintln!("== crypto: client seal/open");
            crypto(args, &mut results)?;
            continue;
        }
        for &peer in &args.peers {
            if !peer.takes_part(scenario) {
                continue;
            }
            eprintln!("== {scenario:?}: {}", peer.name());
            let outcome = match scenario {
                Scenario::Routing => routing(args, peer, &mut results).await,
                Scenario::Durable => durable(args, peer, &mut results).await,
                Scenario::Latency => latency(args, peer, &mut results).await,
                Scenario::Backlog => backlog(args, peer, &mut results).await,
                Scenario::Idle => idle(args, peer, &mut results).await,
                Scenario::Logins => logins(args, peer, &mut results).await,
                Scenario::Crypto => unreachable!("handled above"),
            };
            if let Err(e) = outcome {
                eprintln!("   failed: {e:#}");
                results
                    .notes
                    .push(format!("{scenario:?} on {} failed: {e:#}", peer.name()));
            }
        }
    }
    Ok(results)
}

// ------------------------------------------------------------- accounts

/// Creates Telepound accounts `prefix0..prefixN`, `parallel` at a time.
async fn tp_accounts(url: &str, prefix: &str, n: usize) -> anyhow::Result<Vec<TpAccount>> {
    let sem = Arc::new(Semaphore::new(16));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (url, name, sem) = (url.to_owned(), format!("{prefix}{i}"), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire_owned().await?;
            links::tp_account(&url, &name).await
        }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await??);
    }
    Ok(out)
}

/// Sender→recipient pairs, however each system names its ends.
enum Ends {
    Tp(Vec<(TpAccount, TpAccount, Arc<str>)>),
    /// With the payload size.
    Nats(usize),
    Xmpp(Vec<(String, String)>),
}

impl Ends {
    async fn new(run: &Running, n: usize, tag: &str) -> anyhow::Result<Ends> {
        Ok(match run {
            Running::Tp(_) => {
                let s = tp_accounts(&run.url(), &format!("{tag}s"), n).await?;
                let r = tp_accounts(&run.url(), &format!("{tag}r"), n).await?;
                Ends::Tp(
                    s.into_iter()
                        .zip(r)
                        .map(|(s, r)| {
                            let env = links::sealed_envelope(&s.user, &r.user).into();
                            (s, r, env)
                        })
                        .collect(),
                )
            }
            Running::Nats(_, body) => Ends::Nats(*body),
            Running::Prosody(p) => {
                let mut v = Vec::with_capacity(n);
                for i in 0..n {
                    let (s, r) = (format!("{tag}s{i}"), format!("{tag}r{i}"));
                    crate::xmpp_links::register(p, &s).await?;
                    crate::xmpp_links::register(p, &r).await?;
                    v.push((s, r));
                }
                Ends::Xmpp(v)
            }
        })
    }

    /// Fresh connections for `n` live pairs (recipients connected first).
    async fn live(
        &self,
        run: &Running,
        n: usize,
        round: usize,
    ) -> anyhow::Result<Vec<(Box<dyn Tx>, Box<dyn Rx>)>> {
        let addr = run.addr();
        let mut v: Vec<(Box<dyn Tx>, Box<dyn Rx>)> = Vec::with_capacity(n);
        for i in 0..n {
            match (self, run) {
                (Ends::Tp(p), _) => {
                    let (s, r, env) = &p[i];
                    let epoch = links::next_epoch();
                    let rx = TpRx::open(addr, r, epoch).await?;
                    let (tx, _acks) = TpTx::open(addr, s, &r.user, env.clone(), epoch).await?;
                    v.push((Box::new(tx), Box::new(rx)));
                }
                (Ends::Nats(body), _) => {
                    let subject = format!("bench.live.{round}.{i}");
                    let rx = links::nats_rx(addr, &subject).await?;
                    v.push((
                        Box::new(links::nats_tx(addr, &subject, *body).await?),
                        Box::new(rx),
                    ));
                }
                (Ends::Xmpp(p), Running::Prosody(pr)) => {
                    let (s, r) = &p[i];
                    let rx = crate::xmpp_links::receiver(pr, r).await?;
                    let tx = crate::xmpp_links::sender(pr, s, r).await?;
                    v.push((Box::new(tx), Box::new(rx)));
                }
                (Ends::Xmpp(_), _) => bail!("XMPP ends on a non-XMPP server"),
            }
        }
        Ok(v)
    }

    /// A durable sender for pair `i` (its recipient stays offline).
    async fn durable(&self, run: &Running, i: usize, subject: &str) -> anyhow::Result<Durable> {
        let addr = run.addr();
        match (self, run) {
            (Ends::Tp(p), _) => {
                let (s, r, env) = &p[i];
                let (tx, acks) =
                    TpTx::open(addr, s, &r.user, env.clone(), links::next_epoch()).await?;
                Ok(Durable {
                    tx: Box::new(tx),
                    acks,
                })
            }
            (Ends::Nats(body), _) => links::js_tx(addr, subject, *body).await,
            (Ends::Xmpp(p), Running::Prosody(pr)) => {
                crate::xmpp_links::durable(pr, &p[i].0, &p[i].1).await
            }
            (Ends::Xmpp(_), _) => bail!("XMPP ends on a non-XMPP server"),
        }
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

// ------------------------------------------------------------ scenarios

async fn routing(args: &Args, peer: Peer, out: &mut Results) -> anyhow::Result<()> {
    let run = Running::start(peer, args).await?;
    let ends = Ends::new(&run, args.pairs, "rt").await?;
    let (mut rate, mut cpu) = (Vec::new(), Vec::new());
    for round in 0..args.repeat {
        let pairs = ends.live(&run, args.pairs, round).await?;
        let t = scenarios::routing(
            pairs,
            args.in_flight,
            args.warm(),
            args.measure(),
            run.pid(),
        )
        .await?;
        eprintln!(
            "   {:.0} msgs/s, {:.2} µs CPU/msg",
            t.msgs_per_s, t.cpu_us_per_msg
        );
        rate.push(t.msgs_per_s);
        cpu.push(t.cpu_us_per_msg);
    }
    let setting = format!("{} pairs, {} in flight each", args.pairs, args.in_flight);
    out.rows.push(Row::new(
        "routing",
        peer,
        &setting,
        "throughput",
        "msgs/s",
        rate,
    ));
    out.rows.push(Row::new(
        "routing",
        peer,
        &setting,
        "server CPU",
        "µs/msg",
        cpu,
    ));
    Ok(())
}

async fn durable(args: &Args, peer: Peer, out: &mut Results) -> anyhow::Result<()> {
    let run = Running::start(peer, args).await?;
    let most = args.durable_recipients.iter().copied().max().unwrap_or(1);
    let ends = Ends::new(&run, most, "du").await?;
    for &n in &args.durable_recipients {
        // K in flight in all, shared evenly by the n senders.
        for &k in &args.durable_in_flight {
            if k % n != 0 {
                eprintln!(
                    "   {}: skipped, not a multiple of {n}",
                    durable_setting(k, n)
                );
                continue;
            }
            let setting = durable_setting(k, n);
            let (mut rate, mut cpu) = (Vec::new(), Vec::new());
            for round in 0..args.repeat {
                let mut senders = Vec::with_capacity(n);
                for i in 0..n {
                    let subject = format!("bench.durable.{n}.{k}.{round}.{i}");
                    senders.push(ends.durable(&run, i, &subject).await?);
                }
                let t = scenarios::durable(senders, k / n, args.warm(), args.measure(), run.pid())
                    .await?;
                eprintln!(
                    "   {setting}: {:.0} msgs/s, {:.2} µs CPU/msg",
                    t.msgs_per_s, t.cpu_us_per_msg
                );
                rate.push(t.msgs_per_s);
                cpu.push(t.cpu_us_per_msg);
            }
            out.rows.push(Row::new(
                "durable", peer, &setting, "accepted", "msgs/s", rate,
            ));
            out.rows.push(Row::new(
                "durable",
                peer,
                &setting,
                "server CPU",
                "µs/msg",
                cpu,
            ));
        }
    }
    Ok(())
}

/// The recipient count of the spread durable target (one of
/// `--durable-recipients`' defaults).
pub(crate) const SPREAD_RECIPIENTS: usize = 64;

/// The setting of a durable accept row: `k` in flight in all, to `n`
/// offline recipients.
pub(crate) fn durable_setting(k: usize, n: usize) -> String {
    if n == 1 {
        format!("{k} in flight")
    } else {
        format!("{k} in flight, {n} recipients")
    }
}

/// p99 above which an offered rate is past the knee.
const KNEE_P99_US: u64 = 5_000;

/// The offered rate the p99 target is stated at (msgs/s): always measured
/// when listed.
const TARGET_RATE: u64 = 10_000;

async fn latency(args: &Args, peer: Peer, out: &mut Results) -> anyhow::Result<()> {
    let run = Running::start(peer, args).await?;
    let ends = Ends::new(&run, args.pairs, "la").await?;
    let mut round = 0;
    // Whether a rate so far had its p99 at or above the knee's bound.
    let mut missed = false;
    for &rate in &args.rates {
        let mut runs = Vec::new();
        for _ in 0..args.repeat {
            let pairs = ends.live(&run, args.pairs, round).await?;
            round += 1;
            match scenarios::latency(pairs, rate, args.warm(), args.measure()).await {
                Ok(l) => {
                    eprintln!(
                        "   {rate}/s: p50 {} p99 {} p99.9 {} max {} µs (received {:.0}/s)",
                        l.p50, l.p99, l.p999, l.max, l.achieved
                    );
                    runs.push(l);
                }
                Err(e) => {
                    out.notes.push(format!(
                        "latency on {} at {rate} msgs/s: {e:#}",
                        peer.name()
                    ));
                    eprintln!("   {rate}/s failed: {e:#}");
                    if let Running::Tp(_) = run {
                        eprintln!("   the server's counters then:");
                        for line in tp_counters(run.addr()).await {
                            eprintln!("     {line}");
                        }
                    }
                    break;
                }
            }
        }
        if runs.len() < args.repeat {
            break;
        }
        let c = Curve::median(peer, rate, &runs);
        // Past the knee (a rate missed, this one or a lower one) the rates
        // above say nothing more, except the one a target is stated at: a
        // noisy spell at a lower rate must not leave it unmeasured.
        missed |= c.p99 >= KNEE_P99_US;
        out.curves.push(c);
        if missed && rate >= TARGET_RATE {
            break;
        }
    }
    Ok(())
}

/// The message and connection counters of a Telepound server's
/// `/metrics`, for a failure report.
async fn tp_counters(addr: std::net::SocketAddr) -> Vec<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let get = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n")
            .await?;
        let mut text = String::new();
        s.read_to_string(&mut text).await?;
        anyhow::Ok(text)
    };
    match tokio::time::timeout(Duration::from_secs(5), get).await {
        Ok(Ok(text)) => text
            .lines()
            .filter(|l| {
                !l.starts_with('#')
                    && [
                        "messages",
                        "ack_window",
                        "disconnects",
                        "mailbox",
                        "sessions",
                        "limited",
                    ]
                    .iter()
                    .any(|k| l.contains(k))
            })
            .map(str::to_owned)
            .collect(),
        Ok(Err(e)) => vec![format!("cannot read /metrics: {e:#}")],
        Err(_) => vec!["cannot read /metrics: timed out".into()],
    }
}

async fn backlog(args: &Args, peer: Peer, out: &mut Results) -> anyhow::Result<()> {
    let (mut fill_rate, mut drain) = (Vec::new(), Vec::new());
    for round in 0..args.repeat {
        // A fresh server each round: the backlog is the only thing queued.
        let run = Running::start(peer, args).await?;
        let ends = Ends::new(&run, 1, "bl").await?;
        let subject = format!("bench.backlog.{round}");
        let d = ends.durable(&run, 0, &subject).await?;
        let filled = scenarios::fill(d, args.backlog, 512).await?;
        let took = match (&ends, &run) {
            (Ends::Tp(p), _) => links::tp_drain(run.addr(), &p[0].1, args.backlog).await?,
            (Ends::Nats(_), _) => {
                let (got, took) = links::js_drain(run.addr(), &subject, args.backlog).await?;
                if got != args.backlog {
                    bail!("JetStream delivered {got} of {}", args.backlog);
                }
                took
            }
            (Ends::Xmpp(p), Running::Prosody(pr)) => {
                crate::xmpp_links::drain(pr, &p[0].1, args.backlog).await?
            }
            (Ends::Xmpp(_), _) => bail!("XMPP ends on a non-XMPP server"),
        };
        eprintln!(
            "   filled {} in {:.2} s; drained in {:.2} s",
            args.backlog,
            secs(filled),
            secs(took)
        );
        fill_rate.push(args.backlog as f64 / secs(filled));
        drain.push(secs(took));
    }
    let setting = format!("{} messages", args.backlog);
    out.rows.push(Row::new(
        "backlog",
        peer,
        &setting,
        "login to last acknowledged",
        "s",
        drain,
    ));
    out.rows.push(Row::new(
        "backlog",
        peer,
        &setting,
        "filling (512 in flight)",
        "msgs/s",
        fill_rate,
    ));
    Ok(())
}

/// Connections that are kept open while this lives.
enum Held {
    Tp(Vec<links::Ws>),
    Tcp(Vec<tokio::net::TcpStream>),
    Xmpp(Vec<crate::xmpp_links::Idle>),
}

impl Held {
    fn len(&self) -> usize {
        match self {
            Held::Tp(v) => v.len(),
            Held::Tcp(v) => v.len(),
            Held::Xmpp(v) => v.len(),
        }
    }
}

/// How long the idle connections are held before the memory is read.
const IDLE_FOR: Duration = Duration::from_secs(5);

async fn idle(args: &Args, peer: Peer, out: &mut Results) -> anyhow::Result<()> {
    let n = args.idle;
    let mut per_conn = Vec::new();
    for _ in 0..args.repeat {
        let run = Running::start(peer, args).await?;
        let accounts = match &run {
            Running::Tp(_) => Some(tp_accounts(&run.url(), "id", n).await?),
            Running::Prosody(p) => {
                for i in 0..n {
                    crate::xmpp_links::register(p, &format!("id{i}")).await?;
                }
                None
            }
            Running::Nats(..) => None,
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = rss_kib(run.pid())?;
        let held = match &run {
            Running::Tp(_) => {
                let mut v = Vec::with_capacity(n);
                for a in accounts.iter().flatten() {
                    v.push(links::tp_connect(run.addr(), a).await?);
                }
                Held::Tp(v)
            }
            Running::Nats(..) => Held::Tcp(links::nats_idle(run.addr(), n).await?),
            Running::Prosody(p) => {
                let mut v = Vec::with_capacity(n);
                for i in 0..n {
                    v.push(crate::xmpp_links::idle(p, &format!("id{i}")).await?);
                }
                Held::Xmpp(v)
            }
        };
        // Read 1 s after the last connection, and again later: the figure
        // is the second, after a quiet time longer than any server's own
        // idle handling (Telepound hibernates a connection with nothing to
        // do for `hibernate_after_ms`, 10 ms by default).
        tokio::time::sleep(Duration::from_secs(1)).await;
        let fresh = rss_kib(run.pid())?;
        tokio::time::sleep(IDLE_FOR - Duration::from_secs(1)).await;
        let after = rss_kib(run.pid())?;
        let each = after.saturating_sub(before) as f64 / n as f64;
        eprintln!(
            "   {} idle connections: RSS {before} → {fresh} KiB 1 s after connecting, {after} KiB after {} s: {each:.2} KiB each",
            held.len(),
            IDLE_FOR.as_secs()
        );
        per_conn.push(each);
        drop(held);
    }
    out.rows.push(Row::new(
        "idle",
        peer,
        &format!(
            "{n} authenticated connections, idle {} s",
            IDLE_FOR.as_secs()
        ),
        "server memory",
        "KiB/conn",
        per_conn,
    ));
    Ok(())
}

/// Where and as whom the login scenarios log in.
#[derive(Clone)]
struct LoginTarget {
    users: Arc<Vec<String>>,
    xmpp: Option<crate::xmpp_links::Target>,
    url: String,
}

impl LoginTarget {
    async fn run(&self, total: usize, parallel: usize) -> anyhow::Result<Duration> {
        match &self.xmpp {
            Some(t) => crate::xmpp_links::login_loop(t, &self.users, total, parallel).await,
            None => tp_login_loop(&self.url, &self.users, total, parallel).await,
        }
    }
}

/// Logs in `total` times over `accounts`, `parallel` at a time; returns
/// the wall time.
async fn tp_login_loop(
    url: &str,
    users: &[String],
    total: usize,
    parallel: usize,
) -> anyhow::Result<Duration> {
    // Each login makes a fresh client home, as on a new machine: scratch
    // of the load generator's, so kept in /dev/shm where that is writable,
    // lest its file system's journal count against the login target (the
    // hash-only bound makes no files).
    let root = Arc::new(scratch_dir()?);
    let start = Instant::now();
    let sem = Arc::new(Semaphore::new(parallel));
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let (url, name, sem) = (url.to_owned(), users[i % users.len()].clone(), sem.clone());
        let root = root.clone();
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire_owned().await?;
            let user = telepound_protocol::UserName::new(&name)?;
            let (c, _e) = telepound_client::Client::connect(&url).await?;
            let home = tempfile::tempdir_in(root.path())?;
            telepound_client::account::login(&c, &user, links::PASSWORD, home.path()).await?;
            c.close().await;
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(start.elapsed())
}

/// A scratch folder for the load generator's client homes: in `/dev/shm`
/// where it is a writable folder, else in the usual temporary folder.
fn scratch_dir() -> std::io::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("telepound-bench-")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
}

async fn logins(args: &Args, peer: Peer, out: &mut Results) -> anyhow::Result<()> {
    let run = Running::start(peer, args).await?;
    let parallel = 16;
    // Accounts for the login loops.
    let users: Vec<String> = (0..parallel).map(|i| format!("lg{i}")).collect();
    match &run {
        Running::Tp(_) => {
            tp_accounts(&run.url(), "lg", parallel).await?;
        }
        Running::Prosody(p) => {
            for u in &users {
                crate::xmpp_links::register(p, u).await?;
            }
        }
        Running::Nats(..) => bail!("NATS has no password logins here"),
    }
    let target = LoginTarget {
        users: Arc::new(users),
        xmpp: match &run {
            Running::Prosody(p) => Some(crate::xmpp_links::Target::of(p)),
            _ => None,
        },
        url: run.url(),
    };
    let (mut rate, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..args.repeat {
        let meter = Meter::start(run.pid())?;
        let took = target.run(args.logins, parallel).await?;
        let (c, _) = meter.stop()?;
        let r = args.logins as f64 / secs(took);
        eprintln!(
            "   {r:.0} logins/s, {} µs server CPU each",
            c / args.logins as u64
        );
        rate.push(r);
        cpu.push(c as f64 / args.logins as f64);
    }
    let cheap = if peer == Peer::Telepound {
        "Argon2 m=64 t=1 (the hash's cost taken out)"
    } else {
        "SCRAM-SHA-1, stored keys"
    };
    out.rows
        .push(Row::new("logins", peer, cheap, "logins", "logins/s", rate));
    out.rows.push(Row::new(
        "logins",
        peer,
        cheap,
        "server CPU",
        "µs/login",
        cpu,
    ));

    if peer == Peer::Telepound {
        default_cost_logins(args, &run, out).await?;
    }

    // Routing latency with and without a login storm, same pairs, same rate.
    let storm_rate = 2_000;
    let ends = Ends::new(&run, 4, "ls").await?;
    let (mut quiet, mut stormy) = (Vec::new(), Vec::new());
    for round in 0..args.repeat {
        let pairs = ends.live(&run, 4, round * 2).await?;
        let l = scenarios::latency(pairs, storm_rate, args.warm(), args.measure()).await?;
        quiet.push(l.p99 as f64);
        let pairs = ends.live(&run, 4, round * 2 + 1).await?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let storm = {
            let (stop, target) = (stop.clone(), target.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    target.run(32, 8).await?;
                    n += 32;
                }
                anyhow::Ok(n)
            })
        };
        let started = Instant::now();
        let l = scenarios::latency(pairs, storm_rate, args.warm(), args.measure()).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let n = storm.await??;
        let l = l?;
        eprintln!(
            "   p99 at {storm_rate}/s: {} µs quiet, {} µs during {:.0} logins/s",
            quiet.last().copied().unwrap_or_default(),
            l.p99,
            n as f64 / secs(started.elapsed())
        );
        stormy.push(l.p99 as f64);
    }
    let setting = format!("{storm_rate} msgs/s over 4 pairs");
    out.rows.push(Row::new(
        "logins",
        peer,
        &setting,
        "routing p99, quiet",
        "µs",
        quiet,
    ));
    out.rows.push(Row::new(
        "logins",
        peer,
        &setting,
        "routing p99, login storm",
        "µs",
        stormy,
    ));
    Ok(())
}

/// Logins at the default Argon2 cost, against the cost of the hash alone
/// on the load generator's cores: logins are "limited only by Argon2" when
/// the two agree.
async fn default_cost_logins(args: &Args, run: &Running, out: &mut Results) -> anyhow::Result<()> {
    use telepound_protocol::auth::KsfParams;
    let users: Vec<String> = (0..4).map(|i| format!("dk{i}")).collect();
    for u in &users {
        let user = telepound_protocol::UserName::new(u)?;
        let (c, _e) = telepound_client::Client::connect(&run.url()).await?;
        telepound_client::account::signup(&c, &user, links::PASSWORD, KsfParams::DEFAULT).await?;
        c.close().await;
    }
    let cores = if args.pin {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    };
    // Twice as many logins in flight as there are cores, so that one's
    // round trips to the server overlap another's hashing, but no more
    // hashes at once than cores (see `hashing_login_loop`): two hashes
    // sharing a core share its caches too (each takes 19 MiB), and each
    // runs 5-10% slower. The bound is measured the same way, a hash per core.
    let in_flight = 2 * cores;
    // As many as at the cheap cost: a few seconds a run, so that the share
    // of the bound is not one second's noise (it spread 78-120% at 50).
    let total = args.logins.max(8);
    let (mut rate, mut share, mut server_cpu) = (Vec::new(), Vec::new(), Vec::new());
    let (mut generator_busy, mut server_busy) = (Vec::new(), Vec::new());
    let mut hashes = Vec::new();
    for _ in 0..args.repeat {
        // Measured right before and right after each loop, and averaged,
        // so that both see the machine alike even when its speed drifts
        // (on a shared machine the hash rate moved by a quarter between
        // runs a minute apart).
        let before = hash_time(cores).await?;
        let meter = Meter::start(run.pid())?;
        let own = Meter::start(std::process::id())?;
        let took = hashing_login_loop(&run.url(), &users, total, in_flight, cores).await?;
        let (c, _) = meter.stop()?;
        let (mine, _) = own.stop()?;
        let hash = (before + hash_time(cores).await?) / 2;
        hashes.push(hash);
        let bound = 1.0 / secs(hash);
        let r = total as f64 / secs(took);
        let mine_busy = 100.0 * mine as f64 / (secs(took) * 1e6 * cores as f64);
        eprintln!(
            "   default Argon2: {r:.1} logins/s; the hash alone allows {bound:.1}/s on {cores} core(s), one per core at a time; server CPU {} µs each; load generator {mine_busy:.0}% busy, {} µs each",
            c / total as u64,
            mine / total as u64
        );
        rate.push(r);
        share.push(100.0 * r / bound);
        server_cpu.push(c as f64 / total as f64);
        generator_busy.push(mine_busy);
        server_busy.push(100.0 * c as f64 / (secs(took) * 1e6));
    }
    hashes.sort();
    let hash = hashes[hashes.len() / 2];
    let setting = format!(
        "Argon2 m=19456 t=2 (default; the client's cores hash one per {:.1} ms, {in_flight} logins in flight)",
        hash.as_secs_f64() * 1e3
    );
    out.rows.push(Row::new(
        "logins",
        Peer::Telepound,
        &setting,
        "logins",
        "logins/s",
        rate,
    ));
    out.rows.push(Row::new(
        "logins",
        Peer::Telepound,
        &setting,
        "of the Argon2-only bound",
        "%",
        share,
    ));
    // Which side is the limit: the load generator's cores (which do the
    // hashing, and the rest of the client's work) or the server's core.
    out.rows.push(Row::new(
        "logins",
        Peer::Telepound,
        &setting,
        "load generator busy",
        "%",
        generator_busy,
    ));
    out.rows.push(Row::new(
        "logins",
        Peer::Telepound,
        &setting,
        "server busy",
        "% of a core",
        server_busy,
    ));
    // The server's share: OPAQUE puts the Argon2 work on the client, so
    // this is what bounds logins per server core.
    out.rows.push(Row::new(
        "logins",
        Peer::Telepound,
        &setting,
        "server CPU",
        "µs/login",
        server_cpu,
    ));
    Ok(())
}

/// Runs [`tp_login_loop`] on a runtime of its own, whose blocking pool (on
/// which the client stretches the password) has a thread per core, so that
/// at most `cores` hashes run at once while `in_flight` logins are under
/// way.
async fn hashing_login_loop(
    url: &str,
    users: &[String],
    total: usize,
    in_flight: usize,
    cores: usize,
) -> anyhow::Result<Duration> {
    let (url, users) = (url.to_owned(), users.to_vec());
    tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cores)
            .max_blocking_threads(cores)
            .enable_all()
            .build()?;
        rt.block_on(tp_login_loop(&url, &users, total, in_flight))
    })
    .await?
}

/// The load generator's time per default-cost hash, with `parallel`
/// hashing at once (32 each): its hash-only throughput, as a time per hash.
/// The hash is the one a login runs (the suite's, which wipes its memory).
async fn hash_time(parallel: usize) -> anyhow::Result<Duration> {
    use telepound_protocol::auth::KsfParams;
    const EACH: u32 = 32;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..parallel {
        tasks.push(tokio::task::spawn_blocking(|| {
            let argon = telepound_crypto::opaque::argon2(&KsfParams::DEFAULT)?;
            let mut out = [0u8; 64];
            for _ in 0..EACH {
                argon
                    .hash_into(b"benchmark password", b"a salt of sixteen", &mut out)
                    .map_err(|e| anyhow::anyhow!("argon2: {e}"))?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(start.elapsed() / (EACH * parallel as u32))
}

fn crypto(args: &Args, out: &mut Results) -> anyhow::Result<()> {
    use telepound_crypto::Identity;
    use telepound_crypto::envelope::{Envelope, canonical_recipients, seal};
    let (a, b) = (Identity::generate(), Identity::generate());
    let (an, bn) = (
        telepound_protocol::UserName::new("alice")?,
        telepound_protocol::UserName::new("bob")?,
    );
    let payload = telepound_crypto::Payload {
        msg_id: telepound_protocol::MsgId::new(),
        sender: an.clone(),
        recipients: canonical_recipients(vec![an.clone(), bn.clone()]),
        group: None,
        sent_at: 0,
        text: "x".repeat(links::BODY),
        attachments: vec![],
        group_epoch: None,
    };
    let keys = vec![(an.clone(), a.peer_keys()), (bn.clone(), b.peer_keys())];
    let n = 2_000u32;
    let (mut s, mut o) = (Vec::new(), Vec::new());
    let mut size = 0;
    for _ in 0..args.repeat {
        let start = Instant::now();
        let mut last = String::new();
        for _ in 0..n {
            last = seal(&a, &payload, &keys).context("seal")?;
        }
        s.push(start.elapsed().as_secs_f64() * 1e6 / f64::from(n));
        size = last.len();
        let env = Envelope::parse(&last).context("parse")?;
        let start = Instant::now();
        for _ in 0..n {
            let m = Envelope::parse(&last)
                .context("parse")?
                .open(&b, &bn, &a.peer_keys());
            m.context("open")?;
        }
        drop(env);
        o.push(start.elapsed().as_secs_f64() * 1e6 / f64::from(n));
    }
    let setting = format!(
        "{}-byte text, 2 recipients, {size}-byte envelope",
        links::BODY
    );
    out.rows.push(Row::new(
        "crypto",
        Peer::Telepound,
        &setting,
        "client seal",
        "µs",
        s,
    ));
    out.rows.push(Row::new(
        "crypto",
        Peer::Telepound,
        &setting,
        "client parse+open",
        "µs",
        o,
    ));
    Ok(())
}
