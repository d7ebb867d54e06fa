//! Counters, gauges and histograms, rendered in the Prometheus text format
//! at `/metrics`.
//!
//! Design decision: a small registry owned by each server instance rather
//! than a process-global recorder, so every test server (several run in one
//! test process) counts only its own traffic, and the hot path pays one
//! relaxed atomic add per event.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// A counter with one label value per index of `labels`.
pub struct LabeledCounter {
    labels: &'static [&'static str],
    values: Vec<AtomicU64>,
}

impl LabeledCounter {
    fn new(labels: &'static [&'static str]) -> Self {
        Self {
            labels,
            values: labels.iter().map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Adds one to the series `label` (which must be one of the labels).
    pub fn inc(&self, label: &str) {
        self.add(label, 1);
    }

    /// Adds `n` to the series `label` (which must be one of the labels).
    pub fn add(&self, label: &str, n: u64) {
        if let Some(i) = self.labels.iter().position(|l| *l == label) {
            self.values[i].fetch_add(n, Relaxed);
        } else {
            debug_assert!(false, "unknown metric label {label}");
        }
    }

    /// The current value of `label`.
    pub fn get(&self, label: &str) -> u64 {
        self.labels
            .iter()
            .position(|l| *l == label)
            .map_or(0, |i| self.values[i].load(Relaxed))
    }
}

/// A histogram with fixed upper bounds.
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    /// Sum scaled by 1e6 (so microseconds for a seconds histogram).
    sum_micro: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micro: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micro.fetch_add((v * 1e6) as u64, Relaxed);
    }
}

/// Why connections end, as metric labels.
pub const DISCONNECT_REASONS: &[&str] = &[
    "client_closed",
    "client_vanished",
    "shutdown",
    "slow_consumer",
    "idle_timeout",
    "login_timeout",
    "frame_too_large",
    "rate_limited",
    "protocol_error",
    "write_failed",
];

/// Every metric the server keeps.
pub struct Metrics {
    /// Connections accepted since start.
    pub connections_total: AtomicU64,
    /// Open WebSocket connections hibernating (nothing to do, buffers
    /// given back).
    pub connections_hibernating: AtomicI64,
    /// Times a hibernating connection woke.
    pub wakeups: AtomicU64,
    /// Upgrades refused, by reason.
    pub connections_refused: LabeledCounter,
    /// Logged-in sessions, by how they ended the login.
    pub logins: LabeledCounter,
    /// Messages stored durably (accepted).
    pub messages_accepted: AtomicU64,
    /// Sends of a message already waiting (retries): answered `accepted`
    /// again, stored once, not counted in `messages_accepted`.
    pub messages_duplicate: AtomicU64,
    /// Messages acknowledged by their recipient (delivered).
    pub messages_delivered: AtomicU64,
    /// Messages that waited in the ack window, by how it ended: `acked`
    /// (delivered before any disk write) or `written`.
    pub ack_window: LabeledCounter,
    /// Requests refused by a limit, by limit.
    pub limited: LabeledCounter,
    /// Connections ended, by reason.
    pub disconnects: LabeledCounter,
    /// Encrypted file bytes received.
    pub blob_bytes_in: AtomicU64,
    /// Encrypted file bytes sent.
    pub blob_bytes_out: AtomicU64,
    /// Operations per group commit.
    pub commit_batch: Histogram,
    /// Seconds per group commit.
    pub commit_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            connections_total: AtomicU64::new(0),
            connections_hibernating: AtomicI64::new(0),
            wakeups: AtomicU64::new(0),
            connections_refused: LabeledCounter::new(&[
                "too_many",
                "too_many_from_address",
                "shutting_down",
            ]),
            logins: LabeledCounter::new(&["ok", "failed", "throttled", "resumed"]),
            messages_accepted: AtomicU64::new(0),
            messages_duplicate: AtomicU64::new(0),
            messages_delivered: AtomicU64::new(0),
            ack_window: LabeledCounter::new(&["acked", "written"]),
            limited: LabeledCounter::new(&[
                "message_rate",
                "login_user",
                "login_address",
                "signup_address",
            ]),
            disconnects: LabeledCounter::new(DISCONNECT_REASONS),
            blob_bytes_in: AtomicU64::new(0),
            blob_bytes_out: AtomicU64::new(0),
            commit_batch: Histogram::new(&[
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
            ]),
            commit_seconds: Histogram::new(&[
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
        }
    }
}

impl Metrics {
    /// The Prometheus text exposition of every metric, plus the mailbox
    /// depth and live sessions measured at scrape time.
    pub fn render(&self, mailbox_depth: Option<u64>, sessions: usize, open: usize) -> String {
        let mut out = String::with_capacity(4096);
        let gauge = |out: &mut String, name: &str, help: &str, v: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        let labeled =
            |out: &mut String, name: &str, help: &str, label: &str, c: &LabeledCounter| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
                for (l, v) in c.labels.iter().zip(&c.values) {
                    let _ = writeln!(out, "{name}{{{label}=\"{l}\"}} {}", v.load(Relaxed));
                }
            };
        let histogram = |out: &mut String, name: &str, help: &str, h: &Histogram| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            let mut cumulative = 0;
            for (b, c) in h.bounds.iter().zip(&h.buckets) {
                cumulative += c.load(Relaxed);
                let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
            }
            let count = h.count.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
            let _ = writeln!(out, "{name}_sum {}", h.sum_micro.load(Relaxed) as f64 / 1e6);
            let _ = writeln!(out, "{name}_count {count}");
        };
        gauge(
            &mut out,
            "telepound_connections_open",
            "Open WebSocket connections.",
            open.to_string(),
        );
        gauge(
            &mut out,
            "telepound_connections_hibernating",
            "Open WebSocket connections hibernating: idle, their buffers given back.",
            self.connections_hibernating.load(Relaxed).to_string(),
        );
        counter(
            &mut out,
            "telepound_wakeups_total",
            "Times a hibernating connection woke.",
            self.wakeups.load(Relaxed),
        );
        gauge(
            &mut out,
            "telepound_sessions",
            "Logged-in connections.",
            sessions.to_string(),
        );
        counter(
            &mut out,
            "telepound_connections_total",
            "Connections accepted.",
            self.connections_total.load(Relaxed),
        );
        labeled(
            &mut out,
            "telepound_connections_refused_total",
            "Connections refused.",
            "reason",
            &self.connections_refused,
        );
        labeled(
            &mut out,
            "telepound_logins_total",
            "Login outcomes.",
            "result",
            &self.logins,
        );
        counter(
            &mut out,
            "telepound_messages_accepted_total",
            "Messages stored durably.",
            self.messages_accepted.load(Relaxed),
        );
        counter(
            &mut out,
            "telepound_messages_duplicate_total",
            "Retried sends of a message already stored (answered, not stored again).",
            self.messages_duplicate.load(Relaxed),
        );
        counter(
            &mut out,
            "telepound_messages_delivered_total",
            "Messages acknowledged by their recipient.",
            self.messages_delivered.load(Relaxed),
        );
        labeled(
            &mut out,
            "telepound_ack_window_total",
            "Messages for online recipients that waited for their acknowledgement: acked (never written to disk) or written.",
            "outcome",
            &self.ack_window,
        );
        labeled(
            &mut out,
            "telepound_limited_total",
            "Requests refused by a limit.",
            "limit",
            &self.limited,
        );
        labeled(
            &mut out,
            "telepound_disconnects_total",
            "Connections ended.",
            "reason",
            &self.disconnects,
        );
        counter(
            &mut out,
            "telepound_blob_bytes_in_total",
            "Encrypted file bytes received.",
            self.blob_bytes_in.load(Relaxed),
        );
        counter(
            &mut out,
            "telepound_blob_bytes_out_total",
            "Encrypted file bytes sent.",
            self.blob_bytes_out.load(Relaxed),
        );
        if let Some(d) = mailbox_depth {
            gauge(
                &mut out,
                "telepound_mailbox_depth",
                "Entries waiting in all mailboxes.",
                d.to_string(),
            );
        }
        histogram(
            &mut out,
            "telepound_commit_batch_ops",
            "Operations per group commit.",
            &self.commit_batch,
        );
        histogram(
            &mut out,
            "telepound_commit_seconds",
            "Time per group commit.",
            &self.commit_seconds,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.logins.inc("ok");
        m.commit_batch.observe(3.0);
        m.commit_seconds.observe(0.002);
        let text = m.render(Some(7), 1, 2);
        assert!(text.contains("telepound_logins_total{result=\"ok\"} 1"));
        assert!(text.contains("telepound_commit_batch_ops_bucket{le=\"4\"} 1"));
        assert!(text.contains("telepound_commit_batch_ops_count 1"));
        assert!(text.contains("telepound_mailbox_depth 7"));
        assert!(text.contains("telepound_sessions 1"));
        assert!(text.contains("telepound_connections_open 2"));
    }
}
