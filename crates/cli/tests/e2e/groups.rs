//! Groups from the command line.

use std::io::Write;
use std::process::Stdio;

use crate::util::*;

#[test]
fn group_commands_and_messages() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data"));
    let url = server.url.clone();
    let h = |u: &str| dir.path().join(u);
    for u in ["alice", "bob", "carol", "dave"] {
        ok(run(tp(&url, &h(u), u).arg("signup")));
    }
    let out = ok(run(
        tp(&url, &h("alice"), "alice").args(["group", "create", "team", "bob", "carol"])
    ));
    assert!(
        out.contains("Created #team") && out.contains("alice") && out.contains("owner"),
        "{out}"
    );

    // A member who is not an admin: one clear line, non-zero.
    let e = fails(
        run(tp(&url, &h("bob"), "bob").args(["group", "add", "team", "dave"])),
        1,
    );
    assert!(e.contains("only the group's owner and admins"), "{e}");

    ok(run(
        tp(&url, &h("alice"), "alice").args(["send", "--group", "team", "hello", "team"])
    ));
    ok(run(
        tp(&url, &h("alice"), "alice").args(["group", "remove", "#team", "carol"])
    ));
    ok(run(
        tp(&url, &h("alice"), "alice").args(["group", "add", "team", "dave"])
    ));
    ok(run(
        tp(&url, &h("alice"), "alice").args(["group", "promote", "team", "dave"])
    ));
    let note = dir.path().join("note.txt");
    std::fs::write(&note, b"minutes").unwrap();
    ok(run(tp(&url, &h("dave"), "dave")
        .args(["send", "--group", "#team", "from dave", "--file"])
        .arg(&note)));

    let out = ok(run(tp(&url, &h("bob"), "bob")
        .arg("inbox")
        .arg("--download-dir")
        .arg(h("bob-down"))));
    for line in [
        "#team alice created the group with bob, carol",
        "#team alice: hello team",
        "#team alice removed carol",
        "#team alice added dave",
        "#team alice made dave an admin",
        "#team dave: from dave",
        "saved note.txt",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    assert_eq!(
        std::fs::read(h("bob-down").join("note.txt")).unwrap(),
        b"minutes"
    );
    let out = ok(run(tp(&url, &h("carol"), "carol").arg("inbox")));
    assert!(
        out.contains("alice removed carol") && !out.contains("from dave"),
        "{out}"
    );

    let out = ok(run(
        tp(&url, &h("dave"), "dave").args(["group", "info", "team"])
    ));
    assert!(
        out.contains("#team: 3 members") && out.contains("admin"),
        "{out}"
    );
    let out = ok(run(tp(&url, &h("bob"), "bob").args(["group", "list"])));
    assert!(out.contains("#team") && out.contains("3 members"), "{out}");
    let e = fails(
        run(tp(&url, &h("carol"), "carol").args(["group", "info", "team"])),
        1,
    );
    assert!(e.contains("no group #team"), "{e}");

    // classic: "Send To > #team".
    let mut classic = tp(&url, &h("bob"), "")
        .env_remove("TELEPOUND_USER")
        .env_remove("TELEPOUND_PASSWORD")
        .arg("classic")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    classic
        .stdin
        .take()
        .unwrap()
        .write_all(format!("l\nbob\n{PASSWORD}\nfrom classic\n#team\n\nEXIT\n").as_bytes())
        .unwrap();
    let out = ok(wait_output(classic, std::time::Duration::from_secs(30)));
    assert!(out.contains("Message to #team sent."), "{out}");
    let out = ok(run(tp(&url, &h("dave"), "dave").args(["inbox", "--json"])));
    assert!(
        out.contains("\"group\":\"team\"") && out.contains("from classic"),
        "{out}"
    );

    ok(run(
        tp(&url, &h("bob"), "bob").args(["group", "leave", "team"])
    ));
    let out = ok(run(tp(&url, &h("alice"), "alice").arg("inbox")));
    assert!(out.contains("#team bob left"), "{out}");

    // A server that slips carol back in without any admin's signed record:
    // alice's client refuses to send, in one line naming the group and her.
    let db = dir.path().join("data").join("telepound.sqlite3");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        use sqlx::Connection;
        let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO group_members (group_name, user_name, role, joined_at) VALUES ('team', 'carol', 0, 0)",
        )
        .execute(&mut c)
        .await
        .unwrap();
        c.close().await.unwrap();
    });
    let e = fails(
        run(tp(&url, &h("alice"), "alice").args(["send", "--group", "team", "for carol?"])),
        1,
    );
    assert!(
        e.contains("#team") && e.contains("lists carol as a member"),
        "{e}"
    );
    let out = ok(run(tp(&url, &h("carol"), "carol").arg("inbox")));
    assert!(!out.contains("for carol?"), "{out}");
}
