"""Which Python values cross to Elixir as data, and what Elixir's data kinds become here.

The native encoder writes the built-in types itself. Any other value is first
offered to :func:`to_wire`, which answers with a plainer value (``numpy.int64``
becomes ``int``), a :class:`~snakebridge_worker._native.Tagged` value of one of
the protocol's data extensions (a tensor, a date, a decimal...), or the value
itself when it has no by-value form: it then becomes a handle. The decision
is made once per type and cached.

numpy, pandas and pyarrow are never imported here to look at a value: a
numpy scalar can only exist once user code imported numpy, so the checks
consult ``sys.modules``. A tensor sent by the host is built with numpy when
numpy can be imported, and as a ``memoryview`` otherwise; an Arrow table
needs pyarrow.

User types get a by-value form with :func:`register_encoder`; the encoder may
return any value that crosses, including :func:`struct` for an Elixir struct.
``fractions.Fraction`` and ``complex`` have no Elixir equivalent without a
dependency, so they stay objects unless an encoder is registered for them.
"""

from __future__ import annotations

import datetime
import decimal
import importlib
import os
import sys
import uuid
from typing import Any, Callable

from snakebridge_worker._native import Tagged
from snakebridge_worker.dispatch import resolve

EXT_TENSOR = 16
EXT_DATE = 17
EXT_TIME = 18
EXT_NAIVE_DATETIME = 19
EXT_DATETIME = 20
EXT_TIMEDELTA = 21
EXT_DECIMAL = 22
EXT_ARROW = 23
EXT_STRUCT = 24
EXT_CONSTRUCT = 25

_MISSING = object()

# The user's encoders, by type; a subclass uses its nearest registered base.
_encoders: dict[type, Callable[[Any], Any]] = {}
# What to_wire does with each type seen: a function, or None (no form).
_by_type: dict[type, Callable[[Any], Any] | None] = {}
# Bounds the cache when types are made on the fly.
_MAX_CACHED_TYPES = 4096


def register_encoder(cls: type, encoder: Callable[[Any], Any]) -> None:
    """Sends instances of ``cls`` (and its subclasses) to Elixir as ``encoder(value)``.

    ``encoder`` returns any value that crosses: a dict (a map), a tuple, a
    number, :func:`struct` for an Elixir struct... It runs in the worker each
    time such a value is sent. Registering ``None`` removes the encoder.
    """
    if not isinstance(cls, type):
        raise TypeError(f"register_encoder() needs a type, got {cls!r}")
    if encoder is None:
        _encoders.pop(cls, None)
    elif not callable(encoder):
        raise TypeError(f"the encoder for {cls.__qualname__} must be callable, got {encoder!r}")
    else:
        _encoders[cls] = encoder
    _by_type.clear()


def struct(name: str, fields: dict[str, Any]) -> Tagged:
    """A value that arrives in Elixir as the struct ``%name{fields}``.

    ``name`` is the Elixir module without ``Elixir.`` (``"MyApp.Point"``), and
    ``fields`` maps field names to values. If the module or one of the field
    names is unknown to the BEAM (no atom exists for it), the value arrives
    as a map with string keys and ``"__struct__" => name`` instead.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"struct() needs a module name, got {name!r}")
    fields = dict(fields)
    for key in fields:
        if not isinstance(key, str):
            raise TypeError(f"struct() field names must be strings, got {key!r}")
    return Tagged(EXT_STRUCT, [name, fields])


def to_wire(obj: Any) -> Any:
    """What ``obj`` is sent as: see the module's doc."""
    cls = type(obj)
    convert = _by_type.get(cls, _MISSING)
    if convert is _MISSING:
        convert = _resolve(cls, obj)
        if len(_by_type) >= _MAX_CACHED_TYPES:
            _by_type.clear()
        _by_type[cls] = convert
    return obj if convert is None else convert(obj)


def _resolve(cls: type, obj: Any) -> Callable[[Any], Any] | None:
    for base in cls.__mro__:
        if base in _encoders:
            return _encoders[base]
    found = _numpy_kind(cls) or _pandas_kind(cls)
    if found is not None:
        return found
    for base, convert in _STDLIB:
        if issubclass(cls, base):
            return convert
    if hasattr(obj, "__array_interface__") and "numpy" in sys.modules:
        return _array_like
    if _has_buffer(obj):
        return _buffer
    return None


def _numpy_kind(cls: type) -> Callable[[Any], Any] | None:
    np = sys.modules.get("numpy")
    if np is None:
        return None
    if issubclass(cls, np.ndarray):
        masked = getattr(getattr(np, "ma", None), "MaskedArray", None)
        if masked is not None and issubclass(cls, masked):
            return None
        return _ndarray
    if not issubclass(cls, np.generic):
        return None
    # timedelta64 is an integer subclass: dates first.
    if issubclass(cls, np.datetime64):
        return _datetime64
    if issubclass(cls, np.timedelta64):
        return _timedelta64
    if issubclass(cls, np.bool_):
        return bool
    if issubclass(cls, np.integer):
        return int
    if issubclass(cls, np.floating):
        return float
    return None


# .item() gives a datetime (a timedelta) down to microseconds, an int of
# nanoseconds below that; NaT gives None.
def _datetime64(value: Any) -> Any:
    return value.astype("datetime64[us]").item()


def _timedelta64(value: Any) -> Any:
    return value.astype("timedelta64[us]").item()


def _pandas_kind(cls: type) -> Callable[[Any], Any] | None:
    pd = sys.modules.get("pandas")
    if pd is None:
        return None
    if cls is type(pd.NaT) or cls is type(pd.NA):
        return _none
    return None


def _none(_value: Any) -> None:
    return None


def _datetime(value: datetime.datetime) -> Tagged:
    wall = [value.year, value.month, value.day, value.hour, value.minute, value.second, value.microsecond]
    offset = value.utcoffset()
    if offset is None:
        return Tagged(EXT_NAIVE_DATETIME, wall)
    dst = value.dst() or datetime.timedelta(0)
    total, daylight = _seconds(offset), _seconds(dst)
    return Tagged(EXT_DATETIME, wall + [total - daylight, daylight, _zone_name(value.tzinfo, total), value.tzname() or ""])


def _seconds(delta: datetime.timedelta) -> int:
    return delta.days * 86400 + delta.seconds


def _zone_name(tzinfo: Any, total: int) -> str:
    """The IANA name of a zone (zoneinfo's ``key``, pytz's ``zone``); Etc/UTC
    for UTC; else, for a fixed offset, its name (``UTC+02:00``)."""
    for attribute in ("key", "zone"):
        name = getattr(tzinfo, attribute, None)
        if isinstance(name, str):
            return name
    if total == 0:
        return "Etc/UTC"
    return datetime.timezone(datetime.timedelta(seconds=total)).tzname(None)


def _date(value: datetime.date) -> Tagged:
    return Tagged(EXT_DATE, [value.year, value.month, value.day])


def _time(value: datetime.time) -> Any:
    if value.tzinfo is not None:
        # Elixir's Time has no offset; an aware time stays an object.
        return value
    return Tagged(EXT_TIME, [value.hour, value.minute, value.second, value.microsecond])


def _timedelta(value: datetime.timedelta) -> Tagged:
    return Tagged(EXT_TIMEDELTA, [(value.days * 86400 + value.seconds) * 1_000_000 + value.microseconds])


_SPECIAL_DECIMALS = {"n": "NaN", "N": "sNaN", "F": "inf"}


def _decimal(value: decimal.Decimal) -> Tagged:
    sign, digits, exponent = value.as_tuple()
    if isinstance(exponent, str):
        return Tagged(EXT_DECIMAL, [sign, _SPECIAL_DECIMALS[exponent], 0])
    coefficient = int("".join(map(str, digits))) if digits else 0
    return Tagged(EXT_DECIMAL, [sign, coefficient, exponent])


_STDLIB: list[tuple[type, Callable[[Any], Any]]] = [
    (datetime.datetime, _datetime),
    (datetime.date, _date),
    (datetime.time, _time),
    (datetime.timedelta, _timedelta),
    (decimal.Decimal, _decimal),
    (uuid.UUID, str),
    (os.PathLike, os.fspath),
]

# Tensors ------------------------------------------------------------------

# struct/array/memoryview format characters, by signedness and size.
_FORMAT_KINDS = {
    "b": "s", "h": "s", "i": "s", "l": "s", "q": "s", "n": "s",
    "B": "u", "H": "u", "I": "u", "L": "u", "Q": "u", "N": "u",
    "e": "f", "f": "f", "d": "f", "?": "u",
}


def _format_dtype(format: str, itemsize: int) -> str | None:
    if format[:1] in (">", "!"):
        return None
    kind = _FORMAT_KINDS.get(format.lstrip("@=<"))
    return None if kind is None else f"{kind}{itemsize * 8}"


def _ndarray(array: Any) -> Any:
    dtype = _numpy_dtype(array.dtype)
    if dtype is None:
        return array
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    if not array.flags.c_contiguous:
        array = array.copy(order="C")
    return Tagged(EXT_TENSOR, [dtype, list(array.shape), array])


def _numpy_dtype(dtype: Any) -> str | None:
    if dtype.names is not None or dtype.subdtype is not None:
        return None
    if dtype.kind == "b":
        return "u8"
    if dtype.kind in "iu" and dtype.itemsize in (1, 2, 4, 8):
        return f"{'s' if dtype.kind == 'i' else 'u'}{dtype.itemsize * 8}"
    if dtype.kind == "f" and dtype.itemsize in (2, 4, 8):
        return f"f{dtype.itemsize * 8}"
    if dtype.kind == "c" and dtype.itemsize in (8, 16):
        return f"c{dtype.itemsize * 8}"
    if dtype.name == "bfloat16":
        return "bf16"
    return None


def _array_like(value: Any) -> Any:
    converted = _ndarray(sys.modules["numpy"].asarray(value))
    return converted if isinstance(converted, Tagged) else value


def _has_buffer(obj: Any) -> bool:
    try:
        memoryview(obj).release()
    except TypeError:
        return False
    return True


def _buffer(value: Any) -> Any:
    """array.array, a memoryview of typed items, any buffer: a tensor of its
    items; a buffer of plain bytes: the bytes."""
    with memoryview(value) as view:
        if view.format == "B" and view.ndim <= 1:
            return view.tobytes()
        dtype = _format_dtype(view.format, view.itemsize)
        if dtype is None:
            return value
        data = view.cast("B") if view.c_contiguous and view.ndim > 0 else view.tobytes()
        return Tagged(EXT_TENSOR, [dtype, list(view.shape), data])


_NUMPY_DTYPES = {
    "u8": "<u1", "u16": "<u2", "u32": "<u4", "u64": "<u8",
    "s8": "<i1", "s16": "<i2", "s32": "<i4", "s64": "<i8",
    "f16": "<f2", "f32": "<f4", "f64": "<f8", "c64": "<c8", "c128": "<c16",
}

_VIEW_FORMATS = {
    "u8": "B", "u16": "H", "u32": "I", "u64": "Q",
    "s8": "b", "s16": "h", "s32": "i", "s64": "q",
    "f16": "e", "f32": "f", "f64": "d", "c64": "f", "c128": "d",
}

_numpy_module: Any = _MISSING


def _numpy() -> Any:
    global _numpy_module
    if _numpy_module is _MISSING:
        try:
            import numpy
        except ImportError:
            numpy = None
        _numpy_module = numpy
    return _numpy_module


def tensor(dtype: str, shape: list[int], data: bytearray) -> Any:
    """A tensor from the host: a numpy array when numpy can be imported,
    else a memoryview of that format and shape.

    ``bf16`` needs ``ml_dtypes`` for a bfloat16 array; without it the values
    arrive widened (exactly) to float32. A complex tensor in a memoryview
    has a last dimension of 2 (real, imaginary), as the struct module has no
    complex formats.
    """
    np = _numpy()
    if dtype == "bf16":
        bfloat16 = _bfloat16()
        if np is not None and bfloat16 is not None:
            return np.frombuffer(data, bfloat16).reshape(shape)
        dtype, data = "f32", _widen_bf16(data)
    if np is not None:
        return np.frombuffer(data, np.dtype(_NUMPY_DTYPES[dtype])).reshape(shape)
    if dtype.startswith("c"):
        shape = [*shape, 2]
    return memoryview(data).cast(_VIEW_FORMATS[dtype], shape)


def _bfloat16() -> Any:
    try:
        import ml_dtypes
    except ImportError:
        return None
    return ml_dtypes.bfloat16


def _widen_bf16(data: bytearray) -> bytearray:
    # A bfloat16 is the high half of the float32 with the same value.
    wide = bytearray(len(data) * 2)
    wide[2::4] = data[0::2]
    wide[3::4] = data[1::2]
    return wide


# From the host ----------------------------------------------------------


def from_wire(ext: int, items: list[Any]) -> Any:
    """The Python value of one of the data extensions the host sends."""
    build = _FROM_WIRE.get(ext)
    if build is None:
        raise ValueError(f"the host sent extension type {ext}, which has no Python form")
    return build(*items)


def _time_from(hour: int, minute: int, second: int, microsecond: int) -> datetime.time:
    return datetime.time(hour, minute, second, microsecond)


def _aware_from(*fields: Any) -> datetime.datetime:
    *wall, utc_offset, std_offset, zone, abbreviation = fields
    total = utc_offset + std_offset
    if zone == "Etc/UTC" and total == 0:
        return datetime.datetime(*wall, tzinfo=datetime.timezone.utc)
    named = _zoneinfo(zone)
    if named is not None:
        for fold in (0, 1):
            value = datetime.datetime(*wall, tzinfo=named, fold=fold)
            if value.utcoffset() == datetime.timedelta(seconds=total):
                return value
    fixed = datetime.timezone(datetime.timedelta(seconds=total), abbreviation or None)
    return datetime.datetime(*wall, tzinfo=fixed)


def _zoneinfo(name: str) -> Any:
    try:
        import zoneinfo

        return zoneinfo.ZoneInfo(name)
    except (ImportError, ValueError, OSError):
        return None
    except Exception as error:  # zoneinfo.ZoneInfoNotFoundError is a KeyError
        if type(error).__name__ == "ZoneInfoNotFoundError":
            return None
        raise


def _decimal_from(sign: int, coefficient: Any, exponent: int) -> decimal.Decimal:
    if isinstance(coefficient, str):
        special = {"NaN": "NaN", "sNaN": "sNaN", "inf": "Infinity"}[coefficient]
        return decimal.Decimal(("-" if sign else "") + special)
    digits = tuple(int(d) for d in str(coefficient))
    return decimal.Decimal((sign, digits, exponent))


def _arrow_from(data: bytes, to: str = "table") -> Any:
    pa = require_pyarrow("receive an Arrow table")
    table = pa.ipc.open_stream(pa.py_buffer(data)).read_all()
    return table.to_pandas() if to == "pandas" else table


def _construct_from(module: str, function: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    return resolve(module, function)(*args, **kwargs)


_FROM_WIRE: dict[int, Callable[..., Any]] = {
    EXT_DATE: datetime.date,
    EXT_TIME: _time_from,
    EXT_NAIVE_DATETIME: datetime.datetime,
    EXT_DATETIME: _aware_from,
    EXT_TIMEDELTA: lambda microseconds: datetime.timedelta(microseconds=microseconds),
    EXT_DECIMAL: _decimal_from,
    EXT_ARROW: _arrow_from,
    EXT_CONSTRUCT: _construct_from,
}

# Arrow ------------------------------------------------------------------


def require_pyarrow(purpose: str) -> Any:
    """pyarrow, or an ImportError that says it is needed in the worker's Python."""
    try:
        return importlib.import_module("pyarrow")
    except ImportError as error:
        raise ImportError(
            f"pyarrow is needed to {purpose}, but the worker's Python ({sys.executable}) "
            f"cannot import it: install pyarrow there (pip install pyarrow)"
        ) from error


def to_arrow(value: Any) -> Tagged:
    """A pandas DataFrame, a pyarrow Table or RecordBatch as Arrow IPC stream bytes (``as: :arrow``)."""
    pa = require_pyarrow("return a result as: :arrow")
    if isinstance(value, pa.RecordBatch):
        value = pa.Table.from_batches([value])
    elif not isinstance(value, pa.Table):
        pd = sys.modules.get("pandas")
        if pd is None or not isinstance(value, pd.DataFrame):
            raise TypeError(
                f"as: :arrow needs a pandas DataFrame or a pyarrow Table, got {type(value).__module__}.{type(value).__qualname__}"
            )
        value = pa.Table.from_pandas(value)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, value.schema) as writer:
        writer.write_table(value)
    return Tagged(EXT_ARROW, [memoryview(sink.getvalue()).cast("B")])

