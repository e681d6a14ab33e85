//! The object table: Python objects the host holds handles to.
//!
//! A reply value with no by-value form is kept here under a new id and sent
//! as a handle (`encode`); a handle the host sends back (an argument, a
//! call's target) is looked up here (`decode`, `worker`); a release frame
//! drops the host's references. Ids start at 1 and are never reused within
//! the process, so a handle from before a release can only miss, never find
//! another object.
//!
//! Everything runs on the main thread, under the GIL. The table is a
//! thread-local `RefCell` borrowed only in short Rust sections: objects are
//! moved out before they are dropped, because dropping one may run its
//! `__del__`, which may come back here (`object_count()`).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use pyo3::prelude::*;

thread_local! {
    static TABLE: RefCell<HashMap<u64, Py<PyAny>>> = RefCell::new(HashMap::new());
    static NEXT_ID: Cell<u64> = const { Cell::new(1) };
}

/// Keeps `obj` alive under a new id.
pub(crate) fn register(obj: &Bound<'_, PyAny>) -> u64 {
    let id = NEXT_ID.replace(NEXT_ID.get() + 1);
    let object = obj.clone().unbind();
    TABLE.with_borrow_mut(|table| table.insert(id, object));
    id
}

/// The object held under `id`, if any.
pub(crate) fn get<'py>(py: Python<'py>, id: u64) -> Option<Bound<'py, PyAny>> {
    TABLE.with_borrow(|table| table.get(&id).map(|object| object.bind(py).clone()))
}

/// Drops the objects held under `ids`; unknown ids are ignored.
pub(crate) fn release(ids: impl IntoIterator<Item = u64>) {
    let released: Vec<Py<PyAny>> = TABLE.with_borrow_mut(|table| ids.into_iter().filter_map(|id| table.remove(&id)).collect());
    drop(released);
}

/// Drops every object: `serve` is over, no handle can come back.
pub(crate) fn clear() {
    let all = TABLE.with_borrow_mut(std::mem::take);
    drop(all);
}

pub(crate) fn count() -> usize {
    TABLE.with_borrow(HashMap::len)
}

/// The message of a `stale_handle` failure.
pub(crate) fn stale_message(id: u64) -> String {
    format!("object {id} is not held by this worker (released, or the worker restarted)")
}
