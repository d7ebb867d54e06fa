//! Key pinning: a changed identity key is refused until accepted.

use sqlx::Connection;
use telepound_client::{Error, Inbound, KeyStatus};

use crate::util::*;

/// Plays a malicious (or restored-from-backup) server: replaces bob's
/// published keys with eve's in the database.
async fn swap_bob_for_eve(db: &std::path::Path) {
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query(
        "UPDATE users SET identity_key = e.identity_key, kem_key = e.kem_key, kem_sig = e.kem_sig \
         FROM (SELECT identity_key, kem_key, kem_sig FROM users WHERE name = 'eve') AS e WHERE users.name = 'bob'",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn changed_key_is_refused_with_a_warning_until_accepted() {
    let server = spawn_server().await;
    let url = server.url();
    let (ha, hb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut alice, mut ae) = user(&url, "alice", ha.path()).await;
    let (mut bob, _be) = user(&url, "bob", hb.path()).await;
    signup(&url, "eve").await;

    // First contact pins bob's key; both sides see the same safety number.
    alice.send_text(&name("bob"), "first").await.unwrap();
    let v = alice.safety_number(&name("bob")).await.unwrap();
    assert_eq!(v.status, KeyStatus::Pinned);
    let n_alice = v.number;
    let n_bob = bob.safety_number(&name("alice")).await.unwrap().number;
    assert_eq!(n_alice, n_bob);

    // A message bob sent before the swap, still waiting for alice.
    bob.send_text(&name("alice"), "from the real bob")
        .await
        .unwrap();
    swap_bob_for_eve(&server.data_dir.join("telepound.sqlite3")).await;

    // A fresh session (no cached keys) refuses to send to the new key...
    let (mut alice, mut ae2) = login(&url, "alice", ha.path()).await;
    drop(std::mem::replace(&mut ae, ae2));
    let e = alice.send_text(&name("bob"), "secret").await.unwrap_err();
    assert!(matches!(e, Error::KeyChanged { ref user } if *user == name("bob")));
    let text = e.to_string();
    assert!(text.contains("bob") && text.contains("verify"), "{text}");

    // ...and to show bob's messages, which stay in the mailbox.
    let got = drain(&mut alice, &mut ae).await;
    assert!(
        matches!(&got[..], [Inbound::Refused { kept: true, .. }]),
        "{got:?}"
    );
    let v = alice.safety_number(&name("bob")).await.unwrap();
    assert_eq!(v.status, KeyStatus::Changed);
    assert_ne!(
        v.number, n_alice,
        "a different key gives a different number"
    );

    // Accepting a key other than the one compared is refused.
    let e = alice
        .accept_key(&name("bob"), &[7u8; 32])
        .await
        .unwrap_err();
    assert!(matches!(e, Error::KeyChanged { .. }), "{e}");
    // Accepting the compared key lets alice send again.
    alice
        .accept_key(&name("bob"), &v.identity_key)
        .await
        .unwrap();
    let v = alice.safety_number(&name("bob")).await.unwrap();
    assert_eq!(v.status, KeyStatus::Verified);
    alice
        .send_text(&name("bob"), "after accepting")
        .await
        .unwrap();
    ae2 = ae;
    drop(ae2);
    server.stop().await;
}
