//! Blocking I/O on the raw protocol file descriptor.
//!
//! The descriptor belongs to the Python process (`--fd N`); these helpers
//! never close it. They run without the GIL: reads on the reader thread,
//! writes on the main thread.

use std::io;
use std::os::fd::RawFd;

/// Reads once into the spare capacity of `buf` (which must have some),
/// appending what arrived; returns the number of bytes, 0 at end of stream.
/// Retries EINTR: the reader thread blocks signals (they are for the main
/// thread). No zero-filling of the buffer first: buffers are handed over
/// whole after each read, so fresh ones would be cleared every time.
pub(crate) fn read_appending(fd: RawFd, buf: &mut Vec<u8>) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    debug_assert!(!spare.is_empty());
    loop {
        // SAFETY: the kernel writes at most `spare.len()` bytes into spare
        // capacity we own; only those it reports written are exposed below.
        let n = unsafe { libc::read(fd, spare.as_mut_ptr().cast(), spare.len()) };
        if n >= 0 {
            let n = n as usize;
            // SAFETY: `n` bytes past the old length were just initialised.
            unsafe { buf.set_len(buf.len() + n) };
            return Ok(n);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// Writes all of `buf`, retrying on EINTR and partial writes.
///
/// `send(MSG_NOSIGNAL)` turns a vanished host into EPIPE instead of SIGPIPE,
/// whatever user code did to the SIGPIPE disposition; descriptors that are
/// not sockets fall back to `write`.
pub(crate) fn write_all(fd: RawFd, mut buf: &[u8]) -> io::Result<()> {
    let mut use_send = true;
    while !buf.is_empty() {
        // SAFETY: `buf` is valid for `buf.len()` bytes of reads.
        let n = unsafe {
            if use_send {
                libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL)
            } else {
                libc::write(fd, buf.as_ptr().cast(), buf.len())
            }
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ENOTSOCK) if use_send => {
                    use_send = false;
                    continue;
                }
                _ => return Err(err),
            }
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// Errors that mean the host closed its end: the worker just stops.
pub(crate) fn host_gone(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EPIPE) | Some(libc::ECONNRESET))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socketpair() -> (RawFd, RawFd) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors.
        assert_eq!(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) }, 0);
        (fds[0], fds[1])
    }

    fn close(fd: RawFd) {
        // SAFETY: closing a descriptor this test opened.
        unsafe { libc::close(fd) };
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
    fn eintr_is_retried() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;

        extern "C" fn on_signal(_: libc::c_int) {}
        let (a, b) = socketpair();
        // SAFETY: a no-op handler installed without SA_RESTART, so a blocked
        // read fails with EINTR when the signal arrives.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as usize;
            libc::sigaction(libc::SIGUSR2, &action, std::ptr::null_mut());
        }
        // Aimed at this thread (tests share the process), several times
        // before the data comes.
        let reader = unsafe { libc::pthread_self() };
        let done = Arc::new(AtomicBool::new(false));
        let kicker = {
            let done = done.clone();
            std::thread::spawn(move || {
                for _ in 0..5 {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    // SAFETY: the reader thread outlives this loop (joined below).
                    unsafe { libc::pthread_kill(reader, libc::SIGUSR2) };
                }
                write_all(a, b"after signals").unwrap();
                done.store(true, Ordering::SeqCst);
            })
        };
        let mut buf = Vec::with_capacity(64);
        assert_eq!(read_appending(b, &mut buf).unwrap(), 13);
        kicker.join().unwrap();
        assert!(done.load(Ordering::SeqCst));
        assert_eq!(buf, b"after signals");
        close(a);
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
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        write_all(fds[1], b"pipe").unwrap();
        close(fds[1]);
        let got = read_to_end(fds[0]);
        close(fds[0]);
        assert_eq!(got, b"pipe");
    }
}
