//! What the runtime tells its embedder: replies, worker output and events.

use snakebridge_protocol::DecodeError;

use crate::events::{CircuitChange, Failure, LogLine, PythonError, Stream, Timing, WorkerEvent};
use crate::object::Origin;

/// What a call's caller is sent: one final reply, after any number of
/// `Items` for a stream.
pub enum Outcome<'a> {
    /// The msgpack encoding of the result; handles in it come from `Origin`.
    Ok(&'a [u8], &'a Origin<'a>),
    /// A stream's next items: the msgpack encoding of an array.
    Items(&'a [u8], &'a Origin<'a>),
    PythonError(PythonError),
    Failed(Failure),
}

impl Outcome<'_> {
    /// Whether the call is over with this.
    pub fn is_final(&self) -> bool {
        !matches!(self, Outcome::Items(..))
    }
}

/// The embedder's side of the runtime.
///
/// Each runtime thread creates one `Courier` and passes it to every hook it
/// calls, so per-thread state (for the NIF, a process-independent
/// environment to build messages in) is made once, not per reply.
pub trait Hooks: Send + Sync + 'static {
    /// Who a call's reply goes to.
    type Caller: Send + Sync + 'static;
    type Courier;

    fn courier(&self) -> Self::Courier;
    /// Sends `outcome` to `caller`. An `Ok` result or `Items` the embedder
    /// cannot decode is still answered, as the call's final reply (a
    /// protocol error), and reported back as `Err`, so the runtime replaces
    /// the worker that sent it.
    fn deliver(&self, courier: &mut Self::Courier, caller: &Self::Caller, outcome: Outcome<'_>) -> Result<(), DecodeError>;
    /// Like [`Hooks::deliver`], for a final reply whose worker reported the
    /// call's [`Timing`].
    fn deliver_timed(
        &self,
        courier: &mut Self::Courier,
        caller: &Self::Caller,
        outcome: Outcome<'_>,
        _timing: Timing,
    ) -> Result<(), DecodeError> {
        self.deliver(courier, caller, outcome)
    }
    /// The pool's circuit breaker changed state; called from the pool's log
    /// thread.
    fn circuit(&self, _courier: &mut Self::Courier, _change: CircuitChange) {}
    /// One line of worker output; called from one thread per pool, at most
    /// at the pool's `log_rate`.
    fn log(&self, courier: &mut Self::Courier, line: LogLine<'_, Self::Caller>);
    /// One line that Python wrote to `sys.stdout` or `sys.stderr` while
    /// running a call of `caller`, sent straight from the reader, ahead of
    /// the call's reply. True when the caller took it (it asked for its
    /// calls' output); false sends it to [`Hooks::log`] instead.
    fn output(&self, _courier: &mut Self::Courier, _caller: &Self::Caller, _stream: Stream, _text: &[u8]) -> bool {
        false
    }
    /// `count` lines of worker output were dropped (the pool's log queue was
    /// full, or lines came faster than its `log_rate`).
    fn log_dropped(&self, courier: &mut Self::Courier, count: u64);
    /// Whether the caller still waits for replies: calls of a caller that
    /// died are dropped or cancelled.
    fn caller_alive(&self, courier: &mut Self::Courier, caller: &Self::Caller) -> bool;
    fn event(&self, courier: &mut Self::Courier, os_pid: u32, event: WorkerEvent);
}
