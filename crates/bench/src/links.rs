//! The same load through each system's own protocol: a sender that queues
//! numbered messages and a receiver that yields the numbers back, in order.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use telepound_protocol::UserName;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// Payload size for NATS and Prosody (Telepound carries a real sealed
/// envelope of a message this long).
pub const BODY: usize = 200;

/// Queues numbered messages.
#[async_trait]
pub trait Tx: Send {
    /// Queues message `seq` (sent at the next flush, or sooner).
    async fn send(&mut self, seq: u64) -> anyhow::Result<()>;
    /// Sends everything queued.
    async fn flush(&mut self) -> anyhow::Result<()>;
}

/// Yields the numbers of received messages.
#[async_trait]
pub trait Rx: Send {
    /// The next message's number; `None` when the link ends.
    async fn recv(&mut self) -> anyhow::Result<Option<u64>>;
}

/// A sender whose messages are acknowledged as stored: numbers come back
/// on `acks` when the system says so.
pub struct Durable {
    /// Queues messages.
    pub tx: Box<dyn Tx>,
    /// Acknowledged numbers.
    pub acks: mpsc::UnboundedReceiver<u64>,
}

// ---------------------------------------------------------------- Telepound

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Argon2 cost for benchmark accounts (logins are measured separately).
pub const FAST_KSF: &str = "m=64,t=1,p=1";
/// Benchmark password.
pub const PASSWORD: &[u8] = b"benchmark password";

/// A Telepound account ready for raw connections: its resume token.
pub struct TpAccount {
    /// The user.
    pub user: UserName,
    /// Resume token.
    pub token: Vec<u8>,
}

/// Signs `name` up and logs in once (OPAQUE), keeping the resume token.
pub async fn tp_account(url: &str, name: &str) -> anyhow::Result<TpAccount> {
    let user = UserName::new(name)?;
    let (c, _e) = telepound_client::Client::connect(url).await?;
    let ksf = FAST_KSF.parse().map_err(anyhow::Error::msg)?;
    match telepound_client::account::signup(&c, &user, PASSWORD, ksf).await {
        Ok(()) => {}
        Err(e) if e.code() == Some(telepound_protocol::ErrorCode::UserTaken) => {}
        Err(e) => return Err(e.into()),
    }
    let home = tempfile::tempdir()?;
    let s = telepound_client::account::login(&c, &user, PASSWORD, home.path()).await?;
    let token = s.token().to_vec();
    c.close().await;
    Ok(TpAccount { user, token })
}

/// A real envelope from `from` to `to` with a `BODY`-byte text, sealed once
/// and sent by every benchmark message (the server never opens it).
pub fn sealed_envelope(from: &UserName, to: &UserName) -> String {
    use telepound_crypto::envelope::{canonical_recipients, seal};
    use telepound_crypto::{Identity, Payload};
    let (a, b) = (Identity::generate(), Identity::generate());
    let payload = Payload {
        msg_id: telepound_protocol::MsgId::new(),
        sender: from.clone(),
        recipients: canonical_recipients(vec![from.clone(), to.clone()]),
        group: None,
        sent_at: 0,
        text: "x".repeat(BODY),
        attachments: vec![],
        group_epoch: None,
    };
    let keys = vec![(from.clone(), a.peer_keys()), (to.clone(), b.peer_keys())];
    seal(&a, &payload, &keys).expect("sealing")
}

/// A raw, resumed WebSocket session.
pub async fn tp_connect(addr: std::net::SocketAddr, acct: &TpAccount) -> anyhow::Result<Ws> {
    // Without TCP_NODELAY small frames wait for delayed ACKs (40 ms).
    // A 32 KiB read buffer: tungstenite zero-fills its whole read buffer
    // before each read, which at the default 128 KiB made the load
    // generator, not the server, the bottleneck.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(32 * 1024);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(
        format!("ws://{addr}/v1/ws"),
        Some(config),
        true,
    )
    .await?;
    use base64::Engine;
    let token = base64::engine::general_purpose::STANDARD.encode(&acct.token);
    ws.send(Message::Text(
        format!(
            r#"{{"type":"resume","rid":0,"user":"{}","token":"{token}"}}"#,
            acct.user
        )
        .into(),
    ))
    .await?;
    match ws.next().await {
        Some(Ok(Message::Text(t))) if t.contains("\"resumed\"") => Ok(ws),
        other => bail!("resume failed: {other:?}"),
    }
}

/// The msg_id that carries a benchmark number. `epoch` tells apart the
/// connections of one sender (the server keeps a msg_id once per sender,
/// so a repeated run must not reuse one).
pub fn msg_id(epoch: u16, seq: u64) -> String {
    format!("00000000-{epoch:04x}-7000-8000-{seq:012x}")
}

/// A fresh epoch for [`msg_id`].
pub fn next_epoch() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn seq_of_msg_id(s: &str) -> Option<u64> {
    u64::from_str_radix(s.get(24..36)?, 16).ok()
}

fn epoch_of_msg_id(s: &str) -> Option<u16> {
    u16::from_str_radix(s.get(9..13)?, 16).ok()
}

/// Sends `send` frames; answers (`accepted`) are read by a task that
/// reports their request ids on `acks`. Dropping it closes the connection.
pub struct TpTx {
    sink: SplitSink<Ws, Message>,
    prefix: String,
    suffix: Arc<str>,
    queued: usize,
    epoch: u16,
    /// The task reading the answers. It holds the connection's read half,
    /// which would keep the connection open (a live, synced client of the
    /// sender, receiving every later `delivered` receipt) after the sender
    /// is gone: each round of a scenario left one more behind.
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for TpTx {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl TpTx {
    /// A sender from `from` to `to` on its own connection, with the read
    /// side drained by a task. Returns the sender and the accepted numbers.
    pub async fn open(
        addr: std::net::SocketAddr,
        from: &TpAccount,
        to: &UserName,
        envelope: Arc<str>,
        epoch: u16,
    ) -> anyhow::Result<(TpTx, mpsc::UnboundedReceiver<u64>)> {
        let mut ws = tp_connect(addr, from).await?;
        // Synced like an interactive client, so delivery receipts come live
        // instead of being stored for later.
        ws.send(Message::Text(
            r#"{"type":"sync","rid":0,"after":0,"limit":1024}"#.into(),
        ))
        .await?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.starts_with(r#"{"type":"synced""#) => break,
                Some(Ok(_)) => {}
                other => bail!("sync failed: {other:?}"),
            }
        }
        let (sink, mut stream) = ws.split();
        let (acks_tx, acks) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            let mut refused = 0u64;
            while let Some(Ok(m)) = stream.next().await {
                let Message::Text(t) = m else { continue };
                if let Some(rest) = t.as_str().strip_prefix(r#"{"type":"accepted","rid":"#) {
                    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    if let Ok(n) = digits.parse() {
                        let _ = acks_tx.send(n);
                    }
                } else if t.as_str().starts_with(r#"{"type":"error""#) {
                    // A refused send never arrives: say why, so that a gap
                    // the receiver reports is not mistaken for a loss.
                    refused += 1;
                    if refused == 1 || refused.is_power_of_two() {
                        eprintln!("   telepound refused {refused} send(s); latest: {t}");
                    }
                }
            }
        });
        Ok((
            TpTx {
                sink,
                prefix: format!(r#"","from":"{}","to":"{to}","envelope":"#, from.user),
                suffix: envelope,
                queued: 0,
                epoch,
                reader,
            },
            acks,
        ))
    }
}

#[async_trait]
impl Tx for TpTx {
    async fn send(&mut self, seq: u64) -> anyhow::Result<()> {
        let mut f = String::with_capacity(self.suffix.len() + 160);
        f.push_str(r#"{"type":"send","rid":"#);
        f.push_str(&seq.to_string());
        f.push_str(r#","msg_id":""#);
        f.push_str(&msg_id(self.epoch, seq));
        f.push_str(&self.prefix);
        f.push_str(&self.suffix);
        f.push('}');
        self.sink.feed(Message::Text(f.into())).await?;
        self.queued += 1;
        if self.queued >= 64 {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        self.queued = 0;
        Ok(self.sink.flush().await?)
    }
}

/// A live recipient: syncs, then yields message numbers, acknowledging
/// them in batches.
pub struct TpRx {
    sink: SplitSink<Ws, Message>,
    stream: SplitStream<Ws>,
    pending: Vec<i64>,
    /// The sender's epoch: messages of another (a run before this one whose
    /// last messages its receiver never acknowledged, so they are still
    /// being delivered) are acknowledged and skipped.
    epoch: u16,
}

impl TpRx {
    /// Connects `acct`, fetches whatever waits (acknowledging it), and goes
    /// live.
    pub async fn open(
        addr: std::net::SocketAddr,
        acct: &TpAccount,
        epoch: u16,
    ) -> anyhow::Result<TpRx> {
        let ws = tp_connect(addr, acct).await?;
        let (sink, stream) = ws.split();
        let mut rx = TpRx {
            sink,
            stream,
            pending: Vec::new(),
            epoch,
        };
        rx.sink
            .send(Message::Text(
                r#"{"type":"sync","rid":1,"after":0,"limit":1024}"#.into(),
            ))
            .await?;
        loop {
            let Some(Ok(Message::Text(t))) = rx.stream.next().await else {
                bail!("connection ended while syncing");
            };
            if t.starts_with(r#"{"type":"synced""#) {
                if t.contains(r#""more":true"#) {
                    bail!("benchmark recipients start with an empty mailbox");
                }
                break;
            }
        }
        Ok(rx)
    }

    /// Acknowledges what has been received (so mailboxes do not grow).
    pub async fn ack(&mut self) -> anyhow::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let seqs: Vec<String> = self.pending.drain(..).map(|s| s.to_string()).collect();
        self.sink
            .send(Message::Text(
                format!(r#"{{"type":"ack","seqs":[{}]}}"#, seqs.join(",")).into(),
            ))
            .await?;
        Ok(())
    }

    /// Parses a `message` push: (mailbox seq, benchmark number).
    fn parse(t: &str) -> Option<(i64, u64)> {
        Self::parse_with_epoch(t).map(|(seq, n, _)| (seq, n))
    }

    /// Parses a `message` push: (mailbox seq, benchmark number, epoch).
    fn parse_with_epoch(t: &str) -> Option<(i64, u64, u16)> {
        let rest = t.strip_prefix(r#"{"type":"message","seq":"#)?;
        let end = rest.find(',')?;
        let seq = rest[..end].parse().ok()?;
        let id = rest.find(r#""msg_id":""#)? + 10;
        let msg_id = rest.get(id..id + 36)?;
        Some((seq, seq_of_msg_id(msg_id)?, epoch_of_msg_id(msg_id)?))
    }
}

#[async_trait]
impl Rx for TpRx {
    async fn recv(&mut self) -> anyhow::Result<Option<u64>> {
        use futures_util::FutureExt;
        loop {
            // Like a real client: acknowledge whatever was read once the
            // socket has nothing more right now (or every 256 under load).
            let next = match self.stream.next().now_or_never() {
                Some(next) => next,
                None => {
                    self.ack().await?;
                    self.stream.next().await
                }
            };
            let Some(frame) = next else {
                return Ok(None);
            };
            if let Message::Text(t) = frame?
                && let Some((seq, n, epoch)) = Self::parse_with_epoch(t.as_str())
            {
                self.pending.push(seq);
                if self.pending.len() >= 256 {
                    self.ack().await?;
                }
                if epoch == self.epoch {
                    return Ok(Some(n));
                }
            }
        }
    }
}

// --------------------------------------------------------------- NATS core

/// Bytes of a Telepound envelope for a `BODY`-byte text between two users
/// (what the `*-env` peers carry, so that both sides move the same bytes).
pub fn envelope_len() -> usize {
    static LEN: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *LEN.get_or_init(|| {
        let (a, b) = (
            UserName::new("alice").expect("valid"),
            UserName::new("bob").expect("valid"),
        );
        sealed_envelope(&a, &b).len()
    })
}

fn nats_payload(seq: u64, body: usize) -> Bytes {
    let mut v = vec![b'x'; body.max(8)];
    v[..8].copy_from_slice(&seq.to_le_bytes());
    Bytes::from(v)
}

fn nats_seq(b: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(..8)?.try_into().ok()?))
}

/// Connects a NATS client.
pub async fn nats_client(addr: std::net::SocketAddr) -> anyhow::Result<async_nats::Client> {
    Ok(async_nats::connect(format!("nats://{addr}")).await?)
}

/// Publishes on a subject.
pub struct NatsTx {
    client: async_nats::Client,
    subject: String,
    body: usize,
}

/// A NATS core sender on `subject`, of `body`-byte payloads.
pub async fn nats_tx(
    addr: std::net::SocketAddr,
    subject: &str,
    body: usize,
) -> anyhow::Result<NatsTx> {
    Ok(NatsTx {
        client: nats_client(addr).await?,
        subject: subject.to_owned(),
        body,
    })
}

#[async_trait]
impl Tx for NatsTx {
    async fn send(&mut self, seq: u64) -> anyhow::Result<()> {
        self.client
            .publish(self.subject.clone(), nats_payload(seq, self.body))
            .await?;
        Ok(())
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        Ok(self.client.flush().await?)
    }
}

/// Subscribed to a subject.
pub struct NatsRx {
    sub: async_nats::Subscriber,
    _client: async_nats::Client,
}

/// A NATS core receiver on `subject` (subscribed when this returns).
pub async fn nats_rx(addr: std::net::SocketAddr, subject: &str) -> anyhow::Result<NatsRx> {
    let client = nats_client(addr).await?;
    let sub = client.subscribe(subject.to_owned()).await?;
    client.flush().await?;
    Ok(NatsRx {
        sub,
        _client: client,
    })
}

#[async_trait]
impl Rx for NatsRx {
    async fn recv(&mut self) -> anyhow::Result<Option<u64>> {
        match self.sub.next().await {
            None => Ok(None),
            Some(m) => Ok(Some(nats_seq(&m.payload).context("short payload")?)),
        }
    }
}

// --------------------------------------------------------------- JetStream

/// Creates the benchmark stream (file storage) for `bench.>`.
pub async fn js_stream(
    addr: std::net::SocketAddr,
) -> anyhow::Result<async_nats::jetstream::Context> {
    let js = async_nats::jetstream::new(nats_client(addr).await?);
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: "BENCH".into(),
        subjects: vec!["bench.>".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("creating the stream: {e}"))?;
    Ok(js)
}

/// Publishes to the stream; the acks of up to `in_flight` outstanding
/// publishes are awaited by a task and reported in order of arrival.
pub struct JsTx {
    subject: String,
    js: async_nats::jetstream::Context,
    acks: mpsc::UnboundedSender<u64>,
    body: usize,
}

/// A JetStream publisher on `subject` of `body`-byte payloads, and its
/// acknowledged numbers.
pub async fn js_tx(
    addr: std::net::SocketAddr,
    subject: &str,
    body: usize,
) -> anyhow::Result<Durable> {
    let js = js_stream(addr).await?;
    let (acks, rx) = mpsc::unbounded_channel();
    Ok(Durable {
        tx: Box::new(JsTx {
            subject: subject.to_owned(),
            js,
            acks,
            body,
        }),
        acks: rx,
    })
}

#[async_trait]
impl Tx for JsTx {
    async fn send(&mut self, seq: u64) -> anyhow::Result<()> {
        let ack = self
            .js
            .publish(self.subject.clone(), nats_payload(seq, self.body))
            .await
            .map_err(|e| anyhow::anyhow!("publish: {e}"))?;
        let acks = self.acks.clone();
        tokio::spawn(async move {
            if ack.await.is_ok() {
                let _ = acks.send(seq);
            }
        });
        Ok(())
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Drains `count` messages of `subject` with a pull consumer, acknowledging
/// each; returns how many arrived and how long it took, up to the server's
/// confirmation of the last acknowledgement.
pub async fn js_drain(
    addr: std::net::SocketAddr,
    subject: &str,
    count: u64,
) -> anyhow::Result<(u64, Duration)> {
    use async_nats::jetstream::consumer::{AckPolicy, pull};
    let js = js_stream(addr).await?;
    let stream = js
        .get_stream("BENCH")
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("drain".into()),
            filter_subject: subject.to_owned(),
            ack_policy: AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let start = std::time::Instant::now();
    let mut msgs = consumer
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut got = 0;
    let mut last = None;
    while got < count {
        let Some(m) = msgs.next().await else { break };
        let m = m.map_err(|e| anyhow::anyhow!("{e}"))?;
        let n = nats_seq(&m.payload).context("short payload")?;
        if let Some(l) = last
            && n != l + 1
        {
            bail!("JetStream delivered {n} after {l}");
        }
        last = Some(n);
        got += 1;
        // The last acknowledgement waits for the server's confirmation, as
        // Telepound's drain waits for its last `acked`; those before it went
        // on the same connection, in order. The others are published without
        // waiting, as a consumer would.
        if got == count {
            m.double_ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        } else {
            m.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
    }
    Ok((got, start.elapsed()))
}

/// Logs `acct` in (resume) and drains its mailbox page by page, as a
/// client would that acknowledges a page and asks for the next in one go
/// (the client library waits for each acknowledgement instead, which costs
/// little next to opening every message), until `count` messages have been
/// acknowledged. Returns the time from the login to the last
/// acknowledgement's answer.
pub async fn tp_drain(
    addr: std::net::SocketAddr,
    acct: &TpAccount,
    count: u64,
) -> anyhow::Result<Duration> {
    let start = std::time::Instant::now();
    let mut ws = tp_connect(addr, acct).await?;
    let mut rid = 10u64;
    let sync = |rid: u64, after: i64| {
        Message::Text(
            format!(r#"{{"type":"sync","rid":{rid},"after":{after},"limit":1024}}"#).into(),
        )
    };
    ws.send(sync(rid, 0)).await?;
    // Sizes of the acknowledgements sent and not yet answered, in order.
    let mut unanswered = std::collections::VecDeque::new();
    let (mut requested, mut acked) = (0u64, 0u64);
    let mut seqs = Vec::with_capacity(1024);
    while acked < count {
        let Some(frame) = ws.next().await else {
            bail!("connection ended after {acked} acknowledged")
        };
        let Message::Text(t) = frame? else { continue };
        if let Some((seq, _)) = TpRx::parse(t.as_str()) {
            seqs.push(seq);
        } else if t.starts_with(r#"{"type":"acked""#) {
            acked += unanswered
                .pop_front()
                .context("an acked nobody asked for")?;
        } else if t.starts_with(r#"{"type":"synced""#) {
            let Some(&last) = seqs.last() else {
                if unanswered.is_empty() {
                    bail!("mailbox empty after {acked}")
                }
                continue;
            };
            rid += 1;
            let list: Vec<String> = seqs.iter().map(i64::to_string).collect();
            ws.feed(Message::Text(
                format!(
                    r#"{{"type":"ack","rid":{rid},"seqs":[{}]}}"#,
                    list.join(",")
                )
                .into(),
            ))
            .await?;
            unanswered.push_back(seqs.len() as u64);
            requested += seqs.len() as u64;
            seqs.clear();
            if requested < count {
                rid += 1;
                ws.feed(sync(rid, last)).await?;
            }
            ws.flush().await?;
        }
    }
    Ok(start.elapsed())
}

/// Opens `n` idle, authenticated NATS connections the light way (raw
/// CONNECT and PING), kept open while the returned vector lives.
pub async fn nats_idle(
    addr: std::net::SocketAddr,
    n: usize,
) -> anyhow::Result<Vec<tokio::net::TcpStream>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let mut buf = vec![0u8; 4096];
        let _ = s.read(&mut buf).await?; // INFO
        s.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n")
            .await?;
        let _ = s.read(&mut buf).await?; // PONG
        conns.push(s);
    }
    Ok(conns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip_through_ids_and_payloads() {
        assert_eq!(seq_of_msg_id(&msg_id(9, 123_456)), Some(123_456));
        assert!(
            msg_id(0xffff, 1)
                .parse::<telepound_protocol::MsgId>()
                .is_ok()
        );
        assert_eq!(nats_seq(&nats_payload(99, BODY)), Some(99));
        assert_eq!(nats_payload(1, 3000).len(), 3000);
        let frame = telepound_protocol::codec::render_message(
            7,
            &msg_id(3, 42).parse().unwrap(),
            &UserName::new("a").unwrap(),
            1,
            "{}",
        );
        assert_eq!(TpRx::parse(&frame), Some((7, 42)));
        assert_eq!(TpRx::parse_with_epoch(&frame), Some((7, 42, 3)));
    }
}
