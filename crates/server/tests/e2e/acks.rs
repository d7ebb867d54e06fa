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
    // (Repeats count once, but a list longer than a page of stored receipts
    // could need is refused before they are counted.)
    let repeated = vec!["1"; 32 * 1024 + 1];
    bob.send(&format!(
        r#"{{"type":"ack","rid":9,"seqs":[{}]}}"#,
        repeated.join(",")
    ))
    .await;
    let v = bob.recv().await;
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str(), v["rid"].as_u64()),
        (Some("error"), Some("malformed"), Some(9)),
        "{v}"
    );
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

/// An away sender's receipts acknowledged together are stored a row per 32
/// messages; a `sync` sends one `delivered` per message, each with its row's
/// seq, and acknowledging the seqs once clears them all.
#[tokio::test]
async fn receipts_stored_together_come_back_one_frame_each() {
    let server = spawn_server().await;
    let url = server.url();
    let (ha, hb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    signup(&url, "alice").await;
    signup(&url, "bob").await;
    // alice never syncs, so she is away: her receipts are stored.
    let (mut alice, _sa) = Raw::logged_in(&url, "alice", ha.path()).await;
    let ids: Vec<MsgId> = (0..40).map(|_| MsgId::new()).collect();
    send_to_bob(&mut alice, &ids).await;
    let (mut bob, _sb) = Raw::logged_in(&url, "bob", hb.path()).await;
    read_and_ack_all(&mut bob, ids.len()).await;

    // Heard live, without seqs, by the connection that sent them...
    for id in &ids {
        let v = alice.recv().await;
        assert_eq!(
            (v["type"].as_str(), v["seq"].as_i64()),
            (Some("delivered"), None),
            "{v}"
        );
        assert_eq!(v["msg_id"], id.to_string());
    }
    // ...and stored: two rows, one frame per message, in the order
    // acknowledged.
    alice
        .send(r#"{"type":"sync","rid":4,"after":0,"limit":100}"#)
        .await;
    let mut rows = Vec::new();
    for id in &ids {
        let v = alice.recv().await;
        assert_eq!(
            (v["type"].as_str(), v["to"].as_str()),
            (Some("delivered"), Some("bob")),
            "{v}"
        );
        assert_eq!(v["msg_id"], id.to_string());
        rows.push(v["seq"].as_i64().unwrap());
    }
    let v = alice.recv().await;
    assert_eq!(
        (v["type"].as_str(), v["count"].as_u64()),
        (Some("synced"), Some(2)),
        "{v}"
    );
    assert!(rows[..32].iter().all(|&s| s == rows[0]), "{rows:?}");
    assert!(rows[32..].iter().all(|&s| s == rows[32]), "{rows:?}");
    assert!(rows[0] < rows[32]);
    alice
        .send(&format!(
            r#"{{"type":"ack","rid":5,"seqs":[{},{}]}}"#,
            rows[0], rows[32]
        ))
        .await;
    let v = alice.recv().await;
    assert_eq!(
        (v["type"].as_str(), v["count"].as_u64()),
        (Some("acked"), Some(2)),
        "{v}"
    );
    alice
        .send(r#"{"type":"sync","rid":6,"after":0,"limit":100}"#)
        .await;
    let v = alice.recv().await;
    assert_eq!(
        (v["type"].as_str(), v["count"].as_u64()),
        (Some("synced"), Some(0)),
        "{v}"
    );
}

/// A page of stored receipts can carry more frames than an `ack` may list
/// seqs: the server counts each seq once, so a client acknowledging every
/// frame it saw still clears the page.
#[tokio::test]
async fn an_ack_listing_each_receipt_frame_counts_each_seq_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = telepound_testkit::test_config(dir.path());
    // 1100 sends in a second or two, not at 50 a second.
    config.limits.messages_per_second = 100_000;
    config.limits.message_burst = 100_000;
    let server = spawn_server_with(config).await;
    let url = server.url();
    let (ha, hb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    signup(&url, "alice").await;
    signup(&url, "bob").await;
    let (mut alice, _sa) = Raw::logged_in(&url, "alice", ha.path()).await;
    let n = 1100;
    let ids: Vec<MsgId> = (0..n).map(|_| MsgId::new()).collect();
    send_to_bob(&mut alice, &ids).await;
    let (mut bob, _sb) = Raw::logged_in(&url, "bob", hb.path()).await;
    read_and_ack_all(&mut bob, n).await;
    // alice hears them live first (no seqs), then syncs the stored ones.
    for _ in 0..n {
        let v = alice.recv().await;
        assert_eq!(
            (v["type"].as_str(), v["seq"].as_i64()),
            (Some("delivered"), None),
            "{v}"
        );
    }
    alice
        .send(r#"{"type":"sync","rid":5000,"after":0,"limit":256}"#)
        .await;
    let mut frames = Vec::new();
    let rows = loop {
        let v = alice.recv().await;
        match v["type"].as_str() {
            Some("delivered") => frames.push(v["seq"].as_i64().unwrap().to_string()),
            Some("synced") => break v["count"].as_u64().unwrap(),
            _ => panic!("{v}"),
        }
    };
    assert_eq!(frames.len(), n);
    assert!(rows >= n.div_ceil(32) as u64 && rows < 64, "{rows} rows");
    // Every frame's seq, repeats and all: more than an ack may list.
    alice
        .send(&format!(
            r#"{{"type":"ack","rid":5001,"seqs":[{}]}}"#,
            frames.join(",")
        ))
        .await;
    let v = alice.recv().await;
    assert_eq!(
        (v["type"].as_str(), v["count"].as_u64()),
        (Some("acked"), Some(rows)),
        "{v}"
    );
    alice
        .send(r#"{"type":"sync","rid":5002,"after":0,"limit":256}"#)
        .await;
    let v = alice.recv().await;
    assert_eq!(
        (v["type"].as_str(), v["count"].as_u64()),
        (Some("synced"), Some(0)),
        "{v}"
    );
}

/// Sends `ids` from `alice` to bob (empty envelopes), 100 at a time, each
/// answered `accepted`.
async fn send_to_bob(alice: &mut Raw, ids: &[MsgId]) {
    for (c, chunk) in ids.chunks(100).enumerate() {
        for (i, id) in chunk.iter().enumerate() {
            let rid = 10 + c * 100 + i;
            alice
                .send(&format!(
                    r#"{{"type":"send","rid":{rid},"msg_id":"{id}","from":"alice","to":"bob","envelope":{{}}}}"#
                ))
                .await;
        }
        for _ in chunk {
            let v = alice.recv().await;
            assert_eq!(v["type"], "accepted", "{v}");
        }
    }
}

/// Syncs `raw`'s mailbox page by page and acknowledges each page, until `n`
/// messages are acknowledged.
async fn read_and_ack_all(raw: &mut Raw, n: usize) {
    let mut after = 0;
    let mut rid = 2;
    let mut acked = 0;
    while acked < n {
        raw.send(&format!(
            r#"{{"type":"sync","rid":{rid},"after":{after},"limit":1000}}"#
        ))
        .await;
        let mut seqs = Vec::new();
        loop {
            let v = raw.recv().await;
            match v["type"].as_str() {
                Some("message") => seqs.push(v["seq"].as_i64().unwrap().to_string()),
                Some("synced") => {
                    after = v["cursor"].as_i64().unwrap();
                    break;
                }
                _ => panic!("{v}"),
            }
        }
        raw.send(&format!(
            r#"{{"type":"ack","rid":{},"seqs":[{}]}}"#,
            rid + 1,
            seqs.join(",")
        ))
        .await;
        let v = raw.recv().await;
        assert_eq!(v["type"], "acked", "{v}");
        acked += v["count"].as_u64().unwrap() as usize;
        rid += 2;
    }
    assert_eq!(acked, n);
}
