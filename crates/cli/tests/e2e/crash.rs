//! Nothing accepted is lost when the server dies, and a client that dies
//! is noticed.

use std::time::{Duration, Instant};

use telepound_protocol::UserName;

use crate::util::*;

#[test]
fn accepted_messages_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = ServerProc::start(&data);
    let url = server.url.clone();
    let home = dir.path().join("alice");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sent = rt.block_on(async {
        telepound_testkit::signup(&url, "bob").await;
        let (mut alice, _e) = telepound_testkit::user(&url, "alice", &home).await;
        let bob = UserName::new("bob").unwrap();
        let mut sent = Vec::new();
        for i in 0..40 {
            let text = format!("durable {i}");
            alice.send_text(&bob, &text).await.unwrap();
            sent.push(text);
        }
        sent
    });
    // SIGKILL right after the last `accepted`: no chance to flush anything.
    let mut server = server;
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    let server = ServerProc::start(&data);
    let out = ok(run(
        tp(&server.url, &dir.path().join("bob"), "bob").args(["inbox", "--json"])
    ));
    let got: Vec<String> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["type"] == "message")
        .map(|v| v["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got, sent);
}

#[test]
fn sigterm_stops_the_server_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProc::start(&dir.path().join("data"));
    let pid = server.child.id() as i32;
    // SAFETY: sending a signal to our own child process.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let start = Instant::now();
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "server did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    assert!(server.log().contains("stopped"), "{}", server.log());
}

/// Regression: a second Ctrl-C or SIGTERM during a graceful stop was
/// swallowed, so an operator could not stop a server waiting out its grace.
#[test]
fn a_second_sigterm_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut server =
        ServerProc::start_with_config(&dir.path().join("data"), "shutdown_grace_secs = 300\n");
    // An upload in progress keeps the graceful stop waiting for its deadline.
    let url = server.url.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let home = dir.path().join("alice");
    let _upload = rt.block_on(async {
        telepound_testkit::signup(&url, "bob").await;
        let (alice, _e) = telepound_testkit::user(&url, "alice", &home).await;
        let addr = url.trim_start_matches("ws://").parse().unwrap();
        telepound_testkit::hold_upload(addr, alice.token(), "bob").await
    });
    let pid = server.child.id() as i32;
    let sigterm = || {
        // SAFETY: sending a signal to our own child process.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    };
    sigterm();
    // Signals that arrive together may count as one: wait until the first
    // is taken.
    let start = Instant::now();
    while !server.log().contains("stop requested") {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(server.child.try_wait().unwrap().is_none(), "still stopping");
    sigterm();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "a second SIGTERM did not stop the server"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(1), "{status:?}");
    assert!(server.log().contains("stopped at once"), "{}", server.log());
}

#[test]
fn a_killed_client_is_offline_within_30_seconds_and_others_keep_chatting() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data"));
    let url = server.url.clone();
    let (ha, hb, hc) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    for (h, u) in [(&ha, "alice"), (&hb, "bob"), (&hc, "carol")] {
        ok(run(tp(&url, h, u).arg("signup")));
    }
    let mut bob = tp(&url, &hb, "bob")
        .args(["inbox", "--follow"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !ok(run(tp(&url, &ha, "alice").args(["who", "bob"]))).contains("online") {
        assert!(start.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(100));
    }
    bob.kill().unwrap(); // SIGKILL
    bob.wait().unwrap();
    let killed = Instant::now();
    loop {
        let out = ok(run(tp(&url, &ha, "alice").args(["who", "bob"])));
        if out.contains("bob: offline") {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "bob still shown online: {out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    ok(run(tp(&url, &ha, "alice").args([
        "send",
        "carol",
        "unaffected",
    ])));
    let out = ok(run(tp(&url, &hc, "carol").arg("inbox")));
    assert!(out.contains("alice: unaffected"), "{out}");
}
