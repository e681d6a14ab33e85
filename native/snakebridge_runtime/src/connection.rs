//! The host's view of one running worker process, and the registry that finds
//! it from a call's worker incarnation (for cancellation).

use std::collections::{HashMap, HashSet};
use std::io::IoSlice;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use parking_lot::{Mutex, MutexGuard, RwLock};
use snakebridge_protocol::Message;

use crate::breaker::Breaker;
use crate::events::Timing;
use crate::monotonic_micros;
use crate::socket;
use crate::transport::Arenas;

/// Process-wide counter so a call can name the exact worker process it was
/// written to, across slots, pools and restarts.
static INCARNATIONS: AtomicU64 = AtomicU64::new(1);

/// Work for the writer thread of a slot, addressed to one incarnation
/// (dropped if that worker is gone by then). The writer thread owns the
/// socket's write side, so it is the one to change it.
pub(crate) struct Control {
    pub incarnation: u64,
    pub action: Action,
}

pub(crate) enum Action {
    Send(Vec<u8>),
    /// Send a cancel frame, then SIGUSR1: the worker's handler reads the
    /// frame and interrupts the call if it is the one running.
    Interrupt(Vec<u8>),
    /// Half-close the socket: the worker answers what it has read, sees EOF
    /// and exits.
    Shutdown,
    /// Send the outbox (see `Connection::try_write`).
    Flush,
}

/// Frames up to this size wait in a busy worker's outbox (see
/// [`Connection::try_write`]); larger ones are written at once.
const OUTBOX_FRAME_MAX: usize = 8 * 1024;

/// One side of a cancel of a sent call, waiting for the other. A cancel and
/// the call's reply race: the reader may read the reply before or after the
/// canceller claims the call, and either may reach the connection first.
/// Whichever comes second finds the other's mark and removes it, so every
/// cancel leaves nothing behind.
enum CancelMark {
    /// The worker was asked to interrupt the call, which must stop (reply)
    /// by then.
    Interrupting(Instant),
    /// The reply came in before the canceller asked for an interrupt: none
    /// is needed.
    Answered,
}

pub(crate) struct Connection {
    pub incarnation: u64,
    pub os_pid: u32,
    socket: UnixStream,
    /// Serialises writes to the socket so frames never interleave, and
    /// holds the outbox: bytes callers queued to go out before anything
    /// else (see [`Connection::try_write`]). Held by the writer thread while
    /// it writes, and by callers and the reader only through `try_lock`.
    write_lock: Mutex<Vec<u8>>,
    /// The outbox's length, read without the lock.
    outbox_len: AtomicUsize,
    /// Times the reader has looked at the outbox (see [`Connection::flush`]).
    flush_checks: AtomicU64,
    pub in_flight: AtomicUsize,
    /// Replies received from this process, for `max_calls`.
    pub replies: AtomicU64,
    /// When the worker last answered anything (monotonic µs).
    pub last_heard: AtomicU64,
    dead: AtomicBool,
    /// No new calls: the worker finishes what it has, then exits.
    draining: AtomicBool,
    /// Cancels of calls sent to this worker whose reply has not been paired
    /// with them yet (see [`CancelMark`]).
    cancelling: Mutex<HashMap<u64, CancelMark>>,
    /// `Interrupting` entries in `cancelling`.
    cancelling_count: AtomicUsize,
    /// When an unanswered ping was sent.
    ping_sent: Mutex<Option<Instant>>,
    /// Why the host killed the worker, if it did.
    pub kill_reason: Mutex<Option<String>>,
    /// Calls that went on in the background (tasks, streams; see the
    /// protocol's `started`): answered later, but out of the window.
    detached: Mutex<HashSet<u64>>,
    detached_count: AtomicUsize,
    /// Handles the host holds on objects in this worker.
    pub objects: AtomicUsize,
    /// Ids of objects the host no longer refers to, for the writer to send.
    pub releases: Mutex<Vec<u64>>,
    control: Sender<Control>,
    cancel_grace: Duration,
    /// The pool's, so a timed-out call found by incarnation is counted there.
    pub breaker: Arc<Breaker>,
    /// The `timing` message just read, for the reply that follows it; the
    /// flag spares untimed replies the lock.
    timing: Mutex<Option<(u64, Timing)>>,
    has_timing: AtomicBool,
    /// The worker's shared memory, if it has any: set once, at its start.
    arenas: OnceLock<Arenas>,
}

impl Connection {
    pub fn new(
        os_pid: u32,
        socket: UnixStream,
        control: Sender<Control>,
        cancel_grace: Duration,
        breaker: Arc<Breaker>,
    ) -> Arc<Connection> {
        let conn = Arc::new(Connection {
            incarnation: INCARNATIONS.fetch_add(1, Ordering::Relaxed),
            os_pid,
            socket,
            write_lock: Mutex::new(Vec::new()),
            outbox_len: AtomicUsize::new(0),
            flush_checks: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            replies: AtomicU64::new(0),
            last_heard: AtomicU64::new(monotonic_micros()),
            dead: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            cancelling: Mutex::new(HashMap::new()),
            cancelling_count: AtomicUsize::new(0),
            ping_sent: Mutex::new(None),
            kill_reason: Mutex::new(None),
            detached: Mutex::new(HashSet::new()),
            detached_count: AtomicUsize::new(0),
            objects: AtomicUsize::new(0),
            releases: Mutex::new(Vec::new()),
            control,
            cancel_grace,
            breaker,
            timing: Mutex::new(None),
            has_timing: AtomicBool::new(false),
            arenas: OnceLock::new(),
        });
        registry().write().insert(conn.incarnation, Arc::downgrade(&conn));
        conn
    }

    /// Gives the worker's shared memory to this connection, before its
    /// first call.
    pub fn share(&self, arenas: Arenas) {
        let _ = self.arenas.set(arenas);
    }

    pub fn arenas(&self) -> Option<&Arenas> {
        self.arenas.get()
    }

    /// The bytes that carry `frame`: a shared-memory descriptor for a large
    /// one, when the worker has an arena with room.
    pub fn wire<'a>(&self, frame: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        match self.arenas.get() {
            Some(arenas) => arenas.wire(frame),
            None => std::borrow::Cow::Borrowed(frame),
        }
    }

    /// [`Connection::wire`] for the writer thread: a frame over the
    /// socket's limit waits for room in shared memory (calls ahead of it in
    /// the worker free theirs as they start), unless the worker is gone.
    pub fn wire_waiting<'a>(&self, frame: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        loop {
            let wire = self.wire(frame);
            let too_large = wire.len() > snakebridge_protocol::HEADER_LEN + snakebridge_protocol::MAX_FRAME_LEN;
            if !too_large || self.arenas.get().is_none() || self.is_dead() {
                return wire;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Sends `frame` without waiting: true when it is the socket's (written,
    /// or queued in the outbox behind what is), false when the lock is taken
    /// or `begin` refused (it runs under the lock, just before, and decides
    /// whether the frame goes at all). Err when the socket took none of it.
    ///
    /// A caller on a BEAM scheduler must never wait for the socket: the
    /// worker may be waiting for its replies to be read, which takes a
    /// scheduler. So a worker that is busy gets the frame in its outbox,
    /// which the reader sends with its next batch of replies routed (one
    /// write and one wake-up for many calls), and what an idle worker's
    /// socket does not take at once is left there for the writer thread.
    pub fn try_write(&self, frame: &[u8], begin: impl FnOnce() -> bool) -> Result<bool, ()> {
        let Some(mut outbox) = self.write_lock.try_lock() else {
            return Ok(false);
        };
        // Read before the window: a look of the reader's that this misses
        // came after the replies it counted out of the window.
        let checks = self.flush_checks.load(Ordering::SeqCst);
        let idle = self.in_flight.load(Ordering::Acquire) == 0;
        if !begin() {
            return Ok(false);
        }
        let wire = self.wire(frame);
        let frame = &*wire;
        // A large frame is written at once all the same: batching saves
        // little on it, and the copy into the outbox would cost more.
        if !outbox.is_empty() || (!idle && frame.len() < OUTBOX_FRAME_MAX) {
            outbox.extend_from_slice(frame);
            self.outbox_len.store(outbox.len(), Ordering::SeqCst);
            // The reader may have looked at the outbox since the worker was
            // seen busy, before this frame was in it, and have no reply left
            // to look again after: then this caller sends the outbox, as
            // that look would have. (Otherwise the reader's next look, after
            // the reply it still has coming, sees the frame: both sides'
            // orders are sequentially consistent.) Sending here rather than
            // waking the writer thread keeps a busy pool's calls from
            // costing a thread wake-up each time the reader looked.
            if self.flush_checks.load(Ordering::SeqCst) != checks {
                self.send_outbox(&mut outbox);
            }
            return Ok(true);
        }
        match socket::try_send(self.fd(), frame) {
            Ok(n) if n == frame.len() => Ok(true),
            Ok(0) => {
                self.unsent(&wire);
                Err(())
            }
            Ok(n) => {
                outbox.extend_from_slice(&frame[n..]);
                self.outbox_len.store(outbox.len(), Ordering::Release);
                self.flush_later();
                Ok(true)
            }
            Err(_) => {
                self.unsent(&wire);
                Err(())
            }
        }
    }

    /// Frees the shared memory of a frame from [`Connection::wire`] that
    /// did not go out.
    pub fn unsent(&self, wire: &[u8]) {
        if let Some(arenas) = self.arenas.get() {
            arenas.unsent(wire);
        }
    }

    /// Sends what the outbox holds, as far as the socket takes it without
    /// waiting; the writer thread sends the rest. For the reader, after a
    /// batch of replies.
    pub fn flush(&self) {
        self.flush_checks.fetch_add(1, Ordering::SeqCst);
        if self.outbox_len.load(Ordering::SeqCst) == 0 {
            return;
        }
        let Some(mut outbox) = self.write_lock.try_lock() else {
            // Whoever holds it may be done with the outbox already.
            self.flush_later();
            return;
        };
        self.send_outbox(&mut outbox);
    }

    /// Sends the outbox (its lock held) as far as the socket takes it
    /// without waiting; the writer thread sends the rest.
    fn send_outbox(&self, outbox: &mut Vec<u8>) {
        match socket::try_send(self.fd(), outbox) {
            Ok(n) if n == outbox.len() => outbox.clear(),
            Ok(n) => {
                outbox.drain(..n);
                self.flush_later();
            }
            Err(_) => self.flush_later(),
        }
        self.outbox_len.store(outbox.len(), Ordering::Release);
    }

    fn flush_later(&self) {
        let _ = self.control.send(Control {
            incarnation: self.incarnation,
            action: Action::Flush,
        });
    }

    /// Locks the socket for the writer thread, once the outbox is sent
    /// (blocking).
    pub fn lock_for_writer(&self) -> MutexGuard<'_, Vec<u8>> {
        let mut outbox = self.write_lock.lock();
        if !outbox.is_empty() {
            let mut slices = [IoSlice::new(&outbox)];
            let _ = socket::send_all(self.fd(), &mut slices);
            outbox.clear();
            self.outbox_len.store(0, Ordering::Release);
        }
        outbox
    }

    pub fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    pub fn socket(&self) -> &UnixStream {
        &self.socket
    }

    /// True when no new call may be written to this worker: it is gone,
    /// being replaced, or still has to show that a cancelled call stopped
    /// (if it doesn't, it is killed, and calls sent meanwhile would die too).
    pub fn is_closed(&self) -> bool {
        self.dead.load(Ordering::Acquire)
            || self.draining.load(Ordering::Acquire)
            || self.cancelling_count.load(Ordering::Acquire) > 0
    }

    /// True once this process takes no more calls at all: its objects are
    /// gone or about to be.
    pub fn is_retired(&self) -> bool {
        self.dead.load(Ordering::Acquire) || self.draining.load(Ordering::Acquire)
    }

    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// The worker's socket closed; forget it.
    pub fn mark_dead(&self) {
        self.dead.store(true, Ordering::Release);
        registry().write().remove(&self.incarnation);
    }

    /// Stops sending calls to the worker and has the writer half-close its
    /// socket once the write in progress, if any, is done. True the first
    /// time.
    pub fn drain(&self) -> bool {
        let first = !self.draining.swap(true, Ordering::AcqRel);
        if first {
            let _ = self.control.send(Control {
                incarnation: self.incarnation,
                action: Action::Shutdown,
            });
        }
        first
    }

    /// Keeps the worker's timing of call `id` for its reply, which comes next.
    pub fn stash_timing(&self, id: u64, timing: Timing) {
        *self.timing.lock() = Some((id, timing));
        self.has_timing.store(true, Ordering::Release);
    }

    /// The timing stashed for call `id`, if any.
    pub fn take_timing(&self, id: u64) -> Option<Timing> {
        if !self.has_timing.load(Ordering::Acquire) {
            return None;
        }
        self.has_timing.store(false, Ordering::Release);
        match self.timing.lock().take() {
            Some((stashed, timing)) if stashed == id => Some(timing),
            _ => None,
        }
    }

    /// Half-closes the socket now, for a pool that is stopping (its writer
    /// threads are gone), once the outbox is out: its calls were sent.
    /// Waits for the socket, so never on a normal scheduler.
    pub fn close(&self) {
        self.draining.store(true, Ordering::Release);
        let _outbox = self.lock_for_writer();
        let _ = self.socket.shutdown(Shutdown::Write);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Asks the worker to interrupt call `id`, which must stop within the
    /// pool's cancel grace period or the worker is killed. Nothing is sent if
    /// the call's reply came in first: the worker ignores a cancel for a call
    /// it has answered, so waiting for it to stop would wait forever.
    fn interrupt(&self, id: u64) {
        {
            let mut cancelling = self.cancelling.lock();
            if cancelling.remove(&id).is_some() {
                return;
            }
            cancelling.insert(id, CancelMark::Interrupting(Instant::now() + self.cancel_grace));
            self.cancelling_count.fetch_add(1, Ordering::AcqRel);
        }
        let mut frame = Vec::new();
        Message::Cancel { id }.write_frame(&mut frame).expect("a cancel frame is small");
        let _ = self.control.send(Control {
            incarnation: self.incarnation,
            action: Action::Interrupt(frame),
        });
    }

    /// Call `id`, written to this worker, goes on in the background: it
    /// leaves the window. False if no call is in the window.
    pub fn detach(&self, id: u64) -> bool {
        let mut detached = self.detached.lock();
        if self.in_flight.load(Ordering::Acquire) == 0 || !detached.insert(id) {
            return false;
        }
        self.detached_count.fetch_add(1, Ordering::AcqRel);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        true
    }

    /// Accounts for the final reply to call `id`: it leaves the window, or
    /// the background calls if it was detached. False if no call was
    /// pending at all.
    pub fn finish(&self, id: u64) -> bool {
        if self.detached_count.load(Ordering::Acquire) > 0 && self.detached.lock().remove(&id) {
            self.detached_count.fetch_sub(1, Ordering::AcqRel);
            return true;
        }
        if self.in_flight.load(Ordering::Acquire) == 0 {
            return false;
        }
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        true
    }

    /// Calls written to the worker and not answered yet, in its window or
    /// in the background.
    pub fn unanswered(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed) + self.detached_count.load(Ordering::Relaxed)
    }

    /// Whether the worker has anything to do: calls in its window, or
    /// tasks and streams going on in the background.
    pub fn is_busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0 || self.detached_count.load(Ordering::Acquire) > 0
    }

    /// The worker sent something.
    pub fn heard(&self) {
        self.last_heard.store(monotonic_micros(), Ordering::Relaxed);
    }

    /// The final reply to call `id` came in after the call was cancelled:
    /// the call has stopped. Pairs with [`Connection::interrupt`], whichever
    /// of the two runs first.
    pub fn cancelled_call_answered(&self, id: u64) {
        let mut cancelling = self.cancelling.lock();
        match cancelling.remove(&id) {
            Some(CancelMark::Interrupting(_)) => {
                self.cancelling_count.fetch_sub(1, Ordering::AcqRel);
            }
            // Only one reply comes per call, so a mark left by the reply
            // cannot be here already.
            Some(CancelMark::Answered) | None => {
                cancelling.insert(id, CancelMark::Answered);
            }
        }
    }

    /// Cancelled calls the worker has yet to show have stopped.
    pub fn cancelling(&self) -> usize {
        self.cancelling_count.load(Ordering::Acquire)
    }

    /// The first cancelled call that overran its grace period, if any.
    pub fn overdue_cancel(&self, now: Instant) -> Option<u64> {
        if self.cancelling_count.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.cancelling.lock().iter().find_map(|(id, mark)| match mark {
            CancelMark::Interrupting(by) if *by <= now => Some(*id),
            _ => None,
        })
    }

    /// Sends a ping if the worker has been idle for `interval`; returns true
    /// if an earlier ping has gone unanswered for `timeout`.
    pub fn health_check(&self, interval: Duration, timeout: Duration, now: Instant) -> bool {
        let mut ping_sent = self.ping_sent.lock();
        if let Some(sent) = *ping_sent {
            return now.duration_since(sent) > timeout;
        }
        let idle_for = monotonic_micros().saturating_sub(self.last_heard.load(Ordering::Relaxed));
        if !self.is_busy() && idle_for >= interval.as_micros() as u64 {
            let mut frame = Vec::new();
            Message::Ping { id: 0 }.write_frame(&mut frame).expect("a ping frame is small");
            *ping_sent = Some(now);
            let _ = self.control.send(Control {
                incarnation: self.incarnation,
                action: Action::Send(frame),
            });
        }
        false
    }

    pub fn pong(&self) {
        self.last_heard.store(monotonic_micros(), Ordering::Relaxed);
        *self.ping_sent.lock() = None;
    }
}

fn registry() -> &'static RwLock<HashMap<u64, Weak<Connection>>> {
    static CONNECTIONS: OnceLock<RwLock<HashMap<u64, Weak<Connection>>>> = OnceLock::new();
    CONNECTIONS.get_or_init(Default::default)
}

/// Lets stream `id` on worker `incarnation` send `n` more items. False if
/// that worker is gone.
pub(crate) fn credit(incarnation: u64, id: u64, n: u64) -> bool {
    let conn = registry().read().get(&incarnation).and_then(Weak::upgrade);
    let Some(conn) = conn.filter(|c| !c.is_dead()) else {
        return false;
    };
    let mut frame = Vec::with_capacity(24);
    Message::Credit { id, credit: n }.write_frame(&mut frame).expect("a credit frame is small");
    // Written by the consumer itself when the socket is free, as calls are
    // (see `Pool::submit`); a writer thread hand-off would cost a wake-up
    // per window of items.
    if conn.try_write(&frame, || true) == Ok(true) {
        return true;
    }
    conn.control
        .send(Control {
            incarnation,
            action: Action::Send(frame),
        })
        .is_ok()
}

/// Asks worker `incarnation`, if it still runs, to interrupt call `id`.
pub(crate) fn interrupt(incarnation: u64, id: u64) {
    let conn = registry().read().get(&incarnation).and_then(Weak::upgrade);
    if let Some(conn) = conn {
        conn.interrupt(id);
    }
}

/// Counts a call that timed out on worker `incarnation` against its pool's
/// circuit breaker.
pub(crate) fn timed_out(incarnation: u64, id: u64) {
    let conn = registry().read().get(&incarnation).and_then(Weak::upgrade);
    if let Some(conn) = conn {
        conn.breaker
            .failure(|| format!("call {id} timed out on Python worker {}", conn.os_pid));
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn connection() -> (Arc<Connection>, crossbeam_channel::Receiver<Control>) {
        let (host, _worker) = UnixStream::pair().unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        (Connection::new(1, host, tx, Duration::from_secs(60), Arc::new(Breaker::new("test", None))), rx)
    }

    #[test]
    fn a_frame_the_socket_takes_in_part_is_finished_by_the_writer_before_the_next() {
        let (host, mut worker) = UnixStream::pair().unwrap();
        host.set_nonblocking(true).unwrap();
        let (tx, control) = crossbeam_channel::unbounded();
        let conn = Connection::new(1, host, tx, Duration::from_secs(60), Arc::new(Breaker::new("test", None)));
        // Fill the socket, then let some room free: less than a frame.
        let filler = vec![0u8; 4096];
        let mut filled = 0;
        while let Ok(n) = socket::try_send(conn.fd(), &filler) {
            if n == 0 {
                break;
            }
            filled += n;
        }
        let mut drained = vec![0u8; 64 * 1024];
        worker.read_exact(&mut drained).unwrap();
        let frame: Vec<u8> = (0..512 * 1024).map(|i| (i % 251) as u8).collect();
        assert_eq!(conn.try_write(&frame, || true), Ok(true), "begun");
        assert!(matches!(control.try_recv(), Ok(Control { action: Action::Flush, .. })));
        // What follows queues behind the rest.
        assert_eq!(conn.try_write(b"next", || true), Ok(true));
        let reader = std::thread::spawn(move || {
            let mut rest = vec![0u8; filled - drained.len() + frame.len() + 4];
            worker.read_exact(&mut rest).unwrap();
            rest.split_off(filled - drained.len()) == [&frame[..], b"next"].concat()
        });
        drop(conn.lock_for_writer());
        assert!(reader.join().unwrap(), "the frame arrived whole and in order");
    }

    #[test]
    fn a_large_frame_goes_as_a_descriptor_and_one_the_socket_refuses_frees_its_memory() {
        let (host, mut worker) = UnixStream::pair().unwrap();
        host.set_nonblocking(true).unwrap();
        let (tx, _control) = crossbeam_channel::unbounded();
        let conn = Connection::new(1, host, tx, Duration::from_secs(60), Arc::new(Breaker::new("test", None)));
        let (arenas, _fds) = Arenas::create(1 << 20).unwrap();
        conn.share(arenas.clone());
        let mut frame = Vec::new();
        let start = snakebridge_protocol::FrameWriter::begin(&mut frame);
        frame.resize(frame.len() + 100_000, 7);
        snakebridge_protocol::FrameWriter::finish(&mut frame, start).unwrap();
        assert_eq!(conn.try_write(&frame, || true), Ok(true));
        let mut sent = [0u8; 64];
        let n = worker.read(&mut sent).unwrap();
        assert!(n < 32, "a descriptor, not the frame: {n} bytes");
        assert_eq!(arenas.calls.used_blocks(), 100_000usize.div_ceil(4096));
        // Fill the socket: the next frame is refused, and its region freed.
        while socket::try_send(conn.fd(), &[0u8; 4096]).unwrap() > 0 {}
        let before = arenas.calls.used_blocks();
        assert_eq!(conn.try_write(&frame, || true), Err(()));
        assert_eq!(arenas.calls.used_blocks(), before);
    }

    #[test]
    fn a_frame_queued_as_the_reader_looked_for_the_last_time_is_sent_by_its_caller() {
        let (host, mut worker) = UnixStream::pair().unwrap();
        host.set_nonblocking(true).unwrap();
        worker.set_nonblocking(true).unwrap();
        let (tx, control) = crossbeam_channel::unbounded();
        let conn = Connection::new(1, host, tx, Duration::from_secs(60), Arc::new(Breaker::new("test", None)));
        conn.in_flight.store(1, Ordering::Release);
        // Between the caller's look at the window and its frame reaching the
        // outbox, the reader routes the last reply and finds the outbox
        // empty: no reply is left to make it look again.
        let begin = || {
            conn.in_flight.fetch_sub(1, Ordering::AcqRel);
            conn.flush();
            conn.in_flight.fetch_add(1, Ordering::AcqRel);
            true
        };
        assert_eq!(conn.try_write(b"call", begin), Ok(true));
        assert_eq!(conn.outbox_len.load(Ordering::Acquire), 0, "the caller sent the outbox");
        let mut sent = [0u8; 16];
        assert_eq!(worker.read(&mut sent).unwrap(), 4);
        assert_eq!(&sent[..4], b"call");
        assert!(control.try_recv().is_err(), "no writer wake-up");
        // Without such a race, the frame waits for the reader's next look.
        assert_eq!(conn.try_write(b"next", || true), Ok(true));
        assert_eq!(conn.outbox_len.load(Ordering::Acquire), 4, "queued behind the busy worker");
        assert!(worker.read(&mut sent).is_err(), "nothing sent yet");
        assert!(control.try_recv().is_err());
        conn.flush();
        assert_eq!(worker.read(&mut sent).unwrap(), 4);
    }

    #[test]
    fn a_reply_before_the_interrupt_leaves_no_cancel_pending() {
        let (conn, control) = connection();
        conn.cancelled_call_answered(7);
        conn.interrupt(7);
        assert_eq!(conn.cancelling(), 0);
        assert!(!conn.is_closed());
        assert!(control.try_recv().is_err(), "no cancel frame for an answered call");
        assert!(conn.cancelling.lock().is_empty());
    }

    #[test]
    fn a_reply_after_the_interrupt_closes_it() {
        let (conn, control) = connection();
        conn.interrupt(8);
        assert_eq!(conn.cancelling(), 1);
        assert!(conn.is_closed(), "no new calls until the cancelled one stops");
        assert!(matches!(control.try_recv(), Ok(Control { action: Action::Interrupt(_), .. })));
        conn.cancelled_call_answered(8);
        assert_eq!(conn.cancelling(), 0);
        assert!(!conn.is_closed());
        assert!(conn.cancelling.lock().is_empty());
    }
}
