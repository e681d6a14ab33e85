//! Interrupting the call that runs now, with SIGUSR1.
//!
//! The reader thread cannot touch Python (it never holds the GIL), so to stop
//! a running call it records the call's seq in [`TARGET`] and sends SIGUSR1
//! to the main thread with `pthread_kill`. Python's C-level handler only
//! notes the signal; blocking system calls on the main thread (`time.sleep`,
//! socket reads...) fail with EINTR, and at the next check (EINTR handling,
//! or the interpreter's periodic one between bytecodes) Python runs the
//! Python-level handler on the main thread: [`cancel_running_call`], which
//! `__main__` installs for SIGUSR1 before serving. It raises `CallCancelled`
//! only if the call running at that moment is [`TARGET`]: a signal that
//! arrives too late (its call finished, another one started, or the worker
//! is idle) does nothing, so a cancel racing the end of its call can never
//! hit the next call.
//!
//! `CallCancelled` derives from `BaseException`, so user code's
//! `except Exception` does not swallow it; like `KeyboardInterrupt`, it can
//! still be caught on purpose, and C code that neither returns nor checks
//! for signals (a long computation in an extension, a lock wait that
//! retries on EINTR) is only interrupted when it comes back to Python. The
//! host deals with those by killing the worker.
//!
//! The worker owns SIGUSR1: if user code sets another Python handler, that
//! handler gets the cancels.

use std::sync::atomic::{AtomicU64, Ordering};

use pyo3::prelude::*;

use crate::CallCancelled;

/// Seq of the call the main thread runs now; 0 between calls. Written by the
/// main thread only.
pub(crate) static RUNNING: AtomicU64 = AtomicU64::new(0);

/// Seq of the call the reader thread wants interrupted; 0 for none.
static TARGET: AtomicU64 = AtomicU64::new(0);

/// Forgets a previous `serve` in this process.
pub(crate) fn reset() {
    RUNNING.store(0, Ordering::SeqCst);
    TARGET.store(0, Ordering::SeqCst);
}

/// Marks call `seq` as the one running, until dropped.
///
/// Set before the callable is even looked up (a cache miss imports, which
/// may be slow and is worth interrupting) and cleared as soon as the
/// callable returns, before anything else can run Python code (dropping
/// arguments runs `__del__`, describing an exception runs `traceback`): the
/// handler must not fire outside the user's call.
pub(crate) struct Running(());

impl Running {
    /// Relaxed is enough: the reader thread reads RUNNING only after it saw
    /// the `SeqCst` store of `Inbox::begin` that follows this one, and the
    /// handler runs on this thread.
    pub(crate) fn enter(seq: u64) -> Running {
        RUNNING.store(seq, Ordering::Relaxed);
        Running(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.store(0, Ordering::Release);
    }
}

/// SIGUSR1's Python handler: raises `CallCancelled` in the call the reader
/// thread asked to interrupt, if that call is still the one running.
#[pyfunction]
#[pyo3(signature = (signum, frame))]
pub(crate) fn cancel_running_call(signum: i32, frame: &Bound<'_, PyAny>) -> PyResult<()> {
    let _ = (signum, frame);
    let running = RUNNING.load(Ordering::SeqCst);
    // Consumes the target, so one cancel raises once even if the signal is
    // repeated while the exception unwinds.
    if running != 0
        && TARGET
            .compare_exchange(running, 0, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    {
        return Err(CallCancelled::new_err("the caller cancelled the call"));
    }
    Ok(())
}

/// Called by the reader thread: interrupts call `seq` if the main thread is
/// running it now. A no-op when SIGUSR1 has no handler (the default action
/// would kill the worker), e.g. when `serve` is used without `__main__`.
pub(crate) fn interrupt(main: libc::pthread_t, seq: u64) {
    // Narrows (cannot close) the window in which the signal arrives after
    // the call ended: then it only makes a system call of the next call, or
    // the idle wait, return EINTR, which they retry; TARGET keeps the
    // handler from raising.
    if RUNNING.load(Ordering::SeqCst) != seq || !handler_installed() {
        return;
    }
    TARGET.store(seq, Ordering::SeqCst);
    // SAFETY: `main` is the thread running `serve`, alive until `serve`
    // has joined this reader thread (or the process exits).
    unsafe { libc::pthread_kill(main, libc::SIGUSR1) };
}

fn handler_installed() -> bool {
    // SAFETY: queries the disposition only (a null new action).
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGUSR1, std::ptr::null(), &mut current) == 0
            && current.sa_sigaction != libc::SIG_DFL
            && current.sa_sigaction != libc::SIG_IGN
    }
}

/// Runs `spawn` with every asynchronous signal blocked, so the thread it
/// creates inherits that mask: process-directed signals (SIGINT, SIGTERM,
/// SIGUSR1 from `kill`) then land on the main thread, where they interrupt
/// its idle wait or its call and Python runs their handlers. The caller's
/// mask is restored afterwards. Faults (SIGSEGV...) stay unblocked, since
/// blocking a synchronous fault kills the process anyway.
pub(crate) fn with_signals_blocked<T>(spawn: impl FnOnce() -> T) -> T {
    // SAFETY: plain sigset manipulation on locals, then pthread_sigmask on
    // the calling thread.
    unsafe {
        let mut block: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut block);
        for fault in [libc::SIGSEGV, libc::SIGBUS, libc::SIGFPE, libc::SIGILL, libc::SIGTRAP, libc::SIGSYS] {
            libc::sigdelset(&mut block, fault);
        }
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, &block, &mut old);
        let result = spawn();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        result
    }
}

/// `CLOCK_MONOTONIC` in microseconds: the clock of call deadlines.
pub(crate) fn monotonic_micros() -> u64 {
    // SAFETY: clock_gettime writes the timespec it is given.
    let ts = unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
        ts
    };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawned_threads_inherit_the_blocked_mask_and_the_caller_keeps_its_own() {
        let blocked_in_thread = with_signals_blocked(|| {
            std::thread::spawn(|| unsafe {
                let mut mask: libc::sigset_t = std::mem::zeroed();
                libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut mask);
                (
                    libc::sigismember(&mask, libc::SIGUSR1),
                    libc::sigismember(&mask, libc::SIGINT),
                    libc::sigismember(&mask, libc::SIGSEGV),
                )
            })
        })
        .join()
        .unwrap();
        assert_eq!(blocked_in_thread, (1, 1, 0));
        let usr1_here = unsafe {
            let mut mask: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut mask);
            libc::sigismember(&mask, libc::SIGUSR1)
        };
        assert_eq!(usr1_here, 0);
    }

    #[test]
    fn monotonic_clock_moves_forward_in_microseconds() {
        let a = monotonic_micros();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let b = monotonic_micros();
        assert!(b - a >= 5_000 && b - a < 5_000_000, "{a} {b}");
    }
}
