"""dumps/loads in-process, and byte-for-byte agreement with the msgpack package."""

from __future__ import annotations

import math
import struct
from typing import Any

import msgpack
import pytest

from conftest import assert_same
from snakebridge_worker import _native

PLAIN_VALUES: list[Any] = [
    None, True, False,
    0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1,
    -1, -32, -33, -128, -129, -32768, -32769, -(2**31), -(2**31) - 1, -(2**63),
    0.0, -0.0, 1.5, -2.25e300, float("inf"), float("-inf"), float("nan"),
    "", "é", "日本語", "a" * 31, "a" * 32, "a" * 255, "a" * 256, "a" * 65535, "a" * 65536,
    b"", b"\x00", b"x" * 255, b"x" * 256, b"x" * 65535, b"x" * 65536,
    [], [1] * 15, [1] * 16, [1] * 65535, [1] * 65536, [None, [True, ["deep"]]],
    {}, {str(i): i for i in range(15)}, {str(i): i for i in range(16)}, {str(i): i for i in range(65536)},
    {"a": {"b": [1, 2, {"c": b"d"}]}}, {1: "int key", None: 2},
]


@pytest.mark.parametrize("value", PLAIN_VALUES, ids=lambda v: repr(v)[:30])
def test_plain_values_encode_exactly_like_msgpack(value: Any) -> None:
    assert _native.dumps(value) == msgpack.packb(value)


@pytest.mark.parametrize("value", PLAIN_VALUES, ids=lambda v: repr(v)[:30])
def test_msgpack_output_decodes(value: Any) -> None:
    assert_same(value, _native.loads(msgpack.packb(value)))


def test_single_float_decodes() -> None:
    assert _native.loads(msgpack.packb(1.5, use_single_float=True)) == 1.5


def test_tuples_are_ext_2() -> None:
    assert msgpack.unpackb(_native.dumps((1, "a"))) == msgpack.ExtType(2, msgpack.packb([1, "a"]))
    assert msgpack.unpackb(_native.dumps(())) == msgpack.ExtType(2, b"\x90")


def test_sets_are_ext_3() -> None:
    assert msgpack.unpackb(_native.dumps({7})) == msgpack.ExtType(3, msgpack.packb([7]))
    assert msgpack.unpackb(_native.dumps(frozenset())) == msgpack.ExtType(3, b"\x90")


@pytest.mark.parametrize("value", [2**64, 2**200 + 5, -(2**63) - 1, -(2**200)])
def test_big_ints_are_ext_1(value: int) -> None:
    magnitude = abs(value).to_bytes((abs(value).bit_length() + 7) // 8, "little")
    sign = b"\x01" if value < 0 else b"\x00"
    assert msgpack.unpackb(_native.dumps(value)) == msgpack.ExtType(1, sign + magnitude)
    assert _native.loads(_native.dumps(value)) == value


def test_nan_bits_survive() -> None:
    nan = struct.unpack(">d", b"\x7f\xf8\x00\x00\x00\x00\x00\x01")[0]
    decoded = _native.loads(_native.dumps(nan))
    assert math.isnan(decoded) and struct.pack(">d", decoded) == struct.pack(">d", nan)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ((1, (2, [3])), (1, (2, [3]))),
        ({frozenset({1}): {2}}, {frozenset({1}): {2}}),
        ({(1, frozenset({2})): None}, {(1, frozenset({2})): None}),
        (frozenset({frozenset({1})}), {frozenset({1})}),
        (bytearray(b"ab"), b"ab"),
        (memoryview(b"abcdef")[1::2], b"bdf"),
    ],
)
def test_round_trips(value: Any, expected: Any) -> None:
    assert_same(expected, _native.loads(_native.dumps(value)))


@pytest.mark.parametrize(
    ("value", "reason", "message"),
    [
        (object(), "unsupported_type", "cannot convert value of Python type builtins.object"),
        ([1, {"k": [0, 1j]}], "unsupported_type", "cannot convert value[1]['k'][1] of Python type builtins.complex"),
        ({1.5: {2}, ...: 1}, "unsupported_type", "cannot convert value key Ellipsis of Python type builtins.ellipsis"),
        ({1, None, (2, range(3))}, "unsupported_type", "cannot convert value element[1] of Python type builtins.range"),
    ],
)
def test_encode_errors_name_path_and_type(value: Any, reason: str, message: str) -> None:
    with pytest.raises(_native.EncodeError) as info:
        _native.dumps(value)
    assert info.value.reason == reason
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)


def test_encode_depth_limit() -> None:
    value: Any = None
    for _ in range(_native.MAX_DEPTH):
        value = [value]
    assert _native.loads(_native.dumps(value)) == value
    with pytest.raises(_native.EncodeError) as info:
        _native.dumps([value])
    assert info.value.reason == "nesting_too_deep"
    assert str(info.value).startswith("cannot convert value[0][0][0]")


def test_decode_errors() -> None:
    with pytest.raises(_native.DecodeError, match="truncated"):
        _native.loads(b"\x92\x01")
    with pytest.raises(_native.DecodeError, match="trailing"):
        _native.loads(b"\x01\x02")
    with pytest.raises(_native.DecodeError, match="unhashable"):
        _native.loads(b"\x81\x90\x01")  # {[]: 1}
    with pytest.raises(_native.DecodeError, match="unknown extension"):
        _native.loads(b"\xd4\x09\x00")
    with pytest.raises(_native.DecodeError, match="nesting"):
        _native.loads(b"\x91" * (_native.MAX_DEPTH + 1) + b"\xc0")
