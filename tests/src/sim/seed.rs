//! Seeds: where a run's randomness comes from, and the guard that prints it on failure.
//!
//! Every random choice of a simulation (network delay, loss, duplication, talker start
//! phases, the shard's SSRCs) is drawn from one seed. A failing test prints
//! `seed = N (replay with EARSHOT_SEED=N)`; running it again with that variable set
//! replays the run bit for bit, because nothing in the harness reads a real clock or
//! iterates a hash map.

use std::fmt;

/// The environment variable that overrides every test's default seed.
pub const SEED_ENV: &str = "EARSHOT_SEED";

/// The seed for a test: `EARSHOT_SEED` if set (and a number), otherwise a fixed seed
/// derived from `test_name` so that each test explores its own run but CI is stable.
pub fn seed_for(test_name: &str) -> u64 {
    match std::env::var(SEED_ENV) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{SEED_ENV}={v:?} is not an unsigned 64-bit number")),
        Err(_) => fnv1a(test_name.as_bytes()),
    }
}

/// FNV-1a: a stable hash (unlike `DefaultHasher`, whose output may change between Rust
/// releases), so a default seed means the same run on every toolchain.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Prints the seed if the thread panics (a failed assertion) while the guard is alive.
///
/// Held by [`crate::sim::Sim`], so every test that builds a simulation gets it; a test
/// may also hold its own around code that runs several simulations.
pub struct SeedGuard {
    seed: u64,
    label: String,
}

impl SeedGuard {
    /// A guard that names `label` and `seed` on failure.
    pub fn new(label: &str, seed: u64) -> SeedGuard {
        SeedGuard {
            seed,
            label: label.to_string(),
        }
    }

    /// The seed this guard reports.
    pub fn seed(&self) -> u64 {
        self.seed
    }
}

impl fmt::Debug for SeedGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SeedGuard({}: {})", self.label, self.seed)
    }
}

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "{}: seed = {} (replay with {SEED_ENV}={})",
                self.label, self.seed, self.seed
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_seeds_differ_per_test_and_are_stable() {
        assert_ne!(fnv1a(b"a"), fnv1a(b"b"));
        // The published FNV-1a test vector for "a".
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
