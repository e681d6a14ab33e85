//! Starting one Python worker process.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, BorrowedFd, IntoRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use nix::sys::prctl;
use nix::sys::resource::{getrlimit, Resource, RLIM_INFINITY};
use nix::sys::signal::Signal;
use nix::fcntl::{fcntl, FcntlArg};
use nix::unistd::{self, getpid, getppid};
use parking_lot::Mutex;

use crate::config::PoolConfig;
use crate::events::Stream;
use crate::log::{Entry, LogQueue};
use crate::socket;
use crate::transport::Arenas;

/// The worker's end of the socketpair appears as this fd in the worker,
/// followed by the memfds of its arenas (calls, then replies) when the pool
/// uses shared memory.
const WORKER_FD: libc::c_int = 3;
/// Descriptors are moved at least this high before they are placed at
/// `WORKER_FD` and after, so that placing one never closes another.
const PLACING_FD: libc::c_int = 16;
/// Lines of stderr kept to explain a worker that fails to start.
const STDERR_TAIL_LINES: usize = 20;
/// Longest line forwarded as one log message.
const MAX_LINE: usize = 16 * 1024;

/// A running worker process and the host's end of its socket.
pub struct WorkerProcess {
    pub child: Child,
    pub socket: UnixStream,
    pub os_pid: u32,
    /// The last lines the worker wrote to stderr.
    pub stderr_tail: Arc<Mutex<VecDeque<String>>>,
    /// The host's mappings of the worker's shared memory, if it has any.
    pub arenas: Option<Arenas>,
}

/// Starts `python -m snakebridge_worker` with its socket on fd 3 and its
/// stdout/stderr forwarded, line by line, to the pool's log queue.
///
/// Call this from a thread that outlives the process: `PR_SET_PDEATHSIG`
/// fires when the *thread* that forked the child exits, not the process.
pub fn spawn_worker<C: Send + Sync + 'static>(config: &PoolConfig, logs: &Arc<LogQueue<C>>) -> io::Result<WorkerProcess> {
    let (host, worker) = UnixStream::pair()?;
    socket::set_buffer_sizes(&host);
    let (arenas, memfds) = match config.shared_memory {
        true => {
            let (arenas, memfds) = Arenas::create(config.arena_capacity())?;
            (Some(arenas), Some(memfds))
        }
        false => (None, None),
    };
    let mut inherited: Vec<RawFd> = vec![worker.as_raw_fd()];
    let mut args = vec!["-m".to_owned(), "snakebridge_worker".to_owned(), "--fd".to_owned(), WORKER_FD.to_string()];
    if let Some((calls, replies)) = &memfds {
        inherited.extend([calls.as_raw_fd(), replies.as_raw_fd()]);
        args.extend([
            "--shm".to_owned(),
            format!("{},{}", WORKER_FD + 1, WORKER_FD + 2),
        ]);
    }
    args.extend(["--max-payload".to_owned(), config.payload_limit().to_string()]);
    let parent = getpid();

    let mut command = Command::new(&config.python);
    command
        // Its own process group, so the worker and whatever it forks are
        // killed together (see `Slot::kill_process`).
        .process_group(0)
        .args(&args)
        .args(&config.worker_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("PYTHONPATH", python_path(config))
        .env("PYTHONUNBUFFERED", "1")
        .envs(config.env.iter().map(|(k, v)| (k, v)));
    // SAFETY: runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed and nothing may allocate. Each nix
    // call here is one system call and an errno read (`Errno::result`), and
    // `io::Error::from(Errno)` keeps the code inline: no allocation.
    // The `inherited` descriptors are open in the child (a copy of the
    // parent's table, where `worker` and the memfds live until `spawn`
    // returns), so borrowing them is sound; the closure owns `inherited`,
    // allocated before the fork, and only reads it.
    unsafe {
        command.pre_exec(move || {
            // The worker dies with the BEAM even after `kill -9`.
            prctl::set_pdeathsig(Signal::SIGKILL)?;
            // The parent may have died before prctl took effect. `_exit`
            // (raw: nix has none), not `exit`: no atexit handlers in the child.
            if getppid() != parent {
                libc::_exit(1);
            }
            // Each descriptor is first copied above the places they go to
            // (close-on-exec copies), then dup2'd into place, which clears
            // FD_CLOEXEC on the placed copy: a descriptor that already sits
            // at one of those numbers is never overwritten before it moves.
            let mut high = [0; 3];
            for (copy, fd) in high.iter_mut().zip(&inherited) {
                *copy = fcntl(BorrowedFd::borrow_raw(*fd), FcntlArg::F_DUPFD_CLOEXEC(PLACING_FD))?;
            }
            for (place, copy) in (WORKER_FD..).zip(&high[..inherited.len()]) {
                // `dup2_raw` returns the placed fd as an `OwnedFd`, which
                // would close it when dropped; giving it straight back up
                // keeps it open, owned by no one, until exec.
                let _ = unistd::dup2_raw(BorrowedFd::borrow_raw(*copy), place)?.into_raw_fd();
            }
            close_on_exec_above(WORKER_FD + inherited.len() as libc::c_int - 1);
            Ok(())
        });
    }
    let mut child = command.spawn()?;
    drop(worker);
    drop(memfds);
    let os_pid = child.id();

    let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
    if let Some(stdout) = child.stdout.take() {
        forward_lines(stdout, Stream::Stdout, os_pid, logs.clone(), None);
    }
    if let Some(stderr) = child.stderr.take() {
        forward_lines(stderr, Stream::Stderr, os_pid, logs.clone(), Some(stderr_tail.clone()));
    }
    Ok(WorkerProcess {
        child,
        socket: host,
        os_pid,
        stderr_tail,
        arenas,
    })
}

/// Marks every descriptor above `fd` close-on-exec, so the worker inherits
/// nothing of the BEAM's (listen sockets, files, other ports' pipes) that was
/// opened without `O_CLOEXEC`. Marking rather than closing keeps the pipe
/// through which the standard library reports a failed exec.
///
/// `close_range` and the `fcntl` fallback stay raw `libc`: nix 0.32 has no
/// `close_range`, and its `fcntl` takes a `BorrowedFd`, whose contract is
/// that the descriptor is open, where this tries every number up to the limit.
///
/// # Safety
///
/// Only for the child between fork and exec: it changes descriptors other
/// threads of a running process would still use. (SAFETY of the calls:
/// `close_range` and `fcntl` touch only the descriptor table, and a number
/// that is not open just fails with EBADF.)
unsafe fn close_on_exec_above(fd: libc::c_int) {
    let first = fd as libc::c_uint + 1;
    if libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC) == 0 {
        return;
    }
    // Kernels before 5.11: one fcntl per possible descriptor.
    let max = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) if soft != RLIM_INFINITY => soft.min(libc::c_int::MAX as libc::rlim_t) as libc::c_int,
        _ => 1 << 20,
    };
    for other in fd + 1..max {
        libc::fcntl(other, libc::F_SETFD, libc::FD_CLOEXEC);
    }
}

fn python_path(config: &PoolConfig) -> String {
    let mut parts = vec![config.worker_path.clone()];
    parts.extend(config.python_path.iter().cloned());
    if let Ok(existing) = std::env::var("PYTHONPATH") {
        if !existing.is_empty() {
            parts.push(existing);
        }
    }
    parts.join(":")
}

/// Reads a worker's output stream on its own thread until EOF (the worker
/// exited), forwarding each line.
fn forward_lines<C: Send + Sync + 'static, R: Read + Send + 'static>(
    source: R,
    stream: Stream,
    os_pid: u32,
    logs: Arc<LogQueue<C>>,
    tail: Option<Arc<Mutex<VecDeque<String>>>>,
) {
    let name = format!("sb-{}-{os_pid}", if stream == Stream::Stdout { "out" } else { "err" });
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        let mut reader = BufReader::new(source);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.by_ref().take(MAX_LINE as u64).read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let text = line.strip_suffix(b"\n").unwrap_or(&line);
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            if let Some(tail) = &tail {
                let mut tail = tail.lock();
                if tail.len() == STDERR_TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(String::from_utf8_lossy(text).into_owned());
            }
            logs.push(Entry::piped(os_pid, stream, text));
        }
    });
    // Without the thread the pipe fills and the worker blocks on output;
    // it still serves calls until then, which beats failing the start.
    drop(spawned);
}
