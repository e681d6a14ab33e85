//! BEAM terms → msgpack, written straight into the request frame.
//!
//! Errors name where in the arguments the offending term is (`args[0][2]`,
//! `kwargs[:opts]["key"]`), built while the recursion unwinds so the happy
//! path pays nothing for it.

use std::sync::Arc;

use rustler::types::tuple::get_tuple;
use rustler::{Binary, ResourceArc, Term, TermType};
use snakebridge_protocol::value::{self as wire, MAX_DEPTH};
use snakebridge_runtime::ObjectRef;

use crate::atoms;
use crate::data::{self, Sink};
pub use crate::encode_error::EncodeError;
use crate::object::ObjectResource;

type Result<T = ()> = std::result::Result<T, EncodeError>;

/// Writes terms into `out`, giving up with [`EncodeError::NeedsDirty`] once
/// the work done passes `budget` (a normal scheduler must not be held for
/// long). Work is measured in output bytes, except that bytes copied whole
/// from a binary count for an eighth: a memcpy is that much cheaper per byte
/// than walking terms.
pub struct TermEncoder<'o> {
    pub out: &'o mut Vec<u8>,
    pub budget: usize,
    /// Output bytes that were bulk copies of binaries.
    pub copied: usize,
    /// The objects named so far; all in one worker process.
    pub objects: Vec<Arc<ObjectRef>>,
}

impl TermEncoder<'_> {
    pub fn new(out: &mut Vec<u8>, budget: usize) -> TermEncoder<'_> {
        TermEncoder {
            out,
            budget,
            copied: 0,
            objects: Vec::new(),
        }
    }

    /// Writes a `%SnakeBridge.Object{}` as a handle to its object.
    pub fn object(&mut self, term: Term) -> Result {
        let resource = term
            .map_get(atoms::ref_())
            .and_then(|r| r.decode::<ResourceArc<ObjectResource>>())
            .map_err(|_| unsupported("a malformed SnakeBridge.Object", Vec::new()))?;
        let object = resource.get().ok_or(EncodeError::Released { path: Vec::new() })?;
        if self.objects.first().is_some_and(|first| first.route() != object.route()) {
            return Err(EncodeError::Conflict { path: Vec::new() });
        }
        wire::write_handle(self.out, object.id, None)?;
        self.objects.push(object);
        Ok(())
    }

    pub(crate) fn check_budget(&self) -> Result {
        if self.out.len() - self.copied + self.copied / 8 > self.budget {
            Err(EncodeError::NeedsDirty)
        } else {
            Ok(())
        }
    }

    /// Encodes a list of positional arguments as an array.
    pub fn args(&mut self, args: Term) -> Result {
        self.list(args, 0)
    }

    /// Encodes keyword arguments (a map, or a list of `{key, value}`) as a
    /// map with string keys.
    pub fn kwargs(&mut self, kwargs: Term) -> Result {
        if kwargs.is_map() {
            let len = kwargs.map_size().unwrap_or(0);
            wire::write_map_len(self.out, len)?;
            for (k, v) in rustler::types::map::MapIterator::new(kwargs).into_iter().flatten() {
                self.kwarg(k, v)?;
            }
            return Ok(());
        }
        let Ok(len) = kwargs.list_length() else {
            return Err(EncodeError::Unsupported {
                what: "keyword arguments that are not a map or keyword list".into(),
                path: Vec::new(),
            });
        };
        wire::write_map_len(self.out, len)?;
        for (i, pair) in kwargs.into_list_iterator().into_iter().flatten().enumerate() {
            match get_tuple(pair) {
                Ok(kv) if kv.len() == 2 => self.kwarg(kv[0], kv[1])?,
                _ => {
                    return Err(EncodeError::Unsupported {
                        what: "an element that is not a {key, value} tuple".into(),
                        path: vec![format!("[{i}]")],
                    })
                }
            }
        }
        Ok(())
    }

    fn kwarg(&mut self, key: Term, value: Term) -> Result {
        let name = if key.is_atom() {
            atom_name(key)
        } else {
            key.decode::<&str>().ok().map(str::to_owned)
        };
        let Some(name) = name else {
            return Err(unsupported(
                "a keyword argument name that is not an atom or string",
                vec![format!("[{}]", short_repr(key))],
            ));
        };
        wire::write_str(self.out, &name)?;
        self.term(value, 1).map_err(|e| e.at(|| format!("[{}]", short_repr(key))))
    }

    pub(crate) fn term(&mut self, term: Term, depth: usize) -> Result {
        match term.get_type() {
            TermType::Atom => self.atom(term),
            TermType::Integer => self.integer(term),
            TermType::Float => {
                let f: f64 = term.decode().map_err(|_| unsupported("a float", Vec::new()))?;
                wire::write_f64(self.out, f);
                Ok(())
            }
            TermType::Binary => self.binary(term),
            TermType::List => self.list(term, depth),
            TermType::Tuple => {
                check_depth(depth)?;
                let items = get_tuple(term).map_err(|_| unsupported("a tuple", Vec::new()))?;
                let start = wire::begin_tuple(self.out, items.len())?;
                for (i, item) in items.iter().enumerate() {
                    self.term(*item, depth + 1).map_err(|e| e.at(|| format!("[{i}]")))?;
                }
                wire::finish_container(self.out, start)?;
                self.check_budget()
            }
            TermType::Map => self.map(term, depth),
            TermType::Pid => Err(unsupported("a pid", Vec::new())),
            TermType::Port => Err(unsupported("a port", Vec::new())),
            TermType::Ref => Err(unsupported("a reference", Vec::new())),
            TermType::Fun => Err(unsupported("a function", Vec::new())),
            TermType::Unknown => Err(unsupported("this term", Vec::new())),
        }
    }

    fn atom(&mut self, term: Term) -> Result {
        let env = term.get_env();
        if term == atoms::nil().to_term(env) {
            wire::write_nil(self.out);
        } else if term == atoms::true_().to_term(env) {
            wire::write_bool(self.out, true);
        } else if term == atoms::false_().to_term(env) {
            wire::write_bool(self.out, false);
        } else if term == atoms::nan().to_term(env) {
            wire::write_f64(self.out, f64::NAN);
        } else if term == atoms::infinity().to_term(env) {
            wire::write_f64(self.out, f64::INFINITY);
        } else if term == atoms::neg_infinity().to_term(env) {
            wire::write_f64(self.out, f64::NEG_INFINITY);
        } else {
            let name = atom_name(term).ok_or_else(|| unsupported("an atom", Vec::new()))?;
            wire::write_str(self.out, &name)?;
        }
        Ok(())
    }

    fn integer(&mut self, term: Term) -> Result {
        if let Ok(i) = term.decode::<i64>() {
            wire::write_i64(self.out, i);
        } else if let Ok(u) = term.decode::<u64>() {
            wire::write_u64(self.out, u);
        } else {
            // Big integers: the external term format already holds sign and
            // little-endian magnitude, exactly what the wire wants.
            let ext = term.to_binary();
            let (negative, magnitude) =
                bignum_parts(ext.as_slice()).ok_or_else(|| unsupported("this integer", Vec::new()))?;
            wire::write_bigint(self.out, negative, magnitude)?;
            self.check_budget()?;
        }
        Ok(())
    }

    fn binary(&mut self, term: Term) -> Result {
        let Ok(bin) = Binary::from_term(term) else {
            return Err(unsupported("a bitstring that is not a whole number of bytes", Vec::new()));
        };
        let bytes = bin.as_slice();
        // Checked before the UTF-8 scan and the copy, which a binary over
        // the budget would cost the normal scheduler only to be encoded
        // again on a dirty one.
        if self.out.len() - self.copied + (self.copied + bytes.len()) / 8 > self.budget {
            return Err(EncodeError::NeedsDirty);
        }
        match std::str::from_utf8(bytes) {
            Ok(s) => wire::write_str(self.out, s)?,
            Err(_) => wire::write_bin(self.out, bytes)?,
        }
        self.copied += bytes.len();
        self.check_budget()
    }

    pub(crate) fn list(&mut self, term: Term, depth: usize) -> Result {
        check_depth(depth)?;
        let Ok(len) = term.list_length() else {
            return Err(unsupported("an improper list", Vec::new()));
        };
        wire::write_array_len(self.out, len)?;
        let mut tail = term;
        let mut i = 0;
        while let Ok((head, rest)) = tail.list_get_cell() {
            self.term(head, depth + 1).map_err(|e| e.at(|| format!("[{i}]")))?;
            tail = rest;
            i += 1;
        }
        self.check_budget()
    }

    fn map(&mut self, term: Term, depth: usize) -> Result {
        check_depth(depth)?;
        let env = term.get_env();
        if let Ok(module) = term.map_get(atoms::struct_()) {
            if module == atoms::mapset().to_term(env) {
                return self.mapset(term, depth);
            }
            if module == atoms::object_struct().to_term(env) {
                return self.object(term);
            }
            if module == atoms::bytes_struct().to_term(env) {
                let data = term.map_get(atoms::data()).map_err(|_| unsupported("a malformed SnakeBridge.Bytes", Vec::new()))?;
                let bin = Binary::from_term(data)
                    .map_err(|_| unsupported("SnakeBridge.Bytes holding something other than a binary", Vec::new()))?;
                wire::write_bin(self.out, bin.as_slice())?;
                self.copied += bin.as_slice().len();
                return self.check_budget();
            }
            if let Some(written) = data::encode(self, module, term, depth) {
                return written;
            }
            let name = module.atom_to_string().unwrap_or_else(|_| "?".into());
            let name = name.strip_prefix("Elixir.").unwrap_or(&name).to_owned();
            return Err(unsupported(&format!("a %{name}{{}} struct"), Vec::new()));
        }
        let len = term.map_size().unwrap_or(0);
        wire::write_map_len(self.out, len)?;
        for (k, v) in rustler::types::map::MapIterator::new(term).into_iter().flatten() {
            self.term(k, depth + 1).map_err(|e| e.at(|| format!("[key {}]", short_repr(k))))?;
            self.term(v, depth + 1).map_err(|e| e.at(|| format!("[{}]", short_repr(k))))?;
        }
        self.check_budget()
    }

    fn mapset(&mut self, term: Term, depth: usize) -> Result {
        let inner = term
            .map_get(atoms::map())
            .map_err(|_| unsupported("a malformed MapSet", Vec::new()))?;
        let len = inner.map_size().map_err(|_| unsupported("a malformed MapSet", Vec::new()))?;
        let start = wire::begin_set(self.out, len)?;
        for (i, (k, _)) in rustler::types::map::MapIterator::new(inner).into_iter().flatten().enumerate() {
            self.term(k, depth + 1).map_err(|e| e.at(|| format!("[element {i}]")))?;
        }
        wire::finish_container(self.out, start)?;
        self.check_budget()
    }
}

fn unsupported(what: &str, path: Vec<String>) -> EncodeError {
    EncodeError::Unsupported { what: what.to_owned(), path }
}

fn check_depth(depth: usize) -> Result {
    if depth >= MAX_DEPTH {
        Err(EncodeError::TooDeep { path: Vec::new() })
    } else {
        Ok(())
    }
}

/// A short, readable rendering of a map key for error paths.
fn short_repr(term: Term) -> String {
    if let Ok(s) = term.decode::<&str>() {
        return format!("{s:?}");
    }
    if term.is_atom() {
        if let Some(name) = atom_name(term) {
            return format!(":{name}");
        }
    }
    if let Ok(i) = term.decode::<i64>() {
        return i.to_string();
    }
    match term.get_type() {
        TermType::Tuple => "{…}".into(),
        TermType::List => "[…]".into(),
        TermType::Map => "%{…}".into(),
        _ => "…".into(),
    }
}

/// An atom's name. Atoms are UTF-8, but `enif_get_atom` reads UTF-8 only
/// from OTP 26 on, and rustler asks for Latin-1: a name outside Latin-1 is
/// read from the atom's external term format instead.
fn atom_name(term: Term) -> Option<String> {
    if let Ok(name) = term.atom_to_string() {
        return Some(name);
    }
    let ext = term.to_binary();
    let bytes = match ext.as_slice() {
        // ATOM_UTF8_EXT (2-byte length), SMALL_ATOM_UTF8_EXT (1-byte length).
        [131, 118, a, b, name @ ..] if name.len() == u16::from_be_bytes([*a, *b]) as usize => name,
        [131, 119, n, name @ ..] if name.len() == *n as usize => name,
        _ => return None,
    };
    std::str::from_utf8(bytes).ok().map(str::to_owned)
}

/// Sign and magnitude of an integer in external term format
/// (`131, SMALL_BIG_EXT n sign digits` or `131, LARGE_BIG_EXT n:32 sign digits`).
fn bignum_parts(ext: &[u8]) -> Option<(bool, &[u8])> {
    match ext {
        [131, 110, n, sign, digits @ ..] if digits.len() == *n as usize => Some((*sign == 1, digits)),
        [131, 111, a, b, c, d, sign, digits @ ..] if digits.len() == u32::from_be_bytes([*a, *b, *c, *d]) as usize => {
            Some((*sign == 1, digits))
        }
        _ => None,
    }
}

impl Sink for TermEncoder<'_> {
    fn out(&mut self) -> &mut Vec<u8> {
        self.out
    }

    fn copied(&mut self, bytes: usize) {
        self.copied += bytes;
    }

    fn value(&mut self, term: Term, depth: usize) -> Result {
        self.term(term, depth)
    }

    fn list(&mut self, term: Term, depth: usize) -> Result {
        TermEncoder::list(self, term, depth)
    }

    fn kwargs(&mut self, term: Term) -> Result {
        TermEncoder::kwargs(self, term)
    }

    fn check_budget(&self) -> Result {
        TermEncoder::check_budget(self)
    }
}
