//! One worker slot: its supervisor thread (spawn, handshake, read replies,
//! reap, restart) and its writer thread (queue → socket, in batches).

use std::io::{self, IoSlice};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, RecvTimeoutError};
use parking_lot::{Condvar, Mutex, RwLock};
use snakebridge_protocol::{DecodeError, FrameDecoder, Header, Kind, Message, PROTOCOL_VERSION};

use crate::hooks::{ExitInfo, Failure, Hooks, Outcome, PythonError, Reason, WorkerEvent};
use crate::pool::{Job, Shared};
use crate::socket;
use crate::spawn::{spawn_worker, WorkerProcess};
use crate::stats::{rss_bytes, WorkerStats};

/// Most bytes the writer gathers into one `sendmsg`.
const MAX_BATCH_BYTES: usize = 1 << 20;
/// Consecutive failed starts after which a slot reports Python unavailable.
const MAX_START_FAILURES: u32 = 3;
/// A worker that dies sooner than this after starting counts as a failed start.
const MIN_HEALTHY_LIFETIME: Duration = Duration::from_secs(1);
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Process-wide counter so a call can name the exact worker process it was
/// written to, across slots, pools and restarts.
static INCARNATIONS: AtomicU64 = AtomicU64::new(1);

/// The host's view of one running worker process.
pub(crate) struct Connection {
    pub incarnation: u64,
    pub os_pid: u32,
    socket: UnixStream,
    /// Serialises writes to the socket so frames never interleave. Held by
    /// the writer thread for a whole batch, and by a caller's fast path only
    /// through `try_lock` and a non-blocking write.
    pub write_lock: Mutex<()>,
    pub in_flight: AtomicUsize,
    dead: AtomicBool,
    writer_waiting: AtomicBool,
}

impl Connection {
    pub fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Status {
    Starting,
    Ready,
    Restarting,
    Unavailable,
    Stopped,
}

impl Status {
    fn from_u8(v: u8) -> Status {
        match v {
            0 => Status::Starting,
            1 => Status::Ready,
            2 => Status::Restarting,
            3 => Status::Unavailable,
            _ => Status::Stopped,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Status::Starting => "starting",
            Status::Ready => "ready",
            Status::Restarting => "restarting",
            Status::Unavailable => "unavailable",
            Status::Stopped => "stopped",
        }
    }
}

pub(crate) struct Slot {
    index: usize,
    /// A `Status`, read lock-free on every submit.
    status: AtomicU8,
    /// With `status_cv`, lets the writer sleep until the slot is ready.
    status_lock: Mutex<()>,
    status_cv: Condvar,
    connection: RwLock<Option<Arc<Connection>>>,
    /// The running process's pid, cleared under this lock before it is
    /// reaped so a kill can never hit a recycled pid.
    process: Mutex<Option<u32>>,
    window_lock: Mutex<()>,
    window_cv: Condvar,
    last_error: Mutex<Option<String>>,
    calls: AtomicU64,
    errors: AtomicU64,
    restarts: AtomicU64,
}

impl Slot {
    pub fn new(index: usize) -> Self {
        Slot {
            index,
            status: AtomicU8::new(Status::Starting as u8),
            status_lock: Mutex::new(()),
            status_cv: Condvar::new(),
            connection: RwLock::new(None),
            process: Mutex::new(None),
            window_lock: Mutex::new(()),
            window_cv: Condvar::new(),
            last_error: Mutex::new(None),
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
        }
    }

    /// The connection to a ready worker, if there is one.
    pub fn connection(&self) -> Option<Arc<Connection>> {
        self.connection.read().clone()
    }

    pub fn is_unavailable(&self) -> bool {
        self.status() == Status::Unavailable
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().clone()
    }

    pub fn os_pid(&self) -> Option<u32> {
        *self.process.lock()
    }

    fn status(&self) -> Status {
        Status::from_u8(self.status.load(Ordering::Acquire))
    }

    fn set_status(&self, status: Status) {
        let _guard = self.status_lock.lock();
        self.status.store(status as u8, Ordering::Release);
        self.status_cv.notify_all();
    }

    /// Half-closes the socket so the worker sees EOF after its current call.
    pub fn close_connection(&self) {
        if let Some(conn) = self.connection() {
            let _ = conn.socket.shutdown(Shutdown::Write);
        }
        let _guard = self.status_lock.lock();
        self.status_cv.notify_all();
    }

    pub fn kill_process(&self) {
        if let Some(pid) = *self.process.lock() {
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
    }

    pub fn stats(&self) -> WorkerStats {
        let os_pid = self.os_pid();
        WorkerStats {
            os_pid,
            state: self.status().name(),
            in_flight: self.connection().map_or(0, |c| c.in_flight.load(Ordering::Relaxed)),
            calls: self.calls.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            restarts: self.restarts.load(Ordering::Relaxed),
            rss: os_pid.map_or(0, rss_bytes),
        }
    }

    /// Blocks the writer until the slot has a ready worker; None once the
    /// pool stops.
    fn wait_ready<H: Hooks>(&self, shared: &Shared<H>) -> Option<Arc<Connection>> {
        let mut guard = self.status_lock.lock();
        loop {
            if shared.stopping.load(Ordering::Acquire) {
                return None;
            }
            if self.status() == Status::Ready {
                if let Some(conn) = self.connection() {
                    return Some(conn);
                }
            }
            self.status_cv.wait_for(&mut guard, Duration::from_millis(200));
        }
    }

    /// Blocks the writer while `conn` has a full window of calls. False if
    /// the worker died meanwhile.
    fn wait_window(&self, conn: &Connection, window: usize) -> bool {
        while conn.in_flight.load(Ordering::SeqCst) >= window {
            if conn.is_dead() {
                return false;
            }
            let mut guard = self.window_lock.lock();
            conn.writer_waiting.store(true, Ordering::SeqCst);
            if conn.in_flight.load(Ordering::SeqCst) >= window && !conn.is_dead() {
                self.window_cv.wait_for(&mut guard, Duration::from_millis(100));
            }
            conn.writer_waiting.store(false, Ordering::SeqCst);
        }
        !conn.is_dead()
    }

    fn wake_writer(&self, conn: &Connection) {
        if conn.writer_waiting.load(Ordering::SeqCst) {
            let _guard = self.window_lock.lock();
            self.window_cv.notify_all();
        }
    }
}

pub(crate) fn start_threads<H: Hooks>(shared: Arc<Shared<H>>, slot: Arc<Slot>) -> io::Result<Vec<JoinHandle<()>>> {
    let name = &shared.name;
    let index = slot.index;
    let supervisor = {
        let (shared, slot) = (shared.clone(), slot.clone());
        std::thread::Builder::new()
            .name(format!("sb-sup-{name}-{index}"))
            .spawn(move || supervise(&shared, &slot))?
    };
    let writer = std::thread::Builder::new()
        .name(format!("sb-wr-{name}-{index}"))
        .spawn(move || write_loop(&shared, &slot))?;
    Ok(vec![supervisor, writer])
}

/// Why a worker never became ready.
struct StartFailure {
    message: String,
    /// The interpreter could not even be executed: retrying soon won't help.
    definitive: bool,
}

fn supervise<H: Hooks>(shared: &Shared<H>, slot: &Slot) {
    let mut courier = shared.hooks.courier();
    let mut failures: u32 = 0;
    while !shared.stopping.load(Ordering::Acquire) {
        match start(shared, slot) {
            Err(failure) => {
                failures += 1;
                shared.hooks.event(
                    &mut courier,
                    0,
                    WorkerEvent::StartFailed {
                        message: failure.message.clone(),
                    },
                );
                *slot.last_error.lock() = Some(failure.message);
                if failure.definitive || failures >= MAX_START_FAILURES {
                    slot.set_status(Status::Unavailable);
                } else {
                    slot.set_status(Status::Restarting);
                }
            }
            Ok((mut process, conn, decoder, python)) => {
                *slot.last_error.lock() = None;
                *slot.connection.write() = Some(conn.clone());
                slot.set_status(Status::Ready);
                shared.hooks.event(&mut courier, conn.os_pid, WorkerEvent::Started { python });
                let started = Instant::now();

                let ended = read_replies(shared, slot, &conn, decoder, &mut courier);

                conn.dead.store(true, Ordering::Release);
                *slot.connection.write() = None;
                slot.wake_writer(&conn);
                if !shared.stopping.load(Ordering::Acquire) {
                    slot.set_status(Status::Restarting);
                }
                if let Err(problem) = &ended {
                    // A worker that speaks garbage cannot be trusted with
                    // another call.
                    slot.kill_process();
                    *slot.last_error.lock() = Some(problem.clone());
                }
                let exit = reap(slot, &mut process.child, shared.config.stop_timeout);
                fail_sent_calls(shared, &conn, exit, ended.err(), &mut courier);
                shared.hooks.event(&mut courier, conn.os_pid, WorkerEvent::Exited(exit));
                if shared.stopping.load(Ordering::Acquire) {
                    break;
                }
                slot.restarts.fetch_add(1, Ordering::Relaxed);
                if started.elapsed() < MIN_HEALTHY_LIFETIME {
                    failures += 1;
                } else {
                    failures = 0;
                    continue;
                }
            }
        }
        if !back_off(shared, failures, &mut courier) {
            break;
        }
    }
    slot.set_status(Status::Stopped);
}

/// Spawns a worker and waits for its hello.
fn start<H: Hooks>(
    shared: &Shared<H>,
    slot: &Slot,
) -> Result<(WorkerProcess, Arc<Connection>, FrameDecoder, String), StartFailure> {
    let config = &shared.config;
    slot.set_status(Status::Starting);
    let mut process = spawn_worker(config, &shared.hooks).map_err(|e| StartFailure {
        message: format!("could not start {:?}: {e}", config.python),
        definitive: matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied),
    })?;
    *slot.process.lock() = Some(process.os_pid);
    match handshake(shared, &process) {
        Ok((decoder, python)) => {
            let conn = Arc::new(Connection {
                incarnation: INCARNATIONS.fetch_add(1, Ordering::Relaxed),
                os_pid: process.os_pid,
                socket: process.socket.try_clone().map_err(|e| StartFailure {
                    message: format!("socket: {e}"),
                    definitive: false,
                })?,
                write_lock: Mutex::new(()),
                in_flight: AtomicUsize::new(0),
                dead: AtomicBool::new(false),
                writer_waiting: AtomicBool::new(false),
            });
            Ok((process, conn, decoder, python))
        }
        Err(problem) => {
            slot.kill_process();
            let exit = reap(slot, &mut process.child, Duration::from_secs(1));
            // Let the stderr forwarder catch the interpreter's last words.
            std::thread::sleep(Duration::from_millis(50));
            let tail: Vec<String> = process.stderr_tail.lock().iter().cloned().collect();
            let mut message = format!(
                "{} -m snakebridge_worker {problem} ({exit})",
                config.python
            );
            if !tail.is_empty() {
                message.push_str(": ");
                message.push_str(&tail.join("\n"));
            }
            Err(StartFailure {
                message,
                definitive: false,
            })
        }
    }
}

fn handshake<H: Hooks>(shared: &Shared<H>, process: &WorkerProcess) -> Result<(FrameDecoder, String), String> {
    let deadline = Instant::now() + shared.config.start_timeout;
    let mut decoder = FrameDecoder::default();
    let mut socket = &process.socket;
    loop {
        match decoder.next_frame() {
            Ok(Some(body)) => {
                return match Message::decode(body) {
                    Ok(Message::Hello { version, python, .. }) if version == PROTOCOL_VERSION => Ok((decoder, python)),
                    Ok(Message::Hello { version, .. }) => Err(format!(
                        "speaks protocol version {version}, expected {PROTOCOL_VERSION}"
                    )),
                    Ok(other) => Err(format!("sent {:?} before hello", other.header().kind)),
                    Err(e) => Err(format!("sent a malformed hello: {e}")),
                };
            }
            Ok(None) => {}
            Err(e) => return Err(format!("sent a malformed frame: {e}")),
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(format!("did not start within {:?}", shared.config.start_timeout));
        }
        if shared.stopping.load(Ordering::Acquire) {
            return Err("was stopped while starting".to_owned());
        }
        let wait = (deadline - now).min(Duration::from_millis(100));
        match socket::wait_readable(process.socket.as_raw_fd(), wait) {
            Ok(false) => continue,
            Ok(true) => {}
            Err(e) => return Err(format!("socket: {e}")),
        }
        match decoder.fill_from(&mut socket) {
            Ok(0) => return Err("exited before it was ready".to_owned()),
            Ok(_) => {}
            Err(e) => return Err(format!("socket: {e}")),
        }
    }
}

/// Reads and routes replies until the worker's socket closes. Err means the
/// worker broke the protocol.
fn read_replies<H: Hooks>(
    shared: &Shared<H>,
    slot: &Slot,
    conn: &Connection,
    mut decoder: FrameDecoder,
    courier: &mut H::Courier,
) -> Result<(), String> {
    let mut socket = &conn.socket;
    loop {
        while let Some(body) = decoder.next_frame().map_err(|e| format!("worker sent a bad frame: {e}"))? {
            route_reply(shared, slot, conn, body, courier).map_err(|e| format!("worker sent a bad message: {e}"))?;
        }
        slot.wake_writer(conn);
        match decoder.fill_from(&mut socket) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(format!("socket: {e}")),
        }
    }
}

fn route_reply<H: Hooks>(
    shared: &Shared<H>,
    slot: &Slot,
    conn: &Connection,
    body: &[u8],
    courier: &mut H::Courier,
) -> Result<(), DecodeError> {
    let mut fields = body;
    let header = Header::read(&mut fields)?;
    match header.kind {
        Kind::Ok | Kind::PyError | Kind::Failure => {}
        Kind::Pong => return Ok(()),
        other => return Err(DecodeError::Invalid(format!("unexpected {other:?} message"))),
    }
    let in_flight = conn.in_flight.load(Ordering::Acquire);
    if in_flight == 0 {
        return Err(DecodeError::Invalid(format!("reply to call {} that was never sent", header.id)));
    }
    conn.in_flight.fetch_sub(1, Ordering::AcqRel);
    slot.calls.fetch_add(1, Ordering::Relaxed);
    if header.kind != Kind::Ok {
        slot.errors.fetch_add(1, Ordering::Relaxed);
    }
    let outcome = match header.kind {
        Kind::Ok => Outcome::Ok(fields),
        _ => match Message::decode(body)? {
            Message::PyError {
                exc_type,
                exc_module,
                message,
                traceback,
                ..
            } => Outcome::PythonError(PythonError {
                exc_type,
                exc_module,
                message,
                traceback,
            }),
            Message::Failure { reason, message, .. } => {
                let reason = Reason::from_worker(&reason)
                    .ok_or_else(|| DecodeError::Invalid(format!("unknown failure reason {reason:?}")))?;
                Outcome::Failed(Failure::new(reason, message))
            }
            _ => unreachable!("kind checked above"),
        },
    };
    // No entry: the call was cancelled and its reply is dropped.
    let Some(call) = shared.table.get(header.id) else {
        return Ok(());
    };
    if !call.claim_reply() {
        return Ok(());
    }
    let delivered = shared.hooks.deliver(courier, &call.caller, outcome);
    shared.table.remove(header.id);
    delivered
}

/// Waits for the worker to exit, killing it after `timeout`.
fn reap(slot: &Slot, child: &mut Child, timeout: Duration) -> ExitInfo {
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Ok(None) => {
                slot.kill_process();
                break child.wait().ok();
            }
            Err(_) => break None,
        }
    };
    // The pid is only cleared here, after the wait, while the zombie still
    // held it; see `Slot::process`.
    *slot.process.lock() = None;
    match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => ExitInfo::Status(code),
            (None, Some(sig)) => ExitInfo::Signal(sig),
            _ => ExitInfo::Status(-1),
        },
        None => ExitInfo::Status(-1),
    }
}

fn fail_sent_calls<H: Hooks>(
    shared: &Shared<H>,
    conn: &Connection,
    exit: ExitInfo,
    problem: Option<String>,
    courier: &mut H::Courier,
) {
    for call in shared.table.claim_sent_to(conn.incarnation) {
        let message = match &problem {
            Some(p) => format!("Python worker {} was replaced: {p}", conn.os_pid),
            None => format!("Python worker {} exited ({exit}) while running the call", conn.os_pid),
        };
        let failure = Failure {
            reason: Reason::WorkerExited,
            message,
            os_pid: Some(conn.os_pid),
            exit: Some(exit),
        };
        let _ = shared.hooks.deliver(courier, &call.caller, Outcome::Failed(failure));
        shared.table.remove(call.id);
    }
}

/// Sleeps before the next start attempt. While the whole pool is
/// unavailable, queued calls are answered with that error instead of waiting.
/// False when the pool is stopping.
fn back_off<H: Hooks>(shared: &Shared<H>, failures: u32, courier: &mut H::Courier) -> bool {
    let exp = BACKOFF_BASE.saturating_mul(1 << failures.saturating_sub(1).min(10));
    let delay = exp.min(BACKOFF_MAX);
    let deadline = Instant::now() + jitter(delay);
    loop {
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        if shared.is_unavailable() {
            select! {
                recv(shared.stop_rx) -> _ => return false,
                recv(shared.queue_rx) -> job => {
                    if let Ok(job) = job {
                        if shared.is_unavailable() {
                            shared.fail_job(courier, job, shared.unavailable_failure());
                        } else {
                            shared.requeue(courier, job);
                        }
                    }
                }
                default(deadline - now) => return true,
            }
        } else {
            match shared.stop_rx.recv_timeout((deadline - now).min(Duration::from_millis(50))) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => return false,
            }
        }
    }
}

/// Spreads restarts of many workers so they don't start in lockstep.
fn jitter(delay: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    let spread = delay.as_millis() as u64 / 4 + 1;
    delay + Duration::from_millis(nanos % spread)
}

fn write_loop<H: Hooks>(shared: &Shared<H>, slot: &Slot) {
    let mut courier = shared.hooks.courier();
    let window = shared.config.window.max(1);
    let mut batch: Vec<Job<H::Caller>> = Vec::with_capacity(window);
    while let Some(conn) = slot.wait_ready(shared) {
        if !slot.wait_window(&conn, window) {
            continue;
        }
        let job = select! {
            recv(shared.queue_rx) -> job => match job {
                Ok(job) => job,
                Err(_) => return,
            },
            recv(shared.stop_rx) -> _ => return,
        };
        // Callers' direct writes may have filled the window while this
        // thread was waiting for work.
        if shared.stopping.load(Ordering::Acquire) || !slot.wait_window(&conn, window) {
            shared.requeue(&mut courier, job);
            continue;
        }
        batch.push(job);
        let room = window.saturating_sub(conn.in_flight.load(Ordering::Acquire));
        let mut bytes = batch[0].frame.len();
        while batch.len() < room && bytes < MAX_BATCH_BYTES {
            match shared.queue_rx.try_recv() {
                Ok(job) => {
                    bytes += job.frame.len();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        write_batch(shared, &conn, &mut batch, &mut courier);
    }
}

/// Writes a batch of calls with one `sendmsg` (more only for partial writes).
fn write_batch<H: Hooks>(
    shared: &Shared<H>,
    conn: &Connection,
    batch: &mut Vec<Job<H::Caller>>,
    courier: &mut H::Courier,
) {
    if conn.is_dead() {
        for job in batch.drain(..) {
            shared.requeue(courier, job);
        }
        return;
    }
    let _guard = conn.write_lock.lock();
    batch.retain(|job| job.call.mark_sent(conn.incarnation));
    conn.in_flight.fetch_add(batch.len(), Ordering::AcqRel);
    let mut slices: Vec<IoSlice<'_>> = batch.iter().map(|j| IoSlice::new(&j.frame)).collect();
    let result = socket::send_all(conn.fd(), &mut slices);
    drop(slices);
    if let Err((_, written)) = result {
        // Frames wholly written may have started: they fail with the
        // worker. The rest never reached it and go back to the queue.
        let mut offset = 0;
        for job in batch.drain(..) {
            offset += job.frame.len();
            if offset > written && job.call.mark_unsent() {
                conn.in_flight.fetch_sub(1, Ordering::AcqRel);
                shared.requeue(courier, job);
            }
        }
    }
    batch.clear();
}
