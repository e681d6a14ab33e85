//! The runtime's hooks: every reply, log line and worker event becomes a
//! message to a BEAM process.
//!
//! These run only on runtime threads, which the VM does not manage: that is
//! where `OwnedEnv::send_and_clear` is allowed (it panics on scheduler
//! threads, dirty ones included).

use rustler::{Atom, Encoder, Env, LocalPid, OwnedBinary, OwnedEnv, Term};
use snakebridge_protocol::{decode_value, DecodeError};
use snakebridge_runtime::{Hooks, Origin, Outcome, Reason, Stream, WorkerEvent};

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

    fn log(&self, env: &mut OwnedEnv, os_pid: u32, stream: Stream, line: &[u8]) {
        let _ = env.send_and_clear(&self.owner, |env| {
            let stream = match stream {
                Stream::Stdout => atoms::stdout(),
                Stream::Stderr => atoms::stderr(),
            };
            let mut bin = rustler::NewBinary::new(env, line.len());
            bin.as_mut_slice().copy_from_slice(line);
            let line: Term = bin.into();
            (atoms::snakebridge_log(), os_pid, stream, line)
        });
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
