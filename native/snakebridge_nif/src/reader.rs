//! Reading a worker's socket in the VM: `SnakeBridge.Reader`, a process per
//! worker, holds a port opened on a dup of the socket (`{:fd, fd, fd}`, as
//! a byte stream) and passes what it reads to `reader_route/2`, which
//! splits it into frames and routes each (a reply to its caller's mailbox,
//! stream items, log lines, ...) from that process's scheduler.
//!
//! Why a port: the schedulers poll port descriptors themselves, so a reply
//! wakes one scheduler, which runs the reader and then the caller. A reader
//! thread blocked in `read` costs a second wake-up per reply, and so does
//! `enif_select`, whose descriptors the schedulers never poll. The framing
//! is done here rather than by the port (`{:packet, 4}`) so that a bad
//! length header is caught at once, as the protocol's limits say, instead
//! of having the port wait for gigabytes.

use std::os::fd::{AsRawFd, BorrowedFd, IntoRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{recv, MsgFlags};
use parking_lot::Mutex;
use rustler::{Atom, Binary, Encoder, Env, LocalPid, ResourceArc};
use snakebridge_protocol::{build_cost, FrameDecoder};
use snakebridge_runtime::{Attach, Reader};

use crate::atoms;
use crate::delivery::{Courier, Delivery, SharedBody};

/// Frames larger than this are decoded on a dirty scheduler: on a normal one
/// they could take more than about a millisecond.
const NORMAL_BUDGET: usize = 256 * 1024;
/// Frames over this size are scanned first: building a term costs per value
/// (about 30 ns here), not per byte, so a frame of small values may need a
/// dirty scheduler well below `NORMAL_BUDGET`.
const SCAN_ABOVE: usize = 16 * 1024;
/// Most values a frame may hold to be decoded on a normal scheduler.
const NORMAL_VALUES: usize = 16 * 1024;
/// What a map entry or set element costs on top of its values, in values:
/// large maps and sets are built one insert at a time (see `decode`), about
/// 250 ns each here, so a set of 8,000 small ints took 1.6-3 ms.
const ENTRY_VALUES: usize = 8;
/// Most values a frame in shared memory may hold to be decoded on a normal
/// scheduler, whatever its size: its large binaries become sub-binaries of
/// the mapping (no copy), and so few values leave little else to copy.
/// Strings are checked for UTF-8 and tensors copied, though: those may
/// hold no more than `NORMAL_BUDGET` bytes in all.
const SHARED_NORMAL_VALUES: usize = 64;

pub struct ReaderResource {
    state: Mutex<State>,
    /// The dup the port reads. Closed by `reader_close/1`, after the port
    /// is: a port on a closed descriptor would poll whatever gets its
    /// number next.
    fd: Mutex<Option<OwnedFd>>,
}

struct State {
    /// None once the reader has finished.
    reader: Option<Reader<Delivery>>,
    decoder: FrameDecoder,
    courier: Courier,
}

#[rustler::resource_impl]
impl rustler::Resource for ReaderResource {}

impl Drop for ReaderResource {
    fn drop(&mut self) {
        // The reader process died without `reader_close/1`: its port may
        // still be open for an instant, so the descriptor is left open
        // rather than closed under it. (The reader, dropped with this,
        // has the worker replaced.)
        if let Some(fd) = self.fd.get_mut().take() {
            let _ = fd.into_raw_fd();
        }
    }
}

/// Sends `{:snakebridge_reader, os_pid, fd, resource}` to the pool process
/// `owner`, which starts the worker's reader process. Hands the reader back
/// when the socket cannot be shared.
pub fn hand_over(courier: &mut Courier, owner: &LocalPid, reader: Reader<Delivery>) -> Result<(), Reader<Delivery>> {
    let fd = match share(&reader) {
        Ok(fd) => fd,
        Err(_) => return Err(reader),
    };
    let (os_pid, raw) = (reader.os_pid(), fd.as_raw_fd());
    // The port misses the end of the socket when its last read fails (a
    // worker killed before it read all it was sent leaves a reset, and
    // the VM's fd driver then stops reading without a word): the reader
    // process is told of the exit through the pool process as well.
    let pool = *owner;
    reader.on_exit(move || {
        Courier::new().send(&pool, |env| (atoms::snakebridge_reader_exited(), os_pid).encode(env));
    });
    let resource = ResourceArc::new(ReaderResource {
        state: Mutex::new(State {
            reader: Some(reader),
            decoder: FrameDecoder::default(),
            courier: Courier::new(),
        }),
        fd: Mutex::new(Some(fd)),
    });
    // Should the pool process be gone, the message and the resource go
    // with it, and the dropped reader has the worker replaced.
    courier.send(owner, |env| (atoms::snakebridge_reader(), os_pid, raw, resource).encode(env));
    Ok(())
}

impl Attach for Delivery {
    /// Hands the worker's socket to a reader process of the pool's (see
    /// `hand_over`); if the socket cannot be shared, the runtime reads it.
    fn attach(&self, courier: &mut Courier, worker: Reader<Self>) -> Result<(), Reader<Self>> {
        hand_over(courier, &self.owner, worker)
    }
}

/// A dup of the worker's socket for a port, non-blocking as the VM's
/// polling needs (the flag is the socket's, shared with the runtime's end,
/// whose writes wait it out).
fn share(reader: &Reader<Delivery>) -> std::io::Result<OwnedFd> {
    // SAFETY: the reader's descriptor stays open while the reader lives.
    let socket = unsafe { BorrowedFd::borrow_raw(reader.fd()) };
    let fd = socket.try_clone_to_owned()?;
    let flags = OFlag::from_bits_retain(fcntl(&fd, FcntlArg::F_GETFL)?);
    fcntl(&fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(fd)
}

/// Routes the frames completed by `bytes`, read from the worker's socket:
/// `:ok`, or `:dirty` when it stopped at a frame too large to decode here
/// (route it with `reader_route_dirty/2`, giving no more bytes).
#[rustler::nif]
fn reader_route(env: Env, resource: ResourceArc<ReaderResource>, bytes: Binary) -> Atom {
    route(env, &resource, bytes.as_slice(), NORMAL_BUDGET)
}

/// `reader_route/2` on a dirty scheduler, for frames of any size.
#[rustler::nif(schedule = "DirtyCpu")]
fn reader_route_dirty(env: Env, resource: ResourceArc<ReaderResource>, bytes: Binary) -> Atom {
    route(env, &resource, bytes.as_slice(), usize::MAX)
}

fn route(env: Env, resource: &ReaderResource, bytes: &[u8], budget: usize) -> Atom {
    let mut state = resource.state.lock();
    let State { reader, decoder, courier } = &mut *state;
    let Some(worker) = reader.as_ref() else {
        return atoms::ok();
    };
    // A port's read is at most 64 KiB: copying it is a normal scheduler's
    // work, whatever the frame it belongs to.
    decoder.push(bytes);
    let routed = courier.in_call(env, |courier| loop {
        if decoder.peek_frame().is_some_and(|body| too_much_here(worker, body, budget)) {
            return Ok(false);
        }
        match decoder.next_frame() {
            Ok(Some(body)) => route_frame(worker, courier, body)?,
            Ok(None) => return Ok(true),
            Err(e) => return Err(format!("worker sent a bad frame: {e}")),
        }
    });
    worker.flush();
    match routed {
        Ok(true) => atoms::ok(),
        Ok(false) => atoms::dirty(),
        Err(problem) => {
            // The worker broke the protocol: it is replaced, and what else
            // it sent is not routed.
            if let Some(worker) = reader.take() {
                worker.finish(Err(problem));
            }
            atoms::ok()
        }
    }
}

/// Routes one frame; one in shared memory is routed where it lies, with
/// the courier holding it so that the reply's binaries refer to it.
fn route_frame(worker: &Reader<Delivery>, courier: &mut Courier, body: &[u8]) -> Result<(), String> {
    match worker.shared(body) {
        None => worker.route(courier, body),
        Some(Err(problem)) => Err(problem),
        Some(Ok(shared)) => {
            let shared = ResourceArc::new(SharedBody(shared));
            courier.backing = Some(shared.clone());
            let routed = worker.route(courier, shared.0.bytes());
            courier.backing = None;
            routed
        }
    }
}

/// Whether decoding the frame `body` could hold a scheduler with `budget`
/// for longer than it should.
fn too_much_here(worker: &Reader<Delivery>, body: &[u8], budget: usize) -> bool {
    if budget != NORMAL_BUDGET {
        return false;
    }
    let carried = worker.peek(body);
    if carried.as_ptr() != body.as_ptr() {
        let cost = build_cost(carried, SHARED_NORMAL_VALUES);
        return cost.values > SHARED_NORMAL_VALUES || cost.bytes_read > budget;
    }
    body.len() > budget || (body.len() > SCAN_ABOVE && {
        let cost = build_cost(body, NORMAL_VALUES);
        cost.values + ENTRY_VALUES * cost.entries > NORMAL_VALUES
    })
}

/// The port on the socket is closed (at the socket's end, or after the
/// worker exited): routes what the socket still holds, which nothing else
/// reads any more, finishes the reader (a frame cut short is the worker's
/// fault) and closes the dup. On a dirty scheduler: what is left may be a
/// large reply.
#[rustler::nif(schedule = "DirtyCpu")]
fn reader_close(env: Env, resource: ResourceArc<ReaderResource>) -> Atom {
    let fd = resource.fd.lock().take();
    let mut state = resource.state.lock();
    let State { reader, decoder, courier } = &mut *state;
    if let Some(worker) = reader.take() {
        let drained = match &fd {
            Some(fd) => courier.in_call(env, |courier| drain(fd, decoder, &worker, courier)),
            None => Ok(()),
        };
        let buffered = decoder.buffered();
        worker.finish(drained.and_then(|()| match buffered {
            0 => Ok(()),
            _ => Err(format!("worker sent a bad frame: its last {buffered} bytes end mid-frame")),
        }));
    }
    drop(fd);
    atoms::ok()
}

/// Reads `fd` to its end (or to nothing more for now, or a reset), routing
/// every frame.
fn drain(fd: &OwnedFd, decoder: &mut FrameDecoder, worker: &Reader<Delivery>, courier: &mut Courier) -> Result<(), String> {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match recv(fd.as_raw_fd(), &mut chunk, MsgFlags::MSG_DONTWAIT) {
            Err(Errno::EINTR) => continue,
            Ok(0) | Err(_) => return Ok(()),
            Ok(n) => n,
        };
        decoder.push(&chunk[..n]);
        while let Some(body) = decoder.next_frame().map_err(|e| format!("worker sent a bad frame: {e}"))? {
            route_frame(worker, courier, body)?;
        }
    }
}
