"""Functions the tests call inside a real worker (this directory is on its PYTHONPATH)."""

from __future__ import annotations

import collections
import datetime
import enum
import sys
from typing import Any


class CustomError(Exception):
    pass


class Color(enum.IntEnum):
    RED = 1


class Name(str):
    pass


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


def identity(value: Any) -> Any:
    return value


def echo(*args: Any, **kwargs: Any) -> list[Any]:
    return [list(args), kwargs]


def type_tree(value: Any) -> Any:
    """The value's shape with every element replaced by its type name."""
    name = type(value).__name__
    if isinstance(value, (list, tuple)):
        return [name, [type_tree(v) for v in value]]
    if isinstance(value, dict):
        return [name, [[type_tree(k), type_tree(v)] for k, v in value.items()]]
    if isinstance(value, (set, frozenset)):
        return [name, sorted((type_tree(v) for v in value), key=repr)]
    return name


def fail(message: str) -> None:
    raise CustomError(message)


def exit_now(code: int) -> None:
    sys.exit(code)


def interrupt() -> None:
    raise KeyboardInterrupt


def unprintable() -> None:
    raise Unprintable()


def chatty(count: int) -> str:
    for i in range(count):
        print(f"stdout line {i}")
    print("to stderr", file=sys.stderr)
    sys.stderr.write("written to stderr\n")
    return "done"


def today() -> datetime.date:
    return datetime.date(2024, 1, 2)


def nested_date() -> list[Any]:
    return [1, 2, {"key": datetime.date(2024, 1, 2)}]


def bad_key() -> dict[Any, int]:
    return {"ok": 1, datetime.date(2024, 1, 2): 2}


def nest(depth: int) -> Any:
    value: Any = None
    for _ in range(depth):
        value = [value]
    return value


def self_containing() -> list[Any]:
    value: list[Any] = []
    value.append(value)
    return value


def blob(size: int) -> bytes:
    return b"x" * size


def buffers() -> list[Any]:
    return [bytearray(b"array"), memoryview(b"view"), memoryview(b"abcdef")[::2]]


def subclasses() -> list[Any]:
    ordered = collections.OrderedDict([("b", 1), ("a", 2)])
    counts = collections.defaultdict(int, {"x": 3})
    point = collections.namedtuple("Point", "x y")(1, 2)
    return [Color.RED, Name("name"), ordered, counts, point, frozenset({1})]


def surrogate() -> str:
    return "\udc80"


NOT_CALLABLE = 42


def add_import_path(path: str) -> None:
    import importlib

    sys.path.append(path)
    importlib.invalidate_caches()
