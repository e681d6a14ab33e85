//! I/O on the raw protocol file descriptor.
//!
//! The descriptor belongs to the Python process (`--fd N`); these helpers
//! never close it. The worker loop reads and writes with the GIL released;
//! SIGUSR1's handler reads without blocking, with the GIL.
//!
//! Writes go through nix. Reads stay raw `libc`: they fill a `Vec`'s spare
//! capacity, which is uninitialised, and nix's `read`/`recv` take `&mut [u8]`
//! (initialised bytes), so using them would mean zero-filling up to 64 KiB
//! before every read of the loop.

use std::io;
use std::os::fd::{BorrowedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{self, MsgFlags};

/// Reads once into the spare capacity of `buf` (which must have some),
/// blocking, appending what arrived; returns the number of bytes, 0 at end
/// of stream. EINTR is returned, not retried: the loop runs Python's signal
/// handlers (the cancel handler among them), then reads again. No
/// zero-filling of the buffer first.
pub(crate) fn read_appending(fd: RawFd, buf: &mut Vec<u8>) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    debug_assert!(!spare.is_empty());
    // SAFETY: the kernel writes at most `spare.len()` bytes into spare
    // capacity we own; only those it reports written are exposed below.
    let n = unsafe { libc::read(fd, spare.as_mut_ptr().cast(), spare.len()) };
    appended(buf, n)
}

/// Like [`read_appending`] without blocking: `recv(MSG_DONTWAIT)`, so the
/// descriptor's own (blocking) mode is left alone. EAGAIN when nothing is
/// there; ENOTSOCK on a descriptor that is not a socket. Retries EINTR.
pub(crate) fn recv_nonblocking(fd: RawFd, buf: &mut Vec<u8>) -> io::Result<usize> {
    loop {
        let spare = buf.spare_capacity_mut();
        debug_assert!(!spare.is_empty());
        // SAFETY: as in `read_appending`.
        let n = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), spare.len(), libc::MSG_DONTWAIT) };
        match appended(buf, n) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            result => return result,
        }
    }
}

fn appended(buf: &mut Vec<u8>, n: isize) -> io::Result<usize> {
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: `n` bytes past the old length were just initialised by the kernel.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// Writes all of `buf`, retrying on EINTR and partial writes.
///
/// `send(MSG_NOSIGNAL)` turns a vanished host into EPIPE instead of SIGPIPE,
/// whatever user code did to the SIGPIPE disposition; descriptors that are
/// not sockets fall back to `write`.
pub(crate) fn write_all(fd: RawFd, mut buf: &[u8]) -> io::Result<()> {
    let mut use_send = true;
    while !buf.is_empty() {
        let written = if use_send {
            socket::send(fd, buf, MsgFlags::MSG_NOSIGNAL)
        } else {
            // SAFETY: the descriptor stays open for this call: the Python
            // process owns it for as long as the worker runs, and nothing
            // here closes it.
            nix::unistd::write(unsafe { BorrowedFd::borrow_raw(fd) }, buf)
        };
        match written {
            Ok(n) => buf = &buf[n..],
            Err(Errno::EINTR) => continue,
            Err(Errno::ENOTSOCK) if use_send => use_send = false,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Errors that mean the host closed its end: the worker just stops.
pub(crate) fn host_gone(err: &io::Error) -> bool {
    matches!(err.raw_os_error().map(Errno::from_raw), Some(Errno::EPIPE | Errno::ECONNRESET))
}

#[cfg(test)]
mod tests {
    use std::os::fd::{IntoRawFd, OwnedFd};

    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    use nix::sys::socket::{AddressFamily, SockFlag, SockType};

    use super::*;

    /// Raw descriptors, as the worker has them; each test closes its own.
    fn socketpair() -> (RawFd, RawFd) {
        let (a, b) = socket::socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::empty()).unwrap();
        (a.into_raw_fd(), b.into_raw_fd())
    }

    fn close(fd: RawFd) {
        nix::unistd::close(fd).unwrap();
    }

    fn read_to_end(fd: RawFd) -> Vec<u8> {
        let mut got = Vec::new();
        loop {
            got.reserve(64 * 1024);
            if read_appending(fd, &mut got).unwrap() == 0 {
                return got;
            }
        }
    }

    #[test]
    fn writes_more_than_the_socket_buffer() {
        let (a, b) = socketpair();
        let data: Vec<u8> = (0..4_000_000u32).map(|i| i as u8).collect();
        let expected = data.clone();
        let writer = std::thread::spawn(move || {
            write_all(a, &data).unwrap();
            close(a);
        });
        let got = read_to_end(b);
        writer.join().unwrap();
        close(b);
        assert_eq!(got, expected);
    }

    #[test]
    fn closed_peer_is_host_gone() {
        let (a, b) = socketpair();
        close(b);
        let err = write_all(a, b"hello").unwrap_err();
        assert!(host_gone(&err), "{err}");
        close(a);
    }

    #[test]
    fn eintr_is_reported_and_nothing_is_lost() {
        extern "C" fn on_signal(_: libc::c_int) {}
        let (a, b) = socketpair();
        // A no-op handler installed without SA_RESTART, so a blocked read
        // fails with EINTR when the signal arrives.
        let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::empty(), SigSet::empty());
        // SAFETY: the handler does nothing, so it is async-signal-safe.
        unsafe { sigaction(Signal::SIGUSR2, &action) }.unwrap();
        // Aimed at this thread (tests share the process), before the data.
        let reader = nix::sys::pthread::pthread_self();
        let kicker = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            // The reader thread outlives this (joined below).
            nix::sys::pthread::pthread_kill(reader, Signal::SIGUSR2).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(50));
            write_all(a, b"after signal").unwrap();
        });
        let mut buf = Vec::with_capacity(64);
        let err = read_appending(b, &mut buf).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(Errno::EINTR as i32));
        assert!(buf.is_empty());
        assert_eq!(read_appending(b, &mut buf).unwrap(), 12);
        kicker.join().unwrap();
        assert_eq!(buf, b"after signal");
        close(a);
        close(b);
    }

    #[test]
    fn recv_nonblocking_returns_what_is_there_or_eagain() {
        let (a, b) = socketpair();
        let mut buf = Vec::with_capacity(64);
        let err = recv_nonblocking(b, &mut buf).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(Errno::EAGAIN as i32));
        write_all(a, b"cancel").unwrap();
        assert_eq!(recv_nonblocking(b, &mut buf).unwrap(), 6);
        assert_eq!(buf, b"cancel");
        close(a);
        assert_eq!(recv_nonblocking(b, &mut buf).unwrap(), 0);
        close(b);
    }

    #[test]
    fn read_appending_fills_spare_capacity_only() {
        let (a, b) = socketpair();
        write_all(a, b"hello world").unwrap();
        let mut buf = Vec::with_capacity(5);
        buf.extend_from_slice(b">");
        assert_eq!(read_appending(b, &mut buf).unwrap(), 4);
        assert_eq!(buf, b">hell");
        buf.reserve(100);
        assert_eq!(read_appending(b, &mut buf).unwrap(), 7);
        assert_eq!(buf, b">hello world");
        close(a);
        assert_eq!(read_appending(b, &mut buf).unwrap(), 0);
        close(b);
    }

    #[test]
    fn pipes_fall_back_to_write() {
        let (read_end, write_end): (OwnedFd, OwnedFd) = nix::unistd::pipe().unwrap();
        let (read_end, write_end) = (read_end.into_raw_fd(), write_end.into_raw_fd());
        write_all(write_end, b"pipe").unwrap();
        close(write_end);
        let got = read_to_end(read_end);
        close(read_end);
        assert_eq!(got, b"pipe");
    }
}
