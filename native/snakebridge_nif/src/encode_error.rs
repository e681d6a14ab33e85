//! Why a term could not be encoded, and where in the arguments it was.

use snakebridge_protocol::value::MAX_DEPTH;
use snakebridge_protocol::EncodeError as WireError;

/// Why a term could not be encoded.
pub enum EncodeError {
    Unsupported { what: String, path: Vec<String> },
    TooDeep { path: Vec<String> },
    TooLarge(String),
    /// An object that was released with `SnakeBridge.release/1`.
    Released { path: Vec<String> },
    /// Objects held by different worker processes.
    Conflict { path: Vec<String> },
    /// Over the normal-scheduler budget: encode again on a dirty scheduler.
    NeedsDirty,
}

impl EncodeError {
    pub(crate) fn at(mut self, segment: impl FnOnce() -> String) -> Self {
        match &mut self {
            EncodeError::Unsupported { path, .. }
            | EncodeError::TooDeep { path }
            | EncodeError::Released { path }
            | EncodeError::Conflict { path } => path.push(segment()),
            EncodeError::TooLarge(_) | EncodeError::NeedsDirty => {}
        }
        self
    }

    /// A message naming the place, e.g. `"args[1][:key]: a pid is not supported"`.
    pub fn describe(&self, root: &str) -> String {
        let place = |path: &[String]| {
            let mut s = root.to_owned();
            for seg in path.iter().rev() {
                s.push_str(seg);
            }
            s
        };
        match self {
            EncodeError::Unsupported { what, path } => {
                format!("{}: {what} cannot be sent to Python", place(path))
            }
            EncodeError::TooDeep { path } => {
                format!("{}: nested deeper than {MAX_DEPTH} levels", place(path))
            }
            EncodeError::TooLarge(message) => message.clone(),
            EncodeError::Released { path } => {
                format!("{}: the object was released with SnakeBridge.release/1", place(path))
            }
            EncodeError::Conflict { path } => format!(
                "{}: this object lives in another Python worker than the call's other objects \
                 (or its :worker); a call runs in one worker, so its objects must come from the \
                 same one. A process's calls follow its objects; to combine objects made by \
                 several processes, make them in one worker: inside \
                 SnakeBridge.Session.run(object_or_session, fun), or with the \
                 `worker: object_or_session` option",
                place(path)
            ),
            EncodeError::NeedsDirty => "needs a dirty scheduler".to_owned(),
        }
    }
}

impl From<WireError> for EncodeError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::TooDeep => EncodeError::TooDeep { path: Vec::new() },
            other => EncodeError::TooLarge(other.to_string()),
        }
    }
}
