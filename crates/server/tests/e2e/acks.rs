//! An `ack` without a `rid` asks for no answer: it is answered only when it
//! fails, and still acknowledges.

use telepound_client::Inbound;
use telepound_testkit::next_inbound;

use crate::util::*;

#[tokio::test]
async fn an_ack_without_a_rid_is_answered_only_when_it_fails() {
    let server = spawn_server().await;
    let url = server.url();
    let (ha, hb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut alice, mut events) = user(&url, "alice", ha.path()).await;
    assert!(drain(&mut alice, &mut events).await.is_empty());
    signup(&url, "bob").await;
    let (mut bob, _session) = Raw::logged_in(&url, "bob", hb.path()).await;
    bob.send(r#"{"type":"sync","rid":2,"after":0,"limit":10}"#)
        .await;
    assert_eq!(bob.recv().await["type"], "synced");

    let sent = alice.send_text(&name("bob"), "hello").await.unwrap();
    let v = bob.recv().await;
    assert_eq!(v["type"], "message", "{v}");
    let seq = v["seq"].as_i64().unwrap();

    // Acknowledged without a rid: no `acked` follows...
    bob.send(&format!(r#"{{"type":"ack","seqs":[{seq}]}}"#))
        .await;
    // ...but a refused one is still answered, with a null rid...
    let many: Vec<String> = (1..=1025).map(|i| i.to_string()).collect();
    bob.send(&format!(r#"{{"type":"ack","seqs":[{}]}}"#, many.join(",")))
        .await;
    let v = bob.recv().await;
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str()),
        (Some("error"), Some("malformed")),
        "{v}"
    );
    assert!(v["rid"].is_null(), "{v}");
    // ...and the next frame answers the next request.
    bob.send(r#"{"type":"presence","rid":3,"users":["alice"]}"#)
        .await;
    let v = bob.recv().await;
    assert_eq!(
        (v["type"].as_str(), v["rid"].as_u64()),
        (Some("presence"), Some(3)),
        "{v}"
    );

    // The ack took effect: alice hears it was delivered, and bob's mailbox
    // is empty.
    match next_inbound(&mut alice, &mut events, 5).await {
        Inbound::Delivered { msg_id, to, .. } => {
            assert_eq!((msg_id, to), (sent.msg_id, name("bob")));
        }
        other => panic!("expected delivered, got {other:?}"),
    }
    bob.send(r#"{"type":"sync","rid":4,"after":0,"limit":10}"#)
        .await;
    let v = bob.recv().await;
    assert_eq!(
        (v["type"].as_str(), v["count"].as_u64()),
        (Some("synced"), Some(0)),
        "{v}"
    );
}
