//! The worker loop, single-threaded: the main thread reads the socket (GIL
//! released while blocked), handles every whole frame that arrived, and
//! writes the replies back in one write. Under load that amortises the
//! syscalls and GIL hand-offs over many calls; a lone call costs one wake-up
//! and still gets its reply as soon as it returns, because the loop flushes
//! whenever it runs out of frames.
//!
//! Batching must not hold a finished reply hostage to a slow call behind it,
//! so pending replies are flushed before a call to a function that was slow
//! last time (or has never run), before a cache miss (imports can be slow),
//! and once they have waited [`FLUSH_AFTER`].
//!
//! Before a call starts, the loop checks that the host has not cancelled it
//! and that its deadline has not passed; either way it replies with a
//! Failure instead of running it. A call that is running is interrupted by
//! SIGUSR1's handler (see `cancel`), never by its deadline: the host sends a
//! cancel for that.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyKeyboardInterrupt, PyRuntimeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};
use snakebridge_protocol::message::read_uint;
use snakebridge_protocol::value::{self as wire, decode_value};
use snakebridge_protocol::{DecodeError, FrameWriter, Header, Kind, Message, PROTOCOL_VERSION};

use crate::cancel::{self, frames, monotonic_micros, Running, Took};
use crate::decode::{non_string_keyword, BuildError, PyBuilder};
use crate::encode::Encoder;
use crate::fd::{host_gone, write_all};
use crate::ProtocolError;

/// Longest a finished reply waits for the replies batched after it.
const FLUSH_AFTER: Duration = Duration::from_millis(1);
/// A call at least this long marks its function slow (see module docs).
const SLOW_CALL: Duration = Duration::from_micros(500);
/// Pending replies beyond this size are written at once.
const FLUSH_BYTES: usize = 1 << 20;
/// The reply buffer shrinks back after a large reply.
const KEEP_CAPACITY: usize = 1 << 20;

/// Why the loop ends.
enum Stop {
    /// The host closed the channel: a normal exit.
    HostGone,
    /// Raised out of `serve`.
    Fatal(PyErr),
}

fn protocol(message: impl std::fmt::Display) -> Stop {
    Stop::Fatal(ProtocolError::new_err(format!("malformed frame from the host: {message}")))
}

impl From<DecodeError> for Stop {
    fn from(e: DecodeError) -> Self {
        protocol(e)
    }
}

/// A resolved callable and whether its last call was slow.
struct Entry {
    callable: Py<PyAny>,
    slow: bool,
}

struct Worker<'py> {
    py: Python<'py>,
    fd: RawFd,
    resolve: Bound<'py, PyAny>,
    describe: Bound<'py, PyAny>,
    /// `len(module) ++ module ++ function` → index into `entries`. Only
    /// successful resolutions are cached.
    cache: HashMap<Vec<u8>, usize>,
    entries: Vec<Entry>,
    /// Reused lookup key, so a cache hit allocates nothing.
    key: Vec<u8>,
    /// Encoded replies not yet written.
    out: Vec<u8>,
    /// When the oldest pending reply was finished.
    pending_since: Option<Instant>,
}

pub(crate) fn serve(
    py: Python<'_>,
    fd: RawFd,
    resolve: Bound<'_, PyAny>,
    describe: Bound<'_, PyAny>,
) -> PyResult<()> {
    ensure_main_thread(py)?;
    let mut worker = Worker {
        py,
        fd,
        resolve,
        describe,
        cache: HashMap::new(),
        entries: Vec::new(),
        key: Vec::new(),
        out: Vec::with_capacity(64 * 1024),
        pending_since: None,
    };
    let installed = cancel::install(fd);
    let result = worker.hello().and_then(|()| worker.run());
    drop(installed);
    match result {
        Ok(()) | Err(Stop::HostGone) => Ok(()),
        Err(Stop::Fatal(err)) => {
            // Replies already computed still go out before the error.
            let _ = worker.flush();
            Err(err)
        }
    }
}

/// Cancels reach a call as a signal, and Python runs signal handlers on its
/// main thread only.
fn ensure_main_thread(py: Python<'_>) -> PyResult<()> {
    let threading = py.import("threading")?;
    let main = threading.call_method0("main_thread")?.getattr("ident")?;
    if !main.eq(threading.call_method0("get_ident")?)? {
        return Err(PyRuntimeError::new_err(
            "serve() must run on the main thread, where Python runs signal handlers",
        ));
    }
    Ok(())
}

impl<'py> Worker<'py> {
    fn hello(&mut self) -> Result<(), Stop> {
        let version = self.py.version_info();
        Message::Hello {
            version: PROTOCOL_VERSION,
            pid: std::process::id(),
            python: format!("{}.{}.{}", version.major, version.minor, version.patch),
        }
        .write_frame(&mut self.out)
        .expect("a hello frame is small");
        self.flush()
    }

    fn run(&mut self) -> Result<(), Stop> {
        // Whole frames taken from the queue; its buffer is reused.
        let mut batch = Vec::new();
        loop {
            self.idle_signals()?;
            // Frames the handler read (while the last batch ran, or just
            // now in `idle_signals`) are handled before reading again.
            let took = cancel::with(|inbox| match inbox.take(&mut batch) {
                Took::Frames => Ok(true),
                Took::Nothing => match inbox.bad() {
                    Some(e) => Err(e),
                    None => {
                        inbox.all_handled();
                        Ok(false)
                    }
                },
            })?;
            if took {
                self.handle_all(&batch)?;
                self.flush()?;
                continue;
            }
            // Blocked in read(2) without the GIL, so the user's own threads
            // keep running between calls. A signal makes it fail with EINTR:
            // the next turn runs its Python handler.
            let read = self.py.detach(|| cancel::with(|inbox| inbox.read()));
            match read {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if host_gone(&e) => return Ok(()),
                Err(e) => return Err(Stop::Fatal(e.into())),
            }
        }
    }

    /// Runs the Python handlers of signals that arrived while no call was
    /// running. Otherwise they would fire inside the next call: a SIGINT
    /// meant for a call that already finished would interrupt an unrelated
    /// one. A KeyboardInterrupt here has nothing to interrupt and is dropped;
    /// a cancel (SIGUSR1) only reads and records, since no call is running;
    /// anything else a handler raises (SystemExit from a user's SIGTERM
    /// handler, say) ends the worker.
    fn idle_signals(&self) -> Result<(), Stop> {
        match self.py.check_signals() {
            Ok(()) => Ok(()),
            Err(e) if e.is_instance_of::<PyKeyboardInterrupt>(self.py) => Ok(()),
            Err(e) => Err(Stop::Fatal(e)),
        }
    }

    fn handle_all(&mut self, batch: &[u8]) -> Result<(), Stop> {
        for body in frames(batch) {
            let mut input = body;
            let header = Header::read(&mut input)?;
            match header.kind {
                Kind::Call => self.call(header.id, input)?,
                Kind::Ping => {
                    no_trailing(input)?;
                    Message::Pong { id: header.id }
                        .write_frame(&mut self.out)
                        .expect("a pong frame is small")
                }
                // Recorded when the frame was read.
                Kind::Cancel => no_trailing(input)?,
                other => return Err(protocol(format!("unexpected {other:?} message"))),
            }
        }
        Ok(())
    }

    fn call(&mut self, id: u64, mut input: &[u8]) -> Result<(), Stop> {
        let py = self.py;
        let deadline = read_uint(&mut input)?;
        if deadline != 0 && monotonic_micros() > deadline {
            // A cancel recorded for it is forgotten once the loop is idle.
            return self.failure(id, "timeout", "the caller stopped waiting before the call started");
        }
        let module = read_str(&mut input)?;
        let function = read_str(&mut input)?;
        // Decoding may run Python code (finalizers, through the GC), hence
        // the cancel handler: it is not marked running yet, so the handler
        // only records, and `begin` below sees the cancel.
        let args = match decode_args(py, &mut input)? {
            Ok(args) => args,
            Err(message) => return self.failure(id, "unsupported_type", &message),
        };
        let kwargs = match decode_kwargs(py, &mut input)? {
            Ok(kwargs) => kwargs,
            Err(message) => return self.failure(id, "unsupported_type", &message),
        };
        no_trailing(input)?;

        // Running from here (a cache miss imports, which may be slow and is
        // worth interrupting) until the callable returns.
        let Some(running) = Running::begin(id) else {
            return self.failure(id, "cancelled", "the call was cancelled before it started");
        };
        let index = match self.lookup(module, function)? {
            Ok(index) => index,
            Err(err) => {
                drop(running);
                return self.py_error(id, err);
            }
        };
        let entry = &self.entries[index];
        let (callable, slow) = (entry.callable.bind(py).clone(), entry.slow);
        let started = Instant::now();
        if !self.out.is_empty()
            && (slow || self.pending_since.is_none_or(|t| started - t >= FLUSH_AFTER))
        {
            self.flush()?;
        }

        // A Rust panic inside a pyo3 extension called by user code comes back
        // as a PanicException that pyo3 turns into a panic again on fetch;
        // catch it here so the loop survives it like any other exception.
        let result = panic::catch_unwind(AssertUnwindSafe(|| callable.call(&args, kwargs.as_ref())));
        // Not running any more before any other Python code runs (dropping
        // the arguments runs `__del__`, describing an exception runs
        // `traceback`): a late signal must not raise outside the call.
        drop(running);
        let finished = Instant::now();
        self.entries[index].slow = finished - started >= SLOW_CALL;
        drop(args);
        drop(kwargs);

        match result {
            Ok(Ok(value)) => self.ok(id, &value)?,
            Ok(Err(err)) => self.py_error(id, err)?,
            Err(payload) => self.panicked(id, payload)?,
        }
        self.pending_since.get_or_insert(finished);
        if self.out.len() >= FLUSH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// The cached callable for `module`/`function`, resolving it on a miss.
    /// The outer error stops the loop; the inner one is the exception raised
    /// by `resolve`, for a PyError reply.
    fn lookup(&mut self, module: &str, function: &str) -> Result<Result<usize, PyErr>, Stop> {
        self.key.clear();
        self.key.extend_from_slice(&(module.len() as u32).to_le_bytes());
        self.key.extend_from_slice(module.as_bytes());
        self.key.extend_from_slice(function.as_bytes());
        if let Some(&index) = self.cache.get(self.key.as_slice()) {
            return Ok(Ok(index));
        }
        // Importing can take a while: let finished replies go first.
        self.flush()?;
        let resolved = panic::catch_unwind(AssertUnwindSafe(|| self.resolve.call1((module, function))));
        let callable = match resolved {
            Ok(Ok(callable)) => callable,
            Ok(Err(err)) => return Ok(Err(err)),
            Err(payload) => return Ok(Err(panic_exception(payload))),
        };
        let index = self.entries.len();
        self.entries.push(Entry {
            callable: callable.unbind(),
            slow: true,
        });
        self.cache.insert(self.key.clone(), index);
        Ok(Ok(index))
    }

    fn ok(&mut self, id: u64, value: &Bound<'py, PyAny>) -> Result<(), Stop> {
        let start = FrameWriter::begin(&mut self.out);
        Header { kind: Kind::Ok, id }.write(&mut self.out);
        let encoded = Encoder::new(&mut self.out, start)
            .encode(value, 0)
            .and_then(|()| Ok(FrameWriter::finish(&mut self.out, start)?));
        match encoded {
            Ok(()) => Ok(()),
            Err(failure) => {
                FrameWriter::abandon(&mut self.out, start);
                self.failure(id, failure.reason(), &failure.message("result"))
            }
        }
    }

    fn failure(&mut self, id: u64, reason: &str, message: &str) -> Result<(), Stop> {
        let message = truncate(message, MAX_TEXT);
        Message::Failure {
            id,
            reason: reason.to_owned(),
            message: message.to_owned(),
        }
        .write_frame(&mut self.out)
        .expect("a truncated failure frame is small");
        Ok(())
    }

    fn py_error(&mut self, id: u64, err: PyErr) -> Result<(), Stop> {
        // `into_value` attaches the traceback to the exception object, so
        // `describe` sees it as `exc.__traceback__`.
        let exc = err.into_value(self.py).into_bound(self.py).into_any();
        let described = panic::catch_unwind(AssertUnwindSafe(|| {
            self.describe.call1((&exc,)).and_then(|d| description(&d))
        }));
        let (exc_type, exc_module, message, traceback) = match described {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => {
                eprintln!("snakebridge_worker: describe() failed: {e}");
                fallback_description(&exc)
            }
            Err(_) => fallback_description(&exc),
        };
        // The exception (and the frames its traceback keeps alive) goes now.
        drop(exc);
        let mut reply = Message::PyError {
            id,
            exc_type,
            exc_module,
            message,
            traceback,
        };
        if reply.write_frame(&mut self.out).is_err() {
            // Over the frame limit: keep the end of the traceback, where the
            // exception is, and cut long texts.
            if let Message::PyError { message, traceback, .. } = &mut reply {
                *message = truncate(message, MAX_TEXT).to_owned();
                let skip = traceback.len().saturating_sub(MAX_TRACEBACK_LINES);
                *traceback = traceback.drain(skip..).map(|l| truncate(&l, MAX_TEXT).to_owned()).collect();
            }
            reply.write_frame(&mut self.out).expect("a truncated error frame is small");
        }
        Ok(())
    }

    fn panicked(&mut self, id: u64, payload: Box<dyn std::any::Any + Send>) -> Result<(), Stop> {
        self.py_error(id, panic_exception(payload))
    }

    /// Writes the pending replies with the GIL released.
    fn flush(&mut self) -> Result<(), Stop> {
        self.pending_since = None;
        if self.out.is_empty() {
            return Ok(());
        }
        let (fd, out) = (self.fd, &self.out);
        let written = self.py.detach(|| write_all(fd, out));
        self.out.clear();
        if self.out.capacity() > KEEP_CAPACITY {
            self.out.shrink_to(KEEP_CAPACITY);
        }
        match written {
            Ok(()) => Ok(()),
            Err(e) if host_gone(&e) => Err(Stop::HostGone),
            Err(e) => Err(Stop::Fatal(e.into())),
        }
    }
}

/// Longest message or traceback line kept when a reply must be cut down.
const MAX_TEXT: usize = 64 * 1024;
const MAX_TRACEBACK_LINES: usize = 200;

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

fn no_trailing(input: &[u8]) -> Result<(), Stop> {
    if input.is_empty() {
        Ok(())
    } else {
        Err(DecodeError::TrailingBytes(input.len()).into())
    }
}

/// A str field, borrowed from the frame: no allocation.
fn read_str<'a>(input: &mut &'a [u8]) -> Result<&'a str, Stop> {
    let len = rmp::decode::read_str_len(input).map_err(|e| protocol(format!("expected a string field: {e}")))? as usize;
    if input.len() < len {
        return Err(DecodeError::Truncated.into());
    }
    let (bytes, rest) = input.split_at(len);
    *input = rest;
    std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8.into())
}

/// The positional arguments, built straight into the call's tuple. The inner
/// error is a Failure message: the bytes were fine but Python cannot hold the
/// value.
fn decode_args<'py>(py: Python<'py>, input: &mut &[u8]) -> Result<Result<Bound<'py, PyTuple>, String>, Stop> {
    let len = wire::read_array_len(input)?;
    // Every element takes at least a byte: a corrupt length cannot allocate.
    if len > input.len() {
        return Err(DecodeError::Truncated.into());
    }
    // SAFETY: a new tuple that only we reference; `PyTuple_SetItem` steals
    // each item. Slots left NULL after an early return are fine: tuple
    // deallocation skips them.
    let args = unsafe {
        match Bound::from_owned_ptr_or_err(py, ffi::PyTuple_New(len as ffi::Py_ssize_t)) {
            Ok(tuple) => tuple.cast_into_unchecked::<PyTuple>(),
            Err(e) => return Ok(Err(format!("cannot build the arguments: {e}"))),
        }
    };
    let mut builder = PyBuilder::new(py);
    for i in 0..len {
        match decode_value(input, &mut builder, 1) {
            Ok(item) => unsafe {
                ffi::PyTuple_SetItem(args.as_ptr(), i as ffi::Py_ssize_t, item.into_ptr());
            },
            Err(BuildError::Decode(e)) => return Err(e.into()),
            Err(BuildError::Py(e)) => return Ok(Err(format!("cannot convert argument {i} to Python: {e}"))),
        }
    }
    Ok(Ok(args))
}

/// The keyword arguments; `None` when there are none, so the common call
/// builds no dict.
fn decode_kwargs<'py>(py: Python<'py>, input: &mut &[u8]) -> Result<Result<Option<Bound<'py, PyDict>>, String>, Stop> {
    let len = rmp::decode::read_map_len(input).map_err(|e| protocol(format!("expected keyword arguments map: {e}")))? as usize;
    if len == 0 {
        return Ok(Ok(None));
    }
    if len > input.len() / 2 {
        return Err(DecodeError::Truncated.into());
    }
    let kwargs = PyDict::new(py);
    let mut builder = PyBuilder::new(py);
    for _ in 0..len {
        let pair = decode_value(input, &mut builder, 1).and_then(|k| Ok((k, decode_value(input, &mut builder, 1)?)));
        let (key, value) = match pair {
            Ok(pair) => pair,
            Err(BuildError::Decode(e)) => return Err(e.into()),
            Err(BuildError::Py(e)) => return Ok(Err(format!("cannot convert a keyword argument to Python: {e}"))),
        };
        if !key.is_instance_of::<PyString>() {
            return Ok(Err(non_string_keyword(&key).to_string()));
        }
        if let Err(e) = kwargs.set_item(&key, value) {
            return Ok(Err(format!("cannot convert keyword argument {key} to Python: {e}")));
        }
    }
    Ok(Ok(Some(kwargs)))
}

/// Reads `describe(exc)`'s `(type, module, message, traceback_lines)`.
fn description(d: &Bound<'_, PyAny>) -> PyResult<(String, String, String, Vec<String>)> {
    let t = d.cast::<PyTuple>()?;
    if t.len() != 4 {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "describe() must return 4 items, got {}",
            t.len()
        )));
    }
    let text = |i: usize| -> PyResult<String> { Ok(t.get_item(i)?.str()?.to_string_lossy().into_owned()) };
    let traceback = t
        .get_item(3)?
        .try_iter()?
        .map(|line| Ok(line?.str()?.to_string_lossy().into_owned()))
        .collect::<PyResult<Vec<String>>>()?;
    Ok((text(0)?, text(1)?, text(2)?, traceback))
}

/// Used when `describe` itself fails: the type and message, no traceback.
fn fallback_description(exc: &Bound<'_, PyAny>) -> (String, String, String, Vec<String>) {
    let ty = exc.get_type();
    let exc_type = ty.qualname().map(|s| s.to_string_lossy().into_owned());
    let exc_module = ty.module().map(|s| s.to_string_lossy().into_owned());
    let message = exc.str().map(|s| s.to_string_lossy().into_owned());
    (
        exc_type.unwrap_or_else(|_| "BaseException".to_owned()),
        exc_module.unwrap_or_else(|_| "builtins".to_owned()),
        message.unwrap_or_else(|_| "<exception str() failed>".to_owned()),
        Vec::new(),
    )
}

fn panic_exception(payload: Box<dyn std::any::Any + Send>) -> PyErr {
    let message = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "Rust panic".to_owned());
    pyo3::panic::PanicException::new_err(message)
}
