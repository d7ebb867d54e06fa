//! Every limit is enforced, refused with a clear code or close reason, and
//! counted in /metrics; /metrics and /healthz report what happened.

use std::time::Duration;

use telepound_testkit::{http_get, metric, test_config};

use crate::util::*;

/// `/metrics`; a scrape is a connection too, so while a test holds the
/// per-address cap it waits for a place.
async fn metrics(server: &telepound_testkit::TestServer) -> String {
    for _ in 0..100 {
        let (status, body) = http_get(server.addr, "/metrics").await;
        if status == 200 {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("/metrics never answered 200");
}

async fn eventually(server: &telepound_testkit::TestServer, series: &str, want: f64) {
    for _ in 0..100 {
        if metric(&metrics(server).await, series) == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{series} never reached {want}");
}

#[tokio::test]
async fn a_flooding_connection_is_refused_then_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.limits.messages_per_second = 5;
    config.limits.message_burst = 5;
    let server = spawn_server_with(config).await;
    let url = server.url();
    let home = tempfile::tempdir().unwrap();
    signup(&url, "alice").await;
    let (mut raw, _s) = Raw::logged_in(&url, "alice", home.path()).await;
    // The resume used one token; four more pass, then refusals.
    let mut limited = 0;
    for i in 0..8 {
        let v = raw
            .recv_after(&format!(r#"{{"type":"keys","rid":{i},"users":["alice"]}}"#))
            .await;
        if v["code"] == "rate_limited" {
            limited += 1;
            assert!(v["message"].as_str().unwrap().contains("slow down"), "{v}");
        }
    }
    assert!(limited >= 3, "{limited} refused");
    // Ignoring the refusals gets the connection closed.
    for i in 0..20 {
        raw.send(&format!(r#"{{"type":"keys","rid":{i},"users":["alice"]}}"#))
            .await;
    }
    let close = raw.closed().await.expect("close frame");
    assert_eq!(close.reason.as_str(), "rate_limited");
    let m = metrics(&server).await;
    assert!(metric(&m, "telepound_limited_total{limit=\"message_rate\"}").unwrap() >= 3.0);
    // Counted as the connection task ends, just after the close frame.
    eventually(
        &server,
        "telepound_disconnects_total{reason=\"rate_limited\"}",
        1.0,
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn connections_per_address_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.limits.max_connections_per_address = 2;
    let server = spawn_server_with(config).await;
    let url = server.url();
    let a = Raw::connect(&url).await;
    let _b = Raw::connect(&url).await;
    let e = telepound_client::Client::connect(&url).await.unwrap_err();
    assert!(e.to_string().contains("too many from your address"), "{e}");
    drop(a);
    // The slot comes back once a connection ends.
    let mut ok = false;
    for _ in 0..50 {
        if telepound_client::Client::connect(&url).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok);
    drop(_b);
    let m = metrics(&server).await;
    // At least the refusal above (a retry may have come before the slot).
    assert!(
        metric(
            &m,
            "telepound_connections_refused_total{reason=\"too_many_from_address\"}"
        )
        .unwrap()
            >= 1.0
    );
    server.stop().await;
}

#[tokio::test]
async fn a_connection_that_never_logs_in_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.limits.auth_timeout = Duration::from_secs(1);
    config.ping_interval = Duration::from_millis(300);
    config.idle_timeout = Duration::from_secs(30);
    let server = spawn_server_with(config).await;
    let mut raw = Raw::connect(&server.url()).await;
    let close = raw.closed().await.expect("close frame");
    assert_eq!(close.reason.as_str(), "login_timeout");
    server.stop().await;
}

#[tokio::test]
async fn login_attempts_are_limited_per_user_and_say_when_to_retry() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.limits.login_attempts_per_user = 3;
    let server = spawn_server_with(config).await;
    let url = server.url();
    signup(&url, "alice").await;
    signup(&url, "bob").await;
    let home = tempfile::tempdir().unwrap();
    let (client, _e) = telepound_client::Client::connect(&url).await.unwrap();
    for _ in 0..3 {
        let e = telepound_client::account::login(&client, &name("alice"), b"guess", home.path())
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(telepound_protocol::ErrorCode::AuthFailed));
    }
    let e = telepound_client::account::login(
        &client,
        &name("alice"),
        telepound_testkit::PASSWORD.as_bytes(),
        home.path(),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Some(telepound_protocol::ErrorCode::RateLimited));
    assert!(e.to_string().contains("try again in"), "{e}");
    // Another user is not affected.
    telepound_client::account::login(
        &client,
        &name("bob"),
        telepound_testkit::PASSWORD.as_bytes(),
        home.path(),
    )
    .await
    .unwrap();
    let m = metrics(&server).await;
    assert_eq!(
        metric(&m, "telepound_logins_total{result=\"throttled\"}"),
        Some(1.0)
    );
    // The client walks away from a wrong password after the challenge;
    // each of those counts as a failed login.
    assert_eq!(
        metric(&m, "telepound_logins_total{result=\"failed\"}"),
        Some(3.0),
        "{m}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_login_abandoned_after_its_challenge_counts_as_failed_when_the_connection_ends() {
    let server = spawn_server().await;
    let url = server.url();
    signup(&url, "alice").await;
    let home = tempfile::tempdir().unwrap();
    let (client, _e) = telepound_client::Client::connect(&url).await.unwrap();
    let e = telepound_client::account::login(&client, &name("alice"), b"guess", home.path())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(telepound_protocol::ErrorCode::AuthFailed));
    client.close().await;
    eventually(&server, "telepound_logins_total{result=\"failed\"}", 1.0).await;
    server.stop().await;
}

#[tokio::test]
async fn login_attempts_are_limited_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.limits.login_attempts_per_address = 3;
    let server = spawn_server_with(config).await;
    let url = server.url();
    // Sign-ups are not charged as guesses once they succeed.
    for u in ["alice", "bob", "carol", "dave"] {
        signup(&url, u).await;
    }
    let home = tempfile::tempdir().unwrap();
    let (client, _e) = telepound_client::Client::connect(&url).await.unwrap();
    for u in ["alice", "bob", "carol"] {
        let e = telepound_client::account::login(&client, &name(u), b"guess", home.path())
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(telepound_protocol::ErrorCode::AuthFailed));
    }
    // A fourth name from the same address: refused, whoever it is.
    let e = telepound_client::account::login(
        &client,
        &name("dave"),
        telepound_testkit::PASSWORD.as_bytes(),
        home.path(),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Some(telepound_protocol::ErrorCode::RateLimited));
    assert!(e.to_string().contains("from your address"), "{e}");
    // Another address is not.
    let mut other = Raw::connect_from(&url, std::net::Ipv4Addr::new(127, 0, 0, 2)).await;
    let v = other
        .recv_after(r#"{"type":"login_start","rid":1,"user":"dave","request":"AAAA"}"#)
        .await;
    assert_eq!(v["code"], "bad_key", "{v}");
    let m = metrics(&server).await;
    assert_eq!(
        metric(&m, "telepound_limited_total{limit=\"login_address\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "telepound_logins_total{result=\"failed\"}"),
        Some(3.0),
        "{m}"
    );
    server.stop().await;
}

/// Regression (found in review): bogus resumes naming alice used up her
/// per-name budget, so anyone could keep her clients from reconnecting.
/// Resumes are limited per address only (a token cannot be guessed).
#[tokio::test]
async fn a_stranger_spending_resumes_on_a_name_does_not_lock_its_owner_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.limits.login_attempts_per_user = 2;
    config.limits.login_attempts_per_address = 3;
    let server = spawn_server_with(config).await;
    let url = server.url();
    signup(&url, "alice").await;
    let mut stranger = Raw::connect_from(&url, std::net::Ipv4Addr::new(127, 0, 0, 2)).await;
    for rid in 1..=3 {
        let v = stranger
            .recv_after(&format!(
                r#"{{"type":"resume","rid":{rid},"user":"alice","token":"AAAAAAAA"}}"#
            ))
            .await;
        assert_eq!(v["code"], "invalid_token", "{v}");
    }
    let v = stranger
        .recv_after(r#"{"type":"resume","rid":4,"user":"alice","token":"AAAAAAAA"}"#)
        .await;
    assert_eq!(v["code"], "rate_limited", "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("from your address"),
        "{v}"
    );
    // alice, from her own address, logs in and resumes as usual.
    let home = tempfile::tempdir().unwrap();
    let (_raw, _session) = Raw::logged_in(&url, "alice", home.path()).await;
    server.stop().await;
}

/// A valid OPAQUE registration request (the ristretto255 base point).
const REGISTRATION_REQUEST: &str = "4vKuCmq8TnGohKlhxQBRX1jjC2qlgt2NtqZZReCNLXY=";

fn register_finish(rid: u64, user: &str) -> String {
    format!(
        r#"{{"type":"register_finish","rid":{rid},"user":"{user}","upload":"AAAA","ksf":{{"m_kib":64,"t":1,"p":1}},"keys":{{"identity":"AAAA","kem":"AAAA","kem_sig":"AAAA"}},"backup":"AAAA"}}"#
    )
}

/// Regression: `register_finish` was taken without a `register_start`,
/// which is where sign-ups are limited.
#[tokio::test]
async fn register_finish_needs_a_register_start_for_the_same_name() {
    let server = spawn_server().await;
    let mut raw = Raw::connect(&server.url()).await;
    let v = raw.recv_after(&register_finish(1, "alice")).await;
    assert_eq!(
        (v["code"].as_str(), v["rid"].as_u64()),
        (Some("no_registration_in_progress"), Some(1)),
        "{v}"
    );
    let v = raw
        .recv_after(&format!(
            r#"{{"type":"register_start","rid":2,"user":"alice","request":"{REGISTRATION_REQUEST}"}}"#
        ))
        .await;
    assert_eq!(v["type"], "register_challenge", "{v}");
    let v = raw.recv_after(&register_finish(3, "mallory")).await;
    assert_eq!(v["code"], "no_registration_in_progress", "{v}");
    // The started name goes on to the record's checks.
    let v = raw.recv_after(&register_finish(4, "alice")).await;
    assert_eq!(v["code"], "bad_key", "{v}");
    server.stop().await;
}

#[tokio::test]
async fn sign_ups_are_limited_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.limits.signups_per_address = 2;
    let server = spawn_server_with(config).await;
    let url = server.url();
    signup(&url, "alice").await;
    let (client, _e) = telepound_client::Client::connect(&url).await.unwrap();
    let ksf = telepound_testkit::FAST_KSF.parse().unwrap();
    // A name that is taken costs nothing: no challenge went out.
    let e = telepound_client::account::signup(&client, &name("alice"), b"pw", ksf)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(telepound_protocol::ErrorCode::UserTaken));
    telepound_client::account::signup(&client, &name("bob"), b"pw", ksf)
        .await
        .unwrap();
    let e = telepound_client::account::signup(&client, &name("carol"), b"pw", ksf)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(telepound_protocol::ErrorCode::RateLimited));
    assert!(e.to_string().contains("sign-ups from your address"), "{e}");
    // Another address may still sign up.
    let mut other = Raw::connect_from(&url, std::net::Ipv4Addr::new(127, 0, 0, 2)).await;
    let v = other
        .recv_after(&format!(
            r#"{{"type":"register_start","rid":1,"user":"carol","request":"{REGISTRATION_REQUEST}"}}"#
        ))
        .await;
    assert_eq!(v["type"], "register_challenge", "{v}");
    let m = metrics(&server).await;
    assert_eq!(
        metric(&m, "telepound_limited_total{limit=\"signup_address\"}"),
        Some(1.0),
        "{m}"
    );
    server.stop().await;
}

#[tokio::test]
async fn metrics_count_a_conversation() {
    let server = spawn_server().await;
    let url = server.url();
    let (ha, hb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut alice, _ae) = user(&url, "alice", ha.path()).await;
    signup(&url, "bob").await;
    for i in 0..3 {
        alice
            .send_text(&name("bob"), &format!("m{i}"))
            .await
            .unwrap();
    }
    let m = metrics(&server).await;
    assert_eq!(metric(&m, "telepound_messages_accepted_total"), Some(3.0));
    assert_eq!(metric(&m, "telepound_mailbox_depth"), Some(3.0));
    let (mut bob, mut be) = login(&url, "bob", hb.path()).await;
    assert_eq!(drain(&mut bob, &mut be).await.len(), 3);
    let m = metrics(&server).await;
    assert_eq!(metric(&m, "telepound_messages_delivered_total"), Some(3.0));
    assert_eq!(metric(&m, "telepound_sessions"), Some(2.0));
    assert!(metric(&m, "telepound_logins_total{result=\"ok\"}").unwrap() >= 2.0);
    assert!(metric(&m, "telepound_commit_batch_ops_count").unwrap() >= 4.0);
    assert!(metric(&m, "telepound_disconnects_total{reason=\"client_closed\"}").is_some());
    assert_eq!(http_get(server.addr, "/healthz").await.0, 200);
    server.stop().await;
}

/// Regression: a retried send (same msg_id) was answered with a new
/// server_ts and counted as another accepted message.
#[tokio::test]
async fn a_retried_send_is_answered_as_the_first_and_counted_as_a_duplicate() {
    let server = spawn_server().await;
    let url = server.url();
    let home = tempfile::tempdir().unwrap();
    signup(&url, "alice").await;
    signup(&url, "bob").await;
    let (mut raw, _s) = Raw::logged_in(&url, "alice", home.path()).await;
    let id = MsgId::new();
    let send = |rid: u64| {
        format!(
            r#"{{"type":"send","rid":{rid},"msg_id":"{id}","from":"alice","to":"bob","envelope":{ENVELOPE}}}"#
        )
    };
    let first = raw.recv_after(&send(1)).await;
    assert_eq!(first["type"], "accepted", "{first}");
    // Later, so a fresh timestamp would differ.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let again = raw.recv_after(&send(2)).await;
    assert_eq!(
        (again["type"].as_str(), again["rid"].as_u64()),
        (Some("accepted"), Some(2)),
        "{again}"
    );
    assert_eq!(again["server_ts"], first["server_ts"]);
    let m = metrics(&server).await;
    assert_eq!(metric(&m, "telepound_messages_accepted_total"), Some(1.0));
    assert_eq!(metric(&m, "telepound_messages_duplicate_total"), Some(1.0));
    assert_eq!(metric(&m, "telepound_mailbox_depth"), Some(1.0));
    server.stop().await;
}
