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
