//! `snakebridge_worker._native`: the Python worker's hot path, in Rust.
//!
//! - [`dumps`] / [`loads`]: the value codec (`encode` / `decode`), the same
//!   wire format the host speaks, via the protocol crate.
//! - [`serve`]: the worker loop (`worker`), single-threaded: the main thread
//!   reads the protocol socket (`fd`), runs the calls and writes the replies.
//!   Results with no by-value form are kept in the object table (`objects`)
//!   and sent as handles; the host sends handles back as arguments or call
//!   targets, and releases them. Streamed calls are iterated under the
//!   host's credit (`stream`); coroutines and async iterators run on one
//!   asyncio event loop (`snakebridge_worker.aio`) whenever the loop has
//!   nothing else to do.
//! - `cancel_signal`: the SIGUSR1 handler through which a cancel (a Cancel
//!   frame, then the signal) interrupts the running call or stream step with
//!   `CallCancelled`, or wakes the event loop (`cancel`).
//! - [`object_count`]: how many objects the table holds.
//! - `output`, `log`, `current_call`: lines written to `sys.stdout` and
//!   `sys.stderr` and `logging` records, sent to the host tagged with the
//!   call that wrote them (`output`; see `snakebridge_worker.output`).

mod cancel;
mod convert;
mod decode;
mod encode;
mod fd;
mod objects;
mod output;
mod shm;
mod stream;
mod worker;

use std::os::fd::RawFd;

use pyo3::create_exception;
use pyo3::exceptions::{PyBaseException, PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use snakebridge_protocol::{decode_value, DecodeError as WireDecodeError, MAX_BIGINT_BYTES, MAX_DEPTH, MAX_FRAME_LEN, PROTOCOL_VERSION};

create_exception!(
    snakebridge_worker._native,
    ProtocolError,
    PyException,
    "The host sent bytes that are not a valid frame; the worker cannot go on."
);
create_exception!(
    snakebridge_worker._native,
    EncodeError,
    PyValueError,
    "A value has no wire form. `reason` is unsupported_type, nesting_too_deep or payload_too_large."
);
create_exception!(
    snakebridge_worker._native,
    DecodeError,
    PyValueError,
    "Bytes that are not one valid value, or a value Python cannot hold."
);

create_exception!(
    snakebridge_worker,
    CallCancelled,
    PyBaseException,
    "The host cancelled the call while it ran. A BaseException, like KeyboardInterrupt, \
     so that `except Exception` does not swallow it."
);

/// Encodes a Python value into the wire format (msgpack plus extensions).
///
/// A value with no by-value form raises `EncodeError`, unless `handle_id`
/// (called with it) returns an id: then it is written as a handle `[id]`,
/// as the host sends one.
#[pyfunction]
#[pyo3(signature = (obj, *, handle_id=None))]
fn dumps<'py>(obj: &Bound<'py, PyAny>, handle_id: Option<Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyBytes>> {
    let py = obj.py();
    let mut out = Vec::new();
    let handles = match &handle_id {
        Some(hook) => encode::Handles::Hook(hook),
        None => encode::Handles::Refuse,
    };
    match encode::Encoder::new(&mut out, 0, handles).encode(obj, 0) {
        Ok(()) => Ok(PyBytes::new(py, &out)),
        Err(failure) => {
            let err = EncodeError::new_err(failure.message("value"));
            err.value(py).setattr("reason", failure.reason())?;
            Err(err)
        }
    }
}

/// Decodes exactly one wire value into Python objects.
///
/// A handle becomes `handle(id, type_name, repr)` (the last two are `None`
/// in a handle the host sent); without `handle`, it raises `DecodeError`.
#[pyfunction]
#[pyo3(signature = (data, *, handle=None))]
fn loads<'py>(py: Python<'py>, data: &[u8], handle: Option<Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
    let mut input = data;
    let handles = match &handle {
        Some(hook) => decode::Handles::Hook(hook),
        None => decode::Handles::Refuse,
    };
    let value = decode_value(&mut input, &mut decode::PyBuilder::new(py, handles), 0).map_err(|e| match e {
        decode::BuildError::Decode(e) => DecodeError::new_err(e.to_string()),
        decode::BuildError::Py(e) => {
            let err = DecodeError::new_err(format!("cannot build the value in Python: {e}"));
            err.set_cause(py, Some(e));
            err
        }
        decode::BuildError::Stale(id) => DecodeError::new_err(objects::stale_message(id)),
    })?;
    if !input.is_empty() {
        return Err(DecodeError::new_err(WireDecodeError::TrailingBytes(input.len()).to_string()));
    }
    Ok(value)
}

/// The number of objects in the worker's object table (0 outside `serve`).
#[pyfunction]
fn object_count() -> usize {
    objects::count()
}

/// Serves the protocol on socket `fd` until the host closes it.
///
/// `resolve(module, function)` returns the callable for a call whose target
/// is a module (results are cached; `function` is `None` for the target
/// itself); `describe(exc)` returns `(type, module, message,
/// traceback_lines)` for an exception; `runner(fd)` makes the asyncio runner
/// on the first coroutine or async iterator (default:
/// `snakebridge_worker.aio.Runner`). Returns on EOF; raises `ProtocolError` on a malformed frame.
/// Must run on the main thread; a cancel interrupts the running call only if
/// SIGUSR1's handler is `cancel_signal`.
#[pyfunction]
#[pyo3(signature = (fd, resolve, describe, runner=None))]
fn serve(
    py: Python<'_>,
    fd: RawFd,
    resolve: Bound<'_, PyAny>,
    describe: Bound<'_, PyAny>,
    runner: Option<Bound<'_, PyAny>>,
) -> PyResult<()> {
    worker::serve(py, fd, resolve, describe, runner)
}

#[pymodule]
#[pyo3(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_function(wrap_pyfunction!(dumps, m)?)?;
    m.add_function(wrap_pyfunction!(loads, m)?)?;
    m.add_function(wrap_pyfunction!(serve, m)?)?;
    m.add_function(wrap_pyfunction!(object_count, m)?)?;
    m.add_function(wrap_pyfunction!(cancel::cancel_signal, m)?)?;
    m.add_function(wrap_pyfunction!(output::output, m)?)?;
    m.add_function(wrap_pyfunction!(output::log, m)?)?;
    m.add_function(wrap_pyfunction!(output::flush, m)?)?;
    m.add_function(wrap_pyfunction!(output::current_call, m)?)?;
    m.add_class::<convert::Tagged>()?;
    m.add_function(wrap_pyfunction!(shm::attach_shared, m)?)?;
    m.add_function(wrap_pyfunction!(shm::set_max_payload, m)?)?;
    m.add("CallCancelled", py.get_type::<CallCancelled>())?;
    m.add("ProtocolError", py.get_type::<ProtocolError>())?;
    m.add("EncodeError", py.get_type::<EncodeError>())?;
    m.add("DecodeError", py.get_type::<DecodeError>())?;
    m.add("PROTOCOL_VERSION", PROTOCOL_VERSION)?;
    m.add("MAX_DEPTH", MAX_DEPTH)?;
    m.add("MAX_FRAME_LEN", MAX_FRAME_LEN)?;
    m.add("MAX_BIGINT_BYTES", MAX_BIGINT_BYTES)?;
    Ok(())
}
