//! Routing of live pushes to connected users, and who is online.
//!
//! The hub is the one seam through which every push goes, so that a later
//! multi-node deployment can route between nodes here without touching
//! the handlers.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::task::Poll;

use futures_util::task::AtomicWaker;

use telepound_protocol::message::UnixMillis;
use telepound_protocol::{MsgId, UserName};

use crate::store::{CommitListener, StoredEntry};

/// Something pushed to a connection.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A mailbox entry just committed for this user.
    Entry(Arc<StoredEntry>),
    /// A live delivery receipt (not stored).
    Delivered {
        /// The message.
        msg_id: MsgId,
        /// Who received it.
        to: UserName,
        /// When.
        at: UnixMillis,
    },
}

impl Outbound {
    /// What this push pins in memory while it waits in an outbox, roughly:
    /// the envelope plus a fixed allowance for the rest.
    pub fn cost(&self) -> usize {
        const OVERHEAD: usize = 256;
        match self {
            Self::Entry(entry) => OVERHEAD + entry.envelope.len(),
            Self::Delivered { .. } => OVERHEAD,
        }
    }
}

/// How far a connection is in taking pushes, and its outbox: the pushes
/// waiting for it, bounded in count and in bytes; and whether it has been
/// kicked or told of the shutdown.
///
/// Design decision: a mutex-guarded queue and a waker rather than a tokio
/// channel, which allocates about 2 KiB per connection up front (its
/// shared state and a first block of 32 slots); an empty queue here holds
/// no allocation, so an idle connection's outbox costs a hundred bytes.
#[derive(Debug, Default)]
pub struct PushState {
    state: AtomicU8,
    /// [`KICKED`] and [`STOPPING`], set from outside the connection.
    signals: AtomicU8,
    queued_bytes: AtomicUsize,
    queue: Mutex<VecDeque<Outbound>>,
    waker: AtomicWaker,
}

/// The connection's outbox overflowed: it must be dropped.
const KICKED: u8 = 1;
/// The server is shutting down.
const STOPPING: u8 = 2;

/// Why a connection was told to stop what it is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// The server is shutting down.
    Stopping,
    /// Its outbox overflowed (it was not reading).
    Kicked,
}

impl PushState {
    /// Logged in, never synced (a one-shot command): only receipts.
    pub const IDLE: u8 = 0;
    /// Paging through its mailbox: mailbox pushes tell it to look again.
    pub const SYNCING: u8 = 1;
    /// Caught up: takes every push.
    pub const LIVE: u8 = 2;

    /// The current state.
    pub fn get(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }

    /// Moves to `state`.
    pub fn set(&self, state: u8) {
        self.state.store(state, Ordering::Release);
    }

    /// Counts `cost` more bytes queued unless that would go over `budget`
    /// (a push into an empty outbox always fits, however big).
    fn reserve(&self, cost: usize, budget: usize) -> bool {
        let before = self.queued_bytes.fetch_add(cost, Ordering::AcqRel);
        if before > 0 && before + cost > budget {
            self.queued_bytes.fetch_sub(cost, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Counts `cost` bytes as no longer queued (taken from the outbox).
    pub fn release(&self, cost: usize) {
        self.queued_bytes.fetch_sub(cost, Ordering::AcqRel);
    }

    /// Queues `item` unless `max` pushes already wait; wakes the
    /// connection.
    fn try_push(&self, item: Outbound, max: usize) -> Result<(), Refused> {
        {
            let mut q = self.queue.lock().expect("outbox lock");
            if q.len() >= max {
                return Err(Refused::Full);
            }
            q.push_back(item);
        }
        self.waker.wake();
        Ok(())
    }

    /// The next push, once there is one. Only the connection that owns
    /// this outbox calls it.
    ///
    /// # Cancel safety
    /// Cancel safe: a push is taken only when it is returned.
    pub async fn recv(&self) -> Outbound {
        std::future::poll_fn(|cx| {
            // Registered before looking, so a push after the look wakes.
            self.waker.register(cx.waker());
            match self.queue.lock().expect("outbox lock").pop_front() {
                Some(item) => Poll::Ready(item),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// Tells the connection its outbox overflowed.
    pub fn kick(&self) {
        self.raise(KICKED);
    }

    /// Whether the connection has been kicked.
    pub fn is_kicked(&self) -> bool {
        self.signals.load(Ordering::Acquire) & KICKED != 0
    }

    fn raise(&self, bit: u8) {
        self.signals.fetch_or(bit, Ordering::AcqRel);
        self.waker.wake();
    }

    /// Waits for a shutdown or a kick (a shutdown first, when both). Only
    /// the connection that owns this state calls it (or [`Self::kicked`]):
    /// they share the outbox's one waker with [`Self::recv`].
    ///
    /// Design decision: flags here, woken through the outbox's waker,
    /// rather than a cancellation token each for the kick and the
    /// shutdown. A token's wait takes a mutex (the shutdown token's one
    /// mutex shared by every connection) when it is made, polled and
    /// dropped, and the connection loop makes one on every turn: that cost
    /// 7% of the server's CPU in online routing (docs/BENCHMARKS.md).
    ///
    /// # Cancel safety
    /// Cancel safe: it only looks.
    pub async fn signalled(&self) -> Signal {
        self.until(|s| {
            if s & STOPPING != 0 {
                Some(Signal::Stopping)
            } else if s & KICKED != 0 {
                Some(Signal::Kicked)
            } else {
                None
            }
        })
        .await
    }

    /// Waits for a kick (not for a shutdown). Only the owning connection
    /// calls it, as with [`Self::signalled`].
    pub async fn kicked(&self) {
        self.until(|s| (s & KICKED != 0).then_some(())).await;
    }

    async fn until<T>(&self, ready: impl Fn(u8) -> Option<T>) -> T {
        std::future::poll_fn(|cx| {
            // Registered before looking, as in `recv`.
            self.waker.register(cx.waker());
            ready(self.signals.load(Ordering::Acquire)).map_or(Poll::Pending, Poll::Ready)
        })
        .await
    }

    /// Gives back the memory of an empty outbox (a connection going idle).
    pub fn shrink(&self) {
        let mut q = self.queue.lock().expect("outbox lock");
        if q.is_empty() {
            q.shrink_to_fit();
        }
    }
}

/// A connection's registration in the hub.
#[derive(Clone)]
pub struct Member {
    /// The connection's id.
    pub conn_id: u64,
    /// Whether it takes mailbox pushes yet, and its outbox.
    pub state: Arc<PushState>,
    /// Most pushes its outbox may hold.
    pub outbox_len: usize,
    /// Most bytes of pushes its outbox may hold ([`Outbound::cost`]).
    pub outbox_bytes: usize,
}

/// The routing table: user → connected members; and every open connection
/// (logged in or not), so that a shutdown reaches each.
#[derive(Default)]
pub struct Hub {
    // A std Mutex: every critical section is a map lookup and non-blocking
    // pushes into outboxes, with no `.await` inside, so it is never held across a
    // suspension point.
    members: Mutex<HashMap<UserName, Vec<Member>>>,
    /// Every open connection, logged in or not, for [`Hub::stop_all`].
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    by_id: HashMap<u64, Arc<PushState>>,
    stopping: bool,
}

/// What a push reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PushOutcome {
    /// Live (synced) connections that got it.
    pub live: usize,
    /// Connections dropped because their outbox was full.
    pub kicked: usize,
}

impl Hub {
    /// Counts a connection as open until [`Hub::close`], so that a
    /// shutdown reaches it; one opened after the shutdown began is told at
    /// once.
    pub fn open(&self, conn_id: u64, state: &Arc<PushState>) {
        let mut open = self.open.lock().expect("hub lock");
        if open.stopping {
            state.raise(STOPPING);
        }
        open.by_id.insert(conn_id, state.clone());
    }

    /// The connection has ended.
    pub fn close(&self, conn_id: u64) {
        self.open.lock().expect("hub lock").by_id.remove(&conn_id);
    }

    /// How many connections are open (the `telepound_connections_open`
    /// gauge): counted from the map itself, so that an entry left behind
    /// would show there.
    pub fn open_connections(&self) -> usize {
        self.open.lock().expect("hub lock").by_id.len()
    }

    /// Tells every open connection, and every one opened from now on, that
    /// the server is shutting down. Wakes them after letting go of the lock,
    /// which each one takes again as it ends.
    pub fn stop_all(&self) {
        let all: Vec<Arc<PushState>> = {
            let mut open = self.open.lock().expect("hub lock");
            open.stopping = true;
            open.by_id.values().cloned().collect()
        };
        for state in all {
            state.raise(STOPPING);
        }
    }

    /// Adds a logged-in connection.
    pub fn join(&self, user: &UserName, member: Member) {
        let mut m = self.members.lock().expect("hub lock");
        // Most users have one connection: room for exactly one, not the
        // four a first push would make.
        m.entry(user.clone())
            .or_insert_with(|| Vec::with_capacity(1))
            .push(member);
    }

    /// Removes a connection; returns true when it was the user's last.
    pub fn leave(&self, user: &UserName, conn_id: u64) -> bool {
        let mut m = self.members.lock().expect("hub lock");
        let Some(list) = m.get_mut(user) else {
            return true;
        };
        list.retain(|x| x.conn_id != conn_id);
        if list.is_empty() {
            m.remove(user);
            true
        } else {
            false
        }
    }

    /// Whether the user has any logged-in connection.
    pub fn is_online(&self, user: &UserName) -> bool {
        self.members.lock().expect("hub lock").contains_key(user)
    }

    /// Whether the user has a connection that takes live pushes.
    pub fn is_live(&self, user: &UserName) -> bool {
        self.members
            .lock()
            .expect("hub lock")
            .get(user)
            .is_some_and(|l| l.iter().any(|x| x.state.get() == PushState::LIVE))
    }

    /// How many connections are logged in.
    pub fn sessions(&self) -> usize {
        self.members
            .lock()
            .expect("hub lock")
            .values()
            .map(Vec::len)
            .sum()
    }

    /// Pushes to the connections of `user` that want it: mailbox entries
    /// to connections that have synced or are syncing, receipts to all. A
    /// connection whose outbox is full (in pushes, or in bytes: envelopes
    /// may be large) is kicked (it catches up from its
    /// mailbox when it returns), except that a receipt notice for a
    /// connection that never synced is simply dropped: it is best effort
    /// there, and the stored receipt remains. Nobody waits for a slow reader.
    pub fn push(&self, user: &UserName, item: Outbound) -> PushOutcome {
        let m = self.members.lock().expect("hub lock");
        let mut out = PushOutcome::default();
        let is_entry = matches!(item, Outbound::Entry(_));
        if let Some(list) = m.get(user) {
            for member in list {
                let state = member.state.get();
                if is_entry && state == PushState::IDLE {
                    continue;
                }
                let cost = item.cost();
                let sent = if member.state.reserve(cost, member.outbox_bytes) {
                    member
                        .state
                        .try_push(item.clone(), member.outbox_len)
                        .inspect_err(|_| member.state.release(cost))
                } else {
                    Err(Refused::Full)
                };
                match sent {
                    Ok(()) => {
                        if state == PushState::LIVE {
                            out.live += 1;
                        }
                    }
                    Err(Refused::Full) if !is_entry && state == PushState::IDLE => {}
                    Err(Refused::Full) => {
                        // No longer live: receipts for this user are stored
                        // from now on, since this connection will not read them.
                        member.state.set(PushState::IDLE);
                        member.state.kick();
                        out.kicked += 1;
                    }
                }
            }
        }
        out
    }
}

/// Why a push did not go into an outbox.
enum Refused {
    /// Full, in pushes or in bytes.
    Full,
}

/// The writer announces committed changes here, in commit order: new
/// mailbox entries go to the recipient's connections, and receipts go live
/// to a sender who has a synced connection (else the writer stores them).
impl CommitListener for Hub {
    fn stored(&self, recipient: &UserName, entry: StoredEntry) {
        self.push(recipient, Outbound::Entry(Arc::new(entry)));
    }

    fn delivered(&self, sender: &UserName, msg_id: MsgId, to: &UserName, at: UnixMillis) {
        self.push(
            sender,
            Outbound::Delivered {
                msg_id,
                to: to.clone(),
                at,
            },
        );
    }

    fn must_store_receipt(&self, sender: &UserName) -> bool {
        !self.is_live(sender)
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    #[tokio::test]
    async fn a_shutdown_reaches_open_connections_and_ones_opened_after_it() {
        let hub = Hub::default();
        let (a, gone) = (
            Arc::new(PushState::default()),
            Arc::new(PushState::default()),
        );
        hub.open(1, &a);
        hub.open(2, &gone);
        hub.close(2);
        let waiting = tokio::spawn({
            let a = a.clone();
            async move { a.signalled().await }
        });
        tokio::task::yield_now().await;
        hub.stop_all();
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), waiting).await;
        assert_eq!(got.unwrap().unwrap(), Signal::Stopping);
        assert_eq!(
            gone.signalled().now_or_never(),
            None,
            "told after it closed"
        );

        let late = Arc::new(PushState::default());
        hub.open(3, &late);
        assert_eq!(late.signalled().now_or_never(), Some(Signal::Stopping));
        hub.close(1);
        hub.close(3);
        assert!(hub.open.lock().unwrap().by_id.is_empty());
    }

    #[test]
    fn a_kick_ends_a_wait_for_kicks_and_a_shutdown_does_not() {
        let s = PushState::default();
        assert_eq!(s.signalled().now_or_never(), None);
        s.raise(STOPPING);
        assert_eq!(s.kicked().now_or_never(), None, "a shutdown is not a kick");
        assert!(!s.is_kicked());
        s.kick();
        assert_eq!(s.kicked().now_or_never(), Some(()));
        assert!(s.is_kicked());
        // Both: the shutdown comes first, as the connection loop wants.
        assert_eq!(s.signalled().now_or_never(), Some(Signal::Stopping));
        let k = PushState::default();
        k.kick();
        assert_eq!(k.signalled().now_or_never(), Some(Signal::Kicked));
    }
}
