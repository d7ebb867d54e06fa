//! Running the binary.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_telepound");
pub const PASSWORD: &str = telepound_testkit::PASSWORD;

/// A `telepound serve` process; killed when dropped.
pub struct ServerProc {
    pub child: Child,
    pub url: String,
    pub stderr: PathBuf,
}

impl ServerProc {
    /// Starts a server on a free port with its data in `data_dir`.
    pub fn start(data_dir: &Path) -> ServerProc {
        Self::start_with(data_dir, &[])
    }

    /// Starts a server whose TOML configuration is `toml` (kept next to the
    /// data folder, and reused by restarts).
    pub fn start_with_config(data_dir: &Path, toml: &str) -> ServerProc {
        let config = data_dir.with_extension("toml");
        std::fs::write(&config, toml).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(data_dir)
            .env("TELEPOUND_MIN_ARGON2", telepound_testkit::FAST_KSF);
        Self::spawn(cmd, data_dir)
    }

    pub fn start_with(data_dir: &Path, extra_env: &[(&str, &str)]) -> ServerProc {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("TELEPOUND_MIN_ARGON2", telepound_testkit::FAST_KSF);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        Self::spawn(cmd, data_dir)
    }

    /// Starts `cmd` (a `telepound serve` on port 0) and reads its URL.
    pub fn spawn(mut cmd: Command, data_dir: &Path) -> ServerProc {
        let stderr = data_dir.with_extension(format!("{}.log", std::process::id()));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr)
            .unwrap();
        cmd.env_remove("TELEPOUND_DATABASE")
            .env_remove("TELEPOUND_CONFIG")
            .stdout(Stdio::piped())
            .stderr(log);
        let mut child = cmd.spawn().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let url = loop {
            let mut line = String::new();
            if out.read_line(&mut line).unwrap() == 0 {
                panic!("the server exited before announcing its URL");
            }
            if let Some(url) = line
                .split_whitespace()
                .find(|w| w.starts_with("ws://") || w.starts_with("wss://"))
            {
                break url.to_owned();
            }
        };
        // Keep draining stdout so the server never blocks on it.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        ServerProc { child, url, stderr }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// Kills it (SIGKILL) and starts it again on the same port and data
    /// (and the same config file, if `start_with_config` gave one).
    pub fn restart_hard(&mut self, data_dir: &Path) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let port = self.port();
        let mut cmd = Command::new(BIN);
        cmd.args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(data_dir)
        .env("TELEPOUND_MIN_ARGON2", telepound_testkit::FAST_KSF);
        let config = data_dir.with_extension("toml");
        if config.exists() {
            cmd.arg("--config").arg(config);
        }
        let fresh = Self::spawn(cmd, data_dir);
        let old = std::mem::replace(self, fresh);
        drop(old); // already dead: its Drop finds nothing to kill
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client command for `user` with local state in `home`.
pub fn tp(url: &str, home: &Path, user: &str) -> Command {
    let mut c = Command::new(BIN);
    c.env("TELEPOUND_SERVER", url)
        .env("TELEPOUND_HOME", home)
        .env("TELEPOUND_USER", user)
        .env("TELEPOUND_PASSWORD", PASSWORD)
        .env("TELEPOUND_ARGON2", telepound_testkit::FAST_KSF)
        .stdin(Stdio::null());
    c
}

/// Runs a command with a 30 s limit.
pub fn run(c: &mut Command) -> Output {
    let child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_output(child, Duration::from_secs(30))
}

pub fn wait_output(mut child: Child, limit: Duration) -> Output {
    let start = std::time::Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "command timed out; stdout: {} stderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts success and returns stdout.
pub fn ok(o: Output) -> String {
    assert!(o.status.success(), "failed: {}\n{}", stdout(&o), stderr(&o));
    stdout(&o)
}

/// Asserts a failure with one readable line on stderr and the given exit
/// code; returns that line.
pub fn fails(o: Output, code: i32) -> String {
    let err = stderr(&o);
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout: {} stderr: {err}",
        stdout(&o)
    );
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{err}"
    );
    assert!(err.starts_with("telepound: error: "), "{err}");
    err.trim_end().to_owned()
}

/// A TCP proxy on `127.0.0.1:0` in front of a server, that can go silent
/// the way a vanished machine does: [`Proxy::freeze`] stops forwarding on
/// every open connection for good while keeping them open (no FIN, no
/// RST), and holds new ones unanswered until [`Proxy::thaw`]. Without a
/// target it is a black hole: it accepts and never reads a byte.
pub struct Proxy {
    pub port: u16,
    shared: std::sync::Arc<ProxyState>,
}

#[derive(Default)]
struct ProxyState {
    stop: std::sync::atomic::AtomicBool,
    frozen: std::sync::atomic::AtomicBool,
    /// The number the next accepted connection gets.
    next_id: std::sync::atomic::AtomicU64,
    /// Connections numbered below this were open at the last freeze.
    dead_below: std::sync::atomic::AtomicU64,
}

impl Proxy {
    /// Forwards to `127.0.0.1:target`.
    pub fn start(target: u16) -> Proxy {
        Self::spawn(Some(target))
    }

    /// Accepts connections and never reads from them.
    pub fn black_hole() -> Proxy {
        Self::spawn(None)
    }

    fn spawn(target: Option<u16>) -> Proxy {
        use std::sync::atomic::Ordering::SeqCst;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = std::sync::Arc::new(ProxyState::default());
        let state = shared.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !state.stop.load(SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let id = state.next_id.fetch_add(1, SeqCst);
                let Some(target) = target else {
                    held.push(client);
                    continue;
                };
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let state = state.clone();
                    std::thread::spawn(move || pump(from, to, id, &state));
                }
            }
        });
        Proxy { port, shared }
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// Silences every connection open now, for good, and holds new ones.
    pub fn freeze(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        self.shared.frozen.store(true, SeqCst);
        let open = self.shared.next_id.load(SeqCst);
        self.shared.dead_below.store(open, SeqCst);
    }

    /// Forwards new connections (and those held meanwhile) again.
    pub fn thaw(&self) {
        self.shared
            .frozen
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Copies `from` to `to` until either closes; nothing while the proxy is
/// frozen, and nothing ever again once a freeze silenced this connection.
fn pump(mut from: std::net::TcpStream, mut to: std::net::TcpStream, id: u64, state: &ProxyState) {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering::SeqCst;
    let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = vec![0u8; 64 * 1024];
    while !state.stop.load(SeqCst) {
        if id < state.dead_below.load(SeqCst) || state.frozen.load(SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(std::net::Shutdown::Write);
                return;
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared
            .stop
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
