//! The runtime's hooks: every reply, log line and worker event becomes a
//! message to a BEAM process.
//!
//! These run only on runtime threads, which the VM does not manage: that is
//! where `OwnedEnv::send_and_clear` is allowed (it panics on scheduler
//! threads, dirty ones included).

use rustler::{Atom, Encoder, Env, LocalPid, OwnedBinary, OwnedEnv, Term};
use snakebridge_protocol::{decode_value, DecodeError};
use snakebridge_runtime::{Hooks, LogLine, Origin, Outcome, Reason, WorkerEvent};

use crate::atoms;
use crate::decode::TermBuilder;
use crate::errors;

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
    fn value<'a>(&self, env: Env<'a>, mut bytes: &[u8], origin: &Origin<'_>, problem: &mut Option<DecodeError>) -> Result<Term<'a>, Term<'a>> {
        let mut builder = TermBuilder {
            env,
            origin,
            pool: self.pool,
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
    type Courier = OwnedEnv;

    fn courier(&self) -> OwnedEnv {
        OwnedEnv::new()
    }

    fn deliver(&self, env: &mut OwnedEnv, caller: &Caller, outcome: Outcome<'_>) -> Result<(), DecodeError> {
        let mut problem = None;
        // A failed send means the caller is gone: nobody is waiting.
        let _ = env.send_and_clear(&caller.pid, |env| {
            let reference = env
                .binary_to_term(caller.reference.as_slice())
                .map(|(term, _)| term)
                .expect("a reference encoded by term_to_binary decodes");
            match outcome {
                Outcome::Ok(bytes, origin) => {
                    let result = match self.value(env, bytes, origin, &mut problem) {
                        Ok(value) => (atoms::ok(), value).encode(env),
                        Err(error) => error,
                    };
                    (atoms::snakebridge(), reference, result)
                }
                // A stream's items, as a list; the stream still ends with a
                // `:snakebridge` message. Items that do not decode end it.
                Outcome::Items(bytes, origin) => match self.value(env, bytes, origin, &mut problem) {
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
    fn log(&self, env: &mut OwnedEnv, line: LogLine<'_, Caller>) {
        let _ = env.send_and_clear(&self.owner, |env| {
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

    fn log_dropped(&self, env: &mut OwnedEnv, count: u64) {
        let _ = env.send_and_clear(&self.owner, |env| (atoms::snakebridge_log_dropped(), count).encode(env));
    }

    fn caller_alive(&self, env: &mut OwnedEnv, caller: &Caller) -> bool {
        // enif_is_process_alive supports threads the VM does not manage.
        env.run(|env| caller.pid.is_alive(env))
    }

    fn event(&self, env: &mut OwnedEnv, os_pid: u32, event: WorkerEvent) {
        let _ = env.send_and_clear(&self.owner, |env| {
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
}
