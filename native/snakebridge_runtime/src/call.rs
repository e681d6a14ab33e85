//! Calls in flight and the table that finds them by id.
//!
//! A call's life is a small state machine on one atomic, so a reply, a
//! cancellation and a worker's death can race without locks and still give
//! the caller exactly one answer (or none, after a successful cancel):
//!
//! ```text
//! QUEUED ──write──▶ SENT ──reply/death──▶ DELIVERING ──▶ (removed)
//!    │              │  ▲
//!    │        items │  │ delivered
//!    │              ▼  │
//!    │            STREAMING
//!    └────cancel──────┴──▶ CANCELLED ──▶ (removed)
//! ```
//!
//! A stream's items are delivered while the call is STREAMING, which a
//! cancel waits out (it lasts one message send): once a cancel returns, no
//! item of that stream will reach the caller any more, so the caller can
//! flush its mailbox of them for good.
//!
//! Whoever moves a call out of QUEUED/SENT owns its ending. A delivered call
//! leaves the table only *after* its reply was sent, so a cancel that does
//! not find it knows the reply is already in the caller's mailbox.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::hash::U64Map;

const QUEUED: u8 = 0;
const SENT: u8 = 1;
const DELIVERING: u8 = 2;
const CANCELLED: u8 = 3;
const STREAMING: u8 = 4;

/// One request from one caller.
pub struct Call<C> {
    pub id: u64,
    pub caller: C,
    /// Who the caller is, for affinity (see `affinity`); 0 for no one.
    pub owner: u64,
    state: AtomicU8,
    /// Incarnation of the worker process the call was written to (0: none yet).
    worker: AtomicU64,
}

impl<C> Call<C> {
    pub fn new(id: u64, caller: C) -> Arc<Self> {
        Self::owned(id, caller, 0)
    }

    /// A call of caller `owner` (nonzero): calls of one owner that name no
    /// object go where its objects live.
    pub fn owned(id: u64, caller: C, owner: u64) -> Arc<Self> {
        Arc::new(Call {
            id,
            caller,
            owner,
            state: AtomicU8::new(QUEUED),
            worker: AtomicU64::new(0),
        })
    }

    /// Claims a queued call for writing to worker `incarnation`. False if it
    /// was cancelled meanwhile.
    pub(crate) fn mark_sent(&self, incarnation: u64) -> bool {
        self.worker.store(incarnation, Ordering::Relaxed);
        self.state
            .compare_exchange(QUEUED, SENT, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Undoes [`Call::mark_sent`] for a call whose bytes never reached the
    /// worker. False if it was cancelled or answered meanwhile.
    pub(crate) fn mark_unsent(&self) -> bool {
        self.state
            .compare_exchange(SENT, QUEUED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Claims the right to deliver the call's one reply.
    pub(crate) fn claim_reply(&self) -> bool {
        let state = self.state.load(Ordering::Acquire);
        (state == QUEUED || state == SENT)
            && self
                .state
                .compare_exchange(state, DELIVERING, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// Claims a sent stream for delivering some of its items; end with
    /// [`Call::items_delivered`]. False if it was cancelled.
    pub(crate) fn claim_items(&self) -> bool {
        self.state
            .compare_exchange(SENT, STREAMING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    pub(crate) fn items_delivered(&self) {
        self.state.store(SENT, Ordering::Release);
    }

    /// Claims the call's ending for a cancellation; returns the state it was
    /// taken from.
    fn claim_cancel(&self) -> Option<u8> {
        loop {
            let state = self.state.load(Ordering::Acquire);
            if state == STREAMING {
                // The reader is sending this stream's items to the caller:
                // a matter of microseconds.
                std::hint::spin_loop();
                continue;
            }
            if state != QUEUED && state != SENT {
                return None;
            }
            if self
                .state
                .compare_exchange(state, CANCELLED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Some(state);
            }
        }
    }

    /// The worker incarnation the call was last written to (0: none), read
    /// without regard to its state, which a cancel may change meanwhile.
    pub(crate) fn written_to(&self) -> u64 {
        self.worker.load(Ordering::Relaxed)
    }

    /// The worker incarnation a sent call went to.
    pub(crate) fn sent_to(&self) -> Option<u64> {
        matches!(self.state.load(Ordering::Acquire), SENT | STREAMING).then(|| self.worker.load(Ordering::Relaxed))
    }

    fn is_sent_to(&self, incarnation: u64) -> bool {
        self.state.load(Ordering::Acquire) == SENT && self.worker.load(Ordering::Relaxed) == incarnation
    }
}

/// What [`CallTable::cancel`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// No reply will be delivered.
    Cancelled,
    /// The reply is being (or has been) delivered.
    Replied,
    /// No call with that id is pending.
    Unknown,
}

/// Why a call is cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// Its caller no longer wants it.
    Caller,
    /// Its caller gave up waiting: counted against the pool's circuit
    /// breaker if a worker had the call.
    Timeout,
}

const SHARDS: usize = 32;

type Shard<C> = Mutex<U64Map<Arc<Call<C>>>>;

/// Every pending call, by id, sharded so callers on different schedulers
/// rarely meet on a lock.
pub struct CallTable<C> {
    shards: Box<[Shard<C>]>,
}

impl<C> Default for CallTable<C> {
    fn default() -> Self {
        CallTable {
            shards: (0..SHARDS).map(|_| Mutex::new(U64Map::default())).collect(),
        }
    }
}

impl<C> CallTable<C> {
    fn shard(&self, id: u64) -> &Shard<C> {
        &self.shards[(id ^ (id >> 32)) as usize % SHARDS]
    }

    /// Registers a call. False if its id is taken (the caller picks another).
    pub fn insert(&self, call: Arc<Call<C>>) -> bool {
        let mut shard = self.shard(call.id).lock();
        if shard.contains_key(&call.id) {
            return false;
        }
        shard.insert(call.id, call);
        true
    }

    pub fn get(&self, id: u64) -> Option<Arc<Call<C>>> {
        self.shard(id).lock().get(&id).cloned()
    }

    pub fn remove(&self, id: u64) {
        self.shard(id).lock().remove(&id);
    }

    /// Cancels call `id` if `belongs(caller)` confirms it is the one meant.
    pub fn cancel(&self, id: u64, belongs: impl FnOnce(&C) -> bool) -> CancelOutcome {
        self.cancel_because(id, CancelReason::Caller, belongs)
    }

    /// [`CallTable::cancel`], saying why.
    pub fn cancel_because(&self, id: u64, why: CancelReason, belongs: impl FnOnce(&C) -> bool) -> CancelOutcome {
        let Some(call) = self.get(id) else {
            return CancelOutcome::Unknown;
        };
        if !belongs(&call.caller) {
            return CancelOutcome::Unknown;
        }
        match call.claim_cancel() {
            Some(state) => {
                self.remove(id);
                if state == SENT {
                    // Running (or about to run) in a worker: stop it there.
                    crate::connection::interrupt(call.worker.load(Ordering::Relaxed), id);
                    if why == CancelReason::Timeout {
                        crate::connection::timed_out(call.worker.load(Ordering::Relaxed), id);
                    }
                }
                CancelOutcome::Cancelled
            }
            None => CancelOutcome::Replied,
        }
    }

    /// Lets the stream `id`, if `belongs(caller)` confirms it is the one
    /// meant and it is still running, send `n` more items. False if it is not
    /// running (finished, cancelled, or unknown).
    pub fn grant_credit(&self, id: u64, n: u64, belongs: impl FnOnce(&C) -> bool) -> bool {
        let Some(call) = self.get(id) else {
            return false;
        };
        if !belongs(&call.caller) {
            return false;
        }
        match call.sent_to() {
            Some(incarnation) => crate::connection::credit(incarnation, id, n),
            None => false,
        }
    }

    /// Claims every call written to worker `incarnation` and not yet
    /// answered; the caller delivers their failure, then removes them.
    pub(crate) fn claim_sent_to(&self, incarnation: u64) -> Vec<Arc<Call<C>>> {
        let mut claimed = Vec::new();
        for shard in self.shards.iter() {
            for call in shard.lock().values() {
                if call.is_sent_to(incarnation) && call.claim_reply() {
                    claimed.push(call.clone());
                }
            }
        }
        claimed
    }

    /// Calls that were written to one of `incarnations` and are still
    /// running.
    pub(crate) fn sent_to_any(&self, incarnations: &[u64]) -> Vec<Arc<Call<C>>> {
        let mut found = Vec::new();
        for shard in self.shards.iter() {
            for call in shard.lock().values() {
                if call.sent_to().is_some_and(|w| incarnations.contains(&w)) {
                    found.push(call.clone());
                }
            }
        }
        found
    }

    /// Number of pending calls.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_of_reply_and_cancel_wins() {
        let table = CallTable::default();
        let call = Call::new(7, "caller");
        assert!(table.insert(call.clone()));
        assert!(!table.insert(Call::new(7, "other")));
        assert!(call.mark_sent(1));
        assert!(call.claim_reply());
        assert_eq!(table.cancel(7, |c| *c == "caller"), CancelOutcome::Replied);
        table.remove(7);
        assert_eq!(table.cancel(7, |_| true), CancelOutcome::Unknown);
    }

    #[test]
    fn cancelled_call_is_never_sent_or_answered() {
        let table = CallTable::default();
        let call = Call::new(9, ());
        table.insert(call.clone());
        assert_eq!(table.cancel(9, |_| true), CancelOutcome::Cancelled);
        assert!(!call.mark_sent(1));
        assert!(!call.claim_reply());
        assert!(table.is_empty());
    }

    #[test]
    fn cancel_waits_out_an_item_delivery() {
        let table = Arc::new(CallTable::default());
        let call = Call::new(5, ());
        table.insert(call.clone());
        assert!(call.mark_sent(1));
        assert!(call.claim_items());
        let cancelling = {
            let table = table.clone();
            std::thread::spawn(move || table.cancel(5, |_| true))
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!cancelling.is_finished());
        call.items_delivered();
        assert_eq!(cancelling.join().unwrap(), CancelOutcome::Cancelled);
        assert!(!call.claim_items());
    }

    #[test]
    fn cancel_checks_the_caller() {
        let table = CallTable::default();
        table.insert(Call::new(3, 1u32));
        assert_eq!(table.cancel(3, |c| *c == 2), CancelOutcome::Unknown);
        assert_eq!(table.cancel(3, |c| *c == 1), CancelOutcome::Cancelled);
    }

    #[test]
    fn worker_death_claims_only_its_sent_calls() {
        let table = CallTable::default();
        let on_dead = Call::new(1, ());
        let on_other = Call::new(2, ());
        let queued = Call::new(3, ());
        for c in [&on_dead, &on_other, &queued] {
            table.insert(c.clone());
        }
        on_dead.mark_sent(10);
        on_other.mark_sent(11);
        let claimed = table.claim_sent_to(10);
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].id, 1);
        assert_eq!(table.cancel(1, |_| true), CancelOutcome::Replied);
        assert_eq!(table.cancel(2, |_| true), CancelOutcome::Cancelled);
    }
}
