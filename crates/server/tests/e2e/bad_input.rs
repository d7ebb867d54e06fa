//! Bad input gets a stable error code or a close with a reason; nobody else
//! notices, and nothing stored is lost.

use futures_util::SinkExt;

use crate::util::*;

#[tokio::test]
async fn errors_on_the_wire_leave_the_connection_and_others_working() {
    let server = spawn_server().await;
    let url = server.url();
    let (ha, hb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut alice, _ae) = user(&url, "alice", ha.path()).await;
    signup(&url, "bob").await;
    // Something waiting for bob before the abuse starts.
    alice.send_text(&name("bob"), "before").await.unwrap();

    let mut raw = Raw::connect(&url).await;
    // Requests before login.
    for req in [
        r#"{"type":"sync","rid":1,"after":0,"limit":10}"#,
        r#"{"type":"keys","rid":2,"users":["bob"]}"#,
        r#"{"type":"ack","rid":3,"seqs":[1]}"#,
        &format!(
            r#"{{"type":"send","rid":4,"msg_id":"{}","from":"alice","to":"bob","envelope":{ENVELOPE}}}"#,
            MsgId::new()
        ),
    ] {
        let v = raw.recv_after(req).await;
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["code"], "not_authenticated", "{v}");
    }
    let v = raw.recv_after("this is not json").await;
    assert_eq!(v["code"], "malformed");
    let v = raw
        .recv_after(r#"{"type":"launch_missiles","rid":77}"#)
        .await;
    assert_eq!(
        (v["code"].as_str(), v["rid"].as_u64()),
        (Some("unknown_type"), Some(77))
    );
    let v = raw
        .recv_after(r#"{"type":"login_start","rid":5,"user":"Not Valid","request":"AAAA"}"#)
        .await;
    assert_eq!(
        (v["code"].as_str(), v["rid"].as_u64()),
        (Some("malformed"), Some(5))
    );
    let v = raw
        .recv_after(r#"{"type":"login_start","rid":6,"user":"alice","request":"!!!"}"#)
        .await;
    assert_eq!(v["code"], "malformed");
    let v = raw
        .recv_after(r#"{"type":"login_start","rid":7,"user":"alice","request":"AAAA"}"#)
        .await;
    assert_eq!(v["code"], "bad_key");
    let v = raw
        .recv_after(r#"{"type":"login_finish","rid":8,"finalization":"AAAA"}"#)
        .await;
    assert_eq!(v["code"], "no_login_in_progress");
    let v = raw
        .recv_after(r#"{"type":"resume","rid":9,"user":"alice","token":"AAAAAAAA"}"#)
        .await;
    assert_eq!(v["code"], "invalid_token");
    raw.ws
        .send(tokio_tungstenite::tungstenite::Message::Binary(
            vec![1, 2, 3].into(),
        ))
        .await
        .unwrap();
    assert_eq!(raw.recv().await["code"], "binary_frame");

    // Logged in: a sender field that is not the session's user.
    let (mut mallory, _s) = Raw::logged_in(&url, "alice", ha.path()).await;
    let forged = format!(
        r#"{{"type":"send","rid":10,"msg_id":"{}","from":"bob","to":"bob","envelope":{ENVELOPE}}}"#,
        MsgId::new()
    );
    let v = mallory.recv_after(&forged).await;
    assert_eq!(
        (v["code"].as_str(), v["rid"].as_u64()),
        (Some("sender_mismatch"), Some(10))
    );
    let v = mallory
        .recv_after(&format!(
            r#"{{"type":"send","rid":11,"msg_id":"not-a-uuid","from":"alice","to":"bob","envelope":{ENVELOPE}}}"#
        ))
        .await;
    assert_eq!(v["code"], "malformed");
    let v = mallory
        .recv_after(&format!(
            r#"{{"type":"send","rid":12,"msg_id":"{}","from":"alice","to":"nobody","envelope":{ENVELOPE}}}"#,
            MsgId::new()
        ))
        .await;
    assert_eq!(v["code"], "unknown_user");
    assert!(v["message"].as_str().unwrap().contains("User Not Found"));
    let v = mallory
        .recv_after(r#"{"type":"login_start","rid":13,"user":"alice","request":"AAAA"}"#)
        .await;
    assert_eq!(v["code"], "already_authenticated");
    let v = mallory
        .recv_after(r#"{"type":"sync","rid":14,"after":0,"limit":0}"#)
        .await;
    assert_eq!(v["code"], "malformed");
    // Acknowledging someone else's mail deletes nothing.
    let v = mallory
        .recv_after(r#"{"type":"ack","rid":15,"seqs":[1,2,3]}"#)
        .await;
    assert_eq!(
        (v["type"].as_str(), v["count"].as_u64()),
        (Some("acked"), Some(0))
    );

    // An oversize frame closes that connection with a reason...
    let big = format!(
        r#"{{"type":"keys","users":[],"pad":"{}"}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    mallory.send(&big).await;
    let close = mallory.closed().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1009);
    assert_eq!(close.reason.as_str(), "frame_too_large");

    // ...and everyone else carries on; bob's mail is all there.
    alice.send_text(&name("bob"), "after").await.unwrap();
    let (mut bob, mut be) = login(&url, "bob", hb.path()).await;
    assert_eq!(
        texts(&drain(&mut bob, &mut be).await),
        vec!["before", "after"]
    );
    // The first raw connection is still usable.
    let v = raw
        .recv_after(r#"{"type":"presence","rid":20,"users":["bob"]}"#)
        .await;
    assert_eq!(v["code"], "not_authenticated");
    server.stop().await;
}

#[tokio::test]
async fn raw_envelope_bytes_are_forwarded_verbatim() {
    let server = spawn_server().await;
    let url = server.url();
    let (ha, hb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    signup(&url, "alice").await;
    signup(&url, "bob").await;
    let (mut alice, _a) = Raw::logged_in(&url, "alice", ha.path()).await;
    let (mut bob, _b) = Raw::logged_in(&url, "bob", hb.path()).await;
    let odd = r#"{ "suite" : "tp1",   "x":[1,2,{"y":"\u00e9"}] }"#;
    let id = MsgId::new();
    let v = alice
        .recv_after(&format!(
            r#"{{"type":"send","rid":1,"msg_id":"{id}","from":"alice","to":"bob","envelope":{odd}}}"#
        ))
        .await;
    assert_eq!(v["type"], "accepted");
    bob.send(r#"{"type":"sync","rid":2,"after":0,"limit":10}"#)
        .await;
    let text = loop {
        match futures_util::StreamExt::next(&mut bob.ws)
            .await
            .unwrap()
            .unwrap()
        {
            tokio_tungstenite::tungstenite::Message::Text(t) if t.contains("\"message\"") => {
                break t;
            }
            _ => continue,
        }
    };
    assert!(text.as_str().contains(odd), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn connection_cap_refuses_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = telepound_testkit::test_config(dir.path());
    config.max_connections = 2;
    let server = spawn_server_with(config).await;
    let url = server.url();
    let _a = Raw::connect(&url).await;
    let _b = Raw::connect(&url).await;
    let err = tokio_tungstenite::connect_async(format!("{url}/v1/ws"))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("503"), "{text}");
    let e = telepound_client::Client::connect(&url).await.unwrap_err();
    assert!(e.to_string().contains("too_many_connections"), "{e}");
    drop(_a);
    server.stop().await;
}

impl Raw {
    /// Sends `text` and returns the next frame.
    pub async fn recv_after(&mut self, text: &str) -> serde_json::Value {
        self.send(text).await;
        self.recv().await
    }
}

/// Errors that need no work (a frame that does not decode, a bad `sync`)
/// still wait for the answers to the requests before them.
#[tokio::test]
async fn errors_come_back_in_request_order() {
    let server = spawn_server().await;
    let url = server.url();
    let home = tempfile::tempdir().unwrap();
    signup(&url, "alice").await;
    signup(&url, "bob").await;
    let (mut raw, _s) = Raw::logged_in(&url, "alice", home.path()).await;
    // Sends wait for a commit; the errors after them are immediate.
    for rid in 10..15 {
        raw.send(&format!(
            r#"{{"type":"send","rid":{rid},"msg_id":"{}","from":"alice","to":"bob","envelope":{ENVELOPE}}}"#,
            MsgId::new()
        ))
        .await;
    }
    raw.send(r#"{"type":"launch_missiles","rid":15}"#).await;
    raw.send(r#"{"type":"sync","rid":16,"after":0,"limit":0}"#)
        .await;
    let mut rids = Vec::new();
    for _ in 0..7 {
        let v = raw.recv().await;
        rids.push(v["rid"].as_u64().unwrap());
    }
    assert_eq!(rids, (10..17).collect::<Vec<_>>());
    server.stop().await;
}
