//! An adaptive jitter buffer per input leg that is mixed (decoded at ticks).
//!
//! Packets go in as they arrive ([`JitterBuffer::handle_packet`]); one frame of linear
//! PCM comes out per ptime tick ([`JitterBuffer::poll_frame`]). Forwarded paths bypass
//! the buffer entirely (SPEC section 5), so its delay is paid only by mixed listeners.
//!
//! ## Model
//! Storage is a ring of `capacity_packets` frame slots allocated in
//! [`JitterBuffer::new`]; a packet's slot is chosen by its RTP timestamp relative to
//! the *head* (the frame due at the next tick), so reordering is free and a duplicate
//! finds its slot taken. Packets must carry exactly one frame (`ptime_ms` of samples);
//! the leg's negotiated ptime is the contract, and other lengths are refused.
//!
//! - **Talk spurts.** The first packet after nothing (start, long loss, comfort-noise
//!   silence, or a marker bit on an empty buffer) anchors the head to its timestamp and
//!   waits the *target depth* before playout starts. This is also where the delay
//!   adapts freely: each spurt starts at the current target.
//! - **Target depth** = clamp(ptime + 4 x jitter, `min_depth_ms`, `max_depth_ms`), where
//!   jitter is the RFC 3550 (A.8) interarrival estimate, computed here in our own code.
//!   It rises at once and decays by 1/64 of the gap per packet: grow fast, shrink slowly.
//! - **Fill control.** At each tick the buffered span from the head to the newest
//!   frame (the *level*) is averaged (1/16 per tick). With a steady stream it sits at
//!   target + ptime. When the average leaves [target + ptime/2, target + 3 ptime/2] a
//!   frame is inserted (the head frame is played twice) or dropped (the head frame is
//!   skipped), preferably on a quiet frame (mean |x| below about -40 dBov) where the
//!   change is inaudible; a loud stream gets its adjustment after
//!   [`ADJUST_PATIENCE_FRAMES`] ticks anyway, or at once when a whole frame off. Drops
//!   are rate limited to one per [`DROP_HOLDOFF_FRAMES`]. This absorbs sender clock
//!   drift (+-1000 ppm is one frame every 20 s at 20 ms) and moves the depth to a new
//!   target within a spurt.
//! - **Loss.** A missing head frame with later frames present is lost: it is concealed
//!   by repeating the last frame with a fade (gain halving per consecutive frame) for
//!   `conceal_frames`, then silence. A missing head frame with nothing buffered is an
//!   *underrun*: the frame is concealed the same way but the head waits (the stream
//!   grew one frame late, so the depth grows by one). After `conceal_frames` the
//!   stream is considered stopped and the buffer goes idle until the next packet.
//! - **Comfort noise** (payload type 13, RFC 3389: first byte is the level in -dBov)
//!   plays seeded uniform noise at that level from its timestamp until audio resumes.
//!   A DTX gap after it is neither loss nor concealment.
//! - **Resync.** A new SSRC, or a packet far from the current timeline (sequence
//!   number more than 100 away, or timestamp beyond the ring either way), is held on
//!   probation as RFC 3550 A.1 does: it is dropped, and only a run of
//!   [`PROBATION_PACKETS`] (same SSRC, consecutive sequence numbers, timestamps exactly
//!   one frame apart) starts a new timeline. So stray packets (a late one from a
//!   replaced SSRC, junk from the latched address) cannot flip the buffer, and a real
//!   restart costs two frames of audio. A newer
//!   sequence number whose timestamp lands just behind the head resyncs at once. The
//!   new timeline is mapped (by an offset added to every later timestamp) to follow
//!   the newest buffered frame, so playout carries straight on with no gap. When the
//!   buffer is idle or in comfort noise, any packet simply starts a talk spurt.
//!
//! Packets of payload types other than the codec's and comfort noise are the caller's
//! business: the engine filters RFC 4733 DTMF before the buffer. They are refused and
//! counted here. No allocation after [`JitterBuffer::new`].

use crate::dsp::g711;
use crate::rng::SeedRng;
use crate::time::{Duration, Instant};
use crate::{Codec, PTIMES_MS, PayloadType, RtpTs, SeqNo, Ssrc};

/// Ticks a needed fill adjustment waits for a quiet frame before it is forced.
pub const ADJUST_PATIENCE_FRAMES: u32 = 25;
/// Minimum ticks between two dropped frames: shrinking is slow.
pub const DROP_HOLDOFF_FRAMES: u32 = 25;
/// A frame whose mean absolute sample is below this is quiet enough to drop or repeat
/// (about -40 dBov).
const QUIET_MEAN_ABS: u32 = 330;
/// Sequence numbers further than this from the highest seen are a different timeline
/// until confirmed (RFC 3550 A.1's `MAX_MISORDER`).
const MAX_MISORDER: i32 = 100;

/// Packets in a row a new timeline must show before the buffer moves to it: RFC 3550
/// A.1's `MIN_SEQUENTIAL` (2), plus one, and with timestamps held to exact frame steps.
const PROBATION_PACKETS: u8 = 3;

/// Configuration of one jitter buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JitterConfig {
    /// The leg's codec. No default: it is negotiated.
    pub codec: Codec,
    /// Payload type of the codec's packets. Default: the codec's static type (0 or 8).
    pub payload_type: PayloadType,
    /// Payload type of comfort noise. Default 13, the static type of RFC 3389.
    pub cn_payload_type: PayloadType,
    /// Frame length in milliseconds; every audio packet must carry exactly one frame.
    /// No default: it is negotiated (one of [`PTIMES_MS`]).
    pub ptime_ms: u32,
    /// Smallest target depth. Default 20 ms: one frame at the common ptime, enough for a
    /// LAN where arrival is nearly periodic, and little added delay for supervisors.
    pub min_depth_ms: u32,
    /// Largest target depth. Default 200 ms: beyond it a conversation suffers more from
    /// delay than from the occasional late-packet loss the extra depth would save.
    pub max_depth_ms: u32,
    /// Slots in the ring. Default 32: holds the max depth at the smallest ptime (200 ms
    /// at 10 ms = 20 frames) plus room for early and reordered packets.
    pub capacity_packets: usize,
    /// Frames of faded repetition before a loss turns to silence. Default 3 (60 ms at
    /// 20 ms): longer repetition of one frame sounds robotic, shorter clicks.
    pub conceal_frames: u32,
    /// RTP clock rate. Default 8000, G.711's.
    pub clock_rate_hz: u32,
    /// Seed of the comfort-noise generator. Default 0; the engine passes one per leg so
    /// simulations replay.
    pub noise_seed: u64,
}

impl JitterConfig {
    /// The documented defaults for `codec` at `ptime_ms`.
    pub fn new(codec: Codec, ptime_ms: u32) -> Self {
        JitterConfig {
            codec,
            payload_type: codec.static_payload_type(),
            cn_payload_type: PayloadType::CN,
            ptime_ms,
            min_depth_ms: 20,
            max_depth_ms: 200,
            capacity_packets: 32,
            conceal_frames: 3,
            clock_rate_hz: codec.clock_rate_hz(),
            noise_seed: 0,
        }
    }
}

/// Why a packet was not taken into the buffer. Each reason is counted in
/// [`JitterStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DropReason {
    /// Its frame was already played (or concealed).
    #[error("packet arrived after its frame was played")]
    TooLate,
    /// Its slot already holds that frame.
    #[error("duplicate packet")]
    Duplicate,
    /// Its timestamp lies beyond the ring while its sequence number is old, so it fits no
    /// timeline; or a new timeline found the ring full to its last slot.
    #[error("packet beyond the buffer capacity")]
    Overflow,
    /// Audio not exactly one frame long, or comfort noise without its level byte.
    #[error("payload length does not match the leg's ptime")]
    BadPayloadLength,
    /// Neither the codec's payload type nor comfort noise (DTMF belongs to the caller).
    #[error("payload type not for the jitter buffer")]
    UnexpectedPayloadType,
    /// The first packet of a new SSRC or of a far-away timeline, held on probation: a
    /// second packet in sequence confirms the switch.
    #[error("packet on probation for a new timeline")]
    Probation,
}

/// What became of an accepted packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Stored in its slot.
    Stored,
    /// It starts a talk spurt: the buffer re-anchored on it and waits the target depth.
    TalkspurtStart,
    /// A new SSRC or a timestamp jump: remapped to continue the current playout.
    Resynced,
}

/// What [`JitterBuffer::poll_frame`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// Received audio, decoded.
    Audio,
    /// A lost or late frame, replaced by a faded repeat of the last one.
    Concealed,
    /// Comfort noise at the level the sender asked for.
    ComfortNoise,
    /// Zeros: nothing received yet, or loss beyond concealment.
    Silence,
}

/// One polled frame's description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Polled {
    /// What the samples are.
    pub kind: FrameKind,
    /// True on the first audio frame after anything but audio or concealment: the
    /// output stream sets the RTP marker bit on it.
    pub talkspurt_start: bool,
}

/// Counters and estimates of one jitter buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitterStats {
    /// RFC 3550 interarrival jitter estimate, microseconds.
    pub jitter_us: u64,
    /// Current target depth, microseconds.
    pub target_depth_us: u64,
    /// Buffered span from the head to the newest frame at the last tick, milliseconds.
    pub level_ms: u32,
    /// Packets accepted.
    pub accepted: u64,
    /// Drops: [`DropReason::TooLate`].
    pub late_drops: u64,
    /// Drops: [`DropReason::Duplicate`].
    pub duplicates: u64,
    /// Drops: [`DropReason::Overflow`].
    pub overflow_drops: u64,
    /// Drops: [`DropReason::BadPayloadLength`].
    pub bad_payload_drops: u64,
    /// Drops: [`DropReason::UnexpectedPayloadType`].
    pub unexpected_pt_drops: u64,
    /// Drops: [`DropReason::Probation`].
    pub probation_drops: u64,
    /// Frames never received and passed over (later frames were present).
    pub lost_frames: u64,
    /// Frames played as concealment (loss or underrun).
    pub concealed_frames: u64,
    /// Times the buffer ran empty while playing audio.
    pub underruns: u64,
    /// SSRC changes and timestamp jumps remapped.
    pub resyncs: u64,
    /// Talk spurts started (re-anchors).
    pub talkspurts: u64,
    /// Frames repeated to grow the fill.
    pub frames_inserted: u64,
    /// Frames skipped to shrink the fill.
    pub frames_dropped: u64,
    /// Frames of comfort noise played.
    pub comfort_noise_frames: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotKind {
    Audio,
    ComfortNoise,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    filled: bool,
    kind: SlotKind,
}

const EMPTY_SLOT: Slot = Slot {
    filled: false,
    kind: SlotKind::Audio,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing to play until a packet arrives.
    Idle,
    /// A talk spurt's first packet arrived at `since`; playout starts at since + target.
    Buffering { since: Instant },
    /// The head advances (or waits) at every tick.
    Playing,
}

/// The last packet of a run held on probation, and the run's length.
#[derive(Clone, Copy, Debug)]
struct Probe {
    ssrc: Ssrc,
    seq: SeqNo,
    ts: RtpTs,
    run: u8,
}

/// An adaptive jitter buffer for one input leg. See the module doc for the model.
#[derive(Debug)]
pub struct JitterBuffer {
    cfg: JitterConfig,
    frame_samples: usize,
    ptime_us: i64,
    slots: Vec<Slot>,
    /// `capacity_packets * frame_samples` payload bytes, slot `i` at `i * frame_samples`.
    payload: Vec<u8>,
    /// The last frame played as audio, for concealment: it stays in its slot
    /// (`last_slot`) until a packet overwrites that slot, and only then is it decoded
    /// here (`last_frame_saved`). Playing a frame costs no copy.
    last_frame: Vec<i16>,
    last_frame_valid: bool,
    last_slot: usize,
    last_frame_saved: bool,
    phase: Phase,
    head_ts: RtpTs,
    head_idx: usize,
    stored: usize,
    newest_ts: RtpTs,
    ssrc: Option<Ssrc>,
    /// The last packet held on probation: (SSRC, seq, wire timestamp).
    probe: Option<Probe>,
    /// Added to every wire timestamp: the internal timeline survives SSRC changes and
    /// jumps.
    ts_offset: u32,
    highest_seq: SeqNo,
    /// RFC 3550 A.8 state: previous transit time (samples) and jitter in 1/16 samples.
    prev_transit: Option<u32>,
    jitter_q4: u32,
    target_us: i64,
    level_avg_us: i64,
    level_avg_valid: bool,
    adjust_wait: u32,
    since_drop: u32,
    /// The head frame was just played as an insertion: play it normally next, so a loud
    /// frame is never heard three times.
    just_inserted: bool,
    conceal_run: u32,
    /// Comfort noise amplitude while comfort noise is active.
    cn_amplitude: Option<i32>,
    talkspurt_pending: bool,
    rng: SeedRng,
    stats: JitterStats,
}

impl JitterBuffer {
    /// Forgets the stream: the next packet starts a new talk spurt on a fresh timeline.
    /// The counters survive. For the engine to call when nobody mixes this input any
    /// more, since the buffer is then neither fed nor polled and its timeline goes stale.
    /// Control path: it reallocates the storage.
    pub fn reset(&mut self) {
        let stats = self.stats;
        *self = JitterBuffer::new(self.cfg);
        self.stats = stats;
    }

    /// Allocates all storage for `cfg`.
    ///
    /// Panics on an inconsistent config (a programmer error: the control side validates
    /// ptime and codec): ptime not in [`PTIMES_MS`], clock rate not the codec's,
    /// `min_depth_ms > max_depth_ms`, or a ring too small to hold the max depth plus
    /// two frames.
    pub fn new(cfg: JitterConfig) -> Self {
        assert!(
            PTIMES_MS.contains(&cfg.ptime_ms),
            "ptime {} ms unsupported",
            cfg.ptime_ms
        );
        assert_eq!(
            cfg.clock_rate_hz,
            cfg.codec.clock_rate_hz(),
            "clock rate is the codec's"
        );
        assert!(
            cfg.min_depth_ms <= cfg.max_depth_ms,
            "min depth above max depth"
        );
        assert!(
            cfg.capacity_packets as u64 * u64::from(cfg.ptime_ms)
                >= u64::from(cfg.max_depth_ms) + 2 * u64::from(cfg.ptime_ms),
            "{} slots cannot hold {} ms of depth at {} ms",
            cfg.capacity_packets,
            cfg.max_depth_ms,
            cfg.ptime_ms
        );
        let frame_samples = cfg.codec.frame_samples(cfg.ptime_ms);
        JitterBuffer {
            cfg,
            frame_samples,
            ptime_us: i64::from(cfg.ptime_ms) * 1_000,
            slots: vec![EMPTY_SLOT; cfg.capacity_packets],
            payload: vec![0; cfg.capacity_packets * frame_samples],
            last_frame: vec![0; frame_samples],
            last_frame_valid: false,
            last_slot: 0,
            last_frame_saved: false,
            phase: Phase::Idle,
            head_ts: RtpTs(0),
            head_idx: 0,
            stored: 0,
            newest_ts: RtpTs(0),
            ssrc: None,
            probe: None,
            ts_offset: 0,
            highest_seq: SeqNo(0),
            prev_transit: None,
            jitter_q4: 0,
            target_us: i64::from(cfg.min_depth_ms.max(cfg.ptime_ms).min(cfg.max_depth_ms)) * 1_000,
            level_avg_us: 0,
            level_avg_valid: false,
            adjust_wait: 0,
            since_drop: DROP_HOLDOFF_FRAMES,
            just_inserted: false,
            conceal_run: 0,
            cn_amplitude: None,
            talkspurt_pending: true,
            rng: SeedRng::new(cfg.noise_seed),
            stats: JitterStats::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &JitterConfig {
        &self.cfg
    }

    /// Samples in one frame (what [`JitterBuffer::poll_frame`] writes).
    pub fn frame_samples(&self) -> usize {
        self.frame_samples
    }

    /// Counters and estimates.
    pub fn stats(&self) -> JitterStats {
        JitterStats {
            jitter_us: u64::from(self.jitter_q4 >> 4) * 1_000_000
                / u64::from(self.cfg.clock_rate_hz),
            target_depth_us: self.target_us as u64,
            ..self.stats
        }
    }

    /// Takes one RTP packet of this leg, arriving at `now`, copying its payload.
    #[allow(clippy::too_many_arguments)] // The RTP header fields the buffer needs, unpacked.
    pub fn handle_packet(
        &mut self,
        now: Instant,
        ssrc: Ssrc,
        seq: SeqNo,
        ts: RtpTs,
        pt: PayloadType,
        marker: bool,
        payload: &[u8],
    ) -> Result<Accepted, DropReason> {
        let result = self.place(now, ssrc, seq, ts, pt, marker, payload);
        match result {
            Ok(_) => self.stats.accepted += 1,
            Err(DropReason::TooLate) => self.stats.late_drops += 1,
            Err(DropReason::Duplicate) => self.stats.duplicates += 1,
            Err(DropReason::Overflow) => self.stats.overflow_drops += 1,
            Err(DropReason::BadPayloadLength) => self.stats.bad_payload_drops += 1,
            Err(DropReason::UnexpectedPayloadType) => self.stats.unexpected_pt_drops += 1,
            Err(DropReason::Probation) => self.stats.probation_drops += 1,
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn place(
        &mut self,
        now: Instant,
        ssrc: Ssrc,
        seq: SeqNo,
        ts: RtpTs,
        pt: PayloadType,
        marker: bool,
        payload: &[u8],
    ) -> Result<Accepted, DropReason> {
        let kind = if pt == self.cfg.payload_type {
            if payload.len() != self.frame_samples {
                return Err(DropReason::BadPayloadLength);
            }
            SlotKind::Audio
        } else if pt == self.cfg.cn_payload_type {
            if payload.is_empty() {
                return Err(DropReason::BadPayloadLength);
            }
            SlotKind::ComfortNoise
        } else {
            return Err(DropReason::UnexpectedPayloadType);
        };

        let new_ssrc = self.ssrc != Some(ssrc);
        let frame_ts = self.frame_samples as u32;

        let seq_delta = i32::from(seq.delta(self.highest_seq));
        // Nothing buffered and nothing to continue: this packet starts a talk spurt,
        // unless it is older than what was already played (a straggler). Another SSRC
        // never starts one by itself: it goes through probation like any new stream.
        let continuing_audio = self.phase != Phase::Idle && self.cn_amplitude.is_none();
        if self.ssrc.is_none() || !new_ssrc && self.stored == 0 && (!continuing_audio || marker) {
            if !new_ssrc && (-MAX_MISORDER..=0).contains(&seq_delta) {
                return Err(DropReason::TooLate);
            }
            self.ssrc = Some(ssrc);
            self.highest_seq = seq;
            self.probe = None;
            let internal = ts.add(self.ts_offset);
            self.start_talkspurt(now, internal);
            self.update_jitter(now, internal);
            self.store(0, kind, payload);
            return Ok(Accepted::TalkspurtStart);
        }

        let mut internal = ts.add(self.ts_offset);
        let mut frames = self.frames_from_head(internal);
        let cap = self.slots.len() as i64;
        // A straggler (up to MAX_MISORDER behind the highest sequence number) is never a
        // new timeline, however late: it is played if it can be, else dropped as late.
        let straggler = !new_ssrc && (-MAX_MISORDER..=0).contains(&seq_delta);
        let far = seq_delta.abs() > MAX_MISORDER || frames < -cap || frames >= cap;
        let resync = if new_ssrc || far && !straggler {
            if !self.on_probation(ssrc, seq, ts) {
                return Err(DropReason::Probation);
            }
            true
        } else {
            // A newer packet behind the head: the sender's timestamps stepped back.
            seq_delta > 0 && frames < 0
        };

        let mut accepted = Accepted::Stored;
        if resync {
            // A new timeline: continue right after the newest buffered frame, but never
            // further ahead than the target depth: frames of the old timeline beyond it
            // go, so that no resync can leave the buffer holding more delay than it
            // wants (junk once stacked 600 ms this way).
            self.keep_frames(self.target_frames() + 1);
            let follow = if self.stored > 0 {
                self.newest_ts.add(frame_ts)
            } else {
                self.head_ts
            };
            self.ts_offset = follow.0.wrapping_sub(ts.0);
            self.ssrc = Some(ssrc);
            self.highest_seq = seq;
            self.probe = None;
            self.prev_transit = None;
            self.stats.resyncs += 1;
            internal = follow;
            frames = self.frames_from_head(internal);
            accepted = Accepted::Resynced;
        } else if frames >= cap {
            // A straggler by sequence number whose timestamp lies beyond the ring: it fits
            // no timeline.
            return Err(DropReason::Overflow);
        } else if frames < 0 {
            // An old packet behind the head. Before playout starts it can still be
            // played: move the head back to it if the newest frame stays in the ring.
            let span = i64::from(self.newest_ts.delta(internal)) / i64::from(frame_ts);
            if !matches!(self.phase, Phase::Buffering { .. }) || span >= cap {
                self.update_jitter(now, internal);
                return Err(DropReason::TooLate);
            }
            let back = (-frames) as usize % self.slots.len();
            self.head_idx = (self.head_idx + self.slots.len() - back) % self.slots.len();
            self.head_ts = RtpTs(self.head_ts.0.wrapping_sub(back as u32 * frame_ts));
            frames = 0;
        } else if seq_delta > 0 {
            self.highest_seq = seq;
        }
        if !(0..cap).contains(&frames) {
            // A resync onto a ring full to its last slot: nowhere to continue.
            return Err(DropReason::Overflow);
        }
        let idx = (self.head_idx + frames as usize) % self.slots.len();
        if self.slots[idx].filled {
            return Err(DropReason::Duplicate);
        }
        self.update_jitter(now, internal);
        self.store(frames as usize, kind, payload);
        Ok(accepted)
    }

    /// Adds a packet to the run on probation; true when it completes a run of
    /// [`PROBATION_PACKETS`]: same SSRC, consecutive sequence numbers, and timestamps
    /// exactly one frame apart. A real new stream shows that at once; junk from the
    /// latched address (garbage, a stray from a replaced SSRC) practically never does,
    /// so it cannot move the timeline (a moved timeline can leave the buffer holding
    /// seconds of delay).
    fn on_probation(&mut self, ssrc: Ssrc, seq: SeqNo, ts: RtpTs) -> bool {
        let frame = self.frame_samples as i32;
        let run = match self.probe {
            Some(p) if p.ssrc == ssrc && seq == p.seq.next() && ts.delta(p.ts) == frame => {
                p.run + 1
            }
            _ => 1,
        };
        self.probe = Some(Probe { ssrc, seq, ts, run });
        run >= PROBATION_PACKETS
    }

    /// The target depth in whole frames, rounded up.
    fn target_frames(&self) -> usize {
        ((self.target_us + self.ptime_us - 1) / self.ptime_us).max(1) as usize
    }

    /// Drops every buffered frame `frames` or more after the head (counted as
    /// overflow) and moves `newest_ts` back to the newest frame kept.
    fn keep_frames(&mut self, frames: usize) {
        let cap = self.slots.len();
        let mut newest = None;
        for i in 0..cap {
            let idx = (self.head_idx + i) % cap;
            if !self.slots[idx].filled {
                continue;
            }
            if i < frames {
                newest = Some(i);
            } else {
                self.slots[idx] = EMPTY_SLOT;
                self.stored -= 1;
                self.stats.overflow_drops += 1;
            }
        }
        if let Some(i) = newest {
            self.newest_ts = self.head_ts.add(i as u32 * self.frame_samples as u32);
        }
    }

    /// Frames from the head to `internal`, rounded to the nearest frame.
    fn frames_from_head(&self, internal: RtpTs) -> i64 {
        let frame = i64::from(self.frame_samples as u32);
        let d = i64::from(internal.delta(self.head_ts));
        (d + frame / 2).div_euclid(frame)
    }

    /// Copies a packet into the slot `frames` after the head.
    fn store(&mut self, frames: usize, kind: SlotKind, payload: &[u8]) {
        let idx = (self.head_idx + frames) % self.slots.len();
        let ts = self.head_ts.add(frames as u32 * self.frame_samples as u32);
        if self.last_frame_valid && !self.last_frame_saved && idx == self.last_slot {
            // The frame concealment would repeat is about to be overwritten: keep it.
            let n = self.frame_samples;
            let (payload, last) = (&self.payload[idx * n..(idx + 1) * n], &mut self.last_frame);
            g711::decode(self.cfg.codec, payload, last);
            self.last_frame_saved = true;
        }
        self.slots[idx] = Slot { filled: true, kind };
        let n = self.frame_samples;
        let dst = &mut self.payload[idx * n..(idx + 1) * n];
        match kind {
            SlotKind::Audio => dst.copy_from_slice(payload),
            // Only the level byte matters; spectral parameters are ignored.
            SlotKind::ComfortNoise => dst[0] = payload[0] & 0x7f,
        }
        if self.stored == 0 || ts.delta(self.newest_ts) > 0 {
            self.newest_ts = ts;
        }
        self.stored += 1;
    }

    /// Empties the ring and anchors the head on a spurt's first packet.
    fn start_talkspurt(&mut self, now: Instant, internal: RtpTs) {
        self.clear_slots();
        self.head_ts = internal;
        self.head_idx = 0;
        self.newest_ts = internal;
        self.phase = Phase::Buffering { since: now };
        self.talkspurt_pending = true;
        self.conceal_run = 0;
        self.level_avg_valid = false;
        self.stats.talkspurts += 1;
    }

    fn clear_slots(&mut self) {
        if self.stored > 0 {
            self.slots.fill(EMPTY_SLOT);
            self.stored = 0;
        }
    }

    /// RFC 3550 A.8 interarrival jitter, in 1/16 sample units, and the target it implies.
    fn update_jitter(&mut self, now: Instant, internal: RtpTs) {
        // Arrival in RTP units; wrapping to 32 bits is what RFC 3550 does too.
        let arrival = rtp_units(now, self.cfg.clock_rate_hz);
        let rate = u64::from(self.cfg.clock_rate_hz);
        let transit = arrival.wrapping_sub(internal.0);
        if let Some(prev) = self.prev_transit {
            // A delta over a second is a glitch the resync logic handles; cap its weight.
            let d = (transit.wrapping_sub(prev) as i32)
                .unsigned_abs()
                .min(self.cfg.clock_rate_hz);
            self.jitter_q4 = self.jitter_q4 + d - ((self.jitter_q4 + 8) >> 4);
        }
        self.prev_transit = Some(transit);

        let jitter_us = i64::from(self.jitter_q4 >> 4) * 1_000_000 / rate as i64;
        let raw = (self.ptime_us + 4 * jitter_us).clamp(
            i64::from(self.cfg.min_depth_ms) * 1_000,
            i64::from(self.cfg.max_depth_ms) * 1_000,
        );
        // Grow at once, shrink by 1/64 of the gap per packet.
        self.target_us = if raw >= self.target_us {
            raw
        } else {
            self.target_us - (self.target_us - raw + 63) / 64
        };
    }

    /// Writes the frame due at the tick `now` into `out[..frame_samples]`.
    ///
    /// Panics if `out` is shorter than a frame (a programmer error: the engine sizes its
    /// buffers from [`JitterBuffer::frame_samples`] or `MAX_FRAME_SAMPLES`).
    pub fn poll_frame(&mut self, now: Instant, out: &mut [i16]) -> Polled {
        assert!(
            out.len() >= self.frame_samples,
            "output shorter than a frame"
        );
        let out = &mut out[..self.frame_samples];
        match self.phase {
            Phase::Idle => return self.fill_idle(out),
            Phase::Buffering { since } => {
                let start = since + Duration::from_micros(self.target_us as u64);
                if now < start {
                    return self.fill_idle(out);
                }
                self.phase = Phase::Playing;
            }
            Phase::Playing => {}
        }

        let level_us = self.level_frames() * self.ptime_us;
        self.stats.level_ms = (level_us / 1_000) as u32;
        if self.level_avg_valid {
            self.level_avg_us += (level_us - self.level_avg_us) / 16;
        } else {
            self.level_avg_us = level_us;
            self.level_avg_valid = true;
        }
        self.since_drop = self.since_drop.saturating_add(1);

        let head = self.slots[self.head_idx];
        if head.filled {
            return match head.kind {
                SlotKind::Audio => self.play_audio(out),
                SlotKind::ComfortNoise => {
                    let level_dbov = self.payload[self.head_idx * self.frame_samples];
                    self.cn_amplitude = Some(noise_amplitude(level_dbov));
                    self.advance();
                    self.talkspurt_pending = true;
                    self.play_comfort_noise(out)
                }
            };
        }
        if self.cn_amplitude.is_some() {
            // A DTX gap: not a loss. Let time pass only if something is waiting.
            if self.stored > 0 {
                self.advance();
            }
            return self.play_comfort_noise(out);
        }
        if self.stored > 0 {
            self.stats.lost_frames += 1;
            self.advance();
            return self.conceal(out);
        }
        // Underrun: wait for the late frame while concealing; give up after the
        // concealment budget.
        if self.conceal_run == 0 && self.last_frame_valid {
            self.stats.underruns += 1;
        }
        let polled = self.conceal(out);
        if polled.kind == FrameKind::Silence {
            self.phase = Phase::Idle;
            self.talkspurt_pending = true;
        }
        polled
    }

    /// Plays the audio frame at the head, inserting or dropping a frame when the fill
    /// has left its window.
    fn play_audio(&mut self, out: &mut [i16]) -> Polled {
        let mut played = self.head_idx;
        self.decode_slot(played, out);
        let low = self.target_us + self.ptime_us / 2;
        let high = self.target_us + 3 * self.ptime_us / 2;
        let mut advance = true;
        // Whether the frame is quiet is asked only when the fill is out of its window
        // (adapting prefers quiet frames); most frames never pay for it.
        if self.just_inserted {
            self.just_inserted = false;
        } else if self.level_avg_us < low {
            self.adjust_wait += 1;
            let far = self.level_avg_us < low - self.ptime_us;
            if far || self.adjust_wait >= ADJUST_PATIENCE_FRAMES || is_quiet(out) {
                // Insert: play this frame now and again at the next tick.
                advance = false;
                self.just_inserted = true;
                self.level_avg_us += self.ptime_us;
                self.adjust_wait = 0;
                self.stats.frames_inserted += 1;
            }
        } else if self.level_avg_us > high && self.since_drop >= DROP_HOLDOFF_FRAMES {
            self.adjust_wait += 1;
            let far = self.level_avg_us > high + self.ptime_us;
            let next_idx = (self.head_idx + 1) % self.slots.len();
            let next = self.slots[next_idx];
            if next.filled
                && next.kind == SlotKind::Audio
                && (far || self.adjust_wait >= ADJUST_PATIENCE_FRAMES || is_quiet(out))
            {
                // Drop: skip this frame and play the next in its place.
                self.advance();
                played = self.head_idx;
                self.decode_slot(played, out);
                self.level_avg_us -= self.ptime_us;
                self.adjust_wait = 0;
                self.since_drop = 0;
                self.stats.frames_dropped += 1;
            }
        } else {
            self.adjust_wait = 0;
        }
        if advance {
            self.advance();
        }
        self.last_slot = played;
        self.last_frame_saved = false;
        self.last_frame_valid = true;
        self.conceal_run = 0;
        self.cn_amplitude = None;
        let talkspurt_start = self.talkspurt_pending;
        self.talkspurt_pending = false;
        Polled {
            kind: FrameKind::Audio,
            talkspurt_start,
        }
    }

    fn decode_slot(&self, idx: usize, out: &mut [i16]) {
        let n = self.frame_samples;
        g711::decode(self.cfg.codec, &self.payload[idx * n..(idx + 1) * n], out);
    }

    /// Consumes the head slot (if filled) and moves the head one frame on.
    fn advance(&mut self) {
        let slot = &mut self.slots[self.head_idx];
        if slot.filled {
            *slot = EMPTY_SLOT;
            self.stored -= 1;
        }
        self.head_idx = (self.head_idx + 1) % self.slots.len();
        self.head_ts = self.head_ts.add(self.frame_samples as u32);
    }

    /// Buffered frames from the head to the newest, inclusive.
    fn level_frames(&self) -> i64 {
        if self.stored == 0 {
            return 0;
        }
        let frame = i64::from(self.frame_samples as u32);
        (i64::from(self.newest_ts.delta(self.head_ts)) / frame + 1).max(0)
    }

    /// A faded repeat of the last audio frame, or silence once the budget is spent.
    fn conceal(&mut self, out: &mut [i16]) -> Polled {
        if !self.last_frame_valid || self.conceal_run >= self.cfg.conceal_frames {
            out.fill(0);
            return Polled {
                kind: FrameKind::Silence,
                talkspurt_start: false,
            };
        }
        // Gain ramps from 2^-run to 2^-(run+1) across the frame (Q15), so consecutive
        // concealed frames join without a step.
        if self.last_frame_saved {
            out.copy_from_slice(&self.last_frame);
        } else {
            self.decode_slot(self.last_slot, out);
        }
        let run = self.conceal_run.min(14);
        let g_start = (1i32 << 15) >> run;
        let g_end = g_start >> 1;
        let n = out.len() as i32;
        for (i, o) in out.iter_mut().enumerate() {
            let g = g_start - (g_start - g_end) * i as i32 / n;
            *o = ((i32::from(*o) * g) >> 15) as i16;
        }
        self.conceal_run += 1;
        self.stats.concealed_frames += 1;
        Polled {
            kind: FrameKind::Concealed,
            talkspurt_start: false,
        }
    }

    fn play_comfort_noise(&mut self, out: &mut [i16]) -> Polled {
        // Set by every caller just before; silence if not, rather than panic.
        let amplitude = self.cn_amplitude.unwrap_or(0);
        for o in out.iter_mut() {
            let r = i32::from((self.rng.next_u32() >> 16) as u16 as i16);
            *o = ((r * amplitude) >> 15).clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16;
        }
        self.stats.comfort_noise_frames += 1;
        Polled {
            kind: FrameKind::ComfortNoise,
            talkspurt_start: false,
        }
    }

    /// Output while not playing: comfort noise if it was active, else silence.
    fn fill_idle(&mut self, out: &mut [i16]) -> Polled {
        if self.cn_amplitude.is_some() {
            return self.play_comfort_noise(out);
        }
        out.fill(0);
        Polled {
            kind: FrameKind::Silence,
            talkspurt_start: false,
        }
    }
}

/// `now` in units of a `rate_hz` clock, wrapped to 32 bits: exactly
/// `floor(nanos * rate / 1e9) mod 2^32`, without 128-bit arithmetic (whole seconds and
/// the fraction are converted apart).
pub fn rtp_units(now: Instant, rate_hz: u32) -> u32 {
    let ns = now.as_nanos();
    let rate = u64::from(rate_hz);
    let whole = (ns / 1_000_000_000).wrapping_mul(rate);
    let frac = (ns % 1_000_000_000) * rate / 1_000_000_000;
    whole.wrapping_add(frac) as u32
}

/// Peak of uniform noise whose RMS is `level_dbov` below a full-scale square wave
/// (0 dBov = RMS 32768). Uniform noise on [-a, a] has RMS a / sqrt(3).
fn noise_amplitude(level_dbov: u8) -> i32 {
    let rms = 32_768.0f32 * 10f32.powf(-f32::from(level_dbov) / 20.0);
    (rms * 3f32.sqrt()).round() as i32
}

fn is_quiet(frame: &[i16]) -> bool {
    let sum: u32 = frame.iter().map(|s| u32::from(s.unsigned_abs())).sum();
    sum < QUIET_MEAN_ABS * frame.len() as u32
}

#[cfg(test)]
mod tests;
