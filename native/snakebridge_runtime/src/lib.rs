//! The SnakeBridge runtime: Python worker processes and the threads that feed
//! them, kept free of BEAM types so it can be tested with `cargo test` alone.
//!
//! A [`Pool`] owns a fixed number of worker *slots*. Each slot has two
//! long-lived threads: the *supervisor* spawns its Python process (so
//! `PR_SET_PDEATHSIG` is tied to a thread that outlives the process), hands
//! its socket to a [`Reader`], and restarts the worker when it dies, which a
//! thread per process learns from the process itself (see `exit`); the
//! *writer* moves calls from the pool's bounded queue to the worker's socket
//! in batches, and sends what callers left in the worker's outbox. A caller
//! that finds an idle worker and an empty queue writes its frame itself, and
//! a caller of a busy worker leaves it in the outbox for the reader to send
//! with its next batch of replies (see [`Pool::submit`]).
//!
//! The embedder may read the workers' sockets itself ([`Attach::attach`]: the
//! NIF does, through VM ports); otherwise the supervisor reads them.

//! Replies leave through [`Hooks`], which the NIF implements by sending BEAM
//! messages and tests implement with channels.
//!
//! Large frame bodies go through two shared-memory arenas per worker
//! ([`Arenas`], see `transport` and `snakebridge_protocol::shm`), with only
//! a descriptor on the socket.
//!
//! Python objects that have no by-value form stay in their worker; the host
//! refers to them through [`ObjectRef`]s, which route calls that use them to
//! that worker and release them there when dropped (see `object`).

mod affinity;
mod breaker;
mod call;
mod config;
mod connection;
mod events;
mod exit;
mod hash;
mod hooks;
mod log;
mod object;
mod pool;
mod reader;
mod route;
mod shared;
mod slot;
mod socket;
mod spawn;
mod stats;
mod supervisor;
mod transport;
mod watchdog;
mod writer;

pub use breaker::{BreakerConfig, BreakerStats};
pub use call::{Call, CallTable, CancelOutcome, CancelReason};
pub use config::PoolConfig;
pub use events::{
    CircuitChange, ExitInfo, Failure, Level, LogLine, PythonError, Reason, RecycleReason, Stream, Timing, WorkerEvent,
};
pub use hooks::{Hooks, Outcome};
pub use object::{ObjectRef, Origin};
pub use route::Route;
pub use pool::{Pool, Sent};
pub use reader::{Attach, Reader};
pub use snakebridge_protocol::shm::Shared;
pub use stats::{PoolStats, WorkerStats};
pub use transport::Arenas;

use nix::sys::time::TimeSpec;
use nix::time::{clock_gettime, ClockId};

/// `CLOCK_MONOTONIC` in microseconds: the clock of call deadlines, shared by
/// every process on the machine.
pub fn monotonic_micros() -> u64 {
    // Cannot fail for CLOCK_MONOTONIC on Linux; were it to, 0 as before.
    let ts = clock_gettime(ClockId::CLOCK_MONOTONIC).unwrap_or_else(|_| TimeSpec::new(0, 0));
    ts.tv_sec() as u64 * 1_000_000 + ts.tv_nsec() as u64 / 1_000
}
