//! Learning of a worker's exit from the process itself, not from EOF on its
//! socket: a process the worker forked inherits the socket's other end and
//! would keep it open long after the worker died.
//!
//! `waitid` with `WNOWAIT` sees the exit without reaping, so the pid stays
//! the dead worker's (a zombie) until the supervisor reaps it; nothing can
//! signal a recycled pid meanwhile.

use std::io;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use nix::errno::Errno;
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use parking_lot::Mutex;

/// What to do once a worker has exited, for whoever reads its socket: a
/// reader that may miss the end of the socket (a VM port does, when the
/// read fails with a reset) learns of the exit here instead.
#[derive(Default)]
pub(crate) struct ExitNotice {
    state: Mutex<Notice>,
}

#[derive(Default)]
enum Notice {
    #[default]
    Running,
    Waiting(Box<dyn FnOnce() + Send>),
    Exited,
}

impl ExitNotice {
    /// Runs `wake` when the worker has exited: at once if it has already.
    pub fn on_exit(&self, wake: Box<dyn FnOnce() + Send>) {
        let mut state = self.state.lock();
        if matches!(*state, Notice::Exited) {
            drop(state);
            wake();
        } else {
            *state = Notice::Waiting(wake);
        }
    }

    fn exited(&self) {
        let state = std::mem::replace(&mut *self.state.lock(), Notice::Exited);
        if let Notice::Waiting(wake) = state {
            wake();
        }
    }
}

/// Watches worker `os_pid` on a thread of its own. When the process exits,
/// shuts `socket` (the host's end) down, which ends a read of it with EOF
/// once what the worker sent is read, and stops any write blocked on it;
/// then tells `notice`.
pub(crate) fn shut_down_on_exit(os_pid: u32, socket: UnixStream, notice: Arc<ExitNotice>) -> io::Result<()> {
    std::thread::Builder::new()
        .name(format!("sb-exit-{os_pid}"))
        .spawn(move || {
            // Err: already reaped, so the supervisor knows.
            if wait(os_pid, true).is_ok() {
                let _ = socket.shutdown(Shutdown::Both);
            }
            notice.exited();
        })?;
    Ok(())
}

/// Whether child `os_pid` has exited (it is left to be reaped). With
/// `block`, waits until it has.
pub(crate) fn wait(os_pid: u32, block: bool) -> io::Result<bool> {
    let mut flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT;
    if !block {
        flags |= WaitPidFlag::WNOHANG;
    }
    loop {
        match waitid(Id::Pid(Pid::from_raw(os_pid as i32)), flags) {
            // WNOHANG and still running.
            Ok(WaitStatus::StillAlive) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(Errno::EINTR) => continue,
            // nix turns a successful waitid into EINVAL when the process was
            // killed by a signal it has no `Signal` for (real-time signals);
            // waitid itself fails with EINVAL only for bad arguments, which
            // these are not. The process has exited.
            Err(Errno::EINVAL) => return Ok(true),
            Err(e) => return Err(e.into()),
        }
    }
}
