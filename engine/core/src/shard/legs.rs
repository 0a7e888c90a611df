//! Legs: allocation on a port the caller bound, media configuration, removal.

use std::net::SocketAddr;

use earshot_engine_api::{EngineError, Family, LegId, MediaConfig, Response};
use earshot_media::jitter::{JitterBuffer, JitterConfig};
use earshot_media::stream::OutputStream;
use earshot_media::time::Instant;
use earshot_media::wire::seq::{JitterEstimator, SeqTracker};
use earshot_media::{
    Codec, MAX_FRAME_SAMPLES, MAX_SESSION_LEGS, PayloadType, RtpTs, SeqNo, Ssrc, UNIT_MS,
};

use super::session::Session;
use super::srtp::LegSrtp;
use super::{NO_SLOT, ReleasedPort, Shard};

/// Mean interval between a leg's RTCP reports (RFC 3550 section 6.2's minimum of 5 s;
/// each interval is randomised over [0.5, 1.5] of it).
pub(super) const RTCP_INTERVAL: earshot_media::time::Duration =
    earshot_media::time::Duration::from_secs(5);

/// What a configured leg carries: its format, buffers and streams. Built on the control
/// path when the leg is configured.
#[derive(Debug)]
pub(super) struct LegMedia {
    pub(super) codec: Codec,
    pub(super) payload_type: u8,
    pub(super) ptime_ms: u32,
    pub(super) frame_samples: usize,
    pub(super) te_pt: Option<u8>,
    pub(super) rtcp_mux: bool,
    pub(super) report_first_packet: bool,
    /// While the leg hears nobody, send it silence at its ptime (the default) rather
    /// than nothing.
    pub(super) send_idle: bool,
    pub(super) config: MediaConfig,
    pub(super) jitter: JitterBuffer,
    pub(super) out: OutputStream,
    /// Linear PCM pulled from the jitter buffer, not yet consumed by ticks.
    pub(super) in_pcm: Box<[i16; 2 * MAX_FRAME_SAMPLES]>,
    pub(super) in_len: usize,
    /// Mixed PCM accumulated toward one output frame.
    pub(super) out_pcm: Box<[i16; MAX_FRAME_SAMPLES]>,
    pub(super) out_len: usize,
    /// Whether this output sent a mixed frame at its previous tick (marker logic).
    pub(super) mixed_active: bool,
    /// Whether the jitter buffer is in use (some listener mixes this input).
    pub(super) jitter_live: bool,
    /// Source timestamp of the telephone event being relayed, and its output timestamp.
    pub(super) dtmf_out_ts: Option<(RtpTs, RtpTs)>,
    /// Reception statistics for RTCP report blocks (RFC 3550 A.1, A.3, A.8).
    pub(super) rx_seq: SeqTracker,
    pub(super) rx_jitter: JitterEstimator,
    pub(super) rx_ssrc: Option<Ssrc>,
    /// Middle 32 bits of the NTP time of the last SR received, and when it arrived.
    pub(super) last_sr: Option<(u32, Instant)>,
    /// Payload octets sent, for the sender report.
    pub(super) octets_sent: u32,
    pub(super) packets_sent: u32,
    /// When this leg next sends RTCP.
    pub(super) next_rtcp: Instant,
    /// SRTP/SRTCP sessions when the leg is encrypted; `None` for plain RTP.
    pub(super) srtp: Option<Box<LegSrtp>>,
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
    /// Writes one tick of this input's PCM into `dst`: straight from the jitter buffer
    /// when a tick is a whole frame, else through `in_pcm`, which keeps what a frame
    /// longer than the tick leaves over for the next ticks.
    pub(super) fn pull_tick(&mut self, now: Instant, dst: &mut [i16]) {
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
        let (tick, fs) = (chunk.len(), self.frame_samples);
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
#[derive(Debug)]
pub(super) struct Leg {
    pub(super) id: LegId,
    pub(super) key: String,
    pub(super) session: u32,
    /// Position in the session's leg list (the hear matrix index).
    pub(super) index: u8,
    pub(super) port: u16,
    pub(super) family: Family,
    /// Where the leg sends: configured, or learned from the first valid packet.
    pub(super) remote: Option<SocketAddr>,
    /// The remote was learned from a packet (symmetric RTP); it stays locked across
    /// reconfigurations that do not name a remote.
    pub(super) latched: bool,
    pub(super) media: Option<Box<LegMedia>>,
    pub(super) last_rx: Instant,
    pub(super) timed_out: bool,
    pub(super) first_packet_seen: bool,
    /// Valid RTP packets received.
    pub(super) packets_in: u64,
    /// The leg holds a port pair (RTP and RTCP); otherwise one port, RTCP multiplexed.
    pub(super) paired: bool,
}

impl Shard {
    /// Adds a leg on `port` (already bound by the caller). Idempotent on
    /// `(session, leg_key)`.
    pub(super) fn allocate_leg(
        &mut self,
        now: Instant,
        session: String,
        leg_key: String,
        family: Family,
        port: u16,
        rtcp_mux: bool,
    ) -> Result<Response, EngineError> {
        let enabled = match family {
            Family::V4 => self.cfg.local_v4.is_some(),
            Family::V6 => self.cfg.local_v6.is_some(),
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
        let mut fresh = self.new_media(now, &media, codec);
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
            m.codec == codec && m.ptime_ms == media.ptime_ms && m.payload_type == media.payload_type
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
                m.srtp = srtp;
                m.config = media;
            }
            _ => {
                fresh.srtp = srtp;
                leg.media = Some(fresh);
            }
        }
        // The format may have changed: rebuild the session's plan.
        let s = self.leg(slot).session;
        self.rebuild_plan(now, s);
        Ok(Response::Leg(self.leg_info(slot)))
    }

    fn new_media(&mut self, now: Instant, media: &MediaConfig, codec: Codec) -> Box<LegMedia> {
        let max_depth_ms = self.cfg.jitter_max_ms.max(media.ptime_ms * 2);
        let jitter_cfg = JitterConfig {
            codec,
            ptime_ms: media.ptime_ms,
            min_depth_ms: self.cfg.jitter_min_ms.max(media.ptime_ms),
            max_depth_ms,
            // Room for the deepest buffer plus two of the longest packets (60 ms) and a
            // spare unit, whatever the ptime (the buffer refuses a ring too small for
            // its depth).
            capacity_units: ((max_depth_ms + 2 * 60) / UNIT_MS + 1) as usize,
            ..JitterConfig::new(codec, media.ptime_ms)
        };
        let ssrc = Ssrc(self.rng.next_u32());
        let first_seq = SeqNo(self.rng.next_u32() as u16);
        let first_ts = RtpTs(self.rng.next_u32());
        Box::new(LegMedia {
            codec,
            payload_type: media.payload_type,
            ptime_ms: media.ptime_ms,
            frame_samples: codec.pcm_samples_per_frame(media.ptime_ms),
            te_pt: media.telephone_event_pt,
            rtcp_mux: media.rtcp_mux,
            report_first_packet: media.report_first_packet,
            send_idle: !media.quiet_when_unheard,
            jitter: JitterBuffer::new(jitter_cfg),
            out: OutputStream::new(
                ssrc,
                first_seq,
                first_ts,
                codec,
                PayloadType(media.payload_type),
                media.ptime_ms,
            ),
            config: media.clone(),
            in_pcm: Box::new([0; 2 * MAX_FRAME_SAMPLES]),
            in_len: 0,
            out_pcm: Box::new([0; MAX_FRAME_SAMPLES]),
            out_len: 0,
            mixed_active: false,
            jitter_live: false,
            dtmf_out_ts: None,
            rx_seq: SeqTracker::new(),
            rx_jitter: JitterEstimator::new(),
            rx_ssrc: None,
            last_sr: None,
            octets_sent: 0,
            packets_sent: 0,
            next_rtcp: now + RTCP_INTERVAL,
            srtp: None,
        })
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
/// libopus did not load (with its reason), and every codec but G.711, whose decode,
/// resample and encode paths in the shard are not built yet (the codec states exist in
/// `earshot_media::codec`; the session mixes at 8 kHz). A refusal, never a panic.
fn check_codec(codec: Codec) -> Result<(), EngineError> {
    let refuse = |message: String| {
        Err(EngineError::InvalidArgument {
            field: "codec".into(),
            message,
        })
    };
    match codec {
        Codec::Pcmu | Codec::Pcma => Ok(()),
        Codec::Opus => match earshot_media::codec::opus_available() {
            Err(e) => refuse(format!(
                "Opus legs need libopus, which this engine lacks: {e}"
            )),
            Ok(_) => refuse("Opus legs are not mixed by this engine yet (G.711 only)".into()),
        },
        Codec::G722 | Codec::L16(_) => refuse(format!(
            "{} legs are not mixed by this engine yet (G.711 only)",
            codec.sdp_name()
        )),
    }
}
