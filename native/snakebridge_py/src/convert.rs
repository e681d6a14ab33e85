//! The data kinds (tensors, dates, decimals, Arrow tables, user types) on
//! the worker's side.
//!
//! Which Python value becomes which kind is decided in Python, by
//! `snakebridge_worker.convert`: the encoder asks its `to_wire` about an
//! object it has no by-value form for, before making it a handle, and the
//! answer is either a plainer value or a [`Tagged`] naming one of the
//! protocol's data extensions. The decoder hands those extensions to
//! `convert.from_wire` and `convert.tensor`. Only tensor data is handled
//! here, in bulk: it is read through the buffer protocol, so an ndarray's
//! memory is copied once, straight into the frame.

use std::os::raw::{c_char, c_int, c_void};

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

/// A value of one of the protocol's data extensions: `ext` and its fields,
/// as `snakebridge_worker.convert` builds them. For a tensor (ext 16) the
/// fields are `[dtype, shape, buffer]`, the buffer any C-contiguous object
/// with the buffer protocol.
#[pyclass(frozen, module = "snakebridge_worker._native")]
pub(crate) struct Tagged {
    #[pyo3(get)]
    pub(crate) ext: i8,
    #[pyo3(get)]
    pub(crate) items: Py<PyAny>,
}

#[pymethods]
impl Tagged {
    #[new]
    fn new(ext: i8, items: Py<PyAny>) -> Self {
        Tagged { ext, items }
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!("Tagged({}, {})", self.ext, self.items.bind(py).repr()?))
    }
}

static TO_WIRE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static TO_ARROW: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static FROM_WIRE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static TENSOR: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn function<'py>(py: Python<'py>, cell: &'static PyOnceLock<Py<PyAny>>, name: &str) -> PyResult<&'py Bound<'py, PyAny>> {
    cell.import(py, "snakebridge_worker.convert", name)
}

/// What `obj` is sent as: a plainer value or a [`Tagged`], or `obj` itself
/// when it has no by-value form.
pub(crate) fn to_wire<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    function(obj.py(), &TO_WIRE, "to_wire")?.call1((obj,))
}

/// A table as Arrow IPC bytes (a call made with `as: :arrow`); raises
/// when it is not a table or pyarrow is missing.
pub(crate) fn to_arrow<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    function(obj.py(), &TO_ARROW, "to_arrow")?.call1((obj,))
}

/// The Python value of a data extension the host sent.
pub(crate) fn from_wire<'py>(py: Python<'py>, ext: i8, items: Vec<Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
    function(py, &FROM_WIRE, "from_wire")?.call1((ext, items))
}

/// The Python value of a tensor the host sent: `data` becomes a
/// `bytearray` (one copy), so the array built on it is writable.
pub(crate) fn tensor<'py>(py: Python<'py>, dtype: &str, shape: &[u64], data: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    let data = pyo3::types::PyByteArray::new(py, data);
    function(py, &TENSOR, "tensor")?.call1((dtype, shape.to_vec(), data))
}

// CPython's `Py_buffer` (Include/pybuffer.h), unchanged since 3.0. pyo3
// declares it only for abi3-py311+; this module targets abi3-py39, and the
// functions below are exported by every CPython 3.x.
#[repr(C)]
struct PyBuffer {
    buf: *mut c_void,
    obj: *mut ffi::PyObject,
    len: ffi::Py_ssize_t,
    itemsize: ffi::Py_ssize_t,
    readonly: c_int,
    ndim: c_int,
    format: *mut c_char,
    shape: *mut ffi::Py_ssize_t,
    strides: *mut ffi::Py_ssize_t,
    suboffsets: *mut ffi::Py_ssize_t,
    internal: *mut c_void,
}

// SAFETY: declarations match CPython's; callers pass a live object and a
// `PyBuffer` that `PyObject_GetBuffer` filled before releasing it.
unsafe extern "C" {
    fn PyObject_GetBuffer(obj: *mut ffi::PyObject, view: *mut PyBuffer, flags: c_int) -> c_int;
    fn PyBuffer_Release(view: *mut PyBuffer);
}

/// `PyBUF_SIMPLE`: the exporter must hand out one contiguous block of bytes.
const PYBUF_SIMPLE: c_int = 0;

/// Runs `f` on the bytes of `obj`'s buffer, which must be contiguous.
/// No Python code runs while `f` holds them.
pub(crate) fn with_buffer<R>(obj: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> R) -> PyResult<R> {
    let mut view = std::mem::MaybeUninit::<PyBuffer>::uninit();
    // SAFETY: on success the view is filled and holds a reference to the
    // exporter until released; the slice does not outlive it.
    unsafe {
        if PyObject_GetBuffer(obj.as_ptr(), view.as_mut_ptr(), PYBUF_SIMPLE) != 0 {
            return Err(PyErr::fetch(obj.py()));
        }
        let view = view.assume_init_mut();
        let bytes = if view.len == 0 {
            &[][..]
        } else {
            std::slice::from_raw_parts(view.buf.cast::<u8>(), view.len as usize)
        };
        let result = f(bytes);
        PyBuffer_Release(view);
        Ok(result)
    }
}
