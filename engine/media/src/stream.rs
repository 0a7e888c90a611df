//! One RTP output stream per output leg: SSRC, sequence numbers, timestamps, marker.
//!
//! A listener's output switches between silence, forwarding one source and mixing, and
//! between forwarded sources, as the session's plan changes. The receiver must see one
//! well-behaved stream through all of it (SPEC section 5): one SSRC, sequence numbers
//! that continue, timestamps that keep pace with real time, and the marker bit at every
//! talk-spurt start and every switch. [`OutputStream`] is that stream's stamping state.
//! It never touches payloads and never allocates.
//!
//! ## Rules
//! - **Mixed frames** ([`OutputStream::mixed`]) take the next sequence number and a
//!   timestamp one frame after the previous packet. The stream keeps a fixed reference
//!   point (`origin`, its first packet) that maps monotonic time to output timestamps;
//!   if the stream falls a whole frame or more behind it (the engine stopped sending for
//!   a while without calling [`OutputStream::skip_silent_tick`], or a forwarded source
//!   ran slow), the timestamp jumps by whole frames to catch up. It never goes
//!   backwards, so a stream ahead of the reference (a fast forwarded source) stays ahead
//!   by a constant amount rather than overlapping frames. The first packet after
//!   forwarding carries the marker: the receiver should treat it as a switch.
//! - **Silent ticks** ([`OutputStream::skip_silent_tick`]) advance the timestamp by a
//!   frame without using a sequence number (DTX) and make the next packet a talk-spurt
//!   start (marker set).
//! - **Forwarded packets** ([`OutputStream::forward`]) are mapped into the output's
//!   spaces by two offsets chosen on the first packet of a source (after any switch, a
//!   mixed frame or a silent tick) and again when the source's SSRC changes or its
//!   timestamp jumps (more than 1 s away from the elapsed wall time, or backwards).
//!   At such a (re)map the output timestamp continues from the reference point, i.e.
//!   it tracks the wall time elapsed since the last packet, and the marker is set.
//!   Within a mapping, **source sequence gaps are preserved** (output seq = source seq +
//!   offset) so the receiver sees the loss and conceals it, rather than hearing the
//!   frames on either side of the gap glued together. A packet whose sequence number is
//!   not newer than the last one forwarded from its source (a late reordered packet or
//!   a duplicate) is refused (`None`) and counted: sending it would put an out-of-order
//!   or repeated sequence number on the wire, and its slot was already passed over as a
//!   loss by the time it arrives in the common case.
//!
//! These rules give the invariants the tests check: every packet's sequence number is
//! the previous one plus one, or plus the source's own gap inside a mapping; timestamps
//! never go backwards; and the timestamp stays within about a frame (plus the network
//! jitter of a forwarded source) of the wall time elapsed since the first packet.

use crate::time::{Duration, Instant};
use crate::{Codec, PayloadType, RtpTs, SeqNo, Ssrc};

/// A source sequence jump beyond this many packets is a restart, not loss (RFC 3550
/// appendix A.1's `MAX_DROPOUT`).
const MAX_DROPOUT: i16 = 3000;

/// A forwarded source's timestamp that strays this far from the wall time elapsed since
/// its previous packet has jumped (1 s at 8 kHz): far beyond any network jitter, and a
/// DTX gap moves the timestamp by the elapsed time so it does not trigger this.
const TS_JUMP_SAMPLES: i64 = 8_000;

/// The header fields of one outgoing packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The output stream's SSRC (constant for its life).
    pub ssrc: Ssrc,
    /// The packet's sequence number.
    pub seq: SeqNo,
    /// The packet's RTP timestamp.
    pub ts: RtpTs,
    /// Set on the first packet of a talk spurt and on the first packet after a switch.
    pub marker: bool,
    /// The output's payload type.
    pub pt: PayloadType,
}

/// Counters of one output stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Packets stamped (mixed and forwarded).
    pub packets_sent: u64,
    /// Forwarded packets refused as not newer than the last from their source.
    pub late_forward_drops: u64,
    /// Times a forwarded source was (re)mapped: switches, SSRC changes, jumps.
    pub remaps: u64,
}

/// How the current forwarded source maps into the output.
#[derive(Debug, Clone, Copy)]
struct SourceMap {
    ssrc: Ssrc,
    seq_offset: u16,
    ts_offset: u32,
    last_seq: SeqNo,
    last_ts: RtpTs,
    last_at: Instant,
}

/// The stamping state of one output leg's RTP stream.
#[derive(Debug, Clone)]
pub struct OutputStream {
    ssrc: Ssrc,
    pt: PayloadType,
    clock_rate_hz: u32,
    frame_samples: u32,
    next_seq: SeqNo,
    first_ts: RtpTs,
    /// Timestamp of the last packet stamped (or skipped tick); `None` before the first.
    last_ts: Option<RtpTs>,
    /// A point mapping monotonic time to output timestamps, fixed at the first packet so
    /// that rounding at switches cannot accumulate.
    origin: Option<(RtpTs, Instant)>,
    marker_pending: bool,
    source: Option<SourceMap>,
    /// Longest step between two ticks over which wall time moves the stream's ideal
    /// timestamp by at most one frame: `frame_samples` at the clock rate, rounded down.
    frame_ns: u64,
    /// While ticking steadily: the tick `now` of the last mixed frame, and a lower bound
    /// of how far (samples) that frame was behind the ideal timestamp, which was less
    /// than a frame. See [`OutputStream::mixed`]; `None` after anything else stamped,
    /// skipped or re-anchored.
    steady: Option<(Instant, i64)>,
    stats: StreamStats,
}

impl OutputStream {
    /// A stream that has sent nothing yet. Its first packet carries `first_seq` and
    /// `first_ts` (the engine draws them and `ssrc` from its seeded RNG) and the marker.
    ///
    /// Panics if `ptime_ms` is zero (a programmer error: the control side validates it).
    pub fn new(
        ssrc: Ssrc,
        first_seq: SeqNo,
        first_ts: RtpTs,
        codec: Codec,
        payload_type: PayloadType,
        ptime_ms: u32,
    ) -> Self {
        assert!(ptime_ms > 0, "ptime must be positive");
        let frame_samples = codec.rtp_units_per_frame(ptime_ms);
        OutputStream {
            ssrc,
            pt: payload_type,
            clock_rate_hz: codec.rtp_clock_hz(),
            frame_samples,
            frame_ns: u64::from(frame_samples) * 1_000_000_000 / u64::from(codec.rtp_clock_hz()),
            steady: None,
            next_seq: first_seq,
            first_ts,
            last_ts: None,
            origin: None,
            marker_pending: true,
            source: None,
            stats: StreamStats::default(),
        }
    }

    /// The stream's SSRC.
    pub fn ssrc(&self) -> Ssrc {
        self.ssrc
    }

    /// The sequence number the next packet will carry (unless a forwarded source's gap
    /// moves it).
    pub fn next_seq(&self) -> SeqNo {
        self.next_seq
    }

    /// The timestamp the next frame would carry at the pace of the frames so far (the
    /// first timestamp before any packet).
    pub fn next_timestamp(&self) -> RtpTs {
        self.last_ts
            .map_or(self.first_ts, |last| last.add(self.frame_samples))
    }

    /// Samples per frame at this stream's ptime.
    pub fn frame_samples(&self) -> u32 {
        self.frame_samples
    }

    /// The stream's counters.
    pub fn stats(&self) -> StreamStats {
        self.stats
    }

    /// Stamps a frame the engine mixed (or transcoded) at the tick `now`.
    /// `talkspurt_start` comes from the jitter buffer or mixer and sets the marker.
    #[inline]
    pub fn mixed(&mut self, now: Instant, talkspurt_start: bool) -> Stamp {
        // Leaving a forwarded source is a switch: the receiver should resync.
        let switching = self.source.is_some() || self.marker_pending;
        let steady = self.steady.take();
        let ts = match self.last_ts {
            None => self.start(now),
            // A switch re-anchors on wall time (see `reanchor`), so that alternating
            // quickly between forwarding and mixing cannot build up a lead.
            Some(last) if switching => self.reanchor(now, last),
            Some(last) => {
                let next = last.add(self.frame_samples);
                let frame = i64::from(self.frame_samples);
                // Ticking steadily: the previous frame was less than a frame behind the
                // ideal timestamp, and at most `frame_ns` of wall time moved the ideal
                // by at most a frame while this frame moves by exactly one, so this
                // frame is no further behind than that one: `next` without computing
                // the ideal timestamp. The lower bound only keeps the wrapping
                // difference exact (it drops by at most a frame per tick).
                match steady {
                    Some((at, low))
                        if now.saturating_since(at).as_nanos() <= self.frame_ns
                            && low - frame > i64::from(i32::MIN) =>
                    {
                        self.steady = Some((now, low - frame));
                        next
                    }
                    _ => {
                        // Whole frames between where ticking puts us and where time
                        // does; truncation toward zero leaves sub-frame tick jitter
                        // alone.
                        let behind = i64::from(self.ideal_ts(now).delta(next));
                        if behind < frame {
                            // Less than a frame behind, or ahead of wall time (a fast
                            // forwarded source, or forwarded packets that arrived
                            // early): never go backwards; the lead stays constant
                            // while ticking and shrinks at the next switch that comes
                            // late enough. The usual tick: no division.
                            self.steady = Some((now, behind));
                            next
                        } else {
                            next.add((behind / frame * frame) as u32)
                        }
                    }
                }
            }
        };
        let switched = self.source.take().is_some();
        let marker = talkspurt_start || self.marker_pending || switched;
        self.emit(ts, marker)
    }

    /// A tick at which the output sends nothing (silence, DTX): the timestamp moves on
    /// by one frame, the sequence number does not, and the next packet carries the
    /// marker. Also ends any forwarded source's mapping.
    pub fn skip_silent_tick(&mut self) {
        self.steady = None;
        if let Some(last) = self.last_ts {
            self.last_ts = Some(last.add(self.frame_samples));
        }
        self.marker_pending = true;
        self.source = None;
    }

    /// Forgets the forwarded source's mapping, so that its next packet is stamped as a
    /// switch (remapped, marker set). For the engine to call when the plan changes the
    /// forwarded leg: SSRCs of two legs could collide.
    pub fn end_forward(&mut self) {
        self.source = None;
    }

    /// Re-stamps a packet forwarded from a source leg arriving at `now`, or refuses it
    /// (`None`, counted) if it is not newer than the last one forwarded from that source.
    pub fn forward(
        &mut self,
        now: Instant,
        src_ssrc: Ssrc,
        src_seq: SeqNo,
        src_ts: RtpTs,
        src_marker: bool,
    ) -> Option<Stamp> {
        self.steady = None;
        if let Some(map) = self.source.filter(|m| m.ssrc == src_ssrc) {
            let seq_delta = src_seq.delta(map.last_seq);
            if seq_delta <= 0 {
                self.stats.late_forward_drops += 1;
                return None;
            }
            let ts_delta = i64::from(src_ts.delta(map.last_ts));
            let elapsed = self.samples(now.saturating_since(map.last_at)) as i64;
            let jumped = seq_delta > MAX_DROPOUT
                || ts_delta < 0
                || (ts_delta - elapsed).abs() > TS_JUMP_SAMPLES;
            if !jumped {
                self.source = Some(SourceMap {
                    last_seq: src_seq,
                    last_ts: src_ts,
                    last_at: now,
                    ..map
                });
                self.next_seq = SeqNo(src_seq.0.wrapping_add(map.seq_offset));
                let marker = src_marker || self.marker_pending;
                return Some(self.emit(src_ts.add(map.ts_offset), marker));
            }
        }
        // A new source (or a restart of this one): map it to continue the output.
        let ts = match self.last_ts {
            None => self.start(now),
            Some(last) => self.reanchor(now, last),
        };
        self.stats.remaps += 1;
        self.source = Some(SourceMap {
            ssrc: src_ssrc,
            seq_offset: self.next_seq.0.wrapping_sub(src_seq.0),
            ts_offset: ts.0.wrapping_sub(src_ts.0),
            last_seq: src_seq,
            last_ts: src_ts,
            last_at: now,
        });
        Some(self.emit(ts, true))
    }

    /// The RTP timestamp for a telephone event (RFC 4733) that starts at `now`: where
    /// wall time puts the stream, never before its last packet. Every packet of the
    /// event then carries this timestamp through [`OutputStream::event`].
    pub fn event_timestamp(&mut self, now: Instant) -> RtpTs {
        self.steady = None;
        match self.last_ts {
            None => {
                let ts = self.start(now);
                self.last_ts = Some(ts);
                ts
            }
            Some(last) => {
                let ideal = self.ideal_ts(now);
                if ideal.delta(last) >= 0 { ideal } else { last }
            }
        }
    }

    /// Stamps one telephone-event packet with the event's timestamp `ts`. It takes the
    /// next sequence number and leaves the audio timestamp alone; a forwarded source's
    /// mapping shifts by one so that its packets never reuse the event's number.
    pub fn event(&mut self, ts: RtpTs, marker: bool) -> Stamp {
        let seq = self.next_seq;
        self.next_seq = seq.next();
        if let Some(map) = self.source.as_mut() {
            map.seq_offset = map.seq_offset.wrapping_add(1);
        }
        self.stats.packets_sent += 1;
        Stamp {
            ssrc: self.ssrc,
            seq,
            ts,
            marker,
            pt: self.pt,
        }
    }

    /// The timestamp of the first packet after a switch: where wall time says the stream
    /// is, or just after the last packet if the stream is already ahead. It never goes
    /// back, and it never adds a frame of lead: the first packet after a switch may
    /// overlap the tail of the frame before it, which its marker bit tells the receiver
    /// to absorb (it resynchronises playout on a marker).
    fn reanchor(&self, now: Instant, last: RtpTs) -> RtpTs {
        let ideal = self.ideal_ts(now);
        if ideal.delta(last) > 0 {
            ideal
        } else {
            last.add(1)
        }
    }

    /// The first packet ever: anchors the time-to-timestamp mapping.
    fn start(&mut self, now: Instant) -> RtpTs {
        self.origin = Some((self.first_ts, now));
        self.first_ts
    }

    /// Takes the next sequence number and records the packet.
    fn emit(&mut self, ts: RtpTs, marker: bool) -> Stamp {
        let seq = self.next_seq;
        self.next_seq = seq.next();
        self.last_ts = Some(ts);
        self.marker_pending = false;
        self.stats.packets_sent += 1;
        Stamp {
            ssrc: self.ssrc,
            seq,
            ts,
            marker,
            pt: self.pt,
        }
    }

    /// The timestamp that wall time says the stream should be at.
    fn ideal_ts(&self, now: Instant) -> RtpTs {
        match self.origin {
            Some((ts, at)) => ts.add(self.samples(now.saturating_since(at)) as u32),
            None => self.first_ts,
        }
    }

    /// Whole clock ticks in `d` (wrapping into u32 is intended: RTP time wraps).
    fn samples(&self, d: Duration) -> u64 {
        // Whole seconds and the fraction apart: exact, without 128-bit division.
        let (ns, rate) = (d.as_nanos(), u64::from(self.clock_rate_hz));
        (ns / 1_000_000_000)
            .wrapping_mul(rate)
            .wrapping_add((ns % 1_000_000_000) * rate / 1_000_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PTIME_MS: u64 = 20;
    const FRAME: u32 = 160;

    fn stream() -> OutputStream {
        OutputStream::new(
            Ssrc(0xABCD),
            SeqNo(65_530),
            RtpTs(u32::MAX - 500),
            Codec::Pcmu,
            PayloadType::PCMU,
            20,
        )
    }

    fn at_ms(ms: u64) -> Instant {
        Instant::from_nanos(ms * 1_000_000)
    }

    #[test]
    fn telephone_events_take_sequence_numbers_without_colliding_with_forwarded_ones() {
        let mut s = stream();
        let a = s
            .forward(at_ms(0), Ssrc(1), SeqNo(100), RtpTs(1_000), false)
            .unwrap();
        let ts = s.event_timestamp(at_ms(10));
        let e1 = s.event(ts, true);
        let e2 = s.event(ts, false);
        let b = s
            .forward(at_ms(20), Ssrc(1), SeqNo(101), RtpTs(1_160), false)
            .unwrap();
        assert_eq!(e1.seq, a.seq.next());
        assert_eq!(e2.seq, e1.seq.next());
        assert_eq!(
            b.seq,
            e2.seq.next(),
            "forwarded packets continue after the events"
        );
        assert_eq!(e1.ts, e2.ts, "one event keeps one timestamp");
        assert!(e1.ts.delta(a.ts) >= 0);
    }

    #[test]
    fn mixed_ticks_count_up_by_one_packet_and_one_frame() {
        let mut s = stream();
        let a = s.mixed(at_ms(0), false);
        let b = s.mixed(at_ms(20), false);
        let c = s.mixed(at_ms(40), false);
        assert!(a.marker, "the first packet starts a talk spurt");
        assert!(!b.marker && !c.marker);
        assert_eq!(
            (a.seq, b.seq, c.seq),
            (SeqNo(65_530), SeqNo(65_531), SeqNo(65_532))
        );
        assert_eq!(b.ts.delta(a.ts), 160);
        assert_eq!(c.ts.delta(b.ts), 160);
        assert_eq!(a.ssrc, Ssrc(0xABCD));
    }

    #[test]
    fn silent_ticks_advance_time_but_not_sequence_and_mark_the_next_packet() {
        let mut s = stream();
        let a = s.mixed(at_ms(0), false);
        s.skip_silent_tick();
        s.skip_silent_tick();
        let b = s.mixed(at_ms(60), false);
        assert_eq!(b.seq, a.seq.next());
        assert_eq!(b.ts.delta(a.ts), 3 * 160);
        assert!(b.marker);
    }

    #[test]
    fn a_pause_without_silent_ticks_still_lands_the_timestamp_on_wall_time() {
        let mut s = stream();
        let a = s.mixed(at_ms(0), false);
        let b = s.mixed(at_ms(1_000), true);
        assert_eq!(b.seq, a.seq.next());
        assert_eq!(b.ts.delta(a.ts), 8_000);
    }

    #[test]
    fn forwarding_keeps_source_gaps_refuses_late_packets_and_marks_switches() {
        let mut s = stream();
        let m = s.mixed(at_ms(0), false);
        // Source 1 starts 20 ms later with unrelated seq/ts.
        let f1 = s
            .forward(at_ms(20), Ssrc(1), SeqNo(100), RtpTs(9_000), false)
            .unwrap();
        assert!(f1.marker, "a switch is marked");
        assert_eq!(f1.seq, m.seq.next());
        assert_eq!(f1.ts.delta(m.ts), 160);
        // Seq 101 is lost: the gap is mirrored.
        let f3 = s
            .forward(at_ms(60), Ssrc(1), SeqNo(102), RtpTs(9_320), false)
            .unwrap();
        assert_eq!(f3.seq.delta(f1.seq), 2);
        assert_eq!(f3.ts.delta(f1.ts), 320);
        assert!(!f3.marker);
        // 101 arrives late, 102 again (duplicate): both refused.
        assert_eq!(
            s.forward(at_ms(61), Ssrc(1), SeqNo(101), RtpTs(9_160), false),
            None
        );
        assert_eq!(
            s.forward(at_ms(62), Ssrc(1), SeqNo(102), RtpTs(9_320), false),
            None
        );
        assert_eq!(s.stats().late_forward_drops, 2);
        // Switch to source 2 at 80 ms.
        let g = s
            .forward(at_ms(80), Ssrc(2), SeqNo(7), RtpTs(5), false)
            .unwrap();
        assert!(g.marker);
        assert_eq!(g.seq, f3.seq.next());
        assert_eq!(g.ts.delta(f3.ts), 160);
        // A timestamp jump within source 2 remaps it.
        let h = s
            .forward(at_ms(100), Ssrc(2), SeqNo(8), RtpTs(5_000_000), false)
            .unwrap();
        assert!(h.marker);
        assert_eq!(h.seq, g.seq.next());
        assert_eq!(h.ts.delta(g.ts), 160);
        assert_eq!(s.stats().remaps, 3);
    }

    /// One step of the random scenario.
    #[derive(Debug, Clone)]
    enum Op {
        /// A mixed frame at the tick; the flag is the jitter buffer's talk-spurt start.
        Mixed(bool),
        /// A silent tick, sending nothing.
        Skip,
        /// A tick at which nothing at all is called (engine simply sends nothing).
        Idle,
        /// Forward the packet of source `0..3` sent at this tick, arriving after
        /// `jitter_ms`; `lost` drops it in the network; `dup` delivers it twice.
        Forward {
            source: usize,
            jitter_ms: u64,
            lost: bool,
            dup: bool,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            2 => any::<bool>().prop_map(Op::Mixed),
            1 => Just(Op::Skip),
            1 => Just(Op::Idle),
            6 => (0..3usize, 0..15u64, prop::bool::weighted(0.1), prop::bool::weighted(0.05))
                .prop_map(|(source, jitter_ms, lost, dup)| Op::Forward { source, jitter_ms, lost, dup }),
        ]
    }

    /// A packet the stream stamped: stamp, send time, (source, source seq) if forwarded,
    /// and whether the caller flagged a talk-spurt start.
    type Sent = (Stamp, Instant, Option<(usize, u16)>, bool);

    /// A source sending continuously: seq and ts advance every tick, whether or not
    /// this output forwards it.
    #[derive(Clone, Copy)]
    struct Source {
        ssrc: Ssrc,
        seq0: u16,
        ts0: u32,
    }

    /// One step of the steady-ticking comparison: how far the clock moves, and what
    /// the stream is asked to do then.
    fn steady_step() -> impl Strategy<Value = (i64, u8)> {
        let frame_ns = PTIME_MS as i64 * 1_000_000;
        (
            prop_oneof![
                4 => Just(frame_ns),
                2 => (frame_ns - 3_000_000)..frame_ns,
                2 => (frame_ns + 1)..(frame_ns + 3_000_000),
                1 => Just(0i64),
                1 => (-5_000_000i64)..0,
                1 => frame_ns..40 * frame_ns,
            ],
            // Mostly mixed ticks; now and then a silent tick, a forwarded packet or a
            // telephone event.
            prop_oneof![12 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8), 1 => Just(3u8)],
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The steady-ticking shortcut of `mixed` (no ideal timestamp while the clock
        /// moves at most a frame per tick) stamps exactly what computing the ideal
        /// timestamp at every tick stamps, whatever the clock and the other calls do.
        #[test]
        fn steady_ticks_stamp_as_the_full_computation_does(
            steps in prop::collection::vec(steady_step(), 1..400),
            first_ts in any::<u32>(),
            start_ms in 0u64..10_000,
        ) {
            let new = || OutputStream::new(
                Ssrc(7), SeqNo(1), RtpTs(first_ts), Codec::Pcmu, PayloadType::PCMU, 20,
            );
            let (mut fast, mut full) = (new(), new());
            let mut now = start_ms as i64 * 1_000_000;
            let mut src_seq = 100u16;
            for (i, (step, what)) in steps.into_iter().enumerate() {
                now = (now + step).max(0);
                let at = Instant::from_nanos(now as u64);
                // The reference never keeps the shortcut's state.
                full.steady = None;
                let (a, b) = match what {
                    0 => (Some(fast.mixed(at, i % 7 == 0)), Some(full.mixed(at, i % 7 == 0))),
                    1 => {
                        fast.skip_silent_tick();
                        full.skip_silent_tick();
                        (None, None)
                    }
                    2 => {
                        src_seq = src_seq.wrapping_add(1);
                        let ts = RtpTs(u32::from(src_seq).wrapping_mul(FRAME));
                        (
                            fast.forward(at, Ssrc(9), SeqNo(src_seq), ts, false),
                            full.forward(at, Ssrc(9), SeqNo(src_seq), ts, false),
                        )
                    }
                    _ => {
                        let (x, y) = (fast.event_timestamp(at), full.event_timestamp(at));
                        (Some(fast.event(x, true)), Some(full.event(y, true)))
                    }
                };
                prop_assert_eq!(a, b, "step {} at {} ns", i, now);
                prop_assert_eq!(fast.next_timestamp(), full.next_timestamp());
            }
        }

        #[test]
        fn seq_and_ts_stay_continuous_through_any_sequence_of_switches(
            ops in prop::collection::vec(op(), 1..300),
            seeds in prop::array::uniform3((any::<u32>(), any::<u16>(), any::<u32>())),
            first_seq in any::<u16>(),
            first_ts in any::<u32>(),
        ) {
            let sources = seeds.map(|(ssrc, seq0, ts0)| Source { ssrc: Ssrc(ssrc | 1), seq0, ts0 });
            // Distinct SSRCs so that each source is its own mapping.
            prop_assume!(sources[0].ssrc != sources[1].ssrc && sources[1].ssrc != sources[2].ssrc
                && sources[0].ssrc != sources[2].ssrc);
            let mut s = OutputStream::new(Ssrc(42), SeqNo(first_seq), RtpTs(first_ts), Codec::Pcmu, PayloadType::PCMU, 20);
            let mut prev: Option<(Stamp, Instant)> = None;
            let mut t0: Option<(RtpTs, Instant)> = None;
            // The source whose mapping the last packet continued, with its seq.
            let mut last_forward: Option<(usize, u16)> = None;
            let mut silent_since_last = true;
            for (tick, op) in ops.iter().enumerate() {
                let tick_at = Instant::from_nanos(tick as u64 * PTIME_MS * 1_000_000);
                let mut sent: Vec<Sent> = Vec::new();
                match *op {
                    Op::Mixed(ts_start) => {
                        let st = s.mixed(tick_at, ts_start);
                        sent.push((st, tick_at, None, ts_start));
                    }
                    Op::Skip => { s.skip_silent_tick(); silent_since_last = true; }
                    Op::Idle => {}
                    Op::Forward { source, jitter_ms, lost, dup } => {
                        let src = sources[source];
                        let seq = src.seq0.wrapping_add(tick as u16);
                        let ts = src.ts0.wrapping_add(tick as u32 * FRAME);
                        let at = tick_at + Duration::from_millis(jitter_ms);
                        if !lost {
                            for _ in 0..if dup { 2 } else { 1 } {
                                if let Some(st) = s.forward(at, src.ssrc, SeqNo(seq), RtpTs(ts), false) {
                                    sent.push((st, at, Some((source, seq)), false));
                                }
                            }
                        }
                    }
                }
                for (st, at, fwd, ts_start) in sent {
                    let origin = *t0.get_or_insert((st.ts, at));
                    prop_assert_eq!(st.ssrc, Ssrc(42));
                    if let Some((p, _)) = prev {
                        // Sequence: +1, or the source's own gap inside one mapping.
                        let continues = matches!((last_forward, fwd), (Some((a, _)), Some((b, _))) if a == b);
                        let expected = if continues {
                            fwd.unwrap().1.wrapping_sub(last_forward.unwrap().1) as i16
                        } else { 1 };
                        prop_assert_eq!(st.seq.delta(p.seq), expected, "seq after {:?}", op);
                        prop_assert!(st.ts.delta(p.ts) > 0, "ts must advance: {:?} then {:?}", p, st);
                        // Marker exactly at switches and talk-spurt starts.
                        let switched = match (last_forward, fwd) {
                            (Some((a, _)), Some((b, _))) => a != b,
                            (None, None) => false,
                            _ => true,
                        };
                        let must_mark = !continues && (switched || ts_start || silent_since_last);
                        prop_assert_eq!(st.marker, must_mark, "marker on {:?}", op);
                    } else {
                        prop_assert!(st.marker, "first packet marked");
                    }
                    // Timestamp within a frame (+ forwarding jitter) of elapsed wall time.
                    let wall = (at - origin.1).as_nanos() as i64 * 8_000 / 1_000_000_000;
                    let err = i64::from(st.ts.delta(origin.0)) - wall;
                    prop_assert!(err.abs() <= i64::from(FRAME) + 15 * 8 + 8,
                        "ts off wall time by {} samples at {:?}", err, op);
                    prev = Some((st, at));
                    last_forward = fwd;
                    silent_since_last = false;
                }
                if matches!(op, Op::Skip | Op::Mixed(_)) { last_forward = None; }
            }
        }
    }
}
