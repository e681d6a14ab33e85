"""Functions the tests call inside a real worker (this directory is on its PYTHONPATH)."""

from __future__ import annotations

import collections
import ctypes
import datetime
import enum
import sys
import time
from typing import Any

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


def today() -> datetime.date:
    return datetime.date(2024, 1, 2)


def nested_date() -> list[Any]:
    return [1, 2, {"key": datetime.date(2024, 1, 2)}]


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
