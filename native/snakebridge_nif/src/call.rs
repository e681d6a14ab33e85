//! Submitting and cancelling calls.

use std::hash::{DefaultHasher, Hasher};

use rustler::{Atom, Binary, Encoder, Env, NifResult, Term};
use snakebridge_protocol::{FrameWriter, Kind, MAX_FRAME_LEN};
use snakebridge_runtime::{Call, CancelOutcome};

use crate::atoms;
use crate::delivery::Caller;
use crate::encode::{EncodeError, TermEncoder};
use crate::errors;
use crate::pool::{call_table, lookup, not_found};

/// Bytes a normal scheduler may encode before the call moves to a dirty one:
/// well under a millisecond of work.
const NORMAL_BUDGET: usize = 64 * 1024;

/// Offset of the 8 id bytes from the frame start: the length header, the
/// array marker, the kind, and the `uint64` marker.
const ID_OFFSET: usize = 4 + 1 + 1 + 1;

/// Encodes and queues a call on a normal scheduler; returns `:dirty` when
/// the arguments are too big for that, and the caller retries with
/// [`submit_dirty`].
#[rustler::nif]
fn submit<'a>(
    env: Env<'a>,
    pool: Atom,
    module: Binary,
    function: Binary,
    positional: Term<'a>,
    kwargs: Term<'a>,
    timeout: Term<'a>,
) -> NifResult<Term<'a>> {
    submit_call(env, pool, module, function, positional, kwargs, timeout, NORMAL_BUDGET)
}

#[rustler::nif(schedule = "DirtyCpu")]
fn submit_dirty<'a>(
    env: Env<'a>,
    pool: Atom,
    module: Binary,
    function: Binary,
    positional: Term<'a>,
    kwargs: Term<'a>,
    timeout: Term<'a>,
) -> NifResult<Term<'a>> {
    submit_call(env, pool, module, function, positional, kwargs, timeout, usize::MAX)
}

fn submit_call<'a>(
    env: Env<'a>,
    pool_name: Atom,
    module: Binary,
    function: Binary,
    positional: Term<'a>,
    kwargs: Term<'a>,
    timeout: Term<'a>,
    budget: usize,
) -> NifResult<Term<'a>> {
    let deadline = deadline_after(timeout)?;
    let Some(pool) = lookup(pool_name) else {
        return Ok(not_found(env, pool_name));
    };
    let (Ok(module), Ok(function)) = (std::str::from_utf8(module.as_slice()), std::str::from_utf8(function.as_slice())) else {
        return Ok(errors::error_tuple(env, atoms::unsupported_type(), "module and function names must be UTF-8"));
    };

    let mut frame = Vec::with_capacity(128);
    let start = FrameWriter::begin(&mut frame);
    // [1, id, deadline, module, function, args, kwargs], with the id as a
    // fixed-width uint64 so it can be filled in once the call has its
    // reference.
    frame.extend_from_slice(&[0x97, Kind::Call as u8, 0xcf, 0, 0, 0, 0, 0, 0, 0, 0]);
    snakebridge_protocol::value::write_u64(&mut frame, deadline);
    let encoded = (|| {
        let names = |e: snakebridge_protocol::EncodeError| (EncodeError::from(e), "");
        snakebridge_protocol::value::write_str(&mut frame, module).map_err(names)?;
        snakebridge_protocol::value::write_str(&mut frame, function).map_err(names)?;
        let mut encoder = TermEncoder::new(&mut frame, budget);
        encoder.args(positional).map_err(|e| (e, "args"))?;
        encoder.kwargs(kwargs).map_err(|e| (e, "kwargs"))?;
        Ok::<_, (EncodeError, &str)>(())
    })()
    .and_then(|()| FrameWriter::finish(&mut frame, start).map_err(|e| (e.into(), "")));
    if let Err((error, root)) = encoded {
        return Ok(match error {
            EncodeError::NeedsDirty => atoms::dirty().encode(env),
            EncodeError::Unsupported { .. } => errors::error_tuple(env, atoms::unsupported_type(), &error.describe(root)),
            EncodeError::TooDeep { .. } => errors::error_tuple(env, atoms::nesting_too_deep(), &error.describe(root)),
            EncodeError::TooLarge(_) => {
                let message = format!("the call's arguments exceed the {MAX_FRAME_LEN} byte message limit");
                errors::error_tuple(env, atoms::payload_too_large(), &message)
            }
        });
    }

    let caller_pid = env.pid();
    let (reference, call) = loop {
        let reference = env.make_ref();
        let bytes = reference.encode(env).to_binary();
        let call = Call::new(call_id(bytes.as_slice()), Caller { pid: caller_pid, reference: bytes });
        // A hash collision with a pending call: take a fresh reference.
        if call_table().insert(call.clone()) {
            break (reference, call);
        }
    };
    frame[ID_OFFSET..ID_OFFSET + 8].copy_from_slice(&call.id.to_be_bytes());
    match pool.submit(call, frame) {
        Ok(()) => Ok((atoms::ok(), reference).encode(env)),
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

/// Cancels the call made with `reference`. `:cancelled` means no reply will
/// ever arrive; `:replied` means it is in, or on its way to, the caller's
/// mailbox; `:unknown` means no call with that reference is pending.
#[rustler::nif]
fn cancel(reference: Term) -> NifResult<Atom> {
    if !reference.is_ref() {
        return Err(rustler::Error::BadArg);
    }
    let bytes = reference.to_binary();
    let outcome = call_table().cancel(call_id(bytes.as_slice()), |caller| caller.reference.as_slice() == bytes.as_slice());
    Ok(match outcome {
        CancelOutcome::Cancelled => atoms::cancelled(),
        CancelOutcome::Replied => atoms::replied(),
        CancelOutcome::Unknown => atoms::unknown(),
    })
}
