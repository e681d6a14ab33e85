"""Every row of the type tables, through a real worker and back."""

from __future__ import annotations

import math
from typing import Any

import pytest

from conftest import Worker, assert_same
from snakebridge_worker import _native

INF = float("inf")

# (sent, what the worker must return); most values come back unchanged.
ROUND_TRIPS: list[tuple[str, Any, Any]] = [
    ("none", None, None),
    ("true", True, True),
    ("false", False, False),
    ("zero", 0, 0),
    ("small", 42, 42),
    ("negative", -17, -17),
    ("i64_max", 2**63 - 1, 2**63 - 1),
    ("i64_min", -(2**63), -(2**63)),
    ("u64", 2**63, 2**63),
    ("u64_max", 2**64 - 1, 2**64 - 1),
    ("bigint_2_64", 2**64, 2**64),
    ("bigint", 3**200, 3**200),
    ("negative_bigint", -(3**200), -(3**200)),
    ("negative_bigint_edge", -(2**63) - 1, -(2**63) - 1),
    ("float", 1.5, 1.5),
    ("negative_zero", -0.0, -0.0),
    ("float_tiny", 5e-324, 5e-324),
    ("nan", math.nan, math.nan),
    ("inf", INF, INF),
    ("neg_inf", -INF, -INF),
    ("str", "hello", "hello"),
    ("empty_str", "", ""),
    ("unicode", "héllo 日本 🐍", "héllo 日本 🐍"),
    ("long_str", "x" * 100_000, "x" * 100_000),
    ("bytes", b"\x00\xffbin", b"\x00\xffbin"),
    ("empty_bytes", b"", b""),
    ("bytes_not_str", b"text", b"text"),
    ("bytearray_becomes_bytes", bytearray(b"ba"), b"ba"),
    ("memoryview_becomes_bytes", memoryview(b"mv"), b"mv"),
    ("list", [1, "two", 3.0, None], [1, "two", 3.0, None]),
    ("empty_list", [], []),
    ("tuple", (1, "two", (3,)), (1, "two", (3,))),
    ("empty_tuple", (), ()),
    ("list_of_tuples", [(1, 2), ()], [(1, 2), ()]),
    ("dict", {"a": 1, "b": [2, 3]}, {"a": 1, "b": [2, 3]}),
    ("empty_dict", {}, {}),
    ("nested_dict", {"a": {"b": {"c": {"d": [1, {"e": None}]}}}}, {"a": {"b": {"c": {"d": [1, {"e": None}]}}}}),
    ("non_string_keys", {1: "int", 2.5: "float", None: "nil", b"b": "bytes", (1, 2): "tuple"},
     {1: "int", 2.5: "float", None: "nil", b"b": "bytes", (1, 2): "tuple"}),
    ("set", {1, 2, 3}, {1, 2, 3}),
    ("empty_set", set(), set()),
    ("frozenset_becomes_set", frozenset({"a"}), {"a"}),
    ("set_as_dict_key", {frozenset({1, 2}): "k"}, {frozenset({1, 2}): "k"}),
    ("set_in_set", {frozenset({1}), 2}, {frozenset({1}), 2}),
    ("set_in_tuple_key", {(1, frozenset({2})): "k"}, {(1, frozenset({2})): "k"}),
    ("set_in_list", [{1}, {"a": {2}}], [{1}, {"a": {2}}]),
    ("mixed", [None, True, -1, 2**70, 0.5, "s", b"b", [], (), {}, set()],
     [None, True, -1, 2**70, 0.5, "s", b"b", [], (), {}, set()]),
]


@pytest.mark.parametrize(("sent", "expected"), [pytest.param(s, e, id=name) for name, s, e in ROUND_TRIPS])
def test_identity_round_trip(shared_worker: Worker, sent: Any, expected: Any) -> None:
    assert_same(expected, shared_worker.ok("sb_helpers", "identity", [sent]))


@pytest.mark.parametrize(
    ("sent", "tree"),
    [
        pytest.param({frozenset({1}): 2}, ["dict", [[["frozenset", ["int"]], "int"]]], id="set_key_is_frozenset"),
        pytest.param([{1}], ["list", [["set", ["int"]]]], id="set_value_is_set"),
        pytest.param({(1, frozenset({2})): 3}, ["dict", [[["tuple", ["int", ["frozenset", ["int"]]]], "int"]]], id="tuple_key"),
        pytest.param({frozenset({1})}, ["set", [["frozenset", ["int"]]]], id="set_in_set"),
        pytest.param([b"b", "s", 2**80, 1.0], ["list", ["bytes", "str", "int", "float"]], id="scalars"),
    ],
)
def test_types_inside_the_worker(shared_worker: Worker, sent: Any, tree: Any) -> None:
    assert shared_worker.ok("sb_helpers", "type_tree", [sent]) == tree


def test_buffers_come_back_as_bytes(shared_worker: Worker) -> None:
    assert_same([b"array", b"view", b"ace"], shared_worker.ok("sb_helpers", "buffers"))


def test_subclasses_map_like_their_base(shared_worker: Worker) -> None:
    assert_same([1, "name", {"b": 1, "a": 2}, {"x": 3}, (1, 2), {1}], shared_worker.ok("sb_helpers", "subclasses"))


def test_kwargs_and_args(shared_worker: Worker) -> None:
    result = shared_worker.ok("sb_helpers", "echo", [1, "a"], {"key": (1,), "other": {2}})
    assert_same([[1, "a"], {"key": (1,), "other": {2}}], result)


def test_large_argument_and_result(shared_worker: Worker) -> None:
    data = bytes(range(256)) * 40_000  # ~10 MB, many reads on both sides
    assert shared_worker.ok("sb_helpers", "identity", [data]) == data


def test_deepest_allowed_nesting_round_trips(shared_worker: Worker) -> None:
    value: Any = None
    for _ in range(_native.MAX_DEPTH - 1):  # the args list is one more level
        value = [value]
    assert shared_worker.ok("sb_helpers", "identity", [value]) == value
