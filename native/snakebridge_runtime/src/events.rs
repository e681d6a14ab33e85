//! What the runtime reports about calls, workers and the pool: plain data,
//! shared by the threads that find it out and the embedder's hooks.

use std::fmt;

/// Where a line of a worker's output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
    /// A record of Python's `logging`.
    Logging,
}

/// A log level, named as Elixir's `Logger` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug,
    Info,
    Notice,
    Warning,
    Error,
    Critical,
}

impl Level {
    /// The level of a Python `logging` level number. A level between two
    /// named ones rounds down, as Python's own level filters treat it; 25,
    /// between INFO and WARNING, is `notice`.
    pub fn from_python(level: u32) -> Level {
        match level {
            0..=19 => Level::Debug,
            20..=24 => Level::Info,
            25..=29 => Level::Notice,
            30..=39 => Level::Warning,
            40..=49 => Level::Error,
            _ => Level::Critical,
        }
    }

    /// The level of a line written to a standard stream outside `logging`.
    pub fn of_stream(stream: Stream) -> Level {
        match stream {
            Stream::Stdout => Level::Info,
            Stream::Stderr | Stream::Logging => Level::Warning,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Notice => "notice",
            Level::Warning => "warning",
            Level::Error => "error",
            Level::Critical => "critical",
        }
    }
}

/// One line of a worker's output, as handed to [`Hooks::log`](crate::Hooks::log).
#[derive(Debug)]
pub struct LogLine<'a, C> {
    pub os_pid: u32,
    pub stream: Stream,
    pub level: Level,
    pub text: &'a [u8],
    /// Who made the call that wrote the line, if the line came during a
    /// call (through the protocol) and the call is still in the table.
    pub caller: Option<&'a C>,
    /// The module (or, for a call on an object, its type) and function of
    /// that call.
    pub module: Option<&'a str>,
    pub function: Option<&'a str>,
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
    /// The msgpack encoding of the exception's public attributes (a map of
    /// names to values, with no handles in it).
    pub attributes: Vec<u8>,
}

/// Something that happened to a worker process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerEvent {
    Started { python: String },
    Exited(ExitInfo),
    StartFailed { message: String },
    /// The worker takes no new calls and exits once it has answered its
    /// calls: it reached `max_calls` or `max_memory`.
    Recycling { reason: RecycleReason },
}

/// Why a worker is recycled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecycleReason {
    MaxCalls,
    MaxMemory,
}

impl RecycleReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RecycleReason::MaxCalls => "max_calls",
            RecycleReason::MaxMemory => "max_memory",
        }
    }
}

/// How long a call waited and ran, as its worker reported it (the call
/// was submitted with the protocol's `CALL_TIMED` flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub os_pid: u32,
    /// When the worker started the call (`CLOCK_MONOTONIC` µs, see
    /// [`crate::monotonic_micros`]).
    pub started_at: u64,
    /// How long it ran in Python (µs).
    pub python_us: u64,
}

/// A change of state of a pool's circuit breaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitChange {
    /// `closed`, `open` or `half_open`, as in [`crate::BreakerStats`].
    pub from: &'static str,
    pub to: &'static str,
    /// What opened the circuit (when `to` is `open`).
    pub reason: Option<String>,
}
