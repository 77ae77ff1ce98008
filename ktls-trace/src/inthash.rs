//! The hasher of the maps the per-event path looks up (process names by pid, kernel TLS
//! sockets by id). The standard map's SipHash was about 7% of `trace --json`'s time per
//! event; these keys need no protection against chosen collisions: socket ids are already
//! keyed hashes of kernel addresses (`ktls_trace_common::sock_id`), pids are handed out by
//! the kernel, and both maps are bounded or pruned.

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
};

/// Multiply-rotate mixing of integer keys (odd 64-bit constant: a bijection per word).
#[derive(Debug, Default, Clone, Copy)]
pub struct IntHasher(u64);

const K: u64 = 0x9e37_79b9_7f4a_7c15;

impl Hasher for IntHasher {
    fn finish(&self) -> u64 {
        // The map takes its bucket from the low bits and its tag from the top ones: bring
        // the well-mixed high half down.
        self.0 ^ (self.0 >> 32)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b.into());
        }
    }

    fn write_u32(&mut self, v: u32) {
        self.write_u64(v.into());
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(23) ^ v).wrapping_mul(K);
    }
}

/// A map keyed by integers, hashed with [`IntHasher`].
pub type IntMap<K, V> = HashMap<K, V, BuildHasherDefault<IntHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_keys_spread() {
        let mut m: IntMap<u32, u32> = IntMap::default();
        for pid in 0..10_000 {
            m.insert(pid, pid);
        }
        assert!((0..10_000).all(|p| m.get(&p) == Some(&p)));
        let low: std::collections::HashSet<u64> = (0u32..1024)
            .map(|p| {
                let mut h = IntHasher::default();
                h.write_u32(p);
                h.finish() & 1023
            })
            .collect();
        assert!(low.len() > 600, "{}", low.len());
    }
}
