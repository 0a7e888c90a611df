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
    pub tick_processing_ns: Histogram<u64>,
    /// Tick start minus deadline in nanoseconds.
    pub tick_lateness_ns: Histogram<u64>,
}

impl Counters {
    /// Zeroed counters; histograms cover 1 ns .. 10 s with 3 significant digits.
    pub fn new() -> Counters {
        let h = || {
            // Bounds are constants that hdrhistogram accepts (low >= 1, high >= 2*low,
            // sigfig <= 5), so construction cannot fail.
            Histogram::new_with_bounds(1, 10_000_000_000, 3).expect("constant bounds are valid")
        };
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
        s.tick_processing_us = percentiles_us(&self.tick_processing_ns);
        s.tick_lateness_us = percentiles_us(&self.tick_lateness_ns);
    }
}

impl Default for Counters {
    fn default() -> Self {
        Counters::new()
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
