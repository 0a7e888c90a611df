//! The deterministic simulation harness (STYLE.md rule 9).
//!
//! - [`seed`]: one seed per run, printed on failure, replayed with `EARSHOT_SEED`.
//! - [`net`]: per-direction links with delay, jitter, loss and duplication.
//! - [`talker`]: phones sending tones (with drift and DTMF) as RTP.
//! - [`listener`]: phones receiving RTP, rebuilding playout, detecting tones (Goertzel).
//! - [`world`]: [`Sim`], one shard driven in virtual time with its parties.
//! - [`scenario`]: the hear relation of SPEC section 1 ([`Hearing`]).
//! - [`continuity`]: checks on output RTP streams.

pub mod continuity;
pub mod listener;
pub mod net;
pub mod scenario;
pub mod seed;
pub mod talker;
pub mod world;

pub use listener::Listener;
pub use net::Link;
pub use scenario::{Hearing, Mode, OutputKind};
pub use seed::{SeedGuard, seed_for};
pub use talker::{AGENT_HZ, CUSTOMER_HZ, SPECIALIST_HZ, SUPERVISOR_HZ, TalkerConfig};
pub use world::{Party, PartyConfig, Sim, test_keys};

use earshot_media::time::{Duration, Instant};

/// `ms` milliseconds.
pub const fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// `t + d`, for readable spans in tests.
pub fn after(t: Instant, d: Duration) -> Instant {
    t + d
}

/// `t - d` (saturating at the epoch): the time types only add durations.
pub fn before(t: Instant, d: Duration) -> Instant {
    Instant::from_nanos(t.as_nanos().saturating_sub(d.as_nanos()))
}
