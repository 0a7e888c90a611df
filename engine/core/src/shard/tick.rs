//! Ticks: every mixing session, once per period, pulls, mixes, encodes and sends.

use earshot_media::codec::Encoder;
use earshot_media::mixer;
use earshot_media::plan::LegSet;
use earshot_media::stream::Stamp;
use earshot_media::time::{Duration, Instant};
use earshot_media::{MAX_FRAME_SAMPLES, MAX_PAYLOAD_BYTES, MAX_SESSION_LEGS};

use super::legs::{Frame, Leg, LegMedia};
use super::packet::seal_rtp;
use super::session::Session;
use super::srtp::LegSrtp;
use super::{NO_SLOT, Shard, ShardEvent};
use crate::io::TxSink;
use crate::rtp;

/// What an idle output hears.
static SILENCE: [i16; MAX_FRAME_SAMPLES] = [0; MAX_FRAME_SAMPLES];

/// Granularity of the tick wheel.
pub(super) const WHEEL_SLOT_NS: u64 = 1_000_000;
/// Slots in the wheel: more than the longest tick period (60 ms).
pub(super) const WHEEL_SLOTS: usize = 64;
const _: () = assert!(WHEEL_SLOTS as u64 * WHEEL_SLOT_NS > 60_000_000);
// One bit per slot in `Shard::wheel_busy`.
const _: () = assert!(WHEEL_SLOTS == 64);
// An encoded frame (at most MAX_PAYLOAD_BYTES: the media validator refuses a codec and
// ptime whose frame would not fit) with its header and the largest SRTP tag fits in a
// transmit buffer, so the tick path protects without a size check.
const _: () = assert!(rtp::HEADER_LEN + MAX_PAYLOAD_BYTES + 16 <= crate::io::MAX_UDP_PAYLOAD);
// Encoded lengths of shared mixes are kept as u16 in `run_tick`.
const _: () = assert!(MAX_PAYLOAD_BYTES <= u16::MAX as usize);

/// Legs the media-timeout sweep and the RTCP sweep each visit per run at most: a
/// bounded slice of the leg table keeps one `handle_ticks` call's cost flat.
pub(super) const SWEEP_PER_CALL: u32 = 64;

/// Every leg is visited at least this often by both sweeps, however small the shard:
/// media timeouts are seconds and RTCP intervals are randomised over seconds, so a
/// tenth of a second late is nothing to either.
const SWEEP_LAP: Duration = Duration::from_millis(100);

/// How long after one sweep the next runs, for a shard of `max_legs`: a lap of the leg
/// table in [`SWEEP_PER_CALL`] slices takes [`SWEEP_LAP`] (0: every call, when a shard
/// is so large that a lap at one slice per call takes longer). A shard of a few legs
/// then visits each a few times a second instead of at every call (every millisecond
/// in the runtime loop); a large one sweeps as it did, one slice per call.
fn sweep_interval(max_legs: u32) -> Duration {
    let slice = SWEEP_PER_CALL.min(max_legs.max(1));
    let slices_per_lap = u64::from(max_legs.max(1).div_ceil(slice));
    Duration::from_nanos(SWEEP_LAP.as_nanos() / slices_per_lap)
}

/// One mixed frame for [`TxSink::send_with`] to build in the transmit buffer: the RTP
/// header, the payload (encoded from `pcm`, or a leader's clear bytes reused) and SRTP.
/// Afterwards it holds what was built.
struct MixedFrame<'a> {
    pt: u8,
    stamp: Stamp,
    pcm: &'a [i16],
    /// Reuse the first `n` bytes of `enc` (a follower in step with its leader).
    reuse: Option<usize>,
    /// Keep the clear payload in `enc` for followers (a leader of a shared mix).
    keep: bool,
    enc: &'a mut [u8],
    encoder: &'a mut Encoder,
    srtp: &'a mut Option<Box<LegSrtp>>,
    /// Payload octets written (0: the encoder refused, nothing to send).
    payload_len: usize,
    /// Datagram length (0: nothing to send, or SRTP protection failed).
    len: usize,
}

impl MixedFrame<'_> {
    /// Writes the packet into `buf` (a transmit buffer of `MAX_UDP_PAYLOAD` octets);
    /// returns its length.
    #[inline(always)]
    fn build(&mut self, buf: &mut [u8]) -> usize {
        let s = &self.stamp;
        let h = rtp::write_header(buf, self.pt, s.marker, s.seq.0, s.ts.0, s.ssrc.0);
        let payload = &mut buf[h..h + MAX_PAYLOAD_BYTES];
        self.payload_len = match self.reuse {
            Some(n) => {
                payload[..n].copy_from_slice(&self.enc[..n]);
                n
            }
            None => {
                let n = self.encoder.encode(self.pcm, payload);
                if self.keep {
                    // Followers reuse the clear payload; each protects with its own key.
                    self.enc[..n].copy_from_slice(&payload[..n]);
                }
                n
            }
        };
        if self.payload_len == 0 {
            return 0; // The encoder refused: nothing to send.
        }
        // A frame plus header and tag fits (asserted at the top of the file).
        self.len = seal_rtp(self.srtp, buf, h + self.payload_len);
        self.len
    }
}

/// The first tick at `next`'s phase (a whole number of `period`s after it) later than
/// `now`: the missed ticks are skipped, the phase is kept.
fn next_after(next: Instant, period: Duration, now: Instant) -> Instant {
    if next > now {
        return next;
    }
    let period_ns = period.as_nanos().max(1);
    let missed = now.saturating_since(next).as_nanos() / period_ns + 1;
    Instant::from_nanos(next.as_nanos() + missed * period_ns)
}

impl Shard {
    /// When the shard next needs [`Shard::handle_ticks`], if any session ticks.
    pub fn poll_deadline(&self) -> Option<Instant> {
        if self.session_count() == 0 {
            return None;
        }
        // The wheel is scanned a slot at a time; waking at the next slot boundary is
        // cheap and precise to the slot width.
        Some(Instant::from_nanos((self.wheel_cursor + 1) * WHEEL_SLOT_NS))
    }

    /// Runs every tick due at `now` and sweeps a few legs for media timeouts.
    pub fn handle_ticks(&mut self, now: Instant, tx: &mut dyn TxSink, clock: &dyn Fn() -> Instant) {
        if self.started.is_none() {
            self.started = Some(now);
            self.wheel_cursor = now.as_nanos() / WHEEL_SLOT_NS;
        }
        let target = now.as_nanos() / WHEEL_SLOT_NS;
        let mut last_end: Option<Instant> = None;
        while self.wheel_cursor <= target {
            let slot = (self.wheel_cursor % WHEEL_SLOTS as u64) as usize;
            if self.wheel_busy & (1 << slot) == 0 {
                // Nothing scheduled in this slot: jump to the next one that has something
                // (or to the target), without visiting the empty ones between.
                let ahead = self.wheel_busy.rotate_right(slot as u32);
                let skip = if ahead == 0 {
                    WHEEL_SLOTS as u64
                } else {
                    u64::from(ahead.trailing_zeros())
                };
                if self.wheel_cursor + skip > target {
                    self.wheel_cursor = target;
                    break;
                }
                self.wheel_cursor += skip;
                continue;
            }
            let mut s = std::mem::replace(&mut self.wheel[slot], NO_SLOT);
            let mut keep = NO_SLOT;
            while s != NO_SLOT {
                let sess = self.sessions[s as usize]
                    .as_mut()
                    .expect("the wheel holds live sessions");
                let (next, deadline) = (sess.wheel_next, sess.next_tick);
                if deadline > now {
                    // Not yet due (a later lap of the wheel): keep it in this slot.
                    sess.wheel_next = keep;
                    keep = s;
                    s = next;
                    continue;
                }
                sess.scheduled = false;
                // One clock read per tick: a tick starts when the previous one ended.
                let start = last_end.unwrap_or_else(clock);
                let lateness = start.saturating_since(deadline);
                self.prefetch_ahead(next);
                self.run_tick(start, s, tx);
                let end = clock();
                last_end = Some(end);
                let c = &mut self.counters;
                c.ticks += 1;
                c.tick_lateness_ns.record(lateness.as_nanos().max(1));
                c.tick_processing_ns
                    .record(end.saturating_since(start).as_nanos().max(1));
                if lateness > self.cfg.late_tick_threshold {
                    c.late_ticks += 1;
                }
                if let Some(sess) = self.sessions[s as usize].as_mut()
                    && sess.mixing
                {
                    sess.next_tick += sess.tick_period;
                    // A shard that fell a period or more behind skips the missed ticks
                    // rather than bursting to catch up, and keeps the session's phase.
                    // The next tick must lie ahead of `now`: one already past would go
                    // into a wheel slot the cursor has left, and wait a whole lap of the
                    // wheel (64 ms) there. (Resetting the tick to `now` instead, as
                    // before, gathered every session a stall delayed into one slot for
                    // good.)
                    if sess.next_tick <= now {
                        sess.next_tick = next_after(sess.next_tick, sess.tick_period, now);
                    }
                    self.schedule(s);
                }
                s = next;
            }
            // Reinsert the sessions kept for a later lap.
            let mut k = keep;
            while k != NO_SLOT {
                let next = self.session(k).wheel_next;
                self.session_mut(k).wheel_next = self.wheel[slot];
                self.wheel[slot] = k;
                k = next;
            }
            if self.wheel[slot] == NO_SLOT {
                self.wheel_busy &= !(1 << slot);
            }
            if self.wheel_cursor == target {
                break;
            }
            self.wheel_cursor += 1;
        }
        if now >= self.next_sweep {
            self.next_sweep = now + sweep_interval(self.cfg.max_legs);
            self.sweep_timeouts(now);
            self.send_rtcp(now, tx);
        }
    }

    /// One tick of session `s`: pull a tick of PCM from every mixed input, mix every
    /// distinct mix ([`mixer::mix_session`]), and encode and send every mixing
    /// listener's frame once it is complete.
    pub(super) fn run_tick(&mut self, now: Instant, s: u32, tx: &mut dyn TxSink) {
        // Disjoint borrows: the session and its plan are read while legs, staging
        // buffers and counters are written.
        let Shard {
            sessions,
            legs,
            tick_in,
            tick_out,
            tick_enc,
            tick_rs,
            kernels,
            counters,
            ..
        } = self;
        let Some(sess) = sessions[s as usize].as_ref() else {
            return;
        };
        let plan = &sess.plan;
        if !sess.mixing {
            return;
        }
        let tick = sess.tick_samples;
        for i in plan.mixed_inputs() {
            let dst = &mut tick_in[i][..tick];
            match legs[sess.legs[i] as usize]
                .as_mut()
                .and_then(|l| l.media.as_deref_mut())
            {
                Some(m) => m.pull_tick(now, dst, &mut tick_rs[..]),
                None => dst.fill(0),
            }
        }
        mixer::mix_session(plan, kernels, tick, tick_in, tick_out);
        // Encoded frames of shared mixes, by leader: their length, for followers to
        // reuse in the same tick (0: none; a kept frame is never empty).
        let mut encoded = [0u16; MAX_SESSION_LEGS];
        for l in LegSet(plan.mixed_outputs().0 | sess.idle.0) {
            let leader = plan.mix_leader(l);
            let mix = if sess.idle.contains(l) {
                &SILENCE[..tick]
            } else {
                &tick_out[leader][..tick]
            };
            let Some(Leg {
                port,
                remote,
                media,
                ..
            }) = legs[sess.legs[l] as usize].as_mut()
            else {
                continue;
            };
            let Some(m) = media.as_deref_mut() else {
                continue;
            };
            let Some(frame) = m.accumulate(mix) else {
                continue;
            };
            let talkspurt = !m.mixed_active;
            m.mixed_active = true;
            let stamp = m.out.mixed(now, talkspurt);
            let Some(remote) = *remote else { continue };
            // A follower in step with its leader sends the leader's encoded bytes (the
            // plan shares a mix only between legs of one codec and ptime).
            // A leader of its own mix (the common case) neither reuses nor keeps.
            let (reuse, keep) = if leader == l {
                (None, frame == Frame::Tick && plan.is_shared_mix(l))
            } else {
                match usize::from(encoded[leader]) {
                    n if n > 0 && frame == Frame::Tick => (Some(n), false),
                    _ => (None, false),
                }
            };
            let pcm = match frame {
                Frame::Tick => mix,
                Frame::Staged => &m.out_pcm[..m.mix_frame_samples],
            };
            // The mix to the encoder's rate (G.722 or L16 in a session mixing at another
            // rate, G.711 in a wideband one); not needed when reusing a leader's bytes.
            let pcm = match (reuse, m.out_rs.as_deref_mut()) {
                (None, Some(rs)) => {
                    let n = rs.process(pcm, &mut tick_rs[..]);
                    &tick_rs[..n]
                }
                _ => pcm,
            };
            // Everything the build closure needs in one place: the closure captures one
            // reference instead of a dozen.
            let mut out = MixedFrame {
                pt: m.payload_type,
                stamp,
                pcm,
                reuse,
                keep,
                enc: &mut tick_enc[leader],
                encoder: &mut m.encoder,
                srtp: &mut m.srtp,
                payload_len: 0,
                len: 0,
            };
            let sent = tx.send_with(*port, remote, &mut |buf| out.build(buf));
            let (len, payload_len) = (out.len, out.payload_len);
            if sent && payload_len == 0 {
                continue; // The encoder refused (libopus); nothing went out.
            }
            if keep && sent {
                // A payload is at most MAX_PAYLOAD_BYTES (asserted below u16::MAX).
                encoded[l] = payload_len as u16;
            }
            if sent && len > 0 {
                m.packets_sent = m.packets_sent.wrapping_add(1);
                m.octets_sent = m.octets_sent.wrapping_add(payload_len as u32);
            }
            counters.count_send(sent, len);
        }
    }

    /// Prefetches what the sessions after the one about to tick will read, `n1` being
    /// the next in the wheel slot: a session's state is several pointer levels deep
    /// (session, leg entries, media state, jitter ring), so each level is asked for one
    /// session further ahead than the level it hangs from. By the time a session ticks,
    /// its session entry was requested four ticks before, its leg entries three, its
    /// media states two and its ring one; each tick reads only lines requested a tick
    /// earlier. With thousands of sessions per core their state is far beyond the
    /// caches; this turns a chain of misses per session into hits. Changes no result.
    #[inline]
    fn prefetch_ahead(&self, n1: u32) {
        use earshot_media::dsp::prefetch::{LINE_BYTES, read};
        let session = |s: u32| self.sessions.get(s as usize).and_then(Option::as_ref);
        let Some(s1) = session(n1) else { return };
        let s2 = session(s1.wheel_next);
        let s3 = s2.and_then(|x| session(x.wheel_next));
        let s4 = s3.and_then(|x| session(x.wheel_next));
        if let Some(s4) = s4 {
            read(s4, Session::HOT_BYTES / LINE_BYTES + 1);
        }
        fn entries<'a>(
            table: &'a [Option<Leg>],
            sess: Option<&'a Session>,
        ) -> impl Iterator<Item = &'a Option<Leg>> {
            sess.into_iter()
                .flat_map(|x| x.legs[..x.len].iter())
                .filter_map(|&slot| table.get(slot as usize))
        }
        let legs = |sess| entries(&self.legs, sess);
        for leg in legs(s3) {
            read(leg, Leg::HOT_BYTES / LINE_BYTES + 1);
        }
        for m in legs(s2).filter_map(|l| l.as_ref()?.media.as_deref()) {
            read(m, LegMedia::HOT_BYTES / LINE_BYTES + 1);
        }
        for m in legs(Some(s1)).filter_map(|l| l.as_ref()?.media.as_deref()) {
            m.jitter.prefetch_head();
        }
    }

    fn sweep_timeouts(&mut self, now: Instant) {
        // A bounded slice of the leg table per call keeps the sweep's cost flat.
        let max = self.cfg.max_legs;
        for _ in 0..SWEEP_PER_CALL.min(max) {
            let slot = self.timeout_sweep;
            self.timeout_sweep = (self.timeout_sweep + 1) % max;
            let timeout = self.cfg.media_timeout;
            let Some(leg) = self.legs[slot as usize].as_mut() else {
                continue;
            };
            if let Some(srtp) = leg.media.as_mut().and_then(|m| m.srtp.as_deref_mut()) {
                srtp.expire_previous(now);
            }
            if leg.media.is_none() || leg.timed_out || now.saturating_since(leg.last_rx) < timeout {
                continue;
            }
            leg.timed_out = true;
            let id = leg.id;
            self.push_event(ShardEvent::MediaTimeout(id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_that_fell_behind_skips_whole_periods_and_keeps_its_phase() {
        let ms = |n: u64| Instant::from_nanos(n * 1_000_000);
        let period = Duration::from_millis(20);
        // Phase 7 ms; the shard stalled until 95.5 ms: the next tick is at 107 ms (the
        // first at its phase after now), not at 95.5 ms, and not in the past.
        let next = next_after(ms(7), period, Instant::from_nanos(95_500_000));
        assert_eq!(next, ms(107));
        // Exactly whole periods late: the next period.
        assert_eq!(next_after(ms(7), period, ms(67)), ms(87));
        // Still ahead: unchanged.
        assert_eq!(next_after(ms(7), period, ms(5)), ms(7));
    }

    /// Many sessions delayed by one stall stay spread over the wheel afterwards: the
    /// phases they had before the stall are the phases they have after it, and every
    /// next tick is ahead of the wheel's cursor.
    #[test]
    fn a_stall_does_not_gather_staggered_sessions_into_one_slot() {
        let period = Duration::from_millis(20);
        let stalled_until = Instant::from_nanos(1_000_000_000 + 63_400_000);
        let slots: std::collections::BTreeSet<u64> = (0..20u64)
            .map(|phase| {
                let next = Instant::from_nanos(1_000_000_000 + phase * WHEEL_SLOT_NS);
                let after = next_after(next, period, stalled_until);
                assert!(after > stalled_until && after <= stalled_until + period);
                (after.as_nanos() / WHEEL_SLOT_NS) % 20
            })
            .collect();
        assert_eq!(slots.len(), 20, "phases collapsed: {slots:?}");
    }

    #[test]
    fn a_lap_of_the_sweeps_takes_the_lap_or_one_slice_per_call() {
        let lap = SWEEP_LAP.as_nanos();
        // A small shard: all its legs in one slice, once per lap.
        assert_eq!(sweep_interval(3).as_nanos(), lap);
        assert_eq!(sweep_interval(64).as_nanos(), lap);
        // Ten slices: ten runs per lap.
        assert_eq!(sweep_interval(640).as_nanos(), lap / 10);
        assert_eq!(sweep_interval(65).as_nanos(), lap / 2);
        // A lap at one slice per millisecond call is longer than the lap: every call.
        assert!(sweep_interval(30_000).as_nanos() < WHEEL_SLOT_NS);
        assert_eq!(sweep_interval(0).as_nanos(), lap);
    }
}
