//! Socket writes the standard library does not offer: gathered writes that
//! never raise SIGPIPE, and a non-blocking attempt for the caller's fast path.

use std::io::{self, IoSlice};
use std::os::fd::RawFd;
use std::time::Duration;

/// Socket buffer size asked for on the host's end, so a window of calls fits
/// without blocking the writer.
pub const BUFFER_BYTES: libc::c_int = 1 << 20;

pub fn set_buffer_sizes(fd: RawFd) {
    for opt in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
        // Best effort: the kernel caps it, and the default still works.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                &BUFFER_BYTES as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

fn sendmsg(fd: RawFd, slices: &[IoSlice<'_>], flags: libc::c_int) -> io::Result<usize> {
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = slices.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = slices.len().min(libc::UIO_MAXIOV as usize) as _;
    // MSG_NOSIGNAL: a dead worker must show up as EPIPE, not as a signal to
    // the whole BEAM.
    let n = unsafe { libc::sendmsg(fd, &msg, flags | libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Writes all of `slices`, blocking as needed. On error, returns how many
/// bytes did go out, so the caller knows which frames the worker may have seen.
pub fn send_all(fd: RawFd, mut slices: &mut [IoSlice<'_>]) -> Result<(), (io::Error, usize)> {
    let mut written = 0;
    while !slices.is_empty() {
        match sendmsg(fd, slices, 0) {
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
    match sendmsg(fd, &slice, libc::MSG_DONTWAIT) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
        other => other,
    }
}

/// Waits until `fd` is readable (or closed). False on timeout.
pub fn wait_readable(fd: RawFd, timeout: Duration) -> io::Result<bool> {
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    wait_for(fd, libc::POLLIN, ms)
}

/// Waits until `fd` can be written to (or is closed, which the write then
/// reports).
fn wait_writable(fd: RawFd) -> io::Result<()> {
    wait_for(fd, libc::POLLOUT, -1).map(drop)
}

fn wait_for(fd: RawFd, events: libc::c_short, ms: libc::c_int) -> io::Result<bool> {
    let mut pfd = libc::pollfd { fd, events, revents: 0 };
    loop {
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return Ok(n > 0);
    }
}
