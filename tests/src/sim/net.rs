//! The network model: one [`Link`] per direction per endpoint, driven by a seeded RNG.
//!
//! A datagram put on a link is lost with probability `loss`, otherwise delivered after
//! `base_delay` plus a uniform extra delay in `0..=jitter`; with probability `dup` a
//! second copy is delivered with its own extra delay. Reordering is not a separate knob:
//! it falls out of jitter larger than the spacing of packets.

use earshot_media::rng::SeedRng;
use earshot_media::time::{Duration, Instant};

/// The simulation's random source: SplitMix64 (the media crate's), plus the few
/// distributions the harness needs.
#[derive(Debug, Clone)]
pub struct SimRng(SeedRng);

impl SimRng {
    /// A generator fixed by `seed`.
    pub fn new(seed: u64) -> SimRng {
        SimRng(SeedRng::new(seed))
    }

    /// 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// 32 random bits.
    pub fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }

    /// Uniform in `[0, 1)`, from the top 53 bits.
    pub fn unit(&mut self) -> f64 {
        (self.0.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }

    /// Uniform in `0..=max` nanoseconds.
    pub fn duration_up_to(&mut self, max: Duration) -> Duration {
        if max.as_nanos() == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.next_u64() % (max.as_nanos() + 1))
    }
}

/// One direction of one endpoint's path to the engine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Link {
    /// Fixed one-way delay.
    pub base_delay: Duration,
    /// Largest extra random delay (uniform).
    pub jitter: Duration,
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Probability that a datagram is delivered twice.
    pub dup: f64,
}

impl Link {
    /// A clean LAN path: 1 ms, no jitter, no loss, no duplicates.
    pub const CLEAN: Link = Link {
        base_delay: Duration::from_millis(1),
        jitter: Duration::ZERO,
        loss: 0.0,
        dup: 0.0,
    };

    /// A path with `base_ms` of delay and up to `jitter_ms` of random extra delay.
    pub fn with_jitter(base_ms: u64, jitter_ms: u64) -> Link {
        Link {
            base_delay: Duration::from_millis(base_ms),
            jitter: Duration::from_millis(jitter_ms),
            ..Link::CLEAN
        }
    }

    /// The same path losing `loss` of its datagrams.
    pub fn lossy(self, loss: f64) -> Link {
        Link { loss, ..self }
    }

    /// The same path duplicating `dup` of its datagrams.
    pub fn duplicating(self, dup: f64) -> Link {
        Link { dup, ..self }
    }

    /// Arrival times of a datagram sent at `now`: none (lost), one, or two (duplicated).
    /// Always draws the same number of random values per call so that one link's
    /// settings do not shift another link's random stream.
    pub fn transmit(&self, rng: &mut SimRng, now: Instant) -> Arrivals {
        let lost = rng.chance(self.loss);
        let dup = rng.chance(self.dup);
        let first = now + self.base_delay + rng.duration_up_to(self.jitter);
        let second = now + self.base_delay + rng.duration_up_to(self.jitter);
        match (lost, dup) {
            (true, _) => Arrivals {
                times: [first, second],
                len: 0,
            },
            (false, false) => Arrivals {
                times: [first, second],
                len: 1,
            },
            (false, true) => Arrivals {
                times: [first, second],
                len: 2,
            },
        }
    }
}

/// Up to two arrival times of one datagram.
#[derive(Debug, Clone, Copy)]
pub struct Arrivals {
    times: [Instant; 2],
    len: usize,
}

impl Arrivals {
    /// The arrival times.
    pub fn as_slice(&self) -> &[Instant] {
        &self.times[..self.len]
    }

    /// True when the datagram was lost.
    pub fn is_lost(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lossy_link_loses_about_its_share_and_delays_within_bounds() {
        let mut rng = SimRng::new(7);
        let link = Link::with_jitter(10, 30).lossy(0.05).duplicating(0.02);
        let (mut lost, mut dups) = (0, 0);
        for _ in 0..20_000 {
            let a = link.transmit(&mut rng, Instant::ZERO);
            lost += usize::from(a.is_lost());
            dups += usize::from(a.as_slice().len() == 2);
            for &t in a.as_slice() {
                assert!(
                    t >= Instant::from_nanos(10_000_000) && t <= Instant::from_nanos(40_000_000)
                );
            }
        }
        assert!((800..1200).contains(&lost), "lost {lost} of 20000 at 5%");
        assert!(
            (250..550).contains(&dups),
            "duplicated {dups} of 20000 at 2%"
        );
    }
}
