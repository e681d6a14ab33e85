//! What the runtime tells its embedder: replies, worker output and events.

use std::fmt;

use snakebridge_protocol::DecodeError;

use crate::object::Origin;

/// Which standard stream of a worker a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitInfo {
    Status(i32),
    Signal(i32),
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitInfo::Status(code) => write!(f, "exit status {code}"),
            ExitInfo::Signal(sig) => write!(f, "signal {sig}"),
        }
    }
}

/// Why a call failed without a Python exception. Each is an atom on the
/// Elixir side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    WorkerExited,
    PythonUnavailable,
    Overloaded,
    UnsupportedType,
    NestingTooDeep,
    PayloadTooLarge,
    ProtocolError,
    Timeout,
    Cancelled,
    StaleHandle,
    HandleConflict,
    CircuitOpen,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::WorkerExited => "worker_exited",
            Reason::PythonUnavailable => "python_unavailable",
            Reason::Overloaded => "overloaded",
            Reason::UnsupportedType => "unsupported_type",
            Reason::NestingTooDeep => "nesting_too_deep",
            Reason::PayloadTooLarge => "payload_too_large",
            Reason::ProtocolError => "protocol_error",
            Reason::Timeout => "timeout",
            Reason::Cancelled => "cancelled",
            Reason::StaleHandle => "stale_handle",
            Reason::HandleConflict => "handle_conflict",
            Reason::CircuitOpen => "circuit_open",
        }
    }

    /// Reasons a worker may put in a failure reply; anything else from a
    /// worker is a protocol error.
    pub fn from_worker(s: &str) -> Option<Reason> {
        match s {
            "unsupported_type" => Some(Reason::UnsupportedType),
            "nesting_too_deep" => Some(Reason::NestingTooDeep),
            "payload_too_large" => Some(Reason::PayloadTooLarge),
            "timeout" => Some(Reason::Timeout),
            "cancelled" => Some(Reason::Cancelled),
            "stale_handle" => Some(Reason::StaleHandle),
            _ => None,
        }
    }
}

/// A failure that is not a Python exception.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: Reason,
    pub message: String,
    /// The worker involved, when there was one.
    pub os_pid: Option<u32>,
    pub exit: Option<ExitInfo>,
}

impl Failure {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Failure {
            reason,
            message: message.into(),
            os_pid: None,
            exit: None,
        }
    }
}

/// A Python exception raised by the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonError {
    pub exc_type: String,
    pub exc_module: String,
    pub message: String,
    pub traceback: Vec<String>,
}

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

/// Something that happened to a worker process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerEvent {
    Started { python: String },
    Exited(ExitInfo),
    StartFailed { message: String },
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
    fn log(&self, courier: &mut Self::Courier, os_pid: u32, stream: Stream, line: &[u8]);
    /// Whether the caller still waits for replies: calls of a caller that
    /// died are dropped or cancelled.
    fn caller_alive(&self, courier: &mut Self::Courier, caller: &Self::Caller) -> bool;
    fn event(&self, courier: &mut Self::Courier, os_pid: u32, event: WorkerEvent);
}
