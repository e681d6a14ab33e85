//! The runtime against real Python worker processes.
//!
//! Needs the installed worker package (`_build/dev/lib/snakebridge/priv/python`, put there by
//! `mix compile`), or a directory named by `SNAKEBRIDGE_WORKER_PATH`.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use snakebridge_protocol::{handle_ids, DecodeError, Message, Target, Value, CALL_STREAM};
use snakebridge_runtime::{
    Attach, Sent,
    Call, CallTable, CancelOutcome, ExitInfo, Failure, Hooks, Level, LogLine, ObjectRef, Outcome, Pool, PoolConfig,
    Reason, Stream, WorkerEvent,
};

use common::worker_path;

#[derive(Debug, Clone, PartialEq)]
enum Reply {
    Ok(Value),
    /// Some of a stream's items.
    Items(Vec<Value>),
    PythonError(String, String),
    Failed(Failure),
}

/// A test's stand-in for a calling process: it is alive while its [`Waiter`] is.
struct Caller {
    /// Its call's id, which log lines report back.
    id: u64,
    replies: Sender<Reply>,
    alive: Weak<()>,
}

/// What a test holds for one call.
struct Waiter {
    replies: Receiver<Reply>,
    _alive: Arc<()>,
}

impl Waiter {
    fn recv_timeout(&self, timeout: Duration) -> Result<Reply, crossbeam_channel::RecvTimeoutError> {
        self.replies.recv_timeout(timeout)
    }
}

/// A line handed to `Hooks::log`.
#[derive(Debug, Clone, PartialEq)]
struct Logged {
    stream: Stream,
    level: Level,
    text: String,
    /// The id of the call whose caller the line names.
    call: Option<u64>,
    module: Option<String>,
    function: Option<String>,
}

/// Replies go to the channel the caller holds; log lines to a shared channel,
/// counts of dropped lines to another; objects in results to a list the test
/// takes them from.
struct TestHooks {
    logs: Sender<Logged>,
    dropped: Sender<u64>,
    objects: Mutex<Vec<Arc<ObjectRef>>>,
}

impl Hooks for TestHooks {
    type Caller = Caller;
    type Courier = ();

    fn courier(&self) {}

    fn deliver(&self, _: &mut (), caller: &Caller, outcome: Outcome<'_>) -> Result<(), DecodeError> {
        let reply = match outcome {
            Outcome::Ok(bytes, origin) | Outcome::Items(bytes, origin) => {
                let ids = handle_ids(bytes)?;
                self.objects.lock().extend(ids.into_iter().map(|id| origin.object(id)));
                match (Value::decode(bytes)?, matches!(outcome, Outcome::Items(..))) {
                    (Value::List(items), true) => Reply::Items(items),
                    (value, _) => Reply::Ok(value),
                }
            }
            Outcome::PythonError(e) => Reply::PythonError(e.exc_type, e.message),
            Outcome::Failed(f) => Reply::Failed(f),
        };
        let _ = caller.replies.send(reply);
        Ok(())
    }

    fn log(&self, _: &mut (), line: LogLine<'_, Caller>) {
        let _ = self.logs.send(Logged {
            stream: line.stream,
            level: line.level,
            text: String::from_utf8_lossy(line.text).into_owned(),
            call: line.caller.map(|caller| caller.id),
            module: line.module.map(str::to_owned),
            function: line.function.map(str::to_owned),
        });
    }

    fn log_dropped(&self, _: &mut (), count: u64) {
        let _ = self.dropped.send(count);
    }

    fn caller_alive(&self, _: &mut (), caller: &Caller) -> bool {
        caller.alive.strong_count() > 0
    }

    fn event(&self, _: &mut (), _os_pid: u32, _event: WorkerEvent) {}
}

impl Attach for TestHooks {}

struct TestPool {
    pool: Pool<TestHooks>,
    table: Arc<CallTable<Caller>>,
    logs: Receiver<Logged>,
    dropped: Receiver<u64>,
    hooks: Arc<TestHooks>,
}

/// How a test call is sent.
#[derive(Default)]
struct Send {
    /// The objects it uses: it goes to their worker.
    objects: Vec<Arc<ObjectRef>>,
    /// A stream, with this window.
    stream: Option<u64>,
    /// Who makes the call, for affinity (0: no one).
    owner: u64,
    /// Sent with `submit_spread`.
    spread: bool,
}

fn start(config: impl FnOnce(&mut PoolConfig)) -> TestPool {
    let mut cfg = PoolConfig::new("python3", worker_path());
    config(&mut cfg);
    let (logs_tx, logs) = crossbeam_channel::unbounded();
    let (dropped_tx, dropped) = crossbeam_channel::unbounded();
    let table = Arc::new(CallTable::default());
    let hooks = Arc::new(TestHooks {
        logs: logs_tx,
        dropped: dropped_tx,
        objects: Mutex::new(Vec::new()),
    });
    let pool = Pool::start("test", cfg, hooks.clone(), table.clone()).unwrap();
    TestPool {
        pool,
        table,
        logs,
        dropped,
        hooks,
    }
}

static IDS: AtomicU64 = AtomicU64::new(1);

impl TestPool {
    fn submit(&self, module: &str, function: &str, args: Vec<Value>) -> (u64, Waiter, Result<Sent, Failure>) {
        self.submit_with(module, function, args, Send::default())
    }

    fn submit_with(&self, module: &str, function: &str, args: Vec<Value>, send: Send) -> (u64, Waiter, Result<Sent, Failure>) {
        let id = IDS.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = crossbeam_channel::unbounded();
        let alive = Arc::new(());
        let call = Call::owned(
            id,
            Caller {
                id,
                replies: tx,
                alive: Arc::downgrade(&alive),
            },
            send.owner,
        );
        let rx = Waiter {
            replies: rx,
            _alive: alive,
        };
        assert!(self.table.insert(call.clone()));
        let mut frame = Vec::new();
        Message::Call {
            id,
            deadline: 0,
            target: Target::Module(module.into()),
            function: Some(function.into()),
            args,
            kwargs: vec![],
            flags: if send.stream.is_some() { CALL_STREAM } else { 0 },
            window: send.stream.unwrap_or(0),
        }
        .write_body(&mut frame)
        .unwrap();
        let len = (frame.len() as u32).to_be_bytes();
        frame.splice(0..0, len);
        let submitted = match send.objects.first() {
            Some(first) => self.pool.submit_pinned(call, frame, first.route(), send.objects),
            None if send.spread => self.pool.submit_spread(call, frame),
            None => self.pool.submit(call, frame),
        };
        (id, rx, submitted)
    }

    /// The objects results delivered since the last take.
    fn take_objects(&self) -> Vec<Arc<ObjectRef>> {
        std::mem::take(&mut *self.hooks.objects.lock())
    }

    /// Calls with `objects` (which `args` name as handles) in their worker.
    fn call_on(&self, objects: &[Arc<ObjectRef>], module: &str, function: &str, args: Vec<Value>) -> Reply {
        let send = Send {
            objects: objects.to_vec(),
            ..Send::default()
        };
        let (_, rx, submitted) = self.submit_with(module, function, args, send);
        if let Err(f) = submitted {
            return Reply::Failed(f);
        }
        rx.recv_timeout(Duration::from_secs(20)).expect("a reply")
    }

    fn call(&self, module: &str, function: &str, args: Vec<Value>) -> Reply {
        let (_, rx, submitted) = self.submit(module, function, args);
        if let Err(f) = submitted {
            return Reply::Failed(f);
        }
        rx.recv_timeout(Duration::from_secs(20)).expect("a reply")
    }

    fn wait_ready(&self, workers: usize) -> Vec<u32> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let stats = self.pool.stats();
            let ready: Vec<u32> = stats
                .workers
                .iter()
                .filter(|w| w.state == "ready")
                .filter_map(|w| w.os_pid)
                .collect();
            if ready.len() >= workers {
                return ready;
            }
            assert!(Instant::now() < deadline, "workers not ready: {stats:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn alive(pid: u32) -> bool {
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

#[test]
fn answers_calls_and_exceptions() {
    let p = start(|_| {});
    assert_eq!(p.call("operator", "add", vec![Value::Int(1), Value::Int(2)]), Reply::Ok(Value::Int(3)));
    assert_eq!(
        p.call("operator", "truediv", vec![Value::Int(1), Value::Int(0)]),
        Reply::PythonError("ZeroDivisionError".into(), "division by zero".into())
    );
    assert!(matches!(p.call("no_such_module_xyz", "f", vec![]), Reply::PythonError(t, _) if t == "ModuleNotFoundError"));
    assert_eq!(p.call("operator", "neg", vec![Value::Int(5)]), Reply::Ok(Value::Int(-5)));
}

#[test]
fn many_concurrent_calls_each_get_their_own_reply() {
    let p = start(|c| c.size = 2);
    let pending: Vec<_> = (0..2_000)
        .map(|i| {
            let (_, rx, submitted) = p.submit("operator", "mul", vec![Value::Int(i), Value::Int(3)]);
            submitted.unwrap();
            (i, rx)
        })
        .collect();
    for (i, rx) in pending {
        assert_eq!(rx.recv_timeout(Duration::from_secs(20)).unwrap(), Reply::Ok(Value::Int(i * 3)));
    }
    assert!(p.table.is_empty());
}

#[test]
fn worker_output_is_forwarded_not_mixed_into_replies() {
    let p = start(|_| {});
    let reply = p.call("builtins", "print", vec![Value::Str("hello from python".into())]);
    assert_eq!(reply, Reply::Ok(Value::Nil));
    let line = p.logs.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!((line.stream, line.level, line.text.as_str()), (Stream::Stdout, Level::Info, "hello from python"));
}

#[test]
fn a_dead_worker_fails_its_calls_and_is_replaced() {
    let p = start(|c| c.size = 1);
    let old = p.wait_ready(1)[0];
    let (_, sleeping, submitted) = p.submit("time", "sleep", vec![Value::Float(30.0)]);
    submitted.unwrap();
    std::thread::sleep(Duration::from_millis(200));
    unsafe { libc::kill(old as libc::pid_t, libc::SIGKILL) };
    match sleeping.recv_timeout(Duration::from_secs(10)).unwrap() {
        Reply::Failed(f) => {
            assert_eq!(f.reason, Reason::WorkerExited);
            assert_eq!(f.os_pid, Some(old));
            assert_eq!(f.exit, Some(ExitInfo::Signal(libc::SIGKILL)));
        }
        other => panic!("expected worker_exited, got {other:?}"),
    }
    assert_eq!(p.call("operator", "add", vec![Value::Int(2), Value::Int(2)]), Reply::Ok(Value::Int(4)));
    let new = p.wait_ready(1)[0];
    assert_ne!(new, old);
    assert_eq!(p.pool.stats().workers[0].restarts, 1);
}

#[test]
fn calls_queued_behind_a_crash_run_on_the_next_worker() {
    let p = start(|c| c.size = 1);
    p.wait_ready(1);
    let (_, crashing, submitted) = p.submit("os", "_exit", vec![Value::Int(3)]);
    submitted.unwrap();
    let queued: Vec<_> = (0..20)
        .map(|i| {
            let (_, rx, s) = p.submit("operator", "add", vec![Value::Int(i), Value::Int(1)]);
            s.unwrap();
            (i, rx)
        })
        .collect();
    match crashing.recv_timeout(Duration::from_secs(10)).unwrap() {
        Reply::Failed(f) => assert_eq!((f.reason, f.exit), (Reason::WorkerExited, Some(ExitInfo::Status(3)))),
        other => panic!("expected worker_exited, got {other:?}"),
    }
    for (i, rx) in queued {
        match rx.recv_timeout(Duration::from_secs(20)).unwrap() {
            Reply::Ok(v) => assert_eq!(v, Value::Int(i + 1)),
            // Calls already written to the dead worker may have started.
            Reply::Failed(f) => assert_eq!(f.reason, Reason::WorkerExited),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn cancelled_queued_call_never_runs_or_replies() {
    let p = start(|c| {
        c.size = 1;
        c.window = 1;
    });
    p.wait_ready(1);
    let (_, busy, s) = p.submit("time", "sleep", vec![Value::Float(0.3)]);
    s.unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let (id, cancelled, s) = p.submit("builtins", "print", vec![Value::Str("must not run".into())]);
    s.unwrap();
    assert_eq!(p.table.cancel(id, |_| true), CancelOutcome::Cancelled);
    assert_eq!(busy.recv_timeout(Duration::from_secs(5)).unwrap(), Reply::Ok(Value::Nil));
    assert_eq!(p.call("operator", "add", vec![Value::Int(1), Value::Int(1)]), Reply::Ok(Value::Int(2)));
    assert!(cancelled.recv_timeout(Duration::from_millis(200)).is_err());
    assert!(p.logs.try_iter().all(|line| line.text != "must not run"));
}

#[test]
fn a_full_queue_answers_overloaded_at_once() {
    let p = start(|c| {
        c.size = 1;
        c.window = 1;
        c.max_queue = 2;
    });
    p.wait_ready(1);
    let (_, _busy, s) = p.submit("time", "sleep", vec![Value::Float(0.5)]);
    s.unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let results: Vec<_> = (0..5).map(|_| p.submit("operator", "add", vec![Value::Int(1), Value::Int(1)]).2).collect();
    let overloaded = results
        .iter()
        .filter(|r| matches!(r, Err(f) if f.reason == Reason::Overloaded))
        .count();
    assert!(overloaded >= 2, "{results:?}");
}

#[test]
fn a_missing_interpreter_makes_the_pool_unavailable() {
    let p = start(|c| {
        c.python = "/nonexistent/python".into();
        c.size = 2;
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match p.call("operator", "add", vec![Value::Int(1), Value::Int(1)]) {
            Reply::Failed(f) if f.reason == Reason::PythonUnavailable => {
                assert!(f.message.contains("/nonexistent/python"), "{}", f.message);
                break;
            }
            other => assert!(Instant::now() < deadline, "unexpected {other:?}"),
        }
    }
}

#[test]
fn an_interpreter_that_exits_at_start_is_retried_then_reported() {
    let p = start(|c| c.python = "false".into());
    let reply = p.call("operator", "add", vec![Value::Int(1), Value::Int(1)]);
    match reply {
        Reply::Failed(f) => {
            assert_eq!(f.reason, Reason::PythonUnavailable);
            assert!(f.message.contains("exited before it was ready"), "{}", f.message);
        }
        other => panic!("expected python_unavailable, got {other:?}"),
    }
    // Retries go on, but the pool stays unavailable between them: calls
    // fail at once instead of waiting for the next attempt.
    for _ in 0..20 {
        let started = Instant::now();
        assert!(matches!(
            p.call("operator", "add", vec![Value::Int(1), Value::Int(1)]),
            Reply::Failed(f) if f.reason == Reason::PythonUnavailable
        ));
        assert!(started.elapsed() < Duration::from_millis(50));
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_failing_init_is_a_failed_start_carrying_its_traceback() {
    let p = start(|c| c.worker_args = vec!["--init=import json\nraise RuntimeError('no model')".into()]);
    match p.call("operator", "add", vec![Value::Int(1), Value::Int(1)]) {
        Reply::Failed(f) => {
            assert_eq!(f.reason, Reason::PythonUnavailable);
            assert!(f.message.contains("-m snakebridge_worker failed its init (exit status 3):\nTraceback"), "{}", f.message);
            assert!(f.message.ends_with("RuntimeError: no model"), "{}", f.message);
        }
        other => panic!("expected python_unavailable, got {other:?}"),
    }
}

#[test]
fn an_init_runs_before_the_worker_takes_calls() {
    let p = start(|c| c.worker_args = vec!["--import=operator".into(), "--init=import operator\noperator.sb_init = 41".into()]);
    let reply = p.call("operator", "sb_init.__add__", vec![Value::Int(1)]);
    assert!(matches!(reply, Reply::Ok(Value::Int(42))), "{reply:?}");
}

#[test]
fn a_start_error_makes_the_pool_unavailable_at_once() {
    let p = start(|c| c.start_error = Some("could not build the Python environment: no numpy".into()));
    let started = Instant::now();
    match p.call("operator", "add", vec![Value::Int(1), Value::Int(1)]) {
        Reply::Failed(f) => {
            assert_eq!(f.reason, Reason::PythonUnavailable);
            assert!(f.message.ends_with(": could not build the Python environment: no numpy"), "{}", f.message);
        }
        other => panic!("expected python_unavailable, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn stopping_the_pool_reaps_its_workers_and_fails_queued_calls() {
    let p = start(|c| {
        c.size = 2;
        c.window = 1;
    });
    let pids = p.wait_ready(2);
    let (_, first, _) = p.submit("time", "sleep", vec![Value::Float(0.2)]);
    let (_, second, _) = p.submit("time", "sleep", vec![Value::Float(0.2)]);
    let (_, queued, _) = p.submit("operator", "add", vec![Value::Int(1), Value::Int(1)]);
    std::thread::sleep(Duration::from_millis(50));
    p.pool.stop();
    // In-flight calls finish: stopping drains them before the workers exit.
    assert_eq!(first.recv_timeout(Duration::from_secs(1)).unwrap(), Reply::Ok(Value::Nil));
    assert_eq!(second.recv_timeout(Duration::from_secs(1)).unwrap(), Reply::Ok(Value::Nil));
    let reply = queued.recv_timeout(Duration::from_secs(1));
    assert!(
        matches!(&reply, Ok(Reply::Failed(f)) if f.reason == Reason::PythonUnavailable),
        "{reply:?}"
    );
    for pid in pids {
        assert!(!alive(pid), "worker {pid} survived stop");
    }
    assert!(matches!(
        p.submit("operator", "add", vec![]).2,
        Err(f) if f.reason == Reason::PythonUnavailable
    ));
}

fn exec(p: &TestPool, code: &str) -> (u64, Waiter, Result<Sent, Failure>) {
    p.submit("builtins", "exec", vec![Value::Str(code.into())])
}

#[test]
fn cancelling_a_running_call_interrupts_it_in_python() {
    let p = start(|c| c.size = 1);
    let pid = p.wait_ready(1)[0];
    let (id, sleeping, s) = p.submit("time", "sleep", vec![Value::Float(30.0)]);
    s.unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(p.table.cancel(id, |_| true), CancelOutcome::Cancelled);
    let started = Instant::now();
    assert_eq!(p.call("operator", "add", vec![Value::Int(1), Value::Int(1)]), Reply::Ok(Value::Int(2)));
    assert!(started.elapsed() < Duration::from_secs(2), "the sleep was not interrupted");
    assert_eq!(p.wait_ready(1), vec![pid], "the same worker serves the next call");
    assert!(sleeping.recv_timeout(Duration::from_millis(100)).is_err(), "a cancelled call gets no reply");
}

#[test]
fn a_call_that_ignores_cancellation_gets_its_worker_replaced() {
    let p = start(|c| {
        c.size = 1;
        c.cancel_grace = Duration::from_millis(300);
    });
    let pid = p.wait_ready(1)[0];
    let stubborn = "import time\nwhile True:\n    try:\n        time.sleep(10)\n    except BaseException:\n        pass\n";
    let (id, _stuck, s) = exec(&p, stubborn);
    s.unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(p.table.cancel(id, |_| true), CancelOutcome::Cancelled);
    assert_eq!(p.call("operator", "add", vec![Value::Int(2), Value::Int(3)]), Reply::Ok(Value::Int(5)));
    assert_ne!(p.wait_ready(1), vec![pid]);
}

#[test]
fn a_worker_that_stops_answering_pings_is_replaced() {
    let p = start(|c| {
        c.size = 1;
        c.ping_interval = Duration::from_millis(100);
        c.ping_timeout = Duration::from_millis(300);
    });
    let pid = p.wait_ready(1)[0];
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.pool.os_pids().contains(&pid) || p.pool.os_pids().is_empty() {
        assert!(Instant::now() < deadline, "a frozen worker was not replaced");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(pid) || std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z")));
    assert_eq!(p.call("operator", "add", vec![Value::Int(1), Value::Int(2)]), Reply::Ok(Value::Int(3)));
}

#[test]
fn max_calls_recycles_workers_without_failing_calls() {
    let p = start(|c| {
        c.size = 1;
        c.max_calls = Some(5);
    });
    let first = p.wait_ready(1)[0];
    for i in 0..40 {
        assert_eq!(p.call("operator", "add", vec![Value::Int(i), Value::Int(1)]), Reply::Ok(Value::Int(i + 1)));
    }
    assert_ne!(p.wait_ready(1), vec![first]);
    assert!(p.pool.stats().workers[0].restarts >= 2);
}

#[test]
fn max_memory_recycles_a_worker_that_grows() {
    let p = start(|c| {
        c.size = 1;
        c.max_memory = Some(64 * 1024 * 1024);
    });
    let first = p.wait_ready(1)[0];
    let (_, grow, s) = exec(&p, "import builtins\nbuiltins._ballast = bytearray(100 * 1024 * 1024)\n");
    s.unwrap();
    assert_eq!(grow.recv_timeout(Duration::from_secs(10)).unwrap(), Reply::Ok(Value::Nil));
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.pool.os_pids() == vec![first] || p.pool.os_pids().is_empty() {
        assert!(Instant::now() < deadline, "the worker was not recycled");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(p.call("operator", "add", vec![Value::Int(1), Value::Int(2)]), Reply::Ok(Value::Int(3)));
}

#[test]
fn a_dead_callers_running_call_is_cancelled() {
    let p = start(|c| c.size = 1);
    let pid = p.wait_ready(1)[0];
    let (_, waiter, s) = p.submit("time", "sleep", vec![Value::Float(30.0)]);
    s.unwrap();
    std::thread::sleep(Duration::from_millis(100));
    drop(waiter);
    let started = Instant::now();
    assert_eq!(p.call("operator", "add", vec![Value::Int(1), Value::Int(1)]), Reply::Ok(Value::Int(2)));
    assert!(started.elapsed() < Duration::from_secs(5), "the dead caller's call kept running");
    assert_eq!(p.wait_ready(1), vec![pid]);
}

#[test]
fn a_worker_that_writes_garbage_is_replaced_and_its_call_fails() {
    for garbage in ["b'\\x00\\x00\\x00\\x03abc'", "b'\\xff\\xff\\xff\\xff'", "b'\\x00\\x00\\x00\\x09\\x93\\x02\\x01'"] {
        let p = start(|c| c.size = 1);
        let pid = p.wait_ready(1)[0];
        let code = format!("import os\nos.write(3, {garbage})\nimport time\ntime.sleep(0.5)\n");
        let (_, rogue, s) = exec(&p, &code);
        s.unwrap();
        match rogue.recv_timeout(Duration::from_secs(10)).unwrap() {
            Reply::Failed(f) => {
                assert_eq!(f.reason, Reason::WorkerExited, "{garbage}");
                assert_eq!(f.os_pid, Some(pid));
            }
            other => panic!("{garbage}: expected worker_exited, got {other:?}"),
        }
        assert_eq!(p.call("operator", "add", vec![Value::Int(1), Value::Int(1)]), Reply::Ok(Value::Int(2)));
        assert_ne!(p.wait_ready(1), vec![pid]);
    }
}

fn handle(object: &ObjectRef) -> Value {
    Value::Handle { id: object.id, info: None }
}

#[test]
fn objects_stay_in_their_worker_until_dropped() {
    let p = start(|c| c.size = 2);
    p.wait_ready(2);
    let mut objects = Vec::new();
    for i in 0..6 {
        let reply = p.call("collections", "deque", vec![Value::List(vec![Value::Int(i); 3])]);
        assert!(matches!(&reply, Reply::Ok(Value::Handle { info: Some((t, _)), .. }) if t == "collections.deque"), "{reply:?}");
        objects.extend(p.take_objects());
    }
    assert_eq!(objects.len(), 6);
    // Each object is found in its own worker, whichever that is.
    for object in &objects {
        let reply = p.call_on(std::slice::from_ref(object), "builtins", "len", vec![handle(object)]);
        assert_eq!(reply, Reply::Ok(Value::Int(3)));
    }
    let held: usize = p.pool.objects().iter().sum();
    assert_eq!(held, 6);
    // Dropping the last reference releases the object in its worker.
    let first = objects[0].clone();
    let count_in = |object: &Arc<ObjectRef>| p.call_on(std::slice::from_ref(object), "snakebridge_worker._native", "object_count", vec![]);
    let before = count_in(&first);
    drop(objects);
    let deadline = Instant::now() + Duration::from_secs(5);
    while count_in(&first) == before {
        assert!(Instant::now() < deadline, "objects were not released");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(p.pool.objects().iter().sum::<usize>(), 1);
}

#[test]
fn a_dead_workers_objects_are_stale() {
    let p = start(|c| c.size = 1);
    let old_pid = p.wait_ready(1)[0];
    assert!(matches!(p.call("builtins", "object", vec![]), Reply::Ok(Value::Handle { .. })));
    let object = p.take_objects().pop().unwrap();
    assert_eq!(object.os_pid(), Some(old_pid));
    unsafe { libc::kill(old_pid as libc::pid_t, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while p.pool.os_pids().first().is_none_or(|&pid| pid == old_pid) {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    p.wait_ready(1);
    let reply = p.call_on(std::slice::from_ref(&object), "builtins", "id", vec![handle(&object)]);
    assert!(matches!(reply, Reply::Failed(Failure { reason: Reason::StaleHandle, .. })), "{reply:?}");
    assert_eq!(object.os_pid(), None);
}

#[test]
fn streams_send_no_more_items_than_granted() {
    let p = start(|c| c.size = 1);
    let send = Send {
        stream: Some(3),
        ..Send::default()
    };
    let (id, rx, submitted) = p.submit_with("builtins", "range", vec![Value::Int(10)], send);
    submitted.unwrap();
    let mut items = Vec::new();
    let take = |items: &mut Vec<Value>, until: usize| {
        while items.len() < until {
            match rx.recv_timeout(Duration::from_secs(10)).expect("items") {
                Reply::Items(batch) => items.extend(batch),
                other => panic!("unexpected {other:?}"),
            }
        }
    };
    take(&mut items, 3);
    assert_eq!(items.len(), 3);
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err(), "items beyond the window");
    assert!(p.table.grant_credit(id, 7, |_| true));
    take(&mut items, 10);
    assert_eq!(items, (0..10).map(Value::Int).collect::<Vec<_>>());
    // The worker learns that the iterator is exhausted by asking it for one
    // more item, which takes credit.
    assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
    assert!(p.table.grant_credit(id, 1, |_| true));
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), Reply::Ok(Value::Nil));
    assert!(!p.table.grant_credit(id, 1, |_| true));
}

#[test]
fn tasks_and_streams_leave_the_window() {
    let p = start(|c| {
        c.size = 1;
        c.window = 4;
    });
    p.wait_ready(1);
    // More coroutines than the window holds, all waiting at once...
    let sleeping: Vec<_> = (0..10)
        .map(|i| {
            let (_, rx, s) = p.submit("asyncio", "sleep", vec![Value::Float(2.0), Value::Int(i)]);
            s.unwrap();
            rx
        })
        .collect();
    // ...and a stream paused for want of credit...
    let send = Send {
        stream: Some(1),
        ..Send::default()
    };
    let (_, stream, s) = p.submit_with("itertools", "count", vec![], send);
    s.unwrap();
    assert_eq!(stream.recv_timeout(Duration::from_secs(10)).unwrap(), Reply::Items(vec![Value::Int(0)]));
    // ...do not hold up a plain call: it is answered before any of them.
    assert_eq!(p.call("operator", "add", vec![Value::Int(1), Value::Int(2)]), Reply::Ok(Value::Int(3)));
    for rx in &sleeping {
        assert!(rx.replies.is_empty(), "a sleep answered before the plain call");
    }
    assert_eq!(p.pool.stats().workers[0].in_flight, 11);
    for (i, rx) in sleeping.iter().enumerate() {
        assert_eq!(rx.recv_timeout(Duration::from_secs(20)).unwrap(), Reply::Ok(Value::Int(i as i64)));
    }
}

/// A cheap generator for the offsets of the races below (xorshift).
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Cancels race replies at offsets from 0 to ~100 µs after the submit, so
/// every interleaving of "reply read", "call claimed" and "cancel sent"
/// occurs. Whatever the order, each call ends exactly once, no cancel stays
/// pending in the worker's connection (which would close it to new calls
/// until `cancel_grace` killed it), and no worker is replaced.
#[test]
fn cancels_racing_replies_leave_nothing_behind() {
    const THREADS: u64 = 4;
    const RACES: u64 = 25_000;
    let p = Arc::new(start(|c| {
        c.size = 2;
        // Long enough that a stuck cancel cannot be healed by a kill
        // within the test: it must show up in the stats instead.
        c.cancel_grace = Duration::from_secs(60);
    }));
    p.wait_ready(2);
    let racers: Vec<_> = (0..THREADS)
        .map(|t| {
            let p = p.clone();
            std::thread::spawn(move || {
                let mut seed = 0x9E37_79B9_7F4A_7C15 ^ (t + 1);
                let (mut replied, mut cancelled) = (Vec::new(), Vec::new());
                for i in 0..RACES as i64 {
                    let (id, waiter, submitted) = p.submit("operator", "add", vec![Value::Int(i), Value::Int(1)]);
                    // A worker wedged by a lost cancel takes no calls: the
                    // queue fills and this fails with overloaded.
                    submitted.expect("submitted");
                    let offset = Duration::from_nanos(next_random(&mut seed) % 100_000);
                    let started = Instant::now();
                    while started.elapsed() < offset {
                        std::hint::spin_loop();
                    }
                    // Unknown: the reply was delivered and the call is gone.
                    match p.table.cancel(id, |_| true) {
                        CancelOutcome::Replied | CancelOutcome::Unknown => replied.push((i, waiter)),
                        CancelOutcome::Cancelled => cancelled.push(waiter),
                    }
                }
                (replied, cancelled)
            })
        })
        .collect();
    let mut outcomes = (0, 0);
    let mut cancelled_waiters = Vec::new();
    for racer in racers {
        let (replied, cancelled) = racer.join().unwrap();
        outcomes.0 += replied.len();
        outcomes.1 += cancelled.len();
        for (i, waiter) in replied {
            let reply = waiter.recv_timeout(Duration::from_secs(20)).expect("a replied call's reply");
            assert_eq!(reply, Reply::Ok(Value::Int(i + 1)));
        }
        cancelled_waiters.extend(cancelled);
    }
    assert_eq!(outcomes.0 + outcomes.1, (THREADS * RACES) as usize);
    // The next call is answered at once, by the same workers.
    let (_, next, submitted) = p.submit("operator", "add", vec![Value::Int(2), Value::Int(2)]);
    submitted.unwrap();
    assert_eq!(next.recv_timeout(Duration::from_secs(5)), Ok(Reply::Ok(Value::Int(4))));
    let stats = p.pool.stats();
    for worker in &stats.workers {
        assert_eq!(worker.cancelling, 0, "a cancel was left pending: {stats:?}");
        assert_eq!(worker.restarts, 0, "a worker was replaced: {stats:?}");
        assert_eq!(worker.state, "ready");
    }
    for waiter in cancelled_waiters {
        assert!(waiter.replies.try_recv().is_err(), "a cancelled call was answered");
    }
    assert!(p.table.is_empty(), "{} calls left in the table", p.table.len());
    eprintln!("{} replied, {} cancelled", outcomes.0, outcomes.1);
}

/// Whether process `pid` is gone or only waits to be reaped (by whoever
/// adopted it).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next()) == Some("Z"),
        Err(_) => true,
    }
}

/// Whether `pid` is gone within seconds: a SIGKILL takes effect when the
/// process next runs, and its reaping is up to whoever adopted it.
fn soon_gone(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gone(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

fn kill(pid: u32, signal: libc::c_int) {
    unsafe { libc::kill(pid as libc::pid_t, signal) };
}

/// Forks a child of the worker that sleeps for a minute, holding the
/// worker's socket (every fd is inherited by fork); returns its pid.
fn fork_sleeper(p: &TestPool) -> u32 {
    let code = "import builtins, os, time\npid = os.fork()\nif pid == 0:\n    time.sleep(60)\n    os._exit(0)\nbuiltins._sb_child = pid\n";
    assert_eq!(exec_reply(p, code), Reply::Ok(Value::Nil));
    match p.call("builtins", "eval", vec![Value::Str("__import__('builtins')._sb_child".into())]) {
        Reply::Ok(Value::Int(pid)) => pid as u32,
        other => panic!("no child pid: {other:?}"),
    }
}

fn exec_reply(p: &TestPool, code: &str) -> Reply {
    let (_, rx, submitted) = exec(p, code);
    submitted.unwrap();
    rx.recv_timeout(Duration::from_secs(20)).expect("a reply")
}

#[test]
fn a_killed_worker_is_seen_dead_though_a_forked_child_holds_its_socket() {
    let p = start(|c| c.size = 1);
    let worker = p.wait_ready(1)[0];
    let child = fork_sleeper(&p);
    let (_, sleeping, submitted) = p.submit("time", "sleep", vec![Value::Float(30.0)]);
    submitted.unwrap();
    std::thread::sleep(Duration::from_millis(100));
    kill(worker, libc::SIGKILL);
    // Well before the child's minute is up: the exit itself was seen.
    match sleeping.recv_timeout(Duration::from_secs(20)) {
        Ok(Reply::Failed(f)) => {
            assert_eq!(f.reason, Reason::WorkerExited);
            assert_eq!(f.exit, Some(ExitInfo::Signal(libc::SIGKILL)));
        }
        other => panic!("expected worker_exited, got {other:?}"),
    }
    assert!(soon_gone(child), "the worker's forked child outlived it");
    let replacement = p.wait_ready(1)[0];
    assert_ne!(replacement, worker);
    assert_eq!(p.call("operator", "add", vec![Value::Int(1), Value::Int(2)]), Reply::Ok(Value::Int(3)));
}

#[test]
fn stopping_a_pool_ends_what_its_workers_forked() {
    let p = start(|c| {
        c.size = 1;
        c.stop_timeout = Duration::from_millis(500);
    });
    p.wait_ready(1);
    let child = fork_sleeper(&p);
    let stopped = Instant::now();
    p.pool.stop();
    // A hang check, not a speed check: the child would hold on for a minute.
    assert!(stopped.elapsed() < Duration::from_secs(30));
    assert!(soon_gone(child), "the worker's forked child outlived the pool");
}

#[test]
fn workers_inherit_no_descriptor_of_the_host() {
    // A descriptor opened without O_CLOEXEC, as C libraries and ports in
    // the BEAM do: dup never sets it.
    let file = std::fs::File::open(env!("CARGO_MANIFEST_DIR")).unwrap();
    let leaky = unsafe { libc::dup(std::os::fd::AsRawFd::as_raw_fd(&file)) };
    assert!(leaky > 2);
    let p = start(|c| c.size = 1);
    let worker = p.wait_ready(1)[0];
    let targets: Vec<(u32, PathBuf)> = std::fs::read_dir(format!("/proc/{worker}/fd"))
        .unwrap()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let fd: u32 = entry.file_name().to_str()?.parse().ok()?;
            Some((fd, std::fs::read_link(entry.path()).ok()?))
        })
        .collect();
    unsafe { libc::close(leaky) };
    let ours = std::fs::read_link(format!("/proc/self/fd/{leaky}"));
    assert!(ours.is_err(), "closed");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).canonicalize().unwrap();
    assert!(
        targets.iter().all(|(_, target)| target != &dir),
        "the worker holds the host's descriptor: {targets:?}"
    );
    assert!(targets.iter().any(|(fd, _)| *fd == 3), "the worker's socket is fd 3: {targets:?}");
}

#[test]
fn workers_killed_from_outside_while_starting_do_not_make_python_unavailable() {
    let p = start(|c| c.size = 1);
    let first = p.wait_ready(1)[0];
    kill(first, libc::SIGKILL);
    // Kill each new worker as soon as it appears, before its hello, more
    // times than the failed starts that make a slot give up.
    let mut killed = vec![first];
    let deadline = Instant::now() + Duration::from_secs(60);
    while killed.len() < 8 {
        assert!(Instant::now() < deadline, "no new worker to kill: {:?}", p.pool.stats());
        for pid in p.pool.os_pids() {
            if !killed.contains(&pid) {
                kill(pid, libc::SIGKILL);
                killed.push(pid);
            }
        }
        let stats = p.pool.stats();
        assert_ne!(stats.workers[0].state, "unavailable", "{stats:?}");
        std::thread::sleep(Duration::from_micros(200));
    }
    assert_eq!(p.call("operator", "add", vec![Value::Int(1), Value::Int(2)]), Reply::Ok(Value::Int(3)));
}

#[test]
fn worker_output_carries_its_call_and_level() {
    let p = start(|_| {});
    let (id, rx, submitted) = p.submit("logging", "error", vec![Value::Str("from logging".into())]);
    submitted.unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(20)).unwrap(), Reply::Ok(Value::Nil));
    let line = p.logs.recv_timeout(Duration::from_secs(5)).unwrap();
    let expected = Logged {
        stream: Stream::Logging,
        level: Level::Error,
        text: "from logging".into(),
        call: Some(id),
        module: Some("logging".into()),
        function: Some("error".into()),
    };
    assert_eq!(line, expected);
}

#[test]
fn a_flood_of_output_is_bounded_and_its_drops_counted() {
    const LINES: u64 = 200_000;
    let p = start(|c| {
        c.log_queue = 100;
        c.log_rate = 100;
    });
    let flood = format!("for i in range({LINES}): print(i)");
    assert_eq!(p.call("builtins", "exec", vec![Value::Str(flood)]), Reply::Ok(Value::Nil));
    // Responsive while lines are still being dropped or logged.
    assert_eq!(p.call("operator", "add", vec![Value::Int(1), Value::Int(2)]), Reply::Ok(Value::Int(3)));
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut delivered, mut dropped, mut reports) = (0u64, 0u64, 0u64);
    while delivered + dropped < LINES {
        assert!(Instant::now() < deadline, "{delivered} delivered and {dropped} dropped of {LINES}");
        delivered += p.logs.try_iter().count() as u64;
        for count in p.dropped.try_iter() {
            dropped += count;
            reports += 1;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(delivered + dropped, LINES);
    assert!(dropped > 0 && reports >= 1);
    // One report a second at most while the flood lasts, and one at its end.
    assert!(reports <= 62, "{reports} reports");
}

/// A worker killed with calls still unread in its socket resets the
/// connection (ECONNRESET on the host's read), and one killed while it
/// starts never says hello: neither is the interpreter's fault, however
/// young the worker and however many in a row.
#[test]
fn young_workers_killed_from_outside_do_not_make_python_unavailable() {
    let p = start(|c| c.size = 1);
    for _ in 0..3 {
        let worker = p.wait_ready(1)[0];
        let (_, sleeping, submitted) = p.submit("time", "sleep", vec![Value::Float(10.0)]);
        submitted.unwrap();
        // Written while the worker sleeps: they stay unread in its socket.
        std::thread::sleep(Duration::from_millis(50));
        let queued: Vec<_> = (0..8)
            .map(|i| {
                let (_, rx, submitted) = p.submit("operator", "neg", vec![Value::Int(i)]);
                submitted.unwrap();
                rx
            })
            .collect();
        std::thread::sleep(Duration::from_millis(20));
        kill(worker, libc::SIGKILL);
        assert!(matches!(
            sleeping.recv_timeout(Duration::from_secs(20)),
            Ok(Reply::Failed(f)) if f.reason == Reason::WorkerExited
        ));
        for rx in queued {
            assert!(rx.recv_timeout(Duration::from_secs(20)).is_ok());
        }
    }
    // Then kill the next workers before their hello.
    let mut killed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while killed.len() < 2 {
        assert!(Instant::now() < deadline, "no new worker to kill: {:?}", p.pool.stats());
        if let Some(pid) = p.pool.os_pids().into_iter().find(|pid| !killed.contains(pid)) {
            kill(pid, libc::SIGKILL);
            killed.push(pid);
        }
        let stats = p.pool.stats();
        assert_ne!(stats.workers[0].state, "unavailable", "{stats:?}");
        std::thread::sleep(Duration::from_micros(200));
    }
    let next = p.call("operator", "add", vec![Value::Int(1), Value::Int(2)]);
    assert_eq!(next, Reply::Ok(Value::Int(3)), "{:?}", p.pool.stats());
}

/// The OS pid of the worker that runs a call of `owner`.
fn pid_for(p: &TestPool, owner: u64) -> u32 {
    let send = Send {
        owner,
        ..Send::default()
    };
    let (_, rx, submitted) = p.submit_with("os", "getpid", vec![], send);
    submitted.unwrap();
    match rx.recv_timeout(Duration::from_secs(20)).unwrap() {
        Reply::Ok(Value::Int(pid)) => pid as u32,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_callers_calls_follow_its_live_objects() {
    let p = start(|c| c.size = 2);
    p.wait_ready(2);
    let send = Send {
        owner: 7,
        ..Send::default()
    };
    let (_, rx, submitted) = p.submit_with("builtins", "object", vec![], send);
    submitted.unwrap();
    assert!(matches!(rx.recv_timeout(Duration::from_secs(20)).unwrap(), Reply::Ok(Value::Handle { .. })));
    let object = p.take_objects().pop().unwrap();
    let home = object.os_pid().unwrap();
    // The home worker is busy: a call routed by load goes to the other one,
    // the owner's goes home and waits.
    let busy = Send {
        objects: vec![object.clone()],
        ..Send::default()
    };
    let (_, sleeping, submitted) = p.submit_with("time", "sleep", vec![Value::Float(0.3)], busy);
    submitted.unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_ne!(pid_for(&p, 0), home);
    assert_eq!(pid_for(&p, 7), home);
    sleeping.recv_timeout(Duration::from_secs(20)).unwrap();
    // An object of no one's in the same worker, to keep it busy with later.
    assert!(matches!(p.call_on(std::slice::from_ref(&object), "builtins", "object", vec![]), Reply::Ok(Value::Handle { .. })));
    let anchor = p.take_objects().pop().unwrap();
    assert_eq!(anchor.os_pid(), Some(home));
    // With its objects gone, the owner is load-balanced again.
    drop(object);
    let busy = Send {
        objects: vec![anchor.clone()],
        ..Send::default()
    };
    let (_, sleeping, submitted) = p.submit_with("time", "sleep", vec![Value::Float(0.3)], busy);
    submitted.unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_ne!(pid_for(&p, 7), home);
    sleeping.recv_timeout(Duration::from_secs(20)).unwrap();
}

#[test]
fn spread_calls_take_the_workers_in_turn() {
    let p = start(|c| c.size = 3);
    p.wait_ready(3);
    let pids: std::collections::HashSet<u32> = (0..3)
        .map(|_| {
            let send = Send {
                spread: true,
                ..Send::default()
            };
            let (_, rx, submitted) = p.submit_with("os", "getpid", vec![], send);
            submitted.unwrap();
            match rx.recv_timeout(Duration::from_secs(20)).unwrap() {
                Reply::Ok(Value::Int(pid)) => pid as u32,
                other => panic!("{other:?}"),
            }
        })
        .collect();
    assert_eq!(pids.len(), 3);
}

#[test]
fn restart_replaces_every_worker_without_failing_calls() {
    let p = Arc::new(start(|c| c.size = 2));
    let before = p.wait_ready(2);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let callers: Vec<_> = (0..4)
        .map(|i| {
            let (p, stop) = (p.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut replies = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    replies.push(p.call("operator", "add", vec![Value::Int(i), Value::Int(1)]));
                }
                (i, replies)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    p.pool.restart().unwrap();
    let after = p.pool.os_pids();
    assert_eq!(after.len(), 2);
    assert!(after.iter().all(|pid| !before.contains(pid)), "{before:?} -> {after:?}");
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        let (i, replies) = caller.join().unwrap();
        assert!(!replies.is_empty());
        assert!(replies.iter().all(|r| *r == Reply::Ok(Value::Int(i + 1))), "{replies:?}");
    }
}


/// The worker's mappings of its shared memory.
fn arena_mappings(pid: u32) -> usize {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    maps.lines().filter(|line| line.contains("memfd:snakebridge-")).count()
}

/// Waits for the pool's first worker to have no shared memory in use.
fn shared_memory_freed(p: &TestPool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while p.pool.stats().workers[0].shared_memory != 0 {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// Inodes of the shared memory `pid` maps.
fn arena_inodes(pid: &str) -> Vec<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    maps.lines()
        .filter(|line| line.contains("memfd:snakebridge-"))
        .filter_map(|line| line.split_whitespace().nth(4).map(str::to_owned))
        .collect()
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[test]
fn large_calls_and_results_cross_shared_memory_and_free_it() {
    let p = start(|c| c.size = 1);
    let worker = p.wait_ready(1)[0];
    assert_eq!(arena_mappings(worker), 2, "the worker maps both arenas");
    for len in [40 * 1024, 4 * 1024 * 1024] {
        let data = pattern(len);
        assert_eq!(p.call("builtins", "bytes", vec![Value::Bin(data.clone())]), Reply::Ok(Value::Bin(data)));
    }
    // Both sides are done with every region: the runtime's reader frees a
    // result once routed, as the worker frees a call once read.
    assert!(shared_memory_freed(&p));
    let mixed = Value::List(vec![Value::Int(1), Value::Str("x".repeat(100_000)), Value::Bin(pattern(50_000))]);
    assert_eq!(p.call("builtins", "list", vec![mixed.clone()]), Reply::Ok(mixed));
    assert!(shared_memory_freed(&p));
}

#[test]
fn without_shared_memory_large_payloads_take_the_socket() {
    let p = start(|c| {
        c.size = 1;
        c.shared_memory = false;
    });
    let worker = p.wait_ready(1)[0];
    let data = pattern(4 * 1024 * 1024);
    assert_eq!(p.call("builtins", "bytes", vec![Value::Bin(data.clone())]), Reply::Ok(Value::Bin(data)));
    assert_eq!(arena_mappings(worker), 0);
}

#[test]
fn payloads_over_the_socket_limit_go_through_shared_memory_up_to_max_payload() {
    let p = start(|c| {
        c.size = 1;
        c.max_payload = 80 * 1024 * 1024;
    });
    let len = 70 * 1024 * 1024;
    let data = pattern(len);
    assert_eq!(p.call("builtins", "bytes", vec![Value::Bin(data.clone())]), Reply::Ok(Value::Bin(data)));
    match p.call("builtins", "bytes", vec![Value::Int(81 * 1024 * 1024)]) {
        Reply::Failed(f) => {
            assert_eq!(f.reason, Reason::PayloadTooLarge);
            assert!(f.message.contains(&(80 * 1024 * 1024).to_string()), "{}", f.message);
        }
        other => panic!("expected payload_too_large, got {other:?}"),
    }
}

#[test]
fn a_worker_killed_with_a_large_call_unread_is_replaced_and_its_memory_unmapped() {
    let p = start(|c| c.size = 1);
    let worker = p.wait_ready(1)[0];
    let inodes = arena_inodes(&worker.to_string());
    assert_eq!(inodes.len(), 2);
    let (_, rx, submitted) = p.submit("time", "sleep", vec![Value::Int(30)]);
    submitted.unwrap();
    let (_, big, submitted) = p.submit("builtins", "len", vec![Value::Bin(pattern(8 * 1024 * 1024))]);
    submitted.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.pool.stats().workers[0].shared_memory == 0 {
        assert!(Instant::now() < deadline, "the large call is in shared memory");
        std::thread::sleep(Duration::from_millis(5));
    }
    kill(worker, libc::SIGKILL);
    for waiter in [rx, big] {
        match waiter.recv_timeout(Duration::from_secs(20)).unwrap() {
            Reply::Failed(f) => assert_eq!(f.reason, Reason::WorkerExited),
            other => panic!("expected worker_exited, got {other:?}"),
        }
    }
    let next = p.wait_ready(1)[0];
    assert_ne!(next, worker);
    assert_eq!(p.pool.stats().workers[0].shared_memory, 0, "the new worker's arenas are empty");
    let own = arena_inodes("self");
    assert!(inodes.iter().all(|inode| !own.contains(inode)), "the dead worker's arenas are unmapped");
    assert!(arena_inodes(&next.to_string()).iter().all(|inode| own.contains(inode)));
}

#[test]
fn a_call_written_to_a_worker_with_nothing_in_flight_is_sent_alone() {
    let p = start(|c| {
        c.size = 1;
        c.window = 4;
    });
    p.wait_ready(1);
    let (_, slow, first) = p.submit("time", "sleep", vec![Value::Float(0.3)]);
    assert_eq!(first, Ok(Sent::Alone));
    let (_, behind, second) = p.submit("operator", "add", vec![Value::Int(1), Value::Int(1)]);
    assert_eq!(second, Ok(Sent::Behind));
    assert_eq!(slow.recv_timeout(Duration::from_secs(5)).unwrap(), Reply::Ok(Value::Nil));
    assert_eq!(behind.recv_timeout(Duration::from_secs(5)).unwrap(), Reply::Ok(Value::Int(2)));
    // Both answered: the worker is idle again.
    let (_, _, third) = p.submit("time", "sleep", vec![Value::Float(0.2)]);
    assert_eq!(third, Ok(Sent::Alone));
}
