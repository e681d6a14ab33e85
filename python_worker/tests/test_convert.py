"""The data kinds through the worker's codec (dumps/loads), with real numpy, pandas and pyarrow."""

from __future__ import annotations

import array
import datetime
import decimal
import pathlib
import uuid
import zoneinfo

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from snakebridge_worker import register_encoder, struct
from snakebridge_worker._native import EncodeError, Tagged, dumps, loads
from snakebridge_worker.convert import EXT_STRUCT, to_arrow


def round_trip(value):
    return loads(dumps(value))


def test_numpy_scalars_become_python_numbers():
    values = [np.int64(-3), np.uint64(2**64 - 1), np.bool_(True), np.float32(0.5), {"k": np.int8(1)}]
    assert round_trip(values) == [-3, 2**64 - 1, True, 0.5, {"k": 1}]
    assert type(round_trip(np.bool_(False))) is bool


@pytest.mark.parametrize(
    "dtype", ["u1", "u2", "u4", "u8", "i1", "i2", "i4", "i8", "f2", "f4", "f8", "c8", "c16"]
)
@pytest.mark.parametrize("shape", [(2, 3), (), (0,), (4, 0, 2)])
def test_arrays_round_trip_for_every_dtype_and_shape(dtype, shape):
    array_ = (np.arange(int(np.prod(shape))) % 50).astype(dtype).reshape(shape)
    back = round_trip(array_)
    assert back.dtype == np.dtype("<" + dtype) or back.dtype == np.dtype(dtype)
    assert back.shape == shape
    assert np.array_equal(back, array_)
    assert back.flags.writeable


def test_non_contiguous_and_big_endian_arrays_are_sent_in_c_order_little_endian():
    assert round_trip(np.arange(6)[::2]).tolist() == [0, 2, 4]
    assert round_trip(np.array([[1, 2], [3, 4]], ">i4").T).tolist() == [[1, 3], [2, 4]]


def test_buffers_are_tensors_and_byte_views_binaries():
    assert round_trip(array.array("h", [1, -2])).tolist() == [1, -2]
    assert round_trip(memoryview(b"abc")) == b"abc"


def test_non_numeric_arrays_have_no_by_value_form():
    with pytest.raises(EncodeError, match="numpy.ndarray"):
        dumps(np.array(["a"]))


def test_tensor_whose_buffer_does_not_match_its_shape_is_refused():
    with pytest.raises(EncodeError, match="cannot hold 8 bytes"):
        dumps(Tagged(16, ["f64", [2], np.zeros(1)]))


def test_dates_times_and_durations():
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    values = [
        datetime.date(2024, 2, 29),
        datetime.time(23, 59, 59, 999999),
        datetime.datetime(2024, 1, 2, 3, 4, 5, 6),
        datetime.datetime(2024, 7, 1, 12, tzinfo=paris),
        datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc),
        datetime.datetime(2024, 1, 1, 9, tzinfo=datetime.timezone(datetime.timedelta(hours=-3))),
        datetime.timedelta(days=-1, microseconds=5),
    ]
    back = round_trip(values)
    assert back == values
    assert back[3].tzinfo.key == "Europe/Paris"
    assert back[4].tzinfo is datetime.timezone.utc


def test_pandas_timestamps_follow_datetime_and_nat_is_none():
    assert round_trip([pd.Timestamp("2024-01-01 12:00:00.123456789"), pd.NaT, pd.NA]) == [
        datetime.datetime(2024, 1, 1, 12, 0, 0, 123456),
        None,
        None,
    ]


def test_decimals_uuid_and_paths():
    decimals = [decimal.Decimal("-1.2300"), decimal.Decimal("NaN"), decimal.Decimal("-Infinity"), decimal.Decimal("1e40")]
    back = round_trip(decimals)
    assert [str(d) for d in back] == [str(d) for d in decimals]
    assert round_trip([uuid.UUID(int=1), pathlib.PurePosixPath("/a/b")]) == ["00000000-0000-0000-0000-000000000001", "/a/b"]


def test_arrow_tables_as_ipc_bytes():
    table = round_trip(to_arrow(pd.DataFrame({"a": [1, 2]})))
    assert isinstance(table, pa.Table)
    assert table.to_pydict() == {"a": [1, 2]}
    with pytest.raises(TypeError, match="as: :arrow needs"):
        to_arrow([1])


class _Point:
    def __init__(self, x, y):
        self.x, self.y = x, y


def test_registered_encoders_and_structs():
    register_encoder(_Point, lambda p: struct("MyApp.Point", {"x": p.x, "y": p.y}))
    try:
        tagged = loads(dumps(_Point(1, 2)))
    except Exception as error:  # the Python side has no struct builder: loads refuses ext 24
        tagged = error
    assert isinstance(tagged, ValueError) and "24" in str(tagged)
    assert dumps(_Point(1, 2)) == dumps(Tagged(EXT_STRUCT, ["MyApp.Point", {"x": 1, "y": 2}]))
    register_encoder(_Point, None)
    with pytest.raises(EncodeError):
        dumps(_Point(1, 2))
    with pytest.raises(TypeError):
        register_encoder("not a type", str)
