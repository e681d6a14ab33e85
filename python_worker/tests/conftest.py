"""Runs real workers (``python -m snakebridge_worker --fd N``) over real socketpairs.

The worker under test is the installed one: the directory named by
``SNAKEBRIDGE_WORKER_PATH``, else ``<repo>/_build/dev/lib/snakebridge/priv/python``,
where ``mix compile`` installs it (or by hand, see INSTALL_HINT).
"""

from __future__ import annotations

import math
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Iterator

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parents[1]
PRIV_PYTHON = Path(
    os.environ.get("SNAKEBRIDGE_WORKER_PATH") or REPO / "_build" / "dev" / "lib" / "snakebridge" / "priv" / "python"
)

INSTALL_HINT = f"""\
snakebridge_worker._native is not installed in {PRIV_PYTHON}.
Run `mix compile`, or install by hand from {REPO}:
    cargo build --release -p snakebridge_py
    mkdir -p {PRIV_PYTHON}/snakebridge_worker
    cp python_worker/snakebridge_worker/*.py {PRIV_PYTHON}/snakebridge_worker/
    cp target/release/libsnakebridge_py.so {PRIV_PYTHON}/snakebridge_worker/_native.abi3.so"""

if not list((PRIV_PYTHON / "snakebridge_worker").glob("_native*.so")):
    pytest.exit(INSTALL_HINT, returncode=1)

# Ahead of the current directory, so the source package (which has no
# _native) never shadows the installed one.
sys.path.insert(0, str(PRIV_PYTHON))

from snakebridge_worker import _native  # noqa: E402

CALL, OK, PY_ERROR, FAILURE, CANCEL, PING, PONG, RELEASE, ITEMS, CREDIT, STARTED, OUTPUT = 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12
CALL_AS_HANDLE, CALL_STREAM = 1, 2
TIMEOUT = 20.0


@dataclass(frozen=True)
class Handle:
    """A handle as the worker sends it (``type_name`` and ``repr`` set) or as the host sends it back.

    Not a tuple: ``dumps`` would send a tuple by value.
    """

    id: int
    type_name: str | None = None
    repr: str | None = None


def handle_id(obj: Any) -> int | None:
    """``dumps``'s hook: a :class:`Handle` goes on the wire as the host sends one."""
    return obj.id if isinstance(obj, Handle) else None


def dumps(value: Any) -> bytes:
    return _native.dumps(value, handle_id=handle_id)


def loads(data: bytes) -> Any:
    return _native.loads(data, handle=Handle)


def frame(message: Any) -> bytes:
    """A frame holding ``message``; a Python list encodes as the msgpack array a message is."""
    return frame_body(dumps(message))


def frame_body(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def call_frame(
    call_id: int,
    target: str | Handle,
    function: str | None,
    args: list[Any],
    kwargs: dict[str, Any],
    deadline: int = 0,
    flags: int = 0,
    window: int = 0,
) -> bytes:
    """A call frame written field by field, as the host does: the arguments
    list is a value of its own (depth 0), not nested inside the message.
    ``deadline`` is a CLOCK_MONOTONIC time in microseconds (0: none)."""
    return frame_body(
        b"\x99"
        + dumps(CALL)
        + dumps(call_id)
        + dumps(deadline)
        + dumps(target)
        + dumps(function)
        + dumps(args)
        + dumps(kwargs)
        + dumps(flags)
        + dumps(window)
    )


def monotonic_micros() -> int:
    """The clock of call deadlines (time.monotonic is CLOCK_MONOTONIC on Linux)."""
    return time.monotonic_ns() // 1000


class Worker:
    """One worker process, spoken to like the host does."""

    def __init__(self, extra_args: tuple[str, ...] = (), pass_fds: tuple[int, ...] = ()) -> None:
        parent, child = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(PRIV_PYTHON), str(TESTS_DIR)])
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "snakebridge_worker", "--fd", str(child.fileno()), *extra_args],
            pass_fds=[child.fileno(), *pass_fds],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=TESTS_DIR,
        )
        self.fd = child.fileno()  # the same number in the worker
        child.close()
        self.sock = parent
        self.sock.settimeout(TIMEOUT)
        self.closed = False
        self.buffer = bytearray()
        self.next_id = 1
        # Ids of calls the worker announced as going on in the background.
        self.started: list[int] = []
        # Output messages, [OUTPUT, id, source, level, text, module, function].
        self.output: list[list[Any]] = []
        # Drained continuously, like the host does, so a chatty worker never
        # blocks on a full pipe.
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.readers = [
            threading.Thread(target=self._drain, args=(self.proc.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._drain, args=(self.proc.stderr, self.stderr), daemon=True),
        ]
        for reader in self.readers:
            reader.start()
        try:
            self.hello = self.recv()
        except BaseException:
            self.kill()
            raise

    @staticmethod
    def _drain(pipe: Any, lines: list[str]) -> None:
        for line in pipe:
            lines.append(line.decode("utf-8", "replace"))

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def send(self, message: Any) -> None:
        self.sock.sendall(frame(message))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self) -> list[Any]:
        """The next message, skipping `started` ones (their ids go to
        ``self.started``) and `output` ones (to ``self.output``)."""
        while True:
            message = loads(self.recv_body())
            if message[0] == STARTED:
                self.started.append(message[1])
            elif message[0] == OUTPUT:
                self.output.append(message)
            else:
                return message

    def recv_body(self) -> bytes:
        (length,) = struct.unpack(">I", self._read_exactly(4))
        return self._read_exactly(length)

    def _read_exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError(f"worker closed the socket; stderr: {''.join(self.stderr)}")
            self.buffer += chunk
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    def start(
        self,
        target: str | Handle,
        function: str | None,
        args: list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        deadline: int = 0,
        flags: int = 0,
        window: int = 0,
    ) -> int:
        """Sends a call without waiting for its reply; returns its id."""
        call_id = self.new_id()
        self.send_raw(call_frame(call_id, target, function, args or [], kwargs or {}, deadline, flags, window))
        return call_id

    def cancel(self, call_id: int, signal_too: bool = True) -> None:
        """Cancels like the host: the Cancel frame, then SIGUSR1 to the process."""
        self.send([CANCEL, call_id])
        if signal_too:
            os.kill(self.proc.pid, signal.SIGUSR1)

    def call(
        self,
        target: str | Handle,
        function: str | None,
        args: list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        flags: int = 0,
    ) -> list[Any]:
        call_id = self.start(target, function, args, kwargs, flags=flags)
        reply = self.recv()
        assert reply[1] == call_id, reply
        return reply

    def ok(
        self,
        target: str | Handle,
        function: str | None,
        args: list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        flags: int = 0,
    ) -> Any:
        reply = self.call(target, function, args, kwargs, flags)
        assert reply[0] == OK, reply
        return reply[2]

    def release(self, *ids: int) -> None:
        self.send([RELEASE, 0, list(ids)])

    def credit(self, call_id: int, credit: int) -> None:
        self.send([CREDIT, call_id, credit])

    def object_count(self) -> int:
        return self.ok("snakebridge_worker._native", "object_count")

    def close(self) -> int:
        """Closes the host's end; returns the worker's exit status."""
        if not self.closed:
            self.closed = True
            self.sock.close()
        status = self.proc.wait(timeout=TIMEOUT)
        for reader in self.readers:
            reader.join(timeout=TIMEOUT)
        return status

    def wait(self) -> int:
        """Waits for the worker to exit on its own (socket left open)."""
        status = self.proc.wait(timeout=TIMEOUT)
        for reader in self.readers:
            reader.join(timeout=TIMEOUT)
        return status

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if not self.closed:
            self.closed = True
            self.sock.close()


@pytest.fixture
def worker() -> Iterator[Worker]:
    w = Worker()
    try:
        yield w
    finally:
        w.kill()


@pytest.fixture(scope="module")
def shared_worker() -> Iterator[Worker]:
    """One worker for many independent calls (round-trip tables)."""
    w = Worker()
    try:
        yield w
    finally:
        w.kill()


def assert_same(expected: Any, actual: Any, path: str = "value") -> None:
    """Equal and of exactly the same types, all the way down (NaN equals NaN)."""
    assert type(actual) is type(expected), f"{path}: {type(actual).__name__} != {type(expected).__name__} ({actual!r})"
    if isinstance(expected, float) and math.isnan(expected):
        assert math.isnan(actual), path
    elif isinstance(expected, float):
        assert actual == expected and math.copysign(1, actual) == math.copysign(1, expected), f"{path}: {actual!r}"
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), path
        for i, (e, a) in enumerate(zip(expected, actual)):
            assert_same(e, a, f"{path}[{i}]")
    elif isinstance(expected, dict):
        assert list(actual) == list(expected), path
        for ek, ak in zip(expected, actual):
            assert_same(ek, ak, f"{path} key {ek!r}")
            assert_same(expected[ek], actual[ak], f"{path}[{ek!r}]")
    elif isinstance(expected, (set, frozenset)):
        assert actual == expected, path
        elements = {a: a for a in actual}
        for e in expected:
            assert_same(e, elements[e], f"{path} element {e!r}")
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"
