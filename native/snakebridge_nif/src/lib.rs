//! The SnakeBridge NIF: BEAM terms in, frames out; frames in, BEAM messages
//! out. Everything with processes, sockets and threads lives in
//! `snakebridge_runtime`; this crate only translates.
//!
//! | module     | what it holds                                              |
//! |------------|------------------------------------------------------------|
//! | `call`     | `submit/8`, `submit_dirty/8`, `stream_credit/2`, `cancel/1,2` |
//! | `object`   | `%SnakeBridge.Object{}`'s resource, `release/1`, `object_os_pid/1` |
//! | `pool`     | `pool_start/2`, `pool_stop/1`, `pool_restart/1`, `stats/1`, the pool registry |
//! | `encode`   | term → msgpack, with the path to anything unsupported      |
//! | `decode`   | msgpack → term                                             |
//! | `delivery` | the runtime's hooks: replies, logs and events as messages  |
//! | `reader`   | `reader_route/2`, `reader_close/1`: a worker's socket read through a port |
//! | `errors`   | `%SnakeBridge.Error{}` and `%SnakeBridge.PythonError{}`    |

mod atoms;
mod call;
mod data;
mod decode;
mod delivery;
mod encode;
mod encode_error;
mod errors;
mod object;
mod pool;
mod reader;

rustler::init!("Elixir.SnakeBridge.NIF", load = load);

/// `load_info` is `%MapSet{}` without its `:map` field, so replies can build
/// sets exactly as this Elixir version does.
fn load(_env: rustler::Env, load_info: rustler::Term) -> bool {
    let fields = rustler::types::map::MapIterator::new(load_info)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.atom_to_string().ok()?, v.decode::<i64>().ok()?)))
        .collect();
    decode::set_mapset_fields(fields);
    reap_own_children();
    true
}

/// The BEAM ignores SIGCHLD, which makes the kernel reap children on its
/// own: the runtime could then never learn a worker's exit status, and
/// `std::process::Command` panics when it cannot wait for a child whose exec
/// failed. Port programs are children of erl_child_setup, not of the VM, so
/// restoring the default action only affects children the VM's own threads
/// start, which their starters reap (the runtime always does).
fn reap_own_children() {
    // Raw libc: nix's `sigaction` always installs an action (it returns the
    // old one), so it cannot read the disposition without changing it, and
    // briefly resetting a handler the VM installed could lose a SIGCHLD.
    // SAFETY: reads, and possibly resets, the process's SIGCHLD disposition;
    // SIG_DFL runs no code of ours in a signal context.
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGCHLD, std::ptr::null(), &mut current) == 0
            && current.sa_sigaction == libc::SIG_IGN
        {
            let mut default: libc::sigaction = std::mem::zeroed();
            default.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(libc::SIGCHLD, &default, std::ptr::null_mut());
        }
    }
}
