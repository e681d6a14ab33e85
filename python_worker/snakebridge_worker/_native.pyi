"""Type stub for the native module (native/snakebridge_py)."""

from typing import Any, Callable

PROTOCOL_VERSION: int
MAX_DEPTH: int
MAX_FRAME_LEN: int

class ProtocolError(Exception):
    """The host sent bytes that are not a valid frame."""

class EncodeError(ValueError):
    """A value has no wire form."""

    reason: str  # "unsupported_type" | "nesting_too_deep" | "payload_too_large"

class DecodeError(ValueError):
    """Bytes that are not one valid value, or a value Python cannot hold."""

def dumps(obj: Any) -> bytes: ...
def loads(data: bytes) -> Any: ...
def serve(
    fd: int,
    resolve: Callable[[str, str], Callable[..., Any]],
    describe: Callable[[BaseException], tuple[str, str, str, list[str]]],
) -> None: ...
