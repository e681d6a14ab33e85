use std::time::Duration;

use crate::breaker::BreakerConfig;

/// How a pool starts and runs its workers.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Number of worker processes.
    pub size: usize,
    /// Interpreter to run: a path, or a bare name looked up in `PATH`.
    pub python: String,
    /// Directory holding the `snakebridge_worker` package.
    pub worker_path: String,
    /// Extra directories for `sys.path`, ahead of any inherited `PYTHONPATH`.
    pub python_path: Vec<String>,
    /// Extra environment variables for the workers.
    pub env: Vec<(String, String)>,
    /// Calls that may wait in the queue before submissions are refused.
    pub max_queue: usize,
    /// Calls written to one worker and not yet answered. Enough to keep a
    /// worker busy between wake-ups; small enough that a worker stuck in a
    /// long call does not hoard work an idle worker could do.
    pub window: usize,
    /// How long a new worker has to say hello.
    pub start_timeout: Duration,
    /// How long stopping the pool waits for workers to exit before killing them.
    pub stop_timeout: Duration,
    /// How long a cancelled call may keep running (stuck in C code, say)
    /// before its worker is killed and replaced.
    pub cancel_grace: Duration,
    /// An idle worker is pinged after this long without a word from it.
    pub ping_interval: Duration,
    /// A ping unanswered for this long gets the worker killed and replaced.
    pub ping_timeout: Duration,
    /// Replace a worker after it has answered this many calls.
    pub max_calls: Option<u64>,
    /// Replace a worker whose resident memory exceeds this many bytes.
    pub max_memory: Option<u64>,
    /// Lines of worker output (from all workers) waiting to be logged;
    /// past it, lines are dropped and counted.
    pub log_queue: usize,
    /// Lines of worker output logged per second at most, after a burst of
    /// `log_queue` lines; lines beyond it are dropped and counted.
    pub log_rate: u32,
    /// When the pool's circuit opens (`None`: never).
    pub breaker: Option<BreakerConfig>,
    /// Arguments given to each worker after `--fd 3`: its per-worker init
    /// (`--import MODULE`, `--init CODE`), run before it says hello.
    pub worker_args: Vec<String>,
    /// Why the pool has no interpreter to start (its environment could not
    /// be built): every start fails at once with this message.
    pub start_error: Option<String>,
    /// Large frame bodies go through shared memory (see
    /// `snakebridge_protocol::shm`) instead of the socket.
    pub shared_memory: bool,
    /// Largest encoded call or result, in bytes. Above the socket's frame
    /// limit only with `shared_memory`.
    pub max_payload: usize,
}

impl PoolConfig {
    /// The largest payload this pool's workers and callers may send.
    pub fn payload_limit(&self) -> usize {
        if self.shared_memory {
            self.max_payload
        } else {
            self.max_payload.min(snakebridge_protocol::MAX_FRAME_LEN)
        }
    }

    /// Bytes of frames each direction's arena holds: two of the largest,
    /// so one may be in use while the next is sent.
    pub fn arena_capacity(&self) -> usize {
        self.payload_limit().saturating_mul(2)
    }

    pub fn new(python: impl Into<String>, worker_path: impl Into<String>) -> Self {
        PoolConfig {
            size: 1,
            python: python.into(),
            worker_path: worker_path.into(),
            python_path: Vec::new(),
            env: Vec::new(),
            max_queue: 10_000,
            window: 32,
            start_timeout: Duration::from_secs(30),
            stop_timeout: Duration::from_secs(5),
            cancel_grace: Duration::from_secs(2),
            ping_interval: Duration::from_secs(5),
            ping_timeout: Duration::from_secs(5),
            max_calls: None,
            max_memory: None,
            log_queue: 1_000,
            log_rate: 1_000,
            breaker: None,
            worker_args: Vec::new(),
            start_error: None,
            shared_memory: true,
            max_payload: snakebridge_protocol::MAX_FRAME_LEN,
        }
    }
}
