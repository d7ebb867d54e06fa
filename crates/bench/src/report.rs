//! A run's figures: kept as [`Results`], written as `results.json`,
//! `results.md` and `latency.svg`.

use std::fmt::Write as _;

use crate::Args;
use crate::peers::{Peer, SPREAD_RECIPIENTS, durable_setting};
use crate::scenarios::Latency;

/// One measured quantity: every run's value and their summary.
#[derive(Debug, serde::Serialize)]
pub struct Row {
    /// Scenario name.
    pub scenario: &'static str,
    /// System measured.
    pub peer: Peer,
    /// What was varied for this point.
    pub setting: String,
    /// What was measured.
    pub metric: &'static str,
    /// Its unit.
    pub unit: &'static str,
    /// Median of the runs.
    pub median: f64,
    /// Smallest run.
    pub min: f64,
    /// Largest run.
    pub max: f64,
    /// Every run, in order.
    pub runs: Vec<f64>,
}

impl Row {
    /// Summarises `runs`.
    pub fn new(
        scenario: &'static str,
        peer: Peer,
        setting: &str,
        metric: &'static str,
        unit: &'static str,
        runs: Vec<f64>,
    ) -> Row {
        Row {
            scenario,
            peer,
            setting: setting.to_owned(),
            metric,
            unit,
            median: median(&runs),
            min: runs.iter().copied().fold(f64::INFINITY, f64::min),
            max: runs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            runs,
        }
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// Latency at one offered rate: each percentile the median over runs.
#[derive(Debug, serde::Serialize)]
pub struct Curve {
    /// System measured.
    pub peer: Peer,
    /// Offered rate, messages per second.
    pub rate: u64,
    /// Received rate.
    pub achieved: f64,
    /// Percentiles in microseconds.
    pub p50: u64,
    /// 90th.
    pub p90: u64,
    /// 99th.
    pub p99: u64,
    /// 99.9th.
    pub p999: u64,
    /// Largest.
    pub max: u64,
    /// Every run's p99, to show the spread.
    pub p99_runs: Vec<u64>,
}

impl Curve {
    /// The median of each percentile over `runs`.
    pub fn median(peer: Peer, rate: u64, runs: &[Latency]) -> Curve {
        let m = |f: fn(&Latency) -> u64| {
            median(&runs.iter().map(|l| f(l) as f64).collect::<Vec<_>>()) as u64
        };
        Curve {
            peer,
            rate,
            achieved: median(&runs.iter().map(|l| l.achieved).collect::<Vec<_>>()),
            p50: m(|l| l.p50),
            p90: m(|l| l.p90),
            p99: m(|l| l.p99),
            p999: m(|l| l.p999),
            max: m(|l| l.max),
            p99_runs: runs.iter().map(|l| l.p99).collect(),
        }
    }
}

/// Everything one run measured.
#[derive(Debug, serde::Serialize)]
pub struct Results {
    /// When, where and how.
    pub context: serde_json::Value,
    /// Scalar figures.
    pub rows: Vec<Row>,
    /// Latency against offered rate.
    pub curves: Vec<Curve>,
    /// Failures and remarks.
    pub notes: Vec<String>,
}

fn first_line(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned()
        })
        .unwrap_or_else(|| "unknown".into())
}

impl Results {
    /// Empty results with the run's context.
    pub fn new(args: &Args) -> Results {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("model name"))
                    .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
            })
            .unwrap_or_default();
        Results {
            context: serde_json::json!({
                "date": first_line("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
                "cpu": cpu,
                "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
                "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
                "telepound": first_line("git", &["describe", "--always", "--dirty"]),
                "nats_server": first_line("/usr/sbin/nats-server", &["--version"]),
                "prosody": crate::xmpp::prosody_version(),
                "pinned": args.pin,
                "repeat": args.repeat,
                "warm_s": args.warm,
                "measure_s": args.measure,
                "pairs": args.pairs,
                "in_flight": args.in_flight,
                "durable_in_flight": args.durable_in_flight,
                "durable_recipients": args.durable_recipients,
                "command": std::env::args().collect::<Vec<_>>().join(" "),
            }),
            rows: Vec::new(),
            curves: Vec::new(),
            notes: Vec::new(),
        }
    }

    fn find(&self, scenario: &str, peer: Peer, setting_prefix: &str, metric: &str) -> Option<&Row> {
        self.find_where(scenario, peer, metric, |s| s.starts_with(setting_prefix))
    }

    /// The row of exactly `setting`.
    fn find_setting(
        &self,
        scenario: &str,
        peer: Peer,
        setting: &str,
        metric: &str,
    ) -> Option<&Row> {
        self.find_where(scenario, peer, metric, |s| s == setting)
    }

    fn find_where(
        &self,
        scenario: &str,
        peer: Peer,
        metric: &str,
        setting: impl Fn(&str) -> bool,
    ) -> Option<&Row> {
        self.rows.iter().find(|r| {
            r.scenario == scenario && r.peer == peer && r.metric == metric && setting(&r.setting)
        })
    }

    fn curve(&self, peer: Peer, rate: u64) -> Option<&Curve> {
        self.curves
            .iter()
            .find(|c| c.peer == peer && c.rate == rate)
    }

    /// The issue's targets as ratios measured in this run.
    fn targets(&self) -> Vec<(String, String, Option<bool>)> {
        let mut t = Vec::new();
        let tp = Peer::Telepound;
        let ratio = |a: Option<&Row>, b: Option<&Row>| Some(a?.median / b?.median);
        let mut push = |what: &str,
                        value: Option<f64>,
                        fmt: &dyn Fn(f64) -> String,
                        ok: &dyn Fn(f64) -> bool| {
            t.push((
                what.to_owned(),
                value.map_or_else(|| "not measured".into(), fmt),
                value.map(ok),
            ));
        };
        let one = durable_setting(512, 1);
        let spread = durable_setting(512, SPREAD_RECIPIENTS);
        push(
            "durable accept, 512 in flight: ≥ 1.5× JetStream",
            ratio(
                self.find_setting("durable", tp, &one, "accepted"),
                self.find_setting("durable", Peer::Jetstream, &one, "accepted"),
            ),
            &|r| format!("{r:.2}×"),
            &|r| r >= 1.5,
        );
        // The same target with the messages spread over many recipients, as
        // a chat server's are: each recipient's rows sit in a different part
        // of the indexes ordered by recipient.
        push(
            &format!(
                "durable accept, 512 in flight to {SPREAD_RECIPIENTS} recipients: ≥ 1.5× JetStream"
            ),
            ratio(
                self.find_setting("durable", tp, &spread, "accepted"),
                self.find_setting("durable", Peer::Jetstream, &spread, "accepted"),
            ),
            &|r| format!("{r:.2}×"),
            &|r| r >= 1.5,
        );
        push(
            "online routing: ≥ 1× NATS core, same pairs",
            ratio(
                self.find("routing", tp, "", "throughput"),
                self.find("routing", Peer::Nats, "", "throughput"),
            ),
            &|r| format!("{r:.2}×"),
            &|r| r >= 1.0,
        );
        let p99 = self
            .curve(tp, 10_000)
            .zip(self.curve(Peer::Nats, 10_000))
            .map(|(a, b)| a.p99 as f64 / b.p99.max(1) as f64);
        push(
            "p99 at 10k msgs/s: ≤ NATS core's",
            p99,
            &|r| format!("{r:.2}× NATS's p99"),
            &|r| r <= 1.0,
        );
        push(
            "100k backlog drained: ≥ 2.5× faster than a JetStream pull consumer",
            ratio(
                self.find("backlog", Peer::Jetstream, "", "login to last acknowledged"),
                self.find("backlog", tp, "", "login to last acknowledged"),
            ),
            &|r| format!("{r:.2}× faster"),
            &|r| r >= 2.5,
        );
        push(
            "≤ 3 KiB server memory per idle connection",
            self.find("idle", tp, "", "server memory").map(|r| r.median),
            &|v| format!("{v:.2} KiB"),
            &|v| v <= 3.0,
        );
        push(
            "≤ 4 µs server CPU per durable message (512 in flight)",
            self.find_setting("durable", tp, &one, "server CPU")
                .map(|r| r.median),
            &|v| format!("{v:.2} µs"),
            &|v| v <= 4.0,
        );
        // The load generator's and the server's CPU use say which side
        // limits the rate when the ratio falls short.
        let busy = |metric| {
            self.find("logins", tp, "Argon2 m=19456", metric)
                .map(|r| format!("{:.0}%", r.median))
                .unwrap_or_else(|| "not measured".into())
        };
        let (generator, server) = (busy("load generator busy"), busy("server busy"));
        push(
            "password logins limited only by Argon2 (≥ 90% of the hash-only bound)",
            self.find("logins", tp, "Argon2 m=19456", "of the Argon2-only bound")
                .map(|r| r.median),
            &|v| {
                format!(
                    "{v:.0}% of the bound (load generator {generator} busy, server {server} of a core)"
                )
            },
            &|v| v >= 90.0,
        );
        // The same comparisons against peers carrying payloads as large as
        // Telepound's envelopes: the same bytes through both servers.
        push(
            "same bytes: durable accept, 512 in flight: ≥ 1.5× jetstream-env",
            ratio(
                self.find_setting("durable", tp, &one, "accepted"),
                self.find_setting("durable", Peer::JetstreamEnv, &one, "accepted"),
            ),
            &|r| format!("{r:.2}×"),
            &|r| r >= 1.5,
        );
        push(
            "same bytes: online routing: ≥ 1× nats-env",
            ratio(
                self.find("routing", tp, "", "throughput"),
                self.find("routing", Peer::NatsEnv, "", "throughput"),
            ),
            &|r| format!("{r:.2}×"),
            &|r| r >= 1.0,
        );
        let p99 = self
            .curve(tp, 10_000)
            .zip(self.curve(Peer::NatsEnv, 10_000))
            .map(|(a, b)| a.p99 as f64 / b.p99.max(1) as f64);
        push(
            "same bytes: p99 at 10k msgs/s: ≤ nats-env's",
            p99,
            &|r| format!("{r:.2}× nats-env's p99"),
            &|r| r <= 1.0,
        );
        push(
            "same bytes: 100k backlog drained: ≥ 2.5× faster than jetstream-env",
            ratio(
                self.find(
                    "backlog",
                    Peer::JetstreamEnv,
                    "",
                    "login to last acknowledged",
                ),
                self.find("backlog", tp, "", "login to last acknowledged"),
            ),
            &|r| format!("{r:.2}× faster"),
            &|r| r >= 2.5,
        );
        t
    }

    /// The knee: the highest offered rate with p99 under 5 ms there and at
    /// every lower rate offered (the scenario goes on past a lower rate that
    /// missed, up to the target's, so a higher one may pass again).
    fn knee(&self, peer: Peer) -> Option<u64> {
        let mut curves: Vec<_> = self.curves.iter().filter(|c| c.peer == peer).collect();
        curves.sort_by_key(|c| c.rate);
        curves
            .iter()
            .take_while(|c| c.p99 < 5_000)
            .map(|c| c.rate)
            .last()
    }
}

fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        "–".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The Markdown report.
pub fn markdown(r: &Results) -> String {
    let c = &r.context;
    let mut md = String::new();
    let _ = writeln!(md, "# telepound-bench results\n");
    let _ = writeln!(
        md,
        "Run {} on {} ({} cores, Linux {}); Telepound {}, {}, {}. Servers pinned to CPU 0 and the load generator to CPU 1: {}. Each point: {} runs, {} s warm-up discarded, {} s measured; median (min–max).\n",
        c["date"].as_str().unwrap_or(""),
        c["cpu"].as_str().unwrap_or(""),
        c["cores"],
        c["kernel"].as_str().unwrap_or(""),
        c["telepound"].as_str().unwrap_or(""),
        c["nats_server"].as_str().unwrap_or(""),
        c["prosody"].as_str().unwrap_or(""),
        if c["pinned"].as_bool() == Some(true) {
            "yes"
        } else {
            "no"
        },
        c["repeat"],
        c["warm_s"],
        c["measure_s"],
    );
    let _ = writeln!(md, "Command: `{}`\n", c["command"].as_str().unwrap_or(""));

    let targets = r.targets();
    let _ = writeln!(
        md,
        "## Targets\n\n| target | measured | met |\n|---|---|---|"
    );
    for (what, value, ok) in &targets {
        let mark = match ok {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "–",
        };
        let _ = writeln!(md, "| {what} | {value} | {mark} |");
    }

    let _ = writeln!(
        md,
        "\n## Figures\n\n| scenario | system | setting | metric | median | min | max | unit |\n|---|---|---|---|---:|---:|---:|---|"
    );
    for row in &r.rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            row.scenario,
            row.peer.name(),
            row.setting,
            row.metric,
            fmt_num(row.median),
            fmt_num(row.min),
            fmt_num(row.max),
            row.unit
        );
    }

    if !r.curves.is_empty() {
        let _ = writeln!(
            md,
            "\n## Latency against offered rate (µs, from the scheduled send time)\n\n| system | offered/s | received/s | p50 | p90 | p99 | p99.9 | max | p99 of each run |\n|---|---:|---:|---:|---:|---:|---:|---:|---|"
        );
        for cv in &r.curves {
            let runs: Vec<String> = cv.p99_runs.iter().map(u64::to_string).collect();
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
                cv.peer.name(),
                cv.rate,
                cv.achieved,
                cv.p50,
                cv.p90,
                cv.p99,
                cv.p999,
                cv.max,
                runs.join(", ")
            );
        }
        let mut peers: Vec<Peer> = r.curves.iter().map(|c| c.peer).collect();
        peers.dedup();
        let _ = writeln!(md);
        for p in peers {
            match r.knee(p) {
                Some(k) => {
                    let _ = writeln!(
                        md,
                        "- knee (highest rate with p99 < 5 ms there and below) for {}: {k} msgs/s",
                        p.name()
                    );
                }
                None => {
                    let _ = writeln!(md, "- {}: p99 ≥ 5 ms at the lowest rate measured", p.name());
                }
            }
        }
    }
    if !r.notes.is_empty() {
        let _ = writeln!(md, "\n## Notes\n");
        for n in &r.notes {
            let _ = writeln!(md, "- {n}");
        }
    }
    md
}

/// p50 and p99 against offered rate, both axes logarithmic.
pub fn svg(r: &Results) -> String {
    let (w, h, left, right, top, bottom) = (760.0, 440.0, 70.0, 160.0, 30.0, 50.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let rates: Vec<f64> = r.curves.iter().map(|c| c.rate as f64).collect();
    let lats: Vec<f64> = r
        .curves
        .iter()
        .flat_map(|c| [c.p50 as f64, c.p99 as f64])
        .collect();
    let (x0, x1) = bounds(&rates);
    let (y0, y1) = bounds(&lats);
    let x = |v: f64| left + (v.log10() - x0) / (x1 - x0) * pw;
    let y = |v: f64| top + ph - (v.max(1.0).log10() - y0) / (y1 - y0) * ph;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="18" text-anchor="middle" font-size="14">Latency against offered rate (solid p99, dashed p50)</text>"#,
        left + pw / 2.0
    );
    for d in (x0.floor() as i32)..=(x1.ceil() as i32) {
        let v = 10f64.powi(d);
        if v.log10() < x0 - 1e-9 || v.log10() > x1 + 1e-9 {
            continue;
        }
        let xv = x(v);
        let _ = writeln!(
            s,
            r##"<line x1="{xv:.1}" y1="{top}" x2="{xv:.1}" y2="{}" stroke="#ddd"/>"##,
            top + ph
        );
        let _ = writeln!(
            s,
            r#"<text x="{xv:.1}" y="{}" text-anchor="middle">{}</text>"#,
            top + ph + 16.0,
            human(v)
        );
    }
    for d in (y0.floor() as i32)..=(y1.ceil() as i32) {
        let v = 10f64.powi(d);
        if v.log10() < y0 - 1e-9 || v.log10() > y1 + 1e-9 {
            continue;
        }
        let yv = y(v);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{yv:.1}" x2="{}" y2="{yv:.1}" stroke="#ddd"/>"##,
            left + pw
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            left - 6.0,
            yv + 4.0,
            micros(v)
        );
    }
    let knee = y(5_000.0);
    if (top..=top + ph).contains(&knee) {
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{knee:.1}" x2="{}" y2="{knee:.1}" stroke="#c00" stroke-dasharray="2,3"/><text x="{}" y="{:.1}" fill="#c00">5 ms</text>"##,
            left + pw,
            left + pw + 4.0,
            knee + 4.0
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">offered rate (messages/s)</text>"#,
        left + pw / 2.0,
        h - 10.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(16,{}) rotate(-90)" text-anchor="middle">latency</text>"#,
        top + ph / 2.0
    );
    let colours = [
        "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
    ];
    let mut peers: Vec<Peer> = r.curves.iter().map(|c| c.peer).collect();
    peers.dedup();
    for (i, p) in peers.iter().enumerate() {
        let colour = colours[i % colours.len()];
        let pts: Vec<&Curve> = r.curves.iter().filter(|c| c.peer == *p).collect();
        for (field, dash) in [(0, ""), (1, r#" stroke-dasharray="5,4""#)] {
            let path: Vec<String> = pts
                .iter()
                .map(|c| {
                    format!(
                        "{:.1},{:.1}",
                        x(c.rate as f64),
                        y(if field == 0 { c.p99 } else { c.p50 } as f64)
                    )
                })
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} points="{}"/>"#,
                path.join(" ")
            );
        }
        for c in &pts {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#,
                x(c.rate as f64),
                y(c.p99 as f64)
            );
        }
        let ly = top + 20.0 + 20.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="2"/><text x="{}" y="{}">{}</text>"#,
            left + pw + 10.0,
            left + pw + 34.0,
            left + pw + 40.0,
            ly + 4.0,
            p.name()
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Log10 bounds, widened to whole decades when there is a single point.
fn bounds(v: &[f64]) -> (f64, f64) {
    let lo = v
        .iter()
        .copied()
        .filter(|x| *x > 0.0)
        .fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(1.0, f64::max);
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let (a, b) = (lo.log10().floor(), hi.log10().ceil());
    if b > a { (a, b) } else { (a, a + 1.0) }
}

fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{}k", v / 1e3)
    } else {
        format!("{v}")
    }
}

fn micros(v: f64) -> String {
    if v >= 1e6 {
        format!("{} s", v / 1e6)
    } else if v >= 1e3 {
        format!("{} ms", v / 1e3)
    } else {
        format!("{v} µs")
    }
}

/// Writes results.json, results.md and latency.svg into `--out`.
pub fn write(args: &Args, r: &Results) -> anyhow::Result<()> {
    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_string_pretty(r)? + "\n",
    )?;
    std::fs::write(args.out.join("results.md"), markdown(r))?;
    if !r.curves.is_empty() {
        std::fs::write(args.out.join("latency.svg"), svg(r))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max() {
        let r = Row::new("x", Peer::Nats, "", "m", "u", vec![3.0, 1.0, 2.0]);
        assert_eq!((r.median, r.min, r.max), (2.0, 1.0, 3.0));
        assert_eq!(median(&[4.0, 1.0]), 2.5);
    }

    #[test]
    fn svg_plots_every_peer() {
        let l = |rate, p99| Latency {
            rate,
            achieved: rate as f64,
            p50: p99 / 2,
            p90: p99,
            p99,
            p999: p99,
            max: p99,
        };
        let mut r = Results {
            context: serde_json::json!({}),
            rows: vec![],
            curves: vec![],
            notes: vec![],
        };
        r.curves.push(Curve::median(
            Peer::Telepound,
            1000,
            &[l(1000, 300), l(1000, 500), l(1000, 400)],
        ));
        r.curves
            .push(Curve::median(Peer::Telepound, 10_000, &[l(10_000, 900)]));
        r.curves
            .push(Curve::median(Peer::Nats, 1000, &[l(1000, 100)]));
        assert_eq!(r.curves[0].p99, 400);
        let s = svg(&r);
        assert_eq!(s.matches("<polyline").count(), 4);
        assert!(s.contains(">telepound<") && s.contains(">nats<"));
        assert_eq!(r.knee(Peer::Telepound), Some(10_000));
        let md = markdown(&r);
        assert!(md.contains("| telepound | 10000 |"));
        // A rate that missed caps the knee, whatever passes above it, in
        // whatever order the curves were recorded.
        r.curves
            .push(Curve::median(Peer::Nats, 10_000, &[l(10_000, 200)]));
        r.curves
            .push(Curve::median(Peer::Nats, 5000, &[l(5000, 7000)]));
        assert_eq!(r.knee(Peer::Nats), Some(1000));
        // No knee when the lowest rate missed.
        r.curves
            .push(Curve::median(Peer::Prosody, 5000, &[l(5000, 200)]));
        r.curves
            .push(Curve::median(Peer::Prosody, 1000, &[l(1000, 6000)]));
        assert_eq!(r.knee(Peer::Prosody), None);
        assert!(
            markdown(&r).contains("- prosody: p99 ≥ 5 ms at the lowest rate measured"),
            "{}",
            markdown(&r)
        );
    }

    #[test]
    fn durable_targets_read_their_own_rows() {
        let row = |peer, setting: &str, v| {
            Row::new("durable", peer, setting, "accepted", "msgs/s", vec![v])
        };
        let spread = durable_setting(512, SPREAD_RECIPIENTS);
        let r = Results {
            context: serde_json::json!({}),
            // The spread rows first: a prefix match would take them.
            rows: vec![
                row(Peer::Telepound, &spread, 60.0),
                row(Peer::Jetstream, &spread, 240.0),
                row(Peer::Telepound, "512 in flight", 300.0),
                row(Peer::Jetstream, "512 in flight", 100.0),
            ],
            curves: vec![],
            notes: vec![],
        };
        let t = r.targets();
        let get = |what: &str| t.iter().find(|(w, ..)| w.starts_with(what)).unwrap();
        let one = get("durable accept, 512 in flight: ");
        assert_eq!((one.1.as_str(), one.2), ("3.00×", Some(true)));
        let many = get("durable accept, 512 in flight to 64 recipients");
        assert_eq!((many.1.as_str(), many.2), ("0.25×", Some(false)));
    }
}
