//! Per-shard counters and latency histograms.
//!
//! Plain integers owned by the shard (STYLE.md rule 14): the packet path increments them
//! without atomics or locks; the control side reads them by asking the shard for a
//! snapshot through its command queue.

use earshot_engine_api::{DROP_REASONS, Percentiles, ShardStats};
use hdrhistogram::Histogram;

/// Why a datagram was dropped; the index into [`DROP_REASONS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum DropReason {
    /// Shorter than its headers say.
    Truncated = 0,
    /// RTP version other than 2.
    BadVersion,
    /// Inconsistent padding, CSRC count or extension length.
    BadHeader,
    /// Arrived on a port no leg owns.
    UnknownPort,
    /// The leg has no media configuration yet.
    UnconfiguredLeg,
    /// Came from an address other than the leg's remote.
    WrongSource,
    /// Payload type not negotiated on the leg.
    UnknownPayloadType,
    /// Larger than the largest datagram a leg accepts.
    Oversize,
    /// Too late for the jitter buffer.
    JitterLate,
    /// Duplicate of a packet already buffered.
    JitterDuplicate,
    /// Jitter buffer full.
    JitterOverflow,
    /// No transmit buffer free.
    TxFull,
    /// Malformed RTCP.
    BadRtcp,
    /// SRTP/SRTCP authentication failed (forged, corrupted, another key, plain RTP on an
    /// SRTP leg).
    SrtpAuth,
    /// SRTP/SRTCP replay, or older than the replay window.
    SrtpReplay,
    /// A packet to send on an SRTP leg could not be protected (the key's index space is
    /// used up; the leg needs a re-key).
    SrtpProtect,
}

const _: () = assert!(DropReason::SrtpProtect as usize + 1 == DROP_REASONS.len());

/// Counters of one shard.
#[derive(Debug)]
pub struct Counters {
    /// Datagrams received.
    pub packets_in: u64,
    /// UDP payload bytes received.
    pub bytes_in: u64,
    /// Datagrams sent.
    pub packets_out: u64,
    /// UDP payload bytes sent.
    pub bytes_out: u64,
    /// Drops by reason.
    pub drops: [u64; DROP_REASONS.len()],
    /// Ticks run.
    pub ticks: u64,
    /// Ticks that started later than the lateness threshold.
    pub late_ticks: u64,
    /// Events lost because the event queue was full.
    pub events_lost: u64,
    /// Loop iterations over the stall budget.
    pub stalls: u64,
    /// Tick processing time in nanoseconds.
    pub tick_processing_ns: TickHistogram,
    /// Tick start minus deadline in nanoseconds.
    pub tick_lateness_ns: TickHistogram,
}

impl Counters {
    /// Zeroed counters; histograms cover 1 ns .. 10 s with 3 significant digits.
    pub fn new() -> Counters {
        let h = TickHistogram::new;
        Counters {
            packets_in: 0,
            bytes_in: 0,
            packets_out: 0,
            bytes_out: 0,
            drops: [0; DROP_REASONS.len()],
            ticks: 0,
            late_ticks: 0,
            events_lost: 0,
            stalls: 0,
            tick_processing_ns: h(),
            tick_lateness_ns: h(),
        }
    }

    /// Counts one drop.
    #[inline]
    pub fn drop(&mut self, reason: DropReason) {
        self.drops[reason as usize] += 1;
    }

    /// Counts one send: `sent` as the sink returned it, `len` the datagram length the
    /// build closure returned (0 when SRTP protection failed and the send was cancelled).
    #[inline]
    pub fn count_send(&mut self, sent: bool, len: usize) {
        match (sent, len) {
            (false, _) => self.drop(DropReason::TxFull),
            (true, 0) => self.drop(DropReason::SrtpProtect),
            (true, len) => {
                self.packets_out += 1;
                self.bytes_out += len as u64;
            }
        }
    }

    /// Copies the counters into the API's form.
    pub fn fill(&self, s: &mut ShardStats) {
        s.packets_in = self.packets_in;
        s.bytes_in = self.bytes_in;
        s.packets_out = self.packets_out;
        s.bytes_out = self.bytes_out;
        s.drops = DROP_REASONS
            .iter()
            .zip(self.drops)
            .map(|(r, n)| ((*r).to_string(), n))
            .collect();
        s.ticks = self.ticks;
        s.late_ticks = self.late_ticks;
        s.stalls = self.stalls;
        s.events_lost = self.events_lost;
        s.tick_processing_us = percentiles_us(&self.tick_processing_ns.to_histogram());
        s.tick_lateness_us = percentiles_us(&self.tick_lateness_ns.to_histogram());
    }
}

impl Default for Counters {
    fn default() -> Self {
        Counters::new()
    }
}

/// A nanosecond histogram for the tick path, with hdrhistogram's bucket layout for
/// 1 ns .. 10 s at 3 significant digits (the layout of [`TickHistogram::to_histogram`]).
///
/// Recording is one index computation and one increment: hdrhistogram's own `record`
/// also tracks min, max and a saturating total per value, and costs several times as
/// much on a path that records twice per session tick. The control side gets a real
/// [`Histogram`] with the same counts in the same buckets, so its percentiles, maximum
/// and count are those hdrhistogram would have reported.
#[derive(Clone, Debug)]
pub struct TickHistogram {
    counts: Box<[u64]>,
}

/// hdrhistogram's layout for 3 significant digits from a lowest value of 1: sub-buckets
/// of 2,048 (`2 * 10^3` rounded up to a power of two), half of them per bucket after
/// the first.
const SUB_BUCKET_MASK: u64 = 2_047;
const SUB_BUCKET_HALF_MAGNITUDE: u32 = 10;
const SUB_BUCKET_HALF: usize = 1 << SUB_BUCKET_HALF_MAGNITUDE;
/// 64 minus the unit magnitude (0) minus the sub-bucket count's magnitude (11).
const LEADING_ZERO_BASE: u32 = 53;

impl TickHistogram {
    /// Highest value recorded; larger values are not counted, as hdrhistogram refuses
    /// them.
    pub const HIGHEST_NS: u64 = 10_000_000_000;

    /// An empty histogram (allocates its buckets: about 200 KiB).
    pub fn new() -> TickHistogram {
        TickHistogram {
            counts: vec![0; Self::template().distinct_values()].into_boxed_slice(),
        }
    }

    /// The empty hdrhistogram whose layout this one mirrors.
    fn template() -> Histogram<u64> {
        // Bounds are constants that hdrhistogram accepts (low >= 1, high >= 2*low,
        // sigfig <= 5), so construction cannot fail.
        Histogram::new_with_bounds(1, Self::HIGHEST_NS, 3).expect("constant bounds are valid")
    }

    /// Counts one value (as hdrhistogram's `record`: 0 goes in the first bucket, a
    /// value past the last bucket is not counted).
    #[inline]
    pub fn record(&mut self, value: u64) {
        if let Some(c) = self.counts.get_mut(index_of(value)) {
            *c += 1;
        }
    }

    /// Values counted.
    pub fn len(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.counts.iter().all(|&c| c == 0)
    }

    /// The counts as an hdrhistogram (control path: allocates).
    pub fn to_histogram(&self) -> Histogram<u64> {
        let mut h = Self::template();
        for (i, &n) in self.counts.iter().enumerate() {
            if n > 0 {
                // The bucket's lowest value lands in the same bucket.
                let _ = h.record_n(value_of(i), n);
            }
        }
        h
    }
}

impl Default for TickHistogram {
    fn default() -> Self {
        TickHistogram::new()
    }
}

/// hdrhistogram's `index_for` for the layout above.
#[inline]
fn index_of(value: u64) -> usize {
    let bucket = LEADING_ZERO_BASE - (value | SUB_BUCKET_MASK).leading_zeros();
    let sub_bucket = (value >> bucket) as usize;
    // Bucket 0 uses all its sub-buckets, later ones the upper half only.
    ((bucket as usize + 1) << SUB_BUCKET_HALF_MAGNITUDE) + sub_bucket - SUB_BUCKET_HALF
}

/// The lowest value of the bucket at `index` (hdrhistogram's `value_for`).
fn value_of(index: usize) -> u64 {
    let bucket = (index >> SUB_BUCKET_HALF_MAGNITUDE) as i64 - 1;
    let sub_bucket = (index & (SUB_BUCKET_HALF - 1)) + SUB_BUCKET_HALF;
    if bucket < 0 {
        (sub_bucket - SUB_BUCKET_HALF) as u64
    } else {
        (sub_bucket as u64) << bucket
    }
}

/// Percentiles of a nanosecond histogram, in microseconds.
pub fn percentiles_us(h: &Histogram<u64>) -> Percentiles {
    let us = |ns: u64| ns as f64 / 1_000.0;
    Percentiles {
        p50: us(h.value_at_quantile(0.5)),
        p90: us(h.value_at_quantile(0.9)),
        p99: us(h.value_at_quantile(0.99)),
        p999: us(h.value_at_quantile(0.999)),
        max: us(h.max()),
        count: h.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values around every bucket boundary, small and large, and past the top: the
    /// histogram it hands over equals hdrhistogram fed the same values directly.
    #[test]
    fn tick_histogram_reports_what_hdrhistogram_would() {
        let mut ours = TickHistogram::new();
        let mut theirs = TickHistogram::template();
        let mut values = vec![0u64, 1, 2, 1_023, 1_024, 2_047, 2_048, 2_049, 4_095, 4_096];
        for shift in 0..40 {
            for delta in [-1i64, 0, 1, 3] {
                values.push(((1u64 << shift) as i64 + delta).max(0) as u64);
            }
        }
        // A spread of tick-like values (a fixed LCG: nothing random to replay).
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..5_000 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            values.push((x >> 40) % 5_000_000);
        }
        values.extend([TickHistogram::HIGHEST_NS, 20_000_000_000, u64::MAX]);
        for &v in &values {
            ours.record(v);
            let _ = theirs.record(v);
        }
        let got = ours.to_histogram();
        assert_eq!(got.len(), theirs.len());
        assert_eq!(ours.len(), theirs.len());
        assert_eq!(got.max(), theirs.max());
        assert_eq!(got.min(), theirs.min());
        for q in [0.0, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(
                got.value_at_quantile(q),
                theirs.value_at_quantile(q),
                "q={q}"
            );
        }
        for v in values {
            assert_eq!(got.count_at(v), theirs.count_at(v), "value {v}");
        }
        assert_eq!(percentiles_us(&got), percentiles_us(&theirs));
    }

    #[test]
    fn an_empty_tick_histogram_reports_nothing() {
        let h = TickHistogram::new();
        assert!(h.is_empty());
        assert_eq!(h.to_histogram().len(), 0);
    }
}
