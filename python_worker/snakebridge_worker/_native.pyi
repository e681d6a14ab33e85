"""Type stub for the native module (native/snakebridge_py)."""

from types import FrameType
from typing import Any, Callable

PROTOCOL_VERSION: int
MAX_DEPTH: int
MAX_FRAME_LEN: int
MAX_BIGINT_BYTES: int

class ProtocolError(Exception):
    """The host sent bytes that are not a valid frame."""

class CallCancelled(BaseException):
    """The host cancelled the call while it ran (re-exported as snakebridge_worker.CallCancelled)."""

class EncodeError(ValueError):
    """A value has no wire form."""

    reason: str  # "unsupported_type" | "nesting_too_deep" | "payload_too_large"

class DecodeError(ValueError):
    """Bytes that are not one valid value, or a value Python cannot hold."""

def dumps(obj: Any, *, handle_id: Callable[[Any], int | None] | None = None) -> bytes:
    """Encodes ``obj``; a value with no wire form raises EncodeError unless ``handle_id`` returns an id for it (written as a handle)."""

def loads(data: bytes, *, handle: Callable[[int, str | None, str | None], Any] | None = None) -> Any:
    """Decodes one value; a handle becomes ``handle(id, type_name, repr)`` (DecodeError without ``handle``)."""

def object_count() -> int:
    """Objects in the worker's object table (0 outside serve)."""
def cancel_signal(signum: int, frame: FrameType | None) -> None:
    """SIGUSR1 handler: reads the Cancel frames the host sent and raises CallCancelled if the running call is cancelled."""

def serve(
    fd: int,
    resolve: Callable[[str, str | None], Callable[..., Any]],
    describe: Callable[[BaseException], tuple[str, str, str, list[str]]],
    runner: Callable[[int], Any] | None = None,
) -> None:
    """Serves the protocol on ``fd`` until EOF; ``runner(fd)`` makes the asyncio runner (default: aio.Runner)."""

CallInfo = tuple[int, str | None, str | None]

def output(source: int, text: str, call: CallInfo | None = None) -> None:
    """Text written to stdout (0) or stderr (1); each complete line is sent to the host, tagged with ``call`` or the running call."""

def log(level: int, text: str, call: CallInfo | None = None) -> None:
    """Sends one formatted ``logging`` record at its numeric level."""

def flush() -> None:
    """Sends the complete lines written so far now, instead of ahead of the call's reply."""

def current_call() -> CallInfo | None:
    """``(id, module, function)`` of the call the main thread runs."""
