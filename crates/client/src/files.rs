//! Files and images: encrypted in chunks with a fresh key, uploaded as
//! ciphertext, resumable both ways, and saved under safe names.
//!
//! Upload: the file is hashed and its type recognised from its content;
//! a fresh [`FileKey`] seals it chunk by chunk as it streams to the server.
//! The key, blob id, hash and recipients are remembered in `uploads.json`
//! until the message goes out, so an upload cut off resumes from the
//! server's offset (the ciphertext is deterministic given the key), even in
//! a later run. A remembered upload is resumed only for the same
//! recipients (the blob is readable by them alone) and only when the file
//! still hashes the same: resuming re-encrypts from the cut under the same
//! key and nonces, which is safe only for the very same plaintext, so a
//! changed file starts over with a fresh key.
//!
//! Download: the ciphertext streams into a hidden `.part` file in the
//! download folder, resuming with `Range` after a cut. Only when all of it
//! is there is it opened, chunk by chunk, into a hidden temporary file;
//! any chunk that fails, a missing end, or a hash mismatch deletes both and
//! fails loudly. The result is linked under a safe name that never replaces
//! an existing file.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use hyper::Method;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use telepound_crypto::stream::{CHUNK, FileKey, HEADER, TAG, blob_len, chunk_span, chunks};
use telepound_crypto::{Attachment, ImageSize, SecretBytes};
use telepound_protocol::UserName;
use telepound_protocol::blob::{CreateBlob, CreatedBlob};
use telepound_protocol::message::B64;

use crate::http::{self, Http};
use crate::{Error, Result};

/// Progress of one transfer, for a progress bar (the library draws none).
pub trait Progress: Send + Sync {
    /// A transfer of `total` bytes named `name` starts at `done`.
    fn start(&self, _name: &str, _total: u64, _done: u64) {}
    /// `n` more bytes moved.
    fn advance(&self, _n: u64) {}
    /// The transfer ended (successfully or not).
    fn finish(&self) {}
}

/// No progress reporting.
pub struct NoProgress;
impl Progress for NoProgress {}

fn file_err(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// A file being sent: everything needed to (re)upload it and describe it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outgoing {
    /// The file.
    pub path: PathBuf,
    /// Its size when prepared.
    pub len: u64,
    /// Its modification time when prepared (ns since the epoch).
    pub modified: u128,
    /// The name shown to recipients.
    pub name: String,
    /// Media type recognised from the content.
    pub media_type: String,
    /// Dimensions, for images.
    pub image: Option<ImageSize>,
    /// SHA-256 of the content.
    pub sha256: B64,
    /// The file key (secret; this file is readable only by its owner).
    key: SecretBytes,
    /// The blob header (version and nonce prefix).
    header: B64,
    /// The server's blob id, once created.
    pub blob_id: Option<String>,
    /// Who the blob is for (sorted), as told to the server at creation.
    #[serde(default)]
    pub recipients: Vec<UserName>,
}

impl Outgoing {
    fn file_key(&self) -> Result<FileKey> {
        Ok(FileKey::from_parts(&self.key.0, &self.header.0)?)
    }

    /// Forgets the blob and takes a fresh key: what was sent under the old
    /// key is never continued with other plaintext or for other readers.
    fn start_over(&mut self) {
        let key = FileKey::generate();
        self.key = SecretBytes::new(key.key_bytes().to_vec());
        self.header = B64(key.header().to_vec());
        self.blob_id = None;
        self.recipients = Vec::new();
    }

    /// The descriptor that travels inside the encrypted message.
    pub fn attachment(&self) -> Option<Attachment> {
        Some(Attachment {
            blob_id: self.blob_id.clone()?,
            key: self.key.clone(),
            size: self.len,
            name: self.name.clone(),
            media_type: self.media_type.clone(),
            sha256: self.sha256.clone(),
            image: self.image,
        })
    }
}

/// Checks, hashes and types `path` (blocking: call from a blocking thread).
fn inspect(path: &Path) -> Result<Outgoing> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => file_err(path, "no such file"),
        _ => file_err(path, e),
    })?;
    if meta.is_dir() {
        return Err(file_err(path, "is a folder, not a file"));
    }
    if !meta.is_file() {
        return Err(file_err(path, "is not a regular file"));
    }
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let mut f = std::fs::File::open(path).map_err(|e| file_err(path, e))?;
    let mut head = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < head.len() {
        match f.read(&mut head[got..]).map_err(|e| file_err(path, e))? {
            0 => break,
            n => got += n,
        }
    }
    head.truncate(got);
    let media_type = infer::get(&head).map_or("application/octet-stream", |t| t.mime_type());
    let image = if media_type.starts_with("image/") {
        imagesize::blob_size(&head).ok().map(|s| ImageSize {
            width: s.width as u32,
            height: s.height as u32,
        })
    } else {
        None
    };
    f.seek(std::io::SeekFrom::Start(0))
        .map_err(|e| file_err(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| file_err(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    let key = FileKey::generate();
    Ok(Outgoing {
        path: path.to_owned(),
        len,
        modified,
        name: path
            .file_name()
            .map_or_else(|| "file".to_owned(), |n| n.to_string_lossy().into_owned()),
        media_type: media_type.to_owned(),
        image,
        sha256: B64(hasher.finalize().to_vec()),
        key: SecretBytes::new(key.key_bytes().to_vec()),
        header: B64(key.header().to_vec()),
        blob_id: None,
        recipients: Vec::new(),
    })
}

/// `recipients` sorted and without repeats, as remembered.
fn recipient_set(recipients: &[UserName]) -> Vec<UserName> {
    let mut r = recipients.to_vec();
    r.sort();
    r.dedup();
    r
}

/// Uploads in progress, remembered so they resume in a later run.
#[derive(Debug)]
pub struct Uploads {
    path: PathBuf,
    items: Vec<Outgoing>,
}

impl Uploads {
    /// Loads `dir/uploads.json`.
    ///
    /// # Errors
    /// When it exists but cannot be read.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("uploads.json");
        let items = read_uploads(&path)?;
        Ok(Self { path, items })
    }

    /// Changes the file under its lock, from its current content (another
    /// process of this user may be uploading too).
    fn update(&mut self, change: impl FnOnce(&mut Vec<Outgoing>)) -> Result<()> {
        let _lock = crate::state::lock(&self.path)?;
        let mut items = read_uploads(&self.path)?;
        change(&mut items);
        let json = serde_json::to_vec(&items).map_err(|e| {
            Error::io(
                format!("cannot write {}", self.path.display()),
                std::io::Error::other(e),
            )
        })?;
        crate::state::write_atomic(&self.path, &json)?;
        self.items = items;
        Ok(())
    }

    /// Prepares `file` for `recipients`, resuming an earlier unfinished
    /// upload only if it was for the same recipients and the file still
    /// has the same content (hashed again now); otherwise a fresh key.
    ///
    /// # Errors
    /// [`Error::File`] for a missing file, a folder, an unreadable file.
    pub async fn prepare(&mut self, file: &Path, recipients: &[UserName]) -> Result<Outgoing> {
        let path = std::fs::canonicalize(file).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => file_err(file, "no such file"),
            _ => file_err(file, e),
        })?;
        let p = path.clone();
        let mut fresh = tokio::task::spawn_blocking(move || inspect(&p))
            .await
            .map_err(|e| file_err(file, e))??;
        let recipients = recipient_set(recipients);
        self.items = read_uploads(&self.path)?;
        if let Some(o) = self.items.iter().find(|o| {
            o.path == path
                && o.len == fresh.len
                && o.sha256 == fresh.sha256
                && o.recipients == recipients
        }) {
            return Ok(o.clone());
        }
        fresh.recipients = recipients;
        Ok(fresh)
    }

    fn remember(&mut self, o: &Outgoing) -> Result<()> {
        self.update(|items| {
            items.retain(|x| !(x.path == o.path && x.recipients == o.recipients));
            items.push(o.clone());
        })
    }

    /// Forgets an upload once its message is accepted.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn forget(&mut self, blob_id: &str) -> Result<()> {
        self.update(|items| items.retain(|x| x.blob_id.as_deref() != Some(blob_id)))
    }

    /// Uploads `o` for `recipients` (creating the blob, or continuing it
    /// from the server's offset), and returns the attachment descriptor.
    ///
    /// # Errors
    /// [`Error::Server`] for a refusal (`file_too_large`, `quota_exceeded`,
    /// `unknown_user`), a connection error (what arrived is kept: call
    /// again to resume), [`Error::File`] for local problems.
    pub async fn upload(
        &mut self,
        http: &Http,
        token: &[u8],
        o: &mut Outgoing,
        recipients: &[UserName],
        progress: Arc<dyn Progress>,
    ) -> Result<Attachment> {
        let size = blob_len(o.len);
        let mut created_now = false;
        let recipients = recipient_set(recipients);
        if o.blob_id.is_some() && o.recipients != recipients {
            // A blob only its first recipients may read: never reused.
            o.start_over();
        }
        loop {
            let id = match &o.blob_id {
                Some(id) => id.clone(),
                None => {
                    let body = serde_json::to_vec(&CreateBlob {
                        size,
                        recipients: recipients.clone(),
                    })
                    .map_err(|e| Error::Protocol(format!("blob creation request: {e}")))?;
                    let req = http
                        .request(Method::POST, "/v1/blobs", token)
                        .header(hyper::header::CONTENT_TYPE, "application/json")
                        .body(http::full(body))
                        .expect("valid request");
                    let answer = http::check(http.send(req).await?).await?;
                    let bytes = answer
                        .resp
                        .into_body()
                        .collect()
                        .await
                        .map_err(lost)?
                        .to_bytes();
                    let created: CreatedBlob = serde_json::from_slice(&bytes)
                        .map_err(|e| Error::Protocol(format!("blob creation answer: {e}")))?;
                    o.blob_id = Some(created.blob_id.clone());
                    o.recipients = recipients.clone();
                    self.remember(o)?;
                    created_now = true;
                    created.blob_id
                }
            };
            // The id goes into a request path: it must be one (a server's
            // odd answer must not reach the request builder's panic).
            if !telepound_protocol::blob::valid_id(&id) {
                return Err(Error::Protocol("the server gave an invalid file id".into()));
            }
            let path = format!("/v1/blobs/{id}");
            let head = http
                .send(
                    http.request(Method::HEAD, &path, token)
                        .body(http::empty())
                        .expect("valid"),
                )
                .await?;
            if head.resp.status() == hyper::StatusCode::NOT_FOUND && !created_now {
                // Expired or withdrawn since the last try: start over.
                o.start_over();
                continue;
            }
            let mut offset = offset_of(&http::check(head).await?.resp)?;
            progress.start(&o.name, size, offset);
            while offset < size {
                let body = ciphertext(o.path.clone(), o.file_key()?, o.len, offset);
                let dog = http::Watchdog::new(http.stall_limit());
                let req = http
                    .request(Method::PATCH, &path, token)
                    .header("upload-offset", offset)
                    .header(hyper::header::CONTENT_LENGTH, size - offset)
                    .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
                    .body(counting(body, progress.clone(), dog.clone()))
                    .expect("valid request");
                let sent = tokio::select! {
                    sent = http.send(req) => sent,
                    () = dog.stalled() => Err(dog.error()),
                };
                let resp = match sent {
                    Ok(r) => r,
                    Err(e) => {
                        progress.finish();
                        return Err(e);
                    }
                };
                if resp.resp.status() == hyper::StatusCode::CONFLICT
                    && resp.resp.headers().contains_key("upload-offset")
                {
                    offset = offset_of(&resp.resp)?;
                    continue;
                }
                let resp = http::check(resp).await.inspect_err(|_| progress.finish())?;
                offset = offset_of(&resp.resp)?;
            }
            progress.finish();
            return o
                .attachment()
                .ok_or_else(|| Error::Protocol("upload without a blob id".into()));
        }
    }
}

/// Reads `uploads.json`; a file that does not parse (it only remembers
/// unfinished uploads) counts as empty.
fn read_uploads(path: &Path) -> Result<Vec<Outgoing>> {
    match crate::state::read_json(path) {
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::InvalidData => {
            Ok(Vec::new())
        }
        other => other,
    }
}

fn lost(e: hyper::Error) -> Error {
    Error::Disconnected(Some(e.to_string()))
}

fn offset_of<B>(resp: &hyper::Response<B>) -> Result<u64> {
    resp.headers()
        .get("upload-offset")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::Protocol("answer without Upload-Offset".into()))
}

/// The encrypted blob of the file at `path`, from byte `from`, produced
/// chunk by chunk as it is sent (never the whole file in memory).
fn ciphertext(
    path: PathBuf,
    key: FileKey,
    plain_len: u64,
    from: u64,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send {
    struct State {
        path: PathBuf,
        file: Option<std::fs::File>,
        key: FileKey,
        plain_len: u64,
        pos: u64,
    }
    let state = State {
        path,
        file: None,
        key,
        plain_len,
        pos: from,
    };
    futures_util::stream::unfold(state, |mut s| async move {
        let total = blob_len(s.plain_len);
        if s.pos >= total {
            return None;
        }
        let out = tokio::task::block_in_place(|| -> std::io::Result<Bytes> {
            if s.pos < HEADER as u64 {
                let h = s.key.header();
                return Ok(Bytes::copy_from_slice(&h[s.pos as usize..]));
            }
            let index = (s.pos - HEADER as u64) / (CHUNK + TAG) as u64;
            let skip = ((s.pos - HEADER as u64) % (CHUNK + TAG) as u64) as usize;
            let (_, sealed_len, last) = chunk_span(s.plain_len, index);
            let plain_len = sealed_len - TAG;
            let file = match &mut s.file {
                Some(f) => f,
                None => s.file.insert(std::fs::File::open(&s.path)?),
            };
            file.seek(std::io::SeekFrom::Start(index * CHUNK as u64))?;
            let mut plain = zeroize::Zeroizing::new(vec![0u8; plain_len]);
            file.read_exact(&mut plain).map_err(|e| {
                std::io::Error::new(e.kind(), "the file changed while it was being sent")
            })?;
            let sealed = s
                .key
                .seal_chunk(index, &plain, last)
                .map_err(std::io::Error::other)?;
            Ok(Bytes::copy_from_slice(&sealed[skip..]))
        });
        match out {
            Ok(b) => {
                s.pos += b.len() as u64;
                Some((Ok(b), s))
            }
            Err(e) => {
                s.pos = total;
                Some((Err(e), s))
            }
        }
    })
}

fn counting(
    stream: impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    progress: Arc<dyn Progress>,
    dog: http::Watchdog,
) -> http::Body {
    // Counted as the body hands bytes to the connection.
    let s = stream.map(move |r| {
        if let Ok(b) = &r {
            progress.advance(b.len() as u64);
            dog.moved();
        }
        r.map(hyper::body::Frame::data)
    });
    BodyExt::boxed_unsync(http_body_util::StreamBody::new(s))
}

/// Downloads, checks and saves `att` into `dir`; returns the saved path.
///
/// # Errors
/// A connection error (the `.part` file stays, and the next call resumes),
/// [`Error::Server`] (`not_found`, `incomplete`), or [`Error::File`] when
/// the file fails verification (tampered, truncated, wrong hash), in which
/// case nothing is left behind.
pub async fn download(
    http: &Http,
    token: &[u8],
    att: &Attachment,
    dir: &Path,
    progress: Arc<dyn Progress>,
) -> Result<PathBuf> {
    if !telepound_protocol::blob::valid_id(&att.blob_id) {
        return Err(file_err(
            Path::new(&safe_name(&att.name)),
            "invalid file id",
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    let part = dir.join(format!(".telepound-{}.part", att.blob_id));
    let expected = blob_len(att.size);
    let mut have = std::fs::metadata(&part).map_or(0, |m| m.len());
    if have > expected {
        let _ = std::fs::remove_file(&part);
        have = 0;
    }
    progress.start(&att.name, expected, have);
    if have < expected {
        let path = format!("/v1/blobs/{}", att.blob_id);
        let mut req = http.request(Method::GET, &path, token);
        if have > 0 {
            req = req.header(hyper::header::RANGE, format!("bytes={have}-"));
        }
        let stall = http.stall_limit();
        let stalled = || http::Watchdog::new(stall).error();
        let answer =
            tokio::time::timeout(stall, http.send(req.body(http::empty()).expect("valid")))
                .await
                .map_err(|_| stalled())
                .inspect_err(|_| progress.finish())??;
        let answer = http::check(answer)
            .await
            .inspect_err(|_| progress.finish())?;
        let append = answer.resp.status() == hyper::StatusCode::PARTIAL_CONTENT;
        let mut out = std::fs::OpenOptions::new();
        out.create(true)
            .append(append)
            .write(true)
            .truncate(!append);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            out.mode(0o600);
        }
        let mut out = out.open(&part).map_err(|e| file_err(&part, e))?;
        if !append {
            have = 0;
        }
        let (resp, _conn) = (answer.resp, answer.conn);
        let mut body = resp.into_body();
        loop {
            // A server that goes silent mid-download ends it after the
            // limit; the `.part` keeps what arrived.
            let Ok(frame) = tokio::time::timeout(stall, body.frame()).await else {
                progress.finish();
                let _ = out.sync_data();
                return Err(stalled());
            };
            let Some(frame) = frame else { break };
            let frame = match frame {
                Ok(f) => f,
                Err(e) => {
                    progress.finish();
                    let _ = out.sync_data();
                    return Err(lost(e));
                }
            };
            if let Some(data) = frame.data_ref() {
                if have + data.len() as u64 > expected {
                    break;
                }
                out.write_all(data).map_err(|e| file_err(&part, e))?;
                have += data.len() as u64;
                progress.advance(data.len() as u64);
            }
        }
        out.sync_data().map_err(|e| file_err(&part, e))?;
    }
    progress.finish();
    let (part2, dir2, att2) = (part.clone(), dir.to_owned(), att.clone());
    let saved = tokio::task::spawn_blocking(move || open_and_save(&part2, &dir2, &att2))
        .await
        .map_err(|e| file_err(dir, e))?;
    if saved.is_ok() {
        // Tell the server this copy is fetched (best effort: it expires anyway).
        let path = format!("/v1/blobs/{}", att.blob_id);
        if let Ok(r) = http
            .send(
                http.request(Method::DELETE, &path, token)
                    .body(http::empty())
                    .expect("valid"),
            )
            .await
        {
            let _ = r.resp.into_body().collect().await;
        }
    }
    saved
}

/// Decrypts a complete `.part` into a temporary file, verifies it, and
/// links it under a safe, unused name. Removes both on any failure.
fn open_and_save(part: &Path, dir: &Path, att: &Attachment) -> Result<PathBuf> {
    let tmp = dir.join(format!(".telepound-{}.tmp", att.blob_id));
    // The sender chose the name: only its safe form goes into errors.
    let shown = safe_name(&att.name);
    let result = (|| -> Result<PathBuf> {
        let fail = |why: &str| {
            file_err(
                Path::new(&shown),
                format!("failed verification ({why}); nothing was saved"),
            )
        };
        let mut input = std::fs::File::open(part).map_err(|e| file_err(part, e))?;
        if input.metadata().map_err(|e| file_err(part, e))?.len() != blob_len(att.size) {
            return Err(fail("wrong length"));
        }
        let mut header = [0u8; HEADER];
        input
            .read_exact(&mut header)
            .map_err(|_| fail("truncated"))?;
        let key = FileKey::from_parts(&att.key.0, &header).map_err(|e| match e {
            telepound_crypto::Error::NewerFileFormat(_) => {
                file_err(Path::new(&shown), format!("{e}; nothing was saved"))
            }
            _ => fail("bad header"),
        })?;
        let mut out = create_private(&tmp).map_err(|e| file_err(&tmp, e))?;
        let mut hasher = Sha256::new();
        let mut sealed = vec![0u8; CHUNK + TAG];
        for i in 0..chunks(att.size) {
            let (_, len, last) = chunk_span(att.size, i);
            input
                .read_exact(&mut sealed[..len])
                .map_err(|_| fail("truncated"))?;
            let plain = key
                .open_chunk(i, &sealed[..len], last)
                .map_err(|_| fail("a chunk was altered"))?;
            hasher.update(&*plain);
            out.write_all(&plain).map_err(|e| file_err(&tmp, e))?;
        }
        if hasher.finalize().as_slice() != att.sha256.0.as_slice() {
            return Err(fail("hash mismatch"));
        }
        out.sync_all().map_err(|e| file_err(&tmp, e))?;
        place(&tmp, dir, &safe_name(&att.name))
    })();
    let _ = std::fs::remove_file(&tmp);
    if !matches!(&result, Err(Error::Io { .. })) {
        let _ = std::fs::remove_file(part);
    }
    result
}

/// Creates `path` anew, readable only by the owner: never an existing file
/// or whatever a planted link points to. A leftover of an earlier run (or
/// anything else in its place) is removed first, once.
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let open = || {
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(0o600);
        }
        o.open(path)
    };
    match open() {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(path)?;
            open()
        }
        other => other,
    }
}

/// Links `tmp` into `dir` as `name`, or `name (1)`, `name (2)`, … : a hard
/// link fails rather than replace an existing file, so nothing is ever
/// overwritten, even by a file created meanwhile.
fn place(tmp: &Path, dir: &Path, name: &str) -> Result<PathBuf> {
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    for n in 0..10_000 {
        let candidate = if n == 0 {
            name.to_owned()
        } else {
            format!("{stem} ({n}){ext}")
        };
        let target = dir.join(&candidate);
        match std::fs::hard_link(tmp, &target) {
            Ok(()) => return Ok(target),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(file_err(&target, e)),
        }
    }
    Err(file_err(dir, "too many files with that name"))
}

/// Longest saved name, in bytes.
const MAX_NAME: usize = 200;

/// Reduces a name chosen by a sender to a safe file name: no folders (only
/// the last path component survives), no control, NUL or bidi-override
/// characters, no characters other systems forbid, no leading dots (no
/// hidden files, no `..`), not a reserved device name, at most 200 bytes
/// with the extension kept. Never empty.
pub fn safe_name(name: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or("");
    let mut s: String = last
        .chars()
        .filter(|c| !c.is_control() && !matches!(*c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}'))
        .map(|c| if matches!(c, '<' | '>' | ':' | '"' | '|' | '?' | '*') { '_' } else { c })
        .collect();
    s = s
        .trim_start_matches(['.', ' '])
        .trim_end_matches(['.', ' '])
        .to_owned();
    if s.is_empty() {
        s = "file".to_owned();
    }
    let stem_upper = s.split('.').next().unwrap_or("").to_ascii_uppercase();
    const RESERVED: &[&str] = &[
        "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
        "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
    ];
    if RESERVED.contains(&stem_upper.as_str()) {
        s.insert(0, '_');
    }
    if s.len() > MAX_NAME {
        let ext = match s.rfind('.') {
            Some(i) if s.len() - i <= 16 && i > 0 => s[i..].to_owned(),
            _ => String::new(),
        };
        let mut end = MAX_NAME - ext.len();
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s = format!("{}{ext}", &s[..end]);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_reduced() {
        assert_eq!(safe_name("../../etc/passwd"), "passwd");
        assert_eq!(safe_name("/etc/shadow"), "shadow");
        assert_eq!(safe_name("C:\\Windows\\evil.exe"), "evil.exe");
        assert_eq!(safe_name("a\0b\nc\x1b[31m.txt"), "abc[31m.txt");
        assert_eq!(safe_name(".."), "file");
        assert_eq!(safe_name(".bashrc"), "bashrc");
        assert_eq!(safe_name(""), "file");
        assert_eq!(safe_name("photo\u{202e}gpj.exe"), "photogpj.exe");
        assert_eq!(safe_name("con.txt"), "_con.txt");
        assert_eq!(safe_name("what?.txt"), "what_.txt");
        let long = format!("{}.jpeg", "é".repeat(300));
        let s = safe_name(&long);
        assert!(s.len() <= MAX_NAME && s.ends_with(".jpeg"), "{s}");
    }

    /// `data` sealed as a complete `.part` in `dir`, and its descriptor.
    fn sealed_part(dir: &Path, data: &[u8], version: u8) -> Attachment {
        let key = FileKey::generate();
        let blob_id = "AAAAAAAAAAAAAAAAAAAAAA".to_owned();
        let mut blob = key.header().to_vec();
        blob[0] = version;
        let n = chunks(data.len() as u64);
        for i in 0..n {
            let start = i as usize * CHUNK;
            let end = (start + CHUNK).min(data.len());
            blob.extend(key.seal_chunk(i, &data[start..end], i + 1 == n).unwrap());
        }
        std::fs::write(dir.join(format!(".telepound-{blob_id}.part")), blob).unwrap();
        Attachment {
            blob_id,
            key: SecretBytes::new(key.key_bytes().to_vec()),
            size: data.len() as u64,
            name: "evil\x1b[2J\nname.txt".into(),
            media_type: "text/plain".into(),
            sha256: B64(Sha256::digest(data).to_vec()),
            image: None,
        }
    }

    #[cfg(unix)]
    #[test]
    fn the_decrypted_file_is_private_and_never_follows_a_planted_link() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let att = sealed_part(dir.path(), b"secret text", 1);
        let part = dir.path().join(format!(".telepound-{}.part", att.blob_id));
        // Someone with write access to the folder plants the temporary name.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let tmp = dir.path().join(format!(".telepound-{}.tmp", att.blob_id));
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        let saved = open_and_save(&part, dir.path(), &att).unwrap();
        assert_eq!(std::fs::read(&saved).unwrap(), b"secret text");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        let mode = std::fs::metadata(&saved).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        assert!(!tmp.exists() && !part.exists());
    }

    #[test]
    fn a_newer_format_is_a_clear_error_with_a_safe_name() {
        let dir = tempfile::tempdir().unwrap();
        let att = sealed_part(dir.path(), b"from the future", 9);
        let part = dir.path().join(format!(".telepound-{}.part", att.blob_id));
        let e = open_and_save(&part, dir.path(), &att)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("newer Telepound") && e.contains("upgrade"),
            "{e}"
        );
        assert!(!e.contains('\x1b') && !e.contains('\n'), "{e:?}");
        assert!(e.starts_with("evil[2Jname.txt: "), "{e}");
        // A broken chunk names the file safely too.
        let att = sealed_part(dir.path(), b"x", 1);
        let mut bad = std::fs::read(&part).unwrap();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        std::fs::write(&part, bad).unwrap();
        let e = open_and_save(&part, dir.path(), &att)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("evil[2Jname.txt: failed verification"),
            "{e:?}"
        );
    }

    #[test]
    fn placing_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join(".t");
        std::fs::write(&tmp, b"new").unwrap();
        std::fs::write(dir.path().join("a.txt"), b"old").unwrap();
        let p = place(&tmp, dir.path(), "a.txt").unwrap();
        assert_eq!(p.file_name().unwrap(), "a (1).txt");
        assert_eq!(std::fs::read(dir.path().join("a.txt")).unwrap(), b"old");
        let p2 = place(&tmp, dir.path(), "a.txt").unwrap();
        assert_eq!(p2.file_name().unwrap(), "a (2).txt");
    }
}
