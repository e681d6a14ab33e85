"""Python helpers for the SnakeBridge ExUnit suite (put on the pools' python_path)."""

from __future__ import annotations

import datetime
import math
import os
import sys
import time
from typing import Any


def identity(x: Any) -> Any:
    return x


def echo(*args: Any, **kwargs: Any) -> list[Any]:
    return [list(args), kwargs]


def type_name(x: Any) -> str:
    return type(x).__qualname__


def type_tree(x: Any) -> Any:
    """The Python types of a value and of everything inside it."""
    if isinstance(x, (list, tuple)):
        return [type(x).__qualname__, [type_tree(e) for e in x]]
    if isinstance(x, dict):
        return [type(x).__qualname__, [[type_tree(k), type_tree(v)] for k, v in x.items()]]
    if isinstance(x, (set, frozenset)):
        return [type(x).__qualname__, sorted(type_tree(e) for e in x)]
    return type(x).__qualname__


def is_nan(x: float) -> bool:
    return isinstance(x, float) and math.isnan(x)


def pid() -> int:
    return os.getpid()


def sleep(seconds: float, value: Any = None) -> Any:
    time.sleep(seconds)
    return value


_recorded: list[Any] = []


def record(value: Any) -> Any:
    _recorded.append(value)
    return value


def recorded() -> list[Any]:
    return list(_recorded)


def sleep_and_record(seconds: float, value: Any) -> Any:
    time.sleep(seconds)
    _recorded.append(value)
    return value


class CustomError(Exception):
    pass


class Outer:
    class Error(Exception):
        pass

    class Inner:
        @staticmethod
        def double(x: int) -> int:
            return 2 * x

    @staticmethod
    def fail() -> None:
        raise Outer.Error("nested failure")


def raise_value_error(message: str) -> None:
    raise ValueError(message)


def raise_custom(message: str) -> None:
    raise CustomError(message)


def print_and_return(tag: str, value: Any) -> Any:
    print(f"stdout says {tag}")
    print(f"stderr says {tag}", file=sys.stderr)
    return value


def make_bytearray() -> bytearray:
    return bytearray(b"\x00\x01ab\xff")


def make_memoryview() -> memoryview:
    return memoryview(b"view\xfe")


def make_set() -> set[int]:
    return {1, 2, 3}


def make_frozenset() -> frozenset[str]:
    return frozenset({"a", "b"})


def make_dict() -> dict[Any, Any]:
    return {"name": "snake", "nested": {"key": [1, 2]}, 1: "one", (1, 2): "pair", None: True}


def make_floats() -> list[float]:
    return [float("nan"), float("inf"), float("-inf"), -0.0, 1.5]


def make_big_ints() -> list[int]:
    return [2**64, 2**64 - 1, -(2**63), -(2**63) - 1, 10**40, -(10**40)]


def make_tuple() -> tuple[Any, ...]:
    return (1, "two", (3.0, None))


def make_date() -> datetime.date:
    return datetime.date(2020, 1, 2)


def make_nested_object() -> list[Any]:
    return [1, 2, object()]


def make_deep(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def make_big_bytes(n: int) -> bytes:
    return bytes(n)


def subclass_values() -> list[Any]:
    class MyInt(int):
        pass

    class MyStr(str):
        pass

    class MyDict(dict):
        pass

    return [MyInt(7), MyStr("s"), MyDict(a=1), True]


def log_at_levels(tag: str) -> None:
    import logging

    logger = logging.getLogger("sbhelpers.levels")
    logger.setLevel(logging.DEBUG)
    logger.debug("debug %s", tag)
    logger.info("info %s", tag)
    logger.warning("warning %s", tag)
    logger.error("error %s", tag)
    logger.critical("critical %s", tag)


def write(text: str) -> None:
    sys.stdout.write(text)


def flood(lines: int) -> int:
    for i in range(lines):
        print(i)
    return lines
