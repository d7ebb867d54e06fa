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
