"""Fault injection for the SnakeBridge reliability suite.

Every function here hurts the worker that runs it on purpose: it dies in one
of the ways a real Python process dies, hangs, grows, swallows the
cancellation, or breaks the wire protocol by writing to the worker's socket
(fd 3) behind the worker's back. The suite then checks what the callers see
and that the pool heals. Put on a test pool's ``python_path`` (it lives next
to ``sbhelpers``).
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from typing import Any

# The worker's protocol socket: the host hands it over as fd 3
# (``python -m snakebridge_worker --fd 3``).
PROTOCOL_FD = 3


## Dying


def exit_now(status: int) -> None:
    """Exits at once, skipping ``finally`` blocks and atexit handlers."""
    os._exit(status)


def segfault() -> None:
    """Dereferences NULL in C: the kernel kills the process with SIGSEGV."""
    # Core dumps would only slow the test down (and litter the disk).
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, ValueError, OSError):
        pass
    ctypes.string_at(0)


def kill_self(signum: int = signal.SIGKILL) -> None:
    """Sends ``signum`` to this very process (SIGKILL cannot be caught)."""
    os.kill(os.getpid(), signum)
    # SIGKILL is delivered before kill() returns to a single-threaded target,
    # but the worker has other threads: wait for it rather than return.
    time.sleep(60)


## Hanging


def sleep_forever() -> None:
    """An interruptible hang: ``time.sleep`` is woken by the cancel signal."""
    time.sleep(1000)


def stubborn_sleep() -> None:
    """A hang that swallows every interruption, like C code that never
    returns to the interpreter: only killing the process ends it."""
    while True:
        try:
            time.sleep(10)
        except BaseException:  # noqa: BLE001 - swallowing it is the point
            pass


## Growing

_ballast: list[bytes] = []


def hold_memory(megabytes: int) -> int:
    """Allocates ``megabytes`` MiB, touches every page and keeps it alive.

    Returns the number of bytes now held. (``b"\\x01" * n`` fills the buffer,
    so the pages are really resident, unlike a calloc'ed zero buffer.)
    """
    _ballast.append(b"\x01" * (megabytes * 1024 * 1024))
    return sum(len(b) for b in _ballast)


## Breaking the protocol


def write_raw(data: bytes, then_sleep: float = 0.5) -> None:
    """Writes ``data`` straight to the protocol socket, then sleeps so that
    the host reads those bytes before this call's real reply."""
    view = memoryview(data)
    while view:
        written = os.write(PROTOCOL_FD, view)
        view = view[written:]
    time.sleep(then_sleep)


# What a rogue worker may send, by name (see the suite for what each proves).
ROGUE_BYTES: dict[str, bytes] = {
    # A well-formed length header followed by a body that is not msgpack
    # (0xc1 is the one byte msgpack never uses).
    "garbage": b"\x00\x00\x00\x08" + b"\xc1" * 8,
    # Plain text where a frame should be: its first four bytes read as a
    # length of about 1.7 GB.
    "text": b"this is not a frame\n",
    # A header announcing 9 bytes, then 3: the worker's real reply is taken
    # as the rest of this frame and the stream is out of step from then on.
    "truncated": b"\x00\x00\x00\x09\x93\x02\x01",
    # The largest length a header can hold: 4 GiB, far over the frame limit.
    "oversize": b"\xff\xff\xff\xff",
}


def rogue_write(kind: str, then_sleep: float = 0.5) -> None:
    """Writes one of the ``ROGUE_BYTES`` to the protocol socket."""
    write_raw(ROGUE_BYTES[kind], then_sleep)


## Side effects a test can observe from outside


def append_line(path: str, line: str) -> str:
    """Appends ``line`` to the file at ``path`` (opened per call, so nothing
    is buffered in the worker) and returns it."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
    return line


def sleep_then_append(seconds: float, path: str, line: str) -> str:
    """Sleeps, then appends ``line``: evidence that the call ran to its end."""
    time.sleep(seconds)
    return append_line(path, line)


def pid() -> int:
    return os.getpid()


def tagged(value: Any, seconds: float = 0.0) -> list[Any]:
    """Returns ``[value, os.getpid()]`` after sleeping ``seconds``: the reply
    says both which request it answers and which worker answered it."""
    if seconds > 0:
        time.sleep(seconds)
    return [value, os.getpid()]


## Leaving things behind


def fork_sleeper(seconds: float = 60.0, new_session: bool = False) -> int:
    """Forks a child that sleeps, holding every fd the worker has (fork
    ignores close-on-exec), and returns its pid. With ``new_session`` the
    child leaves the worker's process group first, as daemons do."""
    pid = os.fork()
    if pid == 0:
        try:
            if new_session:
                os.setsid()
            time.sleep(seconds)
        finally:
            os._exit(0)
    return pid


def fd_targets() -> dict[int, str]:
    """What each of this process's file descriptors refers to."""
    targets = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            targets[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass
    return targets
