//! Listeners: the receiving half of each simulated phone, and tone detection.
//!
//! A listener keeps every RTP packet it receives (header fields, payload, when the engine
//! sent it and when it arrived) and can rebuild a jitter-free playout of the audio,
//! ordered by RTP timestamp, to measure tones with the Goertzel algorithm. Detection is
//! by energy relative to the known talker amplitude, never by sample equality: G.711,
//! mixing and concealment all change samples a little.

use earshot_media::codec::Decoder;
use earshot_media::time::{Duration, Instant};
use earshot_media::{Codec, SampleRate};

use earshot_testkit::rtp::Rtp;
pub use earshot_testkit::tone::{PRESENT_FRACTION, SILENT_FRACTION, ToneReport};
use earshot_testkit::tone::{TONE_AMPLITUDE, tone_amplitude};

/// Detection windows are 100 ms (10 Hz bins: every talker tone sits on a bin, so a
/// window sees no leakage from the others).
pub const WINDOW_MS: u32 = 100;

/// One received RTP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// When the engine sent it.
    pub sent_at: Instant,
    /// When it arrived here.
    pub at: Instant,
    /// SSRC.
    pub ssrc: u32,
    /// Sequence number.
    pub seq: u16,
    /// Timestamp.
    pub ts: u32,
    /// Marker bit.
    pub marker: bool,
    /// Payload type.
    pub pt: u8,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// The audio decoded at the listener's rate, in arrival order (empty for other
    /// payload types).
    pub pcm: Vec<i16>,
}

/// The receiving side of one endpoint.
#[derive(Debug)]
pub struct Listener {
    codec: Codec,
    audio_pt: u8,
    /// Decodes audio as it arrives (G.722 and Opus decoders keep history).
    decoder: Decoder,
    packets: Vec<Received>,
    rtcp: Vec<(Instant, Vec<u8>)>,
    /// Datagrams that were neither valid RTP nor valid RTCP.
    pub malformed: u64,
}

/// Rebuilt audio of one listener: samples placed by RTP timestamp.
#[derive(Debug, Clone)]
pub struct Playout {
    /// Virtual time of sample 0 (when the engine sent the first audio packet).
    pub start_at: Instant,
    /// Linear samples (zero where nothing arrived), at `rate`.
    pub samples: Vec<i16>,
    /// The sample rate of `samples`: the codec's audio rate.
    pub rate: SampleRate,
    /// Whether a packet covered each sample.
    pub covered: Vec<bool>,
}

impl Listener {
    /// A listener expecting `codec` audio on `audio_pt`.
    pub fn new(codec: Codec, audio_pt: u8) -> Listener {
        Listener {
            codec,
            audio_pt,
            decoder: Decoder::new(codec, codec.audio_rate())
                .expect("a listener's codec state (Opus needs libopus)"),
            packets: Vec::new(),
            rtcp: Vec::new(),
            malformed: 0,
        }
    }

    /// Takes one datagram sent by the engine at `sent_at`, arriving at `at`.
    /// RTCP (RFC 5761 demultiplexing: legs are rtcp-mux) is kept apart.
    pub fn handle_datagram(&mut self, sent_at: Instant, at: Instant, bytes: &[u8]) {
        if earshot_media::wire::is_rtcp(bytes) {
            if earshot_media::wire::rtcp::packets(bytes).all(|p| p.is_ok()) {
                self.rtcp.push((sent_at, bytes.to_vec()));
            } else {
                self.malformed += 1;
            }
            return;
        }
        let Some(rtp) = Rtp::parse(bytes) else {
            self.malformed += 1;
            return;
        };
        let pcm = if rtp.payload_type == self.audio_pt {
            let mut pcm = vec![0i16; earshot_media::MAX_FRAME_SAMPLES * 2];
            let n = self.decoder.decode(&rtp.payload, &mut pcm, 0);
            pcm.truncate(n);
            pcm
        } else {
            Vec::new()
        };
        self.packets.push(Received {
            pcm,
            sent_at,
            at,
            ssrc: rtp.ssrc,
            seq: rtp.seq,
            ts: rtp.ts,
            marker: rtp.marker,
            pt: rtp.payload_type,
            payload: rtp.payload,
        });
    }

    /// Every packet received, in arrival order.
    pub fn packets(&self) -> &[Received] {
        &self.packets
    }

    /// Every valid RTCP compound packet received, with its send time.
    pub fn rtcp(&self) -> &[(Instant, Vec<u8>)] {
        &self.rtcp
    }

    /// Audio packets (the leg's audio payload type), in arrival order.
    pub fn audio(&self) -> impl Iterator<Item = &Received> {
        let pt = self.audio_pt;
        self.packets.iter().filter(move |p| p.pt == pt)
    }

    /// Packets of payload type `pt`.
    pub fn with_pt(&self, pt: u8) -> impl Iterator<Item = &Received> {
        self.packets.iter().filter(move |p| p.pt == pt)
    }

    /// One audio packet's payload, decoded (as it arrived, in arrival order).
    pub fn decode(&self, p: &Received) -> Vec<i16> {
        p.pcm.clone()
    }

    /// The rate of the decoded audio.
    pub fn rate(&self) -> SampleRate {
        self.codec.audio_rate()
    }

    /// The amplitude of `hz` in one audio packet, as a fraction of the talkers'
    /// amplitude. Meaningful for 20 ms packets (50 Hz bins hold every talker tone).
    pub fn packet_tone(&self, p: &Received, hz: f64) -> f64 {
        tone_amplitude(&p.pcm, hz, f64::from(self.rate().hz())) / TONE_AMPLITUDE
    }

    /// Rebuilds the audio by RTP timestamp (the jitter-free playout a phone would
    /// produce with a large enough buffer). Timestamps are unwrapped relative to the
    /// first audio packet; anything before it is ignored.
    pub fn playout(&self) -> Playout {
        let mut audio = self.audio();
        let Some(first) = audio.next() else {
            return Playout {
                start_at: Instant::ZERO,
                samples: Vec::new(),
                rate: self.rate(),
                covered: Vec::new(),
            };
        };
        // PCM samples per RTP timestamp unit (G.722: two; the others one).
        let per_unit =
            i64::from(self.rate().hz() / self.codec.rtp_clock_hz().min(self.rate().hz()));
        let mut placed: Vec<(i64, Vec<i16>)> = vec![(0, self.decode(first))];
        let (mut last_ts, mut last_ext) = (first.ts, 0i64);
        for p in audio {
            // Unwrap against the previous packet: consecutive packets are far closer
            // than 2^31 samples.
            let ext = last_ext + i64::from(p.ts.wrapping_sub(last_ts) as i32);
            last_ts = p.ts;
            last_ext = ext;
            if ext >= 0 {
                placed.push((ext * per_unit, self.decode(p)));
            }
        }
        let len = placed
            .iter()
            .map(|(at, pcm)| *at as usize + pcm.len())
            .max()
            .unwrap_or(0);
        let mut samples = vec![0i16; len];
        let mut covered = vec![false; len];
        for (at, pcm) in placed {
            let at = at as usize;
            samples[at..at + pcm.len()].copy_from_slice(&pcm);
            covered[at..at + pcm.len()].fill(true);
        }
        Playout {
            start_at: first.sent_at,
            samples,
            rate: self.rate(),
            covered,
        }
    }

    /// Tone report over the 100 ms windows of the playout that lie in `[from, to)`.
    pub fn tone_report(&self, hz: f64, from: Instant, to: Instant) -> ToneReport {
        self.playout().tone_report(hz, from, to)
    }

    /// True when `hz` is present in at least 90% of the 100 ms windows in `[from, to)`
    /// (and there is at least one window): the kit's [`ToneReport::hears`].
    pub fn hears(&self, hz: f64, from: Instant, to: Instant) -> bool {
        self.tone_report(hz, from, to).hears()
    }

    /// True when `hz` is present in no 100 ms window in `[from, to)`.
    pub fn never_hears(&self, hz: f64, from: Instant, to: Instant) -> bool {
        self.tone_report(hz, from, to).never_hears()
    }
}

impl Playout {
    /// The sample index at virtual time `t` (clamped to the playout).
    pub fn index_at(&self, t: Instant) -> usize {
        let hz = u128::from(self.rate.hz());
        let n =
            (t.saturating_since(self.start_at).as_nanos() as u128 * hz / 1_000_000_000) as usize;
        n.min(self.samples.len())
    }

    /// Virtual time of sample `i`.
    pub fn time_of(&self, i: usize) -> Instant {
        self.start_at + Duration::from_nanos(i as u64 * 1_000_000_000 / u64::from(self.rate.hz()))
    }

    /// Measures `hz` in each 100 ms window in `[from, to)`.
    pub fn tone_report(&self, hz: f64, from: Instant, to: Instant) -> ToneReport {
        let (a, b) = (self.index_at(from), self.index_at(to));
        earshot_testkit::tone::tone_report(
            &self.samples[a..b.max(a)],
            hz,
            f64::from(self.rate.hz()),
            self.rate.samples_in_ms(WINDOW_MS),
            TONE_AMPLITUDE,
        )
    }
}
