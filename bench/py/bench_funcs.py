"""Functions the benchmark calls on both systems (SnakeBridge and the baseline)."""
from __future__ import annotations

from typing import Iterator, TypeVar

T = TypeVar("T")


def identity(x: T) -> T:
    """Return the argument unchanged: the round trip measures pure transport cost."""
    return x


def add(a: int, b: int) -> int:
    return a + b


_blobs: dict[int, bytes] = {}


def blob(size: int) -> bytes:
    """`size` bytes, not valid UTF-8; the same object each time, so the cost is transport."""
    data = _blobs.get(size)
    if data is None:
        data = _blobs[size] = b"\xff" * size
    return data


def items(count: int) -> Iterator[int]:
    """The stream counterpart of `identity(i)` for i in range(count)."""
    yield from range(count)


def blobs(count: int, size: int) -> Iterator[bytes]:
    """The stream counterpart of `blob(size)`, `count` times."""
    data = blob(size)
    for _ in range(count):
        yield data
