//! One worker slot's state: its status, its connection to the running
//! worker and that worker's process, its counters, and the channels that
//! wake its writer. The threads that drive it are in `supervisor.rs`
//! (spawn, handshake, restarts) and `writer.rs`.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Condvar, Mutex, RwLock};

use crate::connection::{Connection, Control};
use crate::stats::{rss_bytes, WorkerStats};
use crate::transport::Arenas;

#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Status {
    Starting,
    Ready,
    Restarting,
    Unavailable,
    Stopped,
}

impl Status {
    fn from_u8(v: u8) -> Status {
        match v {
            0 => Status::Starting,
            1 => Status::Ready,
            2 => Status::Restarting,
            3 => Status::Unavailable,
            _ => Status::Stopped,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Status::Starting => "starting",
            Status::Ready => "ready",
            Status::Restarting => "restarting",
            Status::Unavailable => "unavailable",
            Status::Stopped => "stopped",
        }
    }
}

pub(crate) struct Slot {
    pub(crate) index: usize,
    /// A `Status`, read lock-free on every submit.
    status: AtomicU8,
    /// With `status_cv`, lets the writer sleep until the slot is ready.
    status_lock: Mutex<()>,
    status_cv: Condvar,
    pub(crate) connection: RwLock<Option<Arc<Connection>>>,
    /// The running process's pid, cleared under this lock before it is
    /// reaped so a kill can never hit a recycled pid.
    pub(crate) process: Mutex<Option<u32>>,
    /// Frames for the writer thread to send (cancel, ping).
    pub control_tx: Sender<Control>,
    pub control_rx: Receiver<Control>,
    /// Wakes a writer waiting for room in its worker's window.
    wake_tx: Sender<()>,
    pub wake_rx: Receiver<()>,
    pub writer_waiting: AtomicBool,
    pub(crate) last_error: Mutex<Option<String>>,
    pub(crate) gave_up: AtomicBool,
    pub(crate) calls: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) restarts: AtomicU64,
}

impl Slot {
    pub fn new(index: usize) -> Self {
        let (control_tx, control_rx) = crossbeam_channel::unbounded();
        let (wake_tx, wake_rx) = crossbeam_channel::bounded(1);
        Slot {
            index,
            status: AtomicU8::new(Status::Starting as u8),
            status_lock: Mutex::new(()),
            status_cv: Condvar::new(),
            connection: RwLock::new(None),
            process: Mutex::new(None),
            control_tx,
            control_rx,
            wake_tx,
            wake_rx,
            writer_waiting: AtomicBool::new(false),
            last_error: Mutex::new(None),
            gave_up: AtomicBool::new(false),
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
        }
    }

    /// The connection to a ready worker, if there is one.
    pub fn connection(&self) -> Option<Arc<Connection>> {
        self.connection.read().clone()
    }

    /// The calls written to the ready worker and not yet answered, if
    /// there is one. Every direct call compares its pool's workers this
    /// way, without taking a reference to each connection.
    pub fn in_flight(&self) -> Option<usize> {
        self.connection.read().as_ref().map(|c| c.in_flight.load(Ordering::Acquire))
    }

    /// True once the slot has given up starting Python, until a start
    /// succeeds again (retries go on meanwhile).
    pub fn is_unavailable(&self) -> bool {
        self.gave_up.load(Ordering::Acquire)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().clone()
    }

    pub fn os_pid(&self) -> Option<u32> {
        *self.process.lock()
    }

    fn status(&self) -> Status {
        Status::from_u8(self.status.load(Ordering::Acquire))
    }

    pub(crate) fn set_status(&self, status: Status) {
        let _guard = self.status_lock.lock();
        self.status.store(status as u8, Ordering::Release);
        self.status_cv.notify_all();
    }

    /// Half-closes the socket so the worker sees EOF after its current call.
    pub fn close_connection(&self) {
        if let Some(conn) = self.connection() {
            conn.close();
        }
        let _guard = self.status_lock.lock();
        self.status_cv.notify_all();
    }

    /// Signals the worker process `os_pid` if it is still this slot's (an
    /// exited one keeps its pid until reaped, which clears it under the same
    /// lock), so a recycled pid is never hit.
    pub fn signal_process(&self, os_pid: u32, signal: nix::sys::signal::Signal) {
        let process = self.process.lock();
        if *process == Some(os_pid) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(os_pid as i32), signal);
        }
    }

    /// Kills the worker and every process in its process group: what it
    /// forked dies with it, unless it left the group (`setsid`, `setpgid`).
    pub fn kill_process(&self) {
        if let Some(pid) = *self.process.lock() {
            // The worker leads its own group (see `spawn_worker`) and its
            // pid is not recycled while this lock holds it (see `reap`).
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
        }
    }

    pub fn stats(&self) -> WorkerStats {
        let os_pid = self.os_pid();
        WorkerStats {
            os_pid,
            state: self.status().name(),
            in_flight: self.connection().map_or(0, |c| c.unanswered()),
            cancelling: self.connection().map_or(0, |c| c.cancelling()),
            calls: self.calls.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            restarts: self.restarts.load(Ordering::Relaxed),
            objects: self.connection().map_or(0, |c| c.objects.load(Ordering::Relaxed)),
            rss: os_pid.map_or(0, rss_bytes),
            shared_memory: self.connection().and_then(|c| c.arenas().map(Arenas::in_use)).unwrap_or(0),
        }
    }

    /// Blocks the writer until the slot has a ready worker; None once the
    /// pool stops.
    pub fn wait_ready(&self, stopping: &AtomicBool) -> Option<Arc<Connection>> {
        let mut guard = self.status_lock.lock();
        loop {
            if stopping.load(Ordering::Acquire) {
                return None;
            }
            if self.status() == Status::Ready {
                if let Some(conn) = self.connection() {
                    return Some(conn);
                }
            }
            self.status_cv.wait_for(&mut guard, Duration::from_millis(200));
        }
    }

    pub fn index(&self) -> usize {
        self.index
    }

    /// Wakes the writer whatever it waits for.
    pub fn wake_writer_now(&self) {
        let _ = self.wake_tx.try_send(());
    }

    /// Wakes the writer if it waits for room in the window.
    pub fn wake_writer(&self) {
        if self.writer_waiting.load(Ordering::SeqCst) {
            let _ = self.wake_tx.try_send(());
        }
    }
}
