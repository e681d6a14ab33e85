//! A worker slot's supervisor thread: spawns the worker, does the
//! handshake, hands the socket to a reader, reaps the process and restarts
//! it with backoff. The slot's state is in `slot.rs`.

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::process::Child;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, RecvTimeoutError};
use snakebridge_protocol::{Message, HEADER_LEN, PROTOCOL_VERSION};

use crate::connection::Connection;
use crate::exit::{self, ExitNotice};
use crate::events::{ExitInfo, Failure, Reason, WorkerEvent};
use crate::hooks::{Hooks, Outcome};
use crate::shared::{stale_failure, Shared};
use crate::slot::{Slot, Status};
use crate::socket;
use crate::reader::{Attach, Ended, Reader};
use crate::writer;
use crate::spawn::{spawn_worker, WorkerProcess};

/// Consecutive failed starts after which a slot reports Python unavailable.
const MAX_START_FAILURES: u32 = 3;
/// A worker that dies sooner than this after starting counts as a failed start.
const MIN_HEALTHY_LIFETIME: Duration = Duration::from_secs(1);
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A hello is a few dozen bytes; a larger first frame is not one, except
/// the traceback of a failed init, which is cut to this size by the worker.
const MAX_HELLO_LEN: usize = 64 * 1024;
/// The reason of the failure a worker sends instead of hello when its
/// per-worker init raised; the message is the traceback.
const INIT_FAILED: &str = "init_failed";

pub(crate) fn start_threads<H: Attach>(shared: Arc<Shared<H>>, slot: Arc<Slot>) -> io::Result<Vec<JoinHandle<()>>> {
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

fn supervise<H: Attach>(shared: &Arc<Shared<H>>, slot: &Arc<Slot>) {
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
            Ok((mut process, conn, notice, python)) => {
                *slot.last_error.lock() = None;
                slot.gave_up.store(false, Ordering::Release);
                *slot.connection.write() = Some(conn.clone());
                slot.set_status(Status::Ready);
                shared.hooks.event(&mut courier, conn.os_pid, WorkerEvent::Started { python });
                let started = Instant::now();

                let (done_tx, done_rx) = crossbeam_channel::bounded(1);
                let reader = Reader::new(shared.clone(), slot.clone(), conn.clone(), notice, done_tx);
                if let Err(reader) = shared.hooks.attach(&mut courier, reader) {
                    reader.run(&mut courier);
                }
                let ended = wait_for_reader(shared, conn.os_pid, &done_rx);

                conn.mark_dead();
                *slot.connection.write() = None;
                slot.wake_writer();
                if !shared.stopping.load(Ordering::Acquire) {
                    slot.set_status(Status::Restarting);
                }
                let problem = match &ended {
                    Ended::Broke(problem) | Ended::Lost(problem) => {
                        // A worker that speaks garbage, or that nothing reads
                        // any more, cannot be trusted with another call.
                        slot.kill_process();
                        *slot.last_error.lock() = Some(problem.clone());
                        Some(problem.clone())
                    }
                    Ended::Closed => conn.kill_reason.lock().clone(),
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
                    Ended::Broke(_) => true,
                    Ended::Lost(_) => false,
                    Ended::Closed => conn.kill_reason.lock().is_none() && died_of_itself(exit),
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
fn start<H: Attach>(
    shared: &Shared<H>,
    slot: &Slot,
) -> Result<(WorkerProcess, Arc<Connection>, Arc<ExitNotice>, String), StartFailure> {
    let config = &shared.config;
    slot.set_status(Status::Starting);
    if let Some(message) = &config.start_error {
        return Err(StartFailure {
            message: message.clone(),
            definitive: true,
            interpreter: true,
        });
    }
    let mut process = spawn_worker(config, &shared.logs).map_err(|e| StartFailure {
        message: format!("could not start {:?}: {e}", config.python),
        definitive: matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied),
        interpreter: true,
    })?;
    *slot.process.lock() = Some(process.os_pid);
    let notice = Arc::new(ExitNotice::default());
    let watched = process
        .socket
        .try_clone()
        .and_then(|socket| exit::shut_down_on_exit(process.os_pid, socket, notice.clone()));
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
        Ok(python) => {
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
            if let Some(arenas) = &process.arenas {
                conn.share(arenas.clone());
            }
            Ok((process, conn, notice, python))
        }
        Err((problem, cause)) => {
            // A worker whose init failed exits by itself: its own exit
            // status says more than the kill would.
            if !matches!(cause, Cause::Init(_)) {
                slot.kill_process();
            }
            let exit = reap(slot, &mut process.child, Duration::from_secs(1));
            let killed = matches!(cause, Cause::Exited) && !died_of_itself(exit);
            let interpreter = matches!(cause, Cause::Interpreter | Cause::Init(_)) || (matches!(cause, Cause::Exited) && !killed);
            // Let the stderr forwarder catch the interpreter's last words.
            std::thread::sleep(Duration::from_millis(50));
            let tail: Vec<String> = process.stderr_tail.lock().iter().cloned().collect();
            let mut message = format!(
                "{} -m snakebridge_worker {problem} ({exit})",
                config.python
            );
            if let Cause::Init(traceback) = &cause {
                message.push_str(":\n");
                message.push_str(traceback.trim_end());
            }
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
    /// The worker's init raised; it sent this traceback instead of hello.
    Init(String),
    Host,
}

/// Reads the worker's hello, and not a byte more: whoever reads the socket
/// next (see `reader`) must start at a frame boundary.
fn handshake<H: Hooks>(shared: &Shared<H>, process: &WorkerProcess) -> Result<String, (String, Cause)> {
    let deadline = Instant::now() + shared.config.start_timeout;
    let mut header = [0u8; HEADER_LEN];
    read_exact_by(shared, process, deadline, &mut header)?;
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_HELLO_LEN {
        return Err((format!("sent a {len}-byte frame before its hello"), Cause::Interpreter));
    }
    let mut body = vec![0u8; len];
    read_exact_by(shared, process, deadline, &mut body)?;
    let refused = match Message::decode(&body) {
        Ok(Message::Hello { version, python, .. }) if version == PROTOCOL_VERSION => return Ok(python),
        Ok(Message::Hello { version, .. }) => format!("speaks protocol version {version}, expected {PROTOCOL_VERSION}"),
        Ok(Message::Failure { reason, message, .. }) if reason == INIT_FAILED => {
            return Err(("failed its init".to_owned(), Cause::Init(message)))
        }
        Ok(other) => format!("sent {:?} before hello", other.header().kind),
        Err(e) => format!("sent a malformed hello: {e}"),
    };
    Err((refused, Cause::Interpreter))
}

/// Fills `buf` from the worker's socket by `deadline`.
fn read_exact_by<H: Hooks>(
    shared: &Shared<H>,
    process: &WorkerProcess,
    deadline: Instant,
    buf: &mut [u8],
) -> Result<(), (String, Cause)> {
    let mut filled = 0;
    while filled < buf.len() {
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
        match (&process.socket).read(&mut buf[filled..]) {
            Ok(0) => return Err(("exited before it was ready".to_owned(), Cause::Exited)),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                return Err(("exited before it was ready".to_owned(), Cause::Exited))
            }
            Err(e) => return Err((format!("socket: {e}"), Cause::Host)),
        }
    }
    Ok(())
}

/// Waits until the worker's reader has ended. Should its embedder never end
/// it, the worker's exit bounds the wait: the reader is given up on
/// `stop_timeout` after it.
fn wait_for_reader<H: Hooks>(shared: &Shared<H>, os_pid: u32, done: &Receiver<Ended>) -> Ended {
    let mut exited_at: Option<Instant> = None;
    loop {
        match done.recv_timeout(Duration::from_millis(100)) {
            Ok(ended) => return ended,
            Err(RecvTimeoutError::Disconnected) => return Ended::Lost("the reader of its socket went away".into()),
            Err(RecvTimeoutError::Timeout) => {}
        }
        match exited_at {
            Some(at) if at.elapsed() >= shared.config.stop_timeout => {
                return Ended::Lost("nothing read its socket to the end after it exited".into())
            }
            Some(_) => {}
            None if exit::wait(os_pid, false).unwrap_or(true) => exited_at = Some(Instant::now()),
            None => {}
        }
    }
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
/// replaces it does not have their objects. Calls that only followed their
/// caller's objects go back to the pool's queue.
fn fail_pinned_calls<H: Hooks>(shared: &Shared<H>, slot: &Slot, courier: &mut H::Courier) {
    let pinned = &shared.pinned[slot.index()];
    for job in pinned.rx.try_iter() {
        pinned.pending.fetch_sub(1, Ordering::AcqRel);
        if job.soft {
            shared.requeue(courier, job);
        } else {
            shared.fail_job(courier, job, stale_failure());
        }
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
