//! The store behaviour suite against both backends.

use std::sync::Arc;

use telepound_server::store::conformance::Recorder;
use telepound_server::store::{self, DatabaseUrl, Store, WriterConfig};

/// The suite's writer: an ack window long enough that a test acknowledging
/// a message "in time" does so even on a loaded machine.
fn writer() -> WriterConfig {
    WriterConfig {
        ack_window: std::time::Duration::from_secs(2),
        ..WriterConfig::default()
    }
}

mod sqlite {
    use super::*;

    async fn make(rec: Arc<Recorder>) -> Option<(Arc<dyn Store>, tempfile::TempDir)> {
        let dir = tempfile::tempdir().unwrap();
        let url = DatabaseUrl::Sqlite(dir.path().join("t.sqlite3"));
        let store = store::open(&url, true, super::writer(), rec).await.unwrap();
        Some((store, dir))
    }

    telepound_server::store_conformance_tests!(make);

    /// One server per database: a second open of a database that is open
    /// fails with a line naming the lock, and opens once the first is gone.
    #[tokio::test]
    async fn a_database_in_use_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let url = DatabaseUrl::Sqlite(dir.path().join("t.sqlite3"));
        let open = || store::open(&url, true, super::writer(), Arc::new(Recorder::default()));
        let first = open().await.unwrap();
        let e = open().await.err().expect("a second open is refused");
        assert!(matches!(e, store::StoreError::InUse(_)), "{e:?}");
        let lock = dir.path().join("t.sqlite3-lock");
        assert_eq!(
            e.to_string(),
            format!(
                "{} is locked: another telepound server has this database open",
                lock.display()
            )
        );
        first.close().await;
        drop(first);
        open().await.unwrap().close().await;
    }

    /// A new database file gets 4 KiB pages; a file made with another size
    /// (8 KiB, the default until 2026-12-03) keeps it, and still opens.
    #[tokio::test]
    async fn new_files_get_4_kib_pages_and_old_files_keep_theirs() {
        use sqlx::{ConnectOptions, Connection};
        let dir = tempfile::tempdir().unwrap();
        let page_size = |path: std::path::PathBuf| async move {
            let mut c = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(path)
                .connect()
                .await
                .unwrap();
            let n: i64 = sqlx::query_scalar("PRAGMA page_size")
                .fetch_one(&mut c)
                .await
                .unwrap();
            c.close().await.unwrap();
            n
        };
        let fresh = dir.path().join("new.sqlite3");
        // Opens (creating or migrating) and closes the store at `path`.
        let open_store = |path: std::path::PathBuf| async move {
            let url = DatabaseUrl::Sqlite(path);
            let s = store::open(&url, true, super::writer(), Arc::new(Recorder::default()))
                .await
                .unwrap();
            s.close().await;
        };
        open_store(fresh.clone()).await;
        assert_eq!(page_size(fresh).await, 4096);

        let old = dir.path().join("old.sqlite3");
        {
            let mut c = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&old)
                .create_if_missing(true)
                .page_size(8192)
                .connect()
                .await
                .unwrap();
            sqlx::query("CREATE TABLE t (x)")
                .execute(&mut c)
                .await
                .unwrap();
            c.close().await.unwrap();
        }
        open_store(old.clone()).await;
        assert_eq!(page_size(old).await, 8192);
    }
}

mod postgres {
    use super::*;
    use telepound_testkit::pg::PgDb;

    async fn make(rec: Arc<Recorder>) -> Option<(Arc<dyn Store>, PgDb)> {
        let db = PgDb::create().await?;
        let url = DatabaseUrl::Postgres(db.url.clone());
        let store = store::open(&url, true, super::writer(), rec).await.unwrap();
        Some((store, db))
    }

    telepound_server::store_conformance_tests!(make);

    /// `accepted` means durable only if commits wait for the WAL flush: the
    /// server sets that itself, whatever the database's default says.
    #[tokio::test]
    async fn connections_commit_synchronously_whatever_the_database_default() {
        use sqlx::{ConnectOptions, Connection};
        let Some(db) = PgDb::create().await else {
            return;
        };
        db.admin_exec(&format!(
            "ALTER DATABASE {} SET synchronous_commit = off",
            db.name
        ))
        .await;
        let mut plain = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let setting: String = sqlx::query_scalar("SHOW synchronous_commit")
            .fetch_one(&mut plain)
            .await
            .unwrap();
        assert_eq!(setting, "off", "the database default did not apply");
        plain.close().await.unwrap();
        let mut conn = store::postgres::connect_options(&db.url)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let setting: String = sqlx::query_scalar("SHOW synchronous_commit")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(setting, "on");
        conn.close().await.unwrap();
    }
}

/// Regression (found in review): a seq handed to a message acknowledged in
/// the ack window is never stored, so after a restart the database alone
/// would hand it out again; the durable high-water mark prevents that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_never_reuses_a_seq_after_a_restart() {
    use telepound_protocol::{MsgId, UserName};
    use telepound_server::store::{EntryKind, NewEntry};
    let dir = tempfile::tempdir().unwrap();
    let url = DatabaseUrl::Sqlite(dir.path().join("t.sqlite3"));
    let bob = UserName::new("bob").unwrap();
    let entry = || NewEntry {
        recipient: bob.clone(),
        kind: EntryKind::Message,
        sender: UserName::new("alice").unwrap(),
        msg_id: MsgId::new(),
        server_ts: 1,
        expires_at: i64::MAX,
        envelope: "{}".into(),
    };
    let rec = Arc::new(Recorder::default());
    rec.live.lock().unwrap().push(bob.clone());
    let store = store::open(&url, true, writer(), rec.clone())
        .await
        .unwrap();
    let e = entry();
    let id = e.msg_id;
    let sending = {
        let store = store.clone();
        tokio::spawn(async move { store.enqueue(vec![e]).await })
    };
    let seq = rec.announced("bob", id).await;
    assert_eq!(store.ack(&bob, vec![seq], 2, 99).await.unwrap(), 1);
    assert_eq!(sending.await.unwrap().unwrap(), vec![Some(seq)]);
    assert_eq!(store.mailbox_depth().await.unwrap(), 0, "never written");
    store.close().await;
    drop(store);

    let store = store::open(&url, true, writer(), Arc::new(Recorder::default()))
        .await
        .unwrap();
    let next = store.enqueue(vec![entry()]).await.unwrap()[0].unwrap();
    assert!(next > seq, "seq {seq} handed out again as {next}");
    store.close().await;
}

/// One-to-one envelopes live in the envelope log beside the database, not
/// in its rows: they read back, survive a restart, and a segment goes once
/// the last row pointing into it is acknowledged or expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keeps_envelopes_in_its_log_and_removes_spent_segments() {
    use sqlx::{ConnectOptions, Connection};
    use telepound_protocol::{MsgId, UserName};
    use telepound_server::store::{EntryKind, NewEntry};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.sqlite3");
    let log_dir = dir.path().join("t.sqlite3-envelopes");
    let url = DatabaseUrl::Sqlite(db.clone());
    let (bob, carol, alice) = (
        UserName::new("bob").unwrap(),
        UserName::new("carol").unwrap(),
        UserName::new("alice").unwrap(),
    );
    // About the size of a real one-to-one envelope, each one different.
    let envelope = |n: usize| format!("{{\"n\":{n},\"body\":\"{}\"}}", "x".repeat(2400 + n % 7));
    let entry = |to: &UserName, n: usize, expires_at: i64| NewEntry {
        recipient: to.clone(),
        kind: EntryKind::Message,
        sender: alice.clone(),
        msg_id: MsgId::new(),
        server_ts: 1,
        expires_at,
        envelope: envelope(n).into(),
    };
    let segments = || {
        let mut v: Vec<String> = std::fs::read_dir(&log_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    let open = || async {
        store::open(&url, true, writer(), Arc::new(Recorder::default()))
            .await
            .unwrap()
    };

    let store = open().await;
    let for_bob: Vec<NewEntry> = (0..300).map(|n| entry(&bob, n, i64::MAX)).collect();
    let mut retry = for_bob[0].clone();
    retry.envelope = envelope(999).into();
    let mut small = entry(&bob, 0, i64::MAX);
    small.envelope = "{}".into();
    let mut batch = for_bob.clone();
    batch.push(retry);
    batch.push(small);
    let got = store.enqueue(batch).await.unwrap();
    assert!(got[..300].iter().all(Option::is_some) && got[301].is_some());
    assert_eq!(got[300], None, "the retry is a duplicate");
    // Enough envelope bytes for the log (64 KiB): a smaller batch keeps
    // them in its rows, as the lone message below does.
    let for_carol: Vec<NewEntry> = (0..30).map(|n| entry(&carol, n, 10)).collect();
    store.enqueue(for_carol).await.unwrap();
    let first = segments();
    assert_eq!(first.len(), 1, "{first:?}");

    let page = store.fetch(&bob, 0, 1000).await.unwrap();
    let want: Vec<String> = (0..300).map(envelope).chain(["{}".to_string()]).collect();
    let have: Vec<String> = page.iter().map(|e| e.envelope.to_string()).collect();
    assert_eq!(
        have, want,
        "the first copy is kept, and the small one inline"
    );
    // The rows hold no envelope of their own.
    {
        let mut c = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&db)
            .connect()
            .await
            .unwrap();
        let (logged, longest): (i64, i64) =
            sqlx::query_as("SELECT COUNT(log_seg), MAX(LENGTH(envelope)) FROM mailbox")
                .fetch_one(&mut c)
                .await
                .unwrap();
        assert_eq!((logged, longest), (330, 2));
        c.close().await.unwrap();
    }
    let seqs: Vec<i64> = page.iter().map(|e| e.seq).collect();
    assert_eq!(
        store.ack(&bob, seqs[..100].to_vec(), 2, 99).await.unwrap(),
        100
    );
    store.close().await;
    drop(store);

    // After a restart: the same envelopes, and a new segment to append to.
    let store = open().await;
    let page = store.fetch(&bob, 0, 1000).await.unwrap();
    let have: Vec<String> = page.iter().map(|e| e.envelope.to_string()).collect();
    assert_eq!(have, want[100..]);
    store.enqueue(vec![entry(&bob, 7, i64::MAX)]).await.unwrap();
    let now = segments();
    assert_eq!(now.len(), 2, "{now:?}");
    assert_eq!(now[0], first[0]);

    // bob's rows all acknowledged: carol's still hold the first segment.
    let rest: Vec<i64> = page.iter().map(|e| e.seq).collect();
    store.ack(&bob, rest, 3, 99).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(segments(), now);
    // Once they expire, it goes.
    assert_eq!(store.expire(100).await.unwrap(), 30);
    for _ in 0..100 {
        if segments().len() == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(segments(), now[1..]);
    let last = store.fetch(&bob, 0, 1000).await.unwrap();
    assert_eq!(last.len(), 1);
    assert_eq!(&*last[0].envelope, envelope(7));
    store.close().await;
    let mut c = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&db)
        .connect()
        .await
        .unwrap();
    let inline: String = sqlx::query_scalar("SELECT envelope FROM mailbox WHERE log_seg IS NULL")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(
        inline,
        envelope(7),
        "a lone message keeps its envelope in its row"
    );
    c.close().await.unwrap();
}

/// The SQLite store keeps its mailbox index (each recipient's seqs, and
/// the duplicate check) in memory, built from the table when it opens:
/// after a restart, pages hold every waiting row in order, for recipients
/// whose rows are interleaved, and a repeated send is still a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_rebuilds_its_mailbox_index_on_open() {
    use telepound_protocol::{MsgId, UserName};
    use telepound_server::store::{EntryKind, NewEntry};
    let dir = tempfile::tempdir().unwrap();
    let url = DatabaseUrl::Sqlite(dir.path().join("t.sqlite3"));
    let (bob, carol, alice) = (
        UserName::new("bob").unwrap(),
        UserName::new("carol").unwrap(),
        UserName::new("alice").unwrap(),
    );
    let entry = |to: &UserName, kind: EntryKind, n: usize| NewEntry {
        recipient: to.clone(),
        kind,
        sender: alice.clone(),
        msg_id: MsgId::new(),
        server_ts: n as i64,
        expires_at: i64::MAX,
        // Large enough for the envelope log in the batches of 64 below.
        envelope: format!("{{\"n\":{n},\"pad\":\"{}\"}}", "y".repeat(300)).into(),
    };
    let store = store::open(&url, true, writer(), Arc::new(Recorder::default()))
        .await
        .unwrap();
    // 320 entries, bob's and carol's interleaved, a receipt now and then,
    // in batches of 64; each batch repeats its first entry at its end.
    let mut sent: Vec<(NewEntry, i64)> = Vec::new();
    for batch in 0..5 {
        let mut entries: Vec<NewEntry> = (0..64)
            .map(|i| {
                let n = batch * 64 + i;
                let to = if n % 2 == 0 { &bob } else { &carol };
                let kind = if n % 9 == 0 {
                    EntryKind::Receipt
                } else {
                    EntryKind::Message
                };
                entry(to, kind, n)
            })
            .collect();
        entries.push(entries[0].clone());
        let seqs = store.enqueue(entries.clone()).await.unwrap();
        assert_eq!(seqs[64], None, "a repeat within a batch is a duplicate");
        for (e, seq) in entries.into_iter().zip(seqs).take(64) {
            sent.push((e, seq.expect("stored")));
        }
    }
    // Bob acknowledges every third of his.
    let bobs: Vec<i64> = sent
        .iter()
        .filter(|(e, _)| e.recipient == bob)
        .map(|(_, s)| *s)
        .collect();
    let acked: Vec<i64> = bobs.iter().copied().step_by(3).collect();
    assert_eq!(
        store.ack(&bob, acked.clone(), 5, i64::MAX).await.unwrap(),
        acked.len() as u64
    );
    store.close().await;
    drop(store);

    let store = store::open(&url, true, writer(), Arc::new(Recorder::default()))
        .await
        .unwrap();
    let waiting: Vec<&(NewEntry, i64)> = sent.iter().filter(|(_, s)| !acked.contains(s)).collect();
    assert_eq!(
        store.mailbox_depth().await.unwrap(),
        waiting.len() as u64,
        "the depth after the restart"
    );
    for who in [&bob, &carol] {
        let want: Vec<(i64, MsgId)> = waiting
            .iter()
            .filter(|(e, _)| &e.recipient == who)
            .map(|(e, s)| (*s, e.msg_id))
            .collect();
        let mut got = Vec::new();
        let mut after = 0;
        loop {
            let page = store.fetch(who, after, 25).await.unwrap();
            got.extend(page.iter().map(|e| (e.seq, e.msg_id)));
            match page.last() {
                Some(last) if page.len() == 25 => after = last.seq,
                _ => break,
            }
        }
        assert_eq!(got, want, "{who}'s mailbox after the restart");
    }
    // A send repeated after the restart is still a duplicate; one whose
    // first copy was acknowledged is stored again.
    let kept = waiting[0].0.clone();
    let gone = sent.iter().find(|(_, s)| *s == acked[1]).unwrap().0.clone();
    let again = store
        .enqueue(vec![kept.clone(), gone.clone()])
        .await
        .unwrap();
    assert_eq!(again[0], None, "a repeat of a waiting row");
    assert!(
        again[1].is_some(),
        "a send whose first copy was acknowledged"
    );
    assert_eq!(
        store
            .waiting_since(&kept.recipient, kept.kind, &kept.sender, kept.msg_id)
            .await
            .unwrap(),
        Some(kept.server_ts)
    );
    let mut other = kept.clone();
    other.recipient = if kept.recipient == bob {
        carol.clone()
    } else {
        bob.clone()
    };
    assert_eq!(
        store
            .waiting_since(&other.recipient, other.kind, &other.sender, other.msg_id)
            .await
            .unwrap(),
        None,
        "the same id for another recipient is another row"
    );
    store.close().await;
}
