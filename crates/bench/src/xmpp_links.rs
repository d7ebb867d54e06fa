//! Prosody behind the harness's [`Tx`]/[`Rx`]: chat messages between
//! authenticated XMPP sessions, numbered by their `id` attribute; stream
//! management acknowledgements (XEP-0198) as the durable answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_trait::async_trait;
use tokio::sync::{Semaphore, mpsc};

use crate::links::{BODY, Durable, Rx, Tx};
use crate::xmpp::{Login, Prosody, XmppEvent, XmppRx, XmppTx, connect};

/// [`crate::links::PASSWORD`] as text.
const PASSWORD_STR: &str = "benchmark password";

/// Where to log in: enough to start sessions from any task.
#[derive(Debug, Clone)]
pub struct Target {
    addr: std::net::SocketAddr,
    domain: String,
}

impl Target {
    /// The target for a running Prosody.
    pub fn of(p: &Prosody) -> Target {
        Target {
            addr: p.addr,
            domain: p.domain.clone(),
        }
    }

    async fn connect(
        &self,
        user: &str,
        register: bool,
        available: bool,
        stream_management: bool,
    ) -> anyhow::Result<(XmppTx, XmppRx)> {
        connect(&Login {
            addr: self.addr,
            domain: &self.domain,
            user,
            password: PASSWORD_STR,
            register,
            available,
            stream_management,
        })
        .await
    }
}

/// Registers `user` (in-band registration, XEP-0077).
pub async fn register(p: &Prosody, user: &str) -> anyhow::Result<()> {
    let (mut tx, _rx) = Target::of(p).connect(user, true, false, false).await?;
    tx.close().await?;
    Ok(())
}

fn body() -> String {
    "x".repeat(BODY)
}

/// Sends chat messages whose `id` is the benchmark number.
pub struct XTx {
    tx: XmppTx,
    to: String,
    body: String,
    queued: usize,
    request_acks: bool,
}

#[async_trait]
impl Tx for XTx {
    async fn send(&mut self, seq: u64) -> anyhow::Result<()> {
        self.tx.message(&self.to, seq, &self.body);
        if self.request_acks {
            self.tx.request_ack();
        }
        self.queued += 1;
        if self.queued >= 64 {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        self.queued = 0;
        self.tx.flush().await
    }
}

/// Yields the numbers of received chat messages.
pub struct XRx {
    rx: XmppRx,
    _tx: XmppTx,
}

#[async_trait]
impl Rx for XRx {
    async fn recv(&mut self) -> anyhow::Result<Option<u64>> {
        loop {
            match self.rx.next().await? {
                None => return Ok(None),
                Some(XmppEvent::Message { id, .. }) => return Ok(Some(id)),
                Some(_) => {}
            }
        }
    }
}

/// A live recipient: logged in and available, so messages are routed to it.
pub async fn receiver(p: &Prosody, user: &str) -> anyhow::Result<XRx> {
    let (tx, rx) = Target::of(p).connect(user, false, true, false).await?;
    Ok(XRx { rx, _tx: tx })
}

/// A sender from `from` to `to`.
pub async fn sender(p: &Prosody, from: &str, to: &str) -> anyhow::Result<XTx> {
    let (tx, rx) = Target::of(p).connect(from, false, false, false).await?;
    // Nothing is expected back; read and discard so the socket never stalls.
    tokio::spawn(drain_events(rx));
    Ok(XTx {
        tx,
        to: to.to_owned(),
        body: body(),
        queued: 0,
        request_acks: false,
    })
}

async fn drain_events(mut rx: XmppRx) {
    while let Ok(Some(_)) = rx.next().await {}
}

/// A sender to an offline `to` with stream management: every message is
/// followed by an ack request, and the server's `<a h='N'/>` (stanzas
/// handled, which for an offline recipient means stored by mod_offline)
/// becomes the acknowledged numbers.
pub async fn durable(p: &Prosody, from: &str, to: &str) -> anyhow::Result<Durable> {
    let (tx, mut rx) = Target::of(p).connect(from, false, false, true).await?;
    let (acks_tx, acks) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut handled = 0u64;
        while let Ok(Some(ev)) = rx.next().await {
            if let XmppEvent::Ack(h) = ev {
                while handled < h {
                    if acks_tx.send(handled).is_err() {
                        return;
                    }
                    handled += 1;
                }
            }
        }
    });
    Ok(Durable {
        tx: Box::new(XTx {
            tx,
            to: to.to_owned(),
            body: body(),
            queued: 0,
            request_acks: true,
        }),
        acks,
    })
}

/// Logs `user` in and becomes available, which makes Prosody send its
/// offline messages; returns the time from connecting to the last of
/// `count`, checked in order.
pub async fn drain(p: &Prosody, user: &str, count: u64) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut rx = receiver(p, user).await?;
    for expected in 0..count {
        match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
            Ok(r) => {
                let n = r?.context("connection ended")?;
                if n != expected {
                    bail!("Prosody delivered offline message {n} where {expected} was due");
                }
            }
            Err(_) => bail!("offline message {expected} never came"),
        }
    }
    Ok(start.elapsed())
}

/// An idle, authenticated, available session.
pub struct Idle {
    _tx: XmppTx,
    _reader: tokio::task::JoinHandle<()>,
}

/// Opens an idle session for `user`.
pub async fn idle(p: &Prosody, user: &str) -> anyhow::Result<Idle> {
    let (tx, rx) = Target::of(p).connect(user, false, true, false).await?;
    Ok(Idle {
        _tx: tx,
        _reader: tokio::spawn(drain_events(rx)),
    })
}

/// Logs in `total` times over `users` (SASL, resource binding), `parallel`
/// at a time, closing each session; returns the wall time.
pub async fn login_loop(
    t: &Target,
    users: &[String],
    total: usize,
    parallel: usize,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let sem = Arc::new(Semaphore::new(parallel));
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let (t, user, sem) = (t.clone(), users[i % users.len()].clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire_owned().await?;
            let (mut tx, _rx) = t.connect(&user, false, false, false).await?;
            tx.close().await
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(start.elapsed())
}
