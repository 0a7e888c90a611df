//! Receive-side statistics of one RTP source: sequence validation and loss (RFC 3550
//! appendix A.1 and A.3) and interarrival jitter (A.8).
//!
//! Both are plain state machines over numbers the caller passes in: no clock, no
//! allocation, O(1) per packet.

use earshot_types::{RtpTs, SeqNo};

/// A jump of fewer than this many sequence numbers ahead is an in-order gap (A.1).
pub const MAX_DROPOUT: u16 = 3000;
/// A sequence number at most this far behind is a late or duplicate packet (A.1).
pub const MAX_MISORDER: u16 = 100;
/// In-sequence packets needed before a new source is believed (A.1).
pub const MIN_SEQUENTIAL: u8 = 2;

const RTP_SEQ_MOD: u32 = 1 << 16;

/// What [`SeqTracker::handle_seq`] concluded about one packet.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum SeqOutcome {
    /// In order (possibly after a gap below [`MAX_DROPOUT`]); counted as received. This
    /// includes the packet that completes probation.
    Accepted,
    /// The same sequence number as the highest seen; counted as received, as A.1 does.
    Duplicate,
    /// Behind the highest seen, within [`MAX_MISORDER`]; counted as received.
    Misordered,
    /// The source is still on probation (fewer than [`MIN_SEQUENTIAL`] in a row); the
    /// packet is not yet valid and not counted.
    Probation,
    /// A very large jump; dropped and not counted. If the next packet follows it, the
    /// tracker assumes the sender restarted and resynchronises.
    BadSeq,
    /// The packet followed a [`SeqOutcome::BadSeq`] one: statistics restarted from it
    /// and it is counted as the first packet of the new run.
    Resynced,
}

impl SeqOutcome {
    /// True when A.1's `update_seq` would return 1: the packet is valid and counted.
    pub const fn is_valid(self) -> bool {
        !matches!(self, SeqOutcome::Probation | SeqOutcome::BadSeq)
    }
}

/// Loss over the interval since the previous [`SeqTracker::poll_interval_loss`] (A.3).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct IntervalLoss {
    /// Packets expected in the interval.
    pub expected: u64,
    /// Packets received in the interval (duplicates included, as A.3 does).
    pub received: u64,
    /// Fraction lost in 1/256ths, 0 when nothing was lost or duplicates outnumber losses.
    pub fraction_lost: u8,
}

/// Sequence-number state of one source, exactly the `source` struct of RFC 3550 A.1.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct SeqTracker {
    /// False until the first packet: A.1 initialises the source from it.
    started: bool,
    max_seq: u16,
    /// Shifted count of wraps: a multiple of 2^16, kept in 64 bits so it never wraps.
    cycles: u64,
    base_seq: u32,
    /// Last bad sequence number plus one; 2^16 + 1 means "none" so it never matches.
    bad_seq: u32,
    probation: u8,
    received: u64,
    expected_prior: u64,
    received_prior: u64,
}

impl SeqTracker {
    /// A tracker that has seen nothing; the first packet starts probation.
    pub const fn new() -> Self {
        SeqTracker {
            started: false,
            max_seq: 0,
            cycles: 0,
            base_seq: 0,
            bad_seq: RTP_SEQ_MOD + 1,
            probation: 0,
            received: 0,
            expected_prior: 0,
            received_prior: 0,
        }
    }

    /// A.1 `init_seq`.
    fn init_seq(&mut self, seq: u16) {
        self.base_seq = u32::from(seq);
        self.max_seq = seq;
        self.bad_seq = RTP_SEQ_MOD + 1;
        self.cycles = 0;
        self.received = 0;
        self.received_prior = 0;
        self.expected_prior = 0;
    }

    /// Feeds one packet's sequence number (A.1 `update_seq`, plus the source set-up A.1
    /// performs on the first packet).
    #[inline]
    pub fn handle_seq(&mut self, seq: SeqNo) -> SeqOutcome {
        // The usual packet, decided inline: the next one of a validated source, not
        // wrapping (what the general path below does with it, in a few instructions).
        if self.started
            && self.probation == 0
            && seq.0 == self.max_seq.wrapping_add(1)
            && seq.0 != 0
        {
            self.max_seq = seq.0;
            self.received += 1;
            return SeqOutcome::Accepted;
        }
        self.handle_seq_other(seq)
    }

    /// [`SeqTracker::handle_seq`] for every other packet.
    #[inline(never)]
    fn handle_seq_other(&mut self, seq: SeqNo) -> SeqOutcome {
        let seq = seq.0;
        if !self.started {
            self.started = true;
            self.init_seq(seq);
            self.max_seq = seq.wrapping_sub(1);
            self.probation = MIN_SEQUENTIAL;
        }
        let udelta = seq.wrapping_sub(self.max_seq);
        if self.probation > 0 {
            if seq == self.max_seq.wrapping_add(1) {
                self.probation -= 1;
                self.max_seq = seq;
                if self.probation == 0 {
                    self.init_seq(seq);
                    self.received += 1;
                    return SeqOutcome::Accepted;
                }
            } else {
                self.probation = MIN_SEQUENTIAL - 1;
                self.max_seq = seq;
            }
            return SeqOutcome::Probation;
        }
        let outcome = if udelta < MAX_DROPOUT {
            if seq < self.max_seq {
                // Wrapped: count another 64K cycle.
                self.cycles += u64::from(RTP_SEQ_MOD);
            }
            self.max_seq = seq;
            if udelta == 0 {
                SeqOutcome::Duplicate
            } else {
                SeqOutcome::Accepted
            }
        } else if u32::from(udelta) <= RTP_SEQ_MOD - u32::from(MAX_MISORDER) {
            if u32::from(seq) == self.bad_seq {
                // Two sequential packets: assume the sender restarted without telling
                // us, and re-sync as if this were the first packet.
                self.init_seq(seq);
                SeqOutcome::Resynced
            } else {
                self.bad_seq = (u32::from(seq) + 1) & (RTP_SEQ_MOD - 1);
                return SeqOutcome::BadSeq;
            }
        } else {
            SeqOutcome::Misordered
        };
        self.received += 1;
        outcome
    }

    /// True once probation has passed.
    pub fn is_valid(&self) -> bool {
        self.started && self.probation == 0
    }

    /// The highest sequence number seen (meaningful once valid).
    pub fn max_seq(&self) -> SeqNo {
        SeqNo(self.max_seq)
    }

    /// Extended highest sequence number as the report block carries it: wrap count in
    /// the high 16 bits (truncated to 32 bits like the wire field).
    pub fn extended_max(&self) -> u32 {
        (self.cycles + u64::from(self.max_seq)) as u32
    }

    /// Packets expected since the base (A.3 `expected`).
    pub fn expected(&self) -> u64 {
        (self.cycles + u64::from(self.max_seq) + 1).saturating_sub(u64::from(self.base_seq))
    }

    /// Packets counted as received since the base.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Expected minus received: negative when duplicates outnumber losses (A.3).
    /// Clamp to the report block's 24 bits when emitting (`ReportBlock::emit` does).
    pub fn cumulative_lost(&self) -> i64 {
        // Both counters stay far below 2^63 (2^63 packets is millennia of audio).
        self.expected() as i64 - self.received as i64
    }

    /// Loss since the previous call, and the fraction lost for a report block; moves the
    /// interval start to now (A.3 `expected_prior` / `received_prior`).
    pub fn poll_interval_loss(&mut self) -> IntervalLoss {
        let expected = self.expected();
        let expected_interval = expected.saturating_sub(self.expected_prior);
        self.expected_prior = expected;
        let received_interval = self.received.saturating_sub(self.received_prior);
        self.received_prior = self.received;
        let lost_interval = expected_interval as i64 - received_interval as i64;
        let fraction_lost = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            // lost <= expected, so the quotient is at most 256; 256 only when nothing
            // arrived, which the wire's 8 bits show as 255.
            ((lost_interval as u64) * 256 / expected_interval).min(255) as u8
        };
        IntervalLoss {
            expected: expected_interval,
            received: received_interval,
            fraction_lost,
        }
    }
}

/// Interarrival jitter estimator of RFC 3550 A.8, in timestamp units.
///
/// The caller converts each packet's arrival time to the stream's clock rate (e.g.
/// `arrival_ns * 8000 / 1e9` for G.711); only differences matter, so any epoch works and
/// the value may wrap.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct JitterEstimator {
    /// Relative transit time of the previous packet; `None` before the first.
    transit: Option<u32>,
    /// Jitter scaled by 16, the integer form A.8 recommends to avoid floating point.
    /// 64 bits because 16 times a 31-bit transit difference overflows 32.
    jitter_q4: u64,
}

impl JitterEstimator {
    /// An estimator that has seen nothing.
    pub const fn new() -> Self {
        JitterEstimator {
            transit: None,
            jitter_q4: 0,
        }
    }

    /// Feeds one packet: its arrival time in RTP units and its RTP timestamp.
    pub fn handle_arrival(&mut self, arrival_rtp_units: u32, ts: RtpTs) {
        let transit = arrival_rtp_units.wrapping_sub(ts.0);
        if let Some(previous) = self.transit {
            let d = transit.wrapping_sub(previous) as i32;
            let d = u64::from(d.unsigned_abs());
            // J += (|D| - J) / 16, in Q4: J_q4 += |D| - round(J_q4 / 16). Cannot
            // underflow: round(J_q4 / 16) <= J_q4.
            self.jitter_q4 = self.jitter_q4 + d - ((self.jitter_q4 + 8) >> 4);
        }
        self.transit = Some(transit);
    }

    /// The current estimate in timestamp units, as a report block carries it.
    pub fn jitter(&self) -> u32 {
        u32::try_from(self.jitter_q4 >> 4).unwrap_or(u32::MAX)
    }

    /// Forgets history (e.g. after an SSRC change or a timestamp jump).
    pub fn reset(&mut self) {
        *self = Self::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The inline case of `handle_seq` (the next packet of a validated source)
        /// changes nothing: a tracker fed through the general path alone returns the
        /// same outcomes and ends in the same state, whatever the steps (in sequence,
        /// across the wrap, duplicates, misordered, jumps, restarts).
        #[test]
        fn the_inline_next_packet_case_matches_the_general_path(
            // Half the runs start just before the wrap, to cross it in sequence.
            start in prop_oneof![any::<u16>(), 65_400u16..],
            steps in prop::collection::vec(
                prop::sample::select(vec![1u16, 1, 1, 1, 1, 1, 1, 1, 0, 2, 5, u16::MAX, 65_500, 3_001, 40_000]),
                1..600,
            ),
        ) {
            let (mut fast, mut general) = (SeqTracker::new(), SeqTracker::new());
            let mut seq = start;
            for (i, step) in steps.iter().enumerate() {
                seq = seq.wrapping_add(*step);
                let a = fast.handle_seq(SeqNo(seq));
                let b = general.handle_seq_other(SeqNo(seq));
                prop_assert_eq!(a, b, "packet {} (seq {})", i, seq);
                prop_assert_eq!(fast, general, "packet {} (seq {})", i, seq);
            }
        }
    }
}
