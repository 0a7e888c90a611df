//! Legs: allocation on a port the caller bound, media configuration, removal.

use std::net::{IpAddr, SocketAddr};

use earshot_engine_api::{
    EngineError, IpFamily, LegId, LegResume, MediaConfig, Response, StreamBase,
};
use earshot_media::codec::{Decoder, Encoder};
use earshot_media::dsp::resample::Resampler;
use earshot_media::jitter::{JitterBuffer, JitterConfig};
use earshot_media::plan::LegSet;
use earshot_media::stream::OutputStream;
use earshot_media::time::Instant;
use earshot_media::wire::seq::{JitterEstimator, SeqTracker};
use earshot_media::{
    Codec, MAX_FRAME_SAMPLES, MAX_SESSION_LEGS, PayloadType, RtpTs, SampleRate, SeqNo, Ssrc,
    UNIT_MS,
};
use earshot_opus::OpusSettings;

use super::session::Session;
use super::srtp::LegSrtp;
use super::{NO_SLOT, ReleasedPort, Shard};

/// Mean interval between a leg's RTCP reports (RFC 3550 section 6.2's minimum of 5 s;
/// each interval is randomised over [0.5, 1.5] of it).
pub(super) const RTCP_INTERVAL: earshot_media::time::Duration =
    earshot_media::time::Duration::from_secs(5);

/// What a configured leg carries: its format, buffers and streams. Built on the control
/// path when the leg is configured.
///
/// Laid out in declaration order (`repr(C)`): what the packet path and the tick read
/// first (up to and including the jitter buffer: [`LegMedia::HOT_BYTES`], which the tick
/// wheel prefetches for the sessions due next), then what the control path, RTCP and
/// the rarer tick cases read.
#[derive(Debug)]
#[repr(C)]
pub(super) struct LegMedia {
    /// SRTP/SRTCP sessions when the leg is encrypted; `None` for plain RTP.
    pub(super) srtp: Option<Box<LegSrtp>>,
    /// Decoded PCM to the mix rate, when the decoder runs at another rate.
    pub(super) in_rs: Option<Box<Resampler>>,
    /// The mix to the encoder's rate, when the encoder runs at another rate.
    pub(super) out_rs: Option<Box<Resampler>>,
    /// Samples in one frame of the leg's ptime at the jitter buffer's decoding rate.
    pub(super) frame_samples: usize,
    /// Samples in one frame of the leg's ptime at the mix rate (what a listener's
    /// ticks accumulate before one frame is encoded).
    pub(super) mix_frame_samples: usize,
    pub(super) in_len: usize,
    pub(super) out_len: usize,
    /// Payload octets sent, for the sender report.
    pub(super) octets_sent: u32,
    pub(super) packets_sent: u32,
    pub(super) payload_type: u8,
    pub(super) te_pt: Option<u8>,
    pub(super) rtcp_mux: bool,
    pub(super) report_first_packet: bool,
    /// Whether this output sent a mixed frame at its previous tick (marker logic).
    pub(super) mixed_active: bool,
    /// Whether the jitter buffer is in use (some listener mixes this input): the
    /// session plan's `is_mixed_input` for this leg, kept here by
    /// [`Shard::rebuild_plan`] so that the packet path does not look the plan up.
    pub(super) jitter_live: bool,
    /// The listeners that forward this leg's packets: the session plan's
    /// `forward_targets` for this leg, kept here by [`Shard::rebuild_plan`] (the only
    /// place a plan is set) for the packet path.
    pub(super) forward_to: LegSet,
    /// The only source address the leg hears from, if any (`config.strict_source`,
    /// kept here for the packet path).
    pub(super) strict_source: Option<IpAddr>,
    pub(super) rx_ssrc: Option<Ssrc>,
    /// Reception statistics for RTCP report blocks (RFC 3550 A.1, A.3, A.8).
    pub(super) rx_seq: SeqTracker,
    pub(super) rx_jitter: JitterEstimator,
    pub(super) out: OutputStream,
    /// The leg's encoder; its PCM rate is the codec's own, or the mix rate for Opus.
    pub(super) encoder: Encoder,
    pub(super) jitter: JitterBuffer,
    // Cold from here on.
    pub(super) codec: Codec,
    pub(super) ptime_ms: u32,
    /// The rate of the session's mix as this leg was last set up for it.
    pub(super) mix_rate: SampleRate,
    /// While the leg hears nobody, send it silence at its ptime (the default) rather
    /// than nothing.
    pub(super) send_idle: bool,
    /// Linear PCM pulled from the jitter buffer, not yet consumed by ticks (`in_len`
    /// samples): two frames at the decoder's rate ([`LegMedia::fit_staging`]).
    pub(super) in_pcm: Box<[i16]>,
    /// Mixed PCM accumulated toward one output frame (`out_len` samples): one frame at
    /// the mix rate.
    pub(super) out_pcm: Box<[i16]>,
    /// Source timestamp of the telephone event being relayed, and its output timestamp.
    pub(super) dtmf_out_ts: Option<(RtpTs, RtpTs)>,
    /// Middle 32 bits of the NTP time of the last SR received, and when it arrived.
    pub(super) last_sr: Option<(u32, Instant)>,
    /// When this leg next sends RTCP.
    pub(super) next_rtcp: Instant,
    pub(super) config: MediaConfig,
}

impl LegMedia {
    /// Bytes from the start of a leg's media state that the packet path and the tick
    /// read (everything up to the cold part).
    pub(super) const HOT_BYTES: usize = std::mem::offset_of!(LegMedia, codec);
}

/// Where a mixed output's frame to send is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Frame {
    /// The tick's mix is the whole frame (ticks of one frame: the common case).
    Tick,
    /// Several ticks were staged in `out_pcm` and now make a whole frame.
    Staged,
}

impl LegMedia {
    /// Writes one tick of this input's PCM at the mix rate into `dst`, through the
    /// input resampler (with `scratch` holding the tick at the decoder's rate) when the
    /// decoder runs at another rate.
    #[inline]
    pub(super) fn pull_tick(&mut self, now: Instant, dst: &mut [i16], scratch: &mut [i16]) {
        // The common case (no resampler) only reads the option.
        if self.in_rs.is_none() {
            return self.pull_pcm(now, dst);
        }
        let Some(mut rs) = self.in_rs.take() else {
            return;
        };
        // Every rate is a whole number of samples per millisecond and ticks are whole
        // milliseconds, so the tick at the decoder's rate is exact and the resampler
        // writes exactly `dst.len()` samples.
        let n = dst.len() * rs.from_hz() as usize / rs.to_hz() as usize;
        let pcm = &mut scratch[..n];
        self.pull_pcm(now, pcm);
        rs.process(pcm, dst);
        self.in_rs = Some(rs); // A pointer moved out and back: no allocation.
    }

    /// Writes one tick of this input's PCM at the decoder's rate into `dst`: straight
    /// from the jitter buffer when a tick is a whole frame, else through `in_pcm`, which
    /// keeps what a frame longer than the tick leaves over for the next ticks.
    #[inline]
    fn pull_pcm(&mut self, now: Instant, dst: &mut [i16]) {
        let (tick, fs) = (dst.len(), self.frame_samples);
        if self.in_len == 0 && tick == fs {
            self.jitter.poll_frame(now, dst);
            return;
        }
        // in_len < tick <= frame before each poll, and in_pcm holds two longest frames.
        while self.in_len < tick {
            let staged = &mut self.in_pcm[self.in_len..self.in_len + fs];
            self.jitter.poll_frame(now, staged);
            self.in_len += fs;
        }
        dst.copy_from_slice(&self.in_pcm[..tick]);
        self.in_pcm.copy_within(tick..self.in_len, 0);
        self.in_len -= tick;
    }

    /// Takes one tick of this listener's mix; returns where the frame to send is once
    /// one is complete.
    pub(super) fn accumulate(&mut self, chunk: &[i16]) -> Option<Frame> {
        let (tick, fs) = (chunk.len(), self.mix_frame_samples);
        if self.out_len + tick > fs {
            self.out_len = 0; // ptime changed under us; restart the frame.
        }
        if self.out_len == 0 && tick == fs {
            return Some(Frame::Tick);
        }
        self.out_pcm[self.out_len..self.out_len + tick].copy_from_slice(chunk);
        self.out_len += tick;
        if self.out_len < fs {
            return None;
        }
        self.out_len = 0;
        Some(Frame::Staged)
    }
}

/// One participant's RTP stream each way, on its own local port.
///
/// Laid out in declaration order (`repr(C)`): the packet path's and the tick's fields
/// first (within the first cache line or two of the entry), the control path's after.
#[derive(Debug)]
#[repr(C)]
pub(super) struct Leg {
    pub(super) media: Option<Box<LegMedia>>,
    /// Where the leg sends: configured, or learned from the first valid packet.
    pub(super) remote: Option<SocketAddr>,
    pub(super) last_rx: Instant,
    /// Valid RTP packets received.
    pub(super) packets_in: u64,
    pub(super) id: LegId,
    pub(super) session: u32,
    pub(super) port: u16,
    /// Position in the session's leg list (the hear matrix index).
    pub(super) index: u8,
    /// The remote was learned from a packet (symmetric RTP); it stays locked across
    /// reconfigurations that do not name a remote.
    pub(super) latched: bool,
    pub(super) timed_out: bool,
    pub(super) first_packet_seen: bool,
    /// The leg holds a port pair (RTP and RTCP); otherwise one port, RTCP multiplexed.
    pub(super) paired: bool,
    pub(super) family: IpFamily,
    // Cold from here on.
    pub(super) key: String,
    /// The leg's own local address (a virtual address taken over from a failed node);
    /// `None`: the engine's.
    pub(super) local_ip: Option<IpAddr>,
    /// The outbound stream its first media configuration continues (failover).
    pub(super) resume_stream: Option<StreamBase>,
}

impl Leg {
    /// Bytes from the start of a leg that the packet path and the tick read.
    pub(super) const HOT_BYTES: usize = std::mem::offset_of!(Leg, key);
}

/// What [`Shard::allocate_leg`] is asked for (the fields of `ShardCommand::AllocateLeg`).
pub(super) struct NewLeg {
    pub(super) session: String,
    pub(super) leg_key: String,
    pub(super) family: IpFamily,
    pub(super) port: u16,
    pub(super) rtcp_mux: bool,
    pub(super) resume: Option<LegResume>,
}

impl Shard {
    /// Adds a leg on `port` (already bound by the caller). Idempotent on
    /// `(session, leg_key)`.
    pub(super) fn allocate_leg(
        &mut self,
        now: Instant,
        new: NewLeg,
    ) -> Result<Response, EngineError> {
        let NewLeg {
            session,
            leg_key,
            family,
            port,
            rtcp_mux,
            resume,
        } = new;
        let enabled = match family {
            IpFamily::V4 => self.cfg.local_v4.is_some(),
            IpFamily::V6 => self.cfg.local_v6.is_some(),
        };
        if !enabled {
            return Err(EngineError::InvalidArgument {
                field: "family".into(),
                message: format!("{family:?} is not enabled on this engine"),
            });
        }
        // Idempotent retry: the same (session, key) returns the existing leg.
        let existing_session = self.session_by_key.get(&session).copied();
        if let Some(s) = existing_session {
            let sess = self.session(s);
            if let Some(&slot) = sess.legs[..sess.len]
                .iter()
                .find(|&&slot| self.leg(slot).key == leg_key)
            {
                return Ok(Response::Leg(self.leg_info(slot)));
            }
            if sess.len == MAX_SESSION_LEGS {
                return Err(EngineError::ResourceExhausted(format!(
                    "a session holds at most {MAX_SESSION_LEGS} legs"
                )));
            }
        }
        self.check_port_free(port, rtcp_mux)?;
        let Some(slot) = self.free_legs.pop() else {
            return Err(EngineError::ResourceExhausted(
                "no free leg slot on this shard".into(),
            ));
        };
        let sess_slot = match existing_session {
            Some(s) => s,
            None => match self.free_sessions.pop() {
                Some(s) => {
                    self.sessions[s as usize] = Some(Session::new(&session, now));
                    self.session_by_key.insert(session, s);
                    s
                }
                None => {
                    self.free_legs.push(slot);
                    return Err(EngineError::ResourceExhausted(
                        "no free session slot on this shard".into(),
                    ));
                }
            },
        };
        let generation = self.generations[slot as usize];
        let id = LegId::new(self.cfg.index, slot, generation);
        let sess = self.session_mut(sess_slot);
        let index = sess.len;
        sess.legs[index] = slot;
        sess.len += 1;
        self.legs[slot as usize] = Some(Leg {
            id,
            key: leg_key,
            session: sess_slot,
            index: index as u8,
            port,
            family,
            remote: None,
            latched: false,
            media: None,
            last_rx: now,
            timed_out: false,
            first_packet_seen: false,
            packets_in: 0,
            paired: !rtcp_mux,
            local_ip: resume.and_then(|r| r.local_ip),
            resume_stream: resume.and_then(|r| r.stream),
        });
        let offset = usize::from(port - self.cfg.port_first);
        self.port_table[offset] = slot;
        if !rtcp_mux {
            self.port_table[offset + 1] = slot;
        }
        // The plan always covers every leg of the session (a new leg hears and is heard
        // by nobody until the next plan), so per-leg lookups never go out of range.
        self.rebuild_plan(now, sess_slot);
        Ok(Response::Leg(self.leg_info(slot)))
    }

    /// Refuses a port outside the range or already mapped (a caller bug: its pool and
    /// this table disagree), so the port table is never overwritten.
    fn check_port_free(&self, port: u16, rtcp_mux: bool) -> Result<(), EngineError> {
        let span = if rtcp_mux { 1 } else { 2 };
        let free = port
            .checked_sub(self.cfg.port_first)
            .map(usize::from)
            .filter(|&o| o + span <= self.port_table.len())
            .is_some_and(|o| self.port_table[o..o + span].iter().all(|&s| s == NO_SLOT));
        let even = rtcp_mux || port.is_multiple_of(2);
        if free && even {
            Ok(())
        } else {
            Err(EngineError::InvalidArgument {
                field: "port".into(),
                message: format!("port {port} is not a free port of shard {}", self.cfg.index),
            })
        }
    }

    pub(super) fn configure_leg(
        &mut self,
        now: Instant,
        id: LegId,
        media: MediaConfig,
    ) -> Result<Response, EngineError> {
        let slot = self.resolve(id)?;
        media.validate()?;
        if media.rtcp_mux == self.leg(slot).paired {
            return Err(EngineError::InvalidArgument {
                field: "rtcp_mux".into(),
                message: "must match the rtcp_mux the leg was allocated with".into(),
            });
        }
        let codec = media.codec;
        check_codec(codec)?;
        let mix_rate = self.session(self.leg(slot).session).mix_rate;
        let mut fresh = self.new_media(now, &media, codec, mix_rate)?;
        let leg = self.legs[slot as usize]
            .as_mut()
            .expect("resolved slot holds a leg");
        // A configured remote replaces whatever was there; without one, a remote already
        // learned stays locked: reconfiguring (a phone answering, a codec change) must not
        // reopen the leg to whoever sends first.
        match media.remote {
            Some(r) => {
                leg.remote = Some(r);
                leg.latched = false;
            }
            None if leg.latched => {}
            None => leg.remote = None,
        }
        leg.last_rx = now;
        leg.timed_out = false;
        // Reconfiguring keeps the output stream (and so its SSRC and sequence space) when
        // the format is unchanged, so that a retry or a remote change does not reset it.
        let keep = leg.media.as_ref().is_some_and(|m| {
            m.codec == codec
                && m.ptime_ms == media.ptime_ms
                && m.payload_type == media.payload_type
                && m.config.opus == media.opus
        });
        // SRTP state carries over whatever else changes: the remote keeps its SSRC and
        // rollover counter across a re-INVITE, and a changed key re-keys without a gap.
        let old_srtp = leg.media.as_mut().and_then(|m| m.srtp.take());
        let srtp = LegSrtp::next(old_srtp, media.srtp.as_ref(), now);
        match (&mut leg.media, keep) {
            (Some(m), true) => {
                m.te_pt = media.telephone_event_pt;
                m.rtcp_mux = media.rtcp_mux;
                m.report_first_packet = media.report_first_packet;
                m.send_idle = !media.quiet_when_unheard;
                m.strict_source = media.strict_source;
                m.srtp = srtp;
                m.config = media;
            }
            _ => {
                fresh.srtp = srtp;
                if let Some(base) = leg.resume_stream.take() {
                    fresh.continue_stream(base);
                }
                leg.media = Some(fresh);
            }
        }
        // The format may have changed: rebuild the session's plan.
        let s = self.leg(slot).session;
        self.rebuild_plan(now, s);
        Ok(Response::Leg(self.leg_info(slot)))
    }

    /// A leg's media state for `media`, set up for a session mixing at `mix_rate`.
    /// Fails only when libopus refuses an Opus state.
    fn new_media(
        &mut self,
        now: Instant,
        media: &MediaConfig,
        codec: Codec,
        mix_rate: SampleRate,
    ) -> Result<Box<LegMedia>, EngineError> {
        let max_depth_ms = self.cfg.jitter_max_ms.max(media.ptime_ms * 2);
        let jitter_cfg = JitterConfig {
            codec,
            // The leg's own payload type: dynamic for Opus and L16, and a peer may map
            // even PCMU to a dynamic one.
            payload_type: PayloadType(media.payload_type),
            ptime_ms: media.ptime_ms,
            min_depth_ms: self.cfg.jitter_min_ms.max(media.ptime_ms),
            max_depth_ms,
            // Room for the deepest buffer plus two of the longest packets (60 ms) and a
            // spare unit, whatever the ptime (the buffer refuses a ring too small for
            // its depth), rounded up to whole frames of the leg's ptime: frames at the
            // ptime then never straddle the ring's end, so every packet and every poll
            // of a steady stream takes the buffer's one-run fast paths (a ring of 33
            // units sent one 20 ms frame in 33 down the unit-by-unit paths).
            capacity_units: ((max_depth_ms + 2 * 60) / UNIT_MS + 1)
                .next_multiple_of(media.ptime_ms / UNIT_MS) as usize,
            ..JitterConfig::new(codec, media.ptime_ms)
        };
        let (decoder, encoder) =
            codec_states(media, mix_rate).map_err(|e| EngineError::InvalidArgument {
                field: "codec".into(),
                message: format!("libopus refused the leg's codec state: {e}"),
            })?;
        let jitter = JitterBuffer::with_decoder(jitter_cfg, decoder);
        let ssrc = Ssrc(self.rng.next_u32());
        let first_seq = SeqNo(self.rng.next_u32() as u16);
        let first_ts = RtpTs(self.rng.next_u32());
        let mut m = Box::new(LegMedia {
            codec,
            payload_type: media.payload_type,
            ptime_ms: media.ptime_ms,
            frame_samples: jitter.frame_samples(),
            mix_rate,
            mix_frame_samples: mix_rate.samples_in_ms(media.ptime_ms),
            encoder,
            in_rs: None,
            out_rs: None,
            te_pt: media.telephone_event_pt,
            rtcp_mux: media.rtcp_mux,
            report_first_packet: media.report_first_packet,
            send_idle: !media.quiet_when_unheard,
            strict_source: media.strict_source,
            jitter,
            out: OutputStream::new(
                ssrc,
                first_seq,
                first_ts,
                codec,
                PayloadType(media.payload_type),
                media.ptime_ms,
            ),
            config: media.clone(),
            in_pcm: Box::default(),
            in_len: 0,
            out_pcm: Box::default(),
            out_len: 0,
            mixed_active: false,
            jitter_live: false,
            forward_to: LegSet(0),
            dtmf_out_ts: None,
            rx_seq: SeqTracker::new(),
            rx_jitter: JitterEstimator::new(),
            rx_ssrc: None,
            last_sr: None,
            octets_sent: 0,
            packets_sent: 0,
            next_rtcp: now + RTCP_INTERVAL,
            srtp: None,
        });
        m.fit_resamplers();
        m.fit_staging();
        Ok(m)
    }

    pub(super) fn remove_leg(&mut self, now: Instant, id: LegId) {
        let Ok(slot) = self.resolve(id) else { return };
        let Some(leg) = self.legs[slot as usize].take() else {
            return;
        };
        let offset = usize::from(leg.port - self.cfg.port_first);
        self.port_table[offset] = NO_SLOT;
        if leg.paired {
            self.port_table[offset + 1] = NO_SLOT;
        }
        self.released.push(ReleasedPort {
            port: leg.port,
            paired: leg.paired,
            family: leg.family,
        });
        self.generations[slot as usize] = self.generations[slot as usize].wrapping_add(1);
        self.free_legs.push(slot);
        let s = leg.session;
        let sess = self.session_mut(s);
        let idx = usize::from(leg.index);
        sess.legs.copy_within(idx + 1..sess.len, idx);
        sess.len -= 1;
        sess.legs[sess.len] = NO_SLOT;
        sess.api_plan
            .edges
            .retain(|e| e.listener != id && e.source != id);
        sess.api_plan.no_dtmf.retain(|&l| l != id);
        let remaining = sess.legs;
        let len = sess.len;
        for (i, &slot) in remaining[..len].iter().enumerate() {
            self.leg_mut(slot).index = i as u8;
        }
        if len == 0 {
            let key = self.session(s).key.clone();
            self.session_by_key.remove(&key);
            if self.session(s).scheduled {
                self.unschedule(s);
            }
            self.sessions[s as usize] = None;
            self.free_sessions.push(s);
        } else {
            self.rebuild_plan(now, s);
        }
    }
}

/// Refuses, as an invalid `codec` argument, what the shard cannot carry: Opus when
/// libopus did not load (with its reason). A refusal, never a panic.
fn check_codec(codec: Codec) -> Result<(), EngineError> {
    match (codec, earshot_media::codec::opus_available()) {
        (Codec::Opus, Err(e)) => Err(EngineError::InvalidArgument {
            field: "codec".into(),
            message: format!("Opus legs need libopus, which this engine lacks: {e}"),
        }),
        _ => Ok(()),
    }
}

/// The encoder settings of an Opus leg in a session mixing at `mix_rate`: the peer's
/// fmtp (bitrate, FEC, DTX) and PCM at the mix rate ([`earshot_media::codec::pcm_rate`]).
fn opus_settings(media: &MediaConfig, mix_rate: SampleRate) -> OpusSettings {
    let opus = &media.opus;
    OpusSettings {
        sample_rate_hz: earshot_media::codec::pcm_rate(media.codec, mix_rate).hz(),
        bitrate_bps: opus.bitrate_bps(),
        complexity: opus.complexity.unwrap_or(default_complexity(mix_rate)),
        inband_fec: opus.use_inband_fec,
        dtx: opus.use_dtx,
        ..OpusSettings::default()
    }
}

/// The Opus encoder complexity when the leg's SDP (or operator) names none: 2 for a
/// narrowband (8 kHz) mix, whose telephone-band audio SILK codes nearly as well at low
/// complexity, else libopus's setting of our codec crate (5). Measured in
/// docs/perf.md ("Codec capacity"): the encoder is most of an Opus/PCMU call's cost.
fn default_complexity(mix_rate: SampleRate) -> u8 {
    match mix_rate {
        SampleRate::Hz8000 => NARROWBAND_OPUS_COMPLEXITY,
        _ => OpusSettings::default().complexity,
    }
}

/// See [`default_complexity`].
const NARROWBAND_OPUS_COMPLEXITY: u8 = 2;

/// A leg's decoder and encoder for a session mixing at `mix_rate` (control path:
/// allocates; libopus may refuse).
fn codec_states(
    media: &MediaConfig,
    mix_rate: SampleRate,
) -> Result<(Decoder, Encoder), earshot_opus::OpusError> {
    let rate = earshot_media::codec::pcm_rate(media.codec, mix_rate);
    Ok((
        Decoder::new(media.codec, rate)?,
        Encoder::new(media.codec, opus_settings(media, mix_rate))?,
    ))
}

impl LegMedia {
    /// Carries on the outbound stream a failed node's leg was sending: its SSRC, the
    /// sequence number and timestamp of its next packet and, for SRTP, its packet index
    /// (every index up to `base.index - 1` is declared used, so keystream is never
    /// reused). The first packet carries the marker: receivers resynchronise on it.
    pub(super) fn continue_stream(&mut self, base: StreamBase) {
        self.out = OutputStream::new(
            Ssrc(base.ssrc),
            SeqNo(base.index as u16),
            RtpTs(base.timestamp),
            self.codec,
            PayloadType(self.payload_type),
            self.ptime_ms,
        );
        if let (Some(srtp), Some(highest)) = (self.srtp.as_deref_mut(), base.index.checked_sub(1)) {
            srtp.resume_outbound(Ssrc(base.ssrc), highest);
        }
    }

    /// Where the outbound stream stands: what its next packet carries.
    pub(super) fn stream_base(&self) -> StreamBase {
        let ssrc = self.out.ssrc();
        let seq = u64::from(self.out.next_seq().0);
        // An SRTP leg knows its rollover count; a plain leg's index is its sequence
        // number (a successor continues it; rollovers do not matter without keys).
        let index = self
            .srtp
            .as_deref()
            .and_then(|s| s.outbound_highest(ssrc))
            .map_or(seq, |h| h + 1);
        StreamBase {
            ssrc: ssrc.0,
            index,
            timestamp: self.out.next_timestamp().0,
        }
    }

    /// The highest audio rate this leg's own audio carries (a source's need).
    pub(super) fn source_rate(&self) -> SampleRate {
        match self.codec {
            Codec::Opus => self.config.opus.capture_rate(),
            c => c.audio_rate(),
        }
    }

    /// The highest audio rate this leg's peer plays (a listener's need).
    pub(super) fn listener_rate(&self) -> SampleRate {
        match self.codec {
            Codec::Opus => self.config.opus.playback_rate(),
            c => c.audio_rate(),
        }
    }

    /// Sets the leg up for a session mixing at `mix_rate`: an Opus leg's states move to
    /// the new rate (its jitter buffer starts afresh), and the resamplers between the
    /// codec's rate and the mix are rebuilt. Nothing happens when the rate is the one
    /// already set. Control path: allocates.
    pub(super) fn set_mix_rate(&mut self, mix_rate: SampleRate) {
        if mix_rate == self.mix_rate {
            return;
        }
        self.mix_rate = mix_rate;
        self.mix_frame_samples = mix_rate.samples_in_ms(self.ptime_ms);
        // Staged PCM is at the old rates.
        self.in_len = 0;
        self.out_len = 0;
        if self.codec == Codec::Opus {
            // libopus took these settings at configuration; should it refuse now, the
            // old states stay and the resamplers bridge their rate to the mix.
            if let Ok((decoder, encoder)) = codec_states(&self.config, mix_rate) {
                self.jitter.replace_decoder(decoder);
                self.encoder = encoder;
                self.frame_samples = self.jitter.frame_samples();
            }
        }
        self.fit_resamplers();
        self.fit_staging();
    }

    /// Sizes the staging buffers to this leg's frames: `in_pcm` holds two frames at the
    /// decoder's rate (what [`LegMedia::pull_tick`] can leave over plus one poll), and
    /// `out_pcm` one frame at the mix rate. Sized to the leg rather than to the longest
    /// frame of any codec, so that a leg's state stays a few compact allocations (at
    /// thousands of sessions per core, sparse state costs cache and TLB misses).
    /// Control path: allocates when a size changes.
    fn fit_staging(&mut self) {
        let (in_len, out_len) = (2 * self.frame_samples, self.mix_frame_samples);
        debug_assert!(in_len <= 2 * MAX_FRAME_SAMPLES && out_len <= MAX_FRAME_SAMPLES);
        if self.in_pcm.len() != in_len {
            self.in_pcm = vec![0; in_len].into_boxed_slice();
        }
        if self.out_pcm.len() != out_len {
            self.out_pcm = vec![0; out_len].into_boxed_slice();
        }
    }

    /// Builds the resamplers the codec states' rates and the mix rate need (none when
    /// they agree, as for G.711 in a narrowband session).
    fn fit_resamplers(&mut self) {
        let mix = self.mix_rate.hz();
        let fit = |hz: SampleRate, from: u32, to: u32| {
            (hz.hz() != mix)
                .then(|| Resampler::new(from, to).ok().map(Box::new))
                .flatten()
        };
        let dec = self.jitter.decoder().pcm_rate();
        self.in_rs = fit(dec, dec.hz(), mix);
        let enc = self.encoder.pcm_rate();
        self.out_rs = fit(enc, mix, enc.hz());
    }
}
