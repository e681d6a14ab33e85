//! msgpack → BEAM terms, built in a process-independent environment (the
//! message's, see `delivery::Courier`).

use std::sync::OnceLock;

use rustler::types::tuple::make_tuple;
use rustler::{Atom, Binary, Encoder, Env, NewBinary, Term};
use snakebridge_protocol::{Builder, DecodeError, Dtype, MAX_BIGINT_BYTES};
use snakebridge_runtime::Origin;

use crate::{atoms, object};

/// Largest map built in one `enif_make_map_from_arrays`. Larger maps built
/// that way off the VM's own threads crash OTP 24.3.4.2+/25.1+/26 releases
/// without the fix of erlang/otp#8208 (OTP 27.3 and backports); replies may
/// be decoded on runtime threads (where the runtime reads a worker's socket
/// itself), so larger maps are built one put at a time.
const MAX_MAP_FROM_ARRAYS: usize = 128;

/// Fields of `%MapSet{}` besides `:map` (Elixir 1.14 has `version: 2`, later
/// versions none), with integer values, learned from the Elixir side when the
/// NIF loads so built sets equal `MapSet.new/1`'s.
static MAPSET_FIELDS: OnceLock<Vec<(String, i64)>> = OnceLock::new();

pub fn set_mapset_fields(fields: Vec<(String, i64)>) {
    let _ = MAPSET_FIELDS.set(fields);
}

fn mapset_fields() -> &'static [(String, i64)] {
    MAPSET_FIELDS.get().map_or(&[], Vec::as_slice)
}

/// Binaries from this size on are made as sub-binaries of a frame in shared
/// memory rather than copied; a smaller one would keep the whole frame's
/// memory for little gain.
const SUB_BINARY_MIN: usize = 16 * 1024;

pub struct TermBuilder<'a, 'o> {
    pub env: Env<'a>,
    /// The worker and pool the value came from, for its handles; `None`
    /// where no handle may appear (an exception's attributes).
    pub origin: Option<&'o Origin<'o>>,
    pub pool: Atom,
    /// The frame as a resource binary, when it lies in shared memory.
    pub backing: Option<Binary<'a>>,
}

impl<'a> TermBuilder<'a, '_> {
    /// A binary with `bytes`: a sub-binary of the frame in shared memory
    /// when they lie there and are large, else a copy.
    pub fn binary(&self, bytes: &[u8]) -> Term<'a> {
        if let Some(frame) = self.backing.filter(|_| bytes.len() >= SUB_BINARY_MIN) {
            let offset = (bytes.as_ptr() as usize).wrapping_sub(frame.as_slice().as_ptr() as usize);
            if let Ok(sub) = frame.make_subbinary(offset, bytes.len()) {
                return sub.to_term(self.env);
            }
        }
        let mut bin = NewBinary::new(self.env, bytes.len());
        bin.as_mut_slice().copy_from_slice(bytes);
        bin.into()
    }
}

impl<'a> Builder for TermBuilder<'a, '_> {
    type Value = Term<'a>;
    type Error = DecodeError;

    fn nil(&mut self) -> Result<Term<'a>, DecodeError> {
        Ok(atoms::nil().to_term(self.env))
    }

    fn bool(&mut self, v: bool) -> Result<Term<'a>, DecodeError> {
        Ok(v.encode(self.env))
    }

    fn int(&mut self, v: i64) -> Result<Term<'a>, DecodeError> {
        Ok(v.encode(self.env))
    }

    fn uint(&mut self, v: u64) -> Result<Term<'a>, DecodeError> {
        Ok(v.encode(self.env))
    }

    fn bigint(&mut self, negative: bool, magnitude: &[u8]) -> Result<Term<'a>, DecodeError> {
        // The worker refuses such ints itself; one arriving anyway means a
        // misbehaving worker, named here rather than as a bare
        // binary_to_term failure.
        if magnitude.len() > MAX_BIGINT_BYTES {
            return Err(DecodeError::Invalid(format!(
                "an integer of {} bytes, over the {MAX_BIGINT_BYTES} byte limit of Erlang integers",
                magnitude.len()
            )));
        }
        // Build the external term format (LARGE_BIG_EXT) and let the VM
        // make the bignum: sign and little-endian digits are what it wants.
        let mut ext = Vec::with_capacity(magnitude.len() + 7);
        ext.extend_from_slice(&[131, 111]);
        ext.extend_from_slice(&(magnitude.len() as u32).to_be_bytes());
        ext.push(negative as u8);
        ext.extend_from_slice(magnitude);
        self.env
            .binary_to_term(&ext)
            .map(|(term, _)| term)
            .ok_or_else(|| DecodeError::Invalid("malformed big integer".into()))
    }

    fn float(&mut self, v: f64) -> Result<Term<'a>, DecodeError> {
        Ok(if v.is_nan() {
            atoms::nan().to_term(self.env)
        } else if v == f64::INFINITY {
            atoms::infinity().to_term(self.env)
        } else if v == f64::NEG_INFINITY {
            atoms::neg_infinity().to_term(self.env)
        } else {
            v.encode(self.env)
        })
    }

    fn str(&mut self, v: &str) -> Result<Term<'a>, DecodeError> {
        Ok(self.binary(v.as_bytes()))
    }

    fn bin(&mut self, v: &[u8]) -> Result<Term<'a>, DecodeError> {
        Ok(self.binary(v))
    }

    fn list(&mut self, items: Vec<Term<'a>>) -> Result<Term<'a>, DecodeError> {
        Ok(items.encode(self.env))
    }

    fn tuple(&mut self, items: Vec<Term<'a>>) -> Result<Term<'a>, DecodeError> {
        Ok(make_tuple(self.env, &items))
    }

    fn set(&mut self, items: Vec<Term<'a>>) -> Result<Term<'a>, DecodeError> {
        // %MapSet{map: %{element => []}}, plus whatever other fields this
        // Elixir's MapSet struct has (see `mapset_fields`).
        let empty = Vec::<Term>::new().encode(self.env);
        let mut inner = Term::map_new(self.env);
        for item in items {
            inner = inner.map_put(item, empty).map_err(|_| DecodeError::Invalid("bad set".into()))?;
        }
        let mut set = Term::map_new(self.env)
            .map_put(atoms::struct_(), atoms::mapset())
            .and_then(|m| m.map_put(atoms::map(), inner))
            .map_err(|_| DecodeError::Invalid("bad set".into()))?;
        for (field, value) in mapset_fields() {
            let key = rustler::Atom::from_str(self.env, field).map_err(|_| DecodeError::Invalid("bad set".into()))?;
            set = set.map_put(key, *value).map_err(|_| DecodeError::Invalid("bad set".into()))?;
        }
        Ok(set)
    }

    fn map(&mut self, pairs: Vec<(Term<'a>, Term<'a>)>) -> Result<Term<'a>, DecodeError> {
        if pairs.len() <= MAX_MAP_FROM_ARRAYS {
            let (keys, values): (Vec<Term<'a>>, Vec<Term<'a>>) = pairs.iter().copied().unzip();
            if let Ok(map) = Term::map_from_term_arrays(self.env, &keys, &values) {
                // Above 32 keys some OTP releases drop duplicate keys instead
                // of failing, leaving an inconsistent map: check the size.
                if map.map_size().is_ok_and(|size| size == pairs.len()) {
                    return Ok(map);
                }
            }
        }
        // One put per pair; also where distinct Python keys became equal
        // terms (`b"a"` and `"a"` are both the binary "a"): the last value
        // wins, as building a dict from those pairs would.
        let mut map = Term::map_new(self.env);
        for (k, v) in pairs {
            map = map.map_put(k, v).map_err(|_| DecodeError::Invalid("bad map".into()))?;
        }
        Ok(map)
    }

    fn handle(&mut self, id: u64, info: Option<(&str, &str)>) -> Result<Term<'a>, DecodeError> {
        let (type_name, repr) = info.ok_or_else(|| DecodeError::Invalid("a handle from a worker without its type".into()))?;
        let origin = self.origin.ok_or_else(|| DecodeError::Invalid("a handle where values must be sent by value".into()))?;
        Ok(object::make(self.env, origin, self.pool, id, type_name, repr))
    }

    fn tensor(&mut self, dtype: Dtype, shape: &[u64], data: &[u8]) -> Result<Term<'a>, DecodeError> {
        Ok(crate::data::tensor(self.env, dtype, shape, data))
    }

    fn tagged(&mut self, ext: i8, items: Vec<Term<'a>>) -> Result<Term<'a>, DecodeError> {
        crate::data::tagged(self.env, ext, items)
    }
}
