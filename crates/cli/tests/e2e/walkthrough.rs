//! The README's walkthrough, and the errors a new user meets.

use std::time::{Duration, Instant};

use crate::util::*;

#[test]
fn two_users_chat_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data"));
    let url = server.url.clone();
    let (ha, hb) = (dir.path().join("alice"), dir.path().join("bob"));

    assert!(ok(run(tp(&url, &ha, "alice").arg("signup"))).contains("Signed up as alice"));
    ok(run(tp(&url, &hb, "bob").arg("signup")));
    assert!(ok(run(tp(&url, &ha, "alice").arg("login"))).contains("Logged in as alice"));

    let out = ok(run(
        tp(&url, &ha, "alice").args(["send", "bob", "hello", "bob"])
    ));
    assert!(out.contains("Sent to bob"), "{out}");
    assert!(out.contains("offline"), "{out}");

    let out = ok(run(tp(&url, &ha, "alice").args(["who", "bob"])));
    assert!(out.contains("bob: offline"), "{out}");

    // bob reads on a fresh machine, with a date and a time.
    let fresh = dir.path().join("bob-laptop");
    let out = ok(run(tp(&url, &fresh, "bob").arg("inbox")));
    let line = out
        .lines()
        .find(|l| l.contains("alice: hello bob"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.starts_with('[') && line.contains(':'), "{line}");
    assert!(ok(run(tp(&url, &fresh, "bob").arg("inbox"))).contains("No new messages"));

    // Live: bob follows, alice's send is delivered and confirmed.
    let mut follow = tp(&url, &hb, "bob")
        .args(["inbox", "--follow", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        let out = ok(run(tp(&url, &ha, "alice").args(["who", "bob"])));
        if out.contains("bob: online") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "bob never came online"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    let out = ok(run(tp(&url, &ha, "alice").args([
        "send",
        "bob",
        "are you there?",
    ])));
    assert!(out.contains("Message Delivered"), "{out}");
    follow.kill().unwrap();
    let out = follow.wait_with_output().unwrap();
    let json = stdout(&out);
    let v: serde_json::Value =
        serde_json::from_str(json.lines().next().expect("a JSON line")).unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["from"], "alice");
    assert_eq!(v["text"], "are you there?");
    assert!(v["sent_at"].as_str().unwrap().contains('T'));

    // The safety number is the same on both sides.
    let a = ok(run(tp(&url, &ha, "alice").args(["verify", "bob"])));
    let b = ok(run(tp(&url, &hb, "bob").args(["verify", "alice"])));
    let digits = |s: &str| -> String {
        s.lines()
            .filter(|l| l.starts_with("    "))
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(digits(&a).split_whitespace().count(), 12, "{a}");
    assert_eq!(digits(&a), digits(&b));
    assert!(a.contains("Safety number for alice and bob"), "{a}");
    // Accepting needs the compared number when there is no terminal.
    let e = fails(
        run(tp(&url, &ha, "alice").args(["verify", "--accept", "bob"])),
        1,
    );
    assert!(e.contains("--expect"), "{e}");
    let e = fails(
        run(tp(&url, &ha, "alice").args(["verify", "--accept", "bob", "--expect", "12345"])),
        1,
    );
    assert!(e.contains("NOT accepted"), "{e}");
    let number = digits(&b);
    let out = ok(run(
        tp(&url, &ha, "alice").args(["verify", "--accept", "bob", "--expect", &number])
    ));
    assert!(out.contains("pinned as verified"), "{out}");
    assert!(ok(run(tp(&url, &ha, "alice").args(["verify", "bob"]))).contains("Status: verified"));

    // The server's log says who connected, and never a secret.
    let log = server.log();
    assert!(log.contains("logged in"), "{log}");
    for secret in [PASSWORD, "hello bob", "are you there?"] {
        assert!(!log.contains(secret), "server log holds {secret:?}");
    }
}

#[test]
fn every_user_error_is_one_line_and_a_nonzero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data"));
    let url = server.url.clone();
    let home = dir.path().join("h");
    ok(run(tp(&url, &home, "alice").arg("signup")));

    let e = fails(run(tp(&url, &home, "alice").arg("signup")), 4);
    assert!(e.contains("taken"), "{e}");
    let e = fails(
        run(tp(&url, &home, "alice")
            .arg("login")
            .env("TELEPOUND_PASSWORD", "nope")),
        4,
    );
    assert!(e.contains("wrong user name or password"), "{e}");
    let e = fails(run(tp(&url, &home, "zed").arg("login")), 4);
    assert!(e.contains("User Not Found"), "{e}");
    let e = fails(run(tp(&url, &home, "Alice!").arg("login")), 1);
    assert!(e.contains("invalid name"), "{e}");
    let e = fails(
        run(tp(&url, &home, "alice").args(["send", "nobody", "hi"])),
        4,
    );
    assert!(e.contains("User Not Found: nobody"), "{e}");
    let e = fails(run(tp("ws://127.0.0.1:9", &home, "alice").arg("login")), 3);
    assert!(e.contains("cannot connect"), "{e}");
    let e = fails(
        run(tp(&url, &home, "alice")
            .arg("login")
            .env_remove("TELEPOUND_PASSWORD")),
        1,
    );
    assert!(e.contains("no password given"), "{e}");
    let e = fails(
        run(tp(&url, &home, "alice")
            .arg("signup")
            .env("TELEPOUND_ARGON2", "m=1")),
        1,
    );
    assert!(e.contains("argon2"), "{e}");
    let e = fails(run(tp(&url, &home, "alice").args(["who", "ghost"])), 4);
    assert!(e.contains("ghost"), "{e}");

    // Bad command lines: one line and exit code 2, never a panic (a Vec
    // positional is optional to clap unless it is told otherwise).
    for (args, says) in [
        (&["send"][..], "<TO TEXT>"),
        (&["send", "--file", "x.png"], "<TO TEXT>"),
        (&["send", "bob"], "nothing to send"),
        (&["send", "--group"], "--group"),
        (&["who"], "<USERS>"),
        (&["group", "add", "team"], "<USERS>"),
        (&["verify"], "<USER>"),
        (&["frobnicate"], "unrecognized subcommand"),
    ] {
        let e = fails(run(tp(&url, &home, "alice").args(args)), 2);
        assert!(e.contains(says), "{args:?}: {e}");
    }

    let pwfile = dir.path().join("pw");
    std::fs::write(&pwfile, format!("{PASSWORD}\n")).unwrap();
    ok(run(tp(&url, &home, "alice")
        .env_remove("TELEPOUND_PASSWORD")
        .arg("--password-file")
        .arg(&pwfile)
        .arg("login")));

    // A server that cannot start says why in one line.
    let busy = server.url.trim_start_matches("ws://").to_owned();
    let o = run(std::process::Command::new(BIN)
        .args(["serve", "--listen", &busy, "--data-dir"])
        .arg(dir.path().join("d2")));
    let e = fails(o, 1);
    assert!(e.contains("cannot listen"), "{e}");
}
