//! Group chats end to end.

use telepound_client::{Events, Inbound, Session};
use telepound_crypto::GroupEventKind;
use telepound_protocol::message::Role;
use telepound_protocol::{ErrorCode, GroupName};
use telepound_testkit::TestServer;

use crate::util::*;

fn g(s: &str) -> GroupName {
    GroupName::new(s).unwrap()
}

/// What a member saw: texts of group messages and membership events.
fn seen(items: &[Inbound]) -> Vec<String> {
    items
        .iter()
        .filter_map(|i| match i {
            Inbound::Message(r) => Some(match &r.payload.event {
                Some(e) => format!(
                    "{} {:?} {}",
                    r.payload.sender,
                    e.kind,
                    e.users
                        .iter()
                        .map(|u| u.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                None => r.payload.text.clone(),
            }),
            _ => None,
        })
        .collect()
}

async fn people(url: &str, names: &[&str]) -> Vec<(Session, Events, tempfile::TempDir)> {
    let mut out = Vec::new();
    for n in names {
        let home = tempfile::tempdir().unwrap();
        let (s, e) = user(url, n, home.path()).await;
        out.push((s, e, home));
    }
    out
}

async fn permissions_removal_and_joining(server: TestServer) {
    let url = server.url();
    let mut p = people(&url, &["alice", "bob", "carol", "dave"]).await;
    let team = g("team");
    let info = p[0]
        .0
        .group_create(&team, vec![name("bob"), name("carol")])
        .await
        .unwrap();
    assert_eq!(
        info.members
            .iter()
            .map(|m| (m.user.as_str(), m.role))
            .collect::<Vec<_>>(),
        vec![
            ("alice", Role::Owner),
            ("bob", Role::Member),
            ("carol", Role::Member)
        ]
    );
    // A member who is not an admin cannot add or remove.
    let e = p[1]
        .0
        .group_add(&team, vec![name("dave")])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotAnAdmin), "{e}");
    let e = p[1]
        .0
        .group_remove(&team, vec![name("carol")])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotAnAdmin), "{e}");
    // An outsider sees no group.
    let e = p[3].0.group_info(&team).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UnknownGroup));

    p[0].0.send_group(&team, "before", vec![]).await.unwrap();
    p[0].0
        .group_remove(&team, vec![name("carol")])
        .await
        .unwrap();
    p[0].0
        .send_group(&team, "after removal", vec![])
        .await
        .unwrap();
    p[0].0.group_add(&team, vec![name("dave")]).await.unwrap();
    p[1].0
        .send_group(&team, "after joining", vec![])
        .await
        .unwrap();

    let (s, e, _) = &mut p[1];
    assert_eq!(
        seen(&drain(s, e).await),
        vec![
            "alice Created bob,carol",
            "before",
            "alice Removed carol",
            "after removal",
            "alice Added dave"
        ]
    );
    // carol got everything up to her removal, and the signed notice of it.
    let (s, e, _) = &mut p[2];
    let carol = seen(&drain(s, e).await);
    assert_eq!(
        carol,
        vec!["alice Created bob,carol", "before", "alice Removed carol"]
    );
    // dave gets everything from his joining on.
    let (s, e, _) = &mut p[3];
    assert_eq!(
        seen(&drain(s, e).await),
        vec!["alice Added dave", "after joining"]
    );

    let list = p[3].0.group_list().await.unwrap();
    assert_eq!(
        (list[0].group.clone(), list[0].role, list[0].members),
        (team.clone(), Role::Member, 3)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_removal_and_joining_sqlite() {
    permissions_removal_and_joining(spawn_server().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_removal_and_joining_postgres() {
    let Some(db) = telepound_testkit::pg::PgDb::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut config = telepound_testkit::test_config(dir.path());
    config.database = telepound_server::store::DatabaseUrl::Postgres(db.url.clone());
    permissions_removal_and_joining(telepound_testkit::spawn_server_with(config).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sealed_for_an_old_membership_is_rewrapped_by_itself() {
    let server = spawn_server().await;
    let url = server.url();
    let mut p = people(&url, &["alice", "bob", "carol"]).await;
    let team = g("team");
    p[0].0
        .group_create(&team, vec![name("bob"), name("carol")])
        .await
        .unwrap();
    p[0].0.group_promote(&team, &name("bob")).await.unwrap();
    // alice seals for alice, bob and carol...
    let id = p[0]
        .0
        .queue_group(&team, "sealed before the change", vec![], None)
        .await
        .unwrap();
    // ...then another admin removes carol before it is sent.
    p[1].0
        .group_remove(&team, vec![name("carol")])
        .await
        .unwrap();
    let flushed = p[0].0.flush_outbox().await.unwrap();
    assert!(
        flushed.iter().any(|(pm, r)| pm.msg_id == id && r.is_ok()),
        "accepted after re-wrapping"
    );
    let (s, e, _) = &mut p[2];
    assert!(!seen(&drain(s, e).await).contains(&"sealed before the change".to_owned()));
    let (s, e, _) = &mut p[1];
    assert!(seen(&drain(s, e).await).contains(&"sealed before the change".to_owned()));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_members_get_everything_in_order_exactly_once() {
    let server = spawn_server().await;
    let url = server.url();
    let mut p = people(&url, &["alice", "bob"]).await;
    let team = g("team");
    p[0].0.group_create(&team, vec![name("bob")]).await.unwrap();
    p[1].0.client().close().await;
    let mut expected = vec!["alice Created bob".to_owned()];
    for i in 0..30 {
        let text = format!("m{i}");
        p[0].0.send_group(&team, &text, vec![]).await.unwrap();
        expected.push(text);
    }
    let home = p.remove(1).2;
    let (mut bob, mut be) = login(&url, "bob", home.path()).await;
    assert_eq!(seen(&drain(&mut bob, &mut be).await), expected);
    let (mut again, mut ae) = login(&url, "bob", home.path()).await;
    assert!(
        drain(&mut again, &mut ae).await.is_empty(),
        "acknowledged: not shown again"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_admins_change_membership_while_others_send() {
    let server = spawn_server().await;
    let url = server.url();
    let names = ["alice", "bob", "carol", "dave", "erin", "frank"];
    let mut p = people(&url, &names).await;
    let team = g("team");
    p[0].0
        .group_create(&team, names[1..].iter().map(|n| name(n)).collect())
        .await
        .unwrap();
    p[0].0.group_promote(&team, &name("bob")).await.unwrap();
    let mut tasks = Vec::new();
    // Two admins churn erin and frank in and out...
    for (i, (mut s, _e, home)) in p.drain(..2).enumerate() {
        let team = team.clone();
        let who = name(if i == 0 { "erin" } else { "frank" });
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                s.group_remove(&team, vec![who.clone()]).await.unwrap();
                s.group_add(&team, vec![who.clone()]).await.unwrap();
            }
            drop(home);
            0usize
        }));
    }
    // ...while carol and dave keep sending; every send gets through.
    for (mut s, _e, home) in p.drain(..2) {
        let team = team.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                s.send_group(&team, &format!("{} {i}", s.user()), vec![])
                    .await
                    .unwrap();
            }
            drop(home);
            10usize
        }));
    }
    let mut sent = 0;
    for t in tasks {
        sent += t.await.unwrap();
    }
    assert_eq!(sent, 20);
    // Whoever received something could open it: nothing undecryptable.
    for (s, e, _) in &mut p {
        let items = drain(s, e).await;
        assert!(
            !items.iter().any(|i| matches!(i, Inbound::Refused { .. })),
            "{items:?}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_256() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = telepound_testkit::test_config(dir.path());
    config.limits.login_attempts_per_address = 100_000;
    config.limits.messages_per_second = 100_000;
    config.limits.message_burst = 100_000;
    let server = telepound_testkit::spawn_server_with(config).await;
    let url = server.url();
    let others: Vec<String> = (1..256).map(|i| format!("u{i:03}")).collect();
    for n in &others {
        signup(&url, n).await;
    }
    signup(&url, "extra").await;
    let home = tempfile::tempdir().unwrap();
    let (mut owner, _oe) = user(&url, "owner", home.path()).await;
    let big = g("big");
    let info = owner
        .group_create(&big, others.iter().map(|n| name(n)).collect())
        .await
        .unwrap();
    assert_eq!(info.members.len(), 256);
    let e = owner
        .group_add(&big, vec![name("extra")])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::GroupFull), "{e}");
    owner
        .send_group(&big, "hello all 256", vec![])
        .await
        .unwrap();
    for n in ["u001", "u128", "u255"] {
        let h = tempfile::tempdir().unwrap();
        let (mut s, mut e) = login(&url, n, h.path()).await;
        assert_eq!(
            seen(&drain(&mut s, &mut e).await),
            vec![
                format!("owner Created {}", others.join(",")),
                "hello all 256".to_owned()
            ]
        );
    }
    let _ = GroupEventKind::Created;
    server.stop().await;
}
