//! The loop's input queue and cancellation: state shared between the worker
//! loop and SIGUSR1's Python handler, [`cancel_signal`].
//!
//! Everything runs on the main thread. The loop reads the socket itself (GIL
//! released while blocked) into [`Inbox::pending`]; each read's complete
//! frames are scanned for Cancel frames at once, so a cancel anywhere in the
//! bytes read so far is known before any call among them starts.
//!
//! The host writes a Cancel frame, then sends SIGUSR1 to the worker. Python's
//! C-level handler only notes the signal (and makes a blocking system call
//! of the main thread fail with EINTR); the Python-level handler runs later
//! on the main thread, between bytecodes or when that system call returns:
//! - in the user's call: it reads, without blocking, whatever the host has
//!   sent (the Cancel frame is there, being written before the signal), into
//!   the same queue, records the cancels, and raises `CallCancelled` iff the
//!   call running now is cancelled;
//! - while the loop is idle (its `read` got EINTR, it runs `check_signals`):
//!   the same, and nothing runs, so nothing is raised.
//! Frames read by the handler stay queued, in order, for the loop.
//!
//! While the asyncio event loop runs (tasks or async streams pending, the
//! loop otherwise idle), it waits in `select` with the socket registered as
//! a reader. The signal interrupts that `select`, which runs the handler
//! before retrying: the handler empties the socket into the queue, so the
//! reader would never fire and the Cancel frame would wait unseen. So the
//! handler calls the waker the runner registered ([`set_waker`]), which
//! wakes and stops the event loop, and the loop handles the queue. The
//! handler stays the same (rather than asyncio's `add_signal_handler`)
//! because a sync call or stream step may run at any time between event
//! loop runs and must still be interrupted at once.
//!
//! Borrowing: [`INBOX`] is a `RefCell`. The loop borrows it only in Rust code
//! that runs no Python (a few lines each time, plus its blocking read, with
//! the GIL released), and Python's signal handlers run only inside Python
//! code on this thread, so the handler never finds it borrowed. (If it ever
//! did, it would do nothing rather than panic.) Frames the loop handles are
//! moved out of the cell first ([`Inbox::take`]), so decoding them into
//! Python objects (which may run finalizers, hence the handler) holds no
//! borrow.
//!
//! `CallCancelled` derives from `BaseException`, so user code's
//! `except Exception` does not swallow it; like `KeyboardInterrupt`, it can
//! still be caught on purpose, and C code that neither returns nor checks
//! for signals is interrupted only when it comes back to Python (the host
//! kills the worker after a grace period). The worker owns SIGUSR1.

use std::cell::RefCell;
use std::collections::HashSet;
use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{SigEvent, SigevNotify, Signal};
use nix::sys::time::TimeSpec;
use nix::sys::timer::{Expiration, Timer, TimerSetTimeFlags};
use nix::time::{clock_gettime, ClockId};
use pyo3::prelude::*;
use snakebridge_protocol::{DecodeError, Header, Kind, HEADER_LEN, MAX_FRAME_LEN};

use crate::fd::{read_appending, recv_nonblocking};
use crate::CallCancelled;

/// Room for at least this much is made before each read, so small frames
/// arrive in batches.
const MIN_READ: usize = 16 * 1024;
/// The least and the most time the loop polls for input before it blocks
/// in read(2); see [`Inbox::read`].
const MIN_SPIN_MICROS: u64 = 50;
const MAX_SPIN_MICROS: u64 = 1000;
/// The most it polls after a call flagged `CALL_BURST`: a cluster's relay
/// sends such bursts a distribution round trip apart, and polling across
/// that gap took more CPU from the BEAM than the wake-up it saved (64
/// remote callers: about 5 µs of worker CPU per call against 1, and a
/// quarter fewer calls per second).
const BURST_MAX_SPIN_MICROS: u64 = 100;
/// A queue buffer bigger than this is freed rather than reused.
const KEEP_CAPACITY: usize = 1 << 20;

thread_local! {
    /// The loop's state while `serve` runs (on the main thread), else `None`.
    static INBOX: RefCell<Option<Inbox>> = const { RefCell::new(None) };
    /// Called by the handler when it read something: wakes the event loop.
    static WAKER: RefCell<Option<Py<PyAny>>> = const { RefCell::new(None) };
}

/// Sets (or clears) what the handler calls after reading frames, so an
/// event loop waiting for the socket to become readable wakes up anyway.
pub(crate) fn set_waker(waker: Option<Py<PyAny>>) {
    let old = WAKER.replace(waker);
    drop(old);
}

pub(crate) struct Inbox {
    fd: RawFd,
    /// Bytes read and not yet taken by the loop; starts at a frame boundary.
    pending: Vec<u8>,
    /// `pending[..scanned]` are whole frames, already scanned for cancels.
    scanned: usize,
    /// A frame length over the limit at `scanned`: nothing after it is
    /// scanned; the loop reports it after the frames before it.
    bad: Option<DecodeError>,
    /// Ids of cancelled calls not yet started (or running now).
    cancelled: HashSet<u64>,
    /// Id of the call running now (from just before its function is looked
    /// up until it returns); the only call the handler may interrupt.
    running: Option<u64>,
    recheck: Recheck,
    /// How long the next read polls before it blocks.
    spin_micros: u64,
    /// Whether a call flagged `CALL_BURST` ran since the last read.
    burst: bool,
}

/// Makes the loop's state reachable by the handler while `serve` runs;
/// dropping this (however `serve` ends) makes the handler a no-op again.
pub(crate) struct Installed(());

pub(crate) fn install(fd: RawFd) -> Installed {
    INBOX.with_borrow_mut(|inbox| {
        *inbox = Some(Inbox {
            fd,
            pending: Vec::with_capacity(64 * 1024),
            scanned: 0,
            bad: None,
            cancelled: HashSet::new(),
            running: None,
            recheck: Recheck::new(),
            spin_micros: MIN_SPIN_MICROS,
            burst: false,
        })
    });
    Installed(())
}

impl Drop for Installed {
    fn drop(&mut self) {
        INBOX.with_borrow_mut(|inbox| *inbox = None);
        set_waker(None);
    }
}

/// Runs `f` on the loop's state. Never call Python from `f`.
pub(crate) fn with<T>(f: impl FnOnce(&mut Inbox) -> T) -> T {
    INBOX.with_borrow_mut(|inbox| f(inbox.as_mut().expect("serve() is running")))
}

/// How long to poll next time, after input took `waited` µs to come and
/// the poll missed it. Many callers at once keep a worker busy in bursts:
/// the host routes a batch of replies, its callers send their next calls,
/// and the next batch comes a few hundred microseconds later. Polling
/// across that gap saves a wake-up per batch, which raised calls/s with 64
/// callers by about 8%. A gap longer than the most it polls means the
/// worker is idle between calls, and polling longer would only burn CPU.
fn next_spin(waited: u64) -> u64 {
    if waited < MAX_SPIN_MICROS {
        (waited * 2).clamp(MIN_SPIN_MICROS, MAX_SPIN_MICROS)
    } else {
        MIN_SPIN_MICROS
    }
}

/// How long a read polls: `spin` (from [`next_spin`]), cut short after
/// a burst.
fn spin_for(spin: u64, burst: bool) -> u64 {
    if burst {
        spin.min(BURST_MAX_SPIN_MICROS)
    } else {
        spin
    }
}

/// What [`Inbox::poll`] found.
pub(crate) enum Polled {
    Read,
    Nothing,
    Eof,
}

/// What [`Inbox::take`] found.
pub(crate) enum Took {
    /// Whole frames were moved into the caller's batch.
    Frames,
    /// No whole frame is queued.
    Nothing,
}

impl Inbox {
    /// Reads once, blocking, and scans what arrived. Call with the GIL
    /// released. 0 means end of stream; EINTR is reported (the loop runs
    /// Python's signal handlers, then comes back).
    pub(crate) fn read(&mut self) -> io::Result<usize> {
        self.pending.reserve(room_needed(&self.pending[self.scanned..]));
        // A caller that waits for each reply sends its next call within
        // microseconds: catching it awake saves a wake-up, which costs tens
        // of microseconds when the host runs on another CPU. Each poll
        // yields the CPU: on a busy machine the host's scheduler threads
        // (or anything else) run meanwhile instead of waiting for this
        // process's time slice to end; on an idle one it returns at once.
        let started = monotonic_micros();
        let spin_until = started + spin_for(self.spin_micros, std::mem::take(&mut self.burst));
        loop {
            match recv_nonblocking(self.fd, &mut self.pending) {
                Ok(n) => {
                    self.scan();
                    return Ok(n);
                }
                Err(e) if e.raw_os_error() == Some(Errno::EAGAIN as i32) && monotonic_micros() < spin_until => {
                    std::thread::yield_now();
                }
                Err(e) if e.raw_os_error() == Some(Errno::EAGAIN as i32) => break,
                Err(e) => return Err(e),
            }
        }
        let n = read_appending(self.fd, &mut self.pending)?;
        self.spin_micros = next_spin(monotonic_micros() - started);
        self.scan();
        Ok(n)
    }

    /// Notes that a call flagged `CALL_BURST` ran: the next read polls only
    /// briefly (see [`spin_for`]).
    pub(crate) fn burst(&mut self) {
        self.burst = true;
    }

    /// Reads what is available without blocking (the loop checks for input
    /// between stream batches and event loop runs), and scans it.
    pub(crate) fn poll(&mut self) -> io::Result<Polled> {
        self.pending.reserve(room_needed(&self.pending[self.scanned..]));
        match recv_nonblocking(self.fd, &mut self.pending) {
            Ok(0) => Ok(Polled::Eof),
            Ok(_) => {
                self.scan();
                Ok(Polled::Read)
            }
            Err(e) if e.raw_os_error() == Some(Errno::EAGAIN as i32) => Ok(Polled::Nothing),
            Err(e) => Err(e),
        }
    }

    /// Records the cancels among the frames completed since the last scan.
    fn scan(&mut self) {
        while self.bad.is_none() {
            match whole_frame(&self.pending[self.scanned..]) {
                None => return,
                Some(Err(e)) => self.bad = Some(e),
                Some(Ok(len)) => {
                    let start = self.scanned + HEADER_LEN;
                    let mut body = &self.pending[start..start + len];
                    // A malformed header is left for the loop to report, in order.
                    if let Ok(Header { kind: Kind::Cancel, id }) = Header::read(&mut body) {
                        self.cancelled.insert(id);
                    }
                    self.scanned = start + len;
                }
            }
        }
    }

    /// Moves the whole frames queued into `batch` (cleared first; its buffer
    /// is reused for the next queue), keeping the partial frame after them.
    pub(crate) fn take(&mut self, batch: &mut Vec<u8>) -> Took {
        batch.clear();
        if self.scanned == 0 {
            return Took::Nothing;
        }
        if batch.capacity() > KEEP_CAPACITY {
            *batch = Vec::new();
        }
        batch.extend_from_slice(&self.pending[self.scanned..]);
        std::mem::swap(batch, &mut self.pending);
        batch.truncate(self.scanned);
        self.scanned = 0;
        Took::Frames
    }

    /// A frame length over the limit follows the frames taken.
    pub(crate) fn bad(&mut self) -> Option<DecodeError> {
        if self.scanned == 0 {
            self.bad.take()
        } else {
            None
        }
    }

    /// Every frame read so far has been handled: the cancels recorded are
    /// for calls already answered (a cancel follows its call on the socket),
    /// so they are forgotten, which bounds the set.
    pub(crate) fn all_handled(&mut self) {
        debug_assert_eq!(self.scanned, 0);
        if !self.cancelled.is_empty() {
            self.cancelled.clear();
        }
    }

    /// Call `id` is about to start: marks it running and returns `true` if
    /// the host cancelled it, then the caller replies `cancelled` instead
    /// (and the id is forgotten). Marking and checking happen together, in
    /// Rust: a cancel recorded before is seen here, one recorded after makes
    /// the handler raise in the call.
    pub(crate) fn begin(&mut self, id: u64) -> bool {
        // Empty nearly always: no hashing then.
        if !self.cancelled.is_empty() && self.cancelled.remove(&id) {
            return true;
        }
        self.running = Some(id);
        false
    }

    /// The running call returned (or never started).
    pub(crate) fn end(&mut self) {
        self.running = None;
    }

    /// The handler's part: reads what is available without blocking, records
    /// its cancels, and says whether the running call is cancelled (then
    /// forgets it, so a repeated signal does not raise again), and whether
    /// anything was read. EOF and read errors are left for the loop's own
    /// read to see.
    fn on_signal(&mut self) -> (bool, bool) {
        let mut read = 0;
        loop {
            self.pending.reserve(room_needed(&self.pending[self.scanned..]));
            let room = self.pending.capacity() - self.pending.len();
            match recv_nonblocking(self.fd, &mut self.pending) {
                // A short read emptied the socket: the Cancel frame written
                // before the signal is in. A full one may leave more.
                Ok(n) if n == room => read += n,
                Ok(n) => {
                    read += n;
                    break;
                }
                // EAGAIN, or an error the loop's own read will see again.
                Err(_) => break,
            }
        }
        self.scan();
        let cancelled = match self.running {
            Some(id) => self.cancelled.remove(&id),
            None => false,
        };
        // A signal that lands between the end of a handler and the moment
        // the interrupted system call (time.sleep...) is restarted waits for
        // that call to end. That timing is likely when this read made room
        // in a full socket: the host's Cancel frame, then its signal, may
        // follow at once. So a read that got something while a call runs is
        // checked again shortly after, by a signal of our own.
        if !cancelled && read > 0 && self.running.is_some() {
            self.recheck.arm();
        }
        (cancelled, read > 0)
    }
}

/// A one-shot timer that sends SIGUSR1 to this process: the recheck above.
/// `None` if the timer could not be created: cancels are then seen at the
/// next signal or read, as without the recheck. Dropping it deletes the
/// timer; a pending expiry is discarded.
struct Recheck(Option<Timer>);

/// Delay of the recheck: long enough for the host to write its cancel and
/// signal once its write is unblocked, short next to a cancel's grace.
const RECHECK_AFTER: Duration = Duration::from_millis(2);

impl Recheck {
    fn new() -> Recheck {
        let event = SigEvent::new(SigevNotify::SigevSignal {
            signal: Signal::SIGUSR1,
            si_value: 0,
        });
        Recheck(Timer::new(ClockId::CLOCK_MONOTONIC, event).ok())
    }

    fn arm(&mut self) {
        if let Some(timer) = &mut self.0 {
            let _ = timer.set(Expiration::OneShot(TimeSpec::from_duration(RECHECK_AFTER)), TimerSetTimeFlags::empty());
        }
    }
}

/// SIGUSR1's Python handler, installed by `__main__`: see the module docs.
/// Does nothing outside `serve`.
#[pyfunction]
#[pyo3(signature = (signum, frame))]
pub(crate) fn cancel_signal(signum: i32, frame: &Bound<'_, PyAny>) -> PyResult<()> {
    let _ = signum;
    let (cancelled, read) = INBOX.with(|cell| match cell.try_borrow_mut() {
        Ok(mut inbox) => inbox.as_mut().map_or((false, false), Inbox::on_signal),
        // The loop is in Rust code (see the module docs): cannot happen.
        Err(_) => (false, false),
    });
    if cancelled {
        return Err(CallCancelled::new_err("the caller cancelled the call"));
    }
    if read {
        // The event loop may be waiting for the socket this just emptied:
        // see the module docs.
        let waker = WAKER.with_borrow(|waker| waker.as_ref().map(|w| w.clone_ref(frame.py())));
        if let Some(waker) = waker {
            waker.call0(frame.py())?;
        }
    }
    // Python clears a signal's flag before running its handler, and a
    // blocking call such as time.sleep goes straight back to sleep after the
    // handlers ran: a SIGUSR1 that arrived while this one ran (the host
    // cancelling the running call right after another cancel) would wait
    // for the sleep to end. Running the handlers of signals that came
    // meanwhile now (this one again, with nothing borrowed) leaves only the
    // few instructions before the system call is restarted, as for any
    // Python signal.
    frame.py().check_signals()
}

/// Clears the running call when dropped: from just before a call's function
/// is looked up until it returns, however the loop leaves that span.
pub(crate) struct Running(());

impl Running {
    /// See [`Inbox::begin`]; `None` when the call is cancelled.
    pub(crate) fn begin(id: u64) -> Option<Running> {
        if with(|inbox| inbox.begin(id)) {
            None
        } else {
            Some(Running(()))
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        with(Inbox::end);
    }
}

/// Iterates over the frame bodies of a batch of whole frames.
pub(crate) fn frames(batch: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = batch;
    std::iter::from_fn(move || {
        let header: [u8; HEADER_LEN] = rest.get(..HEADER_LEN)?.try_into().ok()?;
        let len = u32::from_be_bytes(header) as usize;
        let body = rest.get(HEADER_LEN..HEADER_LEN + len)?;
        rest = &rest[HEADER_LEN + len..];
        Some(body)
    })
}

/// The body length of the frame at the front of `buf` if all of it is
/// there; an error for a length over the limit.
fn whole_frame(buf: &[u8]) -> Option<Result<usize, DecodeError>> {
    let header: [u8; HEADER_LEN] = buf.get(..HEADER_LEN)?.try_into().ok()?;
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME_LEN {
        return Some(Err(DecodeError::FrameTooLarge(len)));
    }
    (buf.len() >= HEADER_LEN + len).then_some(Ok(len))
}

/// Spare room to make before reading after `unscanned` (the bytes past the
/// whole frames): the rest of the frame they start (once its length is
/// known), and at least [`MIN_READ`].
fn room_needed(unscanned: &[u8]) -> usize {
    let rest_of_frame = match unscanned.get(..HEADER_LEN) {
        Some(header) => {
            let len = u32::from_be_bytes(header.try_into().expect("HEADER_LEN bytes")) as usize;
            (HEADER_LEN + len.min(MAX_FRAME_LEN)).saturating_sub(unscanned.len())
        }
        None => 0,
    };
    rest_of_frame.max(MIN_READ)
}

/// `CLOCK_MONOTONIC` in microseconds: the clock of call deadlines.
pub(crate) fn monotonic_micros() -> u64 {
    // Cannot fail for CLOCK_MONOTONIC on Linux; were it to, 0 as before.
    let ts = clock_gettime(ClockId::CLOCK_MONOTONIC).unwrap_or_else(|_| TimeSpec::new(0, 0));
    ts.tv_sec() as u64 * 1_000_000 + ts.tv_nsec() as u64 / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_the_poll_missed_is_polled_across_next_time() {
        assert_eq!(next_spin(120), 240);
        assert_eq!(next_spin(10), MIN_SPIN_MICROS);
        assert_eq!(next_spin(MAX_SPIN_MICROS - 1), MAX_SPIN_MICROS);
    }

    #[test]
    fn an_idle_worker_goes_back_to_the_shortest_poll() {
        assert_eq!(next_spin(MAX_SPIN_MICROS), MIN_SPIN_MICROS);
        assert_eq!(next_spin(5_000_000), MIN_SPIN_MICROS);
    }

    #[test]
    fn after_a_burst_the_poll_is_cut_short() {
        assert_eq!(spin_for(next_spin(400), true), BURST_MAX_SPIN_MICROS);
        assert_eq!(spin_for(MIN_SPIN_MICROS, true), MIN_SPIN_MICROS);
        assert_eq!(spin_for(next_spin(400), false), 800);
    }
}
