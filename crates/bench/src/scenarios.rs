//! The measurements, written once over [`Tx`] and [`Rx`] so that every
//! system is driven by the same code.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use tokio::sync::{Notify, Semaphore};

use crate::links::{Durable, Rx, Tx};
use crate::procs::Meter;

/// Throughput and server cost of a run.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Throughput {
    /// Messages per second over the measured interval.
    pub msgs_per_s: f64,
    /// Server CPU per message, in microseconds.
    pub cpu_us_per_msg: f64,
    /// Messages counted in the measured interval.
    pub messages: u64,
}

/// How long a receiver waits for the next message before calling it lost.
const LOST_AFTER: Duration = Duration::from_secs(10);

/// Closed loop: each pair keeps `k` messages in flight (a message leaves
/// flight when its recipient has it). Every message is checked: in order,
/// none lost, none twice.
pub async fn routing(
    pairs: Vec<(Box<dyn Tx>, Box<dyn Rx>)>,
    k: usize,
    warm: Duration,
    measure: Duration,
    server: u32,
) -> anyhow::Result<Throughput> {
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (mut tx, mut rx) in pairs {
        let sem = Arc::new(Semaphore::new(k));
        let sent_total = Arc::new(AtomicU64::new(u64::MAX));
        let done = Arc::new(Notify::new());
        let (stop2, sem2, sent2, done2) =
            (stop.clone(), sem.clone(), sent_total.clone(), done.clone());
        let sender = tokio::spawn(async move {
            let mut seq = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                if sem2.available_permits() == 0 {
                    tx.flush().await?;
                }
                match tokio::time::timeout(Duration::from_millis(200), sem2.acquire()).await {
                    Ok(p) => p.context("semaphore")?.forget(),
                    Err(_) => continue,
                }
                tx.send(seq).await?;
                seq += 1;
            }
            tx.flush().await?;
            sent2.store(seq, Ordering::Release);
            done2.notify_one();
            anyhow::Ok(tx)
        });
        let received = received.clone();
        let receiver = tokio::spawn(async move {
            let mut expected = 0u64;
            loop {
                let caught_up = || expected == sent_total.load(Ordering::Acquire);
                let n = match next_unless_caught_up(rx.recv(), caught_up, &done).await {
                    Next::CaughtUp => return anyhow::Ok(rx),
                    Next::TimedOut => bail!("message {expected} never arrived"),
                    Next::Item(r) => r?.context("link ended")?,
                };
                if n != expected {
                    bail!("expected message {expected}, got {n}: lost, duplicated or reordered");
                }
                expected += 1;
                received.fetch_add(1, Ordering::Relaxed);
                sem.add_permits(1);
            }
        });
        tasks.push((sender, receiver));
    }
    tokio::time::sleep(warm).await;
    let c0 = received.load(Ordering::Relaxed);
    let meter = Meter::start(server)?;
    tokio::time::sleep(measure).await;
    let (cpu, wall) = meter.stop()?;
    let c1 = received.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for (s, r) in tasks {
        s.await??;
        r.await??;
    }
    let n = c1 - c0;
    Ok(Throughput {
        msgs_per_s: n as f64 / wall.as_secs_f64(),
        cpu_us_per_msg: cpu as f64 / n.max(1) as f64,
        messages: n,
    })
}

/// What the receiving side of a closed loop got.
enum Next<T> {
    Item(T),
    /// It has everything its sender sent, and the sender has stopped.
    CaughtUp,
    /// Nothing came for [`LOST_AFTER`].
    TimedOut,
}

/// Waits for `next`, unless the receiving side has caught up with a
/// sender that has stopped: it may have received everything before the
/// sender said how much that was (`done` is notified when it does), and
/// must not then wait for a message that will never come. `next` is
/// dropped unfinished only once caught up, when no message is left in
/// flight, or on a timeout, which fails the run: either way the link is not
/// read again (an unfinished Telepound `recv` may drop the acks it was
/// sending, which is then harmless).
async fn next_unless_caught_up<T>(
    next: impl Future<Output = T>,
    caught_up: impl Fn() -> bool,
    done: &Notify,
) -> Next<T> {
    tokio::pin!(next);
    let lost = tokio::time::sleep(LOST_AFTER);
    tokio::pin!(lost);
    loop {
        if caught_up() {
            return Next::CaughtUp;
        }
        tokio::select! {
            biased;
            item = &mut next => return Next::Item(item),
            () = done.notified() => {}
            () = &mut lost => return Next::TimedOut,
        }
    }
}

/// Closed loop on acknowledgements: each sender keeps `k` messages not yet
/// acknowledged as stored. Every acknowledgement is checked to come once.
pub async fn durable(
    senders: Vec<Durable>,
    k: usize,
    warm: Duration,
    measure: Duration,
    server: u32,
) -> anyhow::Result<Throughput> {
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for Durable { mut tx, mut acks } in senders {
        let sem = Arc::new(Semaphore::new(k));
        let sent_total = Arc::new(AtomicU64::new(u64::MAX));
        let done = Arc::new(Notify::new());
        let (stop2, sem2, sent2, done2) =
            (stop.clone(), sem.clone(), sent_total.clone(), done.clone());
        let sender = tokio::spawn(async move {
            let mut seq = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                if sem2.available_permits() == 0 {
                    tx.flush().await?;
                }
                match tokio::time::timeout(Duration::from_millis(200), sem2.acquire()).await {
                    Ok(p) => p.context("semaphore")?.forget(),
                    Err(_) => continue,
                }
                tx.send(seq).await?;
                seq += 1;
            }
            tx.flush().await?;
            sent2.store(seq, Ordering::Release);
            done2.notify_one();
            // Kept open until every acknowledgement is in: closing the
            // connection would lose the answers still on their way.
            anyhow::Ok(tx)
        });
        let acked = acked.clone();
        let counter = tokio::spawn(async move {
            let mut seen = Vec::<bool>::new();
            let mut count = 0u64;
            loop {
                let caught_up = || count == sent_total.load(Ordering::Acquire);
                let n = match next_unless_caught_up(acks.recv(), caught_up, &done).await {
                    Next::CaughtUp => return anyhow::Ok(()),
                    Next::TimedOut => bail!("an acknowledgement never came ({count} so far)"),
                    Next::Item(r) => r.context("acknowledgements ended")?,
                } as usize;
                if seen.len() <= n {
                    seen.resize(n + 1024, false);
                }
                if std::mem::replace(&mut seen[n], true) {
                    bail!("message {n} acknowledged twice");
                }
                count += 1;
                acked.fetch_add(1, Ordering::Relaxed);
                sem.add_permits(1);
            }
        });
        tasks.push((sender, counter));
    }
    tokio::time::sleep(warm).await;
    let c0 = acked.load(Ordering::Relaxed);
    let meter = Meter::start(server)?;
    tokio::time::sleep(measure).await;
    let (cpu, wall) = meter.stop()?;
    let c1 = acked.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for (s, c) in tasks {
        let tx = s.await??;
        c.await??;
        drop(tx);
    }
    let n = c1 - c0;
    Ok(Throughput {
        msgs_per_s: n as f64 / wall.as_secs_f64(),
        cpu_us_per_msg: cpu as f64 / n.max(1) as f64,
        messages: n,
    })
}

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Latency {
    /// Offered rate (messages per second, all pairs together).
    pub rate: u64,
    /// Rate actually received over the measured interval.
    pub achieved: f64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
}

/// Open loop: each pair sends on a fixed schedule regardless of answers,
/// and a message's latency runs from its *scheduled* send time to its
/// arrival, so a server that falls behind cannot hide the queueing
/// (coordinated omission).
pub async fn latency(
    pairs: Vec<(Box<dyn Tx>, Box<dyn Rx>)>,
    rate: u64,
    warm: Duration,
    measure: Duration,
) -> anyhow::Result<Latency> {
    let n_pairs = pairs.len() as u64;
    let per_pair = (rate / n_pairs).max(1);
    let total = ((warm + measure).as_secs_f64() * per_pair as f64) as u64;
    let skip = (warm.as_secs_f64() * per_pair as f64) as u64;
    let epoch = Instant::now() + Duration::from_millis(50);
    // The pairs are staggered so that their schedules interleave: pair i's
    // message seq is due at epoch + (seq * pairs + i) / (per_pair * pairs),
    // the offered rate rounded down to a multiple of the pairs.
    let due = move |pair: u64, seq: u64| {
        epoch + Duration::from_secs_f64((seq * n_pairs + pair) as f64 / (per_pair * n_pairs) as f64)
    };
    let pacer = Pacer::start(n_pairs, total, due);
    let mut tasks = Vec::new();
    for (i, (mut tx, mut rx)) in pairs.into_iter().enumerate() {
        let pair = i as u64;
        let (tick, pacer_stopped) = (pacer.ticks[i].clone(), pacer.stop.clone());
        let sender = tokio::spawn(async move {
            for seq in 0..total {
                let due = due(pair, seq);
                if due > Instant::now() {
                    tx.flush().await?;
                    // A tick left over from a message sent late may be
                    // stored: wait until the one for this message.
                    while due > Instant::now() {
                        if pacer_stopped.load(Ordering::Relaxed) {
                            bail!("the run ended early");
                        }
                        tick.notified().await;
                    }
                }
                tx.send(seq).await?;
            }
            tx.flush().await?;
            anyhow::Ok(tx)
        });
        let receiver = tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).context("histogram")?;
            let mut expected = 0u64;
            let mut first_measured = None;
            while expected < total {
                let n = match tokio::time::timeout(LOST_AFTER, rx.recv()).await {
                    Ok(r) => r?.context("link ended")?,
                    Err(_) => bail!("message {expected} never arrived"),
                };
                if n != expected {
                    bail!("expected message {expected}, got {n}");
                }
                let now = Instant::now();
                let due = due(pair, n);
                if n >= skip {
                    first_measured.get_or_insert(now);
                    h.saturating_record(
                        now.saturating_duration_since(due).as_micros().max(1) as u64
                    );
                }
                expected += 1;
            }
            anyhow::Ok((h, rx))
        });
        tasks.push((sender, receiver));
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).context("histogram")?;
    for (s, r) in tasks {
        s.await??;
        let (h, _rx) = r.await??;
        all.add(&h).context("merging histograms")?;
    }
    drop(pacer);
    Ok(Latency {
        rate,
        achieved: all.len() as f64 / measure.as_secs_f64(),
        p50: all.value_at_quantile(0.5),
        p90: all.value_at_quantile(0.9),
        p99: all.value_at_quantile(0.99),
        p999: all.value_at_quantile(0.999),
        max: all.max(),
    })
}

/// Wakes each pair's sender when its next message is due, from a thread
/// of its own: tokio's timers have a resolution of one millisecond, which
/// would add up to a millisecond to every latency (for every system alike),
/// while a thread sleeping with a 1 µs timer slack wakes within tens of
/// microseconds of the due time.
struct Pacer {
    /// One per pair: its sender waits on it.
    ticks: Vec<Arc<Notify>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The pacer's shortest sleep.
const MIN_GAP: Duration = Duration::from_micros(20);

impl Pacer {
    /// Ticks pair `i` at `due(i, seq)` for every `seq` below `count`.
    fn start(pairs: u64, count: u64, due: impl Fn(u64, u64) -> Instant + Send + 'static) -> Pacer {
        let ticks: Vec<_> = (0..pairs).map(|_| Arc::new(Notify::new())).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (ticks, stop) = (ticks.clone(), stop.clone());
            std::thread::spawn(move || {
                crate::procs::fine_timer_slack();
                // Messages in due order: each seq, then each pair.
                let due_of = |n: u64| due(n % pairs, n / pairs);
                let (mut n, end) = (0, pairs * count);
                while n < end {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let now = Instant::now();
                    let at = due_of(n);
                    if at > now {
                        // At most one wake-up per MIN_GAP: above that
                        // rate, messages leave up to MIN_GAP late (and
                        // that counts in their latency).
                        std::thread::sleep((at - now).max(MIN_GAP));
                    }
                    let now = Instant::now();
                    while n < end && due_of(n) <= now {
                        ticks[(n % pairs) as usize].notify_one();
                        n += 1;
                    }
                }
            })
        };
        Pacer {
            ticks,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Pacer {
    /// Stops the thread (it ends by itself once the schedule is done) and,
    /// when the run ended early, the senders still waiting for a tick. The
    /// join may hold this worker for up to one gap between messages.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for tick in &self.ticks {
            tick.notify_one();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Fills a queue with `count` messages through `k`-in-flight durable
/// sends; returns when every one is acknowledged.
pub async fn fill(mut d: Durable, count: u64, k: usize) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut in_flight = 0usize;
    let mut acked = 0u64;
    let mut seq = 0u64;
    while acked < count {
        while in_flight < k && seq < count {
            d.tx.send(seq).await?;
            seq += 1;
            in_flight += 1;
        }
        d.tx.flush().await?;
        match tokio::time::timeout(LOST_AFTER, d.acks.recv()).await {
            Ok(Some(_)) => {
                acked += 1;
                in_flight -= 1;
            }
            Ok(None) => bail!("acknowledgements ended"),
            Err(_) => bail!("an acknowledgement never came"),
        }
    }
    Ok(start.elapsed())
}
