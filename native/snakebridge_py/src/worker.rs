//! The worker loop, single-threaded: the main thread reads the socket (GIL
//! released while blocked), handles every whole frame that arrived, and
//! writes the replies back in one write. Under load that amortises the
//! syscalls and GIL hand-offs over many calls; a lone call costs one wake-up
//! and still gets its reply as soon as it returns, because the loop flushes
//! whenever it runs out of frames.
//!
//! Batching must not hold a finished reply hostage to a slow call behind it,
//! so pending replies are flushed before a call to a function that was slow
//! last time (or has never run, or is reached through a handle), before a
//! cache miss (imports can be slow), and once they have waited
//! [`FLUSH_AFTER`].
//!
//! Before a call starts, the loop checks that the host has not cancelled it
//! and that its deadline has not passed; either way it replies with a
//! Failure instead of running it. A call that is running is interrupted by
//! SIGUSR1's handler (see `cancel`), never by its deadline: the host sends a
//! cancel for that.
//!
//! A call's result is sent by value, or as a handle to an object kept in the
//! table (`objects`) when it has no by-value form or the call asked for one.
//! Two kinds of work outlive the frame that started them:
//! - sync streams (`stream`): when no frame is queued, the loop writes one
//!   batch of the next stream (round-robin) that has credit, flushes, and
//!   checks the socket without blocking before the next batch;
//! - coroutines and async iterators, run by the asyncio runner
//!   (`snakebridge_worker.aio`): when no frame is queued and no sync stream
//!   can send, the loop runs the event loop until the socket is readable or
//!   something finished, then writes what the runner produced (replies,
//!   stream items). While sync streams can send, the event loop gets one
//!   non-blocking turn per round instead. The loop blocks in read(2) only
//!   when no task is pending.
//!
//! Replies to different calls may come in any order; a stream's `items`
//! messages come in order, before the message that ends it.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyKeyboardInterrupt, PyRuntimeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use snakebridge_protocol::message::read_uint;
use snakebridge_protocol::value::{self as wire, decode_value};
use snakebridge_protocol::{
    DecodeError, FrameWriter, Header, Kind, Message, Value, ValueBuilder, CALL_AS_ARROW, CALL_AS_HANDLE, CALL_BURST, CALL_STREAM, CALL_TIMED,
    PROTOCOL_VERSION,
};

use crate::cancel::{self, frames, monotonic_micros, Inbox, Polled, Running, Took};
use crate::decode::{self, non_string_keyword, BuildError, PyBuilder};
use crate::encode::{EncodeFailure, Encoder, Handles};
use crate::fd::host_gone;
use crate::objects;
use crate::output::{self, CallInfo, CallScope};
use crate::shm;
use crate::stream::{self, Batch, Refused, Stream};
use crate::{CallCancelled, ProtocolError};

/// Longest a finished reply waits for the replies batched after it.
const FLUSH_AFTER: Duration = Duration::from_millis(1);
/// A call at least this long marks its function slow (see module docs).
const SLOW_CALL: Duration = Duration::from_micros(500);
/// Pending replies beyond this size are written at once.
const FLUSH_BYTES: usize = 1 << 20;
/// The reply buffer shrinks back after a large reply.
const KEEP_CAPACITY: usize = 1 << 20;

/// Outcome kinds reported by the runner's `run` (see `aio.py`).
const OUTCOME_OK: u8 = 0;
const OUTCOME_ERROR: u8 = 1;
const OUTCOME_CANCELLED: u8 = 2;
const OUTCOME_ITEMS: u8 = 3;

const CANCELLED_MESSAGE: &str = "the caller cancelled the call";

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

/// A call that gets a Failure reply instead of running: its arguments hold
/// a value Python cannot build, or a stale handle.
struct Refusal {
    reason: &'static str,
    message: String,
}

impl Refusal {
    fn from_build(error: BuildError, what: impl FnOnce(PyErr) -> String) -> Result<Refusal, Stop> {
        match error {
            BuildError::Decode(e) => Err(e.into()),
            BuildError::Py(e) => Ok(Refusal {
                reason: "unsupported_type",
                message: what(e),
            }),
            BuildError::Stale(id) => Ok(Refusal {
                reason: "stale_handle",
                message: objects::stale_message(id),
            }),
        }
    }
}

/// What a call calls into.
enum Target<'a> {
    Module(&'a str),
    Handle(u64),
}

/// How a sync stream ended.
enum End {
    Exhausted,
    Raised(PyErr),
    Cancelled,
    Unsendable(EncodeFailure),
}

/// A resolved callable and whether its last call was slow.
struct Entry {
    callable: Py<PyAny>,
    slow: bool,
    /// `None` when the resolver gave no more than the callable.
    guard: Option<Guard>,
}

/// What a cached callable was found through (`dispatch.locate`). The entry
/// is used only while `sys.modules[key]` is still `module` and, when the
/// path's first name was in the module's `__dict__`, that still binds it to
/// the same object; else the call resolves again. So `importlib.reload`, a
/// module imported again or a function replaced by assignment is what the
/// next call runs. Checking costs two dict lookups with cached hashes.
struct Guard {
    key: Py<PyString>,
    module: Py<PyAny>,
    /// The module's `__dict__`, the first name and what it was bound to.
    binding: Option<(Py<PyDict>, Py<PyString>, Py<PyAny>)>,
}

impl Guard {
    /// Reads `locate`'s `(callable, imported name, module, first name)`.
    fn located<'py>(located: &Bound<'py, PyTuple>) -> PyResult<(Bound<'py, PyAny>, Guard)> {
        let callable = located.get_item(0)?;
        let key = located.get_item(1)?.cast_into::<PyString>()?;
        let module = located.get_item(2)?;
        let first = located.get_item(3)?;
        let binding = match (module.getattr("__dict__").ok(), first.is_none()) {
            (Some(names), false) => match names.cast_into::<PyDict>() {
                Ok(names) => {
                    let first = first.cast_into::<PyString>()?;
                    names.get_item(&first)?.map(|bound| (names.unbind(), first.unbind(), bound.unbind()))
                }
                Err(_) => None,
            },
            _ => None,
        };
        Ok((
            callable,
            Guard {
                key: key.unbind(),
                module: module.unbind(),
                binding,
            },
        ))
    }

    fn holds(&self) -> bool {
        // SAFETY: called with the GIL held (the loop's thread); every pointer
        // is a live object this guard owns, and `PyDict_GetItem` returns a
        // borrowed reference, only compared, or NULL without raising.
        unsafe {
            let modules = ffi::PyImport_GetModuleDict();
            if ffi::PyDict_GetItem(modules, self.key.as_ptr()) != self.module.as_ptr() {
                return false;
            }
            match &self.binding {
                Some((names, name, bound)) => ffi::PyDict_GetItem(names.as_ptr(), name.as_ptr()) == bound.as_ptr(),
                None => true,
            }
        }
    }
}

struct Worker<'py> {
    py: Python<'py>,
    fd: RawFd,
    resolve: Bound<'py, PyAny>,
    describe: Bound<'py, PyAny>,
    /// Makes the asyncio runner; `None`: `snakebridge_worker.aio.Runner`.
    runner_factory: Option<Bound<'py, PyAny>>,
    /// Created on the first coroutine or async iterator.
    runner: Option<Bound<'py, PyAny>>,
    /// `inspect.isawaitable`, imported on the first result that needs it.
    isawaitable: Option<Bound<'py, PyAny>>,
    /// `len(module) ++ module ++ function` → index into `entries`. Only
    /// successful resolutions are cached.
    cache: HashMap<Vec<u8>, usize>,
    entries: Vec<Entry>,
    /// Reused lookup key, so a cache hit allocates nothing.
    key: Vec<u8>,
    /// Encoded replies not yet written.
    out: Vec<u8>,
    /// Where `out` is rebuilt when large replies move to shared memory.
    scratch: Vec<u8>,
    /// When the oldest pending reply was finished.
    pending_since: Option<Instant>,
    /// Sync streams, served round-robin in this order.
    streams: Vec<Stream>,
    /// Where the round-robin goes on (may be past the end).
    next_stream: usize,
}

pub(crate) fn serve(
    py: Python<'_>,
    fd: RawFd,
    resolve: Bound<'_, PyAny>,
    describe: Bound<'_, PyAny>,
    runner_factory: Option<Bound<'_, PyAny>>,
) -> PyResult<()> {
    ensure_main_thread(py)?;
    let mut worker = Worker {
        py,
        fd,
        resolve,
        describe,
        runner_factory,
        runner: None,
        isawaitable: None,
        cache: HashMap::new(),
        entries: Vec::new(),
        key: Vec::new(),
        out: Vec::with_capacity(64 * 1024),
        scratch: Vec::new(),
        pending_since: None,
        streams: Vec::new(),
        next_stream: 0,
    };
    let installed = cancel::install(fd);
    output::serve(fd);
    let result = worker.hello().and_then(|()| worker.run());
    drop(installed);
    let result = match result {
        Ok(()) | Err(Stop::HostGone) => Ok(()),
        Err(Stop::Fatal(err)) => {
            // Replies already computed still go out before the error.
            let _ = worker.flush();
            Err(err)
        }
    };
    worker.shutdown();
    output::stop();
    result
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
            let streamed = self.pump_streams()?;
            let awaited = self.async_busy()?;
            if awaited {
                self.run_async(!streamed)?;
            }
            if streamed || awaited {
                self.flush()?;
                self.poll_input()?;
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

    /// Reads what the host sent meanwhile, without blocking: between stream
    /// batches and event loop runs, so their frames are handled next.
    fn poll_input(&mut self) -> Result<(), Stop> {
        match cancel::with(|inbox| inbox.poll()) {
            Ok(Polled::Read | Polled::Nothing) => Ok(()),
            Ok(Polled::Eof) => {
                self.finish_tasks()?;
                Err(Stop::HostGone)
            }
            Err(e) if host_gone(&e) => Err(Stop::HostGone),
            Err(e) => Err(Stop::Fatal(e.into())),
        }
    }

    fn handle_all(&mut self, batch: &[u8]) -> Result<(), Stop> {
        for body in frames(batch) {
            // A large call's body lies in shared memory, freed for the host
            // once the call has read its arguments.
            let shared = shm::incoming(body).transpose()?;
            let mut input = shared.as_ref().map_or(body, |s| s.bytes());
            let header = Header::read(&mut input)?;
            match header.kind {
                Kind::Call => self.call(header.id, input)?,
                Kind::Ping => {
                    no_trailing(input)?;
                    Message::Pong { id: header.id }
                        .write_frame(&mut self.out)
                        .expect("a pong frame is small")
                }
                Kind::Cancel => {
                    no_trailing(input)?;
                    // A call not started yet was recorded when the frame was
                    // read; streams and tasks outlive their call frame.
                    self.cancel(header.id)?;
                }
                Kind::Credit => {
                    let credit = read_uint(&mut input)?;
                    no_trailing(input)?;
                    self.credit(header.id, credit)?;
                }
                Kind::Release => {
                    let count = wire::read_array_len(&mut input)?;
                    if count > input.len() {
                        return Err(DecodeError::Truncated.into());
                    }
                    let ids = (0..count).map(|_| read_uint(&mut input)).collect::<Result<Vec<_>, _>>()?;
                    no_trailing(input)?;
                    objects::release(ids);
                }
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
        let target = read_target(&mut input)?;
        let function = read_function(&mut input)?;
        // Decoding may run Python code (finalizers, through the GC), hence
        // the cancel handler: it is not marked running yet, so the handler
        // only records, and `begin` below sees the cancel.
        let args = match decode_args(py, &mut input)? {
            Ok(args) => args,
            Err(refusal) => return self.failure(id, refusal.reason, &refusal.message),
        };
        let kwargs = match decode_kwargs(py, &mut input)? {
            Ok(kwargs) => kwargs,
            Err(refusal) => return self.failure(id, refusal.reason, &refusal.message),
        };
        let flags = read_uint(&mut input)?;
        let window = read_uint(&mut input)?;
        no_trailing(input)?;
        if flags & CALL_BURST != 0 {
            cancel::with(Inbox::burst);
        }
        let target_object = match target {
            Target::Module(_) => None,
            Target::Handle(handle) => match objects::get(py, handle) {
                Some(object) => Some(object),
                None => return self.failure(id, "stale_handle", &objects::stale_message(handle)),
            },
        };

        // Timed from here too: an import on a cache miss is Python's time.
        let timed_since = (flags & CALL_TIMED != 0).then(monotonic_micros);
        // Running from here (a cache miss imports, which may be slow and is
        // worth interrupting) until the callable returns.
        let Some(running) = Running::begin(id) else {
            return self.failure(id, "cancelled", "the call was cancelled before it started");
        };
        // Until the end of this function: lines written by the call, and by
        // the streams and tasks its result starts, are its own.
        let _output = CallScope::begin(CallInfo {
            id,
            module: match (&target, &target_object) {
                (Target::Module(module), _) => Some((*module).to_owned()),
                (Target::Handle(_), Some(object)) => object.get_type().fully_qualified_name().ok().map(|n| n.to_string()),
                (Target::Handle(_), None) => None,
            },
            function: function.map(str::to_owned),
        });
        let resolved = match (target, target_object) {
            (Target::Module(module), _) => self.lookup(module, function)?.map(|index| {
                let entry = &self.entries[index];
                (entry.callable.bind(py).clone(), Some(index))
            }),
            // Not cached: the object may change (and the path with it).
            (Target::Handle(_), Some(object)) => attribute_path(object, function).map(|callable| (callable, None)),
            (Target::Handle(_), None) => unreachable!("a handle target was looked up above"),
        };
        let (callable, index) = match resolved {
            Ok(resolved) => resolved,
            Err(err) => {
                drop(running);
                self.timing(id, timed_since);
                return self.py_error(id, err);
            }
        };
        let slow = index.is_none_or(|index| self.entries[index].slow);
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
        if let Some(index) = index {
            self.entries[index].slow = finished - started >= SLOW_CALL;
        }
        drop(args);
        drop(kwargs);

        match result {
            Ok(Ok(value)) => self.result(id, value, flags, window, timed_since)?,
            Ok(Err(err)) => {
                self.timing(id, timed_since);
                self.py_error(id, err)?
            }
            Err(payload) => {
                self.timing(id, timed_since);
                self.panicked(id, payload)?
            }
        }
        self.pending_since.get_or_insert(finished);
        if self.out.len() >= FLUSH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Replies with a call's result, or starts the work it stands for: a
    /// stream, or a task awaiting it.
    fn result(&mut self, id: u64, value: Bound<'py, PyAny>, flags: u64, window: u64, timed_since: Option<u64>) -> Result<(), Stop> {
        let as_handle = flags & CALL_AS_HANDLE != 0;
        if flags & CALL_AS_ARROW != 0 {
            return match crate::convert::to_arrow(&value) {
                Ok(table) => {
                    self.timing(id, timed_since);
                    self.ok(id, &table, false)
                }
                Err(err) => self.py_error(id, err),
            };
        }
        if flags & CALL_STREAM != 0 {
            return self.start_stream(id, value, window, as_handle);
        }
        if self.is_awaitable(&value) {
            let started = self.runner().and_then(|runner| runner.call_method1("call", (id, value, as_handle)));
            return match started {
                Ok(_) => self.started(id),
                Err(err) => self.py_error(id, err),
            };
        }
        self.timing(id, timed_since);
        self.ok(id, &value, as_handle)
    }

    /// The `timing` message that goes just before the reply of a call that
    /// asked for it (`CALL_TIMED`), measured since `since`.
    fn timing(&mut self, id: u64, since: Option<u64>) {
        if let Some(started_at) = since {
            Message::Timing {
                id,
                started_at,
                python_us: monotonic_micros().saturating_sub(started_at),
            }
            .write_frame(&mut self.out)
            .expect("a timing frame is small");
        }
    }

    /// `inspect.isawaitable(value)`, without calling it for the by-value
    /// types the hot path returns. An error in it counts as "no".
    fn is_awaitable(&mut self, value: &Bound<'py, PyAny>) -> bool {
        if is_plain_data(value) {
            return false;
        }
        let isawaitable = match &self.isawaitable {
            Some(f) => f.clone(),
            None => match self.py.import("inspect").and_then(|m| m.getattr("isawaitable")) {
                Ok(f) => self.isawaitable.insert(f).clone(),
                Err(_) => return false,
            },
        };
        isawaitable.call1((value,)).and_then(|r| r.is_truthy()).unwrap_or(false)
    }

    /// The asyncio runner, created on first use; its `wake` becomes the
    /// cancel handler's waker (see `cancel`).
    fn runner(&mut self) -> PyResult<Bound<'py, PyAny>> {
        if let Some(runner) = &self.runner {
            return Ok(runner.clone());
        }
        let factory = match &self.runner_factory {
            Some(factory) => factory.clone(),
            None => self.py.import("snakebridge_worker.aio")?.getattr("Runner")?,
        };
        let runner = factory.call1((self.fd,))?;
        cancel::set_waker(Some(runner.getattr("wake")?.unbind()));
        Ok(self.runner.insert(runner).clone())
    }

    fn start_stream(&mut self, id: u64, value: Bound<'py, PyAny>, window: u64, as_handle: bool) -> Result<(), Stop> {
        let asynchronous = value.hasattr("__aiter__").unwrap_or(false) || self.is_awaitable(&value);
        if asynchronous {
            let started = self
                .runner()
                .and_then(|runner| runner.call_method1("stream", (id, value, window, as_handle)));
            return match started {
                Ok(_) => self.started(id),
                Err(err) => self.py_error(id, err),
            };
        }
        match value.try_iter() {
            Ok(iterator) => {
                self.streams.push(Stream {
                    id,
                    iterator: iterator.unbind(),
                    credit: window,
                    as_handle,
                    slow: false,
                    started: false,
                    call: output::current(),
                });
                self.started(id)
            }
            Err(err) => self.py_error(id, err),
        }
    }

    /// Tells the host that call `id` goes on in the background (a task or a
    /// stream), so it stops counting against the window of calls the host
    /// writes ahead: waiting tasks and streams do not hold the loop up.
    fn started(&mut self, id: u64) -> Result<(), Stop> {
        Message::Started { id }
            .write_frame(&mut self.out)
            .expect("a started frame is small");
        Ok(())
    }

    /// Writes one batch of the next sync stream (round-robin) that has
    /// credit; an ended stream goes. Whether any stream could send.
    fn pump_streams(&mut self) -> Result<bool, Stop> {
        let count = self.streams.len();
        let Some(index) = (0..count)
            .map(|i| (self.next_stream + i) % count)
            .find(|&i| self.streams[i].credit > 0)
        else {
            return Ok(false);
        };
        if self.pump(index)? {
            self.streams.remove(index);
            self.next_stream = index;
        } else {
            self.next_stream = index + 1;
        }
        Ok(true)
    }

    /// Steps stream `index` for one batch; whether it ended.
    fn pump(&mut self, index: usize) -> Result<bool, Stop> {
        let py = self.py;
        let (id, as_handle) = (self.streams[index].id, self.streams[index].as_handle);
        let mut iterator = self.streams[index].iterator.bind(py).clone();
        let mut batch = Batch::begin(&mut self.out, id);
        let end = loop {
            if self.streams[index].batch_done(&batch, &self.out) {
                break None;
            }
            // Marked running around `next()` only, so a cancel's signal
            // interrupts a generator that blocks, and nothing else.
            let Some(running) = Running::begin(id) else {
                break Some(End::Cancelled);
            };
            let scope = CallScope::begin(self.streams[index].call.clone().unwrap_or_default());
            let started = Instant::now();
            let next = panic::catch_unwind(AssertUnwindSafe(|| iterator.next()));
            drop(scope);
            drop(running);
            self.streams[index].slow = started.elapsed() >= stream::SLOW_NEXT;
            let item = match next {
                Ok(Some(Ok(item))) => item,
                Ok(Some(Err(err))) => break Some(End::Raised(err)),
                Ok(None) => break Some(End::Exhausted),
                Err(payload) => break Some(End::Raised(panic_exception(payload))),
            };
            self.streams[index].credit -= 1;
            if let Err(failure) = self.push_item(&mut batch, &item, as_handle) {
                break Some(End::Unsendable(failure));
            }
        };
        batch.finish(&mut self.out);
        self.streams[index].started = true;
        let Some(end) = end else {
            return Ok(false);
        };
        match end {
            End::Exhausted => self.ok_nil(id)?,
            End::Raised(err) if err.is_instance_of::<CallCancelled>(py) => {
                // Raised inside the generator, whose `finally` has run.
                stream::close(iterator.as_any());
                self.failure(id, "cancelled", CANCELLED_MESSAGE)?;
            }
            End::Raised(err) => self.py_error(id, err)?,
            End::Cancelled => {
                stream::close(iterator.as_any());
                self.failure(id, "cancelled", CANCELLED_MESSAGE)?;
            }
            End::Unsendable(failure) => {
                stream::close(iterator.as_any());
                self.failure(id, failure.reason(), &failure.message("stream item"))?;
            }
        }
        Ok(true)
    }

    /// Adds `item` to `batch`, ending it and starting another when the item
    /// does not fit.
    fn push_item(&mut self, batch: &mut Batch, item: &Bound<'_, PyAny>, as_handle: bool) -> Result<(), EncodeFailure> {
        match batch.push(&mut self.out, item, as_handle) {
            Ok(()) => Ok(()),
            Err(Refused::Full) => {
                let id = batch.id();
                std::mem::replace(batch, Batch::begin(&mut self.out, id)).finish(&mut self.out);
                match batch.push(&mut self.out, item, as_handle) {
                    Ok(()) => Ok(()),
                    Err(Refused::Failed(failure)) => Err(failure),
                    Err(Refused::Full) => unreachable!("an empty batch takes any item within the frame limit"),
                }
            }
            Err(Refused::Failed(failure)) => Err(failure),
        }
    }

    /// A cancel of a stream or task (a call not started yet was handled
    /// when the frame was read; one already answered is ignored).
    fn cancel(&mut self, id: u64) -> Result<(), Stop> {
        if let Some(index) = self.streams.iter().position(|s| s.id == id) {
            let stream = self.streams.remove(index);
            stream::close(stream.iterator.bind(self.py).as_any());
            return self.failure(id, "cancelled", CANCELLED_MESSAGE);
        }
        if let Some(runner) = &self.runner {
            // Replied to once the task has finished cancelling.
            runner.call_method1("cancel", (id,)).map_err(Stop::Fatal)?;
        }
        Ok(())
    }

    fn credit(&mut self, id: u64, credit: u64) -> Result<(), Stop> {
        if let Some(stream) = self.streams.iter_mut().find(|s| s.id == id) {
            stream.credit = stream.credit.saturating_add(credit);
        } else if let Some(runner) = &self.runner {
            runner.call_method1("credit", (id, credit)).map_err(Stop::Fatal)?;
        }
        Ok(())
    }

    fn async_busy(&self) -> Result<bool, Stop> {
        match &self.runner {
            Some(runner) => runner
                .call_method0("busy")
                .and_then(|busy| busy.is_truthy())
                .map_err(Stop::Fatal),
            None => Ok(false),
        }
    }

    /// Runs the event loop (until the socket is readable or something
    /// finished, if `block`; else one turn) and writes what it produced.
    fn run_async(&mut self, block: bool) -> Result<(), Stop> {
        let runner = self.runner.clone().expect("async_busy found a runner");
        let outcomes = runner.call_method1("run", (block,));
        output::flush_partials();
        self.write_outcomes(&runner, outcomes)
    }

    /// The host sent its last frame (it is recycling this worker, or
    /// stopping the pool) but still reads: tasks already running finish and
    /// answer before the worker exits, as a running call would. Streams
    /// cannot go on without the host's credit; they fail with the worker.
    fn finish_tasks(&mut self) -> Result<(), Stop> {
        let Some(runner) = self.runner.clone() else {
            return Ok(());
        };
        let outcomes = runner.call_method0("finish");
        self.write_outcomes(&runner, outcomes)?;
        self.flush()
    }

    /// Writes what a run of the event loop produced.
    fn write_outcomes(&mut self, runner: &Bound<'py, PyAny>, outcomes: PyResult<Bound<'py, PyAny>>) -> Result<(), Stop> {
        let py = self.py;
        let outcomes = match outcomes {
            Ok(outcomes) => outcomes,
            // A SIGINT while tasks wait, with nothing to interrupt: as when idle.
            Err(e) if e.is_instance_of::<PyKeyboardInterrupt>(py) => return Ok(()),
            Err(e) => return Err(Stop::Fatal(e)),
        };
        let outcomes = outcomes.cast_into::<PyList>().map_err(|e| Stop::Fatal(e.into()))?;
        // Streams whose item could not be sent: they already got their
        // Failure, so what the runner reports for them after it is dropped.
        let mut ended: Vec<u64> = Vec::new();
        for outcome in outcomes.iter() {
            let (id, kind, value, as_handle): (u64, u8, Bound<'py, PyAny>, bool) =
                outcome.extract().map_err(Stop::Fatal)?;
            if ended.contains(&id) {
                continue;
            }
            match kind {
                OUTCOME_OK => self.ok(id, &value, as_handle)?,
                OUTCOME_ERROR => self.py_error(id, PyErr::from_value(value))?,
                OUTCOME_CANCELLED => self.failure(id, "cancelled", CANCELLED_MESSAGE)?,
                OUTCOME_ITEMS => {
                    if let Some(failure) = self.async_items(id, &value, as_handle)? {
                        self.failure(id, failure.reason(), &failure.message("stream item"))?;
                        runner.call_method1("abort", (id,)).map_err(Stop::Fatal)?;
                        ended.push(id);
                    }
                }
                other => return Err(Stop::Fatal(PyRuntimeError::new_err(format!("unknown runner outcome {other}")))),
            }
            if self.out.len() >= FLUSH_BYTES {
                self.flush()?;
            }
        }
        Ok(())
    }

    /// Writes the items an async stream produced, in batches; the failure
    /// of the first item that cannot be sent, if any.
    fn async_items(&mut self, id: u64, items: &Bound<'py, PyAny>, as_handle: bool) -> Result<Option<EncodeFailure>, Stop> {
        let items = items.try_iter().map_err(Stop::Fatal)?;
        let mut batch = Batch::begin(&mut self.out, id);
        for item in items {
            let item = item.map_err(Stop::Fatal)?;
            if batch.full(&self.out) {
                std::mem::replace(&mut batch, Batch::begin(&mut self.out, id)).finish(&mut self.out);
            }
            if let Err(failure) = self.push_item(&mut batch, &item, as_handle) {
                batch.finish(&mut self.out);
                return Ok(Some(failure));
            }
        }
        batch.finish(&mut self.out);
        Ok(None)
    }

    /// Ends the work that outlives `serve`: generators are closed as their
    /// iterators go, tasks are cancelled, and the table lets its objects go.
    fn shutdown(&mut self) {
        self.streams.clear();
        if let Some(runner) = self.runner.take() {
            if let Err(e) = runner.call_method0("shutdown") {
                eprintln!("snakebridge_worker: shutting the event loop down failed: {e}");
            }
        }
        objects::clear();
    }

    /// The cached callable for `module`/`function`, resolving it on a miss.
    /// The outer error stops the loop; the inner one is the exception raised
    /// by `resolve`, for a PyError reply.
    fn lookup(&mut self, module: &str, function: Option<&str>) -> Result<Result<usize, PyErr>, Stop> {
        self.key.clear();
        self.key.extend_from_slice(&(module.len() as u32).to_le_bytes());
        self.key.extend_from_slice(module.as_bytes());
        match function {
            Some(function) => self.key.extend_from_slice(function.as_bytes()),
            // Not UTF-8, so no function name makes the same key.
            None => self.key.push(0xff),
        }
        let cached = self.cache.get(self.key.as_slice()).copied();
        if let Some(index) = cached {
            if self.entries[index].guard.as_ref().is_none_or(Guard::holds) {
                return Ok(Ok(index));
            }
        }
        // Importing can take a while: let finished replies go first.
        self.flush()?;
        let resolved = panic::catch_unwind(AssertUnwindSafe(|| {
            self.resolve.call1((module, function)).and_then(|found| match found.cast::<PyTuple>() {
                Ok(located) => Guard::located(located).map(|(callable, guard)| (callable, Some(guard))),
                Err(_) => Ok((found, None)),
            })
        }));
        let (callable, guard) = match resolved {
            Ok(Ok(resolved)) => resolved,
            Ok(Err(err)) => {
                self.forget(cached);
                return Ok(Err(err));
            }
            Err(payload) => {
                self.forget(cached);
                return Ok(Err(panic_exception(payload)));
            }
        };
        let entry = Entry {
            callable: callable.unbind(),
            slow: true,
            guard,
        };
        match cached {
            Some(index) => {
                self.entries[index] = entry;
                Ok(Ok(index))
            }
            None => {
                let index = self.entries.len();
                self.entries.push(entry);
                self.cache.insert(self.key.clone(), index);
                Ok(Ok(index))
            }
        }
    }

    /// Drops the cache's key for an entry that no longer resolves, and what
    /// the entry held; its slot in `entries` stays, unreachable, so other
    /// indices stay valid.
    fn forget(&mut self, cached: Option<usize>) {
        if let Some(index) = cached {
            self.cache.remove(self.key.as_slice());
            self.entries[index] = Entry {
                callable: self.py.None(),
                slow: true,
                guard: None,
            };
        }
    }

    /// An ok reply; handles it registers are released again if the reply
    /// cannot be sent after all.
    fn ok(&mut self, id: u64, value: &Bound<'py, PyAny>, as_handle: bool) -> Result<(), Stop> {
        if let Ok(bytes) = value.cast_exact::<PyBytes>() {
            if !as_handle && shm::ok_bytes(&mut self.out, id, bytes.as_bytes()) {
                return Ok(());
            }
        }
        let start = FrameWriter::begin(&mut self.out);
        Header { kind: Kind::Ok, id }.write(&mut self.out);
        let mut registered = Vec::new();
        let out = &mut self.out;
        // A handle's repr() is user code: should it mutate a dict being
        // encoded, pyo3's dict iterator panics. That is the call's problem,
        // not the loop's.
        let encoded = panic::catch_unwind(AssertUnwindSafe(|| {
            let mut encoder = Encoder::new(out, start, Handles::Register(&mut registered));
            if as_handle {
                encoder.encode_as_handle(value)
            } else {
                encoder.encode(value, 0)
            }
        }));
        let encoded = match encoded {
            Ok(encoded) => encoded.and_then(|()| Ok(FrameWriter::finish_within(&mut self.out, start, shm::max_payload())?)),
            Err(payload) => {
                FrameWriter::abandon(&mut self.out, start);
                objects::release(registered);
                return self.panicked(id, payload);
            }
        };
        match encoded {
            Ok(()) => Ok(()),
            Err(failure) => {
                FrameWriter::abandon(&mut self.out, start);
                objects::release(registered);
                self.failure(id, failure.reason(), &failure.message("result"))
            }
        }
    }

    /// The ok that ends a stream.
    fn ok_nil(&mut self, id: u64) -> Result<(), Stop> {
        Message::Ok { id, value: Value::Nil }
            .write_frame(&mut self.out)
            .expect("an ok frame with nil is small");
        Ok(())
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
        let (exc_type, exc_module, message, traceback, attributes) = match described {
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
            attributes,
        };
        if reply.write_frame(&mut self.out).is_err() {
            // Over the frame limit: keep the end of the traceback, where the
            // exception is, cut long texts and drop the attributes.
            if let Message::PyError {
                message,
                traceback,
                attributes,
                ..
            } = &mut reply
            {
                attributes.clear();
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
        shm::offload(&mut self.out, &mut self.scratch);
        let (fd, out) = (self.fd, &self.out);
        // Output first: a call's lines go before its reply.
        let written = self.py.detach(|| output::write_after_output(fd, out));
        self.out.clear();
        if self.out.capacity() > shm::keep_capacity() {
            self.out.shrink_to(KEEP_CAPACITY);
        }
        match written {
            Ok(()) => Ok(()),
            Err(e) if host_gone(&e) => Err(Stop::HostGone),
            Err(e) => Err(Stop::Fatal(e.into())),
        }
    }
}

/// Results of these exact types are sent by value and are never awaitable:
/// the hot path skips `inspect.isawaitable` for them.
fn is_plain_data(value: &Bound<'_, PyAny>) -> bool {
    let ptr = value.as_ptr();
    // SAFETY: comparing a live object's type pointer with the built-in types.
    unsafe {
        let ty = ffi::Py_TYPE(ptr);
        ptr == ffi::Py_None()
            || ty == &raw mut ffi::PyLong_Type
            || ty == &raw mut ffi::PyUnicode_Type
            || ty == &raw mut ffi::PyFloat_Type
            || ty == &raw mut ffi::PyBool_Type
            || ty == &raw mut ffi::PyList_Type
            || ty == &raw mut ffi::PyDict_Type
            || ty == &raw mut ffi::PyTuple_Type
            || ty == &raw mut ffi::PyBytes_Type
    }
}

/// `object`, or the attribute at the dotted `path` on it.
fn attribute_path<'py>(object: Bound<'py, PyAny>, path: Option<&str>) -> PyResult<Bound<'py, PyAny>> {
    let Some(path) = path else {
        return Ok(object);
    };
    let mut target = object;
    for name in path.split('.') {
        target = target.getattr(name)?;
    }
    Ok(target)
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

/// A call's target: a module path (str) or a handle.
fn read_target<'a>(input: &mut &'a [u8]) -> Result<Target<'a>, Stop> {
    if input.first().is_some_and(|&b| is_str_marker(b)) {
        return Ok(Target::Module(read_str(input)?));
    }
    match decode_value(input, &mut ValueBuilder, 0)? {
        Value::Handle { id, .. } => Ok(Target::Handle(id)),
        _ => Err(protocol("a call's target must be a module or a handle")),
    }
}

/// A call's function: an attribute path, or nil for the target itself.
fn read_function<'a>(input: &mut &'a [u8]) -> Result<Option<&'a str>, Stop> {
    if input.first() == Some(&0xc0) {
        *input = &input[1..];
        return Ok(None);
    }
    Ok(Some(read_str(input)?))
}

fn is_str_marker(b: u8) -> bool {
    matches!(b, 0xa0..=0xbf | 0xd9 | 0xda | 0xdb)
}

/// The positional arguments, built straight into the call's tuple. The inner
/// error is a Failure: the bytes were fine but Python cannot hold the value,
/// or a handle is stale.
fn decode_args<'py>(py: Python<'py>, input: &mut &[u8]) -> Result<Result<Bound<'py, PyTuple>, Refusal>, Stop> {
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
            Err(e) => {
                return Ok(Err(Refusal {
                    reason: "unsupported_type",
                    message: format!("cannot build the arguments: {e}"),
                }))
            }
        }
    };
    let mut builder = PyBuilder::new(py, decode::Handles::Table);
    for i in 0..len {
        match decode_value(input, &mut builder, 1) {
            // SAFETY: `i < len`, the tuple's size; the slot is still NULL and
            // `into_ptr` hands over the reference the tuple steals.
            Ok(item) => unsafe {
                ffi::PyTuple_SetItem(args.as_ptr(), i as ffi::Py_ssize_t, item.into_ptr());
            },
            Err(e) => return Refusal::from_build(e, |e| format!("cannot convert argument {i} to Python: {e}")).map(Err),
        }
    }
    Ok(Ok(args))
}

/// The keyword arguments; `None` when there are none, so the common call
/// builds no dict.
fn decode_kwargs<'py>(py: Python<'py>, input: &mut &[u8]) -> Result<Result<Option<Bound<'py, PyDict>>, Refusal>, Stop> {
    let len = rmp::decode::read_map_len(input).map_err(|e| protocol(format!("expected keyword arguments map: {e}")))? as usize;
    if len == 0 {
        return Ok(Ok(None));
    }
    if len > input.len() / 2 {
        return Err(DecodeError::Truncated.into());
    }
    let kwargs = PyDict::new(py);
    let mut builder = PyBuilder::new(py, decode::Handles::Table);
    let unsupported = |message: String| Ok(Err(Refusal { reason: "unsupported_type", message }));
    for _ in 0..len {
        let pair = decode_value(input, &mut builder, 1).and_then(|k| Ok((k, decode_value(input, &mut builder, 1)?)));
        let (key, value) = match pair {
            Ok(pair) => pair,
            Err(e) => return Refusal::from_build(e, |e| format!("cannot convert a keyword argument to Python: {e}")).map(Err),
        };
        if !key.is_instance_of::<PyString>() {
            return unsupported(non_string_keyword(&key).to_string());
        }
        if let Err(e) = kwargs.set_item(&key, value) {
            return unsupported(format!("cannot convert keyword argument {key} to Python: {e}"));
        }
    }
    Ok(Ok(Some(kwargs)))
}

/// What `describe` says of an exception: type, module, message,
/// traceback lines and attributes.
type Description = (String, String, String, Vec<String>, Vec<(Value, Value)>);

/// Reads `describe(exc)`'s `(type, module, message, traceback_lines[, attributes])`.
fn description(d: &Bound<'_, PyAny>) -> PyResult<Description> {
    let t = d.cast::<PyTuple>()?;
    if t.len() != 4 && t.len() != 5 {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "describe() must return 4 or 5 items, got {}",
            t.len()
        )));
    }
    let text = |i: usize| -> PyResult<String> { Ok(t.get_item(i)?.str()?.to_string_lossy().into_owned()) };
    let traceback = t
        .get_item(3)?
        .try_iter()?
        .map(|line| Ok(line?.str()?.to_string_lossy().into_owned()))
        .collect::<PyResult<Vec<String>>>()?;
    let attributes = if t.len() == 5 { attribute_values(&t.get_item(4)?) } else { Vec::new() };
    Ok((text(0)?, text(1)?, text(2)?, traceback, attributes))
}

/// The attributes `describe` found, as wire values; none if they cannot
/// all be sent by value.
fn attribute_values(attributes: &Bound<'_, PyAny>) -> Vec<(Value, Value)> {
    let mut encoded = Vec::new();
    if Encoder::new(&mut encoded, 0, Handles::Refuse).encode(attributes, 0).is_err() {
        return Vec::new();
    }
    match decode_value(&mut encoded.as_slice(), &mut ValueBuilder, 0) {
        Ok(Value::Map(pairs)) if pairs.iter().all(|(k, _)| matches!(k, Value::Str(_))) => pairs,
        _ => Vec::new(),
    }
}

/// Used when `describe` itself fails: the type and message, no traceback.
fn fallback_description(exc: &Bound<'_, PyAny>) -> Description {
    let ty = exc.get_type();
    let exc_type = ty.qualname().map(|s| s.to_string_lossy().into_owned());
    let exc_module = ty.module().map(|s| s.to_string_lossy().into_owned());
    let message = exc.str().map(|s| s.to_string_lossy().into_owned());
    (
        exc_type.unwrap_or_else(|_| "BaseException".to_owned()),
        exc_module.unwrap_or_else(|_| "builtins".to_owned()),
        message.unwrap_or_else(|_| "<exception str() failed>".to_owned()),
        Vec::new(),
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
