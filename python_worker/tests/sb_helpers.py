"""Functions the tests call inside a real worker (this directory is on its PYTHONPATH)."""

from __future__ import annotations

import asyncio
import collections
import ctypes
import datetime
import enum
import logging
import os
import sys
import threading
import time
from typing import Any, AsyncIterator, Callable, Iterator

from snakebridge_worker import CallCancelled


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


def write(text: str) -> None:
    sys.stdout.write(text)


def log_levels() -> None:
    logger = logging.getLogger("sb_helpers.levels")
    logger.setLevel(logging.DEBUG)
    logger.debug("debug record")
    logger.info("info record")
    logger.log(25, "between info and warning")
    logger.warning("warning record")
    logger.error("error record")
    logger.critical("critical record")
    try:
        raise ValueError("logged exception")
    except ValueError:
        logger.exception("it failed")


def write_fd(text: str) -> None:
    os.write(1, text.encode())


def print_in_thread(text: str) -> None:
    thread = threading.Thread(target=print, args=(text,))
    thread.start()
    thread.join()


async def print_in_task(text: str) -> str:
    await asyncio.sleep(0.01)
    print(text)
    return text


class Day:
    """A value with no by-value form, to come back as a handle (dates cross as data)."""

    def __init__(self, year: int, month: int, day: int) -> None:
        self.date = datetime.date(year, month, day)

    def __repr__(self) -> str:
        return f"Day({self.date.year}, {self.date.month}, {self.date.day})"

    def isoformat(self) -> str:
        return self.date.isoformat()


def today() -> Day:
    return Day(2024, 1, 2)


def nested_date() -> list[Any]:
    return [1, 2, {"key": Day(2024, 1, 2)}]


def nested_surrogate() -> list[Any]:
    return [1, 2, {"key": "\udc80"}]


def bad_key() -> dict[Any, int]:
    return {"ok": 1, "\udc80": 2}


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


# ---- cancellation -----------------------------------------------------------


def record(path: str, tag: str) -> str:
    """Appends ``tag`` to the file at ``path``: proof that a call ran."""
    with open(path, "a") as f:
        f.write(tag + "\n")
    return tag


def sleep_marked(path: str, tag: str, seconds: float) -> str:
    """Records ``tag``, then sleeps: the test knows when the call is running."""
    record(path, tag)
    time.sleep(seconds)
    return tag


def stubborn_sleep(path: str, seconds: float) -> str:
    """Sleeps, swallowing every Exception: a cancel must get through anyway."""
    record(path, "stubborn")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            time.sleep(deadline - time.monotonic())
        except Exception:  # noqa: BLE001 - the point of the helper
            pass
    return "slept"


def catch_cancel(path: str, seconds: float) -> str:
    """Catches CallCancelled on purpose and returns normally."""
    record(path, "catching")
    try:
        time.sleep(seconds)
    except CallCancelled:
        return "caught"
    return "not cancelled"


def spin(n: int) -> int:
    """Short pure-Python work: a pending signal handler would run between its bytecodes."""
    total = 0
    for i in range(n):
        total += i
    return total


def libc_sleep(path: str, seconds: int) -> int:
    """sleep(3) through ctypes: a signal ends it early (it returns the seconds left)."""
    record(path, "libc_sleep")
    return ctypes.CDLL(None).sleep(seconds)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def blocked_in_c(path: str, seconds: float) -> int:
    """Waits ``seconds`` in C code that ignores signals.

    pthread_mutex_timedlock on a mutex this thread already holds: POSIX says
    it never fails with EINTR, and glibc simply resumes its futex wait after
    a signal handler ran. Returns ETIMEDOUT.
    """
    libc = ctypes.CDLL(None)
    mutex = ctypes.create_string_buffer(64)  # zeroed: PTHREAD_MUTEX_INITIALIZER on glibc
    if libc.pthread_mutex_lock(mutex) != 0:
        raise OSError("pthread_mutex_lock failed")
    end = time.time() + seconds  # CLOCK_REALTIME, as timedlock expects
    abstime = _Timespec(int(end), int((end % 1) * 1e9))
    record(path, "blocked")
    return libc.pthread_mutex_timedlock(mutex, ctypes.byref(abstime))


# ---- objects and handles ----------------------------------------------------


class Counter:
    """A stateful object the host holds by handle."""

    def __init__(self, start: int = 0) -> None:
        self.value = start
        self.child: Counter | None = None

    def add(self, n: int = 1) -> int:
        self.value += n
        return self.value

    def __repr__(self) -> str:
        return f"Counter({self.value})"


class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class LongRepr:
    def __repr__(self) -> str:
        return "é" * 500


def make_counter(start: int = 0) -> Counter:
    counter = Counter(start)
    counter.child = Counter(100)
    return counter


def make_adder(n: int) -> Callable[[int], int]:
    def adder(x: int) -> int:
        return x + n

    return adder


def all_same(*args: Any, **kwargs: Any) -> bool:
    """Whether every argument, keyword argument and value nested in them is the same object."""
    found: list[Any] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)
        else:
            found.append(value)

    walk(list(args))
    walk(kwargs)
    return len(found) > 1 and all(v is found[0] for v in found)


def value_of(counter: Counter) -> int:
    return counter.value


def bad_repr() -> BadRepr:
    return BadRepr()


def long_repr() -> LongRepr:
    return LongRepr()


def dates_then_blob(size: int) -> list[Any]:
    """Two handles, then more bytes than a frame may hold: the reply fails after registering them."""
    return [Day(2024, 1, 1), Day(2024, 1, 2), b"x" * size]


# ---- streams ----------------------------------------------------------------

PRODUCED: dict[str, int] = {}


def counted(name: str, n: int) -> Iterator[int]:
    """Yields 0..n-1, counting in PRODUCED[name] how many it has produced."""
    PRODUCED[name] = 0
    for i in range(n):
        PRODUCED[name] = i + 1
        yield i


def produced(name: str) -> int:
    return PRODUCED.get(name, 0)


def numbers(n: int) -> Iterator[int]:
    yield from range(n)


def failing_after(count: int) -> Iterator[int]:
    yield from range(count)
    raise CustomError("stream broke")


def guarded(path: str, n: int) -> Iterator[int]:
    """Yields 0..n-1; records "closed" in its finally."""
    try:
        yield from range(n)
    finally:
        record(path, "closed")


def blocking_stream(path: str, seconds: float) -> Iterator[int]:
    """Yields one item, then blocks in next() for ``seconds``; records "finally"."""
    try:
        yield 1
        record(path, "blocking")
        time.sleep(seconds)
        yield 2
    finally:
        record(path, "finally")


def unsendable_third(path: str) -> Iterator[Any]:
    try:
        yield 1
        yield 2
        yield "\udc80"
        yield 4
    finally:
        record(path, "closed")


def dates(n: int) -> Iterator[Day]:
    for day in range(1, n + 1):
        yield Day(2024, 1, day)


# ---- async ------------------------------------------------------------------


async def sleep_return(value: Any, seconds: float) -> Any:
    await asyncio.sleep(seconds)
    return value


async def async_fail(message: str) -> None:
    await asyncio.sleep(0)
    raise CustomError(message)


async def async_sleep_marked(path: str, seconds: float) -> str:
    record(path, "started")
    try:
        await asyncio.sleep(seconds)
    finally:
        record(path, "async finally")
    return "slept"


async def async_date() -> Day:
    await asyncio.sleep(0)
    return Day(2024, 1, 2)


async def async_list(n: int) -> list[int]:
    await asyncio.sleep(0)
    return list(range(n))


async def async_unsendable() -> list[Any]:
    await asyncio.sleep(0)
    return [1, "\udc80", 3]


async def async_numbers(name: str, n: int, delay: float) -> AsyncIterator[int]:
    """Yields 0..n-1 with a sleep before each, counting in PRODUCED[name]."""
    PRODUCED[name] = 0
    for i in range(n):
        await asyncio.sleep(delay)
        PRODUCED[name] = i + 1
        yield i


async def async_guarded(path: str, delay: float) -> AsyncIterator[int]:
    """Yields 0, 1, ... each after ``delay``; records "closed" in its finally."""
    try:
        i = 0
        while True:
            await asyncio.sleep(delay)
            yield i
            i += 1
    finally:
        record(path, "closed")


async def async_failing_after(count: int) -> AsyncIterator[int]:
    for i in range(count):
        await asyncio.sleep(0)
        yield i
    raise CustomError("async stream broke")


async def spin_then_sleep(path: str, spin_seconds: float, sleep_seconds: float) -> str:
    """Runs Python code without awaiting (a cancel's signal handler runs in it), then sleeps."""
    record(path, "spinning")
    deadline = time.monotonic() + spin_seconds
    while time.monotonic() < deadline:
        pass
    await asyncio.sleep(sleep_seconds)
    return "slept"


class NeedMore(Exception):
    """An exception with attributes of its own."""

    def __init__(self, needed: int) -> None:
        super().__init__(f"need {needed} more")
        self.needed = needed
        self.where = object()


def need_more(n: int) -> None:
    raise NeedMore(n)


def flushed_then_sleep(seconds: float) -> str:
    print("flushed", flush=True)
    time.sleep(seconds)
    return "slept"
