//! Where a caller's calls go when they name no object: to the worker that
//! holds the objects its earlier calls returned.
//!
//! Objects never move between workers, so a caller whose objects live in
//! one worker and who makes a new one elsewhere could never use the two in
//! one call. Each pool therefore remembers, per caller (the embedder's key:
//! for the NIF, the calling process), the worker of the objects it received
//! last and how many of them are still referred to. A call that names no
//! object goes there while that worker runs and takes calls; when the last
//! of those objects is dropped, the caller is load-balanced again.
//!
//! Cost for callers with no objects: one relaxed atomic load while no caller
//! of the pool holds objects, else one uncontended lock of a shard and a
//! hash lookup. Nothing is allocated per call.

use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::hash::U64Map;
use crate::route::Route;

const SHARDS: usize = 16;

/// The worker of one caller's latest objects, and how many are alive.
struct Held {
    route: Route,
    objects: usize,
}

type Shard = Mutex<U64Map<Held>>;

pub(crate) struct Affinity {
    shards: Box<[Shard]>,
    /// Callers with an entry, in all shards: while 0, lookups are skipped.
    callers: AtomicUsize,
}

impl Default for Affinity {
    fn default() -> Self {
        Affinity {
            shards: (0..SHARDS).map(|_| Mutex::new(U64Map::default())).collect(),
            callers: AtomicUsize::new(0),
        }
    }
}

impl Affinity {
    fn shard(&self, key: u64) -> &Shard {
        // Pid terms differ mostly in their middle bits.
        &self.shards[((key >> 4) ^ (key >> 20)) as usize % SHARDS]
    }

    /// The worker caller `key` (0: none) should use, if it holds objects.
    pub fn route(&self, key: u64) -> Option<Route> {
        if key == 0 || self.callers.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.shard(key).lock().get(&key).map(|held| held.route)
    }

    /// Caller `key` received an object held at `route`. The latest worker
    /// wins: objects of an earlier one no longer count for the caller.
    pub fn hold(&self, key: u64, route: Route) {
        let mut shard = self.shard(key).lock();
        match shard.entry(key) {
            Entry::Occupied(mut entry) => {
                let held = entry.get_mut();
                if held.route == route {
                    held.objects += 1;
                } else {
                    *held = Held { route, objects: 1 };
                }
            }
            Entry::Vacant(entry) => {
                entry.insert(Held { route, objects: 1 });
                self.callers.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// An object that caller `key` received from `route` was dropped.
    pub fn release(&self, key: u64, route: Route) {
        let mut shard = self.shard(key).lock();
        let Some(held) = shard.get_mut(&key) else {
            return;
        };
        if held.route != route {
            return;
        }
        held.objects -= 1;
        if held.objects == 0 {
            shard.remove(&key);
            self.callers.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(slot: usize, incarnation: u64) -> Route {
        Route {
            pool: 1,
            slot,
            incarnation,
        }
    }

    #[test]
    fn a_caller_follows_its_live_objects_then_is_free_again() {
        let affinity = Affinity::default();
        assert_eq!(affinity.route(42), None);
        affinity.hold(42, route(1, 7));
        affinity.hold(42, route(1, 7));
        assert_eq!(affinity.route(42), Some(route(1, 7)));
        assert_eq!(affinity.route(43), None);
        affinity.release(42, route(1, 7));
        assert_eq!(affinity.route(42), Some(route(1, 7)));
        affinity.release(42, route(1, 7));
        assert_eq!(affinity.route(42), None);
        assert_eq!(affinity.callers.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_latest_worker_wins_and_older_objects_do_not_count() {
        let affinity = Affinity::default();
        affinity.hold(5, route(0, 1));
        affinity.hold(5, route(1, 2));
        assert_eq!(affinity.route(5), Some(route(1, 2)));
        affinity.release(5, route(0, 1));
        assert_eq!(affinity.route(5), Some(route(1, 2)));
        affinity.release(5, route(1, 2));
        assert_eq!(affinity.route(5), None);
    }

    #[test]
    fn key_zero_is_nobody() {
        let affinity = Affinity::default();
        affinity.hold(9, route(0, 1));
        assert_eq!(affinity.route(0), None);
    }
}
