//! `telepound classic`, driven through pipes as the original's test driver
//! drove it.

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::util::*;

fn wait_for(path: &std::path::Path, needle: &str) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never saw {needle:?} in:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn classic_prompt_flow_through_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data"));
    let url = server.url.clone();
    ok(run(tp(&url, &dir.path().join("c"), "carol").arg("signup")));

    // bob signs up through classic and stays, reading.
    let bob_out = dir.path().join("bob.out");
    let mut bob = tp(&url, &dir.path().join("b"), "")
        .env_remove("TELEPOUND_USER")
        .env_remove("TELEPOUND_PASSWORD")
        .arg("classic")
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&bob_out).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut bob_in = bob.stdin.take().unwrap();
    writeln!(bob_in, "s\nbob\n{PASSWORD}\n{PASSWORD}").unwrap();
    wait_for(&bob_out, "Enter Message >");

    // alice signs up in classic too, then sends.
    let alice_script = format!(
        "s\nalice\n{PASSWORD}\n{PASSWORD}\n\
         hello from classic\nbob\n\n\
         to a ghost\nghost\n\n\
         for carol\ncarol\n\n\
         with a file\nbob\n/nonexistent/file.txt\n\
         EXIT\n"
    );
    let mut alice = tp(&url, &dir.path().join("a"), "")
        .env_remove("TELEPOUND_USER")
        .env_remove("TELEPOUND_PASSWORD")
        .arg("classic")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    alice
        .stdin
        .take()
        .unwrap()
        .write_all(alice_script.as_bytes())
        .unwrap();
    let out = wait_output(alice, Duration::from_secs(30));
    let text = ok(out);
    let first_session = text.clone();
    for expected in [
        "Sign-up(s) or Login(l) (s/l) [l] >",
        "Enter Username:",
        "Create Password:",
        "Confirm Password:",
        "Send To >",
        "Enter Filename if you want to attach it >",
        "User Not Found",
        "carol is offline",
        "File not found: /nonexistent/file.txt; sending the text without it.",
        "Bye.",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }

    // bob saw both messages, each with a date line and a time line.
    let seen = wait_for(&bob_out, "with a file");
    assert!(seen.contains("Message from alice:\nDate: "), "{seen}");
    assert!(seen.contains("\nTime: "), "{seen}");
    assert!(seen.contains("hello from classic"), "{seen}");

    // alice logs in again with the classic flow.
    let mut again = tp(&url, &dir.path().join("a2"), "")
        .env_remove("TELEPOUND_USER")
        .env_remove("TELEPOUND_PASSWORD")
        .arg("classic")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    again
        .stdin
        .take()
        .unwrap()
        .write_all(format!("l\nalice\n{PASSWORD}\nEXIT\n").as_bytes())
        .unwrap();
    let text = ok(wait_output(again, Duration::from_secs(30)));
    assert!(text.contains("Enter Password:"), "{text}");
    // bob's receipt reached alice live if her first session was still there
    // when he read the message, else it waited in her mailbox for this login.
    assert!(
        first_session.contains("Message Delivered") || text.contains("Message Delivered"),
        "{first_session}\n---\n{text}"
    );

    writeln!(bob_in, "EXIT").unwrap();
    drop(bob_in);
    let status = bob.wait().unwrap();
    assert!(status.success());
}
