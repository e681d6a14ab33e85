//! Hashing for the tables keyed by a `u64` the runtime itself produced
//! (call ids, the term values of calling processes): no adversary picks
//! these keys, so SipHash's cost would buy nothing.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// One multiply per key (Fibonacci hashing): it spreads keys that differ in
/// a few middle bits (pid terms) and keeps well-mixed ones (call ids) so.
#[derive(Default)]
pub(crate) struct U64Hasher(u64);

impl Hasher for U64Hasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ b as u64;
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A map keyed by such a `u64`.
pub(crate) type U64Map<V> = HashMap<u64, V, BuildHasherDefault<U64Hasher>>;
