//! The WebSocket upgrade, done here rather than by axum's extractor, so the
//! connection owns its raw stream: an idle connection can drop the
//! WebSocket state (its read and write buffers) and keep only the stream,
//! then build the state again when something happens. See
//! `connection::Connection::hibernate`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::FromRequestParts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The stream under an upgraded connection.
pub type Upgraded = TokioIo<hyper::upgrade::Upgraded>;

/// A valid WebSocket upgrade request (RFC 6455 section 4.2.1), ready to be
/// answered with [`WsUpgrade::accept`].
pub struct WsUpgrade {
    key: HeaderValue,
    on_upgrade: hyper::upgrade::OnUpgrade,
}

/// Why a request is not a WebSocket upgrade: a status and one line.
pub struct NotUpgrade(StatusCode, &'static str);

impl IntoResponse for NotUpgrade {
    fn into_response(self) -> Response {
        let mut response = (self.0, format!("{}\n", self.1)).into_response();
        if self.0 == StatusCode::UPGRADE_REQUIRED {
            // RFC 6455 section 4.4: name the version spoken.
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        response
    }
}

impl<S: Send + Sync> FromRequestParts<S> for WsUpgrade {
    type Rejection = NotUpgrade;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if parts.method != Method::GET {
            return Err(NotUpgrade(
                StatusCode::METHOD_NOT_ALLOWED,
                "a WebSocket upgrade is a GET",
            ));
        }
        if !has_token(&parts.headers, header::CONNECTION, "upgrade")
            || !has_token(&parts.headers, header::UPGRADE, "websocket")
        {
            return Err(NotUpgrade(
                StatusCode::UPGRADE_REQUIRED,
                "this endpoint speaks WebSocket only",
            ));
        }
        if parts
            .headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v.as_bytes() != b"13")
        {
            return Err(NotUpgrade(
                StatusCode::UPGRADE_REQUIRED,
                "unsupported WebSocket version (13 is spoken)",
            ));
        }
        // RFC 6455 section 4.2.1: 16 bytes, base64-encoded.
        let Some(key) = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .filter(|k| {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(k.as_bytes())
                    .is_ok_and(|b| b.len() == 16)
            })
            .cloned()
        else {
            return Err(NotUpgrade(
                StatusCode::BAD_REQUEST,
                "the Sec-WebSocket-Key header is missing or not 16 bytes in base64",
            ));
        };
        let Some(on_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
            return Err(NotUpgrade(
                StatusCode::UPGRADE_REQUIRED,
                "this connection cannot be upgraded",
            ));
        };
        Ok(Self { key, on_upgrade })
    }
}

impl WsUpgrade {
    /// The `101 Switching Protocols` answer, and the stream it leads to
    /// (which resolves once the answer is written).
    pub fn accept(self) -> (Response, hyper::upgrade::OnUpgrade) {
        let accept = tungstenite::handshake::derive_accept_key(self.key.as_bytes());
        let response = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_ACCEPT, accept)
            .body(axum::body::Body::empty())
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
        (response, self.on_upgrade)
    }
}

/// Whether a comma-separated header holds `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// A stream that counts the bytes read from it. Next to the bytes of the
/// frames the WebSocket layer has handed over ([`frame_bytes`]), it tells
/// whether that layer holds bytes not yet handed over: only when it holds
/// none can its state be dropped without losing data.
pub struct Counted<S> {
    inner: S,
    read: u64,
}

impl<S> Counted<S> {
    /// Wraps `inner`, with nothing read yet.
    pub fn new(inner: S) -> Self {
        Self { inner, read: 0 }
    }

    /// Bytes read from the stream so far.
    pub fn read(&self) -> u64 {
        self.read
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            self.read += (buf.filled().len() - before) as u64;
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The fewest bytes a masked client frame with `payload` bytes takes on
/// the wire: the header with the shortest length encoding, the mask, the
/// payload. A message that came in fragments, or with a longer length
/// encoding than needed, took more; so when the bytes read equal the sum of
/// this over the messages handed over, nothing is left buffered.
pub fn frame_bytes(payload: usize) -> u64 {
    let length = match payload {
        0..=125 => 0,
        126..=65_535 => 2,
        _ => 8,
    };
    (2 + length + 4 + payload) as u64
}

#[cfg(test)]
mod tests {
    use super::frame_bytes;

    #[test]
    fn frame_sizes_follow_rfc_6455() {
        assert_eq!(frame_bytes(0), 6);
        assert_eq!(frame_bytes(125), 131);
        assert_eq!(frame_bytes(126), 134);
        assert_eq!(frame_bytes(65_535), 65_543);
        assert_eq!(frame_bytes(65_536), 65_550);
    }

    /// Any split of a payload into fragments takes at least as many bytes
    /// as one frame: the bound `frame_bytes` is used as.
    #[test]
    fn fragments_never_take_fewer_bytes_than_one_frame() {
        for total in [0usize, 1, 100, 125, 126, 300, 65_535, 65_536, 70_000] {
            for parts in 2..=4usize {
                let each = total / parts;
                let mut sizes = vec![each; parts - 1];
                sizes.push(total - each * (parts - 1));
                let split: u64 = sizes.iter().map(|&s| frame_bytes(s)).sum();
                assert!(split >= frame_bytes(total), "{total} in {parts}");
            }
            // All but one byte in the first fragment.
            if total > 1 {
                let split = frame_bytes(total - 1) + frame_bytes(1);
                assert!(split >= frame_bytes(total), "{total} as {} + 1", total - 1);
            }
        }
    }
}
