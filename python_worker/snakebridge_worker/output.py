"""Python output, sent to the host over the protocol socket.

While the worker serves, ``sys.stdout`` and ``sys.stderr`` are text streams
that hand what is written to the native module, which sends each complete
line to the host tagged with the call that wrote it (its caller, module and
function become Elixir ``Logger`` metadata). Text without a final newline is
sent when the call ends. Lines go out ahead of the call's reply, or at
once on ``flush()`` (``print(..., flush=True)``). A handler on the root logger sends each ``logging``
record, formatted (with its exception text), at its own level.

The root logger's level is left alone (WARNING unless user code changes it),
so ``logging.getLogger().setLevel(logging.DEBUG)`` or a level on a named
logger decides what is sent. Because the root logger has a handler,
``logging.basicConfig()`` does nothing unless called with ``force=True``
(which removes this handler too).

File descriptors 1 and 2 stay pipes to the host: C extensions and
subprocesses writing there still reach the log, without call metadata.
"""

from __future__ import annotations

import contextvars
import io
import logging
import sys
from typing import Optional, TextIO

from snakebridge_worker import _native

STDOUT = 0
STDERR = 1

#: The call an asyncio task belongs to, ``(id, module, function)``; set in
#: each task's context by ``snakebridge_worker.aio``. Unset: the running call.
CALL: contextvars.ContextVar[Optional[_native.CallInfo]] = contextvars.ContextVar("snakebridge_call", default=None)


class CallStream(io.TextIOBase):
    """A text stream whose lines go to the host."""

    def __init__(self, source: int, original: TextIO) -> None:
        super().__init__()
        self._source = source
        self._original = original

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return "strict"

    @property
    def buffer(self) -> io.BufferedIOBase:
        """Bytes written here bypass the socket: they go to the original pipe."""
        return self._original.buffer  # type: ignore[attr-defined]

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._original.fileno()

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        _native.output(self._source, text, CALL.get())
        return len(text)

    def flush(self) -> None:
        """Sends the complete lines so far at once (``print(..., flush=True)``)."""
        _native.flush()


class CallHandler(logging.Handler):
    """Sends each record to the host at its level."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _native.log(record.levelno, self.format(record), CALL.get())
        except Exception:
            self.handleError(record)


def install() -> None:
    """Routes ``sys.stdout``, ``sys.stderr`` and ``logging`` to the host."""
    sys.stdout = CallStream(STDOUT, sys.__stdout__)  # type: ignore[arg-type]
    sys.stderr = CallStream(STDERR, sys.__stderr__)  # type: ignore[arg-type]
    logging.getLogger().addHandler(CallHandler())


def uninstall() -> None:
    """Puts the original streams back and removes the handler."""
    sys.stdout = sys.__stdout__
    sys.stderr = sys.__stderr__
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, CallHandler)]:
        root.removeHandler(handler)
