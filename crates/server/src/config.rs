//! Server configuration: [`RawConfig`] as read from a TOML file, the
//! environment and flags, validated once into a [`Config`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use telepound_protocol::auth::KsfParams;

use crate::store::{DatabaseUrl, WriterConfig};
use crate::tls::TlsSource;

/// Configuration as given: every field optional, unknown fields refused.
/// Later sources override earlier ones with [`RawConfig::merge`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Address to listen on, e.g. `127.0.0.1:7878`.
    pub listen: Option<String>,
    /// Folder for the SQLite database and other server data.
    pub data_dir: Option<PathBuf>,
    /// `postgres://…` to use PostgreSQL, or `sqlite://PATH`; default: SQLite
    /// in the data folder.
    pub database: Option<String>,
    /// Run migrations at start (default true). Set false when the server
    /// runs as an application role that may not change the schema.
    pub migrate: Option<bool>,
    /// Largest accepted frame in bytes (default 1 MiB).
    pub max_frame_bytes: Option<usize>,
    /// Days an undelivered message waits before it is deleted (default 30).
    pub message_ttl_days: Option<u64>,
    /// Hours a resume token stays valid (default 168).
    pub session_ttl_hours: Option<u64>,
    /// Pushes queued per connection before it is disconnected as too slow
    /// (default 1024: more than the receipts one acknowledged page makes).
    pub outbox: Option<usize>,
    /// Bytes of pushes queued per connection before it is disconnected as
    /// too slow (default 4 MiB; at least `max_frame_bytes`). Envelopes may
    /// be up to a frame each, so the count alone would let one stuck reader
    /// pin a gigabyte.
    pub outbox_bytes: Option<usize>,
    /// Most connections at once (default 10000).
    pub max_connections: Option<usize>,
    /// Requests one connection may have in flight (default 128).
    pub max_in_flight: Option<usize>,
    /// Seconds between WebSocket pings (default 10).
    pub ping_interval_secs: Option<u64>,
    /// Seconds of silence after which a peer is presumed dead (default 30).
    pub idle_timeout_secs: Option<u64>,
    /// Seconds a login may take between its two messages (default 30).
    pub login_timeout_secs: Option<u64>,
    /// Seconds to let connections finish on shutdown, counted from the
    /// stop request (default 10).
    pub shutdown_grace_secs: Option<u64>,
    /// Seconds an HTTP request's headers may take to arrive, on a new
    /// connection or between requests on a kept-alive one (default 10).
    pub header_read_timeout_secs: Option<u64>,
    /// Weakest Argon2id parameters accepted for new accounts, as
    /// `m=KIB,t=N,p=N` (default `m=19456,t=2,p=1`).
    pub min_argon2: Option<String>,
    /// Most connections from one address (default 64).
    pub max_connections_per_address: Option<u32>,
    /// Frames a connection may send per second, sustained (default 50).
    pub messages_per_second: Option<u32>,
    /// Frames a connection may send in a burst (default 200).
    pub message_burst: Option<u32>,
    /// Seconds a connection may stay without logging in (default 30).
    pub auth_timeout_secs: Option<u64>,
    /// Login attempts a minute for one user name (default 10).
    pub login_attempts_per_user: Option<u32>,
    /// Login, resume or sign-up attempts a minute from one address
    /// (default 60).
    pub login_attempts_per_address: Option<u32>,
    /// Sign-ups an hour from one address (default 20).
    pub signups_per_address: Option<u32>,
    /// Largest file accepted, in MiB (default 100).
    pub max_file_mib: Option<u64>,
    /// Storage per user for files not yet fetched by everyone, in MiB
    /// (default 1024).
    pub quota_mib: Option<u64>,
    /// Days an unfetched file is kept (default: `message_ttl_days`).
    pub blob_ttl_days: Option<u64>,
    /// Most members in a group (default 256).
    pub max_group_members: Option<usize>,
    /// Milliseconds a message for an online recipient waits for their
    /// acknowledgement before it is written to disk (default 250; 0 writes
    /// every message at once). Acknowledged in time, it is never written.
    pub ack_window_ms: Option<u64>,
    /// Milliseconds a connection with nothing to do waits before it
    /// hibernates: it gives its WebSocket buffers and most of its task back
    /// and keeps only what it needs to wake, about 2.6 KiB (default 10: long
    /// enough to span a burst of frames; 0 never hibernates).
    pub hibernate_after_ms: Option<u64>,
    /// SQLite: KiB of one-to-one envelopes in one batch of inserts from
    /// which they go to the envelope log rather than their rows (default 64;
    /// 0 logs every batch).
    pub envelope_log_min_kib: Option<u64>,
    /// PEM certificate chain for TLS (with `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS (with `tls_cert`).
    pub tls_key: Option<PathBuf>,
    /// Serve TLS with a self-signed certificate kept in the data folder.
    pub tls_self_signed: Option<bool>,
}

macro_rules! merge_fields {
    ($self:ident, $other:ident; $($f:ident),*) => {
        RawConfig { $($f: $other.$f.or($self.$f)),* }
    };
}

impl RawConfig {
    /// Reads a TOML file.
    ///
    /// # Errors
    /// A readable message naming the file when it cannot be read or parsed.
    pub fn from_toml_file(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))
    }

    /// `other`'s values where set, else `self`'s.
    pub fn merge(self, other: RawConfig) -> RawConfig {
        merge_fields!(self, other; listen, data_dir, database, migrate, max_frame_bytes,
            message_ttl_days, session_ttl_hours, outbox, outbox_bytes, max_connections, max_in_flight,
            ping_interval_secs, idle_timeout_secs, login_timeout_secs, shutdown_grace_secs,
            header_read_timeout_secs, min_argon2, tls_cert, tls_key, tls_self_signed, max_connections_per_address,
            messages_per_second, message_burst, auth_timeout_secs, login_attempts_per_user,
            login_attempts_per_address, signups_per_address, max_file_mib, quota_mib, blob_ttl_days,
            max_group_members, ack_window_ms, hibernate_after_ms, envelope_log_min_kib)
    }

    /// Validates into a [`Config`], filling defaults.
    ///
    /// # Errors
    /// A readable message for the first invalid value.
    pub fn validate(self) -> Result<Config, String> {
        let listen: SocketAddr = self
            .listen
            .as_deref()
            .unwrap_or("127.0.0.1:7878")
            .parse()
            .map_err(|_| {
                format!(
                    "invalid listen address {:?}: expected IP:PORT, e.g. 127.0.0.1:7878",
                    self.listen.as_deref().unwrap_or_default()
                )
            })?;
        let data_dir = self
            .data_dir
            .unwrap_or_else(|| PathBuf::from("telepound-data"));
        let database = match self.database.as_deref() {
            None | Some("") => DatabaseUrl::Sqlite(data_dir.join("telepound.sqlite3")),
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
                DatabaseUrl::Postgres(u.to_owned())
            }
            Some(u) if u.starts_with("sqlite://") => {
                DatabaseUrl::Sqlite(PathBuf::from(&u["sqlite://".len()..]))
            }
            Some(u) => {
                return Err(format!(
                    "unsupported database {:?}: use postgres://USER@HOST/DB or sqlite://PATH",
                    redact_url(u)
                ));
            }
        };
        let positive = |name: &str, v: Option<u64>, default: u64| -> Result<u64, String> {
            match v.unwrap_or(default) {
                0 => Err(format!("{name} must be greater than zero")),
                n => Ok(n),
            }
        };
        let max_frame = self
            .max_frame_bytes
            .unwrap_or(telepound_protocol::DEFAULT_MAX_FRAME);
        if max_frame < 4096 {
            return Err("max_frame_bytes must be at least 4096".into());
        }
        let outbox_bytes = self.outbox_bytes.unwrap_or(4 * 1024 * 1024);
        if outbox_bytes < max_frame {
            return Err("outbox_bytes must be at least max_frame_bytes".into());
        }
        let ping = positive("ping_interval_secs", self.ping_interval_secs, 10)?;
        let idle = positive("idle_timeout_secs", self.idle_timeout_secs, 30)?;
        if idle <= ping {
            return Err("idle_timeout_secs must be longer than ping_interval_secs".into());
        }
        let min_ksf = match self.min_argon2.as_deref() {
            None => KsfParams::DEFAULT,
            Some(s) => s
                .parse()
                .map_err(|e| format!("invalid min_argon2 {s:?}: {e}"))?,
        };
        let tls = match (
            self.tls_cert,
            self.tls_key,
            self.tls_self_signed.unwrap_or(false),
        ) {
            (Some(cert), Some(key), false) => Some(TlsSource::Files { cert, key }),
            (None, None, true) => Some(TlsSource::SelfSigned),
            (None, None, false) => None,
            (Some(_), Some(_), true) => {
                return Err("choose either tls_cert/tls_key or tls_self_signed, not both".into());
            }
            _ => return Err("tls_cert and tls_key go together".into()),
        };
        let nonzero = |name: &str, v: Option<u32>, default: u32| -> Result<u32, String> {
            match v.unwrap_or(default) {
                0 => Err(format!("{name} must be greater than zero")),
                n => Ok(n),
            }
        };
        let limits = Limits {
            max_connections_per_address: nonzero(
                "max_connections_per_address",
                self.max_connections_per_address,
                64,
            )?,
            messages_per_second: nonzero("messages_per_second", self.messages_per_second, 50)?,
            message_burst: nonzero("message_burst", self.message_burst, 200)?,
            auth_timeout: Duration::from_secs(positive(
                "auth_timeout_secs",
                self.auth_timeout_secs,
                30,
            )?),
            login_attempts_per_user: nonzero(
                "login_attempts_per_user",
                self.login_attempts_per_user,
                10,
            )?,
            login_attempts_per_address: nonzero(
                "login_attempts_per_address",
                self.login_attempts_per_address,
                60,
            )?,
            signups_per_address: nonzero("signups_per_address", self.signups_per_address, 20)?,
        };
        let message_ttl_days = positive("message_ttl_days", self.message_ttl_days, 30)?;
        Ok(Config {
            max_group_members: positive(
                "max_group_members",
                self.max_group_members.map(|v| v as u64),
                256,
            )? as usize,
            max_file_bytes: positive("max_file_mib", self.max_file_mib, 100)? * 1024 * 1024,
            quota_bytes: positive("quota_mib", self.quota_mib, 1024)? * 1024 * 1024,
            blob_ttl: Duration::from_secs(
                positive("blob_ttl_days", self.blob_ttl_days, message_ttl_days)? * 86_400,
            ),
            limits,
            tls,
            min_ksf,
            listen,
            data_dir,
            database,
            migrate: self.migrate.unwrap_or(true),
            max_frame,
            message_ttl: Duration::from_secs(
                positive("message_ttl_days", self.message_ttl_days, 30)? * 86_400,
            ),
            session_ttl: Duration::from_secs(
                positive("session_ttl_hours", self.session_ttl_hours, 168)? * 3600,
            ),
            outbox: positive("outbox", self.outbox.map(|v| v as u64), 1024)? as usize,
            outbox_bytes,
            max_connections: positive(
                "max_connections",
                self.max_connections.map(|v| v as u64),
                10_000,
            )? as usize,
            max_in_flight: positive("max_in_flight", self.max_in_flight.map(|v| v as u64), 128)?
                as usize,
            ping_interval: Duration::from_secs(ping),
            idle_timeout: Duration::from_secs(idle),
            login_timeout: Duration::from_secs(positive(
                "login_timeout_secs",
                self.login_timeout_secs,
                30,
            )?),
            shutdown_grace: Duration::from_secs(positive(
                "shutdown_grace_secs",
                self.shutdown_grace_secs,
                10,
            )?),
            header_read_timeout: Duration::from_secs(positive(
                "header_read_timeout_secs",
                self.header_read_timeout_secs,
                10,
            )?),
            writer: WriterConfig {
                ack_window: Duration::from_millis(match self.ack_window_ms {
                    Some(ms) if ms > 10_000 => {
                        return Err(format!(
                            "invalid ack_window_ms {ms}: at most 10000 (and 0 turns it off)"
                        ));
                    }
                    Some(ms) => ms,
                    None => 250,
                }),
                envelope_log_min_bytes: match self.envelope_log_min_kib {
                    Some(kib) if kib > 1 << 20 => {
                        return Err(format!(
                            "invalid envelope_log_min_kib {kib}: at most 1048576 (and 0 logs every batch)"
                        ));
                    }
                    Some(kib) => kib as usize * 1024,
                    None => WriterConfig::default().envelope_log_min_bytes,
                },
                ..WriterConfig::default()
            },
            hibernate_after: match self.hibernate_after_ms {
                Some(0) => None,
                Some(ms) => Some(Duration::from_millis(ms)),
                None => Some(Duration::from_millis(10)),
            },
            expiry_interval: Duration::from_secs(3600),
        })
    }
}

/// A database URL with any password replaced, safe to print: the one in
/// `user:password@` and a `password=` query parameter (PostgreSQL accepts
/// both).
pub fn redact_url(url: &str) -> String {
    let Some(scheme) = url.find("://") else {
        return url.to_owned();
    };
    let start = scheme + 3;
    let (main, query) = match url[start..].find('?') {
        Some(q) => (&url[..start + q], Some(&url[start + q + 1..])),
        None => (url, None),
    };
    let main = match main[start..].rfind('@') {
        Some(at) => {
            let at = start + at;
            match main[start..at].split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &main[..start], &main[at..]),
                None => main.to_owned(),
            }
        }
        // An `@` only after the `?`: a password holding a raw `?` (not a
        // valid URL, but it must not be printed either).
        None if query.is_some_and(|q| q.contains('@')) => {
            return format!("{}***", &url[..start]);
        }
        None => main.to_owned(),
    };
    let Some(query) = query else {
        return main;
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{main}?{}", query.join("&"))
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen (used by the binary; [`crate::run`] takes a listener).
    pub listen: SocketAddr,
    /// Server data folder.
    pub data_dir: PathBuf,
    /// The database.
    pub database: DatabaseUrl,
    /// Whether to run migrations at start.
    pub migrate: bool,
    /// Largest accepted frame in bytes.
    pub max_frame: usize,
    /// How long undelivered messages wait.
    pub message_ttl: Duration,
    /// How long resume tokens last.
    pub session_ttl: Duration,
    /// Outbox capacity per connection, in pushes.
    pub outbox: usize,
    /// Outbox capacity per connection, in bytes of pushes.
    pub outbox_bytes: usize,
    /// Connection cap.
    pub max_connections: usize,
    /// In-flight request cap per connection.
    pub max_in_flight: usize,
    /// Ping period.
    pub ping_interval: Duration,
    /// Silence after which a peer is dead.
    pub idle_timeout: Duration,
    /// Time allowed between `login_start` and `login_finish`.
    pub login_timeout: Duration,
    /// Shutdown deadline for connections, from the stop request.
    pub shutdown_grace: Duration,
    /// Time an HTTP request's headers may take to arrive.
    pub header_read_timeout: Duration,
    /// Group-commit writer tuning.
    pub writer: WriterConfig,
    /// Quiet time after which a connection hibernates (`None`: never).
    pub hibernate_after: Option<Duration>,
    /// Weakest Argon2id parameters accepted at sign-up.
    pub min_ksf: KsfParams,
    /// TLS, if on.
    pub tls: Option<TlsSource>,
    /// Abuse limits.
    pub limits: Limits,
    /// Largest file (plaintext) accepted.
    pub max_file_bytes: u64,
    /// Storage per user for files not yet fetched by all recipients.
    pub quota_bytes: u64,
    /// How long an unfetched file is kept.
    pub blob_ttl: Duration,
    /// Most members in a group.
    pub max_group_members: usize,
    /// How often expired messages and files are deleted (an hour; not a
    /// setting in the file, tests shorten it).
    pub expiry_interval: Duration,
}

/// Abuse limits; each violation is refused with `rate_limited` or
/// `too_many_connections` and counted in `/metrics`.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most connections from one address.
    pub max_connections_per_address: u32,
    /// Frames per second per connection, sustained.
    pub messages_per_second: u32,
    /// Frames per connection in a burst.
    pub message_burst: u32,
    /// Time allowed before logging in.
    pub auth_timeout: Duration,
    /// Login and resume attempts a minute per user name.
    pub login_attempts_per_user: u32,
    /// Login, resume and sign-up attempts a minute per address.
    pub login_attempts_per_address: u32,
    /// Sign-ups an hour per address.
    pub signups_per_address: u32,
}

impl Config {
    /// Defaults with SQLite in `data_dir`: what tests and embedders start from.
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        RawConfig {
            data_dir: Some(data_dir.into()),
            ..RawConfig::default()
        }
        .validate()
        .expect("defaults are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let c = RawConfig::default().validate().unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:7878");
        assert_eq!(
            c.database,
            DatabaseUrl::Sqlite(PathBuf::from("telepound-data/telepound.sqlite3"))
        );
        let file: RawConfig = toml::from_str("listen = \"0.0.0.0:9000\"\noutbox = 8").unwrap();
        let flags = RawConfig {
            listen: Some("127.0.0.1:1".into()),
            ..Default::default()
        };
        let c = file.merge(flags).validate().unwrap();
        assert_eq!(c.listen.port(), 1);
        assert_eq!(c.outbox, 8);
    }

    #[test]
    fn envelope_log_floor_in_kib() {
        let floor = |kib| {
            RawConfig {
                envelope_log_min_kib: kib,
                ..Default::default()
            }
            .validate()
            .map(|c| c.writer.envelope_log_min_bytes)
        };
        assert_eq!(floor(None), Ok(64 * 1024));
        assert_eq!(floor(Some(0)), Ok(0));
        assert_eq!(floor(Some(1 << 20)), Ok(1 << 30));
        let e = floor(Some((1 << 20) + 1)).unwrap_err();
        assert!(e.contains("envelope_log_min_kib"), "{e}");
    }

    #[test]
    fn bad_values_are_readable_errors() {
        let e = RawConfig {
            listen: Some("nope".into()),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.contains("invalid listen address"));
        let e = RawConfig {
            database: Some("mysql://root:hunter2@x/db".into()),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(toml::from_str::<RawConfig>("bogus = 1").is_err());
        let e = RawConfig {
            outbox_bytes: Some(1000),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.contains("outbox_bytes"), "{e}");
        let e = RawConfig {
            signups_per_address: Some(0),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.contains("signups_per_address"), "{e}");
    }

    #[test]
    fn urls_are_printed_without_their_passwords() {
        let cases = [
            (
                "postgres://app:hunter2@db.example/telepound",
                "postgres://app:***@db.example/telepound",
            ),
            (
                "postgres://app@db.example/telepound?password=hunter2",
                "postgres://app@db.example/telepound?password=***",
            ),
            (
                "postgresql://db.example/tp?sslmode=require&PASSWORD=hunter2&application_name=x",
                "postgresql://db.example/tp?sslmode=require&PASSWORD=***&application_name=x",
            ),
            (
                "postgres://app:hunter2@db/tp?password=hunter2",
                "postgres://app:***@db/tp?password=***",
            ),
            // An @ inside the query's password is not the credentials' end.
            (
                "postgres://app@db/tp?password=hun@ter2",
                "postgres://app@db/tp?password=***",
            ),
            ("postgres://app:hun?ter2@db/tp", "postgres://***"),
            ("postgres://db/tp", "postgres://db/tp"),
            ("sqlite://data/t.sqlite3", "sqlite://data/t.sqlite3"),
        ];
        for (url, want) in cases {
            let got = redact_url(url);
            assert_eq!(got, want, "{url}");
            assert!(!got.contains("hunter2") && !got.contains("ter2"), "{got}");
        }
    }
}
