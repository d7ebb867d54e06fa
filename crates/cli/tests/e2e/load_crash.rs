//! The crash test under load: many pairs chat while the server is killed
//! with SIGKILL at random moments and restarted. Every message whose sender
//! saw `accepted` must reach its recipient exactly once, in order.
//!
//! The kills must hit messages in flight, or they prove nothing: the first
//! comes only once every sender is under way, senders keep sending (one
//! message at a time, each retried until accepted) until the last restart,
//! and the test fails unless some kill found a message sent and not yet
//! accepted and some message cut off by a kill was accepted after a
//! restart.
//!
//! It runs three ways: with recipients online throughout (most messages are
//! acknowledged in the ack window and never written); online with the ack
//! window off, so that every message is written to the envelope log (which
//! the server here uses for every run of inserts) and deleted on its ack
//! while the kills go on; and with recipients away until the senders are
//! done, so that every message is stored and read back after restarts.
//!
//! Small by default (it runs in CI); `scripts/crash-test.sh` runs it long
//! with `CRASH_PAIRS`, `CRASH_MESSAGES` (the minimum per pair) and
//! `CRASH_KILLS`.

use std::collections::HashMap;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::RngExt;
use telepound_client::{ConnectOptions, Inbound, Link, Session, Step, account, is_transient};
use telepound_protocol::UserName;
use zeroize::Zeroizing;

use crate::util::*;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Logs in, waiting out a server that is down.
async fn login_retrying(url: &str, user: &UserName, home: &std::path::Path) -> Link {
    loop {
        if let Ok((client, events)) = telepound_client::Client::connect(url).await {
            match account::login(&client, user, PASSWORD.as_bytes(), home).await {
                Ok(session) => {
                    return Link::new(
                        session,
                        events,
                        ConnectOptions::default(),
                        Some(Zeroizing::new(PASSWORD.as_bytes().to_vec())),
                    );
                }
                Err(e) if is_transient(&e) => {}
                Err(e) => panic!("login: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the link is back up.
async fn until_up(link: &mut Link) {
    loop {
        match link.step().await {
            Ok(Step::Restored) => return,
            Ok(_) => {}
            Err(e) => panic!("reconnect: {e}"),
        }
    }
}

/// What the senders and the killer share, to show that the kills landed
/// while messages were in flight.
#[derive(Default)]
struct Shared {
    /// Senders whose first message was accepted: the killer waits for all
    /// of them, so no kill is spent before the load is there.
    running: AtomicUsize,
    /// Messages handed to the server (a flush under way) whose sender has
    /// not yet seen `accepted`, across all senders.
    unacked: AtomicUsize,
    /// Set once the last restarted server is up (or the killer failed):
    /// from then on a sender stops after its minimum.
    kills_done: AtomicBool,
}

/// Sets [`Shared::kills_done`] when the killer ends, even by a panic, so
/// no sender waits for kills that will never come.
struct KillsDone(Arc<Shared>);

impl Drop for KillsDone {
    fn drop(&mut self) {
        self.0.kills_done.store(true, SeqCst);
    }
}

/// One sender's record.
#[derive(Default)]
struct Sent {
    /// Every text queued, in order.
    sent: Vec<String>,
    /// Every text whose `accepted` arrived, in order.
    accepted: Vec<String>,
    /// Messages whose flush was cut by a lost connection (the server was
    /// killed holding it, or before it went out) and that a restarted
    /// server then accepted.
    accepted_after_a_crash: usize,
}

/// Sends one message at a time, each only after the last was accepted: at
/// least `at_least`, and on while the killer is still at work, but never
/// more than `at_most`.
async fn sender(
    url: String,
    home: std::path::PathBuf,
    (me, peer): (UserName, UserName),
    (at_least, at_most): (usize, usize),
    shared: Arc<Shared>,
) -> Sent {
    let mut link = login_retrying(&url, &me, &home).await;
    let mut texts: HashMap<telepound_protocol::MsgId, String> = HashMap::new();
    let mut out = Sent::default();
    let mut i = 0;
    while i < at_most && (i < at_least || !shared.kills_done.load(SeqCst)) {
        let text = format!("{me}->{peer} #{i}");
        let id = loop {
            match link.session.queue_text(&peer, &text).await {
                Ok(id) => break id,
                Err(e) if is_transient(&e) => {
                    link.mark_down();
                    until_up(&mut link).await;
                }
                Err(e) => panic!("queue: {e}"),
            }
        };
        texts.insert(id, text.clone());
        out.sent.push(text);
        shared.unacked.fetch_add(1, SeqCst);
        let mut cut = false;
        while link.session.queued() > 0 {
            match link.session.flush_outbox().await {
                Ok(done) => {
                    for (p, r) in done {
                        r.unwrap_or_else(|e| panic!("refused: {e}"));
                        out.accepted.push(texts[&p.msg_id].clone());
                        shared.unacked.fetch_sub(1, SeqCst);
                        if cut {
                            out.accepted_after_a_crash += 1;
                        }
                    }
                }
                Err(e) if is_transient(&e) => {
                    cut = true;
                    link.mark_down();
                    until_up(&mut link).await;
                }
                Err(e) => panic!("flush: {e}"),
            }
        }
        if i == 0 {
            shared.running.fetch_add(1, SeqCst);
        }
        i += 1;
    }
    link.session.client().close().await;
    out
}

fn record(seen: &Mutex<Vec<String>>, i: &Inbound) {
    if let Inbound::Message(r) = i {
        seen.lock().unwrap().push(r.payload.text.clone());
    }
}

/// Follows the mailbox through every restart until told to stop.
async fn receiver(
    url: String,
    home: std::path::PathBuf,
    me: UserName,
    seen: Arc<Mutex<Vec<String>>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut link = login_retrying(&url, &me, &home).await;
    let mut up_to_date = false;
    loop {
        if !up_to_date {
            let session: &mut Session = &mut link.session;
            match session
                .catch_up(&mut link.events, |i| record(&seen, i))
                .await
            {
                Ok(_) => up_to_date = true,
                Err(e) if is_transient(&e) => {
                    link.mark_down();
                    until_up(&mut link).await;
                    continue;
                }
                Err(e) => panic!("catch up: {e}"),
            }
        }
        tokio::select! {
            // (The guard `wait_for` returns must not live on in `select!`.)
            () = async { drop(stop.wait_for(|stop| *stop).await) } => break,
            step = link.step() => match step.expect("link") {
                Step::Event(ev) => {
                    let mut acks = Vec::new();
                    match link.session.handle_event(ev, &mut acks).await {
                        Ok(Some(i)) => record(&seen, &i),
                        Ok(None) => {}
                        Err(e) if is_transient(&e) => continue,
                        Err(e) => panic!("handle: {e}"),
                    }
                    let _ = link.session.ack(acks).await;
                }
                Step::Lost(_) => {}
                Step::Restored => up_to_date = false,
            },
        }
    }
}

#[test]
fn crash_under_load_loses_nothing_accepted() {
    crash_under_load(Mode::Live);
}

#[test]
fn crash_under_load_with_every_message_written_loses_nothing_accepted() {
    crash_under_load(Mode::Written);
}

#[test]
fn crash_under_load_with_recipients_away_loses_nothing_accepted() {
    crash_under_load(Mode::Away);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Recipients online, with the ack window.
    Live,
    /// Recipients online, no ack window: every message is written.
    Written,
    /// Recipients log in once the senders are done (and the kills over).
    Away,
}

/// Bytes in the envelope log's segments under `data` (a segment removed
/// while it is read counts nothing).
fn envelope_log_bytes(data: &std::path::Path) -> u64 {
    std::fs::read_dir(data.join("telepound.sqlite3-envelopes"))
        .map(|dir| {
            dir.filter_map(|e| Some(e.ok()?.metadata().ok()?.len()))
                .sum::<u64>()
        })
        .unwrap_or(0)
}

fn crash_under_load(mode: Mode) {
    let recipients_away = mode == Mode::Away;
    let pairs = env("CRASH_PAIRS", 6);
    let messages = env("CRASH_MESSAGES", 40);
    let kills = env("CRASH_KILLS", 3);
    // Senders keep going while the killer works; this bounds them should
    // the server come back slowly (each send waits for the last).
    let at_most = messages.max(1) * 50;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Every client of this test comes from 127.0.0.1: lift the per-address
    // limits meant for the open internet.
    let server = ServerProc::start_with_config(
        &data,
        &format!(
            "max_connections_per_address = 100000\n\
         login_attempts_per_address = 100000\n\
         signups_per_address = 100000\n\
         login_attempts_per_user = 100000\n\
         messages_per_second = 100000\n\
         message_burst = 100000\n\
         envelope_log_min_kib = 0\n\
         {}",
            if mode == Mode::Written {
                "ack_window_ms = 0\n"
            } else {
                ""
            }
        ),
    );
    let url = server.url.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let names: Vec<(UserName, UserName)> = (0..pairs)
        .map(|i| {
            (
                UserName::new(format!("s{i}")).unwrap(),
                UserName::new(format!("r{i}")).unwrap(),
            )
        })
        .collect();
    rt.block_on(async {
        for (s, r) in &names {
            telepound_testkit::signup(&url, s.as_str()).await;
            telepound_testkit::signup(&url, r.as_str()).await;
        }
    });

    let started = Instant::now();
    let shared = Arc::new(Shared::default());
    // For each kill: how many messages were sent and not yet accepted the
    // moment before the SIGKILL.
    let killer = {
        let data = data.clone();
        let shared = shared.clone();
        std::thread::spawn(move || {
            let _done = KillsDone(shared.clone());
            let mut server = server;
            let mut rng = rand::rng();
            let deadline = Instant::now() + Duration::from_secs(60);
            while shared.running.load(SeqCst) < pairs {
                assert!(Instant::now() < deadline, "the senders never got going");
                std::thread::sleep(Duration::from_millis(10));
            }
            let mut in_flight = Vec::new();
            for _ in 0..kills {
                std::thread::sleep(Duration::from_millis(rng.random_range(300..1200)));
                in_flight.push(shared.unacked.load(SeqCst));
                server.child.kill().unwrap();
                server.child.wait().unwrap();
                std::thread::sleep(Duration::from_millis(rng.random_range(50..400)));
                server.restart_hard(&data);
            }
            (server, in_flight)
        })
    };

    let (sent, seen) = rt.block_on(async {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut receivers = Vec::new();
        let seen: Vec<_> = names
            .iter()
            .map(|_| Arc::new(Mutex::new(Vec::new())))
            .collect();
        let start_receivers = |receivers: &mut Vec<_>| {
            for (i, (_, r)) in names.iter().enumerate() {
                receivers.push(tokio::spawn(receiver(
                    url.clone(),
                    dir.path().join(format!("r{i}")),
                    r.clone(),
                    seen[i].clone(),
                    stopped.clone(),
                )));
            }
        };
        if !recipients_away {
            start_receivers(&mut receivers);
        }
        let mut senders = Vec::new();
        for (i, pair) in names.iter().enumerate() {
            senders.push(tokio::spawn(sender(
                url.clone(),
                dir.path().join(format!("s{i}")),
                pair.clone(),
                (messages, at_most),
                shared.clone(),
            )));
        }
        let mut sent = Vec::new();
        for s in senders {
            sent.push(s.await.unwrap());
        }
        if recipients_away {
            // Every accepted message is stored by now, its envelope (about
            // 2.4 KB) in the log.
            let accepted: usize = sent.iter().map(|s: &Sent| s.accepted.len()).sum();
            let logged = envelope_log_bytes(&data);
            assert!(
                logged >= accepted as u64 * 2000,
                "the stored messages went to the envelope log: {logged} bytes for {accepted}"
            );
            start_receivers(&mut receivers);
        }
        // Let the receivers catch up with everything accepted.
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline
            && seen
                .iter()
                .zip(&sent)
                .any(|(s, a)| s.lock().unwrap().len() < a.accepted.len())
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = stop.send(true);
        for r in receivers {
            let _ = tokio::time::timeout(Duration::from_secs(5), r).await;
        }
        let seen: Vec<Vec<String>> = seen.iter().map(|s| s.lock().unwrap().clone()).collect();
        (sent, seen)
    });
    let (server, in_flight) = killer.join().unwrap();
    let total: usize = sent.iter().map(|s| s.accepted.len()).sum();
    let after_a_crash: usize = sent.iter().map(|s| s.accepted_after_a_crash).sum();
    for (i, (s, seen)) in sent.iter().zip(&seen).enumerate() {
        assert!(s.sent.len() >= messages, "pair {i}: sent its minimum");
        assert_eq!(
            s.accepted, s.sent,
            "pair {i}: every message was eventually accepted"
        );
        assert_eq!(
            seen, &s.accepted,
            "pair {i}: delivered exactly once, in order"
        );
    }
    eprintln!(
        "crash test ({mode:?}): {pairs} pairs, {total} messages accepted and delivered exactly once \
         (at least {messages} a pair), {kills} SIGKILLs with {in_flight:?} messages sent and not \
         yet accepted at each, {after_a_crash} messages cut off by a kill and accepted after a \
         restart, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // The point of the test: kills that land while nothing is in flight
    // prove nothing about messages in flight.
    if kills > 0 {
        assert!(
            in_flight.iter().any(|&n| n > 0),
            "no kill landed while a message was unacknowledged: {in_flight:?}"
        );
        assert!(
            after_a_crash > 0,
            "no message was cut off by a kill and accepted after a restart"
        );
    }
    drop(server);
}
