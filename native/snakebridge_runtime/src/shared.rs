//! What a pool's threads share: its slots, queues, call table, breaker and
//! logs, and the jobs they pass around. The pool, the worker slots, the
//! writer, the reader and the watchdog all use it, so it lives apart from
//! each of them.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;

use crate::affinity::Affinity;
use crate::breaker::Breaker;
use crate::call::{Call, CallTable};
use crate::config::PoolConfig;
use crate::events::{Failure, Reason};
use crate::hooks::{Hooks, Outcome};
use crate::log::LogQueue;
use crate::object::ObjectRef;
use crate::slot::Slot;

/// A call waiting for a worker, with its encoded frame.
pub(crate) struct Job<C> {
    pub call: Arc<Call<C>>,
    pub frame: Vec<u8>,
    /// For a call that uses objects: the worker process that holds them.
    /// Also set for a call that follows its caller's objects (`soft`).
    pub pinned: Option<u64>,
    /// The call names no object: should its worker go away, it may run on
    /// any other.
    pub soft: bool,
    /// The objects the frame names, alive until it is written (see
    /// `object`): only ever dropped, never read.
    #[allow(dead_code)]
    pub keep: Vec<Arc<ObjectRef>>,
}

impl<C> Job<C> {
    pub(crate) fn new(call: Arc<Call<C>>, frame: Vec<u8>) -> Self {
        Job {
            call,
            frame,
            pinned: None,
            soft: false,
            keep: Vec::new(),
        }
    }
}

/// The queue of one slot's pinned calls.
pub(crate) struct PinnedQueue<C> {
    pub tx: Sender<Job<C>>,
    pub rx: Receiver<Job<C>>,
    /// Pinned calls queued or held by the writer. While there are any, new
    /// ones queue behind them instead of being written directly, so a
    /// caller's calls on an object run in the order they were made.
    pub pending: AtomicUsize,
}

impl<C> PinnedQueue<C> {
    pub(crate) fn new() -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        PinnedQueue {
            tx,
            rx,
            pending: AtomicUsize::new(0),
        }
    }
}

/// The error of a call on an object whose worker process is gone.
pub(crate) fn stale_failure() -> Failure {
    Failure::new(
        Reason::StaleHandle,
        "the Python worker that held the object has exited or been replaced, and the object with it",
    )
}

/// State shared by a pool's handle and its threads.
pub(crate) struct Shared<H: Hooks> {
    pub name: String,
    pub id: u64,
    pub config: PoolConfig,
    pub hooks: Arc<H>,
    pub table: Arc<CallTable<H::Caller>>,
    pub queue_tx: Sender<Job<H::Caller>>,
    pub queue_rx: Receiver<Job<H::Caller>>,
    pub slots: Vec<Arc<Slot>>,
    /// Per slot, the calls that must run on its current worker.
    pub pinned: Vec<PinnedQueue<H::Caller>>,
    pub stopping: AtomicBool,
    /// Never carries a message: dropping the sender wakes every thread
    /// waiting on the receiver, which is how a stop is broadcast.
    pub stop_rx: Receiver<()>,
    pub(crate) stop_tx: Mutex<Option<Sender<()>>>,
    /// Calls writers took from the queue but hold until their worker's
    /// window has room; they still count as queued.
    pub held: AtomicUsize,
    /// Where every worker's output goes on its way to `Hooks::log`.
    pub logs: Arc<LogQueue<H::Caller>>,
    /// Shared with the pool's connections, which count timed-out calls.
    pub breaker: Arc<Breaker>,
    /// Which worker each caller's objects live in.
    pub affinity: Arc<Affinity>,
    /// Where the next spread call starts looking (see `Pool::submit_spread`).
    pub(crate) spread: AtomicUsize,
}

impl<H: Hooks> Shared<H> {
    /// True when every slot has given up starting Python.
    pub fn is_unavailable(&self) -> bool {
        self.slots.iter().all(|s| s.is_unavailable())
    }

    pub fn unavailable_failure(&self) -> Failure {
        let detail = self
            .slots
            .iter()
            .find_map(|s| s.last_error())
            .unwrap_or_else(|| "no worker is running".to_owned());
        Failure::new(
            Reason::PythonUnavailable,
            format!("Python is unavailable for pool {}: {detail}", self.name),
        )
    }

    /// Calls waiting for a worker: in the queues, or held by a writer.
    pub fn queue_length(&self) -> usize {
        self.queue_rx.len()
            + self.held.load(Ordering::Acquire)
            + self.pinned.iter().map(|p| p.rx.len()).sum::<usize>()
    }

    pub fn stopped_failure(&self) -> Failure {
        Failure::new(Reason::PythonUnavailable, format!("pool {} was stopped", self.name))
    }

    /// Answers a job that will not run. Only runtime threads may call this
    /// (the NIF's delivery cannot run on a BEAM thread).
    pub fn fail_job(&self, courier: &mut H::Courier, job: Job<H::Caller>, failure: Failure) {
        self.fail_call(courier, &job.call, failure);
    }

    pub fn fail_call(&self, courier: &mut H::Courier, call: &Call<H::Caller>, failure: Failure) {
        if call.claim_reply() {
            let _ = self.hooks.deliver(courier, &call.caller, Outcome::Failed(failure));
            self.table.remove(call.id);
        }
    }

    /// Puts back a job that was taken from the queue but not written. A
    /// pinned job cannot go elsewhere: its worker is going away. One that
    /// only followed its caller's objects can.
    pub fn requeue(&self, courier: &mut H::Courier, mut job: Job<H::Caller>) {
        if job.pinned.is_some() && !job.soft {
            self.fail_job(courier, job, stale_failure());
            return;
        }
        job.pinned = None;
        job.soft = false;
        if let Err(e) = self.queue_tx.try_send(job) {
            let job = e.into_inner();
            let failure = Failure::new(Reason::Overloaded, self.overloaded_message());
            self.fail_job(courier, job, failure);
        }
    }

    pub(crate) fn overloaded_message(&self) -> String {
        format!(
            "pool {} has {} calls queued (max_queue)",
            self.name, self.config.max_queue
        )
    }
}
