//! Worker output on its way to the embedder's logger, bounded.
//!
//! Every line of a pool's workers (from their stdout/stderr pipes and from
//! the `output` messages on their sockets) goes through one bounded queue,
//! drained by one thread that hands lines to [`Hooks::log`] at most at the
//! pool's `log_rate`. A full queue or an exceeded rate drops the line and
//! counts it; the count is reported through [`Hooks::log_dropped`] a second
//! after the first drop, so a flood gets one report per second it lasts. The
//! threads that read workers only ever `try_send`, so a flood of output
//! never holds up replies, and the embedder sees at most `log_rate` lines a
//! second however much Python prints.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};

use crate::call::Call;
use crate::events::{CircuitChange, Level, LogLine, Stream};
use crate::hooks::Hooks;

/// How often drops are reported while lines keep coming.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// A line waiting in the queue.
pub(crate) struct Entry<C> {
    pub os_pid: u32,
    pub stream: Stream,
    pub level: Level,
    pub text: Vec<u8>,
    pub call: Option<Arc<Call<C>>>,
    pub module: Option<String>,
    pub function: Option<String>,
}

impl<C> Entry<C> {
    /// A line from a worker's stdout or stderr pipe, which no call owns.
    pub fn piped(os_pid: u32, stream: Stream, text: &[u8]) -> Self {
        Entry {
            os_pid,
            stream,
            level: Level::of_stream(stream),
            text: text.to_vec(),
            call: None,
            module: None,
            function: None,
        }
    }
}

/// The sending side, shared by the threads that read workers.
pub(crate) struct LogQueue<C> {
    tx: Sender<Entry<C>>,
    /// Lines dropped and not yet reported.
    dropped: Arc<AtomicU64>,
}

impl<C> LogQueue<C> {
    /// Queues a line, or drops and counts it when the queue is full. Never blocks.
    pub fn push(&self, entry: Entry<C>) {
        if self.tx.try_send(entry).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The receiving side, for [`drain`].
pub(crate) struct LogDrain<C> {
    rx: Receiver<Entry<C>>,
    dropped: Arc<AtomicU64>,
    bucket: TokenBucket,
}

pub(crate) fn log_queue<C>(capacity: usize, rate: u32) -> (LogQueue<C>, LogDrain<C>) {
    let capacity = capacity.max(1);
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    let dropped = Arc::new(AtomicU64::new(0));
    let queue = LogQueue {
        tx,
        dropped: dropped.clone(),
    };
    let bucket = TokenBucket::new(capacity as f64, rate.max(1) as f64, Instant::now());
    (queue, LogDrain { rx, dropped, bucket })
}

/// Hands queued lines, and the circuit breaker's changes of state, to
/// `hooks` until `stop` is disconnected.
pub(crate) fn drain<H: Hooks>(
    hooks: &H,
    mut drain: LogDrain<H::Caller>,
    mut circuit: Receiver<CircuitChange>,
    stop: &Receiver<()>,
) {
    let mut courier = hooks.courier();
    // When drops were first seen since the last report: they are reported
    // a second later, so a flood gets one warning per second it lasts.
    let mut dropping_since: Option<Instant> = None;
    loop {
        let report_at = dropping_since.map(|since| since + REPORT_EVERY);
        let wait = report_at.map_or(Duration::MAX, |at| at.saturating_duration_since(Instant::now()));
        let entry = select! {
            recv(drain.rx) -> entry => match entry {
                Ok(entry) => Some(entry),
                Err(_) => break,
            },
            recv(circuit) -> change => {
                match change {
                    Ok(change) => hooks.circuit(&mut courier, change),
                    // The breaker is gone: nothing more will come.
                    Err(_) => circuit = crossbeam_channel::never(),
                }
                None
            }
            recv(stop) -> _ => break,
            default(wait) => None,
        };
        if let Some(entry) = entry {
            if drain.bucket.take(Instant::now()) {
                hooks.log(
                    &mut courier,
                    LogLine {
                        os_pid: entry.os_pid,
                        stream: entry.stream,
                        level: entry.level,
                        text: &entry.text,
                        caller: entry.call.as_ref().map(|call| &call.caller),
                        module: entry.module.as_deref(),
                        function: entry.function.as_deref(),
                    },
                );
            } else {
                drain.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        let now = Instant::now();
        match dropping_since {
            Some(since) if now >= since + REPORT_EVERY => {
                report(hooks, &mut courier, &drain.dropped);
                dropping_since = None;
            }
            Some(_) => {}
            // Pushers drop only when the queue is full, so this thread has
            // lines to take and gets here to notice.
            None if drain.dropped.load(Ordering::Relaxed) > 0 => dropping_since = Some(now),
            None => {}
        }
    }
    report(hooks, &mut courier, &drain.dropped);
}

fn report<H: Hooks>(hooks: &H, courier: &mut H::Courier, dropped: &AtomicU64) {
    let count = dropped.swap(0, Ordering::Relaxed);
    if count > 0 {
        hooks.log_dropped(courier, count);
    }
}

/// Allows `rate` lines a second on average, and bursts of up to `burst`.
struct TokenBucket {
    tokens: f64,
    burst: f64,
    rate: f64,
    refilled: Instant,
}

impl TokenBucket {
    fn new(burst: f64, rate: f64, now: Instant) -> Self {
        TokenBucket {
            tokens: burst,
            burst,
            rate,
            refilled: now,
        }
    }

    /// Whether a line may go now (and takes its token).
    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(3.0, 10.0, start);
        assert_eq!((0..5).filter(|_| bucket.take(start)).count(), 3);
        // 10 per second: one more after 100 ms, and no more than the burst
        // however long it rested.
        assert!(bucket.take(start + Duration::from_millis(100)));
        assert!(!bucket.take(start + Duration::from_millis(101)));
        let later = start + Duration::from_secs(60);
        assert_eq!((0..5).filter(|_| bucket.take(later)).count(), 3);
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (queue, drain) = log_queue::<()>(2, 1_000);
        for _ in 0..5 {
            queue.push(Entry::piped(1, Stream::Stdout, b"line"));
        }
        assert_eq!(drain.rx.len(), 2);
        assert_eq!(drain.dropped.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn levels_of_python_numbers_round_down() {
        assert_eq!(Level::from_python(0), Level::Debug);
        assert_eq!(Level::from_python(10), Level::Debug);
        assert_eq!(Level::from_python(15), Level::Debug);
        assert_eq!(Level::from_python(20), Level::Info);
        assert_eq!(Level::from_python(25), Level::Notice);
        assert_eq!(Level::from_python(30), Level::Warning);
        assert_eq!(Level::from_python(40), Level::Error);
        assert_eq!(Level::from_python(50), Level::Critical);
        assert_eq!(Level::from_python(90), Level::Critical);
    }
}
