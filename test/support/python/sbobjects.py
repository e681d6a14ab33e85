"""Python helpers for the ExUnit suites of objects, streams and async calls."""

from __future__ import annotations

import asyncio
import gc
import os
import time
from typing import Any, AsyncIterator, Iterator


class Counter:
    """A stateful object: the kind of thing that lives in a worker."""

    def __init__(self, start: int = 0) -> None:
        self.value = start

    def add(self, n: int = 1) -> int:
        self.value += n
        return self.value

    def __call__(self, n: int) -> int:
        return self.value * n

    def __repr__(self) -> str:
        return f"Counter({self.value})"


def counter_value(counter: Counter) -> int:
    return counter.value


def sum_values(nested: Any) -> int:
    """Sums the values of every Counter anywhere in lists, tuples and dicts."""
    if isinstance(nested, Counter):
        return nested.value
    if isinstance(nested, (list, tuple)):
        return sum(sum_values(x) for x in nested)
    if isinstance(nested, dict):
        return sum(sum_values(v) for v in nested.values())
    return 0


def same_object(a: Any, b: Any) -> bool:
    return a is b


def live_counters() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is Counter)


def pid() -> int:
    return os.getpid()


_produced = 0


def numbers(n: int) -> Iterator[int]:
    global _produced
    _produced = 0
    for i in range(n):
        _produced += 1
        yield i


def produced() -> int:
    return _produced


def blobs(count: int, size: int) -> Iterator[bytes]:
    for _ in range(count):
        yield bytes(size)


def guarded(path: str) -> Iterator[int]:
    """Counts forever; writes `path` when closed, so a test can see that
    its finally ran."""
    try:
        i = 0
        while True:
            yield i
            i += 1
    finally:
        with open(path, "w") as f:
            f.write("closed")


def slow_guarded(path: str) -> Iterator[int]:
    try:
        yield 0
        time.sleep(60)
        yield 1
    finally:
        with open(path, "w") as f:
            f.write("closed")


def fail_after(n: int) -> Iterator[int]:
    yield from range(n)
    raise ValueError(f"failed after {n}")


def counters(n: int) -> Iterator[Counter]:
    for i in range(n):
        yield Counter(i)


async def async_sleep(seconds: float, value: Any = None) -> Any:
    await asyncio.sleep(seconds)
    return value


async def async_fail(message: str) -> None:
    await asyncio.sleep(0)
    raise RuntimeError(message)


async def async_guarded(path: str) -> None:
    try:
        await asyncio.sleep(60)
    finally:
        with open(path, "w") as f:
            f.write("cancelled")


async def async_numbers(n: int, delay: float) -> AsyncIterator[int]:
    for i in range(n):
        await asyncio.sleep(delay)
        yield i
