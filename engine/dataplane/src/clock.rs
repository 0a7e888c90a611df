//! The one place that reads the operating system's clocks (STYLE.md rule 3).
//!
//! Everything else takes `now` as an argument. The engine's epoch is the moment the
//! clock was created; [`Clock::now`] is nanoseconds since then on the monotonic clock.

use earshot_types::time::{Instant, WallClock};

/// Monotonic engine clock.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    epoch: std::time::Instant,
    /// NTP time (seconds since 1900 as 32.32 fixed point) at the epoch.
    ntp_epoch: u64,
}

impl Clock {
    /// A clock whose epoch is now.
    #[allow(clippy::disallowed_methods)] // The clock edge: the only reader of OS time.
    pub fn new() -> Clock {
        let epoch = std::time::Instant::now();
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        const NTP_UNIX_OFFSET_S: u64 = 2_208_988_800;
        let frac = (u64::from(unix.subsec_nanos()) << 32) / 1_000_000_000;
        Clock {
            epoch,
            ntp_epoch: ((unix.as_secs() + NTP_UNIX_OFFSET_S) << 32) | frac,
        }
    }

    /// Now, on the engine's timeline.
    #[allow(clippy::disallowed_methods)] // The clock edge: the only reader of OS time.
    #[inline]
    pub fn now(&self) -> Instant {
        let d = std::time::Instant::now().duration_since(self.epoch);
        Instant::from_nanos(d.as_nanos() as u64)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

impl WallClock for Clock {
    fn ntp_at(&self, now: Instant) -> u64 {
        let ns = now.as_nanos();
        let secs = ns / 1_000_000_000;
        let frac = ((ns % 1_000_000_000) << 32) / 1_000_000_000;
        self.ntp_epoch.wrapping_add((secs << 32) | frac)
    }
}
