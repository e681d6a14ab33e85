//! Blocking I/O on the raw protocol file descriptor.
//!
//! The descriptor belongs to the Python process (`--fd N`); these helpers
//! never close it. They run with the GIL released.

use std::io::{self, Read};
use std::os::fd::RawFd;

/// `Read` over a borrowed descriptor.
///
/// EINTR is reported as [`SignalArrived`] rather than
/// `ErrorKind::Interrupted`, which `FrameDecoder::fill_from` would silently
/// retry: the loop wants to run Python's signal handlers first.
pub(crate) struct FdReader(pub(crate) RawFd);

impl Read for FdReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for `buf.len()` bytes of writes.
        let n = unsafe { libc::read(self.0, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EINTR) {
            Err(io::Error::other(SignalArrived))
        } else {
            Err(err)
        }
    }
}

/// A signal interrupted a blocking read.
#[derive(Debug)]
pub(crate) struct SignalArrived;

impl std::fmt::Display for SignalArrived {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted by a signal")
    }
}

impl std::error::Error for SignalArrived {}

pub(crate) fn signal_arrived(err: &io::Error) -> bool {
    err.get_ref().is_some_and(|inner| inner.is::<SignalArrived>())
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

    #[test]
    fn writes_more_than_the_socket_buffer() {
        let (a, b) = socketpair();
        let data: Vec<u8> = (0..4_000_000u32).map(|i| i as u8).collect();
        let expected = data.clone();
        let writer = std::thread::spawn(move || {
            write_all(a, &data).unwrap();
            close(a);
        });
        let mut got = Vec::new();
        FdReader(b).read_to_end(&mut got).unwrap();
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
    fn eintr_is_reported_not_retried() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;

        extern "C" fn on_signal(_: libc::c_int) {}
        let (a, b) = socketpair();
        // SAFETY: a no-op handler installed without SA_RESTART, so a blocked
        // read fails with EINTR when the signal arrives.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as usize;
            libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut());
        }
        // Aimed at this thread (tests share the process), and repeated in
        // case the first one lands before the read blocks.
        let reader = unsafe { libc::pthread_self() };
        let done = Arc::new(AtomicBool::new(false));
        let kicker = {
            let done = done.clone();
            std::thread::spawn(move || {
                while !done.load(Ordering::SeqCst) {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    // SAFETY: the reader thread outlives this loop (joined below).
                    unsafe { libc::pthread_kill(reader, libc::SIGUSR1) };
                }
            })
        };
        let err = FdReader(b).read(&mut [0; 16]).unwrap_err();
        done.store(true, Ordering::SeqCst);
        kicker.join().unwrap();
        assert!(signal_arrived(&err), "{err}");
        close(a);
        close(b);
    }

    #[test]
    fn pipes_fall_back_to_write() {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        write_all(fds[1], b"pipe").unwrap();
        close(fds[1]);
        let mut got = Vec::new();
        FdReader(fds[0]).read_to_end(&mut got).unwrap();
        close(fds[0]);
        assert_eq!(got, b"pipe");
    }
}
