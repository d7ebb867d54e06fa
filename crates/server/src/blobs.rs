//! `/v1/blobs`: encrypted files, streamed to disk, resumable both ways.
//!
//! ```text
//! POST   /v1/blobs        {size, recipients}       → 201 {blob_id}
//! HEAD   /v1/blobs/{id}                            → Upload-Offset, Upload-Length
//! PATCH  /v1/blobs/{id}   Upload-Offset: N, bytes  → 204 Upload-Offset: N'
//! GET    /v1/blobs/{id}   [Range: bytes=N-]        → 200 / 206 ciphertext
//! DELETE /v1/blobs/{id}                            → 204 (recipient: done; owner: gone)
//! ```
//!
//! Every request carries `Authorization: Bearer <session token>`. The
//! server only ever holds ciphertext, a chunk at a time: bodies are written
//! to disk as they arrive and read from disk as they leave. An upload cut
//! off keeps what arrived (fsynced and recorded), so the next `PATCH`
//! continues from `Upload-Offset`; a download continues with `Range`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use telepound_protocol::blob::{BlobError, CreateBlob, CreatedBlob, blob_len, valid_id};
use telepound_protocol::{ErrorCode, UserName};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::server::Shared;

/// Bytes written between progress records during an upload.
const CHECKPOINT: u64 = 8 * 1024 * 1024;

/// Upload offset header (as in tus).
pub const UPLOAD_OFFSET: &str = "upload-offset";
/// Declared blob size header.
pub const UPLOAD_LENGTH: &str = "upload-length";

/// Uploads in progress: one writer per blob at a time. A newer request of
/// the blob's owner (a resume, a `HEAD` asking where to resume) takes over:
/// it asks the upload in progress to stop, which then records what arrived,
/// and waits for that. So a client whose connection died without a close
/// (the old request would otherwise wait for bytes that never come) can
/// resume at once, and learns the true offset.
#[derive(Default)]
pub struct Uploading(Mutex<HashMap<String, Arc<Slot>>>);

#[derive(Default)]
struct Slot {
    lock: Arc<tokio::sync::Mutex<()>>,
    /// Cancelled to make the upload in progress stop and save what it has.
    current: Mutex<CancellationToken>,
}

/// A blob's writer lock, held. It keeps its slot alive too, so that
/// [`Uploading::release`] never forgets a slot somebody holds (a later
/// request would then take a fresh lock and write beside it).
struct Held {
    _guard: tokio::sync::OwnedMutexGuard<()>,
    _slot: Arc<Slot>,
    /// Cancelled when a later request takes over.
    stop: CancellationToken,
}

/// Longest a request waits for another upload of the same blob to end.
const UPLOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

impl Uploading {
    /// Stops the blob's upload in progress, if any, and takes its writer
    /// lock (dropping the [`Held`] releases it); its token says when a
    /// later request takes over in turn.
    async fn take_over(&self, id: &str) -> Option<Held> {
        // std Mutexes: a map lookup and a token swap, never held across the
        // await below.
        let slot = self
            .0
            .lock()
            .expect("uploading lock")
            .entry(id.to_owned())
            .or_default()
            .clone();
        slot.current.lock().expect("upload token").cancel();
        let guard = tokio::time::timeout(UPLOAD_WAIT, slot.lock.clone().lock_owned())
            .await
            .ok()?;
        let stop = CancellationToken::new();
        *slot.current.lock().expect("upload token") = stop.clone();
        Some(Held {
            _guard: guard,
            _slot: slot,
            stop,
        })
    }

    /// Forgets a blob's slot once nobody holds or waits for it.
    fn release(&self, id: &str) {
        let mut map = self.0.lock().expect("uploading lock");
        if map.get(id).is_some_and(|m| Arc::strong_count(m) == 1) {
            map.remove(id);
        }
    }
}

fn error(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(BlobError {
            code,
            message: message.into(),
        }),
    )
        .into_response()
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(cause = %e, "blob request failed");
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Internal,
        ErrorCode::Internal.describe(),
    )
}

fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        ErrorCode::NotFound.describe(),
    )
}

/// The blob's file: `DATA_DIR/blobs/XY/ID` (ids are checked first).
pub fn path(shared: &Shared, id: &str) -> PathBuf {
    shared.config.data_dir.join("blobs").join(&id[..2]).join(id)
}

/// The user a bearer token belongs to.
async fn user(shared: &Shared, headers: &HeaderMap) -> Result<UserName, Response> {
    use base64::Engine;
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| {
            base64::engine::general_purpose::STANDARD
                .decode(t.trim())
                .ok()
        });
    let Some(token) = token else {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            ErrorCode::InvalidToken,
            "log in first",
        ));
    };
    match shared
        .store
        .session_user(&Sha256::digest(&token), crate::now_ms())
        .await
    {
        Ok(Some(u)) => Ok(u),
        Ok(None) => Err(error(
            StatusCode::UNAUTHORIZED,
            ErrorCode::InvalidToken,
            ErrorCode::InvalidToken.describe(),
        )),
        Err(e) => Err(internal(e)),
    }
}

fn offset_headers(received: u64, size: u64) -> [(&'static str, HeaderValue); 2] {
    [
        (UPLOAD_OFFSET, HeaderValue::from(received)),
        (UPLOAD_LENGTH, HeaderValue::from(size)),
    ]
}

/// `POST /v1/blobs`: declares a blob, checking the size limit and the
/// owner's quota before a byte is sent.
pub async fn create(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Json<CreateBlob>,
) -> Response {
    let owner = match user(&shared, &headers).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let CreateBlob {
        size,
        mut recipients,
    } = body.0;
    let max = blob_len(shared.config.max_file_bytes);
    if size > max {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::FileTooLarge,
            format!(
                "files may be at most {} MiB here",
                shared.config.max_file_bytes / (1024 * 1024)
            ),
        );
    }
    recipients.sort();
    recipients.dedup();
    if recipients.is_empty() || recipients.len() > 1024 {
        return error(
            StatusCode::BAD_REQUEST,
            ErrorCode::Malformed,
            "name 1 to 1024 recipients",
        );
    }
    match shared.store.users_exist(&recipients).await {
        Ok(found) => {
            if let Some((r, _)) = recipients.iter().zip(found).find(|(_, f)| !f) {
                return error(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::UnknownUser,
                    format!("User Not Found: {r}"),
                );
            }
        }
        Err(e) => return internal(e),
    }
    let id = {
        use base64::Engine;
        use rand::Rng;
        let mut raw = [0u8; 16];
        rand::rng().fill_bytes(&mut raw);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    };
    let now = crate::now_ms();
    let expires = now + shared.config.blob_ttl.as_millis() as i64;
    let blob = crate::store::NewBlob {
        id: id.clone(),
        owner,
        size,
        recipients,
        created_at: now,
        expires_at: expires,
    };
    match shared
        .store
        .create_blob(&blob, shared.config.quota_bytes)
        .await
    {
        Ok(Ok(())) => (StatusCode::CREATED, Json(CreatedBlob { blob_id: id })).into_response(),
        Ok(Err(used)) => error(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::QuotaExceeded,
            format!(
                "this file needs {} MiB but only {} MiB of your {} MiB are left (files waiting to be fetched count)",
                size.div_ceil(1024 * 1024),
                shared.config.quota_bytes.saturating_sub(used) / (1024 * 1024),
                shared.config.quota_bytes / (1024 * 1024)
            ),
        ),
        Err(e) => internal(e),
    }
}

/// `HEAD /v1/blobs/{id}`: how much has arrived (owner and recipients).
pub async fn status(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let me = match user(&shared, &headers).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    if !valid_id(&id) {
        return not_found();
    }
    // The owner asks where to resume: an upload still in progress (its
    // connection may be dead) stops and records its last bytes first.
    if let Ok(Some(b)) = shared.store.blob(&id).await
        && b.owner == me
    {
        drop(shared.uploading.take_over(&id).await);
        shared.uploading.release(&id);
    }
    match shared.store.blob(&id).await {
        Ok(Some(b)) if b.owner == me || b.recipients.iter().any(|(r, _)| *r == me) => {
            (StatusCode::OK, offset_headers(b.received, b.size)).into_response()
        }
        Ok(_) => not_found(),
        Err(e) => internal(e),
    }
}

/// `PATCH /v1/blobs/{id}`: appends the body at `Upload-Offset`, which must
/// be where the stored bytes end.
pub async fn append(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let me = match user(&shared, &headers).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    if !valid_id(&id) {
        return not_found();
    }
    // Only the owner may take an upload over.
    match shared.store.blob(&id).await {
        Ok(Some(b)) if b.owner == me => {}
        Ok(_) => return not_found(),
        Err(e) => return internal(e),
    }
    let Some(held) = shared.uploading.take_over(&id).await else {
        return error(
            StatusCode::CONFLICT,
            ErrorCode::OffsetMismatch,
            "another upload of this file is in progress",
        );
    };
    // Its own task: when the client goes away hyper drops this handler,
    // but the upload must still record what arrived, or a resume would
    // start over. Tracked, so a shutdown waits for that record.
    let task = shared.tracker.clone().spawn(async move {
        let response = append_locked(&shared, &id, &me, &headers, body, held.stop.clone()).await;
        drop(held);
        shared.uploading.release(&id);
        response
    });
    task.await.unwrap_or_else(internal)
}

async fn append_locked(
    shared: &Arc<Shared>,
    id: &str,
    me: &UserName,
    headers: &HeaderMap,
    body: Body,
    stop: CancellationToken,
) -> Response {
    let (shared, id) = (shared.clone(), id.to_owned());
    let rec = match shared.store.blob(&id).await {
        Ok(Some(b)) if &b.owner == me => b,
        Ok(_) => return not_found(),
        Err(e) => return internal(e),
    };
    let offset = headers
        .get(UPLOAD_OFFSET)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if offset != Some(rec.received) {
        return (
            StatusCode::CONFLICT,
            offset_headers(rec.received, rec.size),
            Json(BlobError {
                code: ErrorCode::OffsetMismatch,
                message: format!("the server has {} bytes; continue from there", rec.received),
            }),
        )
            .into_response();
    }
    let file_path = path(&shared, &id);
    let result = async {
        if let Some(dir) = file_path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&file_path)
            .await?;
        // Anything past the recorded size is from a write that was never
        // confirmed (a crash mid-upload): drop it.
        file.set_len(rec.received).await?;
        file.seek(std::io::SeekFrom::Start(rec.received)).await?;
        Ok::<_, std::io::Error>(file)
    }
    .await;
    let mut file = match result {
        Ok(f) => f,
        Err(e) => return internal(e),
    };

    let mut received = rec.received;
    let mut since_checkpoint = 0;
    let mut too_big = false;
    let mut stream = body.into_data_stream();
    let idle = shared.config.idle_timeout;
    loop {
        // A later request of the owner takes over, and a client that sends
        // nothing for the idle timeout is presumed gone: either way, keep
        // what arrived (below).
        let next = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            next = tokio::time::timeout(idle, stream.next()) => match next {
                Ok(next) => next,
                Err(_) => break,
            },
        };
        let Some(chunk) = next else { break };
        let Ok(chunk) = chunk else {
            // The client went away: keep what arrived, below.
            break;
        };
        if received + chunk.len() as u64 > rec.size {
            too_big = true;
            break;
        }
        if let Err(e) = file.write_all(&chunk).await {
            return internal(e);
        }
        received += chunk.len() as u64;
        since_checkpoint += chunk.len() as u64;
        shared
            .metrics
            .blob_bytes_in
            .fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
        if since_checkpoint >= CHECKPOINT {
            since_checkpoint = 0;
            if let Err(e) = checkpoint(&shared, &id, &mut file, received).await {
                return internal(e);
            }
        }
    }
    if let Err(e) = checkpoint(&shared, &id, &mut file, received).await {
        return internal(e);
    }
    if too_big {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::FileTooLarge,
            format!("more bytes than the {} declared", rec.size),
        );
    }
    if received == rec.size {
        tracing::info!(size = rec.size, "file uploaded");
    }
    (StatusCode::NO_CONTENT, offset_headers(received, rec.size)).into_response()
}

/// Makes the bytes so far durable, then records them: the recorded offset
/// never runs ahead of the disk.
async fn checkpoint(
    shared: &Shared,
    id: &str,
    file: &mut tokio::fs::File,
    received: u64,
) -> anyhow::Result<()> {
    file.flush().await?;
    file.sync_data().await?;
    shared.store.set_blob_received(id, received).await?;
    Ok(())
}

/// `GET /v1/blobs/{id}`: the ciphertext, from `Range: bytes=N-` if given,
/// to the owner and the recipients only.
pub async fn download(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let me = match user(&shared, &headers).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    if !valid_id(&id) {
        return not_found();
    }
    let rec = match shared.store.blob(&id).await {
        Ok(Some(b)) if b.owner == me || b.recipients.iter().any(|(r, _)| *r == me) => b,
        // Someone else's blob looks exactly like no blob.
        Ok(_) => return not_found(),
        Err(e) => return internal(e),
    };
    if rec.received < rec.size {
        return error(
            StatusCode::CONFLICT,
            ErrorCode::Incomplete,
            ErrorCode::Incomplete.describe(),
        );
    }
    let start = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => 0,
        Some(r) => match r
            .strip_prefix("bytes=")
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|n| n.parse::<u64>().ok())
        {
            Some(n) if n <= rec.size => n,
            _ => {
                return (
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    [(header::CONTENT_RANGE, format!("bytes */{}", rec.size))],
                )
                    .into_response();
            }
        },
    };
    let mut file = match tokio::fs::File::open(path(&shared, &id)).await {
        Ok(f) => f,
        Err(e) => return internal(e),
    };
    if let Err(e) = file.seek(std::io::SeekFrom::Start(start)).await {
        return internal(e);
    }
    let len = rec.size - start;
    let metrics = shared.metrics.clone();
    let stream = tokio_util::io::ReaderStream::with_capacity(
        tokio::io::AsyncReadExt::take(file, len),
        64 * 1024,
    )
    .inspect(move |c| {
        if let Ok(c) = c {
            metrics
                .blob_bytes_out
                .fetch_add(c.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let mut response = Response::new(Body::from_stream(stream));
    let h = response.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if start > 0 {
        if let Ok(v) = HeaderValue::from_str(&format!(
            "bytes {start}-{}/{}",
            rec.size.saturating_sub(1),
            rec.size
        )) {
            h.insert(header::CONTENT_RANGE, v);
        }
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    response
}

/// `DELETE /v1/blobs/{id}`: a recipient is done with it (the blob goes once
/// every recipient is); the owner withdraws it.
pub async fn done(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let me = match user(&shared, &headers).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    if !valid_id(&id) {
        return not_found();
    }
    let rec = match shared.store.blob(&id).await {
        Ok(Some(b)) => b,
        Ok(None) => return not_found(),
        Err(e) => return internal(e),
    };
    let remove = if rec.owner == me {
        true
    } else if rec.recipients.iter().any(|(r, _)| *r == me) {
        match shared.store.blob_fetched(&id, &me).await {
            Ok(all) => all,
            Err(e) => return internal(e),
        }
    } else {
        return not_found();
    };
    if remove && let Err(e) = remove_blob(&shared, &id).await {
        return internal(e);
    }
    StatusCode::NO_CONTENT.into_response()
}

/// Deletes a blob's file and record.
///
/// # Errors
/// When the file cannot be removed or the record deleted.
pub async fn remove_blob(shared: &Shared, id: &str) -> anyhow::Result<()> {
    match tokio::fs::remove_file(path(shared, id)).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    shared.store.delete_blob(id).await?;
    Ok(())
}
