//! The hand-off between the reader thread and the main thread.
//!
//! The reader thread queues its read buffer whole (every complete frame one
//! `read` brought) and rings the [`Doorbell`] only when the main thread said
//! it was about to sleep; the main thread takes everything queued at once.
//! Under load the main thread never sleeps, so frames cost no wake-up at
//! all; a lone call costs one (on top of the reader's own).
//!
//! The inbox also decides, without a lock on the hot path, who owns a call
//! that the host cancels: the main thread, which replies `cancelled` instead
//! of starting it, or the reader thread, which interrupts it (see
//! [`Inbox::begin`] and [`Inbox::cancel`]).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use snakebridge_protocol::HEADER_LEN;

/// A buffer of whole frames (length header and body) back to back, as read
/// from the socket: the reader thread hands over its read buffer itself, so
/// no frame is copied on the way. The reader has checked each frame's
/// `[kind, id` header; the main thread reads it again (a few bytes) and
/// skips the cancels, which the reader handled.
pub(crate) type Chunk = Vec<u8>;

/// Iterates over the frame bodies of a chunk.
pub(crate) fn frames(chunk: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = chunk;
    std::iter::from_fn(move || {
        let header: [u8; HEADER_LEN] = rest.get(..HEADER_LEN)?.try_into().ok()?;
        let len = u32::from_be_bytes(header) as usize;
        let body = rest.get(HEADER_LEN..HEADER_LEN + len)?;
        rest = &rest[HEADER_LEN + len..];
        Some(body)
    })
}

/// A chunk buffer bigger than this is freed rather than reused.
const KEEP_CAPACITY: usize = 1 << 20;
/// Empty buffers kept for the reader to read into.
const KEEP_SPARE: usize = 8;

/// Why the reader thread stopped; the main thread acts on it once every
/// frame queued before it is handled.
#[derive(Debug)]
pub(crate) enum End {
    /// EOF (or a reset) from the host.
    HostGone,
    /// Bytes that are not a valid frame.
    Protocol(String),
    /// Reading failed otherwise.
    Io(io::Error),
}

/// What [`Inbox::take`] found.
#[derive(Debug)]
pub(crate) enum Took {
    /// Chunks were moved into the caller's batch.
    Frames,
    /// Nothing left, and the reader has stopped.
    End(End),
    /// Nothing yet: sleep with [`Inbox::wait`] and this ticket.
    Empty(u32),
}

/// Who handles a cancelled call (see [`Inbox::cancel`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cancelled {
    /// It had not started: the main thread replies `cancelled` in its place.
    Queued,
    /// The main thread started it (and may have finished it).
    Started,
}

struct Shared {
    /// Chunks in the order they were read.
    chunks: Vec<Chunk>,
    /// Emptied chunks the main thread gave back, for the reader to reuse.
    spare: Vec<Chunk>,
    end: Option<End>,
    /// The main thread found nothing and is going to sleep: the next
    /// publisher rings the doorbell.
    waiting: bool,
    /// Seqs of cancelled calls the main thread has not reached yet.
    cancelled: Vec<u64>,
}

pub(crate) struct Inbox {
    shared: Mutex<Shared>,
    doorbell: Doorbell,
    /// Seq of the last call the main thread committed to (started, or
    /// skipped as cancelled). Only grows. Written for every call: kept off
    /// the cache line of the lock the reader takes.
    started: CacheLine<AtomicU64>,
    /// `!shared.cancelled.is_empty()`, readable without the lock.
    cancels_pending: AtomicBool,
}

impl Default for Inbox {
    fn default() -> Self {
        Inbox {
            shared: Mutex::new(Shared {
                chunks: Vec::new(),
                spare: Vec::new(),
                end: None,
                waiting: false,
                cancelled: Vec::new(),
            }),
            doorbell: Doorbell::default(),
            started: CacheLine(AtomicU64::new(0)),
            cancels_pending: AtomicBool::new(false),
        }
    }
}

impl Inbox {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        // Neither side panics while holding the lock; if one did, the data
        // (plain vectors) would still be consistent.
        self.shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    // ---- reader thread -------------------------------------------------

    /// Queues `chunk` and wakes the main thread if it sleeps. Returns an
    /// empty buffer to read into next, if the main thread gave one back.
    pub(crate) fn publish(&self, chunk: Chunk) -> Option<Chunk> {
        let (spare, wake) = {
            let mut shared = self.lock();
            shared.chunks.push(chunk);
            (shared.spare.pop(), std::mem::take(&mut shared.waiting))
        };
        if wake {
            self.doorbell.ring();
        }
        spare
    }

    /// Records why the reader stopped, after everything it published.
    pub(crate) fn finish(&self, end: End) {
        let wake = {
            let mut shared = self.lock();
            shared.end = Some(end);
            std::mem::take(&mut shared.waiting)
        };
        if wake {
            self.doorbell.ring();
        }
    }

    /// Seq of the last call the main thread committed to.
    pub(crate) fn started(&self) -> u64 {
        self.started.0.load(Ordering::SeqCst)
    }

    /// The host cancelled call `seq`. Exactly one side takes charge of it:
    /// `Queued` when the main thread will find it cancelled in
    /// [`Inbox::begin`] (and reply `cancelled`), `Started` when the main
    /// thread started it or is about to and only an interrupt can stop it.
    ///
    /// This is Dekker's pattern. The reader publishes the cancel, then
    /// reads `started`; the main thread publishes `started`, then reads
    /// `cancels_pending`. With sequentially consistent atomics at least one
    /// of them sees the other's write. If the reader sees `started < seq`,
    /// the main thread will see the cancel before starting `seq`. Otherwise
    /// both may have seen each other, so the lock settles it: whoever
    /// removes `seq` from `cancelled` owns the call.
    pub(crate) fn cancel(&self, seq: u64) -> Cancelled {
        {
            let mut shared = self.lock();
            shared.cancelled.push(seq);
            self.cancels_pending.store(true, Ordering::SeqCst);
        }
        if self.started.0.load(Ordering::SeqCst) < seq {
            return Cancelled::Queued;
        }
        let mut shared = self.lock();
        match shared.cancelled.iter().position(|&s| s == seq) {
            Some(at) => {
                shared.cancelled.swap_remove(at);
                self.cancels_pending.store(!shared.cancelled.is_empty(), Ordering::SeqCst);
                Cancelled::Started
            }
            // The main thread claimed it first: it replies `cancelled`.
            None => Cancelled::Queued,
        }
    }

    // ---- main thread ---------------------------------------------------

    /// Gives back the chunks of `batch` the main thread is done with, then
    /// moves every chunk queued into it, or says why there is none.
    pub(crate) fn take(&self, batch: &mut Vec<Chunk>) -> Took {
        // Huge buffers are freed before taking the lock.
        batch.retain(|chunk| chunk.capacity() <= KEEP_CAPACITY);
        let mut shared = self.lock();
        for mut chunk in batch.drain(..) {
            if shared.spare.len() < KEEP_SPARE {
                chunk.clear();
                shared.spare.push(chunk);
            }
        }
        if !shared.chunks.is_empty() {
            std::mem::swap(&mut shared.chunks, batch);
            return Took::Frames;
        }
        if let Some(end) = shared.end.take() {
            return Took::End(end);
        }
        shared.waiting = true;
        // Read under the lock: a publisher that sees `waiting` rings after
        // this, so the ticket is stale by then and `wait` returns at once.
        Took::Empty(self.doorbell.ticket())
    }

    /// Sleeps until the reader publishes something, a signal arrives (so
    /// that Python's handlers can run), or spuriously. Call without the GIL.
    pub(crate) fn wait(&self, ticket: u32) {
        self.doorbell.wait(ticket);
    }

    /// The main thread is about to start call `seq`. Returns `true` when the
    /// host cancelled it: the main thread then replies `cancelled` instead.
    /// One `SeqCst` store and one load when nothing is cancelled.
    pub(crate) fn begin(&self, seq: u64) -> bool {
        self.started.0.store(seq, Ordering::SeqCst);
        if !self.cancels_pending.load(Ordering::SeqCst) {
            return false;
        }
        let mut shared = self.lock();
        match shared.cancelled.iter().position(|&s| s == seq) {
            Some(at) => {
                shared.cancelled.swap_remove(at);
                self.cancels_pending.store(!shared.cancelled.is_empty(), Ordering::SeqCst);
                true
            }
            None => false,
        }
    }
}

#[repr(align(64))]
struct CacheLine<T>(T);

/// A futex the main thread sleeps on.
///
/// Not a `Condvar`: std retries a futex wait interrupted by a signal, and
/// the main thread must wake up instead, so that a user's SIGTERM or SIGINT
/// handler runs while the worker is idle, as it did when the main thread
/// slept in `read(2)`. (Linux only, like the rest of the runtime.)
#[derive(Default)]
struct Doorbell(AtomicU32);

impl Doorbell {
    fn ticket(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }

    fn ring(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
        // SAFETY: FUTEX_WAKE on a live, aligned u32; no other pointers.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.0.as_ptr(),
                libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                1,
            );
        }
    }

    /// Returns when the word moves past `ticket`, on EINTR, or spuriously.
    fn wait(&self, ticket: u32) {
        // SAFETY: FUTEX_WAIT on a live, aligned u32 with no timeout. It
        // returns at once (EAGAIN) if the word is no longer `ticket`.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.0.as_ptr(),
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                ticket,
                std::ptr::null::<libc::timespec>(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;
    use std::time::Duration;

    fn chunk(bodies: &[&[u8]]) -> Chunk {
        let mut c = Vec::new();
        for body in bodies {
            c.extend_from_slice(&(body.len() as u32).to_be_bytes());
            c.extend_from_slice(body);
        }
        c
    }

    fn bodies(batch: &[Chunk]) -> Vec<Vec<u8>> {
        batch.iter().flat_map(|c| frames(c)).map(|b| b.to_vec()).collect()
    }

    #[test]
    fn frames_splits_a_chunk() {
        let c = chunk(&[b"one", b"", b"three"]);
        assert_eq!(frames(&c).collect::<Vec<_>>(), [&b"one"[..], b"", b"three"]);
        assert_eq!(frames(&[]).count(), 0);
    }

    #[test]
    fn chunks_keep_their_order_and_buffers_come_back() {
        let inbox = Inbox::default();
        assert!(inbox.publish(chunk(&[b"a", b"b"])).is_none());
        assert!(inbox.publish(chunk(&[b"c"])).is_none());
        let mut batch = Vec::new();
        assert!(matches!(inbox.take(&mut batch), Took::Frames));
        assert_eq!(bodies(&batch), [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        // Giving the batch back makes its buffers spare, for the reader.
        assert!(matches!(inbox.take(&mut batch), Took::Empty(_)));
        assert!(batch.is_empty());
        let spare = inbox.publish(chunk(&[b"d"])).expect("a spare buffer");
        assert!(spare.is_empty() && spare.capacity() > 0);
    }

    #[test]
    fn end_comes_after_the_frames_before_it() {
        let inbox = Inbox::default();
        inbox.publish(chunk(&[b"x"]));
        inbox.finish(End::HostGone);
        let mut batch = Vec::new();
        assert!(matches!(inbox.take(&mut batch), Took::Frames));
        assert!(matches!(inbox.take(&mut batch), Took::End(End::HostGone)));
    }

    #[test]
    fn publish_wakes_a_sleeping_main_thread_only_when_it_waits() {
        let inbox = Arc::new(Inbox::default());
        let ticket0 = inbox.doorbell.ticket();
        // Nobody waiting: no ring.
        inbox.publish(chunk(&[b"1"]));
        assert_eq!(inbox.doorbell.ticket(), ticket0);
        let mut batch = Vec::new();
        assert!(matches!(inbox.take(&mut batch), Took::Frames));

        let Took::Empty(ticket) = inbox.take(&mut batch) else { panic!("expected empty") };
        let publisher = {
            let inbox = inbox.clone();
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(50));
                inbox.publish(chunk(&[b"2"]));
            })
        };
        inbox.wait(ticket);
        publisher.join().unwrap();
        assert!(matches!(inbox.take(&mut batch), Took::Frames));
        assert_eq!(bodies(&batch), [b"2".to_vec()]);
    }

    #[test]
    fn a_ring_before_the_wait_is_not_lost() {
        let inbox = Inbox::default();
        let mut batch = Vec::new();
        let Took::Empty(ticket) = inbox.take(&mut batch) else { panic!("expected empty") };
        inbox.publish(chunk(&[b"1"]));
        inbox.wait(ticket); // returns at once
        assert!(matches!(inbox.take(&mut batch), Took::Frames));
    }

    #[test]
    fn cancel_before_start_is_claimed_by_the_main_thread() {
        let inbox = Inbox::default();
        assert!(!inbox.begin(1));
        assert_eq!(inbox.cancel(3), Cancelled::Queued);
        assert!(!inbox.begin(2));
        assert!(inbox.begin(3));
        assert!(!inbox.cancels_pending.load(Ordering::SeqCst));
    }

    #[test]
    fn cancel_after_start_is_the_readers() {
        let inbox = Inbox::default();
        assert!(!inbox.begin(1));
        assert_eq!(inbox.cancel(1), Cancelled::Started);
        assert!(!inbox.cancels_pending.load(Ordering::SeqCst));
        assert!(!inbox.begin(2));
    }

    #[test]
    fn racing_cancels_have_exactly_one_owner() {
        // The main thread begins calls 1..=N while the reader cancels each of
        // them at the same moment (the two advance in lockstep): each call
        // must end up either skipped by the main thread, or started and owned
        // by the reader, never both or neither.
        const N: u64 = 20_000;
        let inbox = Arc::new(Inbox::default());
        let main_at = Arc::new(AtomicU64::new(0));
        let reader_at = Arc::new(AtomicU64::new(0));
        fn wait_for(at: &AtomicU64, seq: u64) {
            let mut spins = 0u32;
            while at.load(Ordering::SeqCst) < seq {
                spins += 1;
                if spins % 64 == 0 {
                    thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
        }
        let main = {
            let (inbox, main_at, reader_at) = (inbox.clone(), main_at.clone(), reader_at.clone());
            thread::spawn(move || {
                let mut skipped = Vec::new();
                for seq in 1..=N {
                    wait_for(&reader_at, seq - 1);
                    if inbox.begin(seq) {
                        skipped.push(seq);
                    }
                    main_at.store(seq, Ordering::SeqCst);
                }
                skipped
            })
        };
        let mut started = Vec::new();
        for seq in 1..=N {
            wait_for(&main_at, seq - 1);
            if inbox.cancel(seq) == Cancelled::Started {
                started.push(seq);
            }
            reader_at.store(seq, Ordering::SeqCst);
        }
        let skipped = main.join().unwrap();
        eprintln!("skipped by the main thread: {}, started: {}", skipped.len(), started.len());
        let mut all: Vec<u64> = skipped.iter().chain(&started).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (1..=N).collect::<Vec<_>>(), "each call has exactly one owner");
        assert!(!inbox.cancels_pending.load(Ordering::SeqCst));
    }
}
