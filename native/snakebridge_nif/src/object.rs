//! `%SnakeBridge.Object{}`: a Python object kept in its worker, held from
//! Elixir through a resource.
//!
//! The resource owns the runtime's `ObjectRef`; when the BEAM collects the
//! last term referring to it, the destructor drops that, and the runtime
//! tells the worker to let go of the object. `release/1` does the same at
//! once, leaving the resource empty.

use std::sync::Arc;

use parking_lot::Mutex;
use rustler::{Atom, Encoder, Env, ResourceArc, Term};
use snakebridge_runtime::{ObjectRef, Origin};

use crate::atoms;
use crate::errors::atom_map;

pub struct ObjectResource {
    object: Mutex<Option<Arc<ObjectRef>>>,
}

#[rustler::resource_impl]
impl rustler::Resource for ObjectResource {}

impl ObjectResource {
    /// The object, unless it was released.
    pub fn get(&self) -> Option<Arc<ObjectRef>> {
        self.object.lock().clone()
    }
}

/// `%SnakeBridge.Object{}` for object `id` of the worker `origin`.
pub fn make<'a>(env: Env<'a>, origin: &Origin<'_>, pool: Atom, id: u64, type_name: &str, repr: &str) -> Term<'a> {
    let resource = ResourceArc::new(ObjectResource {
        object: Mutex::new(Some(origin.object(id))),
    });
    atom_map(
        env,
        &[
            (atoms::struct_(), atoms::object_struct().encode(env)),
            (atoms::type_(), type_name.encode(env)),
            (atoms::repr(), repr.encode(env)),
            (atoms::pool(), pool.encode(env)),
            (atoms::ref_(), resource.encode(env)),
        ],
    )
}

/// Lets go of the object now: `:ok`, or `:already_released`.
#[rustler::nif]
fn release(resource: ResourceArc<ObjectResource>) -> Atom {
    match resource.object.lock().take() {
        Some(_) => atoms::ok(),
        None => atoms::already_released(),
    }
}

/// The OS pid of the worker holding the object, or nil once it is gone.
#[rustler::nif]
fn object_os_pid(resource: ResourceArc<ObjectResource>) -> Option<u32> {
    resource.get().and_then(|o| o.os_pid())
}
