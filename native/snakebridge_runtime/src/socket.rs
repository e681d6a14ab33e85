//! Socket writes the standard library does not offer: gathered writes that
//! never raise SIGPIPE, and a non-blocking attempt for the caller's fast path.

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, BorrowedFd, RawFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{self, sockopt, MsgFlags};

/// Socket buffer size asked for on the host's end, so a window of calls fits
/// without blocking the writer.
pub const BUFFER_BYTES: usize = 1 << 20;

pub fn set_buffer_sizes(socket: &impl AsFd) {
    // Best effort: the kernel caps it, and the default still works.
    let _ = socket::setsockopt(socket, sockopt::SndBuf, &BUFFER_BYTES);
    let _ = socket::setsockopt(socket, sockopt::RcvBuf, &BUFFER_BYTES);
}

/// One `sendmsg(2)` of at most `UIO_MAXIOV` slices (more would fail with
/// EMSGSIZE; the rest go out on the caller's next turn). With no control
/// messages nix builds the `msghdr` on the stack: nothing is allocated.
fn sendmsg(fd: RawFd, slices: &[IoSlice<'_>], flags: MsgFlags) -> io::Result<usize> {
    let slices = &slices[..slices.len().min(libc::UIO_MAXIOV as usize)];
    // MSG_NOSIGNAL: a dead worker must show up as EPIPE, not as a signal to
    // the whole BEAM.
    socket::sendmsg::<()>(fd, slices, &[], flags | MsgFlags::MSG_NOSIGNAL, None).map_err(io::Error::from)
}

/// Writes all of `slices`, blocking as needed. On error, returns how many
/// bytes did go out, so the caller knows which frames the worker may have seen.
pub fn send_all(fd: RawFd, mut slices: &mut [IoSlice<'_>]) -> Result<(), (io::Error, usize)> {
    let mut written = 0;
    while !slices.is_empty() {
        match sendmsg(fd, slices, MsgFlags::empty()) {
            Ok(0) => return Err((io::ErrorKind::WriteZero.into(), written)),
            Ok(n) => {
                written += n;
                IoSlice::advance_slices(&mut slices, n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // The socket is non-blocking once the embedder reads it through
            // a VM port (see `Reader::fd`): wait as a blocking write would.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if let Err(e) = wait_writable(fd) {
                    return Err((e, written));
                }
            }
            Err(e) => return Err((e, written)),
        }
    }
    Ok(())
}

/// Writes what fits without blocking and returns the count (0 when the
/// socket buffer is full).
pub fn try_send(fd: RawFd, bytes: &[u8]) -> io::Result<usize> {
    let slice = [IoSlice::new(bytes)];
    match sendmsg(fd, &slice, MsgFlags::MSG_DONTWAIT) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
        other => other,
    }
}

/// Waits until `fd` is readable (or closed). False on timeout.
pub fn wait_readable(fd: RawFd, timeout: Duration) -> io::Result<bool> {
    let ms = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
    wait_for(fd, PollFlags::POLLIN, ms)
}

/// Waits until `fd` can be written to (or is closed, which the write then
/// reports).
fn wait_writable(fd: RawFd) -> io::Result<()> {
    wait_for(fd, PollFlags::POLLOUT, PollTimeout::NONE).map(drop)
}

fn wait_for(fd: RawFd, events: PollFlags, timeout: PollTimeout) -> io::Result<bool> {
    // SAFETY: callers pass the descriptor of a socket they hold open (a
    // worker's, owned by its `Connection` or `WorkerProcess`) for the whole
    // call; poll only reads the number.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    loop {
        let mut fds = [PollFd::new(fd, events)];
        match nix::poll::poll(&mut fds, timeout) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(n) => return Ok(n > 0),
        }
    }
}
