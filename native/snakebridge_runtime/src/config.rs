use std::time::Duration;

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
}

impl PoolConfig {
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
        }
    }
}
