//! A minimal, fast XMPP client (RFC 6120/6121) for driving Prosody through
//! its own protocol: plain TCP, in-band registration (XEP-0077), SASL PLAIN,
//! resource binding, stream management acks (XEP-0198), presence and chat
//! messages; and [`Prosody`], a server started for a benchmark.
//!
//! The writing half queues stanzas in memory and writes them in one go on
//! [`XmppTx::flush`]; the reading half parses the stream incrementally and
//! only looks at top-level stanzas (children of `<stream:stream>`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use quick_xml::Reader;
use quick_xml::events::{BytesRef, BytesStart, Event};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
const NS_SM3: &str = "urn:xmpp:sm:3";
/// How long [`connect`] may take in all before it gives up.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Read buffer of the receiving half.
const READ_BUFFER: usize = 64 * 1024;

/// How to log in.
#[derive(Debug, Clone, Copy)]
pub struct Login<'a> {
    /// The server's c2s address.
    pub addr: SocketAddr,
    /// The XMPP domain (the virtual host), e.g. `localhost`.
    pub domain: &'a str,
    /// The account's local part (`user` in `user@domain`).
    pub user: &'a str,
    /// The account's password.
    pub password: &'a str,
    /// Register the account in-band (XEP-0077) before authenticating; an
    /// existing account (`conflict`) is not an error.
    pub register: bool,
    /// Send initial presence, which makes the session available: messages
    /// to the bare JID are routed to it, and Prosody delivers the stored
    /// offline messages.
    pub available: bool,
    /// Enable stream management (XEP-0198, `urn:xmpp:sm:3`).
    pub stream_management: bool,
}

/// Connects, optionally registers the account first (in-band, before auth;
/// an 'conflict' error for an existing account is fine), authenticates with
/// SASL PLAIN, restarts the stream, binds a resource, enables stream
/// management if asked (send `<enable xmlns='urn:xmpp:sm:3'/>` and wait for
/// `<enabled/>`), and sends initial presence `<presence/>` if `available`.
/// Returns the two halves.
///
/// Round trips are pipelined: the stream header, the registration and the
/// authentication go out together, then (after `<success/>`, as RFC 6120
/// requires) the new stream header, the bind request, `<enable/>` and the
/// presence. The presence therefore follows `<enable/>` and counts as the
/// first stanza in the server's `h`. Gives up after 60 s.
pub async fn connect(login: &Login<'_>) -> anyhow::Result<(XmppTx, XmppRx)> {
    tokio::time::timeout(LOGIN_TIMEOUT, connect_inner(login))
        .await
        .with_context(|| {
            format!(
                "logging in as {}@{} took over {LOGIN_TIMEOUT:?}",
                login.user, login.domain
            )
        })?
        .with_context(|| {
            format!(
                "logging in as {}@{} at {}",
                login.user, login.domain, login.addr
            )
        })
}

async fn connect_inner(login: &Login<'_>) -> anyhow::Result<(XmppTx, XmppRx)> {
    let stream = TcpStream::connect(login.addr).await.context("connecting")?;
    stream.set_nodelay(true)?;
    let (r, w) = stream.into_split();
    let mut tx = XmppTx::new(w, login.domain);
    let mut rx = XmppRx::new(r);

    // Round 1: stream header, registration, authentication.
    tx.open_stream();
    if login.register {
        tx.push(b"<iq type='set' id='reg'><query xmlns='jabber:iq:register'><username>");
        escape_into(&mut tx.out, login.user);
        tx.push(b"</username><password>");
        escape_into(&mut tx.out, login.password);
        tx.push(b"</password></query></iq>");
    }
    let mut plain = Vec::with_capacity(login.user.len() + login.password.len() + 2);
    plain.push(0);
    plain.extend_from_slice(login.user.as_bytes());
    plain.push(0);
    plain.extend_from_slice(login.password.as_bytes());
    tx.push(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>");
    tx.push(
        base64::engine::general_purpose::STANDARD
            .encode(&plain)
            .as_bytes(),
    );
    tx.push(b"</auth>");
    tx.flush().await?;

    let features = rx.read_element().await?;
    if features.name != "features" {
        bail!("expected <stream:features>, got <{}>", features.name);
    }
    if let Some(mechs) = features.child("mechanisms")
        && !mechs
            .children
            .iter()
            .any(|m| m.name == "mechanism" && m.text == "PLAIN")
    {
        let offered: Vec<&str> = mechs.children.iter().map(|m| m.text.as_str()).collect();
        bail!(
            "the server does not offer SASL PLAIN (offers {offered:?}); is allow_unencrypted_plain_auth set?"
        );
    }
    if login.register {
        let iq = rx.read_element().await?;
        if iq.name != "iq" || iq.attr("id") != Some("reg") {
            bail!("expected the registration result, got <{}>", iq.name);
        }
        match iq.attr("type") {
            Some("result") => {}
            Some("error") if iq.error_condition() == Some("conflict") => {}
            _ => bail!(
                "registration failed: {}",
                iq.error_condition().unwrap_or("no error condition")
            ),
        }
    }
    let auth = rx.read_element().await?;
    match auth.name.as_str() {
        "success" if auth.attr("xmlns").is_none_or(|ns| ns == NS_SASL) => {}
        "failure" => bail!(
            "authentication failed: {}",
            auth.children
                .first()
                .map_or("no condition", |c| c.name.as_str())
        ),
        other => bail!("expected the SASL outcome, got <{other}>"),
    }

    // Round 2: new stream, bind, enable, presence.
    let mut rx = rx.restart();
    tx.open_stream();
    tx.push(b"<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>");
    if login.stream_management {
        tx.push(b"<enable xmlns='urn:xmpp:sm:3'/>");
    }
    if login.available {
        tx.push(b"<presence/>");
    }
    tx.flush().await?;

    let features = rx.read_element().await?;
    if features.name != "features" {
        bail!(
            "expected <stream:features> after authenticating, got <{}>",
            features.name
        );
    }
    let bound = rx.read_element().await?;
    if bound.name != "iq" || bound.attr("id") != Some("bind") {
        bail!("expected the bind result, got <{}>", bound.name);
    }
    if bound.attr("type") != Some("result") {
        bail!(
            "binding a resource failed: {}",
            bound.error_condition().unwrap_or("no error condition")
        );
    }
    if login.stream_management {
        let enabled = rx.read_element().await?;
        match enabled.name.as_str() {
            "enabled" if enabled.attr("xmlns") == Some(NS_SM3) => {}
            "failed" => bail!(
                "enabling stream management failed: {}",
                enabled
                    .children
                    .first()
                    .map_or("no condition", |c| c.name.as_str())
            ),
            other => bail!("expected <enabled/>, got <{other}>"),
        }
    }
    Ok((tx, rx))
}

/// The writing half.
///
/// Stanzas are serialised into an in-memory buffer (the methods that queue
/// are synchronous) and written with one `write_all` per [`XmppTx::flush`].
pub struct XmppTx {
    w: OwnedWriteHalf,
    out: Vec<u8>,
    /// The XML-escaped domain, for stream headers.
    domain: Vec<u8>,
    /// `@domain' id='`, the part of a message between the recipient's local
    /// part and the id.
    to_suffix: Vec<u8>,
}

impl XmppTx {
    fn new(w: OwnedWriteHalf, domain: &str) -> XmppTx {
        let mut escaped = Vec::with_capacity(domain.len());
        escape_into(&mut escaped, domain);
        let mut to_suffix = Vec::with_capacity(escaped.len() + 8);
        to_suffix.push(b'@');
        to_suffix.extend_from_slice(&escaped);
        to_suffix.extend_from_slice(b"' id='");
        XmppTx {
            w,
            out: Vec::with_capacity(16 * 1024),
            domain: escaped,
            to_suffix,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    fn open_stream(&mut self) {
        self.out
            .extend_from_slice(b"<?xml version='1.0'?><stream:stream to='");
        self.out.extend_from_slice(&self.domain);
        self.out.extend_from_slice(
            b"' version='1.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
        );
    }

    /// Queues a chat message to `to_user@domain` with the numeric id as
    /// stanza id (`id='<id>'`) and `body` as the body (XML-escaped;
    /// characters XML does not allow are replaced with U+FFFD). Does not
    /// flush.
    pub fn message(&mut self, to_user: &str, id: u64, body: &str) {
        self.out.extend_from_slice(b"<message type='chat' to='");
        escape_into(&mut self.out, to_user);
        self.out.extend_from_slice(&self.to_suffix);
        push_u64(&mut self.out, id);
        self.out.extend_from_slice(b"'><body>");
        escape_into(&mut self.out, body);
        self.out.extend_from_slice(b"</body></message>");
    }

    /// Queues a stream management ack request `<r xmlns='urn:xmpp:sm:3'/>`.
    /// Does not flush.
    pub fn request_ack(&mut self) {
        self.out.extend_from_slice(b"<r xmlns='urn:xmpp:sm:3'/>");
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        if !self.out.is_empty() {
            self.w
                .write_all(&self.out)
                .await
                .context("writing to the XMPP server")?;
            self.out.clear();
        }
        Ok(())
    }

    /// Sends `</stream:stream>` (after anything still queued) and closes the
    /// write side. The server answers by closing its stream, which the
    /// reading half sees as the end.
    pub async fn close(&mut self) -> anyhow::Result<()> {
        self.out.extend_from_slice(b"</stream:stream>");
        self.flush().await?;
        match self.w.shutdown().await {
            Err(e) if e.kind() != std::io::ErrorKind::NotConnected => {
                Err(e).context("closing the XMPP connection")
            }
            _ => Ok(()),
        }
    }
}

/// Something the server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XmppEvent {
    /// A `<message>` with a numeric id attribute (messages with other ids,
    /// without bodies, or of type `error` are skipped). `from_user` is the
    /// local part of the from JID (empty if it has none); `body_len` is the
    /// body's length in bytes, UTF-8, with entity references resolved.
    Message {
        /// The stanza's `id` attribute.
        id: u64,
        /// The local part of the sender's JID.
        from_user: String,
        /// The length of the body text in bytes.
        body_len: usize,
    },
    /// A stream management answer `<a h='N'/>`: the server has handled N
    /// stanzas of ours since `<enable/>` (initial presence, sent by
    /// [`connect`] after `<enable/>`, is one of them).
    Ack(u64),
}

/// What the top-level element being read is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Top {
    /// Nothing open at depth 1.
    None,
    /// A message; its fields are in [`Parse`].
    Message,
    /// `<a h='N'/>` written as start and end tags.
    Ack(u64),
    /// A stream error; the condition is the first child.
    StreamError,
    /// Anything else: skipped.
    Other,
}

/// Incremental state of the reading half between events.
struct Parse {
    /// 0 before the stream header, 1 inside `<stream:stream>`, 2 inside a
    /// top-level stanza, and so on.
    depth: usize,
    /// The stream has ended; [`XmppRx::next`] returns `Ok(None)` from now on.
    ended: bool,
    top: Top,
    msg_id: Option<u64>,
    msg_error: bool,
    from: String,
    has_body: bool,
    in_body: bool,
    body_len: usize,
    condition: Option<String>,
}

impl Parse {
    fn new() -> Parse {
        Parse {
            depth: 0,
            ended: false,
            top: Top::None,
            msg_id: None,
            msg_error: false,
            from: String::new(),
            has_body: false,
            in_body: false,
            body_len: 0,
            condition: None,
        }
    }

    /// An element starts (`empty`: and ends at once). Returns an event when
    /// a whole top-level stanza was an empty element.
    fn start(&mut self, e: &BytesStart<'_>, empty: bool) -> anyhow::Result<Option<XmppEvent>> {
        match self.depth {
            0 => {
                if e.local_name().as_ref() != b"stream" || empty {
                    bail!("the server did not open an XMPP stream");
                }
                self.depth = 1;
                Ok(None)
            }
            1 => {
                self.begin_top(e)?;
                if empty {
                    self.end_top()
                } else {
                    self.depth = 2;
                    Ok(None)
                }
            }
            d => {
                if d == 2 {
                    match self.top {
                        Top::Message if e.local_name().as_ref() == b"body" => {
                            self.has_body = true;
                            self.in_body = !empty;
                        }
                        Top::StreamError if self.condition.is_none() => {
                            self.condition =
                                Some(String::from_utf8_lossy(e.local_name().as_ref()).into_owned());
                        }
                        _ => {}
                    }
                }
                if !empty {
                    self.depth = d + 1;
                }
                Ok(None)
            }
        }
    }

    fn begin_top(&mut self, e: &BytesStart<'_>) -> anyhow::Result<()> {
        self.top = match e.local_name().as_ref() {
            b"message" => {
                self.msg_id = None;
                self.msg_error = false;
                self.from.clear();
                self.has_body = false;
                self.in_body = false;
                self.body_len = 0;
                for a in e.attributes().with_checks(false) {
                    let a = a.context("malformed attribute on <message>")?;
                    match a.key.as_ref() {
                        b"id" => self.msg_id = parse_u64(&a.value),
                        b"type" => self.msg_error = a.value.as_ref() == b"error",
                        b"from" => local_part_into(&a.value, &mut self.from)?,
                        _ => {}
                    }
                }
                Top::Message
            }
            b"a" => {
                let mut h = None;
                for a in e.attributes().with_checks(false) {
                    let a = a.context("malformed attribute on <a/>")?;
                    if a.key.as_ref() == b"h" {
                        h = parse_u64(&a.value);
                    }
                }
                Top::Ack(h.context("stream management <a/> without a numeric h")?)
            }
            b"error" => {
                self.condition = None;
                Top::StreamError
            }
            _ => Top::Other,
        };
        Ok(())
    }

    /// The top-level element ends.
    fn end_top(&mut self) -> anyhow::Result<Option<XmppEvent>> {
        let top = std::mem::replace(&mut self.top, Top::None);
        self.depth = 1;
        Ok(match top {
            Top::Message => match self.msg_id {
                Some(id) if self.has_body && !self.msg_error => Some(XmppEvent::Message {
                    id,
                    from_user: self.from.clone(),
                    body_len: self.body_len,
                }),
                _ => None,
            },
            Top::Ack(h) => Some(XmppEvent::Ack(h)),
            Top::StreamError => {
                self.ended = true;
                bail!(
                    "stream error from the server: {}",
                    self.condition.as_deref().unwrap_or("no condition")
                )
            }
            Top::None | Top::Other => None,
        })
    }

    fn end(&mut self) -> anyhow::Result<Option<XmppEvent>> {
        match self.depth {
            0 => bail!("an end tag before the stream started"),
            1 => {
                // </stream:stream>
                self.depth = 0;
                self.ended = true;
                Ok(None)
            }
            2 => self.end_top(),
            d => {
                if d == 3 {
                    self.in_body = false;
                }
                self.depth = d - 1;
                Ok(None)
            }
        }
    }

    fn counts_text(&self) -> bool {
        self.in_body && self.depth == 3
    }
}

/// The reading half.
pub struct XmppRx {
    reader: Reader<BufReader<OwnedReadHalf>>,
    buf: Vec<u8>,
    st: Parse,
}

fn xml_reader(r: BufReader<OwnedReadHalf>) -> Reader<BufReader<OwnedReadHalf>> {
    let mut reader = Reader::from_reader(r);
    let config = reader.config_mut();
    config.check_end_names = false;
    config.trim_text(false);
    config.expand_empty_elements = false;
    reader
}

impl XmppRx {
    fn new(r: OwnedReadHalf) -> XmppRx {
        XmppRx {
            reader: xml_reader(BufReader::with_capacity(READ_BUFFER, r)),
            buf: Vec::with_capacity(4096),
            st: Parse::new(),
        }
    }

    /// A new parser for the restarted stream, keeping whatever the old one
    /// had buffered.
    fn restart(self) -> XmppRx {
        XmppRx {
            reader: xml_reader(self.reader.into_inner()),
            buf: self.buf,
            st: Parse::new(),
        }
    }

    /// The next event; `Ok(None)` when the stream ends. Top-level elements
    /// other than messages and `<a/>` (presence, iq, the server's own `<r/>`
    /// requests, which this half cannot answer) are skipped; a stream error
    /// is returned as an error.
    pub async fn next(&mut self) -> anyhow::Result<Option<XmppEvent>> {
        while !self.st.ended {
            self.buf.clear();
            let ev = self
                .reader
                .read_event_into_async(&mut self.buf)
                .await
                .context("reading the XMPP stream")?;
            let st = &mut self.st;
            let out = match ev {
                Event::Start(e) => st.start(&e, false)?,
                Event::Empty(e) => st.start(&e, true)?,
                Event::End(_) => st.end()?,
                Event::Text(t) => {
                    if st.counts_text() {
                        st.body_len += t.len();
                    }
                    None
                }
                Event::CData(t) => {
                    if st.counts_text() {
                        st.body_len += t.len();
                    }
                    None
                }
                Event::GeneralRef(r) => {
                    if st.counts_text() {
                        st.body_len += ref_len(&r)?;
                    }
                    None
                }
                Event::Eof => {
                    st.ended = true;
                    None
                }
                Event::Decl(_) | Event::PI(_) | Event::Comment(_) | Event::DocType(_) => None,
            };
            if out.is_some() {
                return Ok(out);
            }
        }
        Ok(None)
    }

    /// Reads one whole top-level element as a tree (for the login steps).
    async fn read_element(&mut self) -> anyhow::Result<Elem> {
        let mut stack: Vec<Elem> = Vec::new();
        loop {
            if self.st.ended {
                bail!("the server closed the stream");
            }
            self.buf.clear();
            let ev = self
                .reader
                .read_event_into_async(&mut self.buf)
                .await
                .context("reading the XMPP stream")?;
            match ev {
                Event::Start(e) if self.st.depth == 0 => {
                    if e.local_name().as_ref() != b"stream" {
                        bail!("the server did not open an XMPP stream");
                    }
                    self.st.depth = 1;
                }
                Event::Empty(_) if self.st.depth == 0 => {
                    bail!("the server did not open an XMPP stream")
                }
                Event::Start(e) => stack.push(Elem::from_start(&e)?),
                Event::Empty(e) => {
                    let el = Elem::from_start(&e)?;
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(el),
                        None => return el.checked(),
                    }
                }
                Event::End(_) => match stack.pop() {
                    Some(el) => match stack.last_mut() {
                        Some(parent) => parent.children.push(el),
                        None => return el.checked(),
                    },
                    None => {
                        self.st.ended = true;
                        bail!("the server closed the stream");
                    }
                },
                Event::Text(t) => {
                    if let Some(el) = stack.last_mut() {
                        el.text.push_str(&t.decode()?);
                    }
                }
                Event::CData(t) => {
                    if let Some(el) = stack.last_mut() {
                        el.text.push_str(&t.decode()?);
                    }
                }
                Event::GeneralRef(r) => {
                    if let Some(el) = stack.last_mut() {
                        push_ref(&r, &mut el.text)?;
                    }
                }
                Event::Eof => {
                    self.st.ended = true;
                    bail!("the server closed the connection");
                }
                Event::Decl(_) | Event::PI(_) | Event::Comment(_) | Event::DocType(_) => {}
            }
        }
    }
}

/// A small element tree, for the login steps only.
#[derive(Debug, Default)]
struct Elem {
    /// Local name.
    name: String,
    attrs: Vec<(String, String)>,
    children: Vec<Elem>,
    text: String,
}

impl Elem {
    fn from_start(e: &BytesStart<'_>) -> anyhow::Result<Elem> {
        let mut attrs = Vec::new();
        for a in e.attributes() {
            let a = a?;
            let value = std::str::from_utf8(&a.value).context("attribute value is not UTF-8")?;
            let value = quick_xml::escape::unescape(value)?;
            attrs.push((
                String::from_utf8_lossy(a.key.as_ref()).into_owned(),
                value.into_owned(),
            ));
        }
        Ok(Elem {
            name: String::from_utf8_lossy(e.local_name().as_ref()).into_owned(),
            attrs,
            children: Vec::new(),
            text: String::new(),
        })
    }

    fn attr(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn child(&self, name: &str) -> Option<&Elem> {
        self.children.iter().find(|c| c.name == name)
    }

    /// The defined condition of a stanza error (`<error><conflict/>…`).
    fn error_condition(&self) -> Option<&str> {
        self.child("error")?
            .children
            .iter()
            .map(|c| c.name.as_str())
            .find(|n| *n != "text")
    }

    /// Turns a stream error into an error.
    fn checked(self) -> anyhow::Result<Elem> {
        if self.name == "error" {
            bail!(
                "stream error from the server: {}",
                self.children
                    .iter()
                    .map(|c| c.name.as_str())
                    .find(|n| *n != "text")
                    .unwrap_or("no condition")
            );
        }
        Ok(self)
    }
}

/// The length in bytes of what an entity reference stands for.
fn ref_len(r: &BytesRef<'_>) -> anyhow::Result<usize> {
    if let Some(c) = r.resolve_char_ref()? {
        return Ok(c.len_utf8());
    }
    let name = r.decode()?;
    quick_xml::escape::resolve_predefined_entity(&name)
        .map(str::len)
        .with_context(|| format!("unknown entity &{name};"))
}

fn push_ref(r: &BytesRef<'_>, out: &mut String) -> anyhow::Result<()> {
    if let Some(c) = r.resolve_char_ref()? {
        out.push(c);
        return Ok(());
    }
    let name = r.decode()?;
    out.push_str(
        quick_xml::escape::resolve_predefined_entity(&name)
            .with_context(|| format!("unknown entity &{name};"))?,
    );
    Ok(())
}

/// Parses a decimal u64 of ASCII digits only.
fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

/// Writes the local part of the (escaped) JID `raw` into `out`: what comes
/// before an `@` that precedes any `/`; nothing if there is none.
fn local_part_into(raw: &[u8], out: &mut String) -> anyhow::Result<()> {
    out.clear();
    let Some(at) = raw.iter().position(|&b| b == b'@' || b == b'/') else {
        return Ok(());
    };
    if raw.get(at) != Some(&b'@') {
        return Ok(());
    }
    let local =
        std::str::from_utf8(raw.get(..at).unwrap_or_default()).context("JID is not UTF-8")?;
    if local.contains('&') {
        out.push_str(&quick_xml::escape::unescape(local)?);
    } else {
        out.push_str(local);
    }
    Ok(())
}

fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

const REPLACEMENT: &[u8] = "\u{FFFD}".as_bytes();

/// Appends `s` escaped for XML text and attribute values (both quote
/// kinds), replacing characters XML 1.0 does not allow with U+FFFD.
fn escape_into(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len());
    let mut done = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let (rep, skip): (&[u8], usize) = match b {
            b'<' => (b"&lt;", 1),
            b'>' => (b"&gt;", 1),
            b'&' => (b"&amp;", 1),
            b'\'' => (b"&apos;", 1),
            b'"' => (b"&quot;", 1),
            b'\r' => (b"&#13;", 1),
            b'\t' | b'\n' => {
                i += 1;
                continue;
            }
            0..=0x1f => (REPLACEMENT, 1),
            // U+FFFE and U+FFFF
            0xEF if bytes.get(i + 1) == Some(&0xBF)
                && matches!(bytes.get(i + 2), Some(0xBE | 0xBF)) =>
            {
                (REPLACEMENT, 3)
            }
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&bytes[done..i]);
        out.extend_from_slice(rep);
        i += skip;
        done = i;
    }
    out.extend_from_slice(&bytes[done..]);
}

/// The installed Prosody's version (from `/usr/lib/prosody/prosody.version`),
/// or an empty string.
pub fn prosody_version() -> String {
    std::fs::read_to_string("/usr/lib/prosody/prosody.version")
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

const PROSODY: &str = "/usr/bin/prosody";

/// A Prosody server run for a benchmark: its own config, data and port;
/// killed on drop.
pub struct Prosody {
    /// Where its c2s port listens (127.0.0.1).
    pub addr: SocketAddr,
    /// The server process's id.
    pub pid: u32,
    /// Its one virtual host, `localhost`.
    pub domain: String,
    child: Child,
    dir: PathBuf,
}

impl Prosody {
    /// Starts /usr/bin/prosody with a generated config in a fresh temp dir,
    /// on a free 127.0.0.1 port, pinned to CPU `cpu` with `taskset -c <cpu>`
    /// when `Some` (taskset exists on the machine), and waits until it
    /// accepts connections (up to 15 s).
    pub async fn start(cpu: Option<usize>) -> anyhow::Result<Prosody> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "telepound-prosody-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        let (child, addr) = match spawn_prosody(&dir, cpu) {
            Ok(x) => x,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let mut p = Prosody {
            addr,
            pid: child.id(),
            domain: "localhost".to_owned(),
            child,
            dir,
        };
        let start = Instant::now();
        loop {
            if let Some(status) = p.child.try_wait()? {
                bail!("prosody exited ({status}) before listening:\n{}", p.logs());
            }
            if TcpStream::connect(addr).await.is_ok() {
                return Ok(p);
            }
            if start.elapsed() > Duration::from_secs(15) {
                bail!(
                    "prosody does not listen on {addr} after 15 s:\n{}",
                    p.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Prosody's console output and log, for error messages.
    fn logs(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        format!("{}{}", read("console.log"), read("prosody.log"))
    }
}

impl Drop for Prosody {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes the config into `dir` and starts Prosody on a free port.
fn spawn_prosody(dir: &Path, cpu: Option<usize>) -> anyhow::Result<(Child, SocketAddr)> {
    for sub in ["data", "certs"] {
        std::fs::create_dir_all(dir.join(sub))
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let config = dir.join("prosody.cfg.lua");
    std::fs::write(&config, prosody_config(dir, port)).context("writing the Prosody config")?;
    let console = std::fs::File::create(dir.join("console.log"))?;
    let mut cmd = match cpu {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(c.to_string()).arg(PROSODY);
            cmd
        }
        None => Command::new(PROSODY),
    };
    cmd.arg("-F")
        .arg("--config")
        .arg(&config)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(console.try_clone()?)
        .stderr(console);
    let child = cmd.spawn().with_context(|| format!("starting {PROSODY}"))?;
    Ok((child, addr))
}

/// A Lua string literal.
fn lua_str(p: &Path) -> String {
    let s = p.to_string_lossy();
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' | '"' => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn prosody_config(dir: &Path, port: u16) -> String {
    format!(
        r#"-- Generated by telepound-bench for one benchmark run.
run_as_root = true
pidfile = {pidfile}
data_path = {data}
certificates = {certs}
log = {{ {{ levels = {{ min = "warn" }}, to = "file", filename = {log} }} }}

interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {port} }}
c2s_direct_tls_ports = {{}}
legacy_ssl_ports = {{}}
s2s_ports = {{}}
s2s_direct_tls_ports = {{}}
http_ports = {{}}
https_ports = {{}}
component_ports = {{}}

modules_enabled = {{ "roster", "saslauth", "disco", "register", "offline", "smacks", "ping" }}
modules_disabled = {{ "s2s", "s2s_auth_certs" }}

allow_registration = true
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_hashed"
storage = "internal"
-- mod_storage_internal refuses to archive more than 10000 items per user
-- (offline messages included) by default.
storage_archive_item_limit = 100000000

VirtualHost "localhost"
"#,
        pidfile = lua_str(&dir.join("prosody.pid")),
        data = lua_str(&dir.join("data")),
        certs = lua_str(&dir.join("certs")),
        log = lua_str(&dir.join("prosody.log")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    const WAIT: Duration = Duration::from_secs(30);

    #[test]
    fn escapes_and_formats() {
        let mut out = Vec::new();
        escape_into(&mut out, "a<b>&'\"\r\n\t\u{1}\u{FFFF}é");
        assert_eq!(
            String::from_utf8(out).ok().as_deref(),
            Some("a&lt;b&gt;&amp;&apos;&quot;&#13;\n\t\u{FFFD}\u{FFFD}é")
        );
        for n in [0, 7, 10, 12345, u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
            assert_eq!(parse_u64(&out), Some(n));
        }
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"12a"), None);
        assert_eq!(parse_u64(b"18446744073709551616"), None);
        let mut s = String::new();
        for (jid, local) in [
            (&b"alice@localhost/r@s"[..], "alice"),
            (b"localhost/a@b", ""),
            (b"localhost", ""),
            (b"o&apos;hara@x", "o'hara"),
        ] {
            local_part_into(jid, &mut s).ok();
            assert_eq!(s, local);
        }
    }

    /// A scripted "server": accepts one connection, reads the client's
    /// request, writes `script`.
    async fn scripted(script: &'static str) -> anyhow::Result<XmppRx> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            if let Ok((mut s, _)) = listener.accept().await {
                let _ = s.write_all(script.as_bytes()).await;
                let mut sink = Vec::new();
                let _ = s.read_to_end(&mut sink).await;
            }
        });
        let (r, _w) = TcpStream::connect(addr).await?.into_split();
        Ok(XmppRx::new(r))
    }

    #[tokio::test]
    async fn xmpp_parses_top_level_stanzas() -> anyhow::Result<()> {
        let mut rx = scripted(concat!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
            "<presence from='bob@localhost/x'/>",
            "<message from='alice@localhost/r' id='5' type='chat'><body>a&lt;b&#233;</body>",
            "<delay xmlns='urn:xmpp:delay' stamp='x'><body>nested, not counted</body></delay></message>",
            "<message id='x1'><body>named id</body></message>",
            "<message id='6'><subject>no body</subject></message>",
            "<message id='7' type='error'><body>bounce</body><error/></message>",
            "<iq type='get' id='9'><query><message id='8'><body>deep</body></message></query></iq>",
            "<r xmlns='urn:xmpp:sm:3'/>",
            "<message from='c@d' id='10'><body/></message>",
            "<message from='e@f' id='11'><body><![CDATA[<>]]></body></message>",
            "<a xmlns='urn:xmpp:sm:3' h='42'/><a h='43'></a>",
            "</stream:stream>",
        ))
        .await?;
        let msg = |id, from: &str, body_len| XmppEvent::Message {
            id,
            from_user: from.to_owned(),
            body_len,
        };
        assert_eq!(rx.next().await?, Some(msg(5, "alice", 5)));
        assert_eq!(rx.next().await?, Some(msg(10, "c", 0)));
        assert_eq!(rx.next().await?, Some(msg(11, "e", 2)));
        assert_eq!(rx.next().await?, Some(XmppEvent::Ack(42)));
        assert_eq!(rx.next().await?, Some(XmppEvent::Ack(43)));
        assert_eq!(rx.next().await?, None);
        assert_eq!(rx.next().await?, None);
        Ok(())
    }

    #[tokio::test]
    async fn xmpp_malformed_input_is_an_error_not_a_panic() -> anyhow::Result<()> {
        for script in [
            "<stream:stream><a h='x'/>",
            "<stream:stream><message id='1'><body>&bogus;</body></message>",
            "<stream:stream><stream:error><host-unknown/></stream:error>",
            "<notastream/>",
            "<stream:stream><message id='1' <body>",
        ] {
            let mut rx = scripted(script).await?;
            let mut outcome = Ok(None);
            for _ in 0..4 {
                outcome = rx.next().await;
                if !matches!(outcome, Ok(Some(_))) {
                    break;
                }
            }
            assert!(outcome.is_err(), "{script}: {outcome:?}");
        }
        // A stream cut short is just the end.
        let mut rx = scripted("<stream:stream><message id='1'><bo").await?;
        assert!(matches!(rx.next().await, Ok(None) | Err(_)));
        Ok(())
    }

    fn login<'a>(
        p: &'a Prosody,
        user: &'a str,
        register: bool,
        available: bool,
        sm: bool,
    ) -> Login<'a> {
        Login {
            addr: p.addr,
            domain: &p.domain,
            user,
            password: "pass word & <secret>",
            register,
            available,
            stream_management: sm,
        }
    }

    async fn next(rx: &mut XmppRx) -> anyhow::Result<XmppEvent> {
        tokio::time::timeout(WAIT, rx.next())
            .await
            .context("timed out waiting for an event")??
            .context("stream ended")
    }

    /// Reads until the server closes the stream.
    async fn until_closed(rx: &mut XmppRx) -> anyhow::Result<()> {
        while tokio::time::timeout(WAIT, rx.next())
            .await
            .context("server never closed")??
            .is_some()
        {}
        Ok(())
    }

    async fn wait_ack(rx: &mut XmppRx, h: u64) -> anyhow::Result<()> {
        let mut last = 0;
        loop {
            match next(rx).await? {
                XmppEvent::Ack(n) => {
                    assert!(n >= last, "acks went backwards: {last} then {n}");
                    last = n;
                    if n >= h {
                        assert_eq!(n, h);
                        return Ok(());
                    }
                }
                other => bail!("unexpected {other:?}"),
            }
        }
    }

    fn body(i: u64) -> String {
        format!("message {i} <to> bob & 'friends' \"quoted\" é")
    }

    async fn expect_messages(rx: &mut XmppRx, ids: std::ops::Range<u64>) -> anyhow::Result<()> {
        for i in ids {
            match next(rx).await? {
                XmppEvent::Message {
                    id,
                    from_user,
                    body_len,
                } => {
                    assert_eq!(
                        (id, from_user.as_str(), body_len),
                        (i, "alice", body(i).len())
                    );
                }
                other => bail!("expected message {i}, got {other:?}"),
            }
        }
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn xmpp_against_prosody() -> anyhow::Result<()> {
        if !Path::new(PROSODY).exists() {
            eprintln!("skipping: {PROSODY} is not installed");
            return Ok(());
        }
        let p = Prosody::start(None).await?;
        for user in ["alice", "bob"] {
            let (mut tx, mut rx) = connect(&login(&p, user, true, false, false)).await?;
            tx.close().await?;
            until_closed(&mut rx).await?;
        }
        let wrong = Login {
            password: "wrong",
            ..login(&p, "alice", false, false, false)
        };
        let err = connect(&wrong)
            .await
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(err.contains("not-authorized"), "{err}");

        // Registering again is a conflict, which is fine.
        let (mut alice, mut alice_rx) = connect(&login(&p, "alice", true, false, true)).await?;
        let (mut bob, mut bob_rx) = connect(&login(&p, "bob", false, true, false)).await?;

        let start = Instant::now();
        for i in 0..1000 {
            alice.message("bob", i, &body(i));
            if (i + 1) % 100 == 0 {
                alice.request_ack();
                alice.flush().await?;
            }
        }
        expect_messages(&mut bob_rx, 0..1000).await?;
        wait_ack(&mut alice_rx, 1000).await?;
        eprintln!("1000 online messages in {:?}", start.elapsed());

        // Bob leaves; the next 200 go to offline storage.
        bob.close().await?;
        until_closed(&mut bob_rx).await?;
        let start = Instant::now();
        for i in 1000..1200 {
            alice.message("bob", i, &body(i));
            if (i + 1) % 100 == 0 {
                alice.request_ack();
                alice.flush().await?;
            }
        }
        wait_ack(&mut alice_rx, 1200).await?;
        eprintln!("200 offline messages stored in {:?}", start.elapsed());

        let (mut bob, mut bob_rx) = connect(&login(&p, "bob", false, true, false)).await?;
        expect_messages(&mut bob_rx, 1000..1200).await?;
        // Nothing else is pending: a message sent now is the next one.
        alice.message("bob", 5000, &body(5000));
        alice.flush().await?;
        expect_messages(&mut bob_rx, 5000..5001).await?;

        bob.close().await?;
        until_closed(&mut bob_rx).await?;
        alice.close().await?;
        until_closed(&mut alice_rx).await?;
        Ok(())
    }
}
