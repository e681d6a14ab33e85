//! Python objects the host refers to: one [`ObjectRef`] per handle a worker
//! sent, released in that worker when the last reference goes.
//!
//! The embedder keeps an `Arc<ObjectRef>` in whatever its users hold (for
//! the NIF, a resource); a call that passes the handle keeps another clone in
//! its job until the frame is on the socket. So the release, which the
//! writer thread sends after every frame already written, can never overtake
//! a call that uses the object.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use crate::affinity::Affinity;
use crate::route::Route;
use crate::connection::Connection;
use crate::slot::Slot;

/// One object in one worker process.
pub struct ObjectRef {
    /// The object's id in its worker's table.
    pub id: u64,
    pub(crate) route: Route,
    conn: Weak<Connection>,
    slot: Weak<Slot>,
    /// The caller it was made for, whose calls follow it (see `affinity`).
    owner: Option<(Arc<Affinity>, u64)>,
}

impl ObjectRef {
    pub fn route(&self) -> Route {
        self.route
    }

    /// OS pid of the worker holding the object, if it still runs.
    pub fn os_pid(&self) -> Option<u32> {
        self.conn.upgrade().filter(|c| !c.is_dead()).map(|c| c.os_pid)
    }
}

impl Drop for ObjectRef {
    fn drop(&mut self) {
        // Runs wherever the last reference goes: for the NIF, in a resource
        // destructor during a garbage collection, so nothing here may block
        // for long (uncontended mutexes, one non-blocking send).
        if let Some((affinity, key)) = &self.owner {
            affinity.release(*key, self.route);
        }
        let Some(conn) = self.conn.upgrade() else {
            return;
        };
        conn.objects.fetch_sub(1, Ordering::Relaxed);
        if conn.is_dead() {
            return;
        }
        let first = {
            let mut releases = conn.releases.lock();
            releases.push(self.id);
            releases.len() == 1
        };
        if first {
            if let Some(slot) = self.slot.upgrade() {
                slot.wake_writer_now();
            }
        }
    }
}

/// The worker a reply came from, to make [`ObjectRef`]s for the handles in
/// it.
pub struct Origin<'a> {
    pub(crate) pool: u64,
    pub(crate) slot: &'a Arc<Slot>,
    pub(crate) conn: &'a Arc<Connection>,
    /// The pool's affinity table, and the key of the caller the handles
    /// go to (0: none, such as a reply nobody reads).
    pub(crate) affinity: &'a Arc<Affinity>,
    pub(crate) owner: u64,
}

impl Origin<'_> {
    pub fn object(&self, id: u64) -> Arc<ObjectRef> {
        self.conn.objects.fetch_add(1, Ordering::Relaxed);
        let route = Route {
            pool: self.pool,
            slot: self.slot.index(),
            incarnation: self.conn.incarnation,
        };
        let owner = (self.owner != 0).then(|| {
            self.affinity.hold(self.owner, route);
            (self.affinity.clone(), self.owner)
        });
        Arc::new(ObjectRef {
            id,
            route,
            conn: Arc::downgrade(self.conn),
            slot: Arc::downgrade(self.slot),
            owner,
        })
    }
}
