//! One worker slot and its supervisor thread: spawn, handshake, read and
//! route replies, reap, restart with backoff. (Its writer thread is in
//! `writer.rs`.)

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, RecvTimeoutError, Sender};
use parking_lot::{Condvar, Mutex, RwLock};
use snakebridge_protocol::{
    handle_ids, DecodeError, FrameDecoder, Header, Kind, Message, OUTPUT_LOGGING, OUTPUT_STDERR, OUTPUT_STDOUT,
    PROTOCOL_VERSION,
};

use crate::connection::{Connection, Control};
use crate::exit;
use crate::hooks::{ExitInfo, Failure, Hooks, Level, Outcome, PythonError, Reason, Stream, WorkerEvent};
use crate::log::Entry;
use crate::object::Origin;
use crate::pool::{stale_failure, Shared};
use crate::socket;
use crate::writer;
use crate::spawn::{spawn_worker, WorkerProcess};
use crate::stats::{rss_bytes, WorkerStats};

/// Consecutive failed starts after which a slot reports Python unavailable.
const MAX_START_FAILURES: u32 = 3;
/// A worker that dies sooner than this after starting counts as a failed start.
const MIN_HEALTHY_LIFETIME: Duration = Duration::from_secs(1);
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

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
    /// Frames for the writer thread to send (cancel, ping).
    pub control_tx: Sender<Control>,
    pub control_rx: Receiver<Control>,
    /// Wakes a writer waiting for room in its worker's window.
    wake_tx: Sender<()>,
    pub wake_rx: Receiver<()>,
    pub writer_waiting: AtomicBool,
    last_error: Mutex<Option<String>>,
    gave_up: AtomicBool,
    calls: AtomicU64,
    errors: AtomicU64,
    restarts: AtomicU64,
}

impl Slot {
    pub fn new(index: usize) -> Self {
        let (control_tx, control_rx) = crossbeam_channel::unbounded();
        let (wake_tx, wake_rx) = crossbeam_channel::bounded(1);
        Slot {
            index,
            status: AtomicU8::new(Status::Starting as u8),
            status_lock: Mutex::new(()),
            status_cv: Condvar::new(),
            connection: RwLock::new(None),
            process: Mutex::new(None),
            control_tx,
            control_rx,
            wake_tx,
            wake_rx,
            writer_waiting: AtomicBool::new(false),
            last_error: Mutex::new(None),
            gave_up: AtomicBool::new(false),
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
        }
    }

    /// The connection to a ready worker, if there is one.
    pub fn connection(&self) -> Option<Arc<Connection>> {
        self.connection.read().clone()
    }

    /// True once the slot has given up starting Python, until a start
    /// succeeds again (retries go on meanwhile).
    pub fn is_unavailable(&self) -> bool {
        self.gave_up.load(Ordering::Acquire)
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
            conn.close();
        }
        let _guard = self.status_lock.lock();
        self.status_cv.notify_all();
    }

    /// Signals the worker process `os_pid` if it is still this slot's (an
    /// exited one keeps its pid until reaped, which clears it under the same
    /// lock), so a recycled pid is never hit.
    pub fn signal_process(&self, os_pid: u32, signal: libc::c_int) {
        let process = self.process.lock();
        if *process == Some(os_pid) {
            unsafe {
                libc::kill(os_pid as libc::pid_t, signal);
            }
        }
    }

    /// Kills the worker and every process in its process group: what it
    /// forked dies with it, unless it left the group (`setsid`, `setpgid`).
    pub fn kill_process(&self) {
        if let Some(pid) = *self.process.lock() {
            // SAFETY: kill has no memory effects. The worker leads its own
            // group (see `spawn_worker`) and its pid is not recycled while
            // this lock holds it (see `reap`).
            unsafe {
                libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
            }
        }
    }

    pub fn stats(&self) -> WorkerStats {
        let os_pid = self.os_pid();
        WorkerStats {
            os_pid,
            state: self.status().name(),
            in_flight: self.connection().map_or(0, |c| c.unanswered()),
            cancelling: self.connection().map_or(0, |c| c.cancelling()),
            calls: self.calls.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            restarts: self.restarts.load(Ordering::Relaxed),
            objects: self.connection().map_or(0, |c| c.objects.load(Ordering::Relaxed)),
            rss: os_pid.map_or(0, rss_bytes),
        }
    }

    /// Blocks the writer until the slot has a ready worker; None once the
    /// pool stops.
    pub fn wait_ready<H: Hooks>(&self, shared: &Shared<H>) -> Option<Arc<Connection>> {
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

    pub fn index(&self) -> usize {
        self.index
    }

    /// Wakes the writer whatever it waits for.
    pub fn wake_writer_now(&self) {
        let _ = self.wake_tx.try_send(());
    }

    /// Wakes the writer if it waits for room in the window.
    pub fn wake_writer(&self) {
        if self.writer_waiting.load(Ordering::SeqCst) {
            let _ = self.wake_tx.try_send(());
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
        .spawn(move || writer::write_loop(&shared, &slot))?;
    Ok(vec![supervisor, writer])
}

/// Why a worker never became ready.
struct StartFailure {
    message: String,
    /// The interpreter could not even be executed: retrying soon won't help.
    definitive: bool,
    /// The failure came from the interpreter (it exited with a status or
    /// crashed, hung, or spoke nonsense), not from outside it (a kill by
    /// another process, the OOM killer, a socket error): only these count
    /// toward giving up on Python.
    interpreter: bool,
}

/// Whether a worker's death is its own doing: an exit status, or a signal
/// the process raises on itself when it crashes. SIGKILL, SIGTERM and the
/// like come from outside (a user, the OOM killer, a chaos test) and say
/// nothing about whether Python works.
fn died_of_itself(exit: ExitInfo) -> bool {
    match exit {
        ExitInfo::Status(_) => true,
        ExitInfo::Signal(signal) => matches!(
            signal,
            libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE | libc::SIGABRT | libc::SIGSYS | libc::SIGTRAP
        ),
    }
}

fn supervise<H: Hooks>(shared: &Shared<H>, slot: &Arc<Slot>) {
    let mut courier = shared.hooks.courier();
    let mut failures: u32 = 0;
    while !shared.stopping.load(Ordering::Acquire) {
        match start(shared, slot) {
            Err(failure) => {
                if failure.interpreter {
                    failures += 1;
                }
                shared.hooks.event(
                    &mut courier,
                    0,
                    WorkerEvent::StartFailed {
                        message: failure.message.clone(),
                    },
                );
                shared
                    .breaker
                    .failure(|| format!("a Python worker failed to start: {}", failure.message));
                *slot.last_error.lock() = Some(failure.message);
                // Failures so far (early deaths included) make a slot give
                // up only with a failure of the interpreter's own.
                if failure.definitive || (failure.interpreter && failures >= MAX_START_FAILURES) {
                    slot.gave_up.store(true, Ordering::Release);
                    slot.set_status(Status::Unavailable);
                } else if slot.is_unavailable() {
                    slot.set_status(Status::Unavailable);
                } else {
                    slot.set_status(Status::Restarting);
                }
            }
            Ok((mut process, conn, decoder, python)) => {
                *slot.last_error.lock() = None;
                slot.gave_up.store(false, Ordering::Release);
                *slot.connection.write() = Some(conn.clone());
                slot.set_status(Status::Ready);
                shared.hooks.event(&mut courier, conn.os_pid, WorkerEvent::Started { python });
                let started = Instant::now();

                let ended = read_replies(shared, slot, &conn, decoder, &mut courier);

                conn.mark_dead();
                *slot.connection.write() = None;
                slot.wake_writer();
                if !shared.stopping.load(Ordering::Acquire) {
                    slot.set_status(Status::Restarting);
                }
                let problem = match &ended {
                    Err(problem) => {
                        // A worker that speaks garbage cannot be trusted with
                        // another call.
                        slot.kill_process();
                        *slot.last_error.lock() = Some(problem.clone());
                        Some(problem.clone())
                    }
                    Ok(()) => conn.kill_reason.lock().clone(),
                };
                let exit = reap(slot, &mut process.child, shared.config.stop_timeout);
                fail_sent_calls(shared, &conn, exit, problem, &mut courier);
                fail_pinned_calls(shared, slot, &mut courier);
                shared.hooks.event(&mut courier, conn.os_pid, WorkerEvent::Exited(exit));
                if shared.stopping.load(Ordering::Acquire) {
                    break;
                }
                slot.restarts.fetch_add(1, Ordering::Relaxed);
                // A recycled worker exits because it was asked to; one the
                // watchdog killed, or that was killed from outside, says
                // nothing about Python.
                let own_fault = match ended {
                    Err(_) => true,
                    Ok(()) => conn.kill_reason.lock().is_none() && died_of_itself(exit),
                };
                if started.elapsed() < MIN_HEALTHY_LIFETIME && !conn.is_draining() && own_fault {
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
    let mut process = spawn_worker(config, &shared.logs).map_err(|e| StartFailure {
        message: format!("could not start {:?}: {e}", config.python),
        definitive: matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied),
        interpreter: true,
    })?;
    *slot.process.lock() = Some(process.os_pid);
    let watched = process.socket.try_clone().and_then(|socket| exit::shut_down_on_exit(process.os_pid, socket));
    if let Err(e) = watched {
        slot.kill_process();
        reap(slot, &mut process.child, Duration::from_secs(1));
        return Err(StartFailure {
            message: format!("could not watch the worker process: {e}"),
            definitive: false,
            interpreter: false,
        });
    }
    match handshake(shared, &process) {
        Ok((decoder, python)) => {
            let socket = process.socket.try_clone().map_err(|e| StartFailure {
                message: format!("socket: {e}"),
                definitive: false,
                interpreter: false,
            })?;
            let conn = Connection::new(
                process.os_pid,
                socket,
                slot.control_tx.clone(),
                config.cancel_grace,
                shared.breaker.clone(),
            );
            Ok((process, conn, decoder, python))
        }
        Err((problem, cause)) => {
            slot.kill_process();
            let exit = reap(slot, &mut process.child, Duration::from_secs(1));
            let killed = matches!(cause, Cause::Exited) && !died_of_itself(exit);
            let interpreter = matches!(cause, Cause::Interpreter) || (matches!(cause, Cause::Exited) && !killed);
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
            if killed {
                message.push_str(" (killed from outside the interpreter: retrying)");
            }
            Err(StartFailure {
                message,
                definitive: false,
                interpreter,
            })
        }
    }
}

/// Who a failed handshake is down to.
enum Cause {
    /// The process exited: its exit says whose doing that was.
    Exited,
    Interpreter,
    Host,
}

fn handshake<H: Hooks>(shared: &Shared<H>, process: &WorkerProcess) -> Result<(FrameDecoder, String), (String, Cause)> {
    let deadline = Instant::now() + shared.config.start_timeout;
    let mut decoder = FrameDecoder::default();
    let mut socket = &process.socket;
    loop {
        match decoder.next_frame() {
            Ok(Some(body)) => {
                let refused = match Message::decode(body) {
                    Ok(Message::Hello { version, python, .. }) if version == PROTOCOL_VERSION => return Ok((decoder, python)),
                    Ok(Message::Hello { version, .. }) => format!("speaks protocol version {version}, expected {PROTOCOL_VERSION}"),
                    Ok(other) => format!("sent {:?} before hello", other.header().kind),
                    Err(e) => format!("sent a malformed hello: {e}"),
                };
                return Err((refused, Cause::Interpreter));
            }
            Ok(None) => {}
            Err(e) => return Err((format!("sent a malformed frame: {e}"), Cause::Interpreter)),
        }
        let now = Instant::now();
        if now >= deadline {
            return Err((format!("did not start within {:?}", shared.config.start_timeout), Cause::Interpreter));
        }
        if shared.stopping.load(Ordering::Acquire) {
            return Err(("was stopped while starting".to_owned(), Cause::Host));
        }
        let wait = (deadline - now).min(Duration::from_millis(100));
        match socket::wait_readable(process.socket.as_raw_fd(), wait) {
            Ok(false) => continue,
            Ok(true) => {}
            Err(e) => return Err((format!("socket: {e}"), Cause::Host)),
        }
        match decoder.fill_from(&mut socket) {
            Ok(0) => return Err(("exited before it was ready".to_owned(), Cause::Exited)),
            Ok(_) => {}
            Err(e) => return Err((format!("socket: {e}"), Cause::Host)),
        }
    }
}

/// Reads and routes replies until the worker's socket closes. Err means the
/// worker broke the protocol.
fn read_replies<H: Hooks>(
    shared: &Shared<H>,
    slot: &Arc<Slot>,
    conn: &Arc<Connection>,
    mut decoder: FrameDecoder,
    courier: &mut H::Courier,
) -> Result<(), String> {
    let mut socket = conn.socket();
    loop {
        while let Some(body) = decoder.next_frame().map_err(|e| format!("worker sent a bad frame: {e}"))? {
            route_reply(shared, slot, conn, body, courier).map_err(|e| format!("worker sent a bad message: {e}"))?;
        }
        slot.wake_writer();
        match decoder.fill_from(&mut socket) {
            // A worker killed with replies unread by it resets the socket:
            // its exit, not the reset, says what happened.
            Ok(0) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(format!("socket: {e}")),
        }
    }
}

fn route_reply<H: Hooks>(
    shared: &Shared<H>,
    slot: &Arc<Slot>,
    conn: &Arc<Connection>,
    body: &[u8],
    courier: &mut H::Courier,
) -> Result<(), DecodeError> {
    let mut fields = body;
    let header = Header::read(&mut fields)?;
    let origin = Origin {
        pool: shared.id,
        slot,
        conn,
    };
    match header.kind {
        Kind::Ok | Kind::PyError | Kind::Failure => {}
        Kind::Items => return route_items(shared, &origin, header.id, fields, courier),
        Kind::Started => {
            if !conn.detach(header.id) {
                return Err(DecodeError::Invalid(format!("call {} started, but none was sent", header.id)));
            }
            return Ok(());
        }
        Kind::Pong => {
            conn.pong();
            return Ok(());
        }
        Kind::Output => return route_output(shared, conn, body),
        other => return Err(DecodeError::Invalid(format!("unexpected {other:?} message"))),
    }
    if !conn.finish(header.id) {
        return Err(DecodeError::Invalid(format!("reply to call {} that was never sent", header.id)));
    }
    let replies = conn.replies.fetch_add(1, Ordering::Relaxed) + 1;
    if shared.config.max_calls == Some(replies) {
        conn.drain();
    }
    conn.heard();
    slot.calls.fetch_add(1, Ordering::Relaxed);
    if header.kind != Kind::Ok {
        slot.errors.fetch_add(1, Ordering::Relaxed);
    }
    if header.kind != Kind::Failure {
        shared.breaker.success();
    }
    let outcome = match header.kind {
        Kind::Ok => Outcome::Ok(fields, &origin),
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
    if let Some(call) = shared.table.get(header.id) {
        if call.written_to() != conn.incarnation {
            return Err(DecodeError::Invalid(format!("reply to call {} that was not sent to it", header.id)));
        }
        if call.claim_reply() {
            // Counted only once claimed: a caller's own timeout that won the
            // race was counted by its cancel.
            if let Outcome::Failed(Failure { reason: Reason::Timeout, .. }) = outcome {
                shared
                    .breaker
                    .failure(|| format!("call {} passed its deadline on Python worker {}", header.id, conn.os_pid));
            }
            let delivered = shared.hooks.deliver(courier, &call.caller, outcome);
            shared.table.remove(header.id);
            return delivered;
        }
    }
    // Nothing else ends a sent call while its worker runs: it was cancelled
    // (and is gone from the table, or about to be). The reply is dropped.
    conn.cancelled_call_answered(header.id);
    release_unread(&origin, &outcome)
}

/// Delivers a stream's next items, unless it was cancelled.
fn route_items<H: Hooks>(
    shared: &Shared<H>,
    origin: &Origin<'_>,
    id: u64,
    fields: &[u8],
    courier: &mut H::Courier,
) -> Result<(), DecodeError> {
    origin.conn.heard();
    let outcome = Outcome::Items(fields, origin);
    let Some(call) = shared.table.get(id) else {
        return release_unread(origin, &outcome);
    };
    if call.written_to() != origin.conn.incarnation {
        return Err(DecodeError::Invalid(format!("items for call {id} that was not sent to it")));
    }
    if !call.claim_items() {
        return release_unread(origin, &outcome);
    }
    let delivered = shared.hooks.deliver(courier, &call.caller, outcome);
    call.items_delivered();
    if delivered.is_err() && call.claim_reply() {
        // The embedder answered the stream with the error already; the
        // worker is replaced without answering it again.
        shared.table.remove(id);
    }
    delivered
}

/// Queues a line the worker's Python code wrote, with the call that wrote
/// it if that call's caller still waits.
fn route_output<H: Hooks>(shared: &Shared<H>, conn: &Connection, body: &[u8]) -> Result<(), DecodeError> {
    conn.heard();
    let Message::Output {
        id,
        source,
        level,
        text,
        module,
        function,
    } = Message::decode(body)?
    else {
        unreachable!("kind checked by the caller")
    };
    let stream = match source {
        OUTPUT_STDOUT => Stream::Stdout,
        OUTPUT_STDERR => Stream::Stderr,
        OUTPUT_LOGGING => Stream::Logging,
        other => return Err(DecodeError::Invalid(format!("unknown output source {other}"))),
    };
    let level = match stream {
        Stream::Logging => Level::from_python(level),
        _ => Level::of_stream(stream),
    };
    // A worker names only its own calls.
    let call = (id != 0)
        .then(|| shared.table.get(id))
        .flatten()
        .filter(|call| call.written_to() == conn.incarnation);
    shared.logs.push(Entry {
        os_pid: conn.os_pid,
        stream,
        level,
        text: text.into_bytes(),
        call,
        module,
        function,
    });
    Ok(())
}

/// Releases the objects in a result nobody will read (its call was
/// cancelled), which would otherwise stay in the worker for good.
fn release_unread(origin: &Origin<'_>, outcome: &Outcome<'_>) -> Result<(), DecodeError> {
    let (Outcome::Ok(value, _) | Outcome::Items(value, _)) = outcome else {
        return Ok(());
    };
    let ids = handle_ids(value)?;
    if !ids.is_empty() {
        origin.conn.releases.lock().extend(ids);
        origin.slot.wake_writer_now();
    }
    Ok(())
}

/// Waits for the worker to exit, killing it after `timeout`, then kills
/// what is left of its process group and reaps it.
fn reap(slot: &Slot, child: &mut Child, timeout: Duration) -> ExitInfo {
    let deadline = Instant::now() + timeout;
    let os_pid = child.id();
    loop {
        match exit::wait(os_pid, false) {
            Ok(false) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Ok(false) => {
                slot.kill_process();
                let _ = exit::wait(os_pid, true);
                break;
            }
            Ok(true) | Err(_) => break,
        }
    }
    // The dead worker still holds its pid, and so its group's id: processes
    // it forked go now, without outliving it or holding its socket open.
    slot.kill_process();
    // The pid is cleared before the zombie is reaped; see `Slot::process`.
    *slot.process.lock() = None;
    let status = child.wait().ok();
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
    let calls = shared.table.claim_sent_to(conn.incarnation);
    // One death is one failure for the circuit breaker, however many calls
    // were pipelined on the worker.
    if !calls.is_empty() && !shared.stopping.load(Ordering::Acquire) {
        shared
            .breaker
            .failure(|| format!("Python worker {} exited ({exit}) with calls running", conn.os_pid));
    }
    for call in calls {
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

/// Fails the calls pinned to this slot's worker that is gone: whatever
/// replaces it does not have their objects.
fn fail_pinned_calls<H: Hooks>(shared: &Shared<H>, slot: &Slot, courier: &mut H::Courier) {
    let pinned = &shared.pinned[slot.index()];
    for job in pinned.rx.try_iter() {
        pinned.pending.fetch_sub(1, Ordering::AcqRel);
        shared.fail_job(courier, job, stale_failure());
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
