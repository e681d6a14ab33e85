//! Point-in-time numbers about a pool, for `SnakeBridge.stats/1`.

use nix::unistd::{sysconf, SysconfVar};

use crate::breaker::BreakerStats;

/// One worker slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerStats {
    /// OS pid of the current Python process, if one is running.
    pub os_pid: Option<u32>,
    /// `starting`, `ready`, `restarting`, `unavailable` or `stopped`.
    pub state: &'static str,
    pub in_flight: usize,
    /// Cancelled calls the worker has yet to show have stopped; while there
    /// are any, the worker takes no new calls.
    pub cancelling: usize,
    /// Calls answered, across restarts of the slot.
    pub calls: u64,
    /// Calls answered with an error, across restarts.
    pub errors: u64,
    pub restarts: u64,
    /// Handles the host holds on objects in the current Python process.
    pub objects: usize,
    /// Resident memory of the Python process in bytes (0 when none runs).
    pub rss: u64,
    /// Bytes of the worker's shared memory in use: large results the host
    /// still refers to, large calls the worker has yet to read.
    pub shared_memory: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStats {
    pub queue_length: usize,
    pub max_queue: usize,
    pub workers: Vec<WorkerStats>,
    pub circuit: BreakerStats,
}

/// Resident set size of a process, from `/proc/<pid>/statm`.
pub fn rss_bytes(os_pid: u32) -> u64 {
    let Ok(statm) = std::fs::read_to_string(format!("/proc/{os_pid}/statm")) else {
        return 0;
    };
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    let page_size = sysconf(SysconfVar::PAGE_SIZE).ok().flatten().unwrap_or(0);
    pages * page_size.max(0) as u64
}
