//! The worker's side of the shared-memory transport (see
//! `snakebridge_protocol::shm`): the host creates two arenas when it spawns
//! the worker and passes their memfds (`--shm CALLS,REPLIES`). Large call
//! frames arrive as descriptors of bodies in the calls arena, freed once
//! handled; large replies are moved into the replies arena just before
//! they are written, and the host frees them when it is done.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use snakebridge_protocol::shm::{self, Arena, Shared};
use snakebridge_protocol::{DecodeError, Header, Kind, Message, HEADER_LEN, MAX_FRAME_LEN};

struct Arenas {
    calls: Arc<Arena>,
    replies: Arc<Arena>,
}

static ARENAS: OnceLock<Arenas> = OnceLock::new();
/// Buffers shrink back to this after a large reply.
const KEEP_CAPACITY: usize = 1 << 20;

static MAX_PAYLOAD: AtomicUsize = AtomicUsize::new(MAX_FRAME_LEN);

/// `_native.attach_shared(calls_fd, replies_fd)`: maps the arenas the host
/// passed, then closes the descriptors (the mappings keep the memory, and
/// subprocesses of user code must not inherit them). Once per process.
#[pyfunction]
pub(crate) fn attach_shared(calls_fd: RawFd, replies_fd: RawFd) -> PyResult<()> {
    // SAFETY: the host passed these descriptors for this process alone, and
    // nothing else in it uses them: ownership moves here, and they close
    // when mapped.
    let (calls, replies) = unsafe { (OwnedFd::from_raw_fd(calls_fd), OwnedFd::from_raw_fd(replies_fd)) };
    let map = |fd: OwnedFd| Arena::open(&fd).map(Arc::new).map_err(|e| PyOSError::new_err(format!("shared memory: {e}")));
    let arenas = Arenas {
        calls: map(calls)?,
        replies: map(replies)?,
    };
    ARENAS
        .set(arenas)
        .map_err(|_| PyOSError::new_err("shared memory is attached already"))
}

/// `_native.set_max_payload(n)`: the largest result this worker encodes.
#[pyfunction]
pub(crate) fn set_max_payload(n: usize) {
    MAX_PAYLOAD.store(n, Ordering::Relaxed);
}

/// The largest frame body this worker sends.
pub(crate) fn max_payload() -> usize {
    MAX_PAYLOAD.load(Ordering::Relaxed)
}

/// The call body a descriptor from the host names; None for an ordinary
/// frame. Dropping the result frees its memory for the host.
pub(crate) fn incoming(body: &[u8]) -> Option<Result<Shared, DecodeError>> {
    shm::described(body).map(|named| {
        let (offset, len) = named?;
        match ARENAS.get() {
            Some(arenas) => arenas.calls.take(offset, len),
            None => Err(DecodeError::Invalid("a shared-memory descriptor, but no shared memory".into())),
        }
    })
}

/// Writes the reply to call `id` whose result is the large `bytes` value
/// `data` straight into the replies arena, with a descriptor in `out`: one
/// copy of the bytes instead of two (into `out`, then into the arena). False
/// when the reply should take the ordinary way (no shared memory, a small
/// or over-limit value, no room).
pub(crate) fn ok_bytes(out: &mut Vec<u8>, id: u64, data: &[u8]) -> bool {
    let Some(arenas) = ARENAS.get() else {
        return false;
    };
    let mut head = Vec::with_capacity(24);
    Header { kind: Kind::Ok, id }.write(&mut head);
    let Ok(len) = u32::try_from(data.len()) else {
        return false;
    };
    rmp::encode::write_bin_len(&mut head, len).expect("writing to a Vec cannot fail");
    if data.len() < shm::SHARED_MIN || head.len() + data.len() > max_payload() {
        return false;
    }
    match arenas.replies.place_parts(&[&head, data]) {
        Some(descriptor) => {
            out.extend_from_slice(&descriptor);
            true
        }
        None => false,
    }
}

/// Moves the large frame bodies in `out` (whole frames) into the replies
/// arena, leaving descriptors in their place; `scratch` is reused, and `out`
/// keeps its buffer (see [`keep_capacity`]). A body
/// that finds no room stays on the socket if the socket can carry it, and is
/// otherwise answered with a `payload_too_large` failure.
pub(crate) fn offload(out: &mut Vec<u8>, scratch: &mut Vec<u8>) {
    let Some(arenas) = ARENAS.get() else {
        return;
    };
    if !has_large_frame(out) {
        return;
    }
    scratch.clear();
    let mut rest = &out[..];
    while rest.len() >= HEADER_LEN {
        let len = u32::from_be_bytes(rest[..HEADER_LEN].try_into().expect("a header")) as usize;
        let (frame, after) = rest.split_at(HEADER_LEN + len);
        rest = after;
        let body = &frame[HEADER_LEN..];
        if len < shm::SHARED_MIN {
            scratch.extend_from_slice(frame);
        } else if let Some(descriptor) = arenas.replies.place(body) {
            scratch.extend_from_slice(&descriptor);
        } else if len <= MAX_FRAME_LEN {
            scratch.extend_from_slice(frame);
        } else {
            no_room(scratch, body, arenas.replies.capacity());
        }
    }
    out.clear();
    out.extend_from_slice(scratch);
    scratch.clear();
    if scratch.capacity() > KEEP_CAPACITY {
        *scratch = Vec::new();
    }
}

/// The reply buffer capacity the worker keeps after a flush: with shared
/// memory, large replies are common enough to keep the pages of one
/// faulted in (up to the arena's warm part); otherwise 1 MiB.
pub(crate) fn keep_capacity() -> usize {
    match ARENAS.get() {
        Some(_) => shm::WARM_BYTES,
        None => KEEP_CAPACITY,
    }
}

fn has_large_frame(mut out: &[u8]) -> bool {
    while out.len() >= HEADER_LEN {
        let len = u32::from_be_bytes(out[..HEADER_LEN].try_into().expect("a header")) as usize;
        if len >= shm::SHARED_MIN {
            return true;
        }
        out = &out[(HEADER_LEN + len).min(out.len())..];
    }
    false
}

/// The failure that replaces a result too large for the socket when the
/// arena has no room (results still referenced by the host hold it).
fn no_room(out: &mut Vec<u8>, body: &[u8], capacity: usize) {
    let mut fields = body;
    let Ok(header) = Header::read(&mut fields) else {
        return;
    };
    if !matches!(header.kind, Kind::Ok | Kind::Items) {
        return;
    }
    Message::Failure {
        id: header.id,
        reason: "payload_too_large".to_owned(),
        message: format!(
            "the result encodes to {} bytes, over the socket's {MAX_FRAME_LEN} byte frame limit, and the \
             worker's {capacity} byte shared memory has no room for it (earlier results still in use hold it)",
            body.len()
        ),
    }
    .write_frame(out)
    .expect("a failure frame is small");
}

#[cfg(test)]
mod tests {
    use snakebridge_protocol::FrameWriter;

    use super::*;

    #[test]
    fn has_large_frame_finds_one_among_small_ones() {
        let mut out = Vec::new();
        Message::Ping { id: 1 }.write_frame(&mut out).unwrap();
        assert!(!has_large_frame(&out));
        let start = FrameWriter::begin(&mut out);
        out.resize(out.len() + shm::SHARED_MIN, 0);
        FrameWriter::finish(&mut out, start).unwrap();
        assert!(has_large_frame(&out));
    }
}
