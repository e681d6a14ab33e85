"""Type stub for the native module (native/snakebridge_py)."""

from types import FrameType
from typing import Any, Callable

PROTOCOL_VERSION: int
MAX_DEPTH: int
MAX_FRAME_LEN: int

class ProtocolError(Exception):
    """The host sent bytes that are not a valid frame."""

class CallCancelled(BaseException):
    """The host cancelled the call while it ran (re-exported as snakebridge_worker.CallCancelled)."""

class EncodeError(ValueError):
    """A value has no wire form."""

    reason: str  # "unsupported_type" | "nesting_too_deep" | "payload_too_large"

class DecodeError(ValueError):
    """Bytes that are not one valid value, or a value Python cannot hold."""

def dumps(obj: Any) -> bytes: ...
def loads(data: bytes) -> Any: ...
def cancel_signal(signum: int, frame: FrameType | None) -> None:
    """SIGUSR1 handler: reads the Cancel frames the host sent and raises CallCancelled if the running call is cancelled."""

def serve(
    fd: int,
    resolve: Callable[[str, str], Callable[..., Any]],
    describe: Callable[[BaseException], tuple[str, str, str, list[str]]],
) -> None: ...
