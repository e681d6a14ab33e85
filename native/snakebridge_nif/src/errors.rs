//! The two exception structs, built as maps so the runtime's threads can
//! create them without calling into Elixir. Field sets must match
//! `lib/snakebridge/error.ex` and `lib/snakebridge/python_error.ex`.

use rustler::{Atom, Encoder, Env, Term};
use snakebridge_runtime::{ExitInfo, Failure, PythonError};

use crate::atoms;

/// A map with atom keys, built in one go (the keys must be distinct).
pub fn atom_map<'a>(env: Env<'a>, fields: &[(Atom, Term<'a>)]) -> Term<'a> {
    let keys: Vec<Term<'a>> = fields.iter().map(|(k, _)| k.encode(env)).collect();
    let values: Vec<Term<'a>> = fields.iter().map(|(_, v)| *v).collect();
    Term::map_from_term_arrays(env, &keys, &values).expect("distinct atom keys")
}

/// `%SnakeBridge.Error{reason: reason, message: message, details: details}`.
pub fn error<'a>(env: Env<'a>, reason: Atom, message: &str, details: Term<'a>) -> Term<'a> {
    atom_map(
        env,
        &[
            (atoms::struct_(), atoms::error_struct().encode(env)),
            (atoms::exception(), true.encode(env)),
            (atoms::reason(), reason.encode(env)),
            (atoms::message(), message.encode(env)),
            (atoms::details(), details),
        ],
    )
}

/// `{:error, %SnakeBridge.Error{}}` with empty details.
pub fn error_tuple<'a>(env: Env<'a>, reason: Atom, message: &str) -> Term<'a> {
    (atoms::error(), error(env, reason, message, Term::map_new(env))).encode(env)
}

pub fn failure<'a>(env: Env<'a>, failure: &Failure) -> Term<'a> {
    let mut details = Term::map_new(env);
    if let Some(pid) = failure.os_pid {
        details = details.map_put(atoms::os_pid(), pid).expect("map");
    }
    match failure.exit {
        Some(ExitInfo::Status(code)) => details = details.map_put(atoms::exit_status(), code).expect("map"),
        Some(ExitInfo::Signal(sig)) => details = details.map_put(atoms::signal(), sig).expect("map"),
        None => {}
    }
    let reason = Atom::from_str(env, failure.reason.as_str()).expect("reason names are valid atoms");
    error(env, reason, &failure.message, details)
}

/// `%SnakeBridge.PythonError{}`; `attributes` is the decoded map of the
/// exception's attributes.
pub fn python_error<'a>(env: Env<'a>, e: &PythonError, attributes: Term<'a>) -> Term<'a> {
    atom_map(
        env,
        &[
            (atoms::struct_(), atoms::python_error_struct().encode(env)),
            (atoms::exception(), true.encode(env)),
            (atoms::type_(), e.exc_type.encode(env)),
            (atoms::module(), e.exc_module.encode(env)),
            (atoms::message(), e.message.encode(env)),
            (atoms::traceback(), e.traceback.encode(env)),
            (atoms::attributes(), attributes),
        ],
    )
}
