//! An adaptive jitter buffer per input leg that is mixed (decoded at ticks).
//!
//! Packets go in as they arrive ([`JitterBuffer::handle_packet`]); linear PCM comes out
//! at each tick ([`JitterBuffer::poll`], any whole number of 10 ms units, or
//! [`JitterBuffer::poll_frame`], one frame of the leg's ptime). Forwarded paths bypass
//! the buffer entirely (SPEC section 5), so its delay is paid only by mixed listeners.
//! The buffer owns the leg's [`Decoder`]: it decodes what it plays, in order, so that
//! stateful codecs (G.722, Opus) see their stream as it was sent.
//!
//! ## Model
//! The buffer works on **timestamp ranges**, not packet counts. Storage is a ring of
//! `capacity_units` slots of one 10 ms *unit* each ([`UNIT_MS`]), allocated in
//! [`JitterBuffer::new`]; a packet's slots are chosen by its RTP timestamp relative to
//! the *head* (the unit due next), so reordering is free and a duplicate finds its
//! slots taken. A packet may carry any whole number of units from 10 to 60 ms, whatever
//! the leg's ptime, so a peer that changes its packetization mid-call, or packs several
//! frames into one packet, is simply played ([`crate::codec::payload_units`]). Fixed
//! rate codecs (G.711, G.722, L16) are cut into units on arrival; an Opus packet cannot
//! be cut, so it lives whole in its first unit's slot (the others are marked as covered
//! by it), is decoded whole when playout reaches it, and its PCM is played a unit at a
//! time from a staging buffer.
//!
//! - **Talk spurts.** The first packet after nothing (start, long loss, comfort-noise
//!   silence, or a marker bit on an empty buffer) anchors the head to its timestamp and
//!   waits the *target depth* before playout starts. This is also where the delay
//!   adapts freely: each spurt starts at the current target.
//! - **Target depth** = clamp(P + 4 x jitter, `min_depth_ms`, `max_depth_ms`), where P
//!   is the duration of the packets arriving (the leg's ptime until one arrives) and
//!   jitter is the RFC 3550 (A.8) interarrival estimate, computed here in our own code.
//!   It rises at once and decays by 1/64 of the gap per packet: grow fast, shrink slowly.
//! - **Fill control.** At each poll (T long) the buffered span from the head to the end
//!   of the newest packet (the *level*) is averaged (1/16 per poll). With a steady
//!   stream it sits at target + (P + T) / 2. When the average leaves that centre by more
//!   than max(P, T) / 2, one poll's worth of audio is inserted (the poll's output is
//!   played twice) or dropped (skipped), preferably on a quiet span (mean |x| below
//!   about -40 dBov) where the change is inaudible; a loud stream gets its adjustment
//!   after [`ADJUST_PATIENCE_FRAMES`] polls anyway, or at once when a whole packet off.
//!   Drops are rate limited to one per [`DROP_HOLDOFF_FRAMES`] polls. Adjusting by whole
//!   polls keeps packet and tick boundaries aligned when they were. This absorbs sender
//!   clock drift (+-1000 ppm is 20 ms every 20 s) and moves the depth to a new target
//!   within a spurt.
//! - **Loss.** A missing head unit with later units present is lost. Opus recovers it
//!   from the in-band FEC of the packet after it when that packet is buffered and the
//!   gap is exactly one of its frames, and otherwise conceals with libopus's PLC; the
//!   other codecs repeat the last unit played with a fade (gain halving every 20 ms).
//!   Either way for at most `conceal_ms`, then silence. A missing head unit with nothing
//!   buffered is an *underrun*: it is concealed the same way but the head waits (the
//!   stream grew late, so the depth grows by a unit). After `conceal_ms` the stream is
//!   considered stopped and the buffer goes idle until the next packet.
//! - **Comfort noise** (payload type 13, RFC 3389: first byte is the level in -dBov)
//!   plays seeded uniform noise at that level from its timestamp until audio resumes.
//!   A DTX gap after it is neither loss nor concealment.
//! - **Resync.** A new SSRC, or a packet far from the current timeline (sequence
//!   number more than 100 away, or timestamp beyond the ring either way), is held on
//!   probation as RFC 3550 A.1 does: it is dropped, and only a run of
//!   [`PROBATION_PACKETS`] (same SSRC, consecutive sequence numbers, each timestamp
//!   exactly the previous packet's duration on) starts a new timeline. So stray packets
//!   (a late one from a replaced SSRC, junk from the latched address) cannot flip the
//!   buffer, and a real restart costs two packets of audio. A newer sequence number
//!   whose timestamp lands just behind the head resyncs at once. The new timeline is
//!   mapped (by an offset added to every later timestamp) to follow the newest buffered
//!   unit, so playout carries straight on with no gap. When the buffer is idle or in
//!   comfort noise, any packet simply starts a talk spurt.
//!
//! Packets of payload types other than the codec's and comfort noise are the caller's
//! business: the engine filters RFC 4733 DTMF before the buffer. They are refused and
//! counted here. No allocation after [`JitterBuffer::new`].

use crate::codec::{self, Decoder, MAX_PACKET_UNITS, fade};
use crate::rng::SeedRng;
use crate::time::{Duration, Instant};
use crate::{Codec, PTIMES_MS, PayloadType, RtpTs, SeqNo, Ssrc, UNIT_MS};

/// Polls a needed fill adjustment waits for a quiet span before it is forced.
pub const ADJUST_PATIENCE_FRAMES: u32 = 25;
/// Minimum polls between two drops: shrinking is slow.
pub const DROP_HOLDOFF_FRAMES: u32 = 25;
/// A span whose mean absolute sample is below this is quiet enough to drop or repeat
/// (about -40 dBov).
const QUIET_MEAN_ABS: u32 = 330;
/// Sequence numbers further than this from the highest seen are a different timeline
/// until confirmed (RFC 3550 A.1's `MAX_MISORDER`).
const MAX_MISORDER: i32 = 100;

/// Packets in a row a new timeline must show before the buffer moves to it: RFC 3550
/// A.1's `MIN_SEQUENTIAL` (2), plus one, and with timestamps held to exact steps.
const PROBATION_PACKETS: u8 = 3;

/// Microseconds in one unit.
const UNIT_US: i64 = UNIT_MS as i64 * 1_000;

/// How far ahead of a lost unit the buffer looks for the packet whose FEC recovers it.
const FEC_LOOKAHEAD_UNITS: usize = MAX_PACKET_UNITS + 1;

/// Configuration of one jitter buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JitterConfig {
    /// The leg's codec. No default: it is negotiated.
    pub codec: Codec,
    /// Payload type of the codec's packets. Default: the codec's static type, else 96.
    pub payload_type: PayloadType,
    /// Payload type of comfort noise. Default 13, the static type of RFC 3389.
    pub cn_payload_type: PayloadType,
    /// The leg's negotiated packetisation (one of [`PTIMES_MS`]): the packet duration
    /// assumed until packets say otherwise, and the frame [`JitterBuffer::poll_frame`]
    /// writes. Packets of any duration from 10 to 60 ms are played. No default.
    pub ptime_ms: u32,
    /// Smallest target depth. Default 20 ms: one frame at the common ptime, enough for a
    /// LAN where arrival is nearly periodic, and little added delay for supervisors.
    pub min_depth_ms: u32,
    /// Largest target depth. Default 200 ms: beyond it a conversation suffers more from
    /// delay than from the occasional late-packet loss the extra depth would save.
    pub max_depth_ms: u32,
    /// 10 ms slots in the ring. Default 34: the max depth (200 ms) plus two of the
    /// longest packets (60 ms) of room for early and reordered packets.
    pub capacity_units: usize,
    /// Concealment before a loss turns to silence, in milliseconds (a multiple of 10).
    /// Default 60: longer repetition sounds robotic, shorter clicks.
    pub conceal_ms: u32,
    /// Seed of the comfort-noise generator. Default 0; the engine passes one per leg so
    /// simulations replay.
    pub noise_seed: u64,
}

impl JitterConfig {
    /// The documented defaults for `codec` at `ptime_ms`.
    pub fn new(codec: Codec, ptime_ms: u32) -> Self {
        JitterConfig {
            codec,
            payload_type: codec.static_payload_type().unwrap_or(PayloadType(96)),
            cn_payload_type: PayloadType::CN,
            ptime_ms,
            min_depth_ms: 20,
            max_depth_ms: 200,
            capacity_units: 34,
            conceal_ms: 60,
            noise_seed: 0,
        }
    }
}

/// Why a packet was not taken into the buffer. Each reason is counted in
/// [`JitterStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DropReason {
    /// Its audio was already played (or concealed).
    #[error("packet arrived after its audio was played")]
    TooLate,
    /// Its slots already hold that audio.
    #[error("duplicate packet")]
    Duplicate,
    /// Its timestamp lies beyond the ring while its sequence number is old, so it fits no
    /// timeline; or it would not fit the ring.
    #[error("packet beyond the buffer capacity")]
    Overflow,
    /// Audio that is not 10 to 60 ms in whole 10 ms units (or an Opus packet with a bad
    /// TOC or too large), or comfort noise without its level byte.
    #[error("payload length is not a playable duration")]
    BadPayloadLength,
    /// Neither the codec's payload type nor comfort noise (DTMF belongs to the caller).
    #[error("payload type not for the jitter buffer")]
    UnexpectedPayloadType,
    /// The first packet of a new SSRC or of a far-away timeline, held on probation: a
    /// run in sequence confirms the switch.
    #[error("packet on probation for a new timeline")]
    Probation,
}

/// What became of an accepted packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Stored in its slots.
    Stored,
    /// It starts a talk spurt: the buffer re-anchored on it and waits the target depth.
    TalkspurtStart,
    /// A new SSRC or a timestamp jump: remapped to continue the current playout.
    Resynced,
}

/// What [`JitterBuffer::poll`] wrote (for several units: the most audible of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FrameKind {
    /// Zeros: nothing received yet, or loss beyond concealment.
    Silence,
    /// Comfort noise at the level the sender asked for.
    ComfortNoise,
    /// A lost or late span, replaced by concealment (faded repeat, Opus PLC or FEC).
    Concealed,
    /// Received audio, decoded.
    Audio,
}

/// One poll's description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Polled {
    /// What the samples are.
    pub kind: FrameKind,
    /// True on the first audio after anything but audio or concealment: the output
    /// stream sets the RTP marker bit on it.
    pub talkspurt_start: bool,
}

/// Counters and estimates of one jitter buffer. Durations count 10 ms units of audio.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitterStats {
    /// RFC 3550 interarrival jitter estimate, microseconds.
    pub jitter_us: u64,
    /// Current target depth, microseconds.
    pub target_depth_us: u64,
    /// Buffered span from the head to the newest unit at the last poll, milliseconds.
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
    /// Audio never received and passed over (later audio was present), milliseconds.
    pub lost_ms: u64,
    /// Audio played as concealment (loss or underrun; FEC included), milliseconds.
    pub concealed_ms: u64,
    /// Of the lost audio, what Opus in-band FEC recovered, milliseconds.
    pub fec_ms: u64,
    /// Times the buffer ran empty while playing audio.
    pub underruns: u64,
    /// SSRC changes and timestamp jumps remapped.
    pub resyncs: u64,
    /// Talk spurts started (re-anchors).
    pub talkspurts: u64,
    /// Audio repeated to grow the fill, milliseconds.
    pub inserted_ms: u64,
    /// Audio skipped to shrink the fill, milliseconds.
    pub dropped_ms: u64,
    /// Comfort noise played, milliseconds.
    pub comfort_noise_ms: u64,
}

/// One 10 ms slot of the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Empty,
    /// The first (for fixed-rate codecs: the only) unit of a packet: `len` payload bytes
    /// at the slot's place in the payload area, covering `span` units.
    Audio {
        len: u16,
        span: u8,
    },
    /// A later unit of the Opus packet that starts in an earlier slot.
    Covered,
    /// Comfort noise from here on; the level byte is at the slot's place.
    Noise,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing to play until a packet arrives.
    Idle,
    /// A talk spurt's first packet arrived at `since`; playout starts at since + target.
    Buffering { since: Instant },
    /// The head advances (or waits) at every poll.
    Playing,
}

/// The last packet of a run held on probation, and the run's length.
#[derive(Clone, Copy, Debug)]
struct Probe {
    ssrc: Ssrc,
    seq: SeqNo,
    ts: RtpTs,
    units: u32,
    run: u8,
}

/// An adaptive jitter buffer for one input leg. See the module doc for the model.
#[derive(Debug)]
pub struct JitterBuffer {
    cfg: JitterConfig,
    decoder: Decoder,
    /// RTP timestamp units per 10 ms unit.
    unit_ts: u32,
    /// Payload bytes per slot.
    unit_bytes: usize,
    /// PCM samples per unit at the decoder's rate.
    pcm_unit: usize,
    /// The codec's RTP clock, hertz. Per-call constants like this one are computed once
    /// here: the packet and poll paths run per packet and per tick.
    clock_hz: u32,
    /// The codec has a fixed byte rate (everything but Opus): packets are cut into units.
    fixed_rate: bool,
    /// The decoder is stateless and nothing is staged (G.711, L16): whole runs of units
    /// decode in one call ([`JitterBuffer::play_run`]).
    run_decode: bool,
    /// What a slot holding one whole unit of a fixed-rate packet looks like.
    whole_slot: Slot,
    /// Units and PCM samples in one frame of the leg's ptime ([`JitterBuffer::poll_frame`]).
    frame_units: usize,
    frame_samples: usize,
    /// Duration of the packets arriving (the ptime until one arrives), microseconds.
    packet_us: i64,
    /// The same in units, and (fixed-rate codecs) in payload bytes: a packet of that
    /// length is known to be that many units without a division.
    packet_units: usize,
    packet_bytes: usize,
    slots: Vec<Slot>,
    /// `unit_bytes` per slot, plus room for an Opus packet starting in the last slot to
    /// run on past the end (its later units' own places stay free).
    payload: Vec<u8>,
    /// The decoded PCM of the Opus packet (or FEC) being played: `stage_units` units
    /// from internal timestamp `stage_ts`. Empty for the fixed-rate codecs.
    stage: Vec<i16>,
    stage_ts: RtpTs,
    stage_units: usize,
    /// The last unit played as audio, for concealment. Stateless codecs leave it in its
    /// slot (`last_slot`) until a packet overwrites that slot, and only then decode it
    /// here (`last_saved`): playing costs no copy. Stateful ones copy it as they play.
    last_unit: Vec<i16>,
    last_valid: bool,
    last_slot: usize,
    last_saved: bool,
    /// The previous poll's output, kept when it is to be played again (an insertion).
    replay: Vec<i16>,
    /// Samples in `replay` when an insertion is pending (0: none).
    replay_len: usize,
    phase: Phase,
    head_ts: RtpTs,
    head_idx: usize,
    /// Filled slots (covered ones included).
    stored: usize,
    /// Internal timestamp of the newest filled unit.
    newest_ts: RtpTs,
    ssrc: Option<Ssrc>,
    /// The last packet held on probation.
    probe: Option<Probe>,
    /// Added to every wire timestamp: the internal timeline survives SSRC changes and
    /// jumps.
    ts_offset: u32,
    highest_seq: SeqNo,
    /// RFC 3550 A.8 state: previous transit time (samples) and jitter in 1/16 samples.
    prev_transit: Option<u32>,
    jitter_q4: u32,
    /// `jitter_q4 >> 4` and the same in microseconds.
    jitter_cached: (u32, i64),
    target_us: i64,
    /// `target_us` is the clamped P + 4 x jitter for the current `jitter_cached.0` and
    /// `packet_us`, so recomputing it would change nothing (the steady state): the
    /// packet path then skips it. Cleared when either input moves.
    target_settled: bool,
    level_avg_us: i64,
    level_avg_valid: bool,
    adjust_wait: u32,
    since_drop: u32,
    /// The previous poll was an insertion: play normally next, so loud audio is never
    /// heard three times.
    just_inserted: bool,
    /// Concealed units in a row.
    conceal_run: u32,
    /// Comfort noise amplitude while comfort noise is active.
    cn_amplitude: Option<i32>,
    talkspurt_pending: bool,
    rng: SeedRng,
    stats: JitterStats,
    /// Tests: take only the general paths, to check that the fast ones change nothing.
    #[cfg(test)]
    general_paths_only: bool,
}

impl JitterBuffer {
    /// Forgets the stream: the next packet starts a new talk spurt on a fresh timeline,
    /// and the decoder starts afresh. The counters survive. For the engine to call when
    /// nobody mixes this input any more, since the buffer is then neither fed nor polled
    /// and its timeline goes stale. Control path: it reallocates the storage.
    pub fn reset(&mut self) {
        let decoder = std::mem::replace(&mut self.decoder, Decoder::g711(Codec::Pcmu));
        self.replace_decoder(decoder);
    }

    /// Resets the buffer (as [`JitterBuffer::reset`]) with another decoder for the same
    /// codec: an Opus leg whose session now mixes at another rate. Control path.
    ///
    /// Panics if the decoder's PCM rate does not suit the codec (a programmer error).
    pub fn replace_decoder(&mut self, mut decoder: Decoder) {
        decoder.reset();
        let stats = self.stats;
        *self = JitterBuffer::with_decoder(self.cfg, decoder);
        self.stats = stats;
    }

    /// Allocates all storage for `cfg`, decoding at the codec's own rate.
    ///
    /// Panics on an inconsistent config (see [`JitterBuffer::with_decoder`]) and for
    /// Opus, whose decoder the caller builds (libopus may be missing, and the rate is
    /// the session's): use [`JitterBuffer::with_decoder`].
    pub fn new(cfg: JitterConfig) -> Self {
        let decoder = Decoder::new(cfg.codec, cfg.codec.audio_rate())
            .expect("the fixed-rate codecs always have a decoder; Opus needs with_decoder");
        JitterBuffer::with_decoder(cfg, decoder)
    }

    /// Allocates all storage for `cfg`, playing through `decoder`.
    ///
    /// Panics on an inconsistent config (a programmer error: the control side validates
    /// ptime and codec): ptime not in [`PTIMES_MS`], `min_depth_ms > max_depth_ms`, a
    /// ring too small to hold the max depth plus two of the longest packets, a
    /// concealment budget that is not whole units, or a decoder for another codec.
    pub fn with_decoder(cfg: JitterConfig, decoder: Decoder) -> Self {
        assert!(
            PTIMES_MS.contains(&cfg.ptime_ms),
            "ptime {} ms unsupported",
            cfg.ptime_ms
        );
        assert!(
            cfg.min_depth_ms <= cfg.max_depth_ms,
            "min depth above max depth"
        );
        let longest_ms = (MAX_PACKET_UNITS as u32 * UNIT_MS).max(cfg.ptime_ms);
        assert!(
            cfg.capacity_units as u64 * u64::from(UNIT_MS)
                >= u64::from(cfg.max_depth_ms) + 2 * u64::from(longest_ms),
            "{} units cannot hold {} ms of depth and two packets of {longest_ms} ms",
            cfg.capacity_units,
            cfg.max_depth_ms,
        );
        assert!(
            cfg.conceal_ms.is_multiple_of(UNIT_MS),
            "concealment in whole units"
        );
        let matches = match (&decoder, cfg.codec) {
            (Decoder::G711(c, _), codec) => *c == codec,
            (Decoder::G722(_), Codec::G722) | (Decoder::Opus(_), Codec::Opus) => true,
            (Decoder::L16(r), Codec::L16(rate)) => *r == rate,
            _ => false,
        };
        assert!(matches, "a {:?} decoder for {:?}", decoder, cfg.codec);
        let unit_bytes = codec::unit_bytes(cfg.codec);
        let pcm_unit = decoder.pcm_rate().samples_in_ms(UNIT_MS);
        let stage_len = if decoder.conceals() {
            MAX_PACKET_UNITS * pcm_unit
        } else {
            0
        };
        let cap = cfg.capacity_units;
        JitterBuffer {
            unit_ts: cfg.codec.rtp_units_per_frame(UNIT_MS),
            unit_bytes,
            pcm_unit,
            clock_hz: cfg.codec.rtp_clock_hz(),
            fixed_rate: cfg.codec.payload_bytes_per_ms().is_some(),
            run_decode: stage_len == 0 && decoder.is_stateless(),
            whole_slot: Slot::Audio {
                len: unit_bytes as u16,
                span: 1,
            },
            frame_units: (cfg.ptime_ms / UNIT_MS) as usize,
            frame_samples: pcm_unit * (cfg.ptime_ms / UNIT_MS) as usize,
            packet_us: i64::from(cfg.ptime_ms) * 1_000,
            packet_units: (cfg.ptime_ms / UNIT_MS) as usize,
            packet_bytes: (cfg.ptime_ms / UNIT_MS) as usize * unit_bytes,
            slots: vec![Slot::Empty; cap],
            payload: vec![0; (cap + MAX_PACKET_UNITS - 1) * unit_bytes],
            stage: vec![0; stage_len],
            stage_ts: RtpTs(0),
            stage_units: 0,
            last_unit: vec![0; pcm_unit],
            last_valid: false,
            last_slot: 0,
            last_saved: false,
            replay: vec![0; MAX_PACKET_UNITS * pcm_unit],
            replay_len: 0,
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
            jitter_cached: (0, 0),
            target_settled: false,
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
            #[cfg(test)]
            general_paths_only: false,
            decoder,
            cfg,
        }
    }

    /// Hints that the next poll is coming: prefetches the ring slots and payload bytes
    /// of the frame at the head (what [`JitterBuffer::poll_frame`] reads first), for a
    /// caller that knows this buffer is polled soon and has other work meanwhile.
    #[inline]
    pub fn prefetch_head(&self) {
        use crate::dsp::prefetch::{LINE_BYTES, read};
        let (head, units) = (self.head_idx, self.frame_units);
        if let Some(slots) = self.slots.get(head..) {
            read(slots, 1);
        }
        if let Some(bytes) = self.payload.get(head * self.unit_bytes..) {
            read(bytes, (units * self.unit_bytes).div_ceil(LINE_BYTES) + 1);
        }
    }

    /// The configuration.
    pub fn config(&self) -> &JitterConfig {
        &self.cfg
    }

    /// The RTP clock of the codec, hertz (`config().codec.rtp_clock_hz()`, kept).
    #[inline]
    pub fn clock_hz(&self) -> u32 {
        self.clock_hz
    }

    /// The decoder it plays through.
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// PCM samples in one frame of the leg's ptime at the decoder's rate (what
    /// [`JitterBuffer::poll_frame`] writes).
    pub fn frame_samples(&self) -> usize {
        self.frame_samples
    }

    /// PCM samples in one 10 ms unit at the decoder's rate: [`JitterBuffer::poll`] takes
    /// whole multiples of it.
    pub fn unit_samples(&self) -> usize {
        self.pcm_unit
    }

    /// Counters and estimates.
    pub fn stats(&self) -> JitterStats {
        JitterStats {
            jitter_us: u64::from(self.jitter_q4 >> 4) * 1_000_000
                / u64::from(self.cfg.codec.rtp_clock_hz()),
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
        let arrival = rtp_units(now, self.clock_hz);
        self.handle_packet_at(now, arrival, ssrc, seq, ts, pt, marker, payload)
    }

    /// [`JitterBuffer::handle_packet`] with `now` also given on the codec's RTP clock:
    /// `arrival` is [`rtp_units`]`(now, codec.rtp_clock_hz())`, which the engine computes
    /// once per packet for its RTCP statistics as well.
    #[allow(clippy::too_many_arguments)] // The RTP header fields the buffer needs, unpacked.
    #[inline]
    pub fn handle_packet_at(
        &mut self,
        now: Instant,
        arrival: u32,
        ssrc: Ssrc,
        seq: SeqNo,
        ts: RtpTs,
        pt: PayloadType,
        marker: bool,
        payload: &[u8],
    ) -> Result<Accepted, DropReason> {
        debug_assert_eq!(arrival, rtp_units(now, self.clock_hz));
        if self.place_next(arrival, ssrc, seq, ts, pt, payload) {
            self.stats.accepted += 1;
            return Ok(Accepted::Stored);
        }
        self.handle_other(now, arrival, ssrc, seq, ts, pt, marker, payload)
    }

    /// Every packet but the common one of [`JitterBuffer::place_next`], counted.
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn handle_other(
        &mut self,
        now: Instant,
        arrival: u32,
        ssrc: Ssrc,
        seq: SeqNo,
        ts: RtpTs,
        pt: PayloadType,
        marker: bool,
        payload: &[u8],
    ) -> Result<Accepted, DropReason> {
        let result = self.place(now, arrival, ssrc, seq, ts, pt, marker, payload);
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

    /// Whether the fast paths run: always, except in the tests that check they change
    /// nothing.
    #[inline(always)]
    fn fast_paths(&self) -> bool {
        #[cfg(test)]
        return !self.general_paths_only;
        #[cfg(not(test))]
        true
    }

    /// The common case, decided in a few comparisons: a fixed-rate packet of the
    /// current SSRC with the next sequence number whose timestamp follows the newest
    /// buffered unit (a steady stream). It does what [`JitterBuffer::place`] does with
    /// such a packet (stored after the newest unit), without the talk-spurt, probation,
    /// resync and reorder cases; false (nothing done) for any other packet.
    #[inline(always)]
    fn place_next(
        &mut self,
        arrival: u32,
        ssrc: Ssrc,
        seq: SeqNo,
        ts: RtpTs,
        pt: PayloadType,
        payload: &[u8],
    ) -> bool {
        if !self.fast_paths() {
            return false;
        }
        // A packet as long as the last one (or the ptime) has as many units: no division.
        let units = self.packet_units;
        let internal = ts.add(self.ts_offset);
        if !self.fixed_rate
            || payload.len() != self.packet_bytes
            || pt != self.cfg.payload_type
            || self.stored == 0
            || self.ssrc != Some(ssrc)
            || seq != self.highest_seq.next()
            || internal != self.newest_ts.add(self.unit_ts)
        {
            return false;
        }
        // With audio buffered the newest unit is at or after the head, and no slot after
        // it is filled: the packet's slots are all free if they are in the ring.
        let ahead = internal.delta(self.head_ts);
        // Unsigned division (a positive `ahead`): cheaper than the signed one.
        let offset = (ahead as u32 / self.unit_ts) as usize;
        let cap = self.slots.len();
        if ahead <= 0 || offset as u32 * self.unit_ts != ahead as u32 || offset + units > cap {
            return false;
        }
        debug_assert!(self.has_room(offset, false, units));
        self.highest_seq = seq;
        self.update_jitter(arrival, internal);
        let ub = self.unit_bytes;
        // head_idx < cap and offset < cap.
        let mut first = self.head_idx + offset;
        if first >= cap {
            first -= cap;
        }
        let keeps_last =
            self.last_valid && !self.last_saved && (first..first + units).contains(&self.last_slot);
        if first + units > cap || keeps_last {
            // Wrapping around the ring, or over the unit concealment would repeat.
            self.store(offset, false, units, payload);
            return true;
        }
        // A 20 ms packet is two slots: two stores, where `fill` runs a loop.
        let whole = self.whole_slot;
        match &mut self.slots[first..first + units] {
            [a, b] => (*a, *b) = (whole, whole),
            run => run.fill(whole),
        }
        self.payload[first * ub..(first + units) * ub].copy_from_slice(payload);
        self.stored += units;
        self.newest_ts = internal.add((units - 1) as u32 * self.unit_ts);
        true
    }

    #[allow(clippy::too_many_arguments)]
    fn place(
        &mut self,
        now: Instant,
        arrival: u32,
        ssrc: Ssrc,
        seq: SeqNo,
        ts: RtpTs,
        pt: PayloadType,
        marker: bool,
        payload: &[u8],
    ) -> Result<Accepted, DropReason> {
        let (noise, units) = if pt == self.cfg.payload_type {
            let units = codec::payload_units(self.cfg.codec, payload)
                .map_err(|_| DropReason::BadPayloadLength)?;
            (false, units)
        } else if pt == self.cfg.cn_payload_type {
            if payload.is_empty() {
                return Err(DropReason::BadPayloadLength);
            }
            (true, 1)
        } else {
            return Err(DropReason::UnexpectedPayloadType);
        };

        let new_ssrc = self.ssrc != Some(ssrc);
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
            self.note_packet(noise, units);
            self.update_jitter(arrival, internal);
            self.store(0, noise, units, payload);
            return Ok(Accepted::TalkspurtStart);
        }

        let mut internal = ts.add(self.ts_offset);
        let mut offset = self.units_from_head(internal);
        let cap = self.slots.len() as i64;
        // A straggler (up to MAX_MISORDER behind the highest sequence number) is never a
        // new timeline, however late: it is played if it can be, else dropped as late.
        let straggler = !new_ssrc && (-MAX_MISORDER..=0).contains(&seq_delta);
        let far = seq_delta.abs() > MAX_MISORDER || offset < -cap || offset >= cap;
        let resync = if new_ssrc || far && !straggler {
            if !self.on_probation(ssrc, seq, ts, units as u32) {
                return Err(DropReason::Probation);
            }
            true
        } else {
            // A newer packet behind the head: the sender's timestamps stepped back.
            seq_delta > 0 && offset < 0
        };

        let mut accepted = Accepted::Stored;
        if resync {
            // A new timeline: continue right after the newest buffered unit, but never
            // further ahead than the target depth: units of the old timeline beyond it
            // go, so that no resync can leave the buffer holding more delay than it
            // wants (junk once stacked 600 ms this way).
            self.keep_units(self.target_units() + self.packet_units());
            let follow = if self.stored > 0 {
                self.newest_ts.add(self.unit_ts)
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
            offset = self.units_from_head(internal);
            accepted = Accepted::Resynced;
        } else if offset >= cap {
            // A straggler by sequence number whose timestamp lies beyond the ring: it fits
            // no timeline.
            return Err(DropReason::Overflow);
        } else if offset < 0 {
            // An old packet behind the head. Before playout starts it can still be
            // played: move the head back to it if the newest unit stays in the ring.
            let span = i64::from(self.newest_ts.delta(internal)) / i64::from(self.unit_ts);
            if !matches!(self.phase, Phase::Buffering { .. }) || span >= cap {
                self.update_jitter(arrival, internal);
                return Err(DropReason::TooLate);
            }
            let back = (-offset) as usize % self.slots.len();
            self.head_idx = (self.head_idx + self.slots.len() - back) % self.slots.len();
            self.head_ts = RtpTs(self.head_ts.0.wrapping_sub(back as u32 * self.unit_ts));
            offset = 0;
        } else if seq_delta > 0 {
            self.highest_seq = seq;
        }
        if offset < 0 || offset + units as i64 > cap {
            // A resync onto a ring full to its end, or a packet running past it.
            return Err(DropReason::Overflow);
        }
        let offset = offset as usize;
        if !self.has_room(offset, noise, units) {
            return Err(DropReason::Duplicate);
        }
        self.note_packet(noise, units);
        self.update_jitter(arrival, internal);
        self.store(offset, noise, units, payload);
        Ok(accepted)
    }

    /// Records an audio packet's duration: the target and the fill window follow what
    /// the peer sends, not what it negotiated.
    fn note_packet(&mut self, noise: bool, units: usize) {
        if !noise {
            let packet_us = units as i64 * UNIT_US;
            if packet_us != self.packet_us {
                self.target_settled = false;
            }
            self.packet_us = packet_us;
            self.packet_units = units;
            self.packet_bytes = units * self.unit_bytes;
        }
    }

    /// Whether a packet of `units` at `offset` can be stored: an Opus packet needs all
    /// its slots free; a fixed-rate packet needs one (it fills the gaps it finds).
    fn has_room(&self, offset: usize, noise: bool, units: usize) -> bool {
        let cap = self.slots.len();
        let free = |j: usize| self.slots[(self.head_idx + offset + j) % cap] == Slot::Empty;
        if noise {
            free(0)
        } else if self.fixed_rate {
            (0..units).any(free)
        } else {
            (0..units).all(free)
        }
    }

    /// Adds a packet to the run on probation; true when it completes a run of
    /// [`PROBATION_PACKETS`]: same SSRC, consecutive sequence numbers, and each
    /// timestamp exactly the previous packet's duration on. A real new stream shows that
    /// at once; junk from the latched address (garbage, a stray from a replaced SSRC)
    /// practically never does, so it cannot move the timeline (a moved timeline can
    /// leave the buffer holding seconds of delay).
    fn on_probation(&mut self, ssrc: Ssrc, seq: SeqNo, ts: RtpTs, units: u32) -> bool {
        let run = match self.probe {
            Some(p)
                if p.ssrc == ssrc
                    && seq == p.seq.next()
                    && ts.delta(p.ts) == (p.units * self.unit_ts) as i32 =>
            {
                p.run + 1
            }
            _ => 1,
        };
        self.probe = Some(Probe {
            ssrc,
            seq,
            ts,
            units,
            run,
        });
        run >= PROBATION_PACKETS
    }

    /// The target depth in whole units, rounded up.
    fn target_units(&self) -> usize {
        ((self.target_us + UNIT_US - 1) / UNIT_US).max(1) as usize
    }

    /// Units in the packets arriving.
    fn packet_units(&self) -> usize {
        (self.packet_us / UNIT_US).max(1) as usize
    }

    /// Drops every buffered unit `units` or more after the head (counted as overflow)
    /// and moves `newest_ts` back to the newest unit kept.
    fn keep_units(&mut self, units: usize) {
        let cap = self.slots.len();
        let mut newest = None;
        for i in 0..cap {
            let idx = (self.head_idx + i) % cap;
            if self.slots[idx] == Slot::Empty {
                continue;
            }
            if i < units {
                newest = Some(i);
            } else {
                self.slots[idx] = Slot::Empty;
                self.stored -= 1;
                self.stats.overflow_drops += 1;
            }
        }
        if let Some(i) = newest {
            self.newest_ts = self.head_ts.add(i as u32 * self.unit_ts);
        }
    }

    /// Units from the head to `internal`, rounded to the nearest unit.
    fn units_from_head(&self, internal: RtpTs) -> i64 {
        let unit = i64::from(self.unit_ts);
        let d = i64::from(internal.delta(self.head_ts));
        (d + unit / 2).div_euclid(unit)
    }

    /// Copies a packet into the slots from `offset` after the head on: cut into units
    /// for the fixed-rate codecs (filling only the empty ones), whole for Opus.
    fn store(&mut self, offset: usize, noise: bool, units: usize, payload: &[u8]) {
        let cap = self.slots.len();
        let ub = self.unit_bytes;
        // head_idx < cap and offset < cap (callers keep offset + units <= cap).
        let mut first = self.head_idx + offset;
        if first >= cap {
            first -= cap;
        }
        let was_empty = self.stored == 0;
        if noise {
            self.save_last_before_overwrite(first);
            self.slots[first] = Slot::Noise;
            // Only the level byte matters; spectral parameters are ignored.
            self.payload[first * ub] = payload[0] & 0x7f;
            self.stored += 1;
        } else if self.fixed_rate
            && self.fast_paths()
            && first + units <= cap
            && self.slots[first..first + units]
                .iter()
                .all(|s| *s == Slot::Empty)
            && (!self.last_valid
                || self.last_saved
                || !(first..first + units).contains(&self.last_slot))
        {
            // The common case in one copy: free slots in one run of the ring (no wrap),
            // none of them holding the unit concealment would repeat.
            let audio = Slot::Audio {
                len: ub as u16,
                span: 1,
            };
            self.slots[first..first + units].fill(audio);
            self.payload[first * ub..(first + units) * ub].copy_from_slice(&payload[..units * ub]);
            self.stored += units;
        } else if self.fixed_rate {
            for j in 0..units {
                let idx = (first + j) % cap;
                if self.slots[idx] != Slot::Empty {
                    continue;
                }
                self.save_last_before_overwrite(idx);
                self.slots[idx] = Slot::Audio {
                    len: ub as u16,
                    span: 1,
                };
                self.payload[idx * ub..(idx + 1) * ub]
                    .copy_from_slice(&payload[j * ub..(j + 1) * ub]);
                self.stored += 1;
            }
        } else {
            // Opus: `payload_units` bounded the length by `units * ub`, and the payload
            // area runs `MAX_PACKET_UNITS - 1` units past the last slot.
            self.slots[first] = Slot::Audio {
                len: payload.len() as u16,
                span: units as u8,
            };
            self.payload[first * ub..first * ub + payload.len()].copy_from_slice(payload);
            for j in 1..units {
                self.slots[(first + j) % cap] = Slot::Covered;
            }
            self.stored += units;
        }
        let last = self.head_ts.add((offset + units - 1) as u32 * self.unit_ts);
        if was_empty || last.delta(self.newest_ts) > 0 {
            self.newest_ts = last;
        }
    }

    /// The unit concealment would repeat is about to be overwritten: keep it.
    fn save_last_before_overwrite(&mut self, idx: usize) {
        if self.last_valid && !self.last_saved && idx == self.last_slot {
            let ub = self.unit_bytes;
            let pu = self.pcm_unit;
            let (bytes, last) = (&self.payload[idx * ub..(idx + 1) * ub], &mut self.last_unit);
            self.decoder.decode(bytes, last, pu);
            self.last_saved = true;
        }
    }

    /// Empties the ring and anchors the head on a spurt's first packet.
    fn start_talkspurt(&mut self, now: Instant, internal: RtpTs) {
        self.clear_slots();
        self.head_ts = internal;
        self.head_idx = 0;
        self.newest_ts = internal;
        self.stage_units = 0;
        self.replay_len = 0;
        self.phase = Phase::Buffering { since: now };
        self.talkspurt_pending = true;
        self.conceal_run = 0;
        self.level_avg_valid = false;
        self.stats.talkspurts += 1;
    }

    fn clear_slots(&mut self) {
        if self.stored > 0 {
            self.slots.fill(Slot::Empty);
            self.stored = 0;
        }
    }

    /// RFC 3550 A.8 interarrival jitter, in 1/16 sample units, and the target it implies.
    /// `arrival` is the packet's arrival in RTP units, wrapped to 32 bits as RFC 3550
    /// does too.
    fn update_jitter(&mut self, arrival: u32, internal: RtpTs) {
        let clock = self.clock_hz;
        let transit = arrival.wrapping_sub(internal.0);
        if let Some(prev) = self.prev_transit {
            // A delta over a second is a glitch the resync logic handles; cap its weight.
            let d = (transit.wrapping_sub(prev) as i32)
                .unsigned_abs()
                .min(clock);
            self.jitter_q4 = self.jitter_q4 + d - ((self.jitter_q4 + 8) >> 4);
        }
        self.prev_transit = Some(transit);

        // The estimate in microseconds, converted again only when it moved (a division).
        let jitter = self.jitter_q4 >> 4;
        if jitter != self.jitter_cached.0 {
            self.jitter_cached = (jitter, i64::from(jitter) * 1_000_000 / i64::from(clock));
            self.target_settled = false;
        }
        if self.target_settled {
            // Same inputs as when the target last reached them: it stays.
            return;
        }
        let jitter_us = self.jitter_cached.1;
        let raw = (self.packet_us + 4 * jitter_us).clamp(
            i64::from(self.cfg.min_depth_ms) * 1_000,
            i64::from(self.cfg.max_depth_ms) * 1_000,
        );
        // Grow at once, shrink by 1/64 of the gap per packet.
        self.target_us = if raw >= self.target_us {
            raw
        } else {
            self.target_us - (self.target_us - raw + 63) / 64
        };
        self.target_settled = self.target_us == raw;
    }

    /// Writes one frame of the leg's ptime ([`JitterBuffer::frame_samples`]) into the
    /// start of `out`: [`JitterBuffer::poll`] of that length.
    ///
    /// Panics if `out` is shorter than a frame (a programmer error).
    pub fn poll_frame(&mut self, now: Instant, out: &mut [i16]) -> Polled {
        let n = self.frame_samples;
        assert!(out.len() >= n, "output shorter than a frame");
        self.poll_units(now, &mut out[..n], self.frame_units)
    }

    /// Writes the audio due at the tick `now` into `out`, whose length is a whole number
    /// of units ([`JitterBuffer::unit_samples`]) up to 60 ms: the tick's span.
    ///
    /// Panics if `out` is not 1 to 6 whole units (a programmer error: the engine's
    /// ticks are whole multiples of 10 ms).
    pub fn poll(&mut self, now: Instant, out: &mut [i16]) -> Polled {
        let pu = self.pcm_unit;
        let units = out.len() / pu;
        assert!(
            out.len().is_multiple_of(pu) && (1..=MAX_PACKET_UNITS).contains(&units),
            "a poll is 1 to {MAX_PACKET_UNITS} whole units of {pu} samples, not {}",
            out.len()
        );
        self.poll_units(now, out, units)
    }

    /// [`JitterBuffer::poll`] of `units` units (`out.len()` is `units` whole units).
    #[inline(always)]
    fn poll_units(&mut self, now: Instant, out: &mut [i16], units: usize) -> Polled {
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

        let level_units = self.level_units();
        let level_us = level_units * UNIT_US;
        self.stats.level_ms = (level_units * i64::from(UNIT_MS)) as u32;
        if self.level_avg_valid {
            self.level_avg_us += (level_us - self.level_avg_us) / 16;
        } else {
            self.level_avg_us = level_us;
            self.level_avg_valid = true;
        }
        self.since_drop = self.since_drop.saturating_add(1);

        if std::mem::take(&mut self.replay_len) == out.len() {
            // An insertion: the previous poll's audio again, the head unmoved.
            out.copy_from_slice(&self.replay[..out.len()]);
            self.stats.inserted_ms += units as u64 * u64::from(UNIT_MS);
            return Polled {
                kind: FrameKind::Audio,
                talkspurt_start: false,
            };
        }
        if let Some(mut polled) = self.play_run(out, units) {
            // Played as audio from the head on: the fill may be adjusted.
            self.adjust_fill(out, units, &mut polled);
            return polled;
        }
        let starts_with_audio = self.audio_at(0);
        let mut polled = self.play_units(out);
        if starts_with_audio && polled.kind == FrameKind::Audio {
            self.adjust_fill(out, units, &mut polled);
        }
        polled
    }

    /// Plays one poll's units into `out`.
    fn play(&mut self, out: &mut [i16]) -> Polled {
        match self.play_run(out, out.len() / self.pcm_unit) {
            Some(polled) => polled,
            None => self.play_units(out),
        }
    }

    /// Plays one poll's units into `out`, unit by unit (every case but the common one
    /// of [`JitterBuffer::play_run`]).
    #[inline(never)]
    fn play_units(&mut self, out: &mut [i16]) -> Polled {
        let mut polled = Polled {
            kind: FrameKind::Silence,
            talkspurt_start: false,
        };
        let pu = self.pcm_unit;
        for i in 0..out.len() / pu {
            if self.phase == Phase::Idle {
                // The stream stopped inside this poll (concealment ran out).
                out[i * pu..].fill(0);
                break;
            }
            let kind = self.play_unit(&mut out[i * pu..(i + 1) * pu]);
            if kind == FrameKind::Audio && self.talkspurt_pending {
                self.talkspurt_pending = false;
                polled.talkspurt_start = true;
            }
            polled.kind = polled.kind.max(kind);
        }
        polled
    }

    /// The common case of the stateless codecs (G.711, L16), in one decode call: every
    /// unit of the poll is a whole buffered unit and they lie in one run of the ring
    /// (no wrap). The result is what [`JitterBuffer::play_unit`] gives unit by unit;
    /// `None` (nothing done) otherwise. It keeps a plain PCMU barge period as cheap as
    /// the one-frame buffer it replaced (perf/callgrind.sh barge-tick).
    #[inline(always)]
    fn play_run(&mut self, out: &mut [i16], units: usize) -> Option<Polled> {
        if !self.fast_paths() {
            return None;
        }
        let (head, ub) = (self.head_idx, self.unit_bytes);
        // A stateless decoder means a fixed-rate codec, whose slots hold single units.
        let whole = self.whole_slot;
        if !self.run_decode || self.phase == Phase::Idle || head + units > self.slots.len() {
            return None;
        }
        // A 20 ms frame is two slots: two comparisons, without a loop.
        let all_whole = match &self.slots[head..head + units] {
            [a, b] => *a == whole && *b == whole,
            run => run.iter().all(|s| *s == whole),
        };
        if !all_whole {
            return None;
        }
        self.decoder.decode(
            &self.payload[head * ub..(head + units) * ub],
            out,
            out.len(),
        );
        self.last_slot = head + units - 1;
        self.last_saved = false;
        self.played_audio();
        // A 20 ms frame is two slots: two stores, where `fill` calls memset.
        match &mut self.slots[head..head + units] {
            [a, b] => (*a, *b) = (Slot::Empty, Slot::Empty),
            run => run.fill(Slot::Empty),
        }
        self.stored -= units;
        // head + units <= len (checked above).
        self.head_idx = if head + units == self.slots.len() {
            0
        } else {
            head + units
        };
        self.head_ts = self.head_ts.add(units as u32 * self.unit_ts);
        Some(Polled {
            kind: FrameKind::Audio,
            talkspurt_start: std::mem::take(&mut self.talkspurt_pending),
        })
    }

    /// Inserts or drops one poll's worth when the fill has left its window around
    /// target + (P + T) / 2, with `out` the poll just played (to judge quietness).
    /// The common case (inside the window) is decided here, inline.
    #[inline]
    fn adjust_fill(&mut self, out: &mut [i16], units: usize, polled: &mut Polled) {
        let poll_us = units as i64 * UNIT_US;
        // Both durations are positive: halving is a shift.
        let centre = self.target_us + ((self.packet_us + poll_us) >> 1);
        let half = self.packet_us.max(poll_us) >> 1;
        if !self.fast_paths() {
            return self.adjust_fill_outside(out, units, polled);
        }
        if !self.just_inserted
            && self.level_avg_us >= centre - half
            && self.level_avg_us <= centre + half
        {
            self.adjust_wait = 0;
            return;
        }
        self.adjust_fill_outside(out, units, polled);
    }

    /// [`JitterBuffer::adjust_fill`] when the fill is outside its window (or the
    /// previous poll was an insertion).
    #[inline(never)]
    fn adjust_fill_outside(&mut self, out: &mut [i16], units: usize, polled: &mut Polled) {
        let poll_us = units as i64 * UNIT_US;
        let centre = self.target_us + (self.packet_us + poll_us) / 2;
        let half = self.packet_us.max(poll_us) / 2;
        let (low, high) = (centre - half, centre + half);
        // Whether the audio is quiet is asked only when the fill is out of its window
        // (adapting prefers quiet spans); most polls never pay for it.
        if self.just_inserted {
            self.just_inserted = false;
        } else if self.level_avg_us < low {
            self.adjust_wait += 1;
            let far = self.level_avg_us < low - 2 * half;
            if far || self.adjust_wait >= ADJUST_PATIENCE_FRAMES || is_quiet(out) {
                // Insert: this poll's audio plays again at the next poll.
                self.replay[..out.len()].copy_from_slice(out);
                self.replay_len = out.len();
                self.just_inserted = true;
                self.level_avg_us += poll_us;
                self.adjust_wait = 0;
            }
        } else if self.level_avg_us > high && self.since_drop >= DROP_HOLDOFF_FRAMES {
            self.adjust_wait += 1;
            let far = self.level_avg_us > high + 2 * half;
            if (0..units).all(|u| self.audio_at(u))
                && (far || self.adjust_wait >= ADJUST_PATIENCE_FRAMES || is_quiet(out))
            {
                // Drop: the next poll's audio plays in this one's place.
                let next = self.play(out);
                polled.talkspurt_start |= next.talkspurt_start;
                self.level_avg_us -= poll_us;
                self.adjust_wait = 0;
                self.since_drop = 0;
                self.stats.dropped_ms += units as u64 * u64::from(UNIT_MS);
            }
        } else {
            self.adjust_wait = 0;
        }
    }

    /// True when the unit `ahead` units after the head holds audio to play (a packet's
    /// unit, or one the stage covers).
    fn audio_at(&self, ahead: usize) -> bool {
        let idx = (self.head_idx + ahead) % self.slots.len();
        match self.slots[idx] {
            Slot::Audio { .. } => true,
            Slot::Covered | Slot::Empty => {
                self.staged_unit(self.head_ts.add(ahead as u32 * self.unit_ts))
                    .is_some()
                    || self.slots[idx] == Slot::Covered
            }
            Slot::Noise => false,
        }
    }

    /// The index in the stage of the unit at internal timestamp `ts`, if staged.
    fn staged_unit(&self, ts: RtpTs) -> Option<usize> {
        let d = ts.delta(self.stage_ts);
        let unit = self.unit_ts as i32;
        (d >= 0 && d % unit == 0 && ((d / unit) as usize) < self.stage_units)
            .then_some((d / unit) as usize)
    }

    /// Plays the unit at the head into `out` (one unit) and says what it was.
    fn play_unit(&mut self, out: &mut [i16]) -> FrameKind {
        let slot = self.slots[self.head_idx];
        match slot {
            Slot::Audio { len, span } => {
                let ub = self.unit_bytes;
                let start = self.head_idx * ub;
                if self.stage.is_empty() {
                    let pu = self.pcm_unit;
                    self.decoder
                        .decode(&self.payload[start..start + usize::from(len)], out, pu);
                    if self.decoder.is_stateless() {
                        self.last_slot = self.head_idx;
                        self.last_saved = false;
                    } else {
                        self.last_unit.copy_from_slice(out);
                        self.last_saved = true;
                    }
                } else {
                    let n = usize::from(span) * self.pcm_unit;
                    let bytes = &self.payload[start..start + usize::from(len)];
                    self.decoder.decode(bytes, &mut self.stage[..n], n);
                    self.stage_ts = self.head_ts;
                    self.stage_units = usize::from(span);
                    out.copy_from_slice(&self.stage[..self.pcm_unit]);
                }
                self.played_audio();
                self.advance();
                FrameKind::Audio
            }
            Slot::Noise => {
                let level_dbov = self.payload[self.head_idx * self.unit_bytes];
                self.cn_amplitude = Some(noise_amplitude(level_dbov));
                self.advance();
                self.talkspurt_pending = true;
                self.play_comfort_noise(out)
            }
            Slot::Covered | Slot::Empty => {
                if let Some(u) = self.staged_unit(self.head_ts) {
                    let pu = self.pcm_unit;
                    out.copy_from_slice(&self.stage[u * pu..(u + 1) * pu]);
                    if slot == Slot::Empty {
                        // A unit recovered from FEC: lost, then concealed by recovery.
                        self.stats.lost_ms += u64::from(UNIT_MS);
                        self.stats.concealed_ms += u64::from(UNIT_MS);
                        self.stats.fec_ms += u64::from(UNIT_MS);
                        self.advance();
                        return FrameKind::Concealed;
                    }
                    self.played_audio();
                    self.advance();
                    return FrameKind::Audio;
                }
                self.play_missing(out)
            }
        }
    }

    /// Bookkeeping of a unit played as audio.
    fn played_audio(&mut self) {
        self.last_valid = true;
        self.conceal_run = 0;
        self.cn_amplitude = None;
    }

    /// The head unit is missing: a DTX gap, a loss or an underrun.
    fn play_missing(&mut self, out: &mut [i16]) -> FrameKind {
        if self.cn_amplitude.is_some() {
            // A DTX gap: not a loss. Let time pass only if something is waiting.
            if self.stored > 0 {
                self.advance();
            }
            return self.play_comfort_noise(out);
        }
        if self.stored > 0 {
            self.stats.lost_ms += u64::from(UNIT_MS);
            if self.recover_from_fec() {
                // The stage now holds the lost frame: play its first unit.
                let pu = self.pcm_unit;
                out.copy_from_slice(&self.stage[..pu]);
                self.stats.concealed_ms += u64::from(UNIT_MS);
                self.stats.fec_ms += u64::from(UNIT_MS);
                self.conceal_run = 0;
                self.advance();
                return FrameKind::Concealed;
            }
            self.advance();
            return self.conceal(out);
        }
        // Underrun: wait for the late audio while concealing; give up after the
        // concealment budget.
        if self.conceal_run == 0 && self.last_valid {
            self.stats.underruns += 1;
        }
        let kind = self.conceal(out);
        if kind == FrameKind::Silence {
            self.phase = Phase::Idle;
            self.talkspurt_pending = true;
        }
        kind
    }

    /// Opus: when the packet after the lost span is buffered and the span from the head
    /// to it is exactly one of its frames, decodes that frame from the packet's in-band
    /// FEC into the stage (from the head on). True when it did.
    fn recover_from_fec(&mut self) -> bool {
        if !self.decoder.conceals() {
            return false;
        }
        let cap = self.slots.len();
        // The first filled slot after the head must start a packet.
        let found = (1..FEC_LOOKAHEAD_UNITS.min(cap)).find_map(|ahead| {
            let idx = (self.head_idx + ahead) % cap;
            match self.slots[idx] {
                Slot::Empty => None,
                Slot::Audio { len, .. } => Some(Some((ahead, idx, usize::from(len)))),
                Slot::Covered | Slot::Noise => Some(None),
            }
        });
        let Some(Some((ahead, idx, len))) = found else {
            return false;
        };
        let start = idx * self.unit_bytes;
        let next = &self.payload[start..start + len];
        // FEC describes the frame before the packet's first: as long as one of its frames.
        let (Ok(frames), Ok(samples_48k)) = (
            earshot_opus::packet_frame_count(next),
            earshot_opus::packet_duration_samples(next),
        ) else {
            return false;
        };
        let frame_units = samples_48k as usize / frames.max(1) as usize / self.unit_ts as usize;
        if frame_units != ahead || frames == 0 {
            return false;
        }
        let n = ahead * self.pcm_unit;
        let (stage, payload) = (&mut self.stage, &self.payload);
        if !self
            .decoder
            .decode_fec(&payload[start..start + len], &mut stage[..n])
        {
            return false;
        }
        self.stage_ts = self.head_ts;
        self.stage_units = ahead;
        true
    }

    /// Consumes the head slot (if filled) and moves the head one unit on.
    fn advance(&mut self) {
        let slot = &mut self.slots[self.head_idx];
        if *slot != Slot::Empty {
            *slot = Slot::Empty;
            self.stored -= 1;
        }
        self.head_idx = (self.head_idx + 1) % self.slots.len();
        self.head_ts = self.head_ts.add(self.unit_ts);
    }

    /// Buffered units from the head to the newest, inclusive.
    fn level_units(&self) -> i64 {
        if self.stored == 0 {
            return 0;
        }
        let ahead = self.newest_ts.delta(self.head_ts);
        if ahead < 0 {
            return (i64::from(ahead) / i64::from(self.unit_ts) + 1).max(0);
        }
        // Unsigned division (`ahead` is positive): cheaper than the signed one.
        i64::from(ahead as u32 / self.unit_ts) + 1
    }

    /// Concealment of one unit: Opus PLC, or a faded repeat of the last unit; silence
    /// once the budget is spent.
    fn conceal(&mut self, out: &mut [i16]) -> FrameKind {
        if !self.last_valid || self.conceal_run >= self.cfg.conceal_ms / UNIT_MS {
            out.fill(0);
            return FrameKind::Silence;
        }
        if self.decoder.conceals() {
            if !self.decoder.conceal(out) {
                out.fill(0);
            }
        } else {
            if self.last_saved {
                out.copy_from_slice(&self.last_unit);
            } else {
                let (ub, pu) = (self.unit_bytes, self.pcm_unit);
                let start = self.last_slot * ub;
                self.decoder
                    .decode(&self.payload[start..start + ub], out, pu);
            }
            fade::apply(out, self.conceal_run as usize);
        }
        self.conceal_run += 1;
        self.stats.concealed_ms += u64::from(UNIT_MS);
        FrameKind::Concealed
    }

    fn play_comfort_noise(&mut self, out: &mut [i16]) -> FrameKind {
        // Set by every caller just before; silence if not, rather than panic.
        let amplitude = self.cn_amplitude.unwrap_or(0);
        for o in out.iter_mut() {
            let r = i32::from((self.rng.next_u32() >> 16) as u16 as i16);
            *o = ((r * amplitude) >> 15).clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16;
        }
        self.stats.comfort_noise_ms += u64::from(UNIT_MS);
        FrameKind::ComfortNoise
    }

    /// Output while not playing: comfort noise if it was active, else silence.
    fn fill_idle(&mut self, out: &mut [i16]) -> Polled {
        if self.cn_amplitude.is_some() {
            for unit in out.chunks_exact_mut(self.pcm_unit) {
                self.play_comfort_noise(unit);
            }
            return Polled {
                kind: FrameKind::ComfortNoise,
                talkspurt_start: false,
            };
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
