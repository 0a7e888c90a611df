//! Talkers: simulated phones that send one RTP stream of a sine tone.
//!
//! Each talker has its own SSRC, sequence numbers and timestamps, a sample clock that may
//! run fast or slow (`drift_ppm`), and may interrupt its audio with RFC 4733 telephone
//! events the way phones do (event packets replace audio packets for the event's
//! duration, in the same sequence space). Tones are chosen with a whole number of
//! cycles per 20 ms frame so that a receiver can measure them per packet.

use earshot_media::codec::Encoder;
use earshot_media::time::{Duration, Instant};
use earshot_media::wire::dtmf::{DtmfEvent, DtmfPacket, DtmfRepr};
use earshot_media::wire::rtp::{CsrcList, RtpPacket, RtpRepr};
use earshot_media::{Codec, PayloadType, RtpTs, SeqNo, Ssrc};
use earshot_opus::OpusSettings;
use earshot_testkit::tone::Tone;

/// Peak amplitude of every talker's tone: the kit's, a quarter of full scale.
pub use earshot_testkit::tone::TONE_AMPLITUDE;

/// The tone of a customer.
pub const CUSTOMER_HZ: f64 = 500.0;
/// The tone of an agent.
pub const AGENT_HZ: f64 = 900.0;
/// The tone of a supervisor.
pub const SUPERVISOR_HZ: f64 = 1400.0;
/// The tone of a specialist.
pub const SPECIALIST_HZ: f64 = 2100.0;
/// The default frequency of the one-frame beacons a talker can insert to mark moments
/// in its stream (delay probes). Like every tone here, a multiple of 50 Hz.
pub const BEACON_HZ: f64 = 2700.0;

/// What a talker sends.
#[derive(Debug, Clone)]
pub struct TalkerConfig {
    /// Tone frequency in Hz.
    pub tone_hz: f64,
    /// Codec of the leg.
    pub codec: Codec,
    /// Audio payload type.
    pub payload_type: u8,
    /// Frame length: the ptime the leg is configured with.
    pub ptime_ms: u32,
    /// Duration of the packets actually sent, when it differs from `ptime_ms` (a peer
    /// that packs several frames per packet, or ignores the negotiated ptime); 10 to 60
    /// ms. `None`: `ptime_ms`. [`Talker::set_packet_ms`] changes it mid-call.
    pub packet_ms: Option<u32>,
    /// Telephone-event payload type, if negotiated.
    pub telephone_event_pt: Option<u8>,
    /// Sample-clock error in parts per million (positive: the phone runs fast).
    pub drift_ppm: f64,
    /// Insert one beacon frame every this many frames (0: never).
    pub beacon_every_frames: u64,
    /// Frequency of this talker's beacon frames: distinct per talker so that a listener
    /// hearing several can tell whose beacon it measures.
    pub beacon_hz: f64,
}

impl TalkerConfig {
    /// A PCMU, 20 ms talker of `tone_hz` with telephone events on PT 101 and no drift.
    pub fn tone(tone_hz: f64) -> TalkerConfig {
        TalkerConfig {
            tone_hz,
            codec: Codec::Pcmu,
            payload_type: 0,
            ptime_ms: 20,
            packet_ms: None,
            telephone_event_pt: Some(101),
            drift_ppm: 0.0,
            beacon_every_frames: 0,
            beacon_hz: BEACON_HZ,
        }
    }
}

/// One telephone event a talker will send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfPlan {
    /// Frame index (of the talker's own stream) at which the event starts.
    pub start_frame: u64,
    /// Frames the key is held.
    pub frames: u64,
    /// The event.
    pub event: DtmfEvent,
}

/// A telephone-event packet a talker sent, for checking what receivers get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentEvent {
    /// Event code.
    pub code: u8,
    /// The E bit.
    pub end: bool,
    /// Duration field in timestamp units.
    pub duration: u16,
}

/// A simulated phone sending one RTP stream.
#[derive(Debug)]
pub struct Talker {
    cfg: TalkerConfig,
    ssrc: Ssrc,
    seq: SeqNo,
    ts0: RtpTs,
    start: Instant,
    frame: u64,
    /// Where the current packet duration took over: its first frame index, and that
    /// frame's offset in the stream in RTP timestamp units (timestamps and tone phase
    /// count them; the PCM runs at the codec's audio rate, twice the clock for G.722).
    base_frame: u64,
    base_sample: u64,
    /// Nanoseconds of virtual time per frame on this talker's (drifting) clock.
    frame_ns: f64,
    dtmf: Vec<DtmfPlan>,
    /// Send times of beacon frames.
    beacons: Vec<Instant>,
    /// Every event packet sent.
    events_sent: Vec<SentEvent>,
    /// Audio packets sent.
    audio_sent: u64,
    active: bool,
    /// The codec's encoder (G.711 and L16 stateless; G.722 and Opus keep history).
    encoder: Encoder,
}

impl Talker {
    /// A talker whose first frame leaves at `start`; `ssrc`, `seq0` and `ts0` are the
    /// stream's random initial values (drawn by the caller from the seeded RNG).
    pub fn new(cfg: TalkerConfig, start: Instant, ssrc: u32, seq0: u16, ts0: u32) -> Talker {
        let packet_ms = cfg.packet_ms.unwrap_or(cfg.ptime_ms);
        let frame_ns = f64::from(packet_ms) * 1e6 / (1.0 + cfg.drift_ppm * 1e-6);
        Talker {
            ssrc: Ssrc(ssrc),
            seq: SeqNo(seq0),
            ts0: RtpTs(ts0),
            start,
            frame: 0,
            base_frame: 0,
            base_sample: 0,
            frame_ns,
            dtmf: Vec::new(),
            beacons: Vec::new(),
            events_sent: Vec::new(),
            audio_sent: 0,
            active: true,
            encoder: Encoder::new(cfg.codec, OpusSettings::default())
                .expect("a talker's codec state (Opus needs libopus)"),
            cfg,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &TalkerConfig {
        &self.cfg
    }

    /// The stream's SSRC.
    pub fn ssrc(&self) -> u32 {
        self.ssrc.0
    }

    /// The sequence number of the next packet.
    pub fn next_seq(&self) -> u16 {
        self.seq.0
    }

    /// Schedules a telephone event.
    pub fn add_dtmf(&mut self, plan: DtmfPlan) {
        assert!(plan.frames >= 1, "a key is held at least one frame");
        self.dtmf.push(plan);
    }

    /// From the next packet on, sends packets of `packet_ms` (10 to 60), continuing the
    /// stream's timestamps, timing and tone without a gap: a peer changing its
    /// packetization mid-call. Frame indices (DTMF plans, beacons) count packets.
    pub fn set_packet_ms(&mut self, packet_ms: u32) {
        let next_at = self.next_send_at();
        self.base_sample = self.sample_of(self.frame);
        self.base_frame = self.frame;
        self.start = next_at;
        self.cfg.packet_ms = Some(packet_ms);
        self.frame_ns = f64::from(packet_ms) * 1e6 / (1.0 + self.cfg.drift_ppm * 1e-6);
    }

    /// RTP timestamp units per packet sent now.
    fn packet_samples(&self) -> u64 {
        let ms = self.cfg.packet_ms.unwrap_or(self.cfg.ptime_ms);
        u64::from(self.cfg.codec.rtp_units_per_frame(ms))
    }

    /// The stream's sample offset at the start of packet `frame` (of the current
    /// packet duration's span; earlier frames are extrapolated back).
    fn sample_of(&self, frame: u64) -> u64 {
        let d = frame as i64 - self.base_frame as i64;
        (self.base_sample as i64 + d * self.packet_samples() as i64) as u64
    }

    /// Starts or stops sending (a muted or hung-up phone sends nothing).
    pub fn set_active(&mut self, active: bool) {
        self.active = active;
    }

    /// Send times of the beacon frames so far.
    pub fn beacons(&self) -> &[Instant] {
        &self.beacons
    }

    /// Every telephone-event packet sent so far.
    pub fn events_sent(&self) -> &[SentEvent] {
        &self.events_sent
    }

    /// Audio packets sent so far.
    pub fn audio_sent(&self) -> u64 {
        self.audio_sent
    }

    /// The frame index the talker is at, for scheduling events relative to now.
    pub fn frame_index(&self) -> u64 {
        self.frame
    }

    /// When the next frame leaves, on the virtual clock.
    pub fn next_send_at(&self) -> Instant {
        let k = (self.frame - self.base_frame) as f64;
        self.start + Duration::from_nanos((k * self.frame_ns).round() as u64)
    }

    /// Builds the packet of the current frame (or nothing when inactive) into `out`
    /// and moves to the next frame. Call at [`Talker::next_send_at`].
    pub fn emit(&mut self, now: Instant, out: &mut Vec<u8>) -> bool {
        out.clear();
        let k = self.frame;
        self.frame += 1;
        if !self.active {
            return false;
        }
        let samples = self.packet_samples() as usize;
        let (ts0, base_frame, base_sample) = (self.ts0, self.base_frame, self.base_sample);
        let ts_of = |frame: u64| {
            let d = frame as i64 - base_frame as i64;
            ts0.add((base_sample as i64 + d * samples as i64) as u32)
        };
        let plan = self
            .dtmf
            .iter()
            .copied()
            .find(|p| (p.start_frame..p.start_frame + p.frames + 2).contains(&k));
        if let Some(plan) = plan
            && let Some(te_pt) = self.cfg.telephone_event_pt
        {
            // The key is held `frames` frames; the final packet is sent three times
            // (RFC 4733 section 2.5.1.4), each with its own sequence number.
            let i = k - plan.start_frame;
            let end = i + 1 >= plan.frames;
            let duration =
                ((i.min(plan.frames - 1) + 1) * samples as u64).min(u64::from(u16::MAX)) as u16;
            let repr = DtmfRepr {
                event: plan.event,
                end,
                volume: 10,
                duration,
            };
            let mut payload = [0u8; 4];
            repr.emit(&mut DtmfPacket::new_unchecked(&mut payload[..]));
            self.events_sent.push(SentEvent {
                code: u8::from(plan.event),
                end,
                duration,
            });
            self.write_rtp(out, te_pt, i == 0, ts_of(plan.start_frame), &payload);
            return true;
        }
        let beacon = self.cfg.beacon_every_frames > 0
            && k > 0
            && k.is_multiple_of(self.cfg.beacon_every_frames);
        let hz = if beacon {
            self.cfg.beacon_hz
        } else {
            self.cfg.tone_hz
        };
        if beacon {
            self.beacons.push(now);
        }
        // The tone at the codec's audio rate, in phase with the RTP clock.
        let codec = self.cfg.codec;
        let rate = u64::from(codec.audio_rate().hz());
        let per_unit = rate / u64::from(codec.rtp_clock_hz()).min(rate);
        let pcm_len = samples * per_unit as usize;
        let mut pcm = [0i16; earshot_media::MAX_FRAME_SAMPLES];
        Tone::new(hz, TONE_AMPLITUDE, rate as f64)
            .fill(self.sample_of(k) * per_unit, &mut pcm[..pcm_len]);
        let mut payload = [0u8; 2 * earshot_media::MAX_FRAME_SAMPLES];
        let n = self.encoder.encode(&pcm[..pcm_len], &mut payload);
        self.audio_sent += 1;
        self.write_rtp(out, self.cfg.payload_type, k == 0, ts_of(k), &payload[..n]);
        true
    }

    fn write_rtp(&mut self, out: &mut Vec<u8>, pt: u8, marker: bool, ts: RtpTs, payload: &[u8]) {
        let repr = RtpRepr {
            marker,
            payload_type: PayloadType(pt),
            seq: self.seq,
            ts,
            ssrc: self.ssrc,
            csrcs: CsrcList::EMPTY,
            extension: None,
            payload,
            padding_len: 0,
        };
        out.resize(repr.buffer_len(), 0);
        repr.emit(&mut RtpPacket::new_unchecked(&mut out[..]));
        self.seq = self.seq.next();
    }
}
