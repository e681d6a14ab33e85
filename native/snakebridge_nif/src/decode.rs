//! msgpack → BEAM terms, built in the runtime thread's own environment.

use rustler::types::tuple::make_tuple;
use rustler::{Encoder, Env, NewBinary, Term};
use snakebridge_protocol::{Builder, DecodeError};

use crate::atoms;

pub struct TermBuilder<'a> {
    pub env: Env<'a>,
}

impl<'a> TermBuilder<'a> {
    fn binary(&self, bytes: &[u8]) -> Term<'a> {
        let mut bin = NewBinary::new(self.env, bytes.len());
        bin.as_mut_slice().copy_from_slice(bytes);
        bin.into()
    }
}

impl<'a> Builder for TermBuilder<'a> {
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
        // %MapSet{map: %{element => []}}, the representation MapSet uses.
        let empty = Vec::<Term>::new().encode(self.env);
        let mut inner = Term::map_new(self.env);
        for item in items {
            inner = inner.map_put(item, empty).map_err(|_| DecodeError::Invalid("bad set".into()))?;
        }
        let keys = [atoms::struct_().encode(self.env), atoms::map().encode(self.env)];
        let values = [atoms::mapset().encode(self.env), inner];
        Term::map_from_term_arrays(self.env, &keys, &values).map_err(|_| DecodeError::Invalid("bad set".into()))
    }

    fn map(&mut self, pairs: Vec<(Term<'a>, Term<'a>)>) -> Result<Term<'a>, DecodeError> {
        let (keys, values): (Vec<Term<'a>>, Vec<Term<'a>>) = pairs.into_iter().unzip();
        match Term::map_from_term_arrays(self.env, &keys, &values) {
            Ok(map) => Ok(map),
            // Distinct Python keys can become equal terms (`b"a"` and `"a"`
            // are both the binary "a"); the slower path keeps the last value,
            // as building a dict from those pairs would.
            Err(_) => {
                let mut map = Term::map_new(self.env);
                for (k, v) in keys.into_iter().zip(values) {
                    map = map.map_put(k, v).map_err(|_| DecodeError::Invalid("bad map".into()))?;
                }
                Ok(map)
            }
        }
    }
}
