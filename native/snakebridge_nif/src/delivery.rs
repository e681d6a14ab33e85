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
use snakebridge_runtime::{Hooks, LogLine, Origin, Outcome, Reader, Reason, WorkerEvent};

use crate::atoms;
use crate::decode::TermBuilder;
use crate::errors;
use crate::reader::{self, SharedBody};

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
}

/// Hooks for one pool; logs and events go to the pool's owner process.
pub struct Delivery {
    pub owner: LocalPid,
    /// The pool's name, which its objects carry.
    pub pool: Atom,
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
            origin,
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
}

impl Hooks for Delivery {
    type Caller = Caller;
    type Courier = Courier;

    fn courier(&self) -> Courier {
        Courier::new()
    }

    fn deliver(&self, courier: &mut Courier, caller: &Caller, outcome: Outcome<'_>) -> Result<(), DecodeError> {
        let mut problem = None;
        let backing = courier.backing.clone();
        // A failed send means the caller is gone: nobody is waiting.
        courier.send(&caller.pid, |env| {
            let backing = backing.as_ref().map(|shared| shared.make_binary(env, |s| s.0.bytes()));
            let reference = env
                .binary_to_term(caller.reference.as_slice())
                .map(|(term, _)| term)
                .expect("a reference encoded by term_to_binary decodes");
            match outcome {
                Outcome::Ok(bytes, origin) => {
                    let result = match self.value(env, bytes, origin, backing, &mut problem) {
                        Ok(value) => (atoms::ok(), value).encode(env),
                        Err(error) => error,
                    };
                    (atoms::snakebridge(), reference, result)
                }
                // A stream's items, as a list; the stream still ends with a
                // `:snakebridge` message. Items that do not decode end it.
                Outcome::Items(bytes, origin) => match self.value(env, bytes, origin, backing, &mut problem) {
                    Ok(items) => (atoms::snakebridge_stream(), reference, items),
                    Err(error) => (atoms::snakebridge(), reference, error),
                },
                Outcome::PythonError(e) => (atoms::snakebridge(), reference, (atoms::error(), errors::python_error(env, &e)).encode(env)),
                Outcome::Failed(f) => (atoms::snakebridge(), reference, (atoms::error(), errors::failure(env, &f)).encode(env)),
            }
        });
        problem.map_or(Ok(()), Err)
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
            };
            (atoms::snakebridge_worker(), os_pid, event)
        });
    }

    /// Hands the worker's socket to a reader process of the pool's (see
    /// `reader`); if the socket cannot be shared, the runtime reads it.
    fn attach(&self, courier: &mut Courier, worker: Reader<Self>) -> Result<(), Reader<Self>> {
        reader::hand_over(courier, &self.owner, worker)
    }
}
