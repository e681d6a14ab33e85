//! The SnakeBridge NIF: BEAM terms in, frames out; frames in, BEAM messages
//! out. Everything with processes, sockets and threads lives in
//! `snakebridge_runtime`; this crate only translates.
//!
//! | module     | what it holds                                              |
//! |------------|------------------------------------------------------------|
//! | `call`     | `submit/5`, `submit_dirty/5`, `cancel/1`                   |
//! | `pool`     | `pool_start/2`, `pool_stop/1`, `stats/1`, the pool registry |
//! | `encode`   | term → msgpack, with the path to anything unsupported      |
//! | `decode`   | msgpack → term                                             |
//! | `delivery` | the runtime's hooks: replies, logs and events as messages  |
//! | `errors`   | `%SnakeBridge.Error{}` and `%SnakeBridge.PythonError{}`    |

mod atoms;
mod call;
mod decode;
mod delivery;
mod encode;
mod errors;
mod pool;

rustler::init!("Elixir.SnakeBridge.NIF");
