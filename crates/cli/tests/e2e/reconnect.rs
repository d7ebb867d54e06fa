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
