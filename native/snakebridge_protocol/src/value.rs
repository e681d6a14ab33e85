//! The value model: msgpack plus extension types.
//!
//! | value           | encoding                                                   |
//! |-----------------|------------------------------------------------------------|
//! | nil/bool/float  | msgpack nil, bool, float64                                 |
//! | int in i64/u64  | msgpack int (smallest form)                                |
//! | larger int      | ext 1: sign byte (0 = positive, 1 = negative), then the magnitude, little-endian |
//! |                 | (at most [`MAX_BIGINT_BYTES`] of magnitude: the BEAM's limit) |
//! | text            | msgpack str (always valid UTF-8)                           |
//! | bytes           | msgpack bin                                                |
//! | list            | msgpack array                                              |
//! | map             | msgpack map                                                |
//! | tuple           | ext 2 whose payload is a msgpack array of the elements     |
//! | set             | ext 3 whose payload is a msgpack array of the elements     |
//! | object handle   | ext 4 whose payload is `[id]` (host → worker) or `[id, type name, repr]` (worker → host) |
//! | tensor          | ext 16: `[dtype, shape, data]`, see [`Dtype`]                |
//! | data kinds      | ext 17–25: a msgpack array of fields, see [`TAGGED`]       |
//!
//! Codes 5–15 are left free for other kinds; the data kinds start at 16.
//!
//! Tuples, sets and handles use an `ext32` header whose length is patched
//! after the elements are written, so encoders stream straight into the
//! output buffer and the result is still plain, valid msgpack.
//!
//! A handle names a Python object kept alive in the worker's object table
//! (ids are unique within one worker process): the worker sends one for a
//! result that has no by-value form, and the host sends it back as an
//! argument or as the target of a call.
//!
//! Encoders on both sides walk their own native values (BEAM terms, Python
//! objects) and call the `write_*` functions here; decoders drive a
//! [`Builder`] through [`decode_value`]. One codec, three representations.

use rmp::Marker;

use crate::{DecodeError, EncodeError};

/// Deepest nesting of containers either side encodes or decodes. Deeper input
/// is rejected with an error rather than risking a native stack overflow.
pub const MAX_DEPTH: usize = 100;

/// Largest integer magnitude, in bytes, a BEAM can hold: OTP's
/// `BIG_ARITY_MAX` ((1 << 19) - 1 digits) of 8 bytes on a 64-bit VM, the same
/// in every OTP release since R16. `binary_to_term` of a `LARGE_BIG_EXT` with
/// one byte more fails, and `Bitwise.bsl(1, 8 * MAX_BIGINT_BYTES)` raises
/// `system_limit`. The host cannot build such an integer, so the worker
/// refuses to send one (a typed failure) instead of making the host treat
/// its reply as corrupt.
pub const MAX_BIGINT_BYTES: usize = ((1 << 19) - 1) * 8;

pub const EXT_BIGINT: i8 = 1;
pub const EXT_TUPLE: i8 = 2;
pub const EXT_SET: i8 = 3;
pub const EXT_HANDLE: i8 = 4;

/// `[dtype (str), shape (array of uint), data (bin)]`: a dense array, C order,
/// little-endian; `data` holds exactly `product(shape) * dtype.bytes()` bytes.
pub const EXT_TENSOR: i8 = 16;
/// `[year, month, day]`
pub const EXT_DATE: i8 = 17;
/// `[hour, minute, second, microsecond]`
pub const EXT_TIME: i8 = 18;
/// `[year, month, day, hour, minute, second, microsecond]`, no time zone.
pub const EXT_NAIVE_DATETIME: i8 = 19;
/// `[year, month, day, hour, minute, second, microsecond, utc_offset,
/// std_offset, time_zone, zone_abbr]`: wall time in the zone; offsets in
/// seconds (`std_offset` is the daylight-saving part).
pub const EXT_DATETIME: i8 = 20;
/// `[microseconds]`: a duration.
pub const EXT_TIMEDELTA: i8 = 21;
/// `[sign (0 or 1 for negative), coefficient (int, or "NaN", "sNaN", "inf"),
/// exponent]`
pub const EXT_DECIMAL: i8 = 22;
/// `[ipc stream bytes]` (worker → host), `[ipc stream bytes, "table" |
/// "pandas"]` (host → worker): an Arrow table.
pub const EXT_ARROW: i8 = 23;
/// `[struct name, fields (map)]`: a value a Python encoder registered for a
/// user type made (worker → host).
pub const EXT_STRUCT: i8 = 24;
/// `[module, function, args (array), kwargs (map)]`: the value of calling
/// `module.function(*args, **kwargs)` in the worker (host → worker).
pub const EXT_CONSTRUCT: i8 = 25;

/// The extension codes whose payload is a plain array of fields, handed to
/// [`Builder::tagged`] once its elements are built.
pub const TAGGED: std::ops::RangeInclusive<i8> = EXT_DATE..=EXT_CONSTRUCT;

/// A tensor's element type: Nx's type tuples, written as `"f64"`, `"bf16"`,
/// `"c128"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dtype {
    /// `b'u'`, `b's'`, `b'f'`, `b'b'` (bf) or `b'c'`.
    pub kind: u8,
    pub bits: u16,
}

impl Dtype {
    pub const ALL: [&'static str; 14] = [
        "u8", "u16", "u32", "u64", "s8", "s16", "s32", "s64", "f16", "f32", "f64", "bf16", "c64", "c128",
    ];

    pub fn parse(name: &str) -> Option<Dtype> {
        if !Self::ALL.contains(&name) {
            return None;
        }
        let (kind, bits) = match name.strip_prefix("bf") {
            Some(bits) => (b'b', bits),
            None => (name.as_bytes()[0], &name[1..]),
        };
        Some(Dtype { kind, bits: bits.parse().ok()? })
    }

    pub fn bytes(self) -> usize {
        self.bits as usize / 8
    }
}

/// The byte length a tensor of `dtype` and `shape` must have, or `None` on
/// overflow.
pub fn tensor_len(dtype: Dtype, shape: &[u64]) -> Option<usize> {
    shape
        .iter()
        .try_fold(dtype.bytes(), |acc, &d| acc.checked_mul(usize::try_from(d).ok()?))
}

/// A decoded value, for tests and for code that has no native representation
/// of its own. The host and the worker decode into terms and Python objects
/// directly instead.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Nil,
    Bool(bool),
    Int(i64),
    UInt(u64),
    /// An integer outside the `i64`/`u64` ranges: sign and little-endian
    /// magnitude without trailing zero bytes.
    BigInt { negative: bool, magnitude: Vec<u8> },
    Float(f64),
    Str(String),
    Bin(Vec<u8>),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Set(Vec<Value>),
    Map(Vec<(Value, Value)>),
    /// An object in a worker's table; `info` is its type name and repr,
    /// which only the worker sends.
    Handle { id: u64, info: Option<(String, String)> },
    Tensor { dtype: String, shape: Vec<u64>, data: Vec<u8> },
    /// One of the [`TAGGED`] extensions and its fields.
    Tagged { ext: i8, items: Vec<Value> },
}

pub fn write_nil(out: &mut Vec<u8>) {
    out.push(Marker::Null.to_u8());
}

pub fn write_bool(out: &mut Vec<u8>, v: bool) {
    out.push(if v { Marker::True } else { Marker::False }.to_u8());
}

pub fn write_i64(out: &mut Vec<u8>, v: i64) {
    rmp::encode::write_sint(out, v).expect("writing to a Vec cannot fail");
}

pub fn write_u64(out: &mut Vec<u8>, v: u64) {
    rmp::encode::write_uint(out, v).expect("writing to a Vec cannot fail");
}

pub fn write_f64(out: &mut Vec<u8>, v: f64) {
    rmp::encode::write_f64(out, v).expect("writing to a Vec cannot fail");
}

pub fn write_str(out: &mut Vec<u8>, v: &str) -> Result<(), EncodeError> {
    let len = element_count(v.len())?;
    rmp::encode::write_str_len(out, len).expect("writing to a Vec cannot fail");
    out.extend_from_slice(v.as_bytes());
    Ok(())
}

pub fn write_bin(out: &mut Vec<u8>, v: &[u8]) -> Result<(), EncodeError> {
    let len = element_count(v.len())?;
    rmp::encode::write_bin_len(out, len).expect("writing to a Vec cannot fail");
    out.extend_from_slice(v);
    Ok(())
}

pub fn write_array_len(out: &mut Vec<u8>, len: usize) -> Result<(), EncodeError> {
    let len = element_count(len)?;
    rmp::encode::write_array_len(out, len).expect("writing to a Vec cannot fail");
    Ok(())
}

pub fn write_map_len(out: &mut Vec<u8>, len: usize) -> Result<(), EncodeError> {
    let len = element_count(len)?;
    rmp::encode::write_map_len(out, len).expect("writing to a Vec cannot fail");
    Ok(())
}

/// Writes an integer that does not fit `i64`/`u64`. `magnitude` is
/// little-endian; trailing zero bytes are trimmed.
pub fn write_bigint(out: &mut Vec<u8>, negative: bool, magnitude: &[u8]) -> Result<(), EncodeError> {
    let trimmed = trim_magnitude(magnitude);
    let len = element_count(trimmed.len() + 1)?;
    rmp::encode::write_ext_meta(out, len, EXT_BIGINT).expect("writing to a Vec cannot fail");
    out.push(negative as u8);
    out.extend_from_slice(trimmed);
    Ok(())
}

/// Starts a tuple of `len` elements; write the elements, then call
/// [`finish_container`] with the returned offset.
pub fn begin_tuple(out: &mut Vec<u8>, len: usize) -> Result<usize, EncodeError> {
    begin_ext_container(out, EXT_TUPLE, len)
}

/// Starts a set of `len` elements; see [`begin_tuple`].
pub fn begin_set(out: &mut Vec<u8>, len: usize) -> Result<usize, EncodeError> {
    begin_ext_container(out, EXT_SET, len)
}

/// Patches the payload length of a tuple or set begun at `start`.
pub fn finish_container(out: &mut Vec<u8>, start: usize) -> Result<(), EncodeError> {
    let payload = out.len() - start - EXT32_HEADER_LEN;
    let len = element_count(payload)?;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Starts one of the [`TAGGED`] extensions with `len` fields; see
/// [`begin_tuple`].
pub fn begin_tagged(out: &mut Vec<u8>, ext: i8, len: usize) -> Result<usize, EncodeError> {
    begin_ext_container(out, ext, len)
}

/// Writes a tensor. The caller checks that `data` matches `dtype` and
/// `shape` (see [`tensor_len`]).
pub fn write_tensor(out: &mut Vec<u8>, dtype: &str, shape: &[u64], data: &[u8]) -> Result<(), EncodeError> {
    let start = begin_ext_container(out, EXT_TENSOR, 3)?;
    write_str(out, dtype)?;
    write_array_len(out, shape.len())?;
    for &d in shape {
        write_u64(out, d);
    }
    write_bin(out, data)?;
    finish_container(out, start)
}

/// Writes a handle: `info` (type name, repr) when the worker sends it.
pub fn write_handle(out: &mut Vec<u8>, id: u64, info: Option<(&str, &str)>) -> Result<(), EncodeError> {
    let start = begin_ext_container(out, EXT_HANDLE, if info.is_some() { 3 } else { 1 })?;
    write_u64(out, id);
    if let Some((type_name, repr)) = info {
        write_str(out, type_name)?;
        write_str(out, repr)?;
    }
    finish_container(out, start)
}

const EXT32_HEADER_LEN: usize = 6;

fn begin_ext_container(out: &mut Vec<u8>, ext: i8, len: usize) -> Result<usize, EncodeError> {
    let start = out.len();
    // Always ext32, so the length can be patched in place once known.
    out.push(Marker::Ext32.to_u8());
    out.extend_from_slice(&[0; 4]);
    out.push(ext as u8);
    write_array_len(out, len)?;
    Ok(start)
}

fn element_count(len: usize) -> Result<u32, EncodeError> {
    u32::try_from(len).map_err(|_| EncodeError::TooManyElements(len))
}

fn trim_magnitude(magnitude: &[u8]) -> &[u8] {
    let keep = magnitude.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    &magnitude[..keep]
}

impl Value {
    /// Appends the msgpack encoding of this value to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.encode_at(out, 0)
    }

    pub(crate) fn encode_at(&self, out: &mut Vec<u8>, depth: usize) -> Result<(), EncodeError> {
        match self {
            Value::Nil => write_nil(out),
            Value::Bool(b) => write_bool(out, *b),
            Value::Int(i) => write_i64(out, *i),
            Value::UInt(u) => write_u64(out, *u),
            Value::BigInt { negative, magnitude } => write_bigint(out, *negative, magnitude)?,
            Value::Float(f) => write_f64(out, *f),
            Value::Str(s) => write_str(out, s)?,
            Value::Bin(b) => write_bin(out, b)?,
            Value::List(items) => {
                let depth = deeper(depth)?;
                write_array_len(out, items.len())?;
                for item in items {
                    item.encode_at(out, depth)?;
                }
            }
            Value::Tuple(items) | Value::Set(items) => {
                let depth = deeper(depth)?;
                let start = if matches!(self, Value::Tuple(_)) {
                    begin_tuple(out, items.len())?
                } else {
                    begin_set(out, items.len())?
                };
                for item in items {
                    item.encode_at(out, depth)?;
                }
                finish_container(out, start)?;
            }
            Value::Map(pairs) => {
                let depth = deeper(depth)?;
                write_map_len(out, pairs.len())?;
                for (k, v) in pairs {
                    k.encode_at(out, depth)?;
                    v.encode_at(out, depth)?;
                }
            }
            Value::Handle { id, info } => {
                write_handle(out, *id, info.as_ref().map(|(t, r)| (t.as_str(), r.as_str())))?;
            }
            Value::Tensor { dtype, shape, data } => write_tensor(out, dtype, shape, data)?,
            Value::Tagged { ext, items } => {
                let depth = deeper(depth)?;
                let start = begin_tagged(out, *ext, items.len())?;
                for item in items {
                    item.encode_at(out, depth)?;
                }
                finish_container(out, start)?;
            }
        }
        Ok(())
    }

    /// Decodes exactly one value from `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Value, DecodeError> {
        let mut input = bytes;
        let value = decode_value(&mut input, &mut ValueBuilder, 0)?;
        if !input.is_empty() {
            return Err(DecodeError::TrailingBytes(input.len()));
        }
        Ok(value)
    }
}

fn deeper(depth: usize) -> Result<usize, EncodeError> {
    if depth >= MAX_DEPTH {
        Err(EncodeError::TooDeep)
    } else {
        Ok(depth + 1)
    }
}

/// Receives decoded values bottom-up and builds a native representation.
///
/// Every method may fail (a Python set whose element is unhashable, say); the
/// error type must absorb [`DecodeError`] so malformed input and builder
/// failures travel the same way.
pub trait Builder {
    type Value;
    type Error: From<DecodeError>;

    fn nil(&mut self) -> Result<Self::Value, Self::Error>;
    fn bool(&mut self, v: bool) -> Result<Self::Value, Self::Error>;
    fn int(&mut self, v: i64) -> Result<Self::Value, Self::Error>;
    fn uint(&mut self, v: u64) -> Result<Self::Value, Self::Error>;
    fn bigint(&mut self, negative: bool, magnitude_le: &[u8]) -> Result<Self::Value, Self::Error>;
    fn float(&mut self, v: f64) -> Result<Self::Value, Self::Error>;
    fn str(&mut self, v: &str) -> Result<Self::Value, Self::Error>;
    fn bin(&mut self, v: &[u8]) -> Result<Self::Value, Self::Error>;
    fn list(&mut self, items: Vec<Self::Value>) -> Result<Self::Value, Self::Error>;
    fn tuple(&mut self, items: Vec<Self::Value>) -> Result<Self::Value, Self::Error>;
    fn set(&mut self, items: Vec<Self::Value>) -> Result<Self::Value, Self::Error>;
    fn map(&mut self, pairs: Vec<(Self::Value, Self::Value)>) -> Result<Self::Value, Self::Error>;

    /// A string's bytes, not checked yet. A builder that makes text of them
    /// checks that they are UTF-8, as this does; one that only looks at a
    /// value's shape may skip the check, which costs per byte.
    fn str_bytes(&mut self, bytes: &[u8]) -> Result<Self::Value, Self::Error> {
        self.str(std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8)?)
    }

    /// A string that is a map key. Keys repeat across messages far more than
    /// other strings do, so a builder may cache what it makes of them.
    fn key_str(&mut self, v: &str) -> Result<Self::Value, Self::Error> {
        self.str(v)
    }

    /// An object handle; `info` (type name, repr) is present when a worker
    /// sent it.
    fn handle(&mut self, id: u64, info: Option<(&str, &str)>) -> Result<Self::Value, Self::Error>;

    /// A tensor; `data` was checked against `dtype` and `shape`.
    fn tensor(&mut self, dtype: Dtype, shape: &[u64], data: &[u8]) -> Result<Self::Value, Self::Error>;

    /// One of the [`TAGGED`] extensions, its fields already built. The
    /// builder checks their number and types.
    fn tagged(&mut self, ext: i8, items: Vec<Self::Value>) -> Result<Self::Value, Self::Error>;
}

/// Builds [`Value`]s.
pub struct ValueBuilder;

impl Builder for ValueBuilder {
    type Value = Value;
    type Error = DecodeError;

    fn nil(&mut self) -> Result<Value, DecodeError> {
        Ok(Value::Nil)
    }
    fn bool(&mut self, v: bool) -> Result<Value, DecodeError> {
        Ok(Value::Bool(v))
    }
    fn int(&mut self, v: i64) -> Result<Value, DecodeError> {
        Ok(Value::Int(v))
    }
    fn uint(&mut self, v: u64) -> Result<Value, DecodeError> {
        Ok(Value::UInt(v))
    }
    fn bigint(&mut self, negative: bool, magnitude: &[u8]) -> Result<Value, DecodeError> {
        Ok(Value::BigInt {
            negative,
            magnitude: magnitude.to_vec(),
        })
    }
    fn float(&mut self, v: f64) -> Result<Value, DecodeError> {
        Ok(Value::Float(v))
    }
    fn str(&mut self, v: &str) -> Result<Value, DecodeError> {
        Ok(Value::Str(v.to_owned()))
    }
    fn bin(&mut self, v: &[u8]) -> Result<Value, DecodeError> {
        Ok(Value::Bin(v.to_vec()))
    }
    fn list(&mut self, items: Vec<Value>) -> Result<Value, DecodeError> {
        Ok(Value::List(items))
    }
    fn tuple(&mut self, items: Vec<Value>) -> Result<Value, DecodeError> {
        Ok(Value::Tuple(items))
    }
    fn set(&mut self, items: Vec<Value>) -> Result<Value, DecodeError> {
        Ok(Value::Set(items))
    }
    fn map(&mut self, pairs: Vec<(Value, Value)>) -> Result<Value, DecodeError> {
        Ok(Value::Map(pairs))
    }
    fn handle(&mut self, id: u64, info: Option<(&str, &str)>) -> Result<Value, DecodeError> {
        Ok(Value::Handle {
            id,
            info: info.map(|(t, r)| (t.to_owned(), r.to_owned())),
        })
    }
    fn tensor(&mut self, dtype: Dtype, shape: &[u64], data: &[u8]) -> Result<Value, DecodeError> {
        Ok(Value::Tensor {
            dtype: dtype_name(dtype).to_owned(),
            shape: shape.to_vec(),
            data: data.to_vec(),
        })
    }
    fn tagged(&mut self, ext: i8, items: Vec<Value>) -> Result<Value, DecodeError> {
        Ok(Value::Tagged { ext, items })
    }
}

/// The wire name of a dtype (`"f64"`).
pub fn dtype_name(dtype: Dtype) -> &'static str {
    Dtype::ALL
        .iter()
        .copied()
        .find(|name| Dtype::parse(name) == Some(dtype))
        .unwrap_or("?")
}

/// The ids of every handle in one encoded value: what a reply nobody will
/// read keeps alive in its worker, to be released.
pub fn handle_ids(bytes: &[u8]) -> Result<Vec<u64>, DecodeError> {
    let mut scan = Scan::new(usize::MAX);
    let mut input = bytes;
    decode_value(&mut input, &mut scan, 0)?;
    Ok(scan.handles)
}

/// What building a value as terms costs: per value, and per byte of what
/// the build reads through.
#[derive(Debug, PartialEq, Eq)]
pub struct BuildCost {
    /// Each element of a container counts, and so does the container.
    pub values: usize,
    /// Bytes of strings (checked for UTF-8), tensors (copied) and big
    /// integers (converted).
    pub bytes_read: usize,
    /// Map entries and set elements: a builder may insert them one at a
    /// time, at several times the cost of a value.
    pub entries: usize,
}

/// The [`BuildCost`] of the msgpack in `bytes`, counted far faster than
/// building it (nothing is checked or copied here). Counting stops past
/// `max_values` values.
pub fn build_cost(bytes: &[u8], max_values: usize) -> BuildCost {
    let mut scan = Scan::new(max_values);
    let mut input = bytes;
    let _ = decode_value(&mut input, &mut scan, 0);
    BuildCost {
        values: scan.values,
        bytes_read: scan.bytes_read,
        entries: scan.entries,
    }
}

/// A builder that builds nothing: it notes handle ids, and counts values up
/// to a limit and the bytes a build would read (see [`BuildCost`]).
struct Scan {
    handles: Vec<u64>,
    values: usize,
    limit: usize,
    bytes_read: usize,
    entries: usize,
}

impl Scan {
    fn new(limit: usize) -> Self {
        Scan {
            handles: Vec::new(),
            values: 0,
            limit,
            bytes_read: 0,
            entries: 0,
        }
    }

    fn value(&mut self) -> Result<(), DecodeError> {
        self.values += 1;
        if self.values > self.limit {
            return Err(DecodeError::Invalid("more values than counted for".into()));
        }
        Ok(())
    }
}

impl Builder for Scan {
    type Value = ();
    type Error = DecodeError;

    fn nil(&mut self) -> Result<(), DecodeError> {
        self.value()
    }
    fn bool(&mut self, _: bool) -> Result<(), DecodeError> {
        self.value()
    }
    fn int(&mut self, _: i64) -> Result<(), DecodeError> {
        self.value()
    }
    fn uint(&mut self, _: u64) -> Result<(), DecodeError> {
        self.value()
    }
    fn bigint(&mut self, _: bool, magnitude: &[u8]) -> Result<(), DecodeError> {
        self.bytes_read += magnitude.len();
        self.value()
    }
    fn float(&mut self, _: f64) -> Result<(), DecodeError> {
        self.value()
    }
    fn str(&mut self, _: &str) -> Result<(), DecodeError> {
        self.value()
    }
    fn str_bytes(&mut self, bytes: &[u8]) -> Result<(), DecodeError> {
        self.bytes_read += bytes.len();
        self.value()
    }
    fn bin(&mut self, _: &[u8]) -> Result<(), DecodeError> {
        self.value()
    }
    fn list(&mut self, _: Vec<()>) -> Result<(), DecodeError> {
        self.value()
    }
    fn tuple(&mut self, _: Vec<()>) -> Result<(), DecodeError> {
        self.value()
    }
    fn set(&mut self, items: Vec<()>) -> Result<(), DecodeError> {
        self.entries += items.len();
        self.value()
    }
    fn map(&mut self, pairs: Vec<((), ())>) -> Result<(), DecodeError> {
        self.entries += pairs.len();
        self.value()
    }
    fn handle(&mut self, id: u64, _: Option<(&str, &str)>) -> Result<(), DecodeError> {
        self.handles.push(id);
        self.value()
    }
    fn tensor(&mut self, _: Dtype, _: &[u64], data: &[u8]) -> Result<(), DecodeError> {
        self.bytes_read += data.len();
        self.value()
    }
    fn tagged(&mut self, _: i8, _: Vec<()>) -> Result<(), DecodeError> {
        self.value()
    }
}

/// Decodes one value from the front of `input`, advancing it, and builds it
/// with `builder`. `depth` is the nesting level of the value (0 at the top).
pub fn decode_value<B: Builder>(
    input: &mut &[u8],
    builder: &mut B,
    depth: usize,
) -> Result<B::Value, B::Error> {
    let marker = Marker::from_u8(take_u8(input)?);
    match marker {
        Marker::Null => builder.nil(),
        Marker::True => builder.bool(true),
        Marker::False => builder.bool(false),
        Marker::FixPos(v) => builder.int(v as i64),
        Marker::FixNeg(v) => builder.int(v as i64),
        Marker::U8 => builder.int(take_u8(input)? as i64),
        Marker::U16 => builder.int(u16::from_be_bytes(take_array(input)?) as i64),
        Marker::U32 => builder.int(u32::from_be_bytes(take_array(input)?) as i64),
        Marker::U64 => {
            let v = u64::from_be_bytes(take_array(input)?);
            match i64::try_from(v) {
                Ok(i) => builder.int(i),
                Err(_) => builder.uint(v),
            }
        }
        Marker::I8 => builder.int(i8::from_be_bytes(take_array(input)?) as i64),
        Marker::I16 => builder.int(i16::from_be_bytes(take_array(input)?) as i64),
        Marker::I32 => builder.int(i32::from_be_bytes(take_array(input)?) as i64),
        Marker::I64 => builder.int(i64::from_be_bytes(take_array(input)?)),
        Marker::F32 => builder.float(f32::from_be_bytes(take_array(input)?) as f64),
        Marker::F64 => builder.float(f64::from_be_bytes(take_array(input)?)),
        Marker::FixStr(len) => decode_str(input, builder, len as usize),
        Marker::Str8 => {
            let len = take_u8(input)? as usize;
            decode_str(input, builder, len)
        }
        Marker::Str16 => {
            let len = u16::from_be_bytes(take_array(input)?) as usize;
            decode_str(input, builder, len)
        }
        Marker::Str32 => {
            let len = u32::from_be_bytes(take_array(input)?) as usize;
            decode_str(input, builder, len)
        }
        Marker::Bin8 => {
            let len = take_u8(input)? as usize;
            builder.bin(take(input, len)?)
        }
        Marker::Bin16 => {
            let len = u16::from_be_bytes(take_array(input)?) as usize;
            builder.bin(take(input, len)?)
        }
        Marker::Bin32 => {
            let len = u32::from_be_bytes(take_array(input)?) as usize;
            builder.bin(take(input, len)?)
        }
        Marker::FixArray(len) => decode_items(input, builder, len as usize, depth),
        Marker::Array16 => {
            let len = u16::from_be_bytes(take_array(input)?) as usize;
            decode_items(input, builder, len, depth)
        }
        Marker::Array32 => {
            let len = u32::from_be_bytes(take_array(input)?) as usize;
            decode_items(input, builder, len, depth)
        }
        Marker::FixMap(len) => decode_map(input, builder, len as usize, depth),
        Marker::Map16 => {
            let len = u16::from_be_bytes(take_array(input)?) as usize;
            decode_map(input, builder, len, depth)
        }
        Marker::Map32 => {
            let len = u32::from_be_bytes(take_array(input)?) as usize;
            decode_map(input, builder, len, depth)
        }
        Marker::FixExt1 => decode_ext(input, builder, 1, depth),
        Marker::FixExt2 => decode_ext(input, builder, 2, depth),
        Marker::FixExt4 => decode_ext(input, builder, 4, depth),
        Marker::FixExt8 => decode_ext(input, builder, 8, depth),
        Marker::FixExt16 => decode_ext(input, builder, 16, depth),
        Marker::Ext8 => {
            let len = take_u8(input)? as usize;
            decode_ext(input, builder, len, depth)
        }
        Marker::Ext16 => {
            let len = u16::from_be_bytes(take_array(input)?) as usize;
            decode_ext(input, builder, len, depth)
        }
        Marker::Ext32 => {
            let len = u32::from_be_bytes(take_array(input)?) as usize;
            decode_ext(input, builder, len, depth)
        }
        Marker::Reserved => Err(DecodeError::InvalidMarker(0xc1).into()),
    }
}

fn decode_str<B: Builder>(input: &mut &[u8], builder: &mut B, len: usize) -> Result<B::Value, B::Error> {
    builder.str_bytes(take(input, len)?)
}

/// Reads an unsigned integer field.
pub fn read_uint(input: &mut &[u8]) -> Result<u64, DecodeError> {
    let marker = Marker::from_u8(take_u8(input)?);
    let bytes = |input: &mut &[u8], n: usize| -> Result<u64, DecodeError> {
        Ok(take(input, n)?.iter().fold(0u64, |acc, &b| (acc << 8) | b as u64))
    };
    match marker {
        Marker::FixPos(v) => Ok(v as u64),
        Marker::U8 => bytes(input, 1),
        Marker::U16 => bytes(input, 2),
        Marker::U32 => bytes(input, 4),
        Marker::U64 => bytes(input, 8),
        other => Err(DecodeError::UnexpectedType {
            expected: "unsigned integer",
            found: marker_name(other),
        }),
    }
}

/// Reads the array header of a list, tuple or set body.
pub fn read_array_len(input: &mut &[u8]) -> Result<usize, DecodeError> {
    match Marker::from_u8(take_u8(input)?) {
        Marker::FixArray(len) => Ok(len as usize),
        Marker::Array16 => Ok(u16::from_be_bytes(take_array(input)?) as usize),
        Marker::Array32 => Ok(u32::from_be_bytes(take_array(input)?) as usize),
        other => Err(DecodeError::UnexpectedType {
            expected: "array",
            found: marker_name(other),
        }),
    }
}

fn collect<B: Builder>(input: &mut &[u8], builder: &mut B, len: usize, depth: usize) -> Result<Vec<B::Value>, B::Error> {
    if depth >= MAX_DEPTH {
        return Err(DecodeError::TooDeep.into());
    }
    // Every element takes at least one byte: a corrupt length cannot make
    // this allocate more than the input could hold.
    if len > input.len() {
        return Err(DecodeError::Truncated.into());
    }
    let mut items = Vec::with_capacity(len);
    for _ in 0..len {
        items.push(decode_value(input, builder, depth + 1)?);
    }
    Ok(items)
}

fn decode_items<B: Builder>(input: &mut &[u8], builder: &mut B, len: usize, depth: usize) -> Result<B::Value, B::Error> {
    let items = collect(input, builder, len, depth)?;
    builder.list(items)
}

fn decode_map<B: Builder>(input: &mut &[u8], builder: &mut B, len: usize, depth: usize) -> Result<B::Value, B::Error> {
    if depth >= MAX_DEPTH {
        return Err(DecodeError::TooDeep.into());
    }
    if len > input.len() / 2 {
        return Err(DecodeError::Truncated.into());
    }
    let mut pairs = Vec::with_capacity(len);
    for _ in 0..len {
        let k = match str_len(input)? {
            Some((header, len)) => {
                take(input, header)?;
                let bytes = take(input, len)?;
                builder.key_str(std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8)?)?
            }
            None => decode_value(input, builder, depth + 1)?,
        };
        let v = decode_value(input, builder, depth + 1)?;
        pairs.push((k, v));
    }
    builder.map(pairs)
}

/// If `input` starts with a string, the size of its header and its length.
fn str_len(input: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let Some(&first) = input.first() else {
        return Err(DecodeError::Truncated);
    };
    let be = |n: usize| -> Result<usize, DecodeError> {
        let bytes = input.get(1..1 + n).ok_or(DecodeError::Truncated)?;
        Ok(bytes.iter().fold(0usize, |acc, &b| (acc << 8) | b as usize))
    };
    Ok(match Marker::from_u8(first) {
        Marker::FixStr(len) => Some((1, len as usize)),
        Marker::Str8 => Some((2, be(1)?)),
        Marker::Str16 => Some((3, be(2)?)),
        Marker::Str32 => Some((5, be(4)?)),
        _ => None,
    })
}

fn decode_ext<B: Builder>(input: &mut &[u8], builder: &mut B, len: usize, depth: usize) -> Result<B::Value, B::Error> {
    let ext = take_u8(input)? as i8;
    let mut payload = take(input, len)?;
    match ext {
        EXT_BIGINT => {
            let (&sign, magnitude) = payload.split_first().ok_or(DecodeError::Truncated)?;
            if sign > 1 {
                return Err(DecodeError::Invalid(format!("bad integer sign byte {sign}")).into());
            }
            builder.bigint(sign == 1, magnitude)
        }
        EXT_TUPLE | EXT_SET => {
            let count = read_array_len(&mut payload)?;
            let items = collect(&mut payload, builder, count, depth)?;
            if !payload.is_empty() {
                return Err(DecodeError::TrailingBytes(payload.len()).into());
            }
            if ext == EXT_TUPLE {
                builder.tuple(items)
            } else {
                builder.set(items)
            }
        }
        EXT_HANDLE => {
            let count = read_array_len(&mut payload)?;
            let id = read_uint(&mut payload)?;
            let info = match count {
                1 => None,
                3 => Some((read_str_field(&mut payload)?, read_str_field(&mut payload)?)),
                n => return Err(DecodeError::Invalid(format!("a handle has 1 or 3 fields, not {n}")).into()),
            };
            if !payload.is_empty() {
                return Err(DecodeError::TrailingBytes(payload.len()).into());
            }
            builder.handle(id, info)
        }
        EXT_TENSOR => {
            let tensor = read_tensor(&mut payload)?;
            if !payload.is_empty() {
                return Err(DecodeError::TrailingBytes(payload.len()).into());
            }
            builder.tensor(tensor.0, &tensor.1, tensor.2)
        }
        ext if TAGGED.contains(&ext) => {
            let count = read_array_len(&mut payload)?;
            let items = collect(&mut payload, builder, count, depth)?;
            if !payload.is_empty() {
                return Err(DecodeError::TrailingBytes(payload.len()).into());
            }
            builder.tagged(ext, items)
        }
        other => Err(DecodeError::UnknownExtension(other).into()),
    }
}

/// A tensor's fields, checked: a known dtype and data of the size its shape
/// says.
fn read_tensor<'a>(payload: &mut &'a [u8]) -> Result<(Dtype, Vec<u64>, &'a [u8]), DecodeError> {
    if read_array_len(payload)? != 3 {
        return Err(DecodeError::Invalid("a tensor has 3 fields".into()));
    }
    let name = read_str_field(payload)?;
    let dtype = Dtype::parse(name).ok_or_else(|| DecodeError::Invalid(format!("unknown tensor type {name:?}")))?;
    let rank = read_array_len(payload)?;
    if rank > payload.len() {
        return Err(DecodeError::Truncated);
    }
    let shape = (0..rank)
        .map(|_| read_uint(payload))
        .collect::<Result<Vec<u64>, _>>()?;
    let len = match Marker::from_u8(take_u8(payload)?) {
        Marker::Bin8 => take_u8(payload)? as usize,
        Marker::Bin16 => u16::from_be_bytes(take_array(payload)?) as usize,
        Marker::Bin32 => u32::from_be_bytes(take_array(payload)?) as usize,
        other => {
            return Err(DecodeError::UnexpectedType {
                expected: "binary",
                found: marker_name(other),
            })
        }
    };
    let data = take(payload, len)?;
    if tensor_len(dtype, &shape) != Some(len) {
        return Err(DecodeError::Invalid(format!(
            "a {name} tensor of shape {shape:?} cannot hold {len} bytes"
        )));
    }
    Ok((dtype, shape, data))
}

/// A str borrowed from the input.
fn read_str_field<'a>(input: &mut &'a [u8]) -> Result<&'a str, DecodeError> {
    let first = *input.first().ok_or(DecodeError::Truncated)?;
    let (header, len) = str_len(input)?.ok_or(DecodeError::UnexpectedType {
        expected: "string",
        found: marker_name(Marker::from_u8(first)),
    })?;
    take(input, header)?;
    std::str::from_utf8(take(input, len)?).map_err(|_| DecodeError::InvalidUtf8)
}

pub(crate) fn take_u8(input: &mut &[u8]) -> Result<u8, DecodeError> {
    let (&b, rest) = input.split_first().ok_or(DecodeError::Truncated)?;
    *input = rest;
    Ok(b)
}

pub(crate) fn take_array<const N: usize>(input: &mut &[u8]) -> Result<[u8; N], DecodeError> {
    let bytes = take(input, N)?;
    Ok(bytes.try_into().expect("take returned N bytes"))
}

pub(crate) fn take<'a>(input: &mut &'a [u8], len: usize) -> Result<&'a [u8], DecodeError> {
    if input.len() < len {
        return Err(DecodeError::Truncated);
    }
    let (head, rest) = input.split_at(len);
    *input = rest;
    Ok(head)
}

pub(crate) fn marker_name(marker: Marker) -> &'static str {
    match marker {
        Marker::Null => "nil",
        Marker::True | Marker::False => "bool",
        Marker::FixPos(_) | Marker::FixNeg(_) | Marker::U8 | Marker::U16 | Marker::U32 | Marker::U64 => "integer",
        Marker::I8 | Marker::I16 | Marker::I32 | Marker::I64 => "integer",
        Marker::F32 | Marker::F64 => "float",
        Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32 => "string",
        Marker::Bin8 | Marker::Bin16 | Marker::Bin32 => "binary",
        Marker::FixArray(_) | Marker::Array16 | Marker::Array32 => "array",
        Marker::FixMap(_) | Marker::Map16 | Marker::Map32 => "map",
        Marker::FixExt1
        | Marker::FixExt2
        | Marker::FixExt4
        | Marker::FixExt8
        | Marker::FixExt16
        | Marker::Ext8
        | Marker::Ext16
        | Marker::Ext32 => "extension",
        Marker::Reserved => "reserved marker",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip(v: &Value) -> Value {
        let mut out = Vec::new();
        v.encode(&mut out).unwrap();
        Value::decode(&out).unwrap()
    }

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Nil),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            (i64::MAX as u64 + 1..=u64::MAX).prop_map(Value::UInt),
            (any::<bool>(), proptest::collection::vec(any::<u8>(), 9..40)).prop_map(|(negative, mut m)| {
                *m.last_mut().unwrap() |= 1;
                Value::BigInt { negative, magnitude: m }
            }),
            any::<f64>().prop_filter("NaN never compares equal", |f| !f.is_nan()).prop_map(Value::Float),
            ".*".prop_map(Value::Str),
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(Value::Bin),
            (any::<u64>(), proptest::option::of((".{0,20}", ".{0,20}"))).prop_map(|(id, info)| Value::Handle { id, info }),
            (0..Dtype::ALL.len(), proptest::collection::vec(0u64..4, 0..4)).prop_map(|(i, shape)| {
                let dtype = Dtype::ALL[i];
                let len = tensor_len(Dtype::parse(dtype).unwrap(), &shape).unwrap();
                Value::Tensor { dtype: dtype.into(), shape, data: (0..len).map(|b| b as u8).collect() }
            }),
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        leaf().prop_recursive(6, 256, 12, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..12).prop_map(Value::List),
                proptest::collection::vec(inner.clone(), 0..12).prop_map(Value::Tuple),
                proptest::collection::vec(inner.clone(), 0..12).prop_map(Value::Set),
                proptest::collection::vec((inner.clone(), inner.clone()), 0..12).prop_map(Value::Map),
                (TAGGED, proptest::collection::vec(inner, 0..12)).prop_map(|(ext, items)| Value::Tagged { ext, items }),
            ]
        })
    }

    proptest! {
        #[test]
        fn values_round_trip(v in value()) {
            prop_assert_eq!(roundtrip(&v), v);
        }

        #[test]
        fn truncated_input_is_an_error(v in value(), cut in any::<prop::sample::Index>()) {
            let mut out = Vec::new();
            v.encode(&mut out).unwrap();
            let cut = cut.index(out.len());
            prop_assert!(Value::decode(&out[..cut]).is_err());
        }

        #[test]
        fn corrupt_input_never_panics(v in value(), flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
            let mut out = Vec::new();
            v.encode(&mut out).unwrap();
            for (at, byte) in flips {
                let i = at.index(out.len());
                out[i] = byte;
            }
            let _ = Value::decode(&out);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Value::decode(&bytes);
        }
    }

    #[test]
    fn small_values_are_plain_msgpack() {
        let mut out = Vec::new();
        Value::List(vec![Value::Int(1), Value::Str("a".into()), Value::Nil]).encode(&mut out).unwrap();
        assert_eq!(out, [0x93, 0x01, 0xa1, b'a', 0xc0]);
    }

    #[test]
    fn build_cost_counts_container_elements_up_to_the_limit() {
        let mut out = Vec::new();
        Value::List((0..100).map(Value::Int).collect()).encode(&mut out).unwrap();
        assert_eq!(build_cost(&out, 100).values, 101);
        assert_eq!(build_cost(&out, 1000).values, 101);
        let mut one = Vec::new();
        Value::Bin(vec![0; 100_000]).encode(&mut one).unwrap();
        assert_eq!(build_cost(&one, 1), BuildCost { values: 1, bytes_read: 0, entries: 0 });
    }

    #[test]
    fn build_cost_counts_the_bytes_of_strings_and_tensors_without_reading_them() {
        let mut out = Vec::new();
        Value::List(vec![Value::Str("a".repeat(100_000)), Value::Str("bc".into())])
            .encode(&mut out)
            .unwrap();
        assert_eq!(build_cost(&out, 10), BuildCost { values: 3, bytes_read: 100_002, entries: 0 });
        // Invalid UTF-8 is the builder's to refuse, not the scan's.
        let invalid = [0xa2, 0xff, 0xfe];
        assert_eq!(build_cost(&invalid, 10), BuildCost { values: 1, bytes_read: 2, entries: 0 });
        assert!(matches!(
            decode_value(&mut &invalid[..], &mut ValueBuilder, 0),
            Err(DecodeError::InvalidUtf8)
        ));
        let mut tensor = Vec::new();
        Value::Tensor { dtype: "f64".into(), shape: vec![2, 3], data: vec![0; 48] }
            .encode(&mut tensor)
            .unwrap();
        assert_eq!(build_cost(&tensor, 10), BuildCost { values: 1, bytes_read: 48, entries: 0 });
    }

    #[test]
    fn build_cost_counts_map_entries_and_set_elements() {
        let mut out = Vec::new();
        Value::List(vec![
            Value::Map(vec![(Value::Int(1), Value::Nil), (Value::Int(2), Value::Nil)]),
            Value::Set((0..3).map(Value::Int).collect()),
        ])
        .encode(&mut out)
        .unwrap();
        assert_eq!(build_cost(&out, 100), BuildCost { values: 10, bytes_read: 0, entries: 5 });
    }

    #[test]
    fn bigint_magnitude_is_trimmed() {
        let mut out = Vec::new();
        write_bigint(&mut out, true, &[1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0]).unwrap();
        assert_eq!(
            Value::decode(&out).unwrap(),
            Value::BigInt { negative: true, magnitude: vec![1, 0, 0, 0, 0, 0, 0, 0, 2] }
        );
    }

    #[test]
    fn nesting_limit_is_enforced_both_ways() {
        let mut v = Value::Nil;
        for _ in 0..MAX_DEPTH {
            v = Value::List(vec![v]);
        }
        assert_eq!(roundtrip(&v), v);
        let too_deep = Value::List(vec![v]);
        assert_eq!(too_deep.encode(&mut Vec::new()), Err(EncodeError::TooDeep));

        let mut bytes = vec![0x91; MAX_DEPTH + 1];
        bytes.push(0xc0);
        assert_eq!(Value::decode(&bytes), Err(DecodeError::TooDeep));
    }

    #[test]
    fn huge_declared_length_is_truncation_not_allocation() {
        assert_eq!(Value::decode(&[0xdd, 0xff, 0xff, 0xff, 0xff]), Err(DecodeError::Truncated));
        assert_eq!(Value::decode(&[0xdf, 0xff, 0xff, 0xff, 0xff, 0]), Err(DecodeError::Truncated));
    }

    #[test]
    fn handle_ids_are_found_anywhere_in_a_value() {
        let handle = |id| Value::Handle { id, info: Some(("Model".into(), "<Model>".into())) };
        let v = Value::Map(vec![(Value::Str("a".into()), Value::List(vec![handle(3), Value::Tuple(vec![handle(9)])]))]);
        let mut out = Vec::new();
        v.encode(&mut out).unwrap();
        assert_eq!(handle_ids(&out).unwrap(), vec![3, 9]);
    }

    #[test]
    fn handle_with_two_fields_is_rejected() {
        let mut out = Vec::new();
        let start = begin_ext_container(&mut out, EXT_HANDLE, 2).unwrap();
        write_u64(&mut out, 1);
        write_str(&mut out, "x").unwrap();
        finish_container(&mut out, start).unwrap();
        assert!(matches!(Value::decode(&out), Err(DecodeError::Invalid(_))));
    }

    #[test]
    fn tensor_data_must_match_its_shape() {
        let mut out = Vec::new();
        write_tensor(&mut out, "f64", &[2, 3], &[0; 47]).unwrap();
        assert!(matches!(Value::decode(&out), Err(DecodeError::Invalid(m)) if m.contains("cannot hold 47 bytes")));
        let mut out = Vec::new();
        write_tensor(&mut out, "f8", &[1], &[0]).unwrap();
        assert!(matches!(Value::decode(&out), Err(DecodeError::Invalid(m)) if m.contains("unknown tensor type")));
        let mut out = Vec::new();
        write_tensor(&mut out, "c128", &[], &[7; 16]).unwrap();
        assert_eq!(
            Value::decode(&out).unwrap(),
            Value::Tensor { dtype: "c128".into(), shape: vec![], data: vec![7; 16] }
        );
    }

    #[test]
    fn dtypes_parse_to_nx_types() {
        assert_eq!(Dtype::parse("bf16"), Some(Dtype { kind: b'b', bits: 16 }));
        assert_eq!(Dtype::parse("c64").map(Dtype::bytes), Some(8));
        assert_eq!(Dtype::parse("u1"), None);
        for name in Dtype::ALL {
            assert_eq!(dtype_name(Dtype::parse(name).unwrap()), name);
        }
    }

    #[test]
    fn invalid_utf8_string_is_rejected() {
        assert_eq!(Value::decode(&[0xa2, 0xff, 0xfe]), Err(DecodeError::InvalidUtf8));
    }
}
