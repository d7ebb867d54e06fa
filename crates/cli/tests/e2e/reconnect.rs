//! Clients survive the server going away: they say so, reconnect with
//! backoff, log in again without the password prompt, and resume; what was
//! typed meanwhile is sent once.

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::util::*;

fn wait_for(path: &std::path::Path, needle: &str, secs: u64) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "never saw {needle:?} in:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn follow_and_classic_survive_a_server_crash_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = ServerProc::start(&data);
    let url = server.url.clone();
    let (ha, hb) = (dir.path().join("a"), dir.path().join("b"));
    ok(run(tp(&url, &ha, "alice").arg("signup")));
    ok(run(tp(&url, &hb, "bob").arg("signup")));

    // bob follows; his output goes to files we can watch.
    let (bob_out, bob_err) = (dir.path().join("bob.out"), dir.path().join("bob.err"));
    let mut bob = tp(&url, &hb, "bob")
        .args(["inbox", "--follow"])
        .stdout(std::fs::File::create(&bob_out).unwrap())
        .stderr(std::fs::File::create(&bob_err).unwrap())
        .spawn()
        .unwrap();
    wait_for(&bob_out, "Waiting for messages", 10);

    // alice chats in classic, first while the server is up.
    let alice_out = dir.path().join("alice.out");
    let mut alice = tp(&url, &ha, "")
        .env_remove("TELEPOUND_USER")
        .env_remove("TELEPOUND_PASSWORD")
        .arg("classic")
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&alice_out).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut alice_in = alice.stdin.take().unwrap();
    writeln!(alice_in, "l\nalice\n{PASSWORD}\nbefore the crash\nbob\n").unwrap();
    wait_for(&bob_out, "alice: before the crash", 10);

    // The server dies hard.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    wait_for(&alice_out, "Connection to the server lost", 10);
    wait_for(&bob_err, "connection to the server lost", 10);

    // alice types while it is down: kept, not lost.
    writeln!(alice_in, "typed while down\nbob\n").unwrap();
    wait_for(
        &alice_out,
        "queued and will be sent when the connection is back",
        10,
    );

    server.restart_hard(&data);
    assert_eq!(server.url, url, "same port");
    wait_for(&alice_out, "Reconnected.", 30);
    wait_for(&bob_err, "reconnected", 30);
    let seen = wait_for(&bob_out, "alice: typed while down", 30);
    writeln!(alice_in, "after the crash\nbob\n").unwrap();
    let seen_all = wait_for(&bob_out, "alice: after the crash", 15);
    assert!(seen.contains("before the crash"));
    assert_eq!(
        seen_all.matches("typed while down").count(),
        1,
        "exactly once:\n{seen_all}"
    );
    assert_eq!(
        seen_all.matches("before the crash").count(),
        1,
        "exactly once:\n{seen_all}"
    );

    writeln!(alice_in, "EXIT").unwrap();
    drop(alice_in);
    assert!(alice.wait().unwrap().success());
    bob.kill().unwrap();
    bob.wait().unwrap();
}

#[test]
fn send_retries_within_its_limit_then_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = ServerProc::start(&data);
    let url = server.url.clone();
    let (ha, hb) = (dir.path().join("a"), dir.path().join("b"));
    ok(run(tp(&url, &ha, "alice").arg("signup")));
    ok(run(tp(&url, &hb, "bob").arg("signup")));
    ok(run(tp(&url, &ha, "alice").args(["send", "bob", "first"])));

    // Down at the start, back two seconds later: the send goes through.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let sender = tp(&url, &ha, "alice")
        .args(["send", "bob", "eventually"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    server.restart_hard(&data);
    let out = ok(wait_output(sender, Duration::from_secs(30)));
    assert!(out.contains("Sent to bob"), "{out}");

    // Down for good: a clear failure within the limit.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let start = Instant::now();
    let o = run(tp(&url, &ha, "alice")
        .args(["send", "bob", "never"])
        .env("TELEPOUND_SEND_TIMEOUT_SECS", "2"));
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.lines()
            .last()
            .unwrap()
            .starts_with("telepound: error: cannot connect"),
        "{err}"
    );

    server.restart_hard(&data);
    let out = ok(run(tp(&server.url, &hb, "bob").arg("inbox")));
    assert_eq!(out.matches("alice: eventually").count(), 1, "{out}");
    assert_eq!(out.matches("alice: first").count(), 1, "{out}");
}

#[test]
fn send_gives_up_on_a_server_that_accepts_and_never_answers() {
    let dir = tempfile::tempdir().unwrap();
    // A real listener that takes the connection and reads nothing: the
    // WebSocket handshake never completes, no error ever comes.
    let hole = Proxy::black_hole();
    let start = Instant::now();
    let e = fails(
        run(tp(&hole.url(), &dir.path().join("a"), "alice")
            .args(["send", "bob", "hello?"])
            .env("TELEPOUND_SEND_TIMEOUT_SECS", "2")),
        3,
    );
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "took {:?}",
        start.elapsed()
    );
    assert!(
        e.contains("could not send within 2 s") && e.contains("nothing was sent"),
        "{e}"
    );
}

#[test]
fn follow_notices_a_server_that_goes_silent_and_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data"));
    let url = server.url.clone();
    let (ha, hb) = (dir.path().join("a"), dir.path().join("b"));
    ok(run(tp(&url, &ha, "alice").arg("signup")));
    ok(run(tp(&url, &hb, "bob").arg("signup")));

    // bob follows through a proxy that will stop forwarding without
    // closing anything, as when the server's machine vanishes.
    let proxy = Proxy::start(server.port());
    let (bob_out, bob_err) = (dir.path().join("bob.out"), dir.path().join("bob.err"));
    let mut bob = tp(&proxy.url(), &hb, "bob")
        .args(["inbox", "--follow"])
        .env("TELEPOUND_IDLE_TIMEOUT_SECS", "3")
        .stdout(std::fs::File::create(&bob_out).unwrap())
        .stderr(std::fs::File::create(&bob_err).unwrap())
        .spawn()
        .unwrap();
    wait_for(&bob_out, "Waiting for messages", 10);
    // A live server answers the client's pings: no false alarm meanwhile.
    std::thread::sleep(Duration::from_secs(5));
    let err = std::fs::read_to_string(&bob_err).unwrap();
    assert!(!err.contains("lost"), "{err}");

    proxy.freeze();
    let err = wait_for(&bob_err, "connection to the server lost", 20);
    assert!(err.contains("no answer from the server"), "{err}");
    proxy.thaw();
    wait_for(&bob_err, "reconnected", 30);
    ok(run(tp(&url, &ha, "alice").args([
        "send",
        "bob",
        "after the silence",
    ])));
    wait_for(&bob_out, "alice: after the silence", 15);
    bob.kill().unwrap();
    bob.wait().unwrap();
}

/// Freezes `proxy` once `after` bytes have moved.
struct FreezeAt {
    proxy: std::sync::Arc<Proxy>,
    seen: std::sync::atomic::AtomicU64,
    after: u64,
}

impl telepound_client::Progress for FreezeAt {
    fn advance(&self, n: u64) {
        use std::sync::atomic::Ordering::SeqCst;
        if self.seen.fetch_add(n, SeqCst) + n >= self.after {
            self.proxy.freeze();
        }
    }
}

/// A server that goes silent in the middle of a transfer (its machine
/// vanished; TCP stays open, nothing more arrives) ends the upload or the
/// download within the client's idle timeout with a clear error, and the
/// next try, once the server is reachable, resumes where it stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_to_a_server_gone_silent_ends_in_time_and_resumes() {
    use std::sync::Arc;
    use telepound_client::files::{Uploads, download};
    use telepound_client::http::Http;
    use telepound_client::{ConnectOptions, NoProgress};

    let server = telepound_testkit::spawn_server().await;
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let (ha, hb, down) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("d"),
    );
    let (alice, _ae) = telepound_testkit::user(&url, "alice", &ha).await;
    let (bob, _be) = telepound_testkit::user(&url, "bob", &hb).await;
    let file = dir.path().join("big.bin");
    let data: Vec<u8> = (0..6 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    let to = [telepound_protocol::UserName::new("bob").unwrap()];
    let options = ConnectOptions {
        idle_timeout: Duration::from_secs(2),
        ..ConnectOptions::default()
    };

    // Upload through a proxy that goes silent after 1 MiB.
    let proxy = Arc::new(Proxy::start(server.addr.port()));
    let via_proxy = Http::new(&proxy.url(), &options).unwrap();
    let mut uploads = Uploads::load(&ha).unwrap();
    let mut o = uploads.prepare(&file, &to).await.unwrap();
    let freeze = Arc::new(FreezeAt {
        proxy: proxy.clone(),
        seen: Default::default(),
        after: 1024 * 1024,
    });
    let started = Instant::now();
    let e = uploads
        .upload(&via_proxy, alice.token(), &mut o, &to, freeze)
        .await
        .unwrap_err();
    ended_by_the_stall_limit(&e, started);
    // The next try, straight to the server, continues the same blob.
    let direct = alice.http().unwrap();
    let att = uploads
        .upload(&direct, alice.token(), &mut o, &to, Arc::new(NoProgress))
        .await
        .unwrap();

    // Download through a fresh proxy that goes silent after 2 MiB.
    let proxy = Arc::new(Proxy::start(server.addr.port()));
    let via_proxy = Http::new(&proxy.url(), &options).unwrap();
    let freeze = Arc::new(FreezeAt {
        proxy: proxy.clone(),
        seen: Default::default(),
        after: 2 * 1024 * 1024,
    });
    let started = Instant::now();
    let e = download(&via_proxy, bob.token(), &att, &down, freeze)
        .await
        .unwrap_err();
    ended_by_the_stall_limit(&e, started);
    let part = down.join(format!(".telepound-{}.part", att.blob_id));
    assert!(
        std::fs::metadata(&part).unwrap().len() >= 1024 * 1024,
        "kept"
    );
    let saved = bob
        .download(&att, &down, Arc::new(NoProgress))
        .await
        .unwrap();
    assert_eq!(std::fs::read(saved).unwrap(), data);
    server.stop().await;
}

/// A transfer that stalled ended with the stall limit's error, in time.
fn ended_by_the_stall_limit(e: &impl std::fmt::Display, started: Instant) {
    assert!(e.to_string().contains("moved nothing"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}
