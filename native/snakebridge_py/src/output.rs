//! What Python code writes to `sys.stdout` and `sys.stderr`, and `logging`
//! records, sent to the host as `output` messages on the protocol socket.
//!
//! `snakebridge_worker.output` replaces the two streams with text streams
//! whose `write` lands in [`output`], and adds a root `logging` handler whose
//! records land in [`log`]. Complete lines become frames, tagged with the
//! call that wrote them: the one the main thread runs ([`CallScope`]), or,
//! for an asyncio task, the call the task belongs to (passed in by the
//! stream, from a context variable). Text without a final newline waits for
//! the rest of its line, or for the end of the call ([`CallScope`]'s drop),
//! whichever comes first, so it is never glued to the next call's output.
//!
//! Frames wait in a buffer that the worker loop writes ahead of its own
//! replies ([`write_after_output`]), so a call's lines reach the host before
//! its reply. Other threads write theirs at once, and so does the main
//! thread once the buffer is large, so a flood of output never piles up here.
//!
//! Locking: `STATE` is only held for short, non-blocking work and never while
//! waiting for the GIL; `WRITE` is only taken with the GIL released, and held
//! across the socket write, so frames from different threads never
//! interleave and frames appended before a write never go after it.

use std::os::fd::RawFd;
use std::sync::{Mutex, MutexGuard};
use std::thread::ThreadId;

use pyo3::prelude::*;
use pyo3::types::PyString;
use snakebridge_protocol::{Message, OUTPUT_LOGGING, OUTPUT_STDERR, OUTPUT_STDOUT};

use crate::fd::write_all;

/// The main thread writes its pending output itself past this size.
const WRITE_AT: usize = 64 * 1024;
/// A line longer than this is sent in pieces (as the host splits pipe lines).
const MAX_LINE: usize = 16 * 1024;

/// The call a line belongs to.
#[derive(Clone, Debug, Default)]
pub(crate) struct CallInfo {
    pub(crate) id: u64,
    pub(crate) module: Option<String>,
    pub(crate) function: Option<String>,
}

/// Text of one stream waiting for its newline, and whose it is.
#[derive(Default)]
struct Partial {
    text: String,
    call: Option<CallInfo>,
}

#[derive(Default)]
struct State {
    /// The protocol socket while `serve` runs.
    fd: Option<RawFd>,
    main: Option<ThreadId>,
    /// Encoded `output` frames not yet written.
    frames: Vec<u8>,
    /// stdout's and stderr's unfinished lines.
    partial: [Partial; 2],
    /// The call the main thread runs.
    current: Option<CallInfo>,
}

static STATE: Mutex<State> = Mutex::new(State {
    fd: None,
    main: None,
    frames: Vec::new(),
    partial: [
        Partial {
            text: String::new(),
            call: None,
        },
        Partial {
            text: String::new(),
            call: None,
        },
    ],
    current: None,
});
static WRITE: Mutex<()> = Mutex::new(());

/// A panic elsewhere while holding a lock leaves nothing half-done here
/// that matters more than losing output, so poisoning is ignored.
fn state() -> MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Output goes to socket `fd` from now on, until [`stop`].
pub(crate) fn serve(fd: RawFd) {
    let mut state = state();
    *state = State::default();
    state.fd = Some(fd);
    state.main = Some(std::thread::current().id());
}

pub(crate) fn stop() {
    *state() = State::default();
}

/// Marks the main thread as running a call until dropped; dropping sends
/// the text the call left without a newline.
pub(crate) struct CallScope(());

impl CallScope {
    pub(crate) fn begin(call: CallInfo) -> CallScope {
        state().current = Some(call);
        CallScope(())
    }
}

impl Drop for CallScope {
    fn drop(&mut self) {
        let mut state = state();
        state.current = None;
        state.flush_partials();
    }
}

/// The call the main thread runs now.
pub(crate) fn current() -> Option<CallInfo> {
    state().current.clone()
}

/// Sends the text left without a newline (after an event loop run, where
/// tasks may have left some).
pub(crate) fn flush_partials() {
    state().flush_partials();
}

impl State {
    fn push(&mut self, source: u8, level: u32, text: &str, call: Option<&CallInfo>) {
        let call = call.cloned().unwrap_or_default();
        let message = Message::Output {
            id: call.id,
            source,
            level,
            text: text.to_owned(),
            module: call.module,
            function: call.function,
        };
        if message.write_frame(&mut self.frames).is_err() {
            // Only a text over the frame limit fails; its start still says something.
            let mut cut = MAX_LINE;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            self.push(source, level, &text[..cut], None);
        }
    }

    fn flush_partials(&mut self) {
        for (index, source) in [OUTPUT_STDOUT, OUTPUT_STDERR].into_iter().enumerate() {
            let partial = std::mem::take(&mut self.partial[index]);
            if !partial.text.is_empty() {
                self.push(source, level_of(source), &partial.text, partial.call.as_ref());
            }
            // Keeps the buffer's capacity for the next line.
            self.partial[index].text = partial.text;
            self.partial[index].text.clear();
        }
    }

    /// The call a line written now by this thread belongs to.
    fn call_of(&self, task: Option<CallInfo>) -> Option<CallInfo> {
        task.or_else(|| {
            if self.main == Some(std::thread::current().id()) {
                self.current.clone()
            } else {
                None
            }
        })
    }

    /// Whether this thread should write the frames now.
    fn write_now(&self) -> bool {
        self.fd.is_some() && (self.frames.len() >= WRITE_AT || self.main != Some(std::thread::current().id()))
    }
}

/// The Python level of a stream's lines: INFO for stdout, WARNING for stderr.
fn level_of(source: u8) -> u32 {
    if source == OUTPUT_STDOUT {
        20
    } else {
        30
    }
}

/// Writes pending output frames, then `out`. Call with the GIL released.
pub(crate) fn write_after_output(fd: RawFd, out: &[u8]) -> std::io::Result<()> {
    let _write = WRITE.lock().unwrap_or_else(|e| e.into_inner());
    let frames = std::mem::take(&mut state().frames);
    if !frames.is_empty() {
        write_all(fd, &frames)?;
    }
    write_all(fd, out)
}

/// Writes pending output frames; errors are the worker loop's to see (a
/// host that is gone), not the writer's.
fn write_pending(py: Python<'_>) {
    let Some(fd) = state().fd else {
        return;
    };
    py.detach(|| {
        let _ = write_after_output(fd, &[]);
    });
}

/// `_native.output(source, text, call)`: text written to stdout (0) or
/// stderr (1); `call` is `(id, module, function)` for a task's call, or
/// `None` for the main thread's.
#[pyfunction]
#[pyo3(signature = (source, text, call=None))]
pub(crate) fn output(
    py: Python<'_>,
    source: u8,
    text: &Bound<'_, PyString>,
    call: Option<(u64, Option<String>, Option<String>)>,
) -> PyResult<()> {
    let index = match source {
        OUTPUT_STDOUT => 0,
        OUTPUT_STDERR => 1,
        _ => return Err(pyo3::exceptions::PyValueError::new_err("source must be 0 (stdout) or 1 (stderr)")),
    };
    let text = text.to_string_lossy();
    let task = call.map(|(id, module, function)| CallInfo { id, module, function });
    let write = {
        let mut state = state();
        let call = state.call_of(task);
        let partial = &mut state.partial[index];
        if partial.text.is_empty() {
            partial.call = call;
        }
        partial.text.push_str(&text);
        let mut lines = Vec::new();
        while let Some(end) = partial.text.find('\n').or((partial.text.len() >= MAX_LINE).then_some(MAX_LINE)) {
            let mut cut = end;
            while !partial.text.is_char_boundary(cut) {
                cut -= 1;
            }
            let line: String = partial.text.drain(..cut).collect();
            if partial.text.starts_with('\n') {
                partial.text.remove(0);
            }
            lines.push((line, partial.call.clone()));
        }
        for (line, call) in &lines {
            let line = line.strip_suffix('\r').unwrap_or(line);
            state.push(source, level_of(source), line, call.as_ref());
        }
        state.write_now()
    };
    if write {
        write_pending(py);
    }
    Ok(())
}

/// `_native.log(level, text, call)`: one `logging` record, formatted, at
/// its numeric level; `call` as for [`output`].
#[pyfunction]
#[pyo3(signature = (level, text, call=None))]
pub(crate) fn log(
    py: Python<'_>,
    level: u32,
    text: &Bound<'_, PyString>,
    call: Option<(u64, Option<String>, Option<String>)>,
) -> PyResult<()> {
    let text = text.to_string_lossy();
    let task = call.map(|(id, module, function)| CallInfo { id, module, function });
    let write = {
        let mut state = state();
        let call = state.call_of(task);
        state.push(OUTPUT_LOGGING, level, &text, call.as_ref());
        state.write_now()
    };
    if write {
        write_pending(py);
    }
    Ok(())
}

/// `_native.flush()`: sends the complete lines written so far now, rather
/// than ahead of the running call's reply (`print(..., flush=True)`, a
/// progress report). Text without a newline still waits for it.
#[pyfunction]
pub(crate) fn flush(py: Python<'_>) {
    write_pending(py);
}

/// `_native.current_call()`: `(id, module, function)` of the call the main
/// thread runs, or `None`; asyncio tasks keep it in a context variable.
#[pyfunction]
pub(crate) fn current_call() -> Option<(u64, Option<String>, Option<String>)> {
    current().map(|call| (call.id, call.module, call.function))
}
