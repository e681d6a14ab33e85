//! A pool's circuit breaker: after too many failures in a window (calls
//! lost with their worker, timed-out calls, failed worker starts) the pool
//! refuses calls at once for a cool-down, then lets one trial call through.
//!
//! ```text
//! CLOSED ──`failures` within `window`──▶ OPEN ──cool-down over, a call──▶ HALF_OPEN
//!    ▲                                    ▲                                   │
//!    │                                    └──a counted failure────────────────┤
//!    └──a reply from a worker─────────────────────────────────────────────────┘
//! ```
//!
//! A submit reads one atomic while the circuit is closed, and each reply
//! one more; everything else is rare and takes a lock. Times are passed in
//! (monotonic µs) so the unit tests below drive a clock of their own.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use crossbeam_channel::Sender;
use parking_lot::Mutex;

use crate::events::{CircuitChange, Failure, Reason};
use crate::monotonic_micros;

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// When a pool's circuit opens, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Failures within `window` that open the circuit.
    pub failures: u32,
    pub window: Duration,
    /// How long an open circuit refuses calls before a trial call may go;
    /// also how long a trial call may stay unanswered before another may go.
    pub cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: 10,
            window: Duration::from_secs(10),
            cooldown: Duration::from_secs(5),
        }
    }
}

/// The circuit's state for `SnakeBridge.stats/1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerStats {
    /// `closed`, `open`, `half_open`, or `disabled`.
    pub state: &'static str,
    /// Failures counted in the current window.
    pub failures: usize,
    /// Times the circuit has opened since the pool started.
    pub opened: u64,
    /// Milliseconds until a trial call may go: open, until the cool-down
    /// ends; half-open, until the trial call in flight is given up on (0
    /// when closed).
    pub retry_in_ms: u64,
}

struct Inner {
    /// When each failure of the current window happened, oldest first; at
    /// most `config.failures` of them.
    recent: VecDeque<u64>,
    /// Open: when a trial call may go. Half-open: when the trial call in
    /// flight is given up on and another may go.
    retry_at: u64,
    /// What opened the circuit, for the error message.
    why: String,
}

pub(crate) struct Breaker {
    pool: String,
    config: Option<BreakerConfig>,
    state: AtomicU8,
    opened: AtomicU64,
    inner: Mutex<Inner>,
    /// Where state changes are reported (the pool's log thread passes them
    /// to `Hooks::circuit`): they happen on whichever thread saw the cause.
    changes: Option<Sender<CircuitChange>>,
}

impl Breaker {
    /// A breaker for pool `pool`; with no config it never opens.
    pub fn new(pool: &str, config: Option<BreakerConfig>) -> Self {
        Breaker {
            pool: pool.to_owned(),
            config,
            state: AtomicU8::new(CLOSED),
            opened: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                recent: VecDeque::with_capacity(config.map_or(0, |c| c.failures as usize)),
                retry_at: 0,
                why: String::new(),
            }),
            changes: None,
        }
    }

    /// Reports state changes to `changes`.
    pub fn reporting_to(mut self, changes: Sender<CircuitChange>) -> Self {
        self.changes = Some(changes);
        self
    }

    fn report(&self, from: u8, to: u8, reason: Option<String>) {
        if let Some(changes) = &self.changes {
            let _ = changes.send(CircuitChange {
                from: state_name(from),
                to: state_name(to),
                reason,
            });
        }
    }

    /// Whether a call may go now. Past the cool-down the call that asks
    /// first is the trial call, and the circuit half-opens.
    pub fn admit(&self) -> Result<(), Failure> {
        // Closed: no clock read on the submit path.
        if self.state.load(Ordering::Acquire) == CLOSED {
            return Ok(());
        }
        self.admit_at(monotonic_micros())
    }

    fn admit_at(&self, now: u64) -> Result<(), Failure> {
        let Some(config) = self.config else {
            return Ok(());
        };
        let mut inner = self.inner.lock();
        let state = self.state.load(Ordering::Acquire);
        if state == CLOSED {
            return Ok(());
        }
        if now >= inner.retry_at {
            // A trial call that never answers (cancelled, stuck in a queue)
            // must not keep the circuit half-open for good: after another
            // cool-down the next call is a trial call too.
            inner.retry_at = now + micros(config.cooldown);
            self.state.store(HALF_OPEN, Ordering::Release);
            if state == OPEN {
                self.report(OPEN, HALF_OPEN, None);
            }
            return Ok(());
        }
        let retry_in = Duration::from_micros(inner.retry_at - now);
        let message = if state == OPEN {
            format!(
                "the circuit of pool {} is open after {}; calls fail at once until a trial call in {retry_in:.1?}",
                self.pool, inner.why
            )
        } else {
            format!(
                "the circuit of pool {} is half-open after {}: a trial call is running, other calls fail for up to {retry_in:.1?}",
                self.pool, inner.why
            )
        };
        Err(Failure::new(Reason::CircuitOpen, message))
    }

    /// Counts a failure: `what` says what failed, for the error message of
    /// calls refused while the circuit is open.
    pub fn failure(&self, what: impl FnOnce() -> String) {
        if self.config.is_some() {
            self.failure_at(monotonic_micros(), what);
        }
    }

    fn failure_at(&self, now: u64, what: impl FnOnce() -> String) {
        let Some(config) = self.config else {
            return;
        };
        let mut inner = self.inner.lock();
        match self.state.load(Ordering::Acquire) {
            // Failures of calls that were running when it opened say
            // nothing new; the trial call decides.
            OPEN => {}
            HALF_OPEN => self.open(&mut inner, now, config, format!("a failed trial call ({})", what())),
            _ => {
                while inner.recent.front().is_some_and(|&t| !in_window(t, now, config)) {
                    inner.recent.pop_front();
                }
                inner.recent.push_back(now);
                if inner.recent.len() >= config.failures as usize {
                    let why = format!(
                        "{} failures within {:?} (the last: {})",
                        inner.recent.len(),
                        config.window,
                        what()
                    );
                    self.open(&mut inner, now, config, why);
                }
            }
        }
    }

    /// A worker answered a call: a half-open circuit closes.
    pub fn success(&self) {
        if self.state.load(Ordering::Acquire) != HALF_OPEN {
            return;
        }
        let mut inner = self.inner.lock();
        if self.state.load(Ordering::Acquire) == HALF_OPEN {
            inner.recent.clear();
            self.state.store(CLOSED, Ordering::Release);
            self.report(HALF_OPEN, CLOSED, None);
        }
    }

    fn open(&self, inner: &mut Inner, now: u64, config: BreakerConfig, why: String) {
        inner.recent.clear();
        inner.retry_at = now + micros(config.cooldown);
        inner.why = why;
        self.opened.fetch_add(1, Ordering::Relaxed);
        let from = self.state.swap(OPEN, Ordering::AcqRel);
        self.report(from, OPEN, Some(inner.why.clone()));
    }

    pub fn stats(&self) -> BreakerStats {
        self.stats_at(monotonic_micros())
    }

    fn stats_at(&self, now: u64) -> BreakerStats {
        let Some(config) = self.config else {
            return BreakerStats {
                state: "disabled",
                failures: 0,
                opened: 0,
                retry_in_ms: 0,
            };
        };
        let inner = self.inner.lock();
        let state = self.state.load(Ordering::Acquire);
        BreakerStats {
            state: state_name(state),
            failures: inner.recent.iter().filter(|&&t| in_window(t, now, config)).count(),
            opened: self.opened.load(Ordering::Relaxed),
            retry_in_ms: if state == CLOSED { 0 } else { inner.retry_at.saturating_sub(now).div_ceil(1000) },
        }
    }
}

/// Whether a failure at `t` still counts at `now`.
fn state_name(state: u8) -> &'static str {
    match state {
        CLOSED => "closed",
        OPEN => "open",
        _ => "half_open",
    }
}

fn in_window(t: u64, now: u64, config: BreakerConfig) -> bool {
    now.saturating_sub(t) < micros(config.window)
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    fn breaker() -> Breaker {
        Breaker::new(
            ":p",
            Some(BreakerConfig {
                failures: 3,
                window: Duration::from_secs(10),
                cooldown: Duration::from_secs(5),
            }),
        )
    }

    fn fail(b: &Breaker, now: u64) {
        b.failure_at(now, || "worker 1 exited".to_owned());
    }

    #[test]
    fn opens_at_the_threshold_within_the_window_only() {
        let b = breaker();
        fail(&b, 0);
        fail(&b, 5 * S);
        assert!(b.admit_at(6 * S).is_ok());
        // The first failure has left the window.
        fail(&b, 11 * S);
        assert_eq!(b.stats_at(11 * S).state, "closed");
        assert_eq!(b.stats_at(11 * S).failures, 2);
        fail(&b, 12 * S);
        let stats = b.stats_at(12 * S);
        assert_eq!((stats.state, stats.opened, stats.retry_in_ms), ("open", 1, 5_000));
        let refused = b.admit_at(13 * S).unwrap_err();
        assert_eq!(refused.reason, Reason::CircuitOpen);
        assert!(refused.message.contains("3 failures within 10s"), "{}", refused.message);
        assert!(refused.message.contains("worker 1 exited"), "{}", refused.message);
        assert!(refused.message.contains("4.0s"), "{}", refused.message);
    }

    #[test]
    fn one_trial_call_after_the_cooldown_and_its_reply_closes() {
        let b = breaker();
        (0..3).for_each(|_| fail(&b, 0));
        assert!(b.admit_at(5 * S - 1).is_err());
        assert!(b.admit_at(5 * S).is_ok());
        assert_eq!(b.stats_at(5 * S).state, "half_open");
        let other = b.admit_at(5 * S + 1).unwrap_err();
        assert!(other.message.contains("half-open"), "{}", other.message);
        b.success();
        let stats = b.stats_at(5 * S + 2);
        assert_eq!((stats.state, stats.failures), ("closed", 0));
        assert!(b.admit_at(5 * S + 2).is_ok());
    }

    #[test]
    fn a_failed_trial_call_reopens_for_another_cooldown() {
        let b = breaker();
        (0..3).for_each(|_| fail(&b, 0));
        assert!(b.admit_at(5 * S).is_ok());
        fail(&b, 6 * S);
        let stats = b.stats_at(6 * S);
        assert_eq!((stats.state, stats.opened, stats.retry_in_ms), ("open", 2, 5_000));
        assert!(b.admit_at(10 * S).unwrap_err().message.contains("failed trial call"));
        assert!(b.admit_at(11 * S).is_ok());
    }

    #[test]
    fn an_unanswered_trial_call_does_not_wedge_it_half_open() {
        let b = breaker();
        (0..3).for_each(|_| fail(&b, 0));
        assert!(b.admit_at(5 * S).is_ok());
        assert!(b.admit_at(9 * S).is_err());
        assert_eq!(b.stats_at(9 * S).retry_in_ms, 1_000);
        assert!(b.admit_at(10 * S).is_ok());
        assert_eq!(b.stats_at(10 * S).state, "half_open");
    }

    #[test]
    fn failures_while_open_neither_count_nor_extend_the_cooldown() {
        let b = breaker();
        (0..3).for_each(|_| fail(&b, 0));
        (0..10).for_each(|i| fail(&b, S + i));
        assert_eq!(b.stats_at(2 * S).failures, 0);
        assert!(b.admit_at(5 * S).is_ok());
    }

    #[test]
    fn successes_while_open_do_not_close_it() {
        let b = breaker();
        (0..3).for_each(|_| fail(&b, 0));
        b.success();
        assert_eq!(b.stats_at(S).state, "open");
    }

    #[test]
    fn without_a_config_it_never_opens() {
        let b = Breaker::new(":p", None);
        (0..100).for_each(|i| fail(&b, i));
        assert!(b.admit_at(100).is_ok());
        assert_eq!(b.stats_at(100).state, "disabled");
    }
}
