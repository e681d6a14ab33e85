//! Where a call must run: shared by objects (the worker that holds one)
//! and affinity (the worker that holds a caller's objects).

/// One slot of one pool, and the exact worker process (incarnation) in it:
/// where a call that uses an object must run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub pool: u64,
    pub slot: usize,
    pub incarnation: u64,
}
