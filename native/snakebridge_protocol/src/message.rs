//! Messages: one msgpack array per frame body, `[kind, id, fields...]`.
//!
//! | kind | direction | fields after `kind, id` |
//! |------|-----------|-------------------------|
//! | 0 hello    | worker → host | protocol version, worker OS pid, Python version string (id is 0) |
//! | 1 call     | host → worker | deadline, target, function, args (array), kwargs (map), flags, window |
//! | 2 ok       | worker → host | result value |
//! | 3 py_error | worker → host | exception type, its module, `str(exc)`, traceback lines (array of str), public attributes (map of str → value; a host also accepts the message without it) |
//! | 4 failure  | worker → host | reason (str, an atom name on the Elixir side), message |
//! | 5 cancel   | host → worker | — |
//! | 6 ping     | host → worker | — |
//! | 7 pong     | worker → host | — |
//! | 8 release  | host → worker | handle ids (array) the host no longer references (id is 0) |
//! | 9 items    | worker → host | the next items of a stream (array) |
//! | 10 credit  | host → worker | how many more items the stream may send |
//! | 11 started | worker → host | — (the call goes on in the background: a task or a stream) |
//! | 12 output  | worker → host | source ([`OUTPUT_STDOUT`], [`OUTPUT_STDERR`] or [`OUTPUT_LOGGING`]), Python logging level, text, module (str or nil), function (str or nil) |
//!
//! A call's target is a module path (str) or a handle (the object itself);
//! its function is an attribute path on the target, or nil to call the
//! target itself. `flags` is a bit set of [`CALL_AS_HANDLE`] (the result
//! comes back as a handle whatever its type), [`CALL_AS_ARROW`] (a table
//! comes back as Arrow IPC bytes), [`CALL_STREAM`] (the result
//! is iterated: items flow as `items` messages, at most `window` of them
//! before the host grants more with `credit`; the stream ends with `ok`
//! (nil), `py_error` or `failure`, and a `cancel` closes it), [`CALL_TIMED`]
//! and [`CALL_BURST`].
//!
//! A call that goes on after its function returned (a coroutine awaited as a
//! task, or a stream) is announced with `started`: it no longer holds the
//! worker up, so it stops counting against the host's window of calls
//! written ahead. Its final reply still comes later.
//!
//! A line the worker's Python code writes to `sys.stdout` or `sys.stderr`,
//! or a `logging` record, is sent as `output`, ahead of the reply of the call
//! that wrote it. Its id is that call's (0 outside any call), and module and
//! function are the call's target, so the host can tell whose line it is.
//!
//! A call's deadline is the `CLOCK_MONOTONIC` time, in microseconds, after
//! which its caller no longer waits (0: no deadline). Both processes run on
//! one machine, so they share that clock; a worker skips a call whose
//! deadline has passed instead of starting it.
//!
//! The host and the worker write the hot messages (call, ok) field by field
//! straight from their native values; [`Message`] is the typed form used for
//! the rest and by tests.
//!
//! No serde here: serde has no representation for a flat `[kind, id, ...]`
//! array (rmp-serde writes enum variants as one-key maps), and its decoder
//! would accept what [`Message::decode`] rejects (signed markers for unsigned
//! fields, `bin` for strings, trailing bytes). The README's "Dependencies"
//! section has the details.

use crate::frame::FrameWriter;
pub use crate::value::read_uint;
use crate::value::{self, decode_value, read_array_len, Value, ValueBuilder};
use crate::{DecodeError, EncodeError};

/// Bumped on any incompatible change; the host refuses a worker that speaks
/// another version.
pub const PROTOCOL_VERSION: u32 = 3;

/// Call flag: return the result as a handle, whatever its type.
pub const CALL_AS_HANDLE: u64 = 1;
/// Call flag: iterate the result and stream its items.
pub const CALL_STREAM: u64 = 2;
/// Call flag: send the result (a pandas DataFrame or pyarrow Table) as
/// Arrow IPC stream bytes (ext 23).
pub const CALL_AS_ARROW: u64 = 4;
/// Call flag: a worker that answers the call itself (not through a stream
/// or a task) sends a `timing` message for it just before the reply. Only
/// set when someone measures calls, so the plain path writes no extra frame.
pub const CALL_TIMED: u64 = 8;
/// Call flag: one of a burst of calls, such as the ones a cluster's relay
/// runs for other nodes while it runs others too. Such bursts come a
/// distribution round trip apart, so after one the worker polls only
/// briefly for more input before it sleeps.
pub const CALL_BURST: u64 = 16;

/// Output source: a line written to `sys.stdout`.
pub const OUTPUT_STDOUT: u8 = 0;
/// Output source: a line written to `sys.stderr`.
pub const OUTPUT_STDERR: u8 = 1;
/// Output source: a `logging` record.
pub const OUTPUT_LOGGING: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Hello = 0,
    Call = 1,
    Ok = 2,
    PyError = 3,
    Failure = 4,
    Cancel = 5,
    Ping = 6,
    Pong = 7,
    Release = 8,
    Items = 9,
    Credit = 10,
    Started = 11,
    Output = 12,
    /// A frame body that lies in shared memory (see [`crate::shm`]).
    Shared = 13,
    /// Far from the others: kinds added alongside it keep their numbers.
    Timing = 20,
}

impl Kind {
    fn from_u64(v: u64) -> Result<Kind, DecodeError> {
        Ok(match v {
            0 => Kind::Hello,
            1 => Kind::Call,
            2 => Kind::Ok,
            3 => Kind::PyError,
            4 => Kind::Failure,
            5 => Kind::Cancel,
            6 => Kind::Ping,
            7 => Kind::Pong,
            8 => Kind::Release,
            9 => Kind::Items,
            10 => Kind::Credit,
            11 => Kind::Started,
            12 => Kind::Output,
            13 => Kind::Shared,
            20 => Kind::Timing,
            other => return Err(DecodeError::UnknownKind(other)),
        })
    }

    /// Number of array elements a message of this kind has.
    pub fn arity(self) -> usize {
        match self {
            Kind::Hello => 5,
            Kind::Call => 9,
            Kind::Ok | Kind::Release | Kind::Items | Kind::Credit => 3,
            Kind::PyError => 7,
            Kind::Failure => 4,
            Kind::Cancel | Kind::Ping | Kind::Pong | Kind::Started => 2,
            Kind::Output => 7,
            Kind::Shared => 4,
            Kind::Timing => 4,
        }
    }
}

impl Kind {
    /// Whether a message of this kind may have `len` array elements: its
    /// [`arity`](Kind::arity), or fewer when its last fields were added
    /// later (a py_error without attributes).
    pub fn accepts(self, len: usize) -> bool {
        len == self.arity() || (self == Kind::PyError && len == 6)
    }
}

/// The first two fields of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub id: u64,
}

impl Header {
    /// Reads `[kind, id` from the front of a frame body, leaving `body` at the
    /// first kind-specific field.
    pub fn read(body: &mut &[u8]) -> Result<Header, DecodeError> {
        let len = read_array_len(body)?;
        let kind = Kind::from_u64(read_uint(body)?)?;
        if !kind.accepts(len) {
            return Err(DecodeError::Invalid(format!(
                "{kind:?} message with {len} fields, expected {}",
                kind.arity()
            )));
        }
        let id = read_uint(body)?;
        Ok(Header { kind, id })
    }

    /// Writes `[kind, id` for a message of this kind.
    pub fn write(self, out: &mut Vec<u8>) {
        rmp::encode::write_array_len(out, self.kind.arity() as u32).expect("writing to a Vec cannot fail");
        value::write_u64(out, self.kind as u64);
        value::write_u64(out, self.id);
    }
}

/// A message in typed form.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Hello {
        version: u32,
        pid: u32,
        python: String,
    },
    Call {
        id: u64,
        deadline: u64,
        target: Target,
        function: Option<String>,
        args: Vec<Value>,
        kwargs: Vec<(Value, Value)>,
        flags: u64,
        window: u64,
    },
    Ok {
        id: u64,
        value: Value,
    },
    PyError {
        id: u64,
        exc_type: String,
        exc_module: String,
        message: String,
        traceback: Vec<String>,
        /// The exception's public attributes, name → value; handles never
        /// appear in them.
        attributes: Vec<(Value, Value)>,
    },
    Failure {
        id: u64,
        reason: String,
        message: String,
    },
    Cancel {
        id: u64,
    },
    Ping {
        id: u64,
    },
    Pong {
        id: u64,
    },
    Release {
        ids: Vec<u64>,
    },
    Items {
        id: u64,
        items: Vec<Value>,
    },
    Credit {
        id: u64,
        credit: u64,
    },
    Started {
        id: u64,
    },
    Output {
        id: u64,
        source: u8,
        level: u32,
        text: String,
        module: Option<String>,
        function: Option<String>,
    },
    /// When the worker started a `CALL_TIMED` call (`CLOCK_MONOTONIC` µs,
    /// the clock of call deadlines) and how long it ran in Python (µs).
    Timing {
        id: u64,
        started_at: u64,
        python_us: u64,
    },
}

/// What a call calls into.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// A module path, such as `"os.path"`.
    Module(String),
    /// An object in the worker's table.
    Handle(u64),
}

impl Message {
    pub fn header(&self) -> Header {
        let (kind, id) = match self {
            Message::Hello { .. } => (Kind::Hello, 0),
            Message::Call { id, .. } => (Kind::Call, *id),
            Message::Ok { id, .. } => (Kind::Ok, *id),
            Message::PyError { id, .. } => (Kind::PyError, *id),
            Message::Failure { id, .. } => (Kind::Failure, *id),
            Message::Cancel { id } => (Kind::Cancel, *id),
            Message::Ping { id } => (Kind::Ping, *id),
            Message::Pong { id } => (Kind::Pong, *id),
            Message::Release { .. } => (Kind::Release, 0),
            Message::Items { id, .. } => (Kind::Items, *id),
            Message::Credit { id, .. } => (Kind::Credit, *id),
            Message::Started { id } => (Kind::Started, *id),
            Message::Output { id, .. } => (Kind::Output, *id),
            Message::Timing { id, .. } => (Kind::Timing, *id),
        };
        Header { kind, id }
    }

    /// Appends this message to `out` as a complete frame.
    pub fn write_frame(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let start = FrameWriter::begin(out);
        match self.write_body(out) {
            Ok(()) => FrameWriter::finish(out, start),
            Err(e) => {
                FrameWriter::abandon(out, start);
                Err(e)
            }
        }
    }

    /// Writes the message's body alone, with no length header and no
    /// frame limit.
    pub fn write_body(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.header().write(out);
        match self {
            Message::Hello { version, pid, python } => {
                value::write_u64(out, *version as u64);
                value::write_u64(out, *pid as u64);
                value::write_str(out, python)?;
            }
            Message::Call {
                deadline,
                target,
                function,
                args,
                kwargs,
                flags,
                window,
                ..
            } => {
                value::write_u64(out, *deadline);
                match target {
                    Target::Module(module) => value::write_str(out, module)?,
                    Target::Handle(id) => value::write_handle(out, *id, None)?,
                }
                match function {
                    Some(function) => value::write_str(out, function)?,
                    None => value::write_nil(out),
                }
                // The array and map count as the first nesting level, as
                // when the host encodes terms.
                value::write_array_len(out, args.len())?;
                for arg in args {
                    arg.encode_at(out, 1)?;
                }
                value::write_map_len(out, kwargs.len())?;
                for (k, v) in kwargs {
                    k.encode_at(out, 1)?;
                    v.encode_at(out, 1)?;
                }
                value::write_u64(out, *flags);
                value::write_u64(out, *window);
            }
            Message::Release { ids } => {
                value::write_array_len(out, ids.len())?;
                for id in ids {
                    value::write_u64(out, *id);
                }
            }
            Message::Items { items, .. } => {
                value::write_array_len(out, items.len())?;
                for item in items {
                    item.encode_at(out, 1)?;
                }
            }
            Message::Credit { credit, .. } => value::write_u64(out, *credit),
            Message::Ok { value, .. } => value.encode(out)?,
            Message::PyError {
                exc_type,
                exc_module,
                message,
                traceback,
                attributes,
                ..
            } => {
                value::write_str(out, exc_type)?;
                value::write_str(out, exc_module)?;
                value::write_str(out, message)?;
                value::write_array_len(out, traceback.len())?;
                for line in traceback {
                    value::write_str(out, line)?;
                }
                value::write_map_len(out, attributes.len())?;
                for (k, v) in attributes {
                    k.encode_at(out, 1)?;
                    v.encode_at(out, 1)?;
                }
            }
            Message::Failure { reason, message, .. } => {
                value::write_str(out, reason)?;
                value::write_str(out, message)?;
            }
            Message::Output {
                source,
                level,
                text,
                module,
                function,
                ..
            } => {
                value::write_u64(out, *source as u64);
                value::write_u64(out, *level as u64);
                value::write_str(out, text)?;
                for name in [module, function] {
                    match name {
                        Some(name) => value::write_str(out, name)?,
                        None => value::write_nil(out),
                    }
                }
            }
            Message::Timing { started_at, python_us, .. } => {
                value::write_u64(out, *started_at);
                value::write_u64(out, *python_us);
            }
            Message::Cancel { .. } | Message::Ping { .. } | Message::Pong { .. } | Message::Started { .. } => {}
        }
        Ok(())
    }

    /// Decodes a whole frame body.
    pub fn decode(body: &[u8]) -> Result<Message, DecodeError> {
        let mut input = body;
        // The field count tells a py_error with attributes from one without.
        let fields = read_array_len(&mut &body[..])?;
        let header = Header::read(&mut input)?;
        let id = header.id;
        let message = match header.kind {
            Kind::Hello => Message::Hello {
                version: u32::try_from(read_uint(&mut input)?)
                    .map_err(|_| DecodeError::Invalid("protocol version out of range".into()))?,
                pid: u32::try_from(read_uint(&mut input)?)
                    .map_err(|_| DecodeError::Invalid("pid out of range".into()))?,
                python: read_string(&mut input)?,
            },
            Kind::Call => {
                let deadline = read_uint(&mut input)?;
                let target = match decode_value(&mut input, &mut ValueBuilder, 0)? {
                    Value::Str(module) => Target::Module(module),
                    Value::Handle { id, info: None } => Target::Handle(id),
                    _ => return Err(DecodeError::Invalid("a call's target must be a module or a handle".into())),
                };
                let function = match decode_value(&mut input, &mut ValueBuilder, 0)? {
                    Value::Str(function) => Some(function),
                    Value::Nil => None,
                    _ => return Err(DecodeError::Invalid("a call's function must be a string or nil".into())),
                };
                let args = match decode_value(&mut input, &mut ValueBuilder, 0)? {
                    Value::List(args) => args,
                    _ => return Err(DecodeError::Invalid("call arguments must be an array".into())),
                };
                let kwargs = match decode_value(&mut input, &mut ValueBuilder, 0)? {
                    Value::Map(kwargs) => kwargs,
                    _ => return Err(DecodeError::Invalid("keyword arguments must be a map".into())),
                };
                Message::Call {
                    id,
                    deadline,
                    target,
                    function,
                    args,
                    kwargs,
                    flags: read_uint(&mut input)?,
                    window: read_uint(&mut input)?,
                }
            }
            Kind::Release => {
                let count = read_array_len(&mut input)?;
                if count > input.len() {
                    return Err(DecodeError::Truncated);
                }
                Message::Release {
                    ids: (0..count).map(|_| read_uint(&mut input)).collect::<Result<_, _>>()?,
                }
            }
            Kind::Items => Message::Items {
                id,
                items: match decode_value(&mut input, &mut ValueBuilder, 0)? {
                    Value::List(items) => items,
                    _ => return Err(DecodeError::Invalid("stream items must be an array".into())),
                },
            },
            Kind::Credit => Message::Credit {
                id,
                credit: read_uint(&mut input)?,
            },
            Kind::Ok => Message::Ok {
                id,
                value: decode_value(&mut input, &mut ValueBuilder, 0)?,
            },
            Kind::PyError => {
                let exc_type = read_string(&mut input)?;
                let exc_module = read_string(&mut input)?;
                let message = read_string(&mut input)?;
                let lines = read_array_len(&mut input)?;
                if lines > input.len() {
                    return Err(DecodeError::Truncated);
                }
                let traceback = (0..lines).map(|_| read_string(&mut input)).collect::<Result<_, _>>()?;
                let attributes = if fields < Kind::PyError.arity() {
                    Vec::new()
                } else {
                    match decode_value(&mut input, &mut ValueBuilder, 0)? {
                        Value::Map(attributes) => attributes,
                        _ => return Err(DecodeError::Invalid("exception attributes must be a map".into())),
                    }
                };
                Message::PyError {
                    id,
                    exc_type,
                    exc_module,
                    message,
                    traceback,
                    attributes,
                }
            }
            Kind::Failure => Message::Failure {
                id,
                reason: read_string(&mut input)?,
                message: read_string(&mut input)?,
            },
            Kind::Cancel => Message::Cancel { id },
            Kind::Ping => Message::Ping { id },
            Kind::Pong => Message::Pong { id },
            Kind::Started => Message::Started { id },
            Kind::Output => Message::Output {
                id,
                source: u8::try_from(read_uint(&mut input)?)
                    .map_err(|_| DecodeError::Invalid("output source out of range".into()))?,
                level: u32::try_from(read_uint(&mut input)?)
                    .map_err(|_| DecodeError::Invalid("output level out of range".into()))?,
                text: read_string(&mut input)?,
                module: read_optional_string(&mut input)?,
                function: read_optional_string(&mut input)?,
            },
            // Resolved by the transport (see `shm::described`) before any
            // message is decoded.
            Kind::Shared => return Err(DecodeError::Invalid("a shared-memory descriptor out of place".into())),
            Kind::Timing => Message::Timing {
                id,
                started_at: read_uint(&mut input)?,
                python_us: read_uint(&mut input)?,
            },
        };
        if !input.is_empty() {
            return Err(DecodeError::TrailingBytes(input.len()));
        }
        Ok(message)
    }
}

/// Reads a string field.
pub fn read_string(input: &mut &[u8]) -> Result<String, DecodeError> {
    match decode_value(input, &mut ValueBuilder, 0)? {
        Value::Str(s) => Ok(s),
        _ => Err(DecodeError::UnexpectedType {
            expected: "string",
            found: "another type",
        }),
    }
}

/// Reads a field that is a string or nil.
pub fn read_optional_string(input: &mut &[u8]) -> Result<Option<String>, DecodeError> {
    match decode_value(input, &mut ValueBuilder, 0)? {
        Value::Str(s) => Ok(Some(s)),
        Value::Nil => Ok(None),
        _ => Err(DecodeError::UnexpectedType {
            expected: "string or nil",
            found: "another type",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FrameDecoder;
    use proptest::prelude::*;

    fn message() -> impl Strategy<Value = Message> {
        let id = any::<u64>();
        let text = ".{0,40}";
        let leaf = prop_oneof![
            any::<i64>().prop_map(Value::Int),
            text.prop_map(Value::Str),
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(Value::Bin),
        ];
        prop_oneof![
            (any::<u32>(), any::<u32>(), text).prop_map(|(version, pid, python)| Message::Hello { version, pid, python }),
            (
                (id, any::<u64>(), any::<u64>(), any::<u64>()),
                prop_oneof![text.prop_map(Target::Module), any::<u64>().prop_map(Target::Handle)],
                proptest::option::of(text),
                proptest::collection::vec(leaf.clone(), 0..5),
                proptest::collection::vec((leaf.clone(), leaf.clone()), 0..5)
            )
                .prop_map(|((id, deadline, flags, window), target, function, args, kwargs)| Message::Call {
                    id,
                    deadline,
                    target,
                    function,
                    args,
                    kwargs,
                    flags,
                    window,
                }),
            proptest::collection::vec(any::<u64>(), 0..8).prop_map(|ids| Message::Release { ids }),
            (id, proptest::collection::vec(leaf.clone(), 0..5)).prop_map(|(id, items)| Message::Items { id, items }),
            (id, any::<u64>()).prop_map(|(id, credit)| Message::Credit { id, credit }),
            (id, leaf.clone()).prop_map(|(id, value)| Message::Ok { id, value }),
            (id, text, text, text, proptest::collection::vec(text, 0..4), proptest::collection::vec((text, leaf.clone()), 0..3)).prop_map(
                |(id, exc_type, exc_module, message, traceback, attributes)| Message::PyError {
                    id,
                    exc_type,
                    exc_module,
                    message,
                    traceback,
                    attributes: attributes.into_iter().map(|(k, v)| (Value::Str(k), v)).collect(),
                }
            ),
            (id, text, text).prop_map(|(id, reason, message)| Message::Failure { id, reason, message }),
            id.prop_map(|id| Message::Cancel { id }),
            id.prop_map(|id| Message::Ping { id }),
            id.prop_map(|id| Message::Pong { id }),
            id.prop_map(|id| Message::Started { id }),
            (id, any::<u8>(), any::<u32>(), text, proptest::option::of(text), proptest::option::of(text)).prop_map(
                |(id, source, level, text, module, function)| Message::Output { id, source, level, text, module, function }
            ),
            (id, any::<u64>(), any::<u64>()).prop_map(|(id, started_at, python_us)| Message::Timing { id, started_at, python_us }),
        ]
    }

    proptest! {
        #[test]
        fn messages_round_trip_through_frames(messages in proptest::collection::vec(message(), 1..10)) {
            let mut stream = Vec::new();
            for m in &messages {
                m.write_frame(&mut stream).unwrap();
            }
            let mut decoder = FrameDecoder::with_capacity(16);
            decoder.push(&stream);
            let mut decoded = Vec::new();
            while let Some(body) = decoder.next_frame().unwrap() {
                decoded.push(Message::decode(body).unwrap());
            }
            prop_assert_eq!(decoded, messages);
        }

        #[test]
        fn truncated_bodies_are_errors(m in message(), cut in any::<prop::sample::Index>()) {
            let mut frame = Vec::new();
            m.write_frame(&mut frame).unwrap();
            let body = &frame[4..];
            let cut = cut.index(body.len());
            prop_assert!(Message::decode(&body[..cut]).is_err());
        }

        #[test]
        fn corrupt_bodies_never_panic(m in message(), flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)) {
            let mut frame = Vec::new();
            m.write_frame(&mut frame).unwrap();
            let mut body = frame[4..].to_vec();
            for (at, byte) in flips {
                let i = at.index(body.len());
                body[i] = byte;
            }
            let _ = Message::decode(&body);
        }
    }

    #[test]
    fn header_leaves_input_at_first_field() {
        let mut frame = Vec::new();
        Message::Ok { id: 77, value: Value::Int(5) }.write_frame(&mut frame).unwrap();
        let mut body = &frame[4..];
        assert_eq!(Header::read(&mut body).unwrap(), Header { kind: Kind::Ok, id: 77 });
        assert_eq!(Value::decode(body).unwrap(), Value::Int(5));
    }

    #[test]
    fn wrong_arity_is_rejected() {
        let mut body = Vec::new();
        value::write_array_len(&mut body, 3).unwrap();
        value::write_u64(&mut body, Kind::Ping as u64);
        value::write_u64(&mut body, 1);
        value::write_nil(&mut body);
        assert!(matches!(Message::decode(&body), Err(DecodeError::Invalid(_))));
    }

    #[test]
    fn py_error_without_attributes_still_decodes() {
        let mut body = Vec::new();
        value::write_array_len(&mut body, 6).unwrap();
        value::write_u64(&mut body, Kind::PyError as u64);
        value::write_u64(&mut body, 9);
        for text in ["KeyError", "builtins", "'k'"] {
            value::write_str(&mut body, text).unwrap();
        }
        value::write_array_len(&mut body, 0).unwrap();
        assert_eq!(
            Message::decode(&body).unwrap(),
            Message::PyError {
                id: 9,
                exc_type: "KeyError".into(),
                exc_module: "builtins".into(),
                message: "'k'".into(),
                traceback: vec![],
                attributes: vec![],
            }
        );
    }

    #[test]
    fn py_error_attributes_must_be_a_map() {
        let mut body = Vec::new();
        value::write_array_len(&mut body, 7).unwrap();
        value::write_u64(&mut body, Kind::PyError as u64);
        value::write_u64(&mut body, 9);
        for text in ["KeyError", "builtins", "'k'"] {
            value::write_str(&mut body, text).unwrap();
        }
        value::write_array_len(&mut body, 0).unwrap();
        value::write_nil(&mut body);
        assert!(matches!(Message::decode(&body), Err(DecodeError::Invalid(_))));
    }

    #[test]
    fn unknown_kind_is_rejected() {
        assert_eq!(Message::decode(&[0x92, 0x63, 0x00]), Err(DecodeError::UnknownKind(0x63)));
    }
}
