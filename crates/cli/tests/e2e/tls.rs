//! wss:// with a self-signed certificate, and plain ws:// refused to a
//! remote host.

use crate::util::*;

#[test]
fn chat_over_tls_with_a_self_signed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut child = std::process::Command::new(BIN);
    child
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tls-self-signed",
            "--data-dir",
        ])
        .arg(&data)
        .env("TELEPOUND_MIN_ARGON2", telepound_testkit::FAST_KSF);
    let server = ServerProc::spawn(child, &data);
    assert!(server.url.starts_with("wss://"), "{}", server.url);
    let ca = data.join("tls").join("cert.pem");
    assert!(ca.exists());
    // The key file is private.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("tls").join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "key.pem mode {mode:o}");
    }
    let (ha, hb) = (dir.path().join("a"), dir.path().join("b"));
    let with_ca = |home: &std::path::Path, user: &str| {
        let mut c = tp(&server.url, home, user);
        c.arg("--ca-file").arg(&ca);
        c
    };
    ok(run(with_ca(&ha, "alice").arg("signup")));
    ok(run(with_ca(&hb, "bob").arg("signup")));
    ok(run(with_ca(&ha, "alice").args(["send", "bob", "over tls"])));
    let out = ok(run(with_ca(&hb, "bob").arg("inbox")));
    assert!(out.contains("alice: over tls"), "{out}");

    // Without trusting the certificate: one clear line, exit 3.
    let e = fails(run(tp(&server.url, &hb, "bob").arg("inbox")), 3);
    assert!(
        e.contains("cannot connect") && e.to_lowercase().contains("certificate"),
        "{e}"
    );
}

#[test]
fn plain_ws_to_another_host_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let e = fails(
        run(tp("ws://192.0.2.1:7878", dir.path(), "alice").arg("login")),
        3,
    );
    assert!(e.contains("refusing unencrypted ws://"), "{e}");
}
