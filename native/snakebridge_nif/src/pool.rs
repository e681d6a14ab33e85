//! Pools: starting and stopping them, finding them by name, their stats.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::RwLock;
use rustler::{Atom, Encoder, Env, LocalPid, NifResult, ResourceArc, Term};
use snakebridge_runtime::{BreakerConfig, CallTable, Pool, PoolConfig};

use crate::atoms;
use crate::delivery::{Caller, Delivery};
use crate::errors;

pub type NifPool = Pool<Delivery>;

/// Every pending call of every pool, so `cancel/1` needs only the reference.
pub fn call_table() -> &'static Arc<CallTable<Caller>> {
    static TABLE: OnceLock<Arc<CallTable<Caller>>> = OnceLock::new();
    TABLE.get_or_init(|| Arc::new(CallTable::default()))
}

/// Running pools by name. Keyed by the atom's term value: atoms are never
/// garbage collected, so the value is a stable name.
fn registry() -> &'static RwLock<HashMap<usize, Arc<NifPool>>> {
    static POOLS: OnceLock<RwLock<HashMap<usize, Arc<NifPool>>>> = OnceLock::new();
    POOLS.get_or_init(Default::default)
}

pub fn lookup(name: Atom) -> Option<Arc<NifPool>> {
    registry().read().get(&name.as_c_arg()).cloned()
}

/// Held by the `SnakeBridge.Pool` process. When that process dies, the
/// resource is collected and the pool stops with it.
pub struct PoolResource {
    name: usize,
    pool: Arc<NifPool>,
    stopped: AtomicBool,
}

#[rustler::resource_impl]
impl rustler::Resource for PoolResource {}

impl PoolResource {
    fn unregister(&self) {
        let mut pools = registry().write();
        if pools.get(&self.name).is_some_and(|p| Arc::ptr_eq(p, &self.pool)) {
            pools.remove(&self.name);
        }
    }
}

impl Drop for PoolResource {
    fn drop(&mut self) {
        if self.stopped.load(Ordering::Acquire) {
            return;
        }
        self.unregister();
        // The destructor runs on a scheduler thread; stopping waits for
        // processes to exit, so it happens elsewhere.
        let pool = self.pool.clone();
        let _ = std::thread::Builder::new()
            .name("sb-pool-stop".into())
            .spawn(move || pool.stop());
    }
}

fn field<'a, T: rustler::Decoder<'a>>(config: Term<'a>, key: Atom) -> NifResult<T> {
    config.map_get(key)?.decode()
}

/// `nil`, or `%{failures: n, window: ms, cooldown: ms}`.
fn breaker_config(term: Term) -> NifResult<Option<BreakerConfig>> {
    if term == atoms::nil().to_term(term.get_env()) {
        return Ok(None);
    }
    Ok(Some(BreakerConfig {
        failures: field(term, atoms::failures())?,
        window: Duration::from_millis(field(term, atoms::window())?),
        cooldown: Duration::from_millis(field(term, atoms::cooldown())?),
    }))
}

#[rustler::nif(schedule = "DirtyIo")]
fn pool_start<'a>(env: Env<'a>, name: Atom, config: Term<'a>) -> NifResult<Term<'a>> {
    let mut pool_config = PoolConfig::new(
        field::<String>(config, atoms::python())?,
        field::<String>(config, atoms::worker_path())?,
    );
    pool_config.size = field::<usize>(config, atoms::size())?.max(1);
    pool_config.python_path = field(config, atoms::python_path())?;
    pool_config.env = field(config, atoms::env())?;
    pool_config.max_queue = field::<usize>(config, atoms::max_queue())?.max(1);
    pool_config.stop_timeout = Duration::from_secs(5);
    pool_config.max_calls = field(config, atoms::max_calls())?;
    pool_config.max_memory = field::<Option<u64>>(config, atoms::max_memory_mb())?.map(|mb| mb * 1024 * 1024);
    pool_config.ping_interval = Duration::from_millis(field(config, atoms::health_check_interval())?);
    pool_config.ping_timeout = Duration::from_millis(field(config, atoms::health_check_timeout())?);
    pool_config.cancel_grace = Duration::from_millis(field(config, atoms::cancel_grace())?);
    pool_config.log_queue = field::<usize>(config, atoms::log_queue())?.max(1);
    pool_config.log_rate = field::<u32>(config, atoms::log_rate())?.max(1);
    pool_config.breaker = breaker_config(config.map_get(atoms::circuit_breaker())?)?;
    pool_config.worker_args = field(config, atoms::worker_args())?;
    pool_config.start_timeout = Duration::from_millis(field(config, atoms::start_timeout())?);
    pool_config.start_error = field(config, atoms::start_error())?;
    pool_config.shared_memory = field(config, atoms::shared_memory())?;
    pool_config.max_payload = field(config, atoms::max_payload())?;
    let owner: LocalPid = field(config, atoms::owner())?;
    let output_to_caller = config.map_get(atoms::output()).is_ok_and(|o| o == atoms::caller().to_term(env));

    let mut pools = registry().write();
    if pools.contains_key(&name.as_c_arg()) {
        let message = format!("a pool named {} is already running", inspect_atom(name, env));
        return Ok(errors::error_tuple(env, atoms::already_started(), &message));
    }
    let pool_name = inspect_atom(name, env);
    let pool = match Pool::start(pool_name, pool_config, Arc::new(Delivery { owner, pool: name, output_to_caller }), call_table().clone()) {
        Ok(pool) => Arc::new(pool),
        Err(e) => {
            let message = format!("could not start pool threads: {e}");
            return Ok(errors::error_tuple(env, atoms::python_unavailable(), &message));
        }
    };
    pools.insert(name.as_c_arg(), pool.clone());
    let resource = ResourceArc::new(PoolResource {
        name: name.as_c_arg(),
        pool,
        stopped: AtomicBool::new(false),
    });
    Ok((atoms::ok(), resource).encode(env))
}

/// Stops the pool and waits for its workers to exit (bounded by the stop
/// timeout), on a dirty I/O scheduler since it blocks.
#[rustler::nif(schedule = "DirtyIo")]
fn pool_stop(resource: ResourceArc<PoolResource>) -> Atom {
    resource.unregister();
    resource.pool.stop();
    resource.stopped.store(true, Ordering::Release);
    atoms::ok()
}

/// Replaces the pool's workers one at a time (see `Pool::restart`): `:ok`
/// once every one is new. Blocks, so on a dirty I/O scheduler.
#[rustler::nif(schedule = "DirtyIo")]
fn pool_restart<'a>(env: Env<'a>, name: Atom) -> Term<'a> {
    let Some(pool) = lookup(name) else {
        return not_found(env, name);
    };
    match pool.restart() {
        Ok(()) => atoms::ok().encode(env),
        Err(failure) => (atoms::error(), errors::failure(env, &failure)).encode(env),
    }
}

/// Reads each worker's memory from /proc, so it runs on a dirty I/O scheduler.
#[rustler::nif(schedule = "DirtyIo")]
fn stats<'a>(env: Env<'a>, name: Atom) -> Term<'a> {
    let Some(pool) = lookup(name) else {
        return not_found(env, name);
    };
    let stats = pool.stats();
    let workers: Vec<Term> = stats
        .workers
        .iter()
        .map(|w| {
            let state = Atom::from_str(env, w.state).expect("state names are valid atoms");
            errors::atom_map(
                env,
                &[
                    (atoms::os_pid(), w.os_pid.encode(env)),
                    (atoms::state(), state.encode(env)),
                    (atoms::in_flight(), w.in_flight.encode(env)),
                    (atoms::cancelling(), w.cancelling.encode(env)),
                    (atoms::calls(), w.calls.encode(env)),
                    (atoms::errors(), w.errors.encode(env)),
                    (atoms::restarts(), w.restarts.encode(env)),
                    (atoms::objects(), w.objects.encode(env)),
                    (atoms::rss(), w.rss.encode(env)),
                    (atoms::shared_memory(), w.shared_memory.encode(env)),
                ],
            )
        })
        .collect();
    let circuit = errors::atom_map(
        env,
        &[
            (atoms::state(), Atom::from_str(env, stats.circuit.state).expect("state names are valid atoms").encode(env)),
            (atoms::failures(), stats.circuit.failures.encode(env)),
            (atoms::opened(), stats.circuit.opened.encode(env)),
            (atoms::retry_in_ms(), stats.circuit.retry_in_ms.encode(env)),
        ],
    );
    let total = |f: fn(&snakebridge_runtime::WorkerStats) -> u64| stats.workers.iter().map(f).sum::<u64>();
    let map = errors::atom_map(
        env,
        &[
            (atoms::queue_length(), stats.queue_length.encode(env)),
            (atoms::max_queue(), stats.max_queue.encode(env)),
            (atoms::size(), stats.workers.len().encode(env)),
            (atoms::calls(), total(|w| w.calls).encode(env)),
            (atoms::errors(), total(|w| w.errors).encode(env)),
            (atoms::restarts(), total(|w| w.restarts).encode(env)),
            (atoms::workers(), workers.encode(env)),
            (atoms::circuit(), circuit),
        ],
    );
    (atoms::ok(), map).encode(env)
}

pub fn not_found<'a>(env: Env<'a>, name: Atom) -> Term<'a> {
    let message = format!("no SnakeBridge pool named {} is running", inspect_atom(name, env));
    errors::error_tuple(env, atoms::pool_not_found(), &message)
}

fn inspect_atom(name: Atom, env: Env) -> String {
    name.to_term(env)
        .atom_to_string()
        .map_or_else(|_| "?".to_owned(), |s| format!(":{s}"))
}
