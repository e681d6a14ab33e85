//! A pool of worker slots sharing one bounded queue.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::TrySendError;
use parking_lot::Mutex;

use crate::affinity::Affinity;
use crate::breaker::Breaker;
use crate::call::{Call, CallTable};
use crate::config::PoolConfig;
use crate::connection::Connection;
use crate::events::{Failure, Reason};
use crate::hooks::Hooks;
use crate::reader::Attach;
use crate::log;
use crate::object::ObjectRef;
use crate::route::Route;
use crate::slot::Slot;
use crate::supervisor;
use crate::shared::{stale_failure, Job, PinnedQueue, Shared};
use crate::watchdog;
use snakebridge_protocol::{HEADER_LEN, MAX_FRAME_LEN};
use crate::stats::PoolStats;

/// Frames up to this size may be written by the caller itself. A larger one
/// goes to the writer thread: the socket would likely take only part of it
/// at once, and the rest would be copied for that thread anyway (see
/// `Connection::try_write`).
const DIRECT_MAX: usize = 128 * 1024;

/// Tells pools apart in the routes of their objects.
static POOL_IDS: AtomicU64 = AtomicU64::new(1);

/// Where a submitted call went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Written at once to a worker that was running no other call: its
    /// reply may come within microseconds, soon enough for a caller that
    /// waits for it to poll rather than sleep.
    Alone,
    /// Written behind other calls, queued, or cancelled meanwhile.
    Behind,
}

/// A pool of Python workers.
///
/// Dropping the pool stops it (see [`Pool::stop`]).
pub struct Pool<H: Hooks> {
    shared: Arc<Shared<H>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl<H: Attach> Pool<H> {
    /// Starts `config.size` workers. Returns at once: workers come up in the
    /// background, and calls queue until one is ready.
    pub fn start(
        name: impl Into<String>,
        config: PoolConfig,
        hooks: Arc<H>,
        table: Arc<CallTable<H::Caller>>,
    ) -> std::io::Result<Pool<H>> {
        let (queue_tx, queue_rx) = crossbeam_channel::bounded(config.max_queue.max(1));
        let (stop_tx, stop_rx) = crossbeam_channel::bounded(0);
        let size = config.size.max(1);
        let (logs, log_drain) = log::log_queue(config.log_queue, config.log_rate);
        let name = name.into();
        let (circuit_tx, circuit_rx) = crossbeam_channel::unbounded();
        let breaker = Arc::new(Breaker::new(&name, config.breaker).reporting_to(circuit_tx));
        let shared = Arc::new(Shared {
            name,
            id: POOL_IDS.fetch_add(1, Ordering::Relaxed),
            slots: (0..size).map(|i| Arc::new(Slot::new(i))).collect(),
            pinned: (0..size).map(|_| PinnedQueue::new()).collect(),
            config,
            hooks,
            table,
            queue_tx,
            queue_rx,
            stopping: AtomicBool::new(false),
            stop_rx,
            stop_tx: Mutex::new(Some(stop_tx)),
            held: AtomicUsize::new(0),
            logs: Arc::new(logs),
            breaker,
            affinity: Arc::new(Affinity::default()),
            spread: AtomicUsize::new(0),
        });
        let pool = Pool {
            shared: shared.clone(),
            threads: Mutex::new(Vec::new()),
        };
        for slot in &shared.slots {
            let handles = supervisor::start_threads(shared.clone(), slot.clone())?;
            pool.threads.lock().extend(handles);
        }
        let watched = shared.clone();
        let watchdog = std::thread::Builder::new()
            .name(format!("sb-watch-{}", shared.name))
            .spawn(move || watchdog::watch(&watched))?;
        pool.threads.lock().push(watchdog);
        let logged = shared.clone();
        let logger = std::thread::Builder::new()
            .name(format!("sb-log-{}", shared.name))
            .spawn(move || log::drain(&*logged.hooks, log_drain, circuit_rx, &logged.stop_rx))?;
        pool.threads.lock().push(logger);
        Ok(pool)
    }
}

impl<H: Hooks> Pool<H> {
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The embedder's hooks this pool was started with.
    pub fn hooks(&self) -> &Arc<H> {
        &self.shared.hooks
    }

    /// The largest encoded call (or result) the pool's workers take.
    pub fn payload_limit(&self) -> usize {
        self.shared.config.payload_limit()
    }

    /// Sends `call` (already in the call table) with its encoded `frame`.
    ///
    /// When nothing is queued, the frame is written to the least busy
    /// worker's socket right here, in the caller's thread: waking a writer
    /// thread instead costs a context switch per hand-off, which on a small
    /// machine is most of a small call's cost. The call joins the queue
    /// (where writer threads take calls in batches) only when every worker's
    /// window is full, its socket busy, or the frame large. On error the
    /// call is removed from the table and no reply will come.
    pub fn submit(&self, call: Arc<Call<H::Caller>>, mut frame: Vec<u8>) -> Result<Sent, Failure> {
        self.submit_reusing(call, &mut frame)
    }

    /// [`Pool::submit`] that leaves `frame`'s buffer to the caller when the
    /// frame was written at once (it is taken when the call is queued or
    /// refused): a caller that encodes large calls can reuse the buffer,
    /// whose pages are then already faulted in.
    pub fn submit_reusing(&self, call: Arc<Call<H::Caller>>, frame: &mut Vec<u8>) -> Result<Sent, Failure> {
        let shared = &self.shared;
        let refused = if shared.stopping.load(Ordering::Acquire) {
            Some(shared.stopped_failure())
        } else if shared.is_unavailable() {
            Some(shared.unavailable_failure())
        } else {
            shared.breaker.admit().err()
        };
        if let Some(failure) = refused {
            shared.table.remove(call.id);
            return Err(failure);
        }
        // A caller that holds objects keeps to their worker while it takes
        // calls (see `affinity`).
        if let Some(route) = shared.affinity.route(call.owner) {
            if let Some(conn) = self.live(route) {
                return self.send_to(call, std::mem::take(frame), route, &conn, Vec::new(), true);
            }
        }
        // With shared memory a large frame is a small descriptor on the
        // socket: the caller writes it as well as a small one.
        // A frame over the socket's limit must wait for room in shared
        // memory, which only the writer thread may do.
        let direct = frame.len() <= DIRECT_MAX
            || (shared.config.shared_memory && frame.len() <= HEADER_LEN + MAX_FRAME_LEN);
        if direct && shared.queue_rx.is_empty() {
            if let Some(sent) = self.write_direct(&call, frame) {
                return Ok(sent);
            }
        }
        let frame = std::mem::take(frame);
        if shared.queue_length() >= shared.config.max_queue {
            shared.table.remove(call.id);
            return Err(Failure::new(Reason::Overloaded, shared.overloaded_message()));
        }
        match shared.queue_tx.try_send(Job::new(call, frame)) {
            Ok(()) => Ok(Sent::Behind),
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                shared.table.remove(job.call.id);
                Err(Failure::new(Reason::Overloaded, shared.overloaded_message()))
            }
        }
    }

    /// Writes the frame to a worker with room in its window, without
    /// blocking. None when no worker could take it that way.
    fn write_direct(&self, call: &Call<H::Caller>, frame: &[u8]) -> Option<Sent> {
        let slots = &self.shared.slots;
        let window = self.shared.config.window;
        // The least busy worker, and of equals the first: a lone caller then
        // keeps to one worker, whose process stays warm and, here, on the
        // same CPU, instead of waking a different one each call.
        let best = (0..slots.len())
            .filter_map(|i| slots[i].in_flight().map(|n| (n, i)))
            .min()
            .map_or(0, |(_, i)| i);
        std::iter::once(best)
            .chain((0..slots.len()).filter(|&i| i != best))
            .filter_map(|i| slots[i].connection())
            .find_map(|conn| write_direct_to(&conn, window, call, frame))
    }

    /// Sends a call that uses objects (`keep`) to the worker holding them,
    /// which `route` names. Fails with `stale_handle` when that worker
    /// process is gone, and `handle_conflict` when the objects belong to
    /// another pool.
    pub fn submit_pinned(
        &self,
        call: Arc<Call<H::Caller>>,
        frame: Vec<u8>,
        route: Route,
        keep: Vec<Arc<ObjectRef>>,
    ) -> Result<Sent, Failure> {
        let shared = &self.shared;
        // An object of a stopped pool is gone, even if a pool of the same
        // name runs again.
        let gone = keep.iter().any(|object| object.os_pid().is_none());
        let refused = if gone {
            Some(stale_failure())
        } else if route.pool != shared.id || route.slot >= shared.slots.len() {
            Some(Failure::new(
                Reason::HandleConflict,
                format!(
                    "the call goes to pool {}, but its objects (or its :worker) live in another pool; \
                     objects never leave their pool: pass `pool:` of theirs, or make them in this one",
                    shared.name
                ),
            ))
        } else if shared.stopping.load(Ordering::Acquire) {
            Some(shared.stopped_failure())
        } else {
            shared.breaker.admit().err()
        };
        if let Some(failure) = refused {
            shared.table.remove(call.id);
            return Err(failure);
        }
        let Some(conn) = self.live(route) else {
            shared.table.remove(call.id);
            return Err(stale_failure());
        };
        self.send_to(call, frame, route, &conn, keep, false)
    }

    /// Sends a call that uses no object to one worker, taking the workers
    /// in turn from one call to the next: calls that each make an object
    /// to work with later (`SnakeBridge.Session`) spread over the pool.
    /// Falls back to [`Pool::submit`] while no worker runs.
    pub fn submit_spread(&self, call: Arc<Call<H::Caller>>, frame: Vec<u8>) -> Result<Sent, Failure> {
        let shared = &self.shared;
        if shared.stopping.load(Ordering::Acquire) || shared.is_unavailable() {
            return self.submit(call, frame);
        }
        let size = shared.slots.len();
        let start = shared.spread.fetch_add(1, Ordering::Relaxed);
        let found = (0..size).find_map(|i| {
            let slot = (start + i) % size;
            let conn = shared.slots[slot].connection().filter(|c| !c.is_retired())?;
            let route = Route {
                pool: shared.id,
                slot,
                incarnation: conn.incarnation,
            };
            Some((route, conn))
        });
        let Some((route, conn)) = found else {
            return self.submit(call, frame);
        };
        if let Err(failure) = shared.breaker.admit() {
            shared.table.remove(call.id);
            return Err(failure);
        }
        self.send_to(call, frame, route, &conn, Vec::new(), false)
    }

    /// The connection to the worker `route` names, if it still takes calls.
    fn live(&self, route: Route) -> Option<Arc<Connection>> {
        self.shared
            .slots
            .get(route.slot)?
            .connection()
            .filter(|c| c.incarnation == route.incarnation && !c.is_retired())
    }

    /// Writes the call to `conn`, the worker `route` names, or queues it
    /// on that slot's own queue, behind the calls already there.
    fn send_to(
        &self,
        call: Arc<Call<H::Caller>>,
        frame: Vec<u8>,
        route: Route,
        conn: &Connection,
        keep: Vec<Arc<ObjectRef>>,
        soft: bool,
    ) -> Result<Sent, Failure> {
        let shared = &self.shared;
        let pinned = &shared.pinned[route.slot];
        if frame.len() <= DIRECT_MAX && pinned.pending.load(Ordering::Acquire) == 0 {
            if let Some(sent) = write_direct_to(conn, shared.config.window, &call, &frame) {
                return Ok(sent);
            }
        }
        if shared.queue_length() >= shared.config.max_queue {
            shared.table.remove(call.id);
            return Err(Failure::new(Reason::Overloaded, shared.overloaded_message()));
        }
        pinned.pending.fetch_add(1, Ordering::AcqRel);
        let job = Job {
            call,
            frame,
            pinned: Some(route.incarnation),
            soft,
            keep,
        };
        if let Err(e) = pinned.tx.send(job) {
            pinned.pending.fetch_sub(1, Ordering::AcqRel);
            shared.table.remove(e.into_inner().call.id);
            return Err(shared.stopped_failure());
        }
        shared.slots[route.slot].wake_writer_now();
        Ok(Sent::Behind)
    }

    /// Replaces the workers one at a time: each is drained (it takes no new
    /// calls, answers those it has, and exits, as when recycled) and this
    /// waits until its slot runs a new process before draining the next, so
    /// the other workers serve meanwhile and no call fails for it. Objects
    /// of the old processes are gone (`stale_handle`), and their open
    /// streams end with `worker_exited`. A slot with no running worker is
    /// skipped: whatever starts there is new. Blocks; errs if the pool stops.
    pub fn restart(&self) -> Result<(), Failure> {
        let shared = &self.shared;
        for slot in &shared.slots {
            let Some(old) = slot.connection() else {
                continue;
            };
            old.drain();
            loop {
                if shared.stopping.load(Ordering::Acquire) {
                    return Err(shared.stopped_failure());
                }
                let replaced = slot.connection().is_some_and(|c| c.incarnation != old.incarnation);
                if replaced || slot.is_unavailable() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(())
    }

    /// Stops the pool: no new calls; workers see EOF on their socket and exit
    /// once their current call is done; workers still running after
    /// `stop_timeout` are killed. Every worker is reaped before this returns,
    /// and calls still queued fail with `python_unavailable`.
    pub fn stop(&self) {
        let shared = &self.shared;
        shared.stopping.store(true, Ordering::Release);
        shared.stop_tx.lock().take();
        for slot in &shared.slots {
            slot.close_connection();
        }
        let deadline = Instant::now() + shared.config.stop_timeout;
        let threads: Vec<_> = std::mem::take(&mut *self.threads.lock());
        while threads.iter().any(|t| !t.is_finished()) {
            if Instant::now() >= deadline {
                for slot in &shared.slots {
                    slot.kill_process();
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        for t in threads {
            let _ = t.join();
        }
        // Answering needs a thread the VM does not manage (the NIF's
        // delivery panics on scheduler threads, and stop runs on one).
        let draining = shared.clone();
        let drained = std::thread::Builder::new().name("sb-stop".into()).spawn(move || {
            let mut courier = draining.hooks.courier();
            let pinned = draining.pinned.iter().flat_map(|p| p.rx.try_iter());
            for job in draining.queue_rx.try_iter().chain(pinned) {
                draining.fail_job(&mut courier, job, draining.stopped_failure());
            }
        });
        if let Ok(handle) = drained {
            let _ = handle.join();
        }
    }

    pub fn stats(&self) -> PoolStats {
        PoolStats {
            queue_length: self.shared.queue_length(),
            max_queue: self.shared.config.max_queue,
            workers: self.shared.slots.iter().map(|s| s.stats()).collect(),
            circuit: self.shared.breaker.stats(),
        }
    }

    /// Handles the host holds on objects, per slot (0 where no worker runs).
    pub fn objects(&self) -> Vec<usize> {
        self.shared
            .slots
            .iter()
            .map(|s| s.connection().map_or(0, |c| c.objects.load(Ordering::Relaxed)))
            .collect()
    }

    /// OS pids of the running workers.
    pub fn os_pids(&self) -> Vec<u32> {
        self.shared.slots.iter().filter_map(|s| s.os_pid()).collect()
    }
}

/// Writes `frame` to `conn` if its window has room, without blocking. Some
/// when the call needs nothing more (written, or cancelled meanwhile).
fn write_direct_to<C>(conn: &Connection, window: usize, call: &Call<C>, frame: &[u8]) -> Option<Sent> {
    let mut cancelled = false;
    let mut alone = false;
    let begin = || {
        if conn.in_flight.load(Ordering::Acquire) >= window || conn.is_closed() {
            return false;
        }
        if !call.mark_sent(conn.incarnation) {
            cancelled = true;
            return false;
        }
        alone = conn.in_flight.fetch_add(1, Ordering::AcqRel) == 0;
        true
    };
    match conn.try_write(frame, begin) {
        Ok(true) if alone => Some(Sent::Alone),
        Ok(written) => (written || cancelled).then_some(Sent::Behind),
        Err(()) => {
            conn.in_flight.fetch_sub(1, Ordering::AcqRel);
            if call.mark_unsent() {
                return None;
            }
            // Cancelled meanwhile, and the worker never saw it: nothing
            // will answer the cancel, so close it here.
            conn.cancelled_call_answered(call.id);
            Some(Sent::Behind)
        }
    }
}

impl<H: Hooks> Drop for Pool<H> {
    fn drop(&mut self) {
        if !self.threads.lock().is_empty() {
            self.stop();
        }
    }
}
