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

/// A stream that follows the WebSocket framing of the bytes read from it
/// ([`Frames`]). Next to the number of messages the WebSocket layer has
/// handed over, it tells whether that layer holds anything not yet handed
/// over: only when it holds nothing can its state be dropped without losing
/// data.
pub struct Counted<S> {
    inner: S,
    frames: Frames,
}

impl<S> Counted<S> {
    /// Wraps `inner`, with nothing read yet.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            frames: Frames::default(),
        }
    }

    /// Whether everything read has been handed over, given the number of
    /// messages (control frames included) handed over so far: every frame
    /// read is complete, no fragmented message is half-way, and as many
    /// messages were read as were handed over.
    pub fn drained(&self, handed_over: u64) -> bool {
        self.frames.at_boundary() && self.frames.messages == handed_over
    }
}

/// Where a byte stream of client frames (RFC 6455 section 5.2) stands: it
/// reads no payload, only headers and lengths.
#[derive(Debug, Default)]
pub struct Frames {
    /// The header read so far (at most 14 bytes).
    header: [u8; 14],
    /// Bytes of it read.
    header_len: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
    /// Inside a fragmented data message (after a frame without FIN).
    fragmented: bool,
    /// Complete messages read: control frames, and data messages at their
    /// final frame.
    pub messages: u64,
}

impl Frames {
    /// Follows `bytes`, the next bytes of the stream.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len() as u64);
                self.payload_left -= n;
                bytes = &bytes[n as usize..];
                continue;
            }
            self.header[self.header_len] = bytes[0];
            self.header_len += 1;
            bytes = &bytes[1..];
            if let Some(payload) = self.header_complete() {
                let (fin, opcode) = (self.header[0] & 0x80 != 0, self.header[0] & 0x0f);
                if opcode >= 8 || fin {
                    // A control frame, or a data message's last frame: it
                    // ends a message when its payload has come. Counted
                    // now, since nothing is at a boundary until it has.
                    self.messages += 1;
                }
                if opcode < 8 {
                    self.fragmented = !fin;
                }
                self.payload_left = payload;
                self.header_len = 0;
            }
        }
    }

    /// The payload length, once the header is all read.
    fn header_complete(&self) -> Option<u64> {
        if self.header_len < 2 {
            return None;
        }
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        let (ext, short) = match self.header[1] & 0x7f {
            126 => (2, None),
            127 => (8, None),
            n => (0, Some(u64::from(n))),
        };
        if self.header_len < 2 + ext + mask {
            return None;
        }
        Some(short.unwrap_or_else(|| {
            self.header[2..2 + ext]
                .iter()
                .fold(0u64, |acc, b| acc << 8 | u64::from(*b))
        }))
    }

    /// Between frames, and not inside a fragmented message.
    pub fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.payload_left == 0 && !self.fragmented
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
            self.frames.feed(&buf.filled()[before..]);
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

#[cfg(test)]
mod tests {
    use super::Frames;

    /// A masked client frame.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![(u8::from(fin) << 7) | opcode];
        match payload.len() {
            n @ 0..=125 => f.push(0x80 | n as u8),
            n @ 126..=65_535 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = [1, 2, 3, 4];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
        f
    }

    /// Feeds `stream` in pieces of `step` bytes; returns where it stands
    /// after each piece.
    fn follow(stream: &[u8], step: usize) -> Vec<(bool, u64)> {
        let mut f = Frames::default();
        stream
            .chunks(step)
            .map(|c| {
                f.feed(c);
                (f.at_boundary(), f.messages)
            })
            .collect()
    }

    #[test]
    fn whole_frames_of_every_length_encoding_end_at_a_boundary() {
        let big = vec![7u8; 70_000];
        let mut stream = Vec::new();
        for payload in [
            &b""[..],
            b"hi",
            &[1u8; 125],
            &[2u8; 126],
            &[3u8; 65_535],
            &big,
        ] {
            stream.extend(frame(true, 1, payload));
        }
        stream.extend(frame(true, 9, b"ping"));
        for step in [1, 3, 64, 4096, stream.len()] {
            let seen = follow(&stream, step);
            assert_eq!(*seen.last().unwrap(), (true, 7), "step {step}");
        }
    }

    #[test]
    fn a_partial_frame_is_not_a_boundary() {
        let f = frame(true, 1, b"hello there");
        for cut in 1..f.len() {
            let mut t = Frames::default();
            t.feed(&f[..cut]);
            assert!(!t.at_boundary(), "cut at {cut}");
            t.feed(&f[cut..]);
            assert!(t.at_boundary());
            assert_eq!(t.messages, 1);
        }
    }

    #[test]
    fn a_fragmented_message_is_one_message_and_no_boundary_until_its_end() {
        let mut t = Frames::default();
        t.feed(&frame(false, 1, b"part one, "));
        assert!(!t.at_boundary());
        assert_eq!(t.messages, 0);
        // A control frame between fragments is a message of its own.
        t.feed(&frame(true, 9, b""));
        assert!(!t.at_boundary());
        assert_eq!(t.messages, 1);
        t.feed(&frame(false, 0, b"part two, "));
        assert!(!t.at_boundary());
        t.feed(&frame(true, 0, b"the end"));
        assert!(t.at_boundary());
        assert_eq!(t.messages, 2);
    }
}
