//! The crash test under load: many pairs chat while the server is killed
//! with SIGKILL at random moments and restarted. Every message whose sender
//! saw `accepted` must reach its recipient exactly once, in order.
//!
//! Small by default (it runs in CI); `scripts/crash-test.sh` runs it long
//! with `CRASH_PAIRS`, `CRASH_MESSAGES` and `CRASH_KILLS`.

use std::collections::HashMap;
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

/// Sends `n` messages one after another; returns the texts accepted.
async fn sender(
    url: String,
    home: std::path::PathBuf,
    me: UserName,
    peer: UserName,
    n: usize,
) -> Vec<String> {
    let mut link = login_retrying(&url, &me, &home).await;
    let mut texts: HashMap<telepound_protocol::MsgId, String> = HashMap::new();
    let mut accepted = Vec::new();
    for i in 0..n {
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
        texts.insert(id, text);
        while link.session.queued() > 0 {
            match link.session.flush_outbox().await {
                Ok(done) => {
                    for (p, r) in done {
                        r.unwrap_or_else(|e| panic!("refused: {e}"));
                        accepted.push(texts[&p.msg_id].clone());
                    }
                }
                Err(e) if is_transient(&e) => {
                    link.mark_down();
                    until_up(&mut link).await;
                }
                Err(e) => panic!("flush: {e}"),
            }
        }
    }
    link.session.client().close().await;
    accepted
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
    stop: Arc<tokio::sync::Notify>,
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
            () = stop.notified() => break,
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
    let pairs = env("CRASH_PAIRS", 6);
    let messages = env("CRASH_MESSAGES", 40);
    let kills = env("CRASH_KILLS", 3);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Every client of this test comes from 127.0.0.1: lift the per-address
    // limits meant for the open internet.
    let server = ServerProc::start_with_config(
        &data,
        "max_connections_per_address = 100000\n\
         login_attempts_per_address = 100000\n\
         signups_per_address = 100000\n\
         login_attempts_per_user = 100000\n\
         messages_per_second = 100000\n\
         message_burst = 100000\n",
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
    let killer = {
        let data = data.clone();
        std::thread::spawn(move || {
            let mut server = server;
            let mut rng = rand::rng();
            for _ in 0..kills {
                std::thread::sleep(Duration::from_millis(rng.random_range(300..1200)));
                server.child.kill().unwrap();
                server.child.wait().unwrap();
                std::thread::sleep(Duration::from_millis(rng.random_range(50..400)));
                server.restart_hard(&data);
            }
            server
        })
    };

    let (accepted, seen) = rt.block_on(async {
        let stop = Arc::new(tokio::sync::Notify::new());
        let mut receivers = Vec::new();
        let mut seen = Vec::new();
        for (i, (_, r)) in names.iter().enumerate() {
            let s = Arc::new(Mutex::new(Vec::new()));
            seen.push(s.clone());
            receivers.push(tokio::spawn(receiver(
                url.clone(),
                dir.path().join(format!("r{i}")),
                r.clone(),
                s,
                stop.clone(),
            )));
        }
        let mut senders = Vec::new();
        for (i, (s, r)) in names.iter().enumerate() {
            senders.push(tokio::spawn(sender(
                url.clone(),
                dir.path().join(format!("s{i}")),
                s.clone(),
                r.clone(),
                messages,
            )));
        }
        let mut accepted = Vec::new();
        for s in senders {
            accepted.push(s.await.unwrap());
        }
        // Let the receivers catch up with everything accepted.
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline
            && seen
                .iter()
                .zip(&accepted)
                .any(|(s, a)| s.lock().unwrap().len() < a.len())
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stop.notify_waiters();
        for r in receivers {
            let _ = tokio::time::timeout(Duration::from_secs(5), r).await;
        }
        let seen: Vec<Vec<String>> = seen.iter().map(|s| s.lock().unwrap().clone()).collect();
        (accepted, seen)
    });
    let server = killer.join().unwrap();
    let total: usize = accepted.iter().map(Vec::len).sum();
    for (i, (a, s)) in accepted.iter().zip(&seen).enumerate() {
        assert_eq!(
            a.len(),
            messages,
            "pair {i}: every message was eventually accepted"
        );
        assert_eq!(s, a, "pair {i}: delivered exactly once, in order");
    }
    eprintln!(
        "crash test: {pairs} pairs, {total} messages accepted and delivered exactly once, {kills} SIGKILLs, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    drop(server);
}
