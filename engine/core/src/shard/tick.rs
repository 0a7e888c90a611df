//! Ticks: every mixing session, once per period, pulls, mixes, encodes and sends.

use earshot_media::dsp::g711;
use earshot_media::plan::OutputPlan;
use earshot_media::time::Instant;
use earshot_media::{Gain, MAX_SESSION_LEGS};

use super::{NO_SLOT, Shard, ShardEvent};
use crate::io::TxSink;
use crate::rtp;

/// Granularity of the tick wheel.
pub(super) const WHEEL_SLOT_NS: u64 = 1_000_000;
/// Slots in the wheel: more than the longest tick period (60 ms).
pub(super) const WHEEL_SLOTS: usize = 64;
const _: () = assert!(WHEEL_SLOTS as u64 * WHEEL_SLOT_NS > 60_000_000);

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
        while self.wheel_cursor <= target {
            let slot = (self.wheel_cursor % WHEEL_SLOTS as u64) as usize;
            let mut s = std::mem::replace(&mut self.wheel[slot], NO_SLOT);
            let mut keep = NO_SLOT;
            while s != NO_SLOT {
                let next = self.session(s).wheel_next;
                let deadline = self.session(s).next_tick;
                if deadline <= now {
                    self.session_mut(s).scheduled = false;
                    let start = clock();
                    let lateness = start.saturating_since(deadline);
                    self.run_tick(start, s, tx);
                    let end = clock();
                    let c = &mut self.counters;
                    c.ticks += 1;
                    let _ = c.tick_lateness_ns.record(lateness.as_nanos().max(1));
                    let _ = c
                        .tick_processing_ns
                        .record(end.saturating_since(start).as_nanos().max(1));
                    if lateness > self.cfg.late_tick_threshold {
                        c.late_ticks += 1;
                    }
                    if let Some(sess) = self.sessions[s as usize].as_mut() {
                        if sess.mixing {
                            sess.next_tick += sess.tick_period;
                            // A shard that fell more than a period behind skips ahead
                            // rather than bursting to catch up.
                            if sess.next_tick + sess.tick_period < now {
                                sess.next_tick = now;
                            }
                            self.schedule(s);
                        }
                    }
                } else {
                    // Not yet due (a later lap of the wheel): keep it in this slot.
                    self.session_mut(s).wheel_next = keep;
                    keep = s;
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
            if self.wheel_cursor == target {
                break;
            }
            self.wheel_cursor += 1;
        }
        self.sweep_timeouts(now);
        self.send_rtcp(now, tx);
    }

    /// One tick of session `s`: pull a tick's worth of PCM from every mixed input, mix
    /// each mixed output, and send every output whose frame is complete.
    pub(super) fn run_tick(&mut self, now: Instant, s: u32, tx: &mut dyn TxSink) {
        let sess = self.session(s);
        let (legs, n, tick) = (sess.legs, sess.len, sess.tick_samples);
        if !sess.mixing {
            return;
        }
        // 1. Inputs: top up each mixed input's PCM to one tick from its jitter buffer.
        for i in 0..n {
            if !self.session(s).plan.is_mixed_input(i) {
                continue;
            }
            let Some(m) = self.legs[legs[i] as usize]
                .as_mut()
                .and_then(|l| l.media.as_mut())
            else {
                continue;
            };
            // Decoded straight into the staging buffer: in_len < tick <= frame, and the
            // buffer holds two of the longest frames.
            while m.in_len < tick {
                let fs = m.frame_samples;
                let _kind = m
                    .jitter
                    .poll_frame(now, &mut m.in_pcm[m.in_len..m.in_len + fs]);
                m.in_len += fs;
            }
        }
        // 2. Outputs: mix one tick for each mixed listener; send full frames.
        for l in 0..n {
            if l >= self.session(s).plan.legs() {
                break;
            }
            let OutputPlan::Mix(_) = self.session(s).plan.output(l) else {
                continue;
            };
            let mut inputs: [&[i16]; MAX_SESSION_LEGS] = [&[]; MAX_SESSION_LEGS];
            let mut gains = [Gain::MUTE; MAX_SESSION_LEGS];
            let mut k = 0;
            let sess = self.sessions[s as usize]
                .as_ref()
                .expect("ticking a live session");
            if let OutputPlan::Mix(sources) = sess.plan.output(l) {
                for &earshot_media::plan::MixSource { source: src, gain } in sources.as_slice() {
                    if let Some(m) = self.legs[legs[src] as usize]
                        .as_ref()
                        .and_then(|x| x.media.as_ref())
                    {
                        inputs[k] = &m.in_pcm[..tick];
                        gains[k] = gain;
                        k += 1;
                    }
                }
            }
            let mix = self.kernels.mix;
            // Inputs borrow other legs immutably, so the mix lands in the shard's scratch
            // buffer (a different field), not in the listener's own leg.
            let chunk = &mut self.scratch[..tick];
            mix(chunk, &inputs[..k], &gains[..k]);
            let chunk = &self.scratch[..tick];
            let leg = self.legs[legs[l] as usize]
                .as_mut()
                .expect("session legs are live");
            let port = leg.port;
            let remote = leg.remote;
            let Some(m) = leg.media.as_mut() else {
                continue;
            };
            let fs = m.frame_samples;
            if m.out_len + tick > fs {
                m.out_len = 0; // ptime changed under us; restart the frame.
            }
            // The common case, a tick of one whole frame, encodes straight from the mix.
            let whole = m.out_len == 0 && tick == fs;
            if !whole {
                m.out_pcm[m.out_len..m.out_len + tick].copy_from_slice(chunk);
                m.out_len += tick;
                if m.out_len < fs {
                    continue;
                }
                m.out_len = 0;
            }
            let talkspurt = !m.mixed_active;
            m.mixed_active = true;
            let stamp = m.out.mixed(now, talkspurt);
            let Some(remote) = remote else { continue };
            let (codec, pt) = (m.codec, m.payload_type);
            let pcm = if whole { chunk } else { &m.out_pcm[..fs] };
            let sent = tx.send_with(port, remote, &mut |buf| {
                let h =
                    rtp::write_header(buf, pt, stamp.marker, stamp.seq.0, stamp.ts.0, stamp.ssrc.0);
                g711::encode(codec, pcm, &mut buf[h..h + fs]);
                h + fs
            });
            if sent {
                m.packets_sent = m.packets_sent.wrapping_add(1);
                m.octets_sent = m.octets_sent.wrapping_add(fs as u32);
            }
            self.count_send(sent, rtp::HEADER_LEN + fs);
        }
        // 3. Consume the tick from every input.
        for i in 0..n {
            if let Some(m) = self.legs[legs[i] as usize]
                .as_mut()
                .and_then(|l| l.media.as_mut())
            {
                if m.in_len == tick {
                    m.in_len = 0;
                } else if m.in_len > tick {
                    m.in_pcm.copy_within(tick..m.in_len, 0);
                    m.in_len -= tick;
                }
            }
        }
    }

    fn sweep_timeouts(&mut self, now: Instant) {
        // A bounded slice of the leg table per call keeps the sweep's cost flat.
        const SWEEP_PER_CALL: u32 = 64;
        let max = self.cfg.max_legs;
        for _ in 0..SWEEP_PER_CALL.min(max) {
            let slot = self.timeout_sweep;
            self.timeout_sweep = (self.timeout_sweep + 1) % max;
            let timeout = self.cfg.media_timeout;
            let Some(leg) = self.legs[slot as usize].as_mut() else {
                continue;
            };
            if leg.media.is_none() || leg.timed_out || now.saturating_since(leg.last_rx) < timeout {
                continue;
            }
            leg.timed_out = true;
            let id = leg.id;
            self.push_event(ShardEvent::MediaTimeout(id));
        }
    }
}
