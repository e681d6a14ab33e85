//! Submitting and cancelling calls.

use std::hash::{DefaultHasher, Hasher};

use rustler::{Atom, Binary, Encoder, Env, NifResult, ResourceArc, Term};
use snakebridge_protocol::value as wire;
use snakebridge_protocol::{FrameWriter, Kind, CALL_TIMED};
use snakebridge_runtime::{monotonic_micros, Call, CancelOutcome, CancelReason, Sent};

use crate::atoms;
use crate::delivery::Caller;
use crate::object::ObjectResource;
use crate::encode::{EncodeError, TermEncoder};
use crate::errors;
use crate::pool::{call_table, lookup, not_found};

/// Bytes a normal scheduler may encode before the call moves to a dirty one:
/// well under a millisecond of work.
const NORMAL_BUDGET: usize = 64 * 1024;

/// Largest buffer a dirty scheduler keeps for its next large call.
const KEEP_FRAME: usize = 16 * 1024 * 1024;

thread_local! {
    /// A dirty scheduler's buffer for large calls, kept between calls:
    /// faulting in the pages of a fresh multi-megabyte buffer costs more
    /// than encoding into it.
    static SPARE_FRAME: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Offset of the 8 id bytes from the frame start: the length header, the
/// array marker, the kind, and the `uint64` marker.
const ID_OFFSET: usize = 4 + 1 + 1 + 1;

/// What a call asks of its worker besides arguments: `flags` (the
/// protocol's call flags, plus the host's own above them) and, for a
/// stream, `window`, the items it may send before the consumer grants more.
#[derive(rustler::NifTuple)]
struct Mode {
    flags: u64,
    window: u64,
}

/// Flags at and above this bit are the host's, never sent to the worker.
const HOST_FLAGS: u64 = 1 << 16;
/// `output: :caller`: the call's `print` output goes to its caller.
const OUTPUT_CALLER: u64 = 1 << 16;
/// `output: :log`: the call's output is logged, whatever the pool's default.
const OUTPUT_LOG: u64 = 1 << 17;
/// The call goes to the workers in turn, not where its caller's objects
/// are (`SnakeBridge.Session.new/1`).
const SPREAD: u64 = 1 << 18;
/// The caller waits for the reply at once (`SnakeBridge.call/4`): submit
/// answers `{:alone, ref}` instead of `{:ok, ref}` when the worker was
/// running no other call, and the caller may poll for the reply before it
/// sleeps (`SnakeBridge.Poll`).
const WAITING: u64 = 1 << 19;

/// Encodes and queues a call on a normal scheduler; returns `:dirty` when
/// the arguments are too big for that, and the caller retries with
/// [`submit_dirty`].
///
/// `target` is a module name or a `%SnakeBridge.Object{}`; `function` is a
/// name, or nil to call the object itself. `near` is nil, or the resource
/// of an object whose worker must run the call (`:worker`).
#[rustler::nif]
#[allow(clippy::too_many_arguments)]
fn submit<'a>(
    env: Env<'a>,
    pool: Atom,
    target: Term<'a>,
    function: Term<'a>,
    positional: Term<'a>,
    kwargs: Term<'a>,
    timeout: Term<'a>,
    mode: Mode,
    near: Term<'a>,
) -> NifResult<Term<'a>> {
    let request = Request { target, function, positional, kwargs, near };
    submit_call(env, pool, request, timeout, mode, NORMAL_BUDGET)
}

#[rustler::nif(schedule = "DirtyCpu")]
#[allow(clippy::too_many_arguments)]
fn submit_dirty<'a>(
    env: Env<'a>,
    pool: Atom,
    target: Term<'a>,
    function: Term<'a>,
    positional: Term<'a>,
    kwargs: Term<'a>,
    timeout: Term<'a>,
    mode: Mode,
    near: Term<'a>,
) -> NifResult<Term<'a>> {
    let request = Request { target, function, positional, kwargs, near };
    submit_call(env, pool, request, timeout, mode, usize::MAX)
}

/// The terms that make up a call.
struct Request<'a> {
    target: Term<'a>,
    function: Term<'a>,
    positional: Term<'a>,
    kwargs: Term<'a>,
    near: Term<'a>,
}

fn submit_call<'a>(
    env: Env<'a>,
    pool_name: Atom,
    request: Request<'a>,
    timeout: Term<'a>,
    mode: Mode,
    budget: usize,
) -> NifResult<Term<'a>> {
    let deadline = deadline_after(timeout)?;
    let Some(pool) = lookup(pool_name) else {
        return Ok(not_found(env, pool_name));
    };
    let function = if request.function == atoms::nil().to_term(env) {
        None
    } else {
        match request.function.decode::<Binary>().map(|b| std::str::from_utf8(b.as_slice())) {
            Ok(Ok(function)) => Some(function),
            _ => return Ok(errors::error_tuple(env, atoms::unsupported_type(), "function names must be UTF-8 strings")),
        }
    };

    let reuse = budget == usize::MAX;
    let mut frame = if reuse { SPARE_FRAME.take() } else { Vec::with_capacity(128) };
    frame.clear();
    let start = FrameWriter::begin(&mut frame);
    // [1, id, deadline, target, function, args, kwargs, flags, window], with
    // the id as a fixed-width uint64 so it can be filled in once the call
    // has its reference.
    frame.extend_from_slice(&[0x99, Kind::Call as u8, 0xcf, 0, 0, 0, 0, 0, 0, 0, 0]);
    wire::write_u64(&mut frame, deadline);
    let mut encoder = TermEncoder::new(&mut frame, budget);
    if request.near != atoms::nil().to_term(env) {
        let near: ResourceArc<ObjectResource> = request.near.decode()?;
        let Some(object) = near.get() else {
            let message = "the :worker object (or session) was released with SnakeBridge.release/1";
            return Ok(errors::error_tuple(env, atoms::stale_handle(), message));
        };
        // First among the call's objects: it decides the worker, and an
        // object of the call held elsewhere is a conflict.
        encoder.objects.push(object);
    }
    let encoded = (|| {
        let names = |e: snakebridge_protocol::EncodeError| (EncodeError::from(e), "");
        match request.target.decode::<Binary>() {
            Ok(module) => {
                let module = std::str::from_utf8(module.as_slice()).map_err(|_| {
                    (EncodeError::Unsupported { what: "a module name that is not UTF-8".into(), path: Vec::new() }, "module")
                })?;
                wire::write_str(encoder.out, module).map_err(names)?;
            }
            Err(_) => encoder.object(request.target).map_err(|e| (e, "target"))?,
        }
        match function {
            Some(function) => wire::write_str(encoder.out, function).map_err(names)?,
            None => wire::write_nil(encoder.out),
        }
        encoder.args(request.positional).map_err(|e| (e, "args"))?;
        encoder.kwargs(request.kwargs).map_err(|e| (e, "kwargs"))?;
        wire::write_u64(encoder.out, mode.flags & (HOST_FLAGS - 1));
        wire::write_u64(encoder.out, mode.window);
        Ok::<_, (EncodeError, &str)>(())
    })();
    let objects = std::mem::take(&mut encoder.objects);
    let limit = pool.payload_limit();
    let encoded = encoded.and_then(|()| FrameWriter::finish_within(&mut frame, start, limit).map_err(|e| (e.into(), "")));
    if let Err((error, root)) = encoded {
        let reason = match error {
            EncodeError::NeedsDirty => return Ok(atoms::dirty().encode(env)),
            EncodeError::Unsupported { .. } => atoms::unsupported_type(),
            EncodeError::TooDeep { .. } => atoms::nesting_too_deep(),
            EncodeError::Released { .. } => atoms::stale_handle(),
            EncodeError::Conflict { .. } => atoms::handle_conflict(),
            EncodeError::TooLarge(_) => {
                let message = format!("the call's arguments exceed the pool's {limit} byte message limit (:max_payload)");
                return Ok(errors::error_tuple(env, atoms::payload_too_large(), &message));
            }
        };
        return Ok(errors::error_tuple(env, reason, &error.describe(root)));
    }

    let caller_pid = env.pid();
    let output = mode.flags & OUTPUT_CALLER != 0 || (mode.flags & OUTPUT_LOG == 0 && pool.hooks().output_to_caller);
    // The pid's term value (an immediate) names the process for affinity;
    // a spread call follows no one.
    let owner = if mode.flags & SPREAD != 0 { 0 } else { caller_pid.encode(env).as_c_arg() as u64 };
    let (reference, call) = loop {
        let reference = env.make_ref();
        let bytes = reference.encode(env).to_binary();
        let id = call_id(bytes.as_slice());
        let caller = Caller {
            pid: caller_pid,
            reference: bytes,
            output,
            submitted_at: if mode.flags & CALL_TIMED != 0 { monotonic_micros() } else { 0 },
        };
        let call = Call::owned(id, caller, owner);
        // A hash collision with a pending call: take a fresh reference.
        if call_table().insert(call.clone()) {
            break (reference, call);
        }
    };
    frame[ID_OFFSET..ID_OFFSET + 8].copy_from_slice(&call.id.to_be_bytes());
    let submitted = match objects.first() {
        Some(first) => pool.submit_pinned(call, frame, first.route(), objects),
        None if mode.flags & SPREAD != 0 => pool.submit_spread(call, frame),
        None => {
            let submitted = pool.submit_reusing(call, &mut frame);
            // Left here when it was written at once.
            if reuse && frame.capacity() <= KEEP_FRAME {
                SPARE_FRAME.set(frame);
            }
            submitted
        }
    };
    match submitted {
        // Output lines come ahead of the reply as messages of their own,
        // which only a caller that waits in `receive` handles.
        Ok(Sent::Alone) if mode.flags & WAITING != 0 && !output => Ok((atoms::alone(), reference).encode(env)),
        Ok(_) => Ok((atoms::ok(), reference).encode(env)),
        Err(failure) => Ok((atoms::error(), errors::failure(env, &failure)).encode(env)),
    }
}

/// The protocol's deadline for a call that may take `timeout` (milliseconds
/// or `:infinity`): `CLOCK_MONOTONIC` microseconds, 0 for none.
fn deadline_after(timeout: Term) -> NifResult<u64> {
    if timeout.is_atom() {
        return if timeout == atoms::infinity().to_term(timeout.get_env()) {
            Ok(0)
        } else {
            Err(rustler::Error::BadArg)
        };
    }
    let ms: u64 = timeout.decode()?;
    Ok(snakebridge_runtime::monotonic_micros().saturating_add(ms.saturating_mul(1000)).max(1))
}

/// A call's id is a hash of its reference, so `cancel/1` finds it from the
/// reference alone; insertion rejects the rare collision.
fn call_id(reference: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    h.write(reference);
    h.finish()
}

/// Lets the stream started with `reference` send `n` more items: `:ok`, or
/// `:closed` when it is not running any more.
#[rustler::nif]
fn stream_credit(reference: Term, n: u64) -> NifResult<Atom> {
    if !reference.is_ref() {
        return Err(rustler::Error::BadArg);
    }
    let bytes = reference.to_binary();
    let granted = call_table().grant_credit(call_id(bytes.as_slice()), n, |caller| {
        caller.reference.as_slice() == bytes.as_slice()
    });
    Ok(if granted { atoms::ok() } else { atoms::closed() })
}

/// Cancels the call made with `reference`. `:cancelled` means no reply will
/// ever arrive; `:replied` means it is in, or on its way to, the caller's
/// mailbox; `:unknown` means no call with that reference is pending.
#[rustler::nif]
fn cancel(reference: Term) -> NifResult<Atom> {
    cancel_with(reference, CancelReason::Caller)
}

/// `cancel/1`, saying why: `:timeout` for a caller that gave up waiting,
/// which counts against the pool's circuit breaker, or `:cancelled`.
#[rustler::nif(name = "cancel")]
fn cancel_because(reference: Term, why: Atom) -> NifResult<Atom> {
    let why = if why == atoms::timeout() {
        CancelReason::Timeout
    } else if why == atoms::cancelled() {
        CancelReason::Caller
    } else {
        return Err(rustler::Error::BadArg);
    };
    cancel_with(reference, why)
}

fn cancel_with(reference: Term, why: CancelReason) -> NifResult<Atom> {
    if !reference.is_ref() {
        return Err(rustler::Error::BadArg);
    }
    let bytes = reference.to_binary();
    let outcome = call_table().cancel_because(call_id(bytes.as_slice()), why, |caller| {
        caller.reference.as_slice() == bytes.as_slice()
    });
    Ok(match outcome {
        CancelOutcome::Cancelled => atoms::cancelled(),
        CancelOutcome::Replied => atoms::replied(),
        CancelOutcome::Unknown => atoms::unknown(),
    })
}
