//! Wire values → Python objects, through the protocol crate's [`Builder`].
//!
//! nil → `None`, bool → `bool`, ints and bigints → `int`, float → `float`,
//! str → `str`, bin → `bytes`, array → `list`, ext 2 → `tuple`, map → `dict`,
//! ext 3 → `set`, or `frozenset` where it must be hashable: as a dict key or a
//! set element (also inside a tuple used that way). ext 4 (a handle) → the
//! object it names in the worker's table (`objects`) when serving, or what
//! `loads`'s `handle` hook makes of it. A tensor (ext 16) and the data kinds
//! (ext 17-25) become what `snakebridge_worker.convert` makes of them
//! (see [`crate::convert`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyFrozenSet, PyInt, PyList, PySet, PyString, PyTuple};
use snakebridge_protocol::value::dtype_name;
use snakebridge_protocol::{Builder, DecodeError, Dtype};

/// Malformed bytes are a protocol error; a well-formed value that Python
/// cannot hold (a list used as a dict key) is the caller's problem.
#[derive(Debug)]
pub(crate) enum BuildError {
    Decode(DecodeError),
    Py(PyErr),
    /// A handle to an object the table does not hold (any more).
    Stale(u64),
}

impl From<DecodeError> for BuildError {
    fn from(e: DecodeError) -> Self {
        BuildError::Decode(e)
    }
}

impl From<PyErr> for BuildError {
    fn from(e: PyErr) -> Self {
        BuildError::Py(e)
    }
}

/// Longest map key kept in [`KEYS`].
const MAX_CACHED_KEY: usize = 64;
/// Keys remembered before the cache starts over, bounding its memory.
const MAX_CACHED_KEYS: usize = 4096;

thread_local! {
    /// `str` objects for recently decoded map keys. Only the thread running
    /// the worker loop (holding the GIL) decodes, so no lock is needed.
    static KEYS: RefCell<HashMap<Box<[u8]>, Py<PyString>, BuildHasherDefault<KeyHasher>>> =
        RefCell::new(HashMap::default());
}

/// A multiply-rotate hash (FxHash's): keys are short and come from the host,
/// not an adversary who could exploit collisions beyond slowing one worker,
/// and SipHash would cost more than the lookup saves.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let word = u64::from_le_bytes(chunk.try_into().expect("8-byte chunk"));
            self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ b as u64).wrapping_mul(K);
        }
    }
}

/// What a handle decodes to.
pub(crate) enum Handles<'a, 'py> {
    /// The object in the table: call arguments in the worker loop.
    Table,
    /// `hook(id, type_name, repr)`: `loads(data, handle=hook)`.
    Hook(&'a Bound<'py, PyAny>),
    /// An error: handles mean nothing to a plain `loads`.
    Refuse,
}

pub(crate) struct PyBuilder<'a, 'py> {
    py: Python<'py>,
    handles: Handles<'a, 'py>,
}

impl<'a, 'py> PyBuilder<'a, 'py> {
    pub(crate) fn new(py: Python<'py>, handles: Handles<'a, 'py>) -> Self {
        PyBuilder { py, handles }
    }
}

impl<'py> Builder for PyBuilder<'_, 'py> {
    type Value = Bound<'py, PyAny>;
    type Error = BuildError;

    fn nil(&mut self) -> Result<Self::Value, BuildError> {
        Ok(self.py.None().into_bound(self.py))
    }

    fn bool(&mut self, v: bool) -> Result<Self::Value, BuildError> {
        Ok(PyBool::new(self.py, v).to_owned().into_any())
    }

    fn int(&mut self, v: i64) -> Result<Self::Value, BuildError> {
        Ok(PyInt::new(self.py, v).into_any())
    }

    fn uint(&mut self, v: u64) -> Result<Self::Value, BuildError> {
        Ok(PyInt::new(self.py, v).into_any())
    }

    /// Rare, so it goes through `int.from_bytes` (`_PyLong_FromByteArray` is
    /// not in the stable ABI).
    fn bigint(&mut self, negative: bool, magnitude_le: &[u8]) -> Result<Self::Value, BuildError> {
        let int = self.py.get_type::<PyInt>();
        let magnitude = int.call_method1("from_bytes", (PyBytes::new(self.py, magnitude_le), "little"))?;
        Ok(if negative { magnitude.neg()? } else { magnitude })
    }

    fn float(&mut self, v: f64) -> Result<Self::Value, BuildError> {
        Ok(PyFloat::new(self.py, v).into_any())
    }

    fn str(&mut self, v: &str) -> Result<Self::Value, BuildError> {
        Ok(PyString::new(self.py, v).into_any())
    }

    fn bin(&mut self, v: &[u8]) -> Result<Self::Value, BuildError> {
        Ok(PyBytes::new(self.py, v).into_any())
    }

    fn list(&mut self, items: Vec<Self::Value>) -> Result<Self::Value, BuildError> {
        Ok(PyList::new(self.py, items)?.into_any())
    }

    fn tuple(&mut self, items: Vec<Self::Value>) -> Result<Self::Value, BuildError> {
        Ok(PyTuple::new(self.py, items)?.into_any())
    }

    fn set(&mut self, items: Vec<Self::Value>) -> Result<Self::Value, BuildError> {
        let set = PySet::empty(self.py)?;
        for item in items {
            set.add(hashable(item)?)?;
        }
        Ok(set.into_any())
    }

    /// Records sent again and again carry the same keys: reusing one `str`
    /// per key skips creating it and, since a `str` caches its hash,
    /// hashing it again on every dict insertion.
    fn key_str(&mut self, v: &str) -> Result<Self::Value, BuildError> {
        if v.len() > MAX_CACHED_KEY {
            return self.str(v);
        }
        KEYS.with_borrow_mut(|keys| {
            if let Some(key) = keys.get(v.as_bytes()) {
                return Ok(key.bind(self.py).clone().into_any());
            }
            if keys.len() >= MAX_CACHED_KEYS {
                keys.clear();
            }
            let key = PyString::new(self.py, v);
            keys.insert(v.as_bytes().into(), key.clone().unbind());
            Ok(key.into_any())
        })
    }

    fn map(&mut self, pairs: Vec<(Self::Value, Self::Value)>) -> Result<Self::Value, BuildError> {
        let dict = PyDict::new(self.py);
        for (key, value) in pairs {
            dict.set_item(hashable(key)?, value)?;
        }
        Ok(dict.into_any())
    }

    fn handle(&mut self, id: u64, info: Option<(&str, &str)>) -> Result<Self::Value, BuildError> {
        match &self.handles {
            Handles::Table => crate::objects::get(self.py, id).ok_or(BuildError::Stale(id)),
            Handles::Hook(hook) => {
                let (type_name, repr) = info.unzip();
                Ok(hook.call1((id, type_name, repr))?)
            }
            Handles::Refuse => Err(BuildError::Decode(DecodeError::Invalid(format!(
                "handle {id} found: pass loads(..., handle=...) to decode handles"
            )))),
        }
    }

    fn tensor(&mut self, dtype: Dtype, shape: &[u64], data: &[u8]) -> Result<Self::Value, BuildError> {
        Ok(crate::convert::tensor(self.py, dtype_name(dtype), shape, data)?)
    }

    fn tagged(&mut self, ext: i8, items: Vec<Self::Value>) -> Result<Self::Value, BuildError> {
        Ok(crate::convert::from_wire(self.py, ext, items)?)
    }
}

/// Turns sets (also inside tuples) into frozensets, so a value built bottom-up
/// as a `set` can still be a dict key or a set element. Returns `obj` itself
/// when nothing needs freezing; lists and dicts stay unhashable and fail at
/// insertion with Python's own `TypeError`.
fn hashable(obj: Bound<'_, PyAny>) -> PyResult<Bound<'_, PyAny>> {
    let ptr = obj.as_ptr();
    // SAFETY: type checks on a live object.
    let (is_set, is_tuple) = unsafe {
        let ty = ffi::Py_TYPE(ptr);
        (ty == &raw mut ffi::PySet_Type, ty == &raw mut ffi::PyTuple_Type)
    };
    if is_set {
        // Elements are already hashable: `set` above froze them.
        return Ok(PyFrozenSet::new(obj.py(), obj.try_iter()?.collect::<PyResult<Vec<_>>>()?)?.into_any());
    }
    if is_tuple {
        // SAFETY: just checked that it is exactly a tuple.
        let tuple = unsafe { obj.cast_unchecked::<PyTuple>() };
        let mut frozen: Option<Vec<Bound<'_, PyAny>>> = None;
        for (i, item) in tuple.iter().enumerate() {
            let item_ptr = item.as_ptr();
            let new = hashable(item)?;
            match &mut frozen {
                Some(items) => items.push(new),
                None if new.as_ptr() != item_ptr => {
                    let mut items: Vec<_> = tuple.iter().take(i).collect();
                    items.push(new);
                    frozen = Some(items);
                }
                None => {}
            }
        }
        return match frozen {
            Some(items) => Ok(PyTuple::new(obj.py(), items)?.into_any()),
            None => Ok(obj),
        };
    }
    Ok(obj)
}

/// Builds the Python error for a kwargs key that is not a string.
pub(crate) fn non_string_keyword(key: &Bound<'_, PyAny>) -> PyErr {
    PyTypeError::new_err(format!(
        "keyword argument names must be strings, got Python type {}",
        crate::encode::type_name(key)
    ))
}
