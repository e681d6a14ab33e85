//! A pool's circuit breaker against real Python worker processes that crash,
//! hang, raise and fail to start.
//!
//! Needs the installed worker package (`_build/dev/lib/snakebridge/priv/python`, put there by
//! `mix compile`), or a directory named by `SNAKEBRIDGE_WORKER_PATH`.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use snakebridge_protocol::{DecodeError, Message, Target, Value};
use snakebridge_runtime::{
    Attach,
    BreakerConfig, BreakerStats, Call, CallTable, CancelOutcome, CancelReason, Failure, Hooks, Outcome, Pool,
    LogLine, PoolConfig, Reason, WorkerEvent,
};

use common::worker_path;

#[derive(Debug, PartialEq)]
enum Reply {
    Ok(Value),
    PythonError(String),
    Failed(Reason),
}

struct TestHooks;

impl Hooks for TestHooks {
    type Caller = Sender<Reply>;
    type Courier = ();

    fn courier(&self) {}

    fn deliver(&self, _: &mut (), caller: &Sender<Reply>, outcome: Outcome<'_>) -> Result<(), DecodeError> {
        let reply = match outcome {
            Outcome::Ok(bytes, _) | Outcome::Items(bytes, _) => Reply::Ok(Value::decode(bytes)?),
            Outcome::PythonError(e) => Reply::PythonError(e.exc_type),
            Outcome::Failed(f) => Reply::Failed(f.reason),
        };
        let _ = caller.send(reply);
        Ok(())
    }

    fn log(&self, _: &mut (), _: LogLine<'_, Sender<Reply>>) {}

    fn log_dropped(&self, _: &mut (), _: u64) {}

    fn caller_alive(&self, _: &mut (), _: &Sender<Reply>) -> bool {
        true
    }

    fn event(&self, _: &mut (), _: u32, _: WorkerEvent) {}
}

impl Attach for TestHooks {}

struct TestPool {
    pool: Pool<TestHooks>,
    table: Arc<CallTable<Sender<Reply>>>,
}

static IDS: AtomicU64 = AtomicU64::new(1);

fn start(python: &str, failures: u32, cooldown: Duration) -> TestPool {
    let mut config = PoolConfig::new(python, worker_path());
    config.breaker = Some(BreakerConfig {
        failures,
        window: Duration::from_secs(60),
        cooldown,
    });
    let table = Arc::new(CallTable::default());
    let pool = Pool::start("breaker", config, Arc::new(TestHooks), table.clone()).unwrap();
    TestPool { pool, table }
}

impl TestPool {
    fn submit(&self, module: &str, function: &str, args: Vec<Value>) -> (u64, Result<Receiver<Reply>, Failure>) {
        self.submit_until(0, module, function, args)
    }

    /// Submits a call with a deadline (`CLOCK_MONOTONIC` µs, 0 for none).
    fn submit_until(
        &self,
        deadline: u64,
        module: &str,
        function: &str,
        args: Vec<Value>,
    ) -> (u64, Result<Receiver<Reply>, Failure>) {
        let id = IDS.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = crossbeam_channel::unbounded();
        let call = Call::new(id, tx);
        assert!(self.table.insert(call.clone()));
        let mut frame = Vec::new();
        Message::Call {
            id,
            deadline,
            target: Target::Module(module.into()),
            function: Some(function.into()),
            args,
            kwargs: vec![],
            flags: 0,
            window: 0,
        }
        .write_frame(&mut frame)
        .unwrap();
        (id, self.pool.submit(call, frame).map(|_sent| rx))
    }

    fn call(&self, module: &str, function: &str, args: Vec<Value>) -> Reply {
        match self.submit(module, function, args).1 {
            Ok(rx) => rx.recv_timeout(Duration::from_secs(20)).expect("a reply"),
            Err(failure) => Reply::Failed(failure.reason),
        }
    }

    fn circuit(&self) -> BreakerStats {
        self.pool.stats().circuit
    }

    /// Waits until the one worker has a call.
    fn wait_written(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.pool.stats().workers[0].in_flight == 0 {
            assert!(Instant::now() < deadline, "the call never reached a worker");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Polls the circuit until `done` holds; panics after 20 s.
    fn wait_for(&self, done: impl Fn(&BreakerStats) -> bool) -> BreakerStats {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let circuit = self.circuit();
            if done(&circuit) {
                return circuit;
            }
            assert!(Instant::now() < deadline, "circuit never got there: {circuit:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn exit_worker() -> (&'static str, &'static str, Vec<Value>) {
    ("os", "_exit", vec![Value::Int(1)])
}

#[test]
fn crashes_open_the_circuit_and_a_trial_call_closes_it() {
    let p = start("python3", 2, Duration::from_millis(300));
    let (module, function, args) = exit_worker();
    assert_eq!(p.call(module, function, args.clone()), Reply::Failed(Reason::WorkerExited));
    assert_eq!(p.circuit().state, "closed");
    assert_eq!(p.call(module, function, args.clone()), Reply::Failed(Reason::WorkerExited));
    let open = p.circuit();
    assert_eq!((open.state, open.opened), ("open", 1));

    let (refused_id, refused) = p.submit("operator", "add", vec![Value::Int(1), Value::Int(2)]);
    let refused = refused.expect_err("an open circuit refuses calls at once");
    assert_eq!(refused.reason, Reason::CircuitOpen);
    assert!(refused.message.contains("2 failures"), "{}", refused.message);
    assert!(p.table.get(refused_id).is_none());

    // The cool-down over, a trial call that crashes too opens it again.
    p.wait_for(|c| c.retry_in_ms == 0);
    assert_eq!(p.call(module, function, args), Reply::Failed(Reason::WorkerExited));
    let reopened = p.circuit();
    assert_eq!((reopened.state, reopened.opened), ("open", 2));

    // Other calls fail while a trial call runs, and one that is cancelled
    // leaves the circuit half-open only until another cool-down has passed.
    p.wait_for(|c| c.retry_in_ms == 0);
    let (trial_id, trial) = p.submit("time", "sleep", vec![Value::Float(30.0)]);
    let _trial = trial.expect("the trial call goes through");
    assert_eq!(p.circuit().state, "half_open");
    let (_, other) = p.submit("operator", "add", vec![Value::Int(1), Value::Int(2)]);
    let other = other.expect_err("only one trial call");
    assert_eq!(other.reason, Reason::CircuitOpen);
    assert!(other.message.contains("half-open"), "{}", other.message);
    assert_eq!(p.table.cancel(trial_id, |_| true), CancelOutcome::Cancelled);
    assert_eq!(p.circuit().state, "half_open");

    // A healthy trial call closes it.
    p.wait_for(|c| c.retry_in_ms == 0);
    assert_eq!(p.call("time", "sleep", vec![Value::Float(0.05)]), Reply::Ok(Value::Nil));
    assert_eq!(p.circuit().state, "closed");
    assert_eq!(
        p.call("operator", "add", vec![Value::Int(1), Value::Int(2)]),
        Reply::Ok(Value::Int(3))
    );
}

#[test]
fn python_exceptions_and_plain_cancels_never_count() {
    let p = start("python3", 1, Duration::from_secs(60));
    for _ in 0..3 {
        assert_eq!(
            p.call("operator", "truediv", vec![Value::Int(1), Value::Int(0)]),
            Reply::PythonError("ZeroDivisionError".into())
        );
    }
    let (id, running) = p.submit("time", "sleep", vec![Value::Float(30.0)]);
    let _running = running.unwrap();
    p.wait_written();
    assert_eq!(p.table.cancel(id, |_| true), CancelOutcome::Cancelled);
    assert_eq!(
        p.call("operator", "add", vec![Value::Int(1), Value::Int(2)]),
        Reply::Ok(Value::Int(3))
    );
    let circuit = p.circuit();
    assert_eq!((circuit.state, circuit.failures, circuit.opened), ("closed", 0, 0));
}

#[test]
fn a_call_that_times_out_on_a_worker_counts() {
    let p = start("python3", 1, Duration::from_secs(60));
    let (id, running) = p.submit("time", "sleep", vec![Value::Float(30.0)]);
    let _running = running.unwrap();
    // Only a call a worker has counts.
    p.wait_written();
    assert_eq!(
        p.table.cancel_because(id, CancelReason::Timeout, |_| true),
        CancelOutcome::Cancelled
    );
    assert_eq!(p.circuit().state, "open");
    assert_eq!(
        p.call("operator", "add", vec![Value::Int(1), Value::Int(2)]),
        Reply::Failed(Reason::CircuitOpen)
    );
}

#[test]
fn a_call_the_worker_finds_past_its_deadline_counts() {
    let p = start("python3", 1, Duration::from_secs(60));
    let (_, rx) = p.submit_until(1, "operator", "add", vec![Value::Int(1), Value::Int(2)]);
    let reply = rx.unwrap().recv_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(reply, Reply::Failed(Reason::Timeout));
    assert_eq!(p.circuit().state, "open");
}

#[test]
fn failed_worker_starts_count() {
    // `false` exits at once, before the worker's handshake.
    let p = start("false", 1, Duration::from_secs(60));
    let circuit = p.wait_for(|c| c.state == "open");
    assert_eq!(circuit.opened, 1);
}
