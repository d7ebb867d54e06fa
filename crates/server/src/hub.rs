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
use tokio_util::sync::CancellationToken;

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
/// waiting for it, bounded in count and in bytes.
///
/// Design decision: a mutex-guarded queue and a waker rather than a tokio
/// channel, which allocates about 2 KiB per connection up front (its
/// shared state and a first block of 32 slots); an empty queue here holds
/// no allocation, so an idle connection's outbox costs a hundred bytes.
#[derive(Debug, Default)]
pub struct PushState {
    state: AtomicU8,
    queued_bytes: AtomicUsize,
    queue: Mutex<VecDeque<Outbound>>,
    waker: AtomicWaker,
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
    /// Cancelled when the connection must be dropped (its outbox is full).
    pub kick: CancellationToken,
}

/// The routing table: user → connected members.
#[derive(Default)]
pub struct Hub {
    // A std Mutex: every critical section is a map lookup and non-blocking
    // pushes into outboxes, with no `.await` inside, so it is never held across a
    // suspension point.
    members: Mutex<HashMap<UserName, Vec<Member>>>,
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
                        member.kick.cancel();
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
