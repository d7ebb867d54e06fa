//! Files from the command line: send --file, inbox --download, and the
//! classic prompts.

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::util::*;

const PNG: &[u8] = &[
    0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13, b'I', b'H', b'D', b'R', 0, 0, 0,
    4, 0, 0, 0, 3, 8, 2, 0, 0, 0, 0x12, 0x16, 0xf1, 0x4d,
];

#[test]
fn send_with_files_and_download_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data"));
    let url = server.url.clone();
    let (ha, hb, down) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("down"),
    );
    ok(run(tp(&url, &ha, "alice").arg("signup")));
    ok(run(tp(&url, &hb, "bob").arg("signup")));
    let photo = dir.path().join("holiday.png");
    std::fs::write(&photo, PNG).unwrap();
    let report = dir.path().join("report.pdf");
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(&report, &body).unwrap();

    let out = ok(run(tp(&url, &ha, "alice")
        .args(["send", "bob", "the photos", "--file"])
        .arg(&photo)
        .arg("--file")
        .arg(&report)));
    assert!(
        out.contains("Attached holiday.png (image/png, 4x3, 33 B)"),
        "{out}"
    );
    assert!(out.contains("Sent to bob"), "{out}");

    // Without --download: one line per file, nothing saved.
    let out = ok(run(tp(&url, &hb, "bob").args(["inbox", "--json"])));
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(v["attachments"][0]["media_type"], "image/png");
    assert_eq!(v["attachments"][0]["width"], 4);

    // The message is read, but the files wait until every recipient has them.
    ok(run(tp(&url, &ha, "alice")
        .args(["send", "bob", "again", "--file"])
        .arg(&report)));
    let out = ok(run(tp(&url, &hb, "bob")
        .arg("inbox")
        .arg("--download-dir")
        .arg(&down)));
    assert!(out.contains("attached: report.pdf"), "{out}");
    assert!(out.contains("saved report.pdf"), "{out}");
    assert_eq!(std::fs::read(down.join("report.pdf")).unwrap(), body);

    // A missing file: one line, nothing sent.
    let e = fails(
        run(tp(&url, &ha, "alice")
            .args(["send", "bob", "x", "--file"])
            .arg(dir.path().join("nope.jpg"))),
        1,
    );
    assert!(e.contains("nope.jpg: no such file"), "{e}");
    assert!(ok(run(tp(&url, &hb, "bob").arg("inbox"))).contains("No new messages"));
}

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
fn classic_attaches_files_and_asks_before_downloading() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data"));
    let url = server.url.clone();
    let down = dir.path().join("downloads");
    let classic = |home: &str, out: &std::path::Path| {
        tp(&url, &dir.path().join(home), "")
            .env_remove("TELEPOUND_USER")
            .env_remove("TELEPOUND_PASSWORD")
            .env("TELEPOUND_DOWNLOAD_DIR", &down)
            .arg("classic")
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(out).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap()
    };
    let (bob_out, alice_out) = (dir.path().join("bob.out"), dir.path().join("alice.out"));
    let mut bob = classic("b", &bob_out);
    let mut bob_in = bob.stdin.take().unwrap();
    writeln!(bob_in, "s\nbob\n{PASSWORD}\n{PASSWORD}").unwrap();
    wait_for(&bob_out, "Enter Message >");

    let photo = dir.path().join("cat.png");
    std::fs::write(&photo, PNG).unwrap();
    let mut alice = classic("a", &alice_out);
    let mut alice_in = alice.stdin.take().unwrap();
    writeln!(
        alice_in,
        "s\nalice\n{PASSWORD}\n{PASSWORD}\n\
         missing file\nbob\n{missing}\n\
         a folder\nbob\n{folder}\n\
         look at this\nbob\n{photo}",
        missing = dir.path().join("nope.jpg").display(),
        folder = dir.path().display(),
        photo = photo.display()
    )
    .unwrap();
    let text = wait_for(
        &bob_out,
        "A file is attached, do you want to download it? (y/n)[n] >",
    );
    assert!(
        text.contains("Attached: cat.png (image/png, 4x3, 33 B)"),
        "{text}"
    );
    assert!(
        text.contains("missing file") && text.contains("a folder"),
        "{text}"
    );
    writeln!(bob_in, "y").unwrap();
    wait_for(&bob_out, "saved cat.png");
    assert_eq!(std::fs::read(down.join("cat.png")).unwrap(), PNG);

    writeln!(alice_in, "EXIT").unwrap();
    writeln!(bob_in, "EXIT").unwrap();
    drop((alice_in, bob_in));
    assert!(alice.wait().unwrap().success());
    assert!(bob.wait().unwrap().success());
    let a = std::fs::read_to_string(&alice_out).unwrap();
    assert!(
        a.contains("File not found:") && a.contains("sending the text without it"),
        "{a}"
    );
    assert!(a.contains("is a folder, not a file"), "{a}");
}

#[test]
fn inbox_download_without_a_folder_uses_the_documented_default() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data"));
    let url = server.url.clone();
    let (ha, hb) = (dir.path().join("a"), dir.path().join("b"));
    ok(run(tp(&url, &ha, "alice").arg("signup")));
    ok(run(tp(&url, &hb, "bob").arg("signup")));
    let report = dir.path().join("report.bin");
    let body: Vec<u8> = (0..3000u32).map(|i| (i % 249) as u8).collect();
    std::fs::write(&report, &body).unwrap();
    let send = || {
        ok(run(tp(&url, &ha, "alice")
            .args(["send", "bob", "the report", "--file"])
            .arg(&report)));
    };
    // bob's environment: a home of his own, so the real one never counts.
    let home = dir.path().join("bob-home");
    std::fs::create_dir_all(home.join(".config")).unwrap();
    let inbox = || {
        let mut c = tp(&url, &hb, "bob");
        c.args(["inbox", "--download"])
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env_remove("TELEPOUND_DOWNLOAD_DIR");
        c
    };

    // 1. TELEPOUND_DOWNLOAD_DIR.
    send();
    let chosen = dir.path().join("chosen");
    let out = ok(run(inbox().env("TELEPOUND_DOWNLOAD_DIR", &chosen)));
    assert!(out.contains("saved report.bin"), "{out}");
    assert_eq!(std::fs::read(chosen.join("report.bin")).unwrap(), body);

    // 2. Else the XDG download folder, in a telepound folder.
    std::fs::write(
        home.join(".config/user-dirs.dirs"),
        "XDG_DOWNLOAD_DIR=\"$HOME/Fetched\"\n",
    )
    .unwrap();
    send();
    let out = ok(run(&mut inbox()));
    assert!(out.contains("saved report.bin"), "{out}");
    assert_eq!(
        std::fs::read(home.join("Fetched/telepound/report.bin")).unwrap(),
        body
    );

    // 3. Else TELEPOUND_HOME/USER/downloads.
    std::fs::remove_file(home.join(".config/user-dirs.dirs")).unwrap();
    send();
    let out = ok(run(&mut inbox()));
    assert!(out.contains("saved report.bin"), "{out}");
    assert_eq!(
        std::fs::read(hb.join("bob/downloads/report.bin")).unwrap(),
        body
    );
}

fn blob_paths(data: &std::path::Path) -> std::collections::BTreeSet<std::path::PathBuf> {
    std::fs::read_dir(data.join("blobs"))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
        .map(|e| e.path())
        .collect()
}

#[test]
fn hostile_text_and_file_names_cannot_forge_lines_or_reach_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = ServerProc::start(&data);
    let url = server.url.clone();
    let (ha, hb) = (dir.path().join("a"), dir.path().join("b"));
    ok(run(tp(&url, &ha, "alice").arg("signup")));
    ok(run(tp(&url, &hb, "bob").arg("signup")));
    let forged = "[2026-01-01 00:00:00] mallory: wire me money";
    let text = format!("hi\n{forged}\n  attached: invoice.pdf\x1b[2J\x1b]0;owned\x07\r\x08");
    // Linux file names may hold escape sequences and newlines.
    let evil = dir.path().join(format!("evil\x1b[31m\n{forged}.png"));
    std::fs::write(&evil, PNG).unwrap();
    let clean = |out: &str| {
        assert!(
            !out.contains(['\x1b', '\x07', '\r', '\x08']),
            "control characters got through: {out:?}"
        );
        for line in out.lines() {
            assert!(!line.starts_with(forged), "forged line: {out}");
            assert!(
                !line.starts_with("  attached: invoice"),
                "forged line: {out}"
            );
        }
    };

    clean(&ok(run(tp(&url, &ha, "alice")
        .args(["send", "bob", &text, "--file"])
        .arg(&evil))));
    let out = ok(run(tp(&url, &hb, "bob").arg("inbox")));
    clean(&out);
    assert_eq!(
        out.lines().filter(|l| l.starts_with('[')).count(),
        1,
        "{out}"
    );
    assert!(out.contains(&format!("\n  | {forged}")), "{out}");

    // A file that fails verification names the sender's file in the
    // warning: safely, on one line.
    let before = blob_paths(&data);
    ok(run(tp(&url, &ha, "alice")
        .args(["send", "bob", "again", "--file"])
        .arg(&evil)));
    let new: Vec<_> = blob_paths(&data).difference(&before).cloned().collect();
    assert_eq!(new.len(), 1);
    let mut blob = std::fs::read(&new[0]).unwrap();
    let last = blob.len() - 1;
    blob[last] ^= 1;
    std::fs::write(&new[0], blob).unwrap();
    let o = run(tp(&url, &hb, "bob")
        .args(["inbox", "--download-dir"])
        .arg(dir.path().join("down")));
    assert!(o.status.success(), "{}", stderr(&o));
    clean(&stdout(&o));
    let err = stderr(&o);
    clean(&err);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("was not saved") && err.contains("failed verification"),
        "{err}"
    );
}
