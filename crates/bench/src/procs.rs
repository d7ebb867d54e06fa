//! The servers under test, as child processes: started on free ports with
//! their own data, pinned to a CPU, measured from /proc, killed on drop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Lets the calling thread's sleeps end within about a microsecond of
/// their time (Linux's default timer slack is 50 µs). Best effort: should
/// the call fail, sleeps are only less precise.
pub fn fine_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes a number of nanoseconds and only
    // changes the calling thread's timer slack.
    #[allow(unsafe_code)]
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1_000 as libc::c_ulong);
    }
}

/// Pins this process (and the threads it starts afterwards) to `cpu`.
pub fn pin_self(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it; the
    // call reads it and affects only this process.
    #[allow(unsafe_code)]
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!(
                "cannot pin the load generator to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// CPU time (user + system) a process has used, in microseconds.
pub fn cpu_micros(pid: u32) -> anyhow::Result<u64> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).context("reading /proc/PID/stat")?;
    // Fields after the command name (which may contain spaces) start after ')'.
    let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11).and_then(|s| s.parse().ok()).context("utime")?;
    let stime: u64 = f.get(12).and_then(|s| s.parse().ok()).context("stime")?;
    // SAFETY: sysconf has no preconditions.
    #[allow(unsafe_code)]
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok((utime + stime) * 1_000_000 / hz)
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .context("VmRSS")
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until `addr` accepts connections.
pub async fn wait_for_port(addr: SocketAddr, limit: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("nothing listens on {addr} after {limit:?}")
}

fn command(program: &Path, cpu: Option<usize>) -> Command {
    match cpu {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(c.to_string()).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// Where a Telepound server's log goes: the file named by
/// `TELEPOUND_BENCH_LOG` (appended to), else nowhere.
fn server_log() -> anyhow::Result<Stdio> {
    match std::env::var_os("TELEPOUND_BENCH_LOG") {
        Some(path) => Ok(std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.to_string_lossy()))?
            .into()),
        None => Ok(Stdio::null()),
    }
}

/// A server process; killed on drop.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its process id.
    pub pid: u32,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    /// Asks the server to stop (SIGTERM), so that a profiler wrapped
    /// around it gets to write its data, then kills it after 3 s.
    fn drop(&mut self) {
        // SAFETY: kill has no memory preconditions; the pid is our child's.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts `telepound serve` (release binary at `bin`) on a free port
    /// with a fresh data folder and `config` (TOML) on top.
    pub async fn telepound(bin: &Path, cpu: Option<usize>, config: &str) -> anyhow::Result<Server> {
        let dir = tempfile::tempdir()?;
        let cfg = dir.path().join("config.toml");
        std::fs::write(&cfg, config)?;
        let mut child = command(bin, cpu)
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&cfg)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(server_log()?)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut out = BufReader::new(child.stdout.take().context("stdout")?);
        let addr = loop {
            let mut line = String::new();
            if out.read_line(&mut line)? == 0 {
                bail!("telepound exited before announcing its address");
            }
            if let Some(u) = line.split_whitespace().find(|w| w.starts_with("ws://")) {
                break u.trim_start_matches("ws://").parse()?;
            }
        };
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        wait_for_port(addr, Duration::from_secs(10)).await?;
        let pid = child.id();
        Ok(Server {
            addr,
            pid: pid_of(&child, cpu)?.unwrap_or(pid),
            child,
            _dir: dir,
        })
    }

    /// Starts `nats-server` on a free port, with JetStream storing in a fresh
    /// folder. Its defaults are kept: JetStream acknowledges a publish
    /// before any fsync (it syncs every two minutes; Debian's 2.9 has no
    /// `sync_interval` option to change that).
    pub async fn nats(cpu: Option<usize>, jetstream: bool) -> anyhow::Result<Server> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let mut cfg = format!("listen: 127.0.0.1:{port}\nmax_payload: 1MB\n");
        if jetstream {
            cfg.push_str(&format!(
                "jetstream {{\n  store_dir: \"{}\"\n}}\n",
                dir.path().join("js").display()
            ));
        }
        let conf = dir.path().join("nats.conf");
        std::fs::write(&conf, cfg)?;
        let mut child = command(Path::new("/usr/sbin/nats-server"), cpu)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start nats-server")?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        if let Err(e) = wait_for_port(addr, Duration::from_secs(10)).await {
            let _ = child.kill();
            let mut err = String::new();
            if let Some(mut s) = child.stderr.take() {
                use std::io::Read;
                let _ = s.read_to_string(&mut err);
            }
            bail!("{e}: {}", err.lines().last().unwrap_or_default());
        }
        let pid = pid_of(&child, cpu)?.unwrap_or(child.id());
        Ok(Server {
            addr,
            pid,
            child,
            _dir: dir,
        })
    }
}

/// The real server's pid: under `taskset` the child execs the server, so
/// the pid is the same; kept as a function should that change.
fn pid_of(child: &Child, _cpu: Option<usize>) -> anyhow::Result<Option<u32>> {
    Ok(Some(child.id()))
}

/// Server CPU and memory between two points of a run.
#[derive(Debug, Clone, Copy)]
pub struct Meter {
    pid: u32,
    cpu0: u64,
    at: Instant,
}

impl Meter {
    /// Starts measuring `pid`.
    pub fn start(pid: u32) -> anyhow::Result<Meter> {
        Ok(Meter {
            pid,
            cpu0: cpu_micros(pid)?,
            at: Instant::now(),
        })
    }

    /// CPU microseconds and wall time since the start.
    pub fn stop(&self) -> anyhow::Result<(u64, Duration)> {
        Ok((
            cpu_micros(self.pid)?.saturating_sub(self.cpu0),
            self.at.elapsed(),
        ))
    }
}
