//! The runtime's hooks: every reply, log line and worker event becomes a
//! message to a BEAM process.
//!
//! They run on runtime threads, which the VM does not manage, and, for the
//! messages a worker sends, inside the NIF calls of the process that reads
//! the worker's socket (see `reader`). A message is built in a
//! process-independent environment either way, and sent without a copy;
//! only the environment `enif_send` is given differs (see [`Courier`]).

use rustler::sys::{enif_send, ErlNifEnv};
use rustler::{Atom, Binary, Encoder, Env, LocalPid, OwnedBinary, OwnedEnv, ResourceArc, Term};
use snakebridge_protocol::{decode_value, DecodeError};
use snakebridge_runtime::{CircuitChange, Hooks, LogLine, Origin, Outcome, Reason, Shared, Stream, Timing, WorkerEvent};

use crate::atoms;
use crate::decode::TermBuilder;
use crate::errors;

/// A reply body in the worker's shared memory, kept while any binary made
/// from it lives; then the memory goes back to the worker.
pub struct SharedBody(pub Shared);

#[rustler::resource_impl]
impl rustler::Resource for SharedBody {}

/// Builds and sends the hooks' messages.
pub struct Courier {
    env: OwnedEnv,
    /// The environment of the process whose NIF call runs the hook, or null
    /// on a runtime thread: `enif_send` wants the one on a scheduler thread
    /// and null elsewhere.
    caller_env: *mut ErlNifEnv,
    /// The shared memory the frame being routed lies in, if it does: the
    /// message's binaries are made as sub-binaries of it.
    pub backing: Option<ResourceArc<SharedBody>>,
}

// SAFETY: `caller_env` is only non-null during one NIF call (see
// `Courier::in_call`), on that call's thread; the rest is an `OwnedEnv`,
// which may move between threads.
unsafe impl Send for Courier {}

impl Courier {
    pub fn new() -> Self {
        Courier {
            env: OwnedEnv::new(),
            caller_env: std::ptr::null_mut(),
            backing: None,
        }
    }

    /// Runs `hooks` with this courier as a NIF call's, in `env`.
    pub fn in_call<R>(&mut self, env: Env<'_>, hooks: impl FnOnce(&mut Courier) -> R) -> R {
        self.caller_env = env.as_c_arg();
        let result = hooks(self);
        self.caller_env = std::ptr::null_mut();
        result
    }

    /// Sends what `build` makes to `to`; false if `to` is not alive.
    pub fn send<'a, T: Encoder>(&mut self, to: &LocalPid, build: impl FnOnce(Env<'a>) -> T) -> bool {
        let caller_env = self.caller_env;
        let sent = self.env.run(|env| {
            let message = build(env).encode(env);
            // SAFETY: the message lives in this process-independent
            // environment, which enif_send empties; `caller_env` is null
            // on a thread the VM does not manage and the calling process's
            // environment on a scheduler (see `in_call`).
            unsafe { enif_send(caller_env, to.as_c_arg(), env.as_c_arg(), message.as_c_arg()) == 1 }
        });
        self.env.clear();
        sent
    }
}

/// Where a call's reply goes: the calling process, and its reference in
/// external term format (rebuilt in the runtime thread's environment).
pub struct Caller {
    pub pid: LocalPid,
    pub reference: OwnedBinary,
    /// Whether the call's `print` output goes to the caller (as
    /// `{:snakebridge_output, ref, device, line}`) rather than to the log.
    pub output: bool,
    /// When a timed call (`CALL_TIMED`) was submitted, `CLOCK_MONOTONIC`
    /// µs; 0 for the others.
    pub submitted_at: u64,
}

/// Hooks for one pool; logs and events go to the pool's owner process.
pub struct Delivery {
    pub owner: LocalPid,
    /// The pool's name, which its objects carry.
    pub pool: Atom,
    /// The pool's `output: :caller`: calls send their output to their
    /// caller unless they say otherwise.
    pub output_to_caller: bool,
}

impl Delivery {
    /// Decodes one value sent by a worker; a value that does not decode is
    /// answered as a protocol error and reported in `problem`.
    fn value<'a>(
        &self,
        env: Env<'a>,
        mut bytes: &[u8],
        origin: &Origin<'_>,
        backing: Option<Binary<'a>>,
        problem: &mut Option<DecodeError>,
    ) -> Result<Term<'a>, Term<'a>> {
        let mut builder = TermBuilder {
            env,
            origin: Some(origin),
            pool: self.pool,
            backing,
        };
        let decoded = decode_value(&mut bytes, &mut builder, 0).and_then(|v| {
            if bytes.is_empty() {
                Ok(v)
            } else {
                Err(DecodeError::TrailingBytes(bytes.len()))
            }
        });
        decoded.map_err(|e| {
            let message = format!("the Python worker sent an undecodable result: {e}");
            *problem = Some(e);
            errors::error_tuple(env, atoms::protocol_error(), &message)
        })
    }

    /// An exception's attributes, as a map with string keys; ones that do
    /// not decode are reported in `problem`, and the error gets none.
    fn attributes<'a>(&self, env: Env<'a>, mut bytes: &[u8], problem: &mut Option<DecodeError>) -> Term<'a> {
        if bytes.is_empty() {
            return Term::map_new(env);
        }
        let mut builder = TermBuilder {
            env,
            origin: None,
            pool: self.pool,
            backing: None,
        };
        match decode_value(&mut bytes, &mut builder, 0) {
            Ok(map) if bytes.is_empty() => map,
            Ok(_) => {
                *problem = Some(DecodeError::TrailingBytes(bytes.len()));
                Term::map_new(env)
            }
            Err(e) => {
                *problem = Some(e);
                Term::map_new(env)
            }
        }
    }
}

impl Delivery {
    /// Sends a call's reply, or a stream's items, to its caller; a final
    /// reply with `timing` carries it as a fourth element.
    fn send_reply(&self, courier: &mut Courier, caller: &Caller, outcome: Outcome<'_>, timing: Option<Timing>) -> Result<(), DecodeError> {
        let mut problem = None;
        let backing = courier.backing.clone();
        // A failed send means the caller is gone: nobody is waiting.
        courier.send(&caller.pid, |env| {
            let backing = backing.as_ref().map(|shared| shared.make_binary(env, |s| s.0.bytes()));
            let reference = env
                .binary_to_term(caller.reference.as_slice())
                .map(|(term, _)| term)
                .expect("a reference encoded by term_to_binary decodes");
            let (tag, result) = match outcome {
                Outcome::Ok(bytes, origin) => {
                    let result = match self.value(env, bytes, origin, backing, &mut problem) {
                        Ok(value) => (atoms::ok(), value).encode(env),
                        Err(error) => error,
                    };
                    (atoms::snakebridge(), result)
                }
                // A stream's items, as a list; the stream still ends with a
                // `:snakebridge` message. Items that do not decode end it.
                Outcome::Items(bytes, origin) => match self.value(env, bytes, origin, backing, &mut problem) {
                    Ok(items) => (atoms::snakebridge_stream(), items),
                    Err(error) => (atoms::snakebridge(), error),
                },
                Outcome::PythonError(e) => {
                    let attributes = self.attributes(env, &e.attributes, &mut problem);
                    let error = errors::python_error(env, &e, attributes);
                    (atoms::snakebridge(), (atoms::error(), error).encode(env))
                }
                Outcome::Failed(f) => (atoms::snakebridge(), (atoms::error(), errors::failure(env, &f)).encode(env)),
            };
            match timing {
                None => (tag, reference, result).encode(env),
                Some(t) => {
                    let queue_us = t.started_at.saturating_sub(caller.submitted_at);
                    (tag, reference, result, (t.os_pid, queue_us, t.python_us)).encode(env)
                }
            }
        });
        problem.map_or(Ok(()), Err)
    }
}

impl Hooks for Delivery {
    type Caller = Caller;
    type Courier = Courier;

    fn courier(&self) -> Courier {
        Courier::new()
    }

    fn deliver(&self, courier: &mut Courier, caller: &Caller, outcome: Outcome<'_>) -> Result<(), DecodeError> {
        self.send_reply(courier, caller, outcome, None)
    }

    /// The final reply as `{:snakebridge, ref, result, {os_pid, queue_us,
    /// python_us}}`: queued from submission until the worker started it.
    fn deliver_timed(&self, courier: &mut Courier, caller: &Caller, outcome: Outcome<'_>, timing: Timing) -> Result<(), DecodeError> {
        self.send_reply(courier, caller, outcome, Some(timing))
    }

    fn circuit(&self, courier: &mut Courier, change: CircuitChange) {
        courier.send(&self.owner, |env| {
            let atom = |name: &str| Atom::from_str(env, name).expect("state names are valid atoms");
            (atoms::snakebridge_circuit(), atom(change.from), atom(change.to), change.reason)
        });
    }

    /// `{:snakebridge_log, os_pid, level, line, metadata}`, where metadata
    /// is a map with `:caller`, `:python_module` and `:python_function`
    /// when the line was written during a call.
    fn log(&self, courier: &mut Courier, line: LogLine<'_, Caller>) {
        courier.send(&self.owner, |env| {
            let level = Atom::from_str(env, line.level.as_str()).expect("level names are valid atoms");
            let mut bin = rustler::NewBinary::new(env, line.text.len());
            bin.as_mut_slice().copy_from_slice(line.text);
            let text: Term = bin.into();
            let mut metadata = Term::map_new(env);
            if let Some(caller) = line.caller {
                metadata = metadata.map_put(atoms::caller(), caller.pid).expect("a new key");
            }
            if let Some(module) = line.module {
                metadata = metadata.map_put(atoms::python_module(), module).expect("a new key");
            }
            if let Some(function) = line.function {
                metadata = metadata.map_put(atoms::python_function(), function).expect("a new key");
            }
            (atoms::snakebridge_log(), line.os_pid, level, text, metadata)
        });
    }

    /// `{:snakebridge_output, ref, :stdout | :stderr, line}` to the caller,
    /// for a call made with `output: :caller`.
    fn output(&self, courier: &mut Courier, caller: &Caller, stream: Stream, text: &[u8]) -> bool {
        if !caller.output {
            return false;
        }
        courier.send(&caller.pid, |env| {
            let reference = env
                .binary_to_term(caller.reference.as_slice())
                .map(|(term, _)| term)
                .expect("a reference encoded by term_to_binary decodes");
            let device = if stream == Stream::Stderr { atoms::stderr() } else { atoms::stdout() };
            let mut bin = rustler::NewBinary::new(env, text.len());
            bin.as_mut_slice().copy_from_slice(text);
            let line: Term = bin.into();
            (atoms::snakebridge_output(), reference, device, line)
        });
        true
    }

    fn log_dropped(&self, courier: &mut Courier, count: u64) {
        courier.send(&self.owner, |_| (atoms::snakebridge_log_dropped(), count));
    }

    fn caller_alive(&self, courier: &mut Courier, caller: &Caller) -> bool {
        // enif_is_process_alive supports threads the VM does not manage.
        courier.env.run(|env| caller.pid.is_alive(env))
    }

    fn event(&self, courier: &mut Courier, os_pid: u32, event: WorkerEvent) {
        courier.send(&self.owner, |env| {
            let event = match event {
                WorkerEvent::Started { python } => (atoms::started(), python).encode(env),
                WorkerEvent::Exited(exit) => {
                    let failure = snakebridge_runtime::Failure {
                        reason: Reason::WorkerExited,
                        message: exit.to_string(),
                        os_pid: Some(os_pid),
                        exit: Some(exit),
                    };
                    (atoms::exited(), errors::failure(env, &failure)).encode(env)
                }
                WorkerEvent::StartFailed { message } => (atoms::start_failed(), message).encode(env),
                WorkerEvent::Recycling { reason } => {
                    let reason = Atom::from_str(env, reason.as_str()).expect("reasons are valid atoms");
                    (atoms::recycling(), reason).encode(env)
                }
            };
            (atoms::snakebridge_worker(), os_pid, event)
        });
    }
}
