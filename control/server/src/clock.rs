//! The sidecar's one reading of the wall clock.
//!
//! The rules state machine takes time as an argument (`now_ms`); this is the edge where
//! the server reads it, behind a trait so tests can drive time by hand.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// Wall-clock milliseconds since the Unix epoch, as stamped on timeline events.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current wall time in milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    // This is the control side's one clock edge (STYLE.md rule 3): timeline stamps are
    // wall time by definition, and everything downstream takes `now_ms` as an input.
    #[allow(clippy::disallowed_methods)]
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            // A clock before 1970 is a broken host; stamp 0 rather than refuse service.
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to (tests, simulations).
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ms: AtomicU64,
}

impl ManualClock {
    /// A clock reading `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        ManualClock {
            now_ms: AtomicU64::new(now_ms),
        }
    }

    /// Moves the clock forward by `delta_ms`.
    pub fn advance_ms(&self, delta_ms: u64) {
        self.now_ms.fetch_add(delta_ms, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::Relaxed)
    }
}
