use thiserror::Error;

/// Why bytes received from the other side could not be understood.
///
/// Every malformed input maps to one of these: decoding never panics.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    #[error("frame of {0} bytes exceeds the {max} byte limit", max = crate::MAX_FRAME_LEN)]
    FrameTooLarge(usize),
    #[error("message truncated")]
    Truncated,
    #[error("invalid msgpack marker 0x{0:02x}")]
    InvalidMarker(u8),
    #[error("expected {expected}, found {found}")]
    UnexpectedType {
        expected: &'static str,
        found: &'static str,
    },
    #[error("unknown message kind {0}")]
    UnknownKind(u64),
    #[error("unknown extension type {0}")]
    UnknownExtension(i8),
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    #[error("nesting deeper than {max} levels", max = crate::MAX_DEPTH)]
    TooDeep,
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    #[error("{0}")]
    Invalid(String),
}

/// Why a value could not be put on the wire.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum EncodeError {
    #[error("frame of {0} bytes exceeds the {max} byte limit", max = crate::MAX_FRAME_LEN)]
    FrameTooLarge(usize),
    #[error("nesting deeper than {max} levels", max = crate::MAX_DEPTH)]
    TooDeep,
    #[error("collection of {0} elements is too large for one message")]
    TooManyElements(usize),
}
