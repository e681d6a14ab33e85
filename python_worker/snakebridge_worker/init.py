"""The pool's per-worker init: modules to import and code to run before the
worker says hello, so that no call waits for them or cancels them halfway.

When the init raises, the worker sends a ``failure`` frame (reason
``init_failed``, the traceback as its message) instead of hello, and exits:
the host counts it as a failed start and shows the traceback to the user.
"""

from __future__ import annotations

import importlib
import os
import struct
import traceback

from snakebridge_worker import _native

#: The reason of the failure frame sent instead of hello.
INIT_FAILED = "init_failed"
#: Failure frame kind (see the protocol's message kinds).
FAILURE_KIND = 4
#: The host reads at most 64 KiB before hello; a longer traceback keeps its
#: end, where the exception is (in bytes of UTF-8).
MAX_TRACEBACK = 60_000


def run(fd: int, imports: list[str], code: str | None) -> bool:
    """Imports ``imports`` in order, then runs ``code``; on an exception,
    reports its traceback on ``fd`` and returns False."""
    try:
        for name in imports:
            importlib.import_module(name)
        if code is not None:
            namespace = {"__name__": "__snakebridge_init__", "__builtins__": __builtins__}
            exec(compile(code, "<snakebridge init>", "exec"), namespace)
    except BaseException:  # SystemExit and KeyboardInterrupt are failed inits too.
        report(fd, traceback.format_exc())
        return False
    return True


def report(fd: int, text: str) -> None:
    """Sends ``text`` to the host as the failure of this worker's init."""
    data = text.encode("utf-8", "replace")
    if len(data) > MAX_TRACEBACK:
        # Cut in bytes (the limit is the frame's), at a character boundary.
        text = "...\n" + data[-MAX_TRACEBACK:].decode("utf-8", "ignore")
    body = _native.dumps([FAILURE_KIND, 0, INIT_FAILED, text])
    frame = memoryview(struct.pack(">I", len(body)) + body)
    while frame:
        frame = frame[os.write(fd, frame):]
