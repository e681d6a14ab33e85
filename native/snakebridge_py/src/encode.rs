//! Python objects → wire values.
//!
//! | Python                                   | wire                         |
//! |------------------------------------------|------------------------------|
//! | `None`, `bool`                           | nil, bool (bool before int)  |
//! | `int` in `i64`/`u64`                     | msgpack int                  |
//! | other `int`                              | ext 1 (bigint); one over [`MAX_BIGINT_BYTES`] fails |
//! | `float`                                  | float64                      |
//! | `str`                                    | str                          |
//! | `bytes`, `bytearray`, `memoryview`       | bin                          |
//! | `list` / `tuple` / `dict`                | array / ext 2 / map          |
//! | `set`, `frozenset`                       | ext 3                        |
//!
//! Subclasses map like their base. Anything else is first offered to
//! `snakebridge_worker.convert.to_wire` (see [`crate::convert`]): numpy
//! scalars, arrays, dates, decimals, registered user types... What the
//! encoder does with a value that has no by-value form even then
//! depends on its [`Handles`]: a reply registers it in the object table and
//! writes a handle (ext 4: id, type name, bounded repr); `dumps` fails with an
//! [`EncodeFailure`] that names the offending element's path and its type as
//! `module.qualname`.
//!
//! The exact built-in types are recognised by comparing type pointers, so the
//! common case costs one branch per value. Big integers go through the unbound
//! `int` methods, so a subclass cannot override them. User code runs only for
//! a handle's `repr()` and on the error path (to `repr()` dict keys for the
//! message, after encoding has stopped).

use std::fmt::Write as _;
use std::os::raw::c_char;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyInt, PyList, PyTuple};
use snakebridge_protocol::value::{self as wire, tensor_len, Dtype};
use snakebridge_protocol::{EncodeError, MAX_BIGINT_BYTES, MAX_DEPTH};

use crate::shm::max_payload;

use crate::convert::{self, Tagged};

// SAFETY: the declaration matches CPython's (`Include/unicodeobject.h`);
// callers pass a live `str` and a valid `size` pointer.
unsafe extern "C" {
    // Part of the stable ABI since 3.10 and exported by every CPython 3.x;
    // pyo3-ffi only declares it for abi3-py310+, but this module targets
    // abi3-py39. It returns the string's cached UTF-8 form (for ASCII strings
    // the string's own buffer), so writing a `str` copies its bytes once,
    // where `PyUnicode_AsUTF8String` would allocate a `bytes` object first.
    fn PyUnicode_AsUTF8AndSize(unicode: *mut ffi::PyObject, size: *mut ffi::Py_ssize_t) -> *const c_char;
}

/// Why a value could not be encoded, and where inside it.
#[derive(Debug)]
pub(crate) struct EncodeFailure {
    problem: Problem,
    /// Innermost segment first: segments are pushed while the error unwinds,
    /// so the successful path never pays for path bookkeeping.
    path: Vec<Segment>,
}

#[derive(Debug)]
enum Problem {
    Unsupported { type_name: String, detail: Option<String> },
    TooDeep,
    TooLarge,
    TooManyElements(usize),
}

#[derive(Debug)]
enum Segment {
    /// Element of a list or tuple.
    Index(usize),
    /// Value of a dict, under the key's repr.
    Item(String),
    /// A dict key itself (its repr).
    Key(String),
    /// An element of a set.
    Element,
}

impl EncodeFailure {
    fn unsupported(obj: &Bound<'_, PyAny>, detail: Option<String>) -> Self {
        EncodeFailure {
            problem: Problem::Unsupported {
                type_name: type_name(obj),
                detail,
            },
            path: Vec::new(),
        }
    }

    fn from_py(obj: &Bound<'_, PyAny>, err: PyErr) -> Self {
        Self::unsupported(obj, Some(err.to_string()))
    }

    fn new(problem: Problem) -> Self {
        EncodeFailure { problem, path: Vec::new() }
    }

    fn at(mut self, segment: Segment) -> Self {
        self.path.push(segment);
        self
    }

    /// The Failure reason, an atom name on the Elixir side.
    pub(crate) fn reason(&self) -> &'static str {
        match self.problem {
            Problem::Unsupported { .. } => "unsupported_type",
            Problem::TooDeep => "nesting_too_deep",
            Problem::TooLarge | Problem::TooManyElements(_) => "payload_too_large",
        }
    }

    /// A human message; `root` names the whole value (`"result"`).
    pub(crate) fn message(&self, root: &str) -> String {
        let path = render_path(root, &self.path);
        match &self.problem {
            Problem::Unsupported { type_name, detail: None } => {
                format!("cannot convert {path} of Python type {type_name}")
            }
            Problem::Unsupported {
                type_name,
                detail: Some(detail),
            } => format!("cannot convert {path} of Python type {type_name}: {detail}"),
            Problem::TooDeep => format!("cannot convert {path}: nested deeper than {MAX_DEPTH} levels"),
            Problem::TooLarge => format!("cannot convert {root}: it encodes to more than {} bytes", max_payload()),
            Problem::TooManyElements(n) => {
                format!("cannot convert {path}: {n} elements are too many for one message")
            }
        }
    }
}

impl From<EncodeError> for EncodeFailure {
    fn from(e: EncodeError) -> Self {
        match e {
            EncodeError::TooDeep => EncodeFailure::new(Problem::TooDeep),
            EncodeError::FrameTooLarge(_) => EncodeFailure::new(Problem::TooLarge),
            EncodeError::TooManyElements(n) => EncodeFailure::new(Problem::TooManyElements(n)),
        }
    }
}

/// Segments shown at each end of a long path; the middle is elided.
const PATH_HEAD: usize = 8;
const PATH_TAIL: usize = 2;

/// `result[2]['key']`, `result key 'x'`, `result element[0]`; a very long
/// path (deep nesting) keeps its ends: `result[0][0]...[0][0]`.
fn render_path(root: &str, path: &[Segment]) -> String {
    let mut s = String::from(root);
    let long = path.len() > PATH_HEAD + PATH_TAIL + 1;
    for (i, segment) in path.iter().rev().enumerate() {
        if long && i >= PATH_HEAD && i < path.len() - PATH_TAIL {
            if i == PATH_HEAD {
                s.push_str("...");
            }
            continue;
        }
        let _ = match segment {
            Segment::Index(i) => write!(s, "[{i}]"),
            Segment::Item(key) => write!(s, "[{key}]"),
            Segment::Key(key) => write!(s, " key {key}"),
            Segment::Element => write!(s, " element"),
        };
    }
    s
}

/// `module.qualname` of an object's type, e.g. `datetime.date`.
pub(crate) fn type_name(obj: &Bound<'_, PyAny>) -> String {
    let ty = obj.get_type();
    let module = ty.module().map(|m| m.to_string_lossy().into_owned());
    let qualname = ty.qualname().map(|q| q.to_string_lossy().into_owned());
    match (module, qualname) {
        (Ok(m), Ok(q)) => format!("{m}.{q}"),
        (Err(_), Ok(q)) => q,
        _ => "<unknown type>".to_owned(),
    }
}

/// A handle's type name (`module.qualname`, just the qualname for builtins)
/// and its `repr()`, cut to [`MAX_HANDLE_REPR`] characters.
fn handle_info(obj: &Bound<'_, PyAny>) -> (String, String) {
    let ty = obj.get_type();
    let qualname = ty
        .qualname()
        .map(|q| q.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "<unknown type>".to_owned());
    let type_name = match ty.module() {
        Ok(m) if m.to_string_lossy() != "builtins" => format!("{}.{qualname}", m.to_string_lossy()),
        _ => qualname,
    };
    let repr = match obj.repr() {
        Ok(repr) => {
            let repr = repr.to_string_lossy();
            match repr.char_indices().nth(MAX_HANDLE_REPR) {
                Some((cut, _)) => repr[..cut].to_owned(),
                None => repr.into_owned(),
            }
        }
        Err(_) => format!("<{type_name} object>"),
    };
    (type_name, repr)
}

/// A bounded `repr()` for paths in messages.
fn short_repr(obj: &Bound<'_, PyAny>) -> String {
    const MAX: usize = 60;
    let Ok(repr) = obj.repr() else {
        return "<unrepresentable key>".to_owned();
    };
    let repr = repr.to_string_lossy();
    match repr.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &repr[..cut]),
        None => repr.into_owned(),
    }
}

/// What the encoder does with a value that has no by-value form.
pub(crate) enum Handles<'a, 'py> {
    /// Fails with `unsupported_type` (`dumps`).
    Refuse,
    /// Registers it in the object table and writes a handle, noting the id:
    /// a reply that cannot be sent after all releases what it registered.
    Register(&'a mut Vec<u64>),
    /// Writes a handle with the id `hook(obj)` returns, or fails if it
    /// returns `None` (`dumps(obj, handle_id=hook)`).
    Hook(&'a Bound<'py, PyAny>),
}

/// Longest repr sent with a handle, in characters.
const MAX_HANDLE_REPR: usize = 200;

/// Writes Python objects into a buffer that may already hold other frames.
pub(crate) struct Encoder<'a, 'py> {
    out: &'a mut Vec<u8>,
    /// Where this value's frame starts; the size limit counts from here.
    start: usize,
    handles: Handles<'a, 'py>,
}

impl<'a, 'py> Encoder<'a, 'py> {
    pub(crate) fn new(out: &'a mut Vec<u8>, start: usize, handles: Handles<'a, 'py>) -> Self {
        Encoder { out, start, handles }
    }

    /// Registers `obj` and writes its handle, whatever its type (a call with
    /// `CALL_AS_HANDLE`). Needs [`Handles::Register`].
    pub(crate) fn encode_as_handle(&mut self, obj: &Bound<'_, PyAny>) -> Result<(), EncodeFailure> {
        let Handles::Register(ids) = &mut self.handles else {
            return Err(EncodeFailure::unsupported(obj, None));
        };
        let (type_name, repr) = handle_info(obj);
        let id = crate::objects::register(obj);
        ids.push(id);
        wire::write_handle(self.out, id, Some((&type_name, &repr)))?;
        self.check_size()
    }

    /// A value with no by-value form: see [`Handles`].
    fn handle(&mut self, obj: &Bound<'_, PyAny>) -> Result<(), EncodeFailure> {
        match &self.handles {
            Handles::Refuse => Err(EncodeFailure::unsupported(obj, None)),
            Handles::Register(_) => self.encode_as_handle(obj),
            Handles::Hook(hook) => {
                let id = hook.call1((obj,)).map_err(|e| EncodeFailure::from_py(obj, e))?;
                if id.is_none() {
                    return Err(EncodeFailure::unsupported(obj, None));
                }
                let id: u64 = id.extract().map_err(|e| EncodeFailure::from_py(obj, e))?;
                wire::write_handle(self.out, id, None)?;
                self.check_size()
            }
        }
    }

    /// Appends `obj`, nested `depth` levels deep. On error `out` holds a
    /// partial value; the caller truncates it.
    pub(crate) fn encode(&mut self, obj: &Bound<'_, PyAny>, depth: usize) -> Result<(), EncodeFailure> {
        let ptr = obj.as_ptr();
        // SAFETY: `ptr` is a live object (borrowed from `obj`); comparing
        // type pointers and reading exact built-in types needs nothing else.
        unsafe {
            let ty = ffi::Py_TYPE(ptr);
            if ptr == ffi::Py_None() {
                wire::write_nil(self.out);
            } else if ty == &raw mut ffi::PyUnicode_Type {
                self.str(obj)?;
            } else if ty == &raw mut ffi::PyLong_Type {
                self.int(obj)?;
            } else if ty == &raw mut ffi::PyBool_Type {
                wire::write_bool(self.out, ptr == ffi::Py_True());
            } else if ty == &raw mut ffi::PyFloat_Type {
                wire::write_f64(self.out, ffi::PyFloat_AsDouble(ptr));
            } else if ty == &raw mut ffi::PyList_Type {
                self.list(obj.cast_unchecked(), depth)?;
            } else if ty == &raw mut ffi::PyDict_Type {
                self.dict(obj.cast_unchecked(), depth)?;
            } else if ty == &raw mut ffi::PyTuple_Type {
                self.tuple(obj.cast_unchecked(), depth)?;
            } else if ty == &raw mut ffi::PyBytes_Type {
                self.bin(obj.cast_unchecked::<PyBytes>().as_bytes())?;
            } else {
                self.other(obj, depth)?;
            }
        }
        Ok(())
    }

    /// Subclasses of the built-in types and the rarer types.
    fn other(&mut self, obj: &Bound<'_, PyAny>, depth: usize) -> Result<(), EncodeFailure> {
        let ptr = obj.as_ptr();
        // SAFETY: type checks on a live object; each cast follows its check.
        unsafe {
            if ffi::PyLong_Check(ptr) != 0 {
                self.int(obj)
            } else if ffi::PyFloat_Check(ptr) != 0 {
                wire::write_f64(self.out, ffi::PyFloat_AsDouble(ptr));
                Ok(())
            } else if ffi::PyUnicode_Check(ptr) != 0 {
                self.str(obj)
            } else if ffi::PyBytes_Check(ptr) != 0 {
                self.bin(obj.cast_unchecked::<PyBytes>().as_bytes())
            } else if ffi::PyByteArray_Check(ptr) != 0 {
                // No Python code runs while the slice is alive.
                self.bin(obj.cast_unchecked::<PyByteArray>().as_bytes())
            } else if ffi::PyMemoryView_Check(ptr) != 0 && !is_byte_view(obj) {
                self.convert(obj, depth)
            } else if ffi::PyMemoryView_Check(ptr) != 0 {
                // bytes(view) copies the (possibly strided) view in C order.
                let bytes = Bound::from_owned_ptr_or_err(obj.py(), ffi::PyBytes_FromObject(ptr))
                    .map_err(|e| EncodeFailure::from_py(obj, e))?;
                self.bin(bytes.cast_unchecked::<PyBytes>().as_bytes())
            } else if ffi::PyList_Check(ptr) != 0 {
                self.list(obj.cast_unchecked(), depth)
            } else if ffi::PyTuple_Check(ptr) != 0 {
                self.tuple(obj.cast_unchecked(), depth)
            } else if ffi::PyDict_Check(ptr) != 0 {
                self.dict(obj.cast_unchecked(), depth)
            } else if ffi::PyAnySet_Check(ptr) != 0 {
                self.set(obj, depth)
            } else {
                self.convert(obj, depth)
            }
        }
    }

    /// A value `convert.to_wire` may have a form for; a handle (or a
    /// refusal) if it returns the object itself.
    fn convert(&mut self, obj: &Bound<'_, PyAny>, depth: usize) -> Result<(), EncodeFailure> {
        if let Ok(tagged) = obj.cast::<Tagged>() {
            return self.tagged(obj, tagged.get(), depth);
        }
        let value = convert::to_wire(obj).map_err(|e| EncodeFailure::from_py(obj, e))?;
        if value.is(obj) {
            return self.handle(obj);
        }
        // A converter returning yet another object to convert ends at the
        // nesting limit rather than looping.
        self.encode(&value, deeper(depth)?)
    }

    fn tagged(&mut self, obj: &Bound<'_, PyAny>, tagged: &Tagged, depth: usize) -> Result<(), EncodeFailure> {
        let items: Vec<Bound<'_, PyAny>> = tagged
            .items
            .bind(obj.py())
            .try_iter()
            .and_then(|items| items.collect())
            .map_err(|e| EncodeFailure::from_py(obj, e))?;
        if tagged.ext == wire::EXT_TENSOR {
            return self.tensor(obj, &items);
        }
        if !wire::TAGGED.contains(&tagged.ext) {
            return Err(EncodeFailure::unsupported(obj, Some(format!("no extension type {}", tagged.ext))));
        }
        let depth = deeper(depth)?;
        let start = wire::begin_tagged(self.out, tagged.ext, items.len())?;
        for (i, item) in items.iter().enumerate() {
            self.encode(item, depth).map_err(|e| e.at(Segment::Index(i)))?;
        }
        wire::finish_container(self.out, start)?;
        self.check_size()
    }

    /// `[dtype, shape, buffer]`: the buffer's bytes go into the frame in one
    /// copy.
    fn tensor(&mut self, obj: &Bound<'_, PyAny>, items: &[Bound<'_, PyAny>]) -> Result<(), EncodeFailure> {
        let [dtype, shape, buffer] = items else {
            return Err(EncodeFailure::unsupported(obj, Some("a tensor has 3 fields".into())));
        };
        let dtype: String = dtype.extract().map_err(|e| EncodeFailure::from_py(obj, e))?;
        let shape: Vec<u64> = shape.extract().map_err(|e| EncodeFailure::from_py(obj, e))?;
        let Some(parsed) = Dtype::parse(&dtype) else {
            return Err(EncodeFailure::unsupported(obj, Some(format!("unknown tensor type {dtype:?}"))));
        };
        let out = &mut *self.out;
        let written = convert::with_buffer(buffer, |bytes| {
            if bytes.len() > max_payload() {
                return Err(EncodeFailure::new(Problem::TooLarge));
            }
            if tensor_len(parsed, &shape) != Some(bytes.len()) {
                return Err(EncodeFailure::unsupported(
                    obj,
                    Some(format!("a {dtype} tensor of shape {shape:?} cannot hold {} bytes", bytes.len())),
                ));
            }
            Ok(wire::write_tensor(out, &dtype, &shape, bytes)?)
        })
        .map_err(|e| EncodeFailure::from_py(obj, e))?;
        written?;
        self.check_size()
    }

    fn int(&mut self, obj: &Bound<'_, PyAny>) -> Result<(), EncodeFailure> {
        let ptr = obj.as_ptr();
        let mut overflow = 0;
        // SAFETY: `obj` is an int (or subclass); these read its value directly.
        unsafe {
            let v = ffi::PyLong_AsLongLongAndOverflow(ptr, &mut overflow);
            if overflow == 0 {
                if v == -1 {
                    if let Some(err) = PyErr::take(obj.py()) {
                        return Err(EncodeFailure::from_py(obj, err));
                    }
                }
                wire::write_i64(self.out, v);
                return Ok(());
            }
            if overflow > 0 {
                let u = ffi::PyLong_AsUnsignedLongLong(ptr);
                if u != u64::MAX || ffi::PyErr_Occurred().is_null() {
                    wire::write_u64(self.out, u);
                    return Ok(());
                }
                ffi::PyErr_Clear();
            }
        }
        self.bigint(obj, overflow < 0)
    }

    /// An int outside i64/u64: sign and little-endian magnitude. Rare, so it
    /// goes through Python (`_PyLong_AsByteArray` is not in the stable ABI).
    ///
    /// The size is checked first, from `bit_length()` (which reads the int's
    /// header and top digit), so an int the BEAM cannot hold is refused
    /// before its magnitude is copied.
    fn bigint(&mut self, obj: &Bound<'_, PyAny>, negative: bool) -> Result<(), EncodeFailure> {
        let int = obj.py().get_type::<PyInt>();
        let bits: u64 = int
            .call_method1("bit_length", (obj,))
            .and_then(|bits| bits.extract())
            .map_err(|e| EncodeFailure::from_py(obj, e))?;
        let bytes = bits.div_ceil(8);
        if bytes > MAX_BIGINT_BYTES as u64 {
            return Err(EncodeFailure::unsupported(obj, Some(bigint_too_large(bits))));
        }
        let magnitude = (|| -> PyResult<Bound<'_, PyBytes>> {
            let abs = int.call_method1("__abs__", (obj,))?;
            Ok(int.call_method1("to_bytes", (&abs, bytes, "little"))?.cast_into()?)
        })()
        .map_err(|e| EncodeFailure::from_py(obj, e))?;
        wire::write_bigint(self.out, negative, magnitude.as_bytes())?;
        self.check_size()
    }

    fn str(&mut self, obj: &Bound<'_, PyAny>) -> Result<(), EncodeFailure> {
        let mut size: ffi::Py_ssize_t = 0;
        // SAFETY: `obj` is a str (or subclass). The returned buffer belongs to
        // the string and lives as long as it; we copy out of it at once.
        let bytes = unsafe {
            let data = PyUnicode_AsUTF8AndSize(obj.as_ptr(), &mut size);
            if data.is_null() {
                // Lone surrogates have no UTF-8 form.
                let err = PyErr::fetch(obj.py());
                return Err(EncodeFailure::unsupported(obj, Some(format!("not valid UTF-8 ({err})"))));
            }
            std::slice::from_raw_parts(data.cast::<u8>(), size as usize)
        };
        if bytes.len() > max_payload() {
            return Err(EncodeFailure::new(Problem::TooLarge));
        }
        // SAFETY: CPython's UTF-8 form of a str is valid UTF-8.
        wire::write_str(self.out, unsafe { std::str::from_utf8_unchecked(bytes) })?;
        self.check_size()
    }

    fn bin(&mut self, bytes: &[u8]) -> Result<(), EncodeFailure> {
        if bytes.len() > max_payload() {
            return Err(EncodeFailure::new(Problem::TooLarge));
        }
        wire::write_bin(self.out, bytes)?;
        self.check_size()
    }

    fn list(&mut self, list: &Bound<'_, PyList>, depth: usize) -> Result<(), EncodeFailure> {
        let depth = deeper(depth)?;
        let len = list.len();
        wire::write_array_len(self.out, len)?;
        for i in 0..len {
            let item = list.get_item(i).map_err(|e| EncodeFailure::from_py(list, e))?;
            self.encode(&item, depth).map_err(|e| e.at(Segment::Index(i)))?;
            self.check_size()?;
        }
        Ok(())
    }

    fn tuple(&mut self, tuple: &Bound<'_, PyTuple>, depth: usize) -> Result<(), EncodeFailure> {
        let depth = deeper(depth)?;
        let len = tuple.len();
        let start = wire::begin_tuple(self.out, len)?;
        for i in 0..len {
            let item = tuple.get_item(i).map_err(|e| EncodeFailure::from_py(tuple, e))?;
            self.encode(&item, depth).map_err(|e| e.at(Segment::Index(i)))?;
            self.check_size()?;
        }
        wire::finish_container(self.out, start)?;
        Ok(())
    }

    fn dict(&mut self, dict: &Bound<'_, PyDict>, depth: usize) -> Result<(), EncodeFailure> {
        let depth = deeper(depth)?;
        let len = dict.len();
        wire::write_map_len(self.out, len)?;
        let mut written = 0;
        // PyDict_Next underneath: a dict subclass's __iter__ is not consulted.
        for (key, value) in dict.iter() {
            if written == len {
                break;
            }
            self.encode(&key, depth)
                .map_err(|e| e.at(Segment::Key(short_repr(&key))))?;
            self.encode(&value, depth)
                .map_err(|e| e.at(Segment::Item(short_repr(&key))))?;
            self.check_size()?;
            written += 1;
        }
        same_size(dict, len, written)
    }

    fn set(&mut self, set: &Bound<'_, PyAny>, depth: usize) -> Result<(), EncodeFailure> {
        let depth = deeper(depth)?;
        let len = set.len().map_err(|e| EncodeFailure::from_py(set, e))?;
        let start = wire::begin_set(self.out, len)?;
        let mut written = 0;
        for item in set.try_iter().map_err(|e| EncodeFailure::from_py(set, e))? {
            let item = item.map_err(|e| EncodeFailure::from_py(set, e))?;
            if written == len {
                break;
            }
            self.encode(&item, depth).map_err(|e| e.at(Segment::Element))?;
            self.check_size()?;
            written += 1;
        }
        same_size(set, len, written)?;
        wire::finish_container(self.out, start)?;
        Ok(())
    }

    /// Stops early once the frame is over the limit, rather than encoding a
    /// huge value only to throw it away.
    #[inline]
    fn check_size(&self) -> Result<(), EncodeFailure> {
        if self.out.len() - self.start > max_payload() {
            Err(EncodeFailure::new(Problem::TooLarge))
        } else {
            Ok(())
        }
    }
}

/// A memoryview of plain bytes (format `B`), which is sent as a binary;
/// views of other formats are arrays.
fn is_byte_view(obj: &Bound<'_, PyAny>) -> bool {
    obj.getattr(pyo3::intern!(obj.py(), "format"))
        .and_then(|format| format.extract::<String>())
        .is_ok_and(|format| format == "B")
}

/// Why an int of `bits` bits cannot be sent.
fn bigint_too_large(bits: u64) -> String {
    format!(
        "an int of {bits} bits ({} bytes) is over the {MAX_BIGINT_BYTES} byte limit of Erlang integers",
        bits.div_ceil(8)
    )
}

#[inline]
fn deeper(depth: usize) -> Result<usize, EncodeFailure> {
    if depth >= MAX_DEPTH {
        Err(EncodeFailure::new(Problem::TooDeep))
    } else {
        Ok(depth + 1)
    }
}

/// The header already promised `len` elements; a container that yielded a
/// different number (a set subclass with its own `__iter__`) would corrupt
/// the stream.
fn same_size(obj: &Bound<'_, PyAny>, len: usize, written: usize) -> Result<(), EncodeFailure> {
    if written == len {
        Ok(())
    } else {
        Err(EncodeFailure::unsupported(
            obj,
            Some(format!("it has {len} elements but iterating it yielded {written}")),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(problem: Problem, path: Vec<Segment>) -> EncodeFailure {
        EncodeFailure { problem, path }
    }

    #[test]
    fn paths_render_outermost_first() {
        let f = failure(
            Problem::Unsupported {
                type_name: "datetime.date".into(),
                detail: None,
            },
            vec![Segment::Item("'key'".into()), Segment::Index(2)],
        );
        assert_eq!(f.message("result"), "cannot convert result[2]['key'] of Python type datetime.date");
        assert_eq!(f.reason(), "unsupported_type");
    }

    #[test]
    fn keys_and_set_elements_are_named() {
        let f = failure(
            Problem::Unsupported {
                type_name: "builtins.object".into(),
                detail: None,
            },
            vec![Segment::Index(1), Segment::Key("(1, <object>)".into()), Segment::Element],
        );
        assert_eq!(
            f.message("value"),
            "cannot convert value element key (1, <object>)[1] of Python type builtins.object"
        );
    }

    #[test]
    fn reasons_match_elixir_atoms() {
        assert_eq!(EncodeFailure::from(EncodeError::TooDeep).reason(), "nesting_too_deep");
        assert_eq!(EncodeFailure::from(EncodeError::FrameTooLarge(1)).reason(), "payload_too_large");
        assert_eq!(EncodeFailure::from(EncodeError::TooManyElements(1)).reason(), "payload_too_large");
        let deep = failure(Problem::TooDeep, vec![Segment::Index(0), Segment::Index(0)]);
        assert_eq!(deep.message("result"), "cannot convert result[0][0]: nested deeper than 100 levels");
    }

    #[test]
    fn an_int_too_big_for_the_beam_names_its_size_and_the_limit() {
        let bits = 8 * MAX_BIGINT_BYTES as u64 + 1;
        let f = failure(
            Problem::Unsupported {
                type_name: "builtins.int".into(),
                detail: Some(bigint_too_large(bits)),
            },
            vec![Segment::Index(1)],
        );
        assert_eq!(f.reason(), "unsupported_type");
        assert_eq!(
            f.message("result"),
            "cannot convert result[1] of Python type builtins.int: an int of 33554369 bits (4194297 bytes) \
             is over the 4194296 byte limit of Erlang integers"
        );
    }

    #[test]
    fn long_paths_keep_their_ends() {
        let path = (0..100).rev().map(Segment::Index).collect();
        let f = failure(Problem::TooDeep, path);
        assert_eq!(
            f.message("result"),
            "cannot convert result[0][1][2][3][4][5][6][7]...[98][99]: nested deeper than 100 levels"
        );
    }
}
