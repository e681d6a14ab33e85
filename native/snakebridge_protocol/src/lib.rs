//! The SnakeBridge wire protocol, shared by the host (the NIF and its runtime)
//! and the Python worker's native module, so both sides are byte-compatible by
//! construction.
//!
//! A stream is a sequence of frames: a 4-byte big-endian body length followed
//! by the body. Every body is one msgpack array whose first two elements are
//! the message kind and the call id (see [`message`]). Values are plain
//! msgpack plus extension types for what msgpack cannot say on its own
//! (see [`value`]).

pub mod error;
pub mod frame;
pub mod message;
pub mod shm;
pub mod value;

pub use error::{DecodeError, EncodeError};
pub use frame::{FrameDecoder, FrameWriter, HEADER_LEN, MAX_FRAME_LEN};
pub use message::{
    Header, Kind, Message, Target, CALL_AS_ARROW, CALL_AS_HANDLE, CALL_BURST, CALL_STREAM, CALL_TIMED, OUTPUT_LOGGING, OUTPUT_STDERR, OUTPUT_STDOUT,
    PROTOCOL_VERSION,
};
pub use value::{build_cost, decode_value, handle_ids, BuildCost, Builder, Dtype, Value, ValueBuilder, MAX_BIGINT_BYTES, MAX_DEPTH};
