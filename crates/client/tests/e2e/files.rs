//! Encrypted files end to end: sizes, names, tampering, limits, resume,
//! access, clean-up.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::Connection;
use telepound_client::files::{Progress, Uploads};
use telepound_client::{Error, Inbound, NoProgress, Session};
use telepound_crypto::Attachment;
use telepound_protocol::ErrorCode;
use telepound_testkit::{TestServer, http_get, metric, spawn_server_with, test_config};

use crate::util::*;

fn write(dir: &Path, name: &str, len: usize) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(
        &p,
        (0..len).map(|i| (i * 7 % 251) as u8).collect::<Vec<u8>>(),
    )
    .unwrap();
    p
}

fn visible_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn blob_files(server: &TestServer) -> usize {
    let root = server.data_dir.join("blobs");
    std::fs::read_dir(&root)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| std::fs::read_dir(e.path()).map(|f| f.count()).unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

async fn received(bob: &mut Session, be: &mut telepound_client::Events) -> Vec<Attachment> {
    drain(bob, be)
        .await
        .into_iter()
        .flat_map(|i| match i {
            Inbound::Message(r) => r.payload.attachments,
            _ => vec![],
        })
        .collect()
}

async fn metrics(server: &TestServer) -> String {
    http_get(server.addr, "/metrics").await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_of_every_size_arrive_intact_and_are_deleted_once_fetched() {
    let server = spawn_server().await;
    let url = server.url();
    let (ha, hb, files, down) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (mut alice, _ae) = user(&url, "alice", ha.path()).await;
    let (mut bob, mut be) = user(&url, "bob", hb.path()).await;
    let chunk = 64 * 1024;
    let sizes = [0, 1, chunk - 1, chunk, chunk + 1, 3 * chunk + 7];
    let paths: Vec<PathBuf> = sizes
        .iter()
        .map(|n| write(files.path(), &format!("f{n}.bin"), *n))
        .collect();
    alice
        .send_files(&name("bob"), "the files", &paths, Arc::new(NoProgress))
        .await
        .unwrap();
    assert_eq!(blob_files(&server), sizes.len());

    let atts = received(&mut bob, &mut be).await;
    assert_eq!(atts.len(), sizes.len());
    for (a, p) in atts.iter().zip(&paths) {
        assert_eq!(a.size, std::fs::metadata(p).unwrap().len());
        let saved = bob
            .download(a, down.path(), Arc::new(NoProgress))
            .await
            .unwrap();
        assert_eq!(saved.parent().unwrap(), down.path());
        assert_eq!(
            std::fs::read(&saved).unwrap(),
            std::fs::read(p).unwrap(),
            "{}",
            a.name
        );
    }
    // Every recipient has fetched: the server keeps nothing.
    assert_eq!(blob_files(&server), 0);
    assert_eq!(
        visible_files(down.path()).len(),
        sizes.len(),
        "no .part or temporary files left"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_recognised_by_content() {
    let server = spawn_server().await;
    let url = server.url();
    let (ha, hb, files) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (mut alice, _ae) = user(&url, "alice", ha.path()).await;
    let (mut bob, mut be) = user(&url, "bob", hb.path()).await;
    // A 3x2 PNG named as if it were text.
    let png: &[u8] = &[
        0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13, b'I', b'H', b'D', b'R', 0, 0,
        0, 3, 0, 0, 0, 2, 8, 2, 0, 0, 0, 0x12, 0x16, 0xf1, 0x4d,
    ];
    let p = files.path().join("notes.txt");
    std::fs::write(&p, png).unwrap();
    alice
        .send_files(&name("bob"), "pic", &[p], Arc::new(NoProgress))
        .await
        .unwrap();
    let a = &received(&mut bob, &mut be).await[0];
    assert_eq!(a.media_type, "image/png");
    assert_eq!(a.image.map(|i| (i.width, i.height)), Some((3, 2)));
    server.stop().await;
}

/// Uploads a small file and returns a descriptor to forge names or hashes on.
async fn uploaded(alice: &Session, to: &str, dir: &Path, len: usize) -> Attachment {
    let mut uploads = Uploads::load(dir).unwrap();
    let mut o = uploads
        .prepare(&write(dir, "x.bin", len), &[name(to)])
        .await
        .unwrap();
    let a = uploads
        .upload(
            &alice.http().unwrap(),
            alice.token(),
            &mut o,
            &[name(to)],
            Arc::new(NoProgress),
        )
        .await
        .unwrap();
    // As queueing the message does: the next call is a new upload, even of
    // the same bytes.
    uploads.forget(&a.blob_id).unwrap();
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_are_saved_safely_inside_the_folder_and_never_overwrite() {
    let server = spawn_server().await;
    let url = server.url();
    let (ha, hb, files, down) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (mut alice, _ae) = user(&url, "alice", ha.path()).await;
    let (mut bob, mut be) = user(&url, "bob", hb.path()).await;
    std::fs::write(down.path().join("dup.txt"), b"bob's own file").unwrap();
    let long = format!("{}.txt", "n".repeat(1000));
    let hostile = [
        "../../etc/passwd",
        "/etc/shadow",
        "C:\\Windows\\system.ini",
        "bad\0name\x07\x1b[2J.txt",
        long.as_str(),
        "dup.txt",
        "dup.txt",
        "..",
    ];
    let mut atts = Vec::new();
    for n in hostile {
        let mut a = uploaded(&alice, "bob", files.path(), 10).await;
        a.name = n.to_owned();
        atts.push(a);
    }
    alice.queue(&name("bob"), "names", atts).await.unwrap();
    alice.flush_outbox().await.unwrap();
    for a in received(&mut bob, &mut be).await {
        let saved = bob
            .download(&a, down.path(), Arc::new(NoProgress))
            .await
            .unwrap();
        assert_eq!(saved.parent().unwrap(), down.path(), "{saved:?}");
        let fname = saved.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !fname.starts_with('.') && !fname.chars().any(char::is_control),
            "{fname:?}"
        );
        assert!(fname.len() <= 200);
    }
    let names = visible_files(down.path());
    assert!(
        names.contains(&"passwd".to_owned()) && names.contains(&"shadow".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"dup (1).txt".to_owned()) && names.contains(&"dup (2).txt".to_owned()),
        "{names:?}"
    );
    assert_eq!(
        std::fs::read(down.path().join("dup.txt")).unwrap(),
        b"bob's own file"
    );
    assert!(
        !Path::new("/etc/passwd")
            .metadata()
            .map(|m| m.len() == 10)
            .unwrap_or(false)
    );
    assert_eq!(names.len(), hostile.len() + 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_truncated_or_mismatched_files_fail_and_leave_nothing() {
    let server = spawn_server().await;
    let url = server.url();
    let (ha, hb, files, down) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (alice, _ae) = user(&url, "alice", ha.path()).await;
    let (bob, _be) = user(&url, "bob", hb.path()).await;
    let blob_path = |id: &str| server.data_dir.join("blobs").join(&id[..2]).join(id);

    // A flipped bit in the stored ciphertext.
    let a = uploaded(&alice, "bob", files.path(), 200_000).await;
    let mut bytes = std::fs::read(blob_path(&a.blob_id)).unwrap();
    bytes[100_000] ^= 1;
    std::fs::write(blob_path(&a.blob_id), bytes).unwrap();
    let e = bob
        .download(&a, down.path(), Arc::new(NoProgress))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("failed verification"), "{e}");
    assert!(
        visible_files(down.path()).is_empty(),
        "nothing saved, no .part: {:?}",
        visible_files(down.path())
    );

    // A server that cuts the blob short and says that is all of it.
    let a = uploaded(&alice, "bob", files.path(), 200_000).await;
    let cut = 70_000u64;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(blob_path(&a.blob_id))
        .unwrap();
    f.set_len(cut).unwrap();
    let db = server.data_dir.join("telepound.sqlite3");
    let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query("UPDATE blobs SET size = ?, received = ? WHERE id = ?")
        .bind(cut as i64)
        .bind(cut as i64)
        .bind(&a.blob_id)
        .execute(&mut c)
        .await
        .unwrap();
    c.close().await.unwrap();
    let e = bob
        .download(&a, down.path(), Arc::new(NoProgress))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("failed verification"), "{e}");
    assert!(visible_files(down.path()).is_empty());

    // A descriptor whose hash does not match the content.
    let mut a = uploaded(&alice, "bob", files.path(), 1000).await;
    a.sha256.0[0] ^= 1;
    let e = bob
        .download(&a, down.path(), Arc::new(NoProgress))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("hash mismatch"), "{e}");
    assert!(visible_files(down.path()).is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_limit_and_quota_are_refused_before_any_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.max_file_bytes = 300_000;
    config.quota_bytes = 500_000;
    let server = spawn_server_with(config).await;
    let url = server.url();
    let (ha, files) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut alice, _ae) = user(&url, "alice", ha.path()).await;
    signup(&url, "bob").await;

    let big = write(files.path(), "big.bin", 400_000);
    let e = alice
        .send_files(&name("bob"), "big", &[big], Arc::new(NoProgress))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::FileTooLarge), "{e}");
    assert!(e.to_string().contains("at most"), "{e}");

    let a = write(files.path(), "a.bin", 250_000);
    alice
        .send_files(&name("bob"), "a", &[a], Arc::new(NoProgress))
        .await
        .unwrap();
    let before = metric(&metrics(&server).await, "telepound_blob_bytes_in_total").unwrap();
    let b = write(files.path(), "b.bin", 260_000);
    let e = alice
        .send_files(&name("bob"), "b", &[b], Arc::new(NoProgress))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::QuotaExceeded), "{e}");
    assert!(e.to_string().contains("left"), "{e}");
    assert_eq!(
        metric(&metrics(&server).await, "telepound_blob_bytes_in_total").unwrap(),
        before,
        "no bytes wasted"
    );

    // A missing file or a folder: a clear error, nothing sent.
    let e = alice
        .send_files(
            &name("bob"),
            "x",
            &[files.path().join("nope.jpg")],
            Arc::new(NoProgress),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::File { .. }) && e.to_string().contains("no such file"),
        "{e}"
    );
    let e = alice
        .send_files(
            &name("bob"),
            "x",
            &[files.path().to_owned()],
            Arc::new(NoProgress),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("folder"), "{e}");
    server.stop().await;
}

/// Counts bytes and signals once `cut_at` have gone by.
struct CutAt {
    seen: AtomicU64,
    cut_at: u64,
    hit: tokio::sync::Notify,
}

impl Progress for CutAt {
    fn advance(&self, n: u64) {
        if self.seen.fetch_add(n, Ordering::SeqCst) + n >= self.cut_at {
            self.hit.notify_one();
        }
    }
}

/// Where a transfer started and how many bytes it moved.
#[derive(Default)]
struct Tally {
    started_at: AtomicU64,
    moved: AtomicU64,
}

impl Progress for Tally {
    fn start(&self, _name: &str, _total: u64, done: u64) {
        self.started_at.store(done, Ordering::SeqCst);
    }
    fn advance(&self, n: u64) {
        self.moved.fetch_add(n, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_and_downloads_cut_off_resume_where_they_stopped() {
    let server = spawn_server().await;
    let url = server.url();
    let (ha, hb, files, down) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (alice, _ae) = user(&url, "alice", ha.path()).await;
    let (bob, _be) = user(&url, "bob", hb.path()).await;
    let size = 8 * 1024 * 1024;
    let path = write(files.path(), "big.bin", size);
    let total = telepound_protocol::blob::blob_len(size as u64);

    // Upload, cut after 2 MiB.
    let mut uploads = Uploads::load(ha.path()).unwrap();
    let cut = Arc::new(CutAt {
        seen: AtomicU64::new(0),
        cut_at: 2 * 1024 * 1024,
        hit: Default::default(),
    });
    let http = alice.http().unwrap();
    let bob_only = [name("bob")];
    let mut o = uploads.prepare(&path, &bob_only).await.unwrap();
    tokio::select! {
        r = uploads.upload(&http, alice.token(), &mut o, &bob_only, cut.clone()) => panic!("finished before the cut: {r:?}"),
        () = cut.hit.notified() => {}
    }
    let after_cut = metric(&metrics(&server).await, "telepound_blob_bytes_in_total").unwrap();
    assert!(after_cut > 0.0 && after_cut < total as f64, "{after_cut}");
    // The next try, even from a fresh start, continues from the server's offset.
    let mut uploads = Uploads::load(ha.path()).unwrap();
    let mut o = uploads.prepare(&path, &bob_only).await.unwrap();
    assert!(o.blob_id.is_some(), "the unfinished upload was remembered");
    let first_id = o.blob_id.clone();
    let a = uploads
        .upload(
            &http,
            alice.token(),
            &mut o,
            &bob_only,
            Arc::new(NoProgress),
        )
        .await
        .unwrap();
    assert_eq!(
        Some(a.blob_id.clone()),
        first_id,
        "the same blob, continued"
    );
    let sent = metric(&metrics(&server).await, "telepound_blob_bytes_in_total").unwrap();
    assert!(
        sent < total as f64 * 1.3,
        "resumed, not restarted: {sent} bytes for {total}"
    );

    // Download, cut after 3 MiB.
    let cut = Arc::new(CutAt {
        seen: AtomicU64::new(0),
        cut_at: 3 * 1024 * 1024,
        hit: Default::default(),
    });
    tokio::select! {
        r = bob.download(&a, down.path(), cut.clone()) => panic!("finished before the cut: {r:?}"),
        () = cut.hit.notified() => {}
    }
    let part = down.path().join(format!(".telepound-{}.part", a.blob_id));
    let kept = std::fs::metadata(&part).unwrap().len();
    assert!(kept >= 3 * 1024 * 1024);
    // What the second try received. (The server's byte counter cannot tell:
    // after the cut it had already written megabytes more into the socket
    // buffers, which the client never read.)
    let tally = Arc::new(Tally::default());
    let saved = bob.download(&a, down.path(), tally.clone()).await.unwrap();
    assert_eq!(
        std::fs::read(&saved).unwrap(),
        std::fs::read(&path).unwrap()
    );
    assert_eq!(
        tally.started_at.load(Ordering::SeqCst),
        kept,
        "resumed from the partial file"
    );
    assert_eq!(
        tally.moved.load(Ordering::SeqCst),
        total - kept,
        "only the missing bytes travelled again"
    );
    assert!(!part.exists());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_cannot_fetch_even_with_the_id() {
    let server = spawn_server().await;
    let url = server.url();
    let (ha, hc, files, down) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (alice, _ae) = user(&url, "alice", ha.path()).await;
    signup(&url, "bob").await;
    let (carol, _ce) = user(&url, "carol", hc.path()).await;
    let a = uploaded(&alice, "bob", files.path(), 5000).await;
    assert!(
        telepound_protocol::blob::valid_id(&a.blob_id) && a.blob_id.len() == 22,
        "128 random bits"
    );
    let e = carol
        .download(&a, down.path(), Arc::new(NoProgress))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    // Without a token at all.
    let (status, _) = http_get(server.addr, &format!("/v1/blobs/{}", a.blob_id)).await;
    assert_eq!(status, 401);
    // What the server holds is ciphertext only: the plaintext is nowhere in it.
    let stored = std::fs::read(
        server
            .data_dir
            .join("blobs")
            .join(&a.blob_id[..2])
            .join(&a.blob_id),
    )
    .unwrap();
    let plain = std::fs::read(files.path().join("x.bin")).unwrap();
    assert!(!contains(&stored, &plain[..64]));
    assert!(visible_files(down.path()).is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_upload_is_resumed_only_for_the_same_file_and_recipients() {
    let server = spawn_server().await;
    let url = server.url();
    let (ha, hb, hc, files, down) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (mut alice, _ae) = user(&url, "alice", ha.path()).await;
    let (_bob, _be) = user(&url, "bob", hb.path()).await;
    let (mut carol, mut ce) = user(&url, "carol", hc.path()).await;
    let path = write(files.path(), "photo.bin", 100_000);
    let bob_only = [name("bob")];

    // Uploaded for bob, but the message never went out (a run cut short).
    let for_bob = alice
        .upload_files(&bob_only, std::slice::from_ref(&path), Arc::new(NoProgress))
        .await
        .unwrap()
        .remove(0);
    // The same file for carol is a blob carol may read, not bob's.
    alice
        .send_files(
            &name("carol"),
            "for carol",
            std::slice::from_ref(&path),
            Arc::new(NoProgress),
        )
        .await
        .unwrap();
    let for_carol = received(&mut carol, &mut ce).await.remove(0);
    assert_ne!(for_carol.blob_id, for_bob.blob_id);
    let saved = carol
        .download(&for_carol, down.path(), Arc::new(NoProgress))
        .await
        .unwrap();
    assert_eq!(std::fs::read(saved).unwrap(), std::fs::read(&path).unwrap());

    // bob's upload is still remembered, and resumed while the file is the same.
    let mut uploads = Uploads::load(alice.dir()).unwrap();
    let again = uploads.prepare(&path, &bob_only).await.unwrap();
    assert_eq!(again.blob_id.as_deref(), Some(for_bob.blob_id.as_str()));

    // Other content with the same size and modification time: resuming
    // would seal different plaintext under the same key and nonces.
    let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[70_000] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(modified)
        .unwrap();
    let mut changed = uploads.prepare(&path, &bob_only).await.unwrap();
    assert!(changed.blob_id.is_none(), "a changed file is not resumed");
    let att = uploads
        .upload(
            &alice.http().unwrap(),
            alice.token(),
            &mut changed,
            &bob_only,
            Arc::new(NoProgress),
        )
        .await
        .unwrap();
    assert_ne!(att.key, for_bob.key, "a fresh key");
    assert_ne!(att.blob_id, for_bob.blob_id);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfetched_file_is_deleted_by_the_expiry_loop() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.blob_ttl = std::time::Duration::from_secs(1);
    config.expiry_interval = std::time::Duration::from_millis(200);
    let server = spawn_server_with(config).await;
    let url = server.url();
    let (ha, hb, files, down) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (alice, _ae) = user(&url, "alice", ha.path()).await;
    let (bob, _be) = user(&url, "bob", hb.path()).await;
    let a = uploaded(&alice, "bob", files.path(), 5000).await;
    assert_eq!(blob_files(&server), 1);
    // Nobody fetches it: the loop deletes the file and its record.
    let start = std::time::Instant::now();
    while blob_files(&server) > 0 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "the expired file is still on disk"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let e = bob
        .download(&a, down.path(), Arc::new(NoProgress))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    server.stop().await;
}
