//! The receive path: one datagram in place, forwarded at once or buffered for the mix.
//! No allocation, no locks, no logging: count and drop.

use earshot_media::jitter::rtp_units;
use earshot_media::time::Instant;
use earshot_media::wire::seq::SeqTracker;
use earshot_media::{PayloadType, RtpTs, SeqNo, Ssrc};

use super::srtp::LegSrtp;
use super::{NO_SLOT, Shard, ShardEvent};
use crate::io::{Datagram, MAX_UDP_PAYLOAD, PacketHandler, TxSink};
use crate::rtp::{self, RtpView};
use crate::stats::DropReason;
use earshot_media::wire::dtmf;

impl Shard {
    /// Handles one received datagram in place; `tx` is where forwarded copies are built.
    /// On an SRTP leg the datagram is verified and decrypted where it lies first:
    /// whatever fails is counted (`srtp_auth`, `srtp_replay`) and dropped before any
    /// parser, jitter buffer or other leg sees it.
    pub fn handle_packet(&mut self, now: Instant, d: Datagram<'_>, tx: &mut dyn TxSink) {
        let Datagram {
            local_port,
            remote,
            payload,
        } = d;
        self.counters.packets_in += 1;
        self.counters.bytes_in += payload.len() as u64;
        if payload.len() > MAX_UDP_PAYLOAD {
            return self.counters.drop(DropReason::Oversize);
        }
        let Some(offset) = local_port.checked_sub(self.cfg.port_first) else {
            return self.counters.drop(DropReason::UnknownPort);
        };
        let slot = match self.port_table.get(usize::from(offset)) {
            Some(&slot) if slot != NO_SLOT => slot,
            _ => return self.counters.drop(DropReason::UnknownPort),
        };
        let leg = self.legs[slot as usize]
            .as_mut()
            .expect("port table names live legs");
        let is_rtcp_port = leg.paired && local_port != leg.port;
        let Some(media) = leg.media.as_mut() else {
            return self.counters.drop(DropReason::UnconfiguredLeg);
        };
        // A strict source is the only address this leg hears from, RTP or RTCP, before
        // or after it has learned its remote.
        if media.strict_source.is_some_and(|ip| ip != remote.ip()) {
            return self.counters.drop(DropReason::WrongSource);
        }
        // RTCP: on port+1, or multiplexed (RFC 5761: second byte 192..=223, which SRTCP
        // leaves in clear).
        if is_rtcp_port || (media.rtcp_mux && rtp::looks_like_rtcp(payload)) {
            // Only from the leg's peer: its address (rtcp-mux) or its host (port+1).
            let from_peer = leg.remote.is_some_and(|r| {
                if is_rtcp_port {
                    r.ip() == remote.ip()
                } else {
                    r == remote
                }
            });
            if !from_peer {
                return self.counters.drop(DropReason::WrongSource);
            }
            return self.handle_rtcp(now, slot, payload);
        }
        // SRTP: a source other than the leg's peer is refused before any crypto is
        // spent on it; then the packet is verified and decrypted in place.
        let payload: &[u8] = match media.srtp.as_deref_mut() {
            None => payload,
            Some(_) if leg.remote.is_some_and(|r| r != remote) => {
                return self.counters.drop(DropReason::WrongSource);
            }
            Some(srtp) => match srtp.unprotect_rtp(now, payload) {
                Ok(len) => &payload[..len],
                Err(reason) => return self.counters.drop(reason),
            },
        };
        let view = match RtpView::parse(payload) {
            Ok(v) => v,
            Err(reason) => return self.counters.drop(reason),
        };
        // Symmetric RTP: latch the first valid source, then refuse every other one. A
        // remote once known (configured or latched) is never replaced by a packet. On
        // an SRTP leg "valid" means authenticated: junk cannot take the latch.
        if leg.remote.is_some_and(|r| r != remote) {
            return self.counters.drop(DropReason::WrongSource);
        }
        let pt = view.payload_type;
        let is_audio = pt == media.payload_type;
        let is_event = media.te_pt == Some(pt);
        let is_cn = pt == PayloadType::CN.0;
        if !(is_audio || is_event || is_cn) {
            return self.counters.drop(DropReason::UnknownPayloadType);
        }
        // Reception statistics for this leg's RTCP report blocks (RFC 3550 A.1, A.8).
        if media.rx_ssrc != Some(Ssrc(view.ssrc)) {
            media.rx_ssrc = Some(Ssrc(view.ssrc));
            media.rx_seq = SeqTracker::new();
            media.rx_jitter.reset();
        }
        media.rx_seq.handle_seq(SeqNo(view.seq));
        // `now` on the leg's RTP clock, for these statistics and the jitter buffer (built
        // for the leg's codec) alike; the buffer keeps the clock rate at hand. A batch of
        // packets shares one `now` and most legs one clock: the last conversion is kept.
        let clock_hz = media.jitter.clock_hz();
        let arrival = match self.last_arrival {
            (at, hz, units) if at == now && hz == clock_hz => units,
            _ => {
                let units = rtp_units(now, clock_hz);
                self.last_arrival = (now, clock_hz, units);
                units
            }
        };
        if !is_event {
            media.rx_jitter.handle_arrival(arrival, RtpTs(view.ts));
        }
        // Buffer for the mix if anyone mixes this source (never an event: those are
        // forwarded only). Done here, while the leg's media is at hand: nothing below
        // (events, forwarding to other legs) reads or changes this buffer.
        if media.jitter_live && !is_event {
            let r = media.jitter.handle_packet_at(
                now,
                arrival,
                Ssrc(view.ssrc),
                SeqNo(view.seq),
                RtpTs(view.ts),
                PayloadType(view.payload_type),
                view.marker,
                view.payload(payload),
            );
            if let Err(drop) = r
                && let Some(reason) = jitter_drop_reason(&drop)
            {
                self.counters.drop(reason);
            }
        }
        let report_first = media.report_first_packet;
        // Who forwards this source: the plan's answer, kept on the leg when the plan was
        // built (no session or plan lookup per packet).
        let targets = media.forward_to;
        let id = leg.id;
        let (s, src_index) = (leg.session, usize::from(leg.index));
        let mut event = None;
        if leg.remote.is_none() {
            leg.remote = Some(remote);
            leg.latched = true;
            event = Some(ShardEvent::RemoteLatched(id, remote));
        }
        leg.last_rx = now;
        leg.timed_out = false;
        leg.packets_in += 1;
        let first = !leg.first_packet_seen;
        leg.first_packet_seen = true;
        if let Some(e) = event {
            self.push_event(e);
        }
        if first && report_first {
            self.push_event(ShardEvent::FirstPacket(id));
        }
        if is_event {
            return self.forward_event(now, s, src_index, &view, payload, tx);
        }
        // Forward to every listener whose plan forwards this source. The session table is
        // indexed here rather than through `Shard::session`, which is not inlined (a call
        // on every packet).
        if !targets.is_empty() {
            let legs = self.sessions[s as usize]
                .as_ref()
                .expect("a live leg belongs to a live session")
                .legs;
            for l in targets {
                self.forward_audio(now, legs[l], &view, payload, tx);
            }
        }
    }

    fn forward_audio(
        &mut self,
        now: Instant,
        listener: u32,
        view: &RtpView,
        packet: &[u8],
        tx: &mut dyn TxSink,
    ) {
        let leg = self.legs[listener as usize]
            .as_mut()
            .expect("session legs are live");
        let (Some(remote), Some(m)) = (leg.remote, leg.media.as_mut()) else {
            return;
        };
        let Some(stamp) = m.out.forward(
            now,
            Ssrc(view.ssrc),
            SeqNo(view.seq),
            RtpTs(view.ts),
            view.marker,
        ) else {
            return;
        };
        m.mixed_active = false;
        let payload = view.payload(packet);
        if !fits(&m.srtp, payload.len()) {
            return self.counters.drop(DropReason::Oversize);
        }
        let pt = m.payload_type;
        let srtp = &mut m.srtp;
        let mut len = 0;
        // Re-encrypted for this listener without decoding: the source's packet was
        // decrypted in place, its payload is copied once into the transmit buffer (as
        // for plain legs) and protected there with the listener's key.
        let sent = tx.send_with(leg.port, remote, &mut |buf| {
            let h = rtp::write_header(buf, pt, stamp.marker, stamp.seq.0, stamp.ts.0, stamp.ssrc.0);
            buf[h..h + payload.len()].copy_from_slice(payload);
            len = seal_rtp(srtp, buf, h + payload.len());
            len
        });
        if sent && len > 0 {
            m.packets_sent = m.packets_sent.wrapping_add(1);
            m.octets_sent = m.octets_sent.wrapping_add(payload.len() as u32);
        }
        self.count_send(sent, len);
    }

    /// Passes a telephone event from source `src` to every listener that hears it and may
    /// receive events (SPEC section 5: never mixed, never to a monitoring supervisor).
    fn forward_event(
        &mut self,
        now: Instant,
        s: u32,
        src: usize,
        view: &RtpView,
        packet: &[u8],
        tx: &mut dyn TxSink,
    ) {
        let sess = self.session(s);
        let (legs, n, no_dtmf) = (sess.legs, sess.len, sess.no_dtmf);
        let src_clock_hz = self
            .leg(legs[src])
            .media
            .as_ref()
            .map_or(8_000, |m| m.codec.rtp_clock_hz());
        for l in 0..n {
            if l == src || no_dtmf & (1 << l) != 0 || self.session(s).matrix.gain(l, src).is_mute()
            {
                continue;
            }
            let leg = self.legs[legs[l] as usize]
                .as_mut()
                .expect("session legs are live");
            let (Some(remote), Some(m)) = (leg.remote, leg.media.as_mut()) else {
                continue;
            };
            let Some(te_pt) = m.te_pt else { continue };
            // An event keeps one timestamp for all its packets; map the source's event
            // timestamp to one in the output's space, chosen when the event starts.
            let src_ts = RtpTs(view.ts);
            let out_ts = match m.dtmf_out_ts {
                Some((from, to)) if from == src_ts => to,
                _ => {
                    let to = m.out.event_timestamp(now);
                    m.dtmf_out_ts = Some((src_ts, to));
                    to
                }
            };
            let payload = view.payload(packet);
            if !fits(&m.srtp, payload.len()) {
                self.counters.drop(DropReason::Oversize);
                continue;
            }
            let stamp = m.out.event(out_ts, view.marker);
            let clock_hz = m.codec.rtp_clock_hz();
            let srtp = &mut m.srtp;
            let mut len = 0;
            let sent = tx.send_with(leg.port, remote, &mut |buf| {
                let h = rtp::write_header(
                    buf,
                    te_pt,
                    stamp.marker,
                    stamp.seq.0,
                    stamp.ts.0,
                    stamp.ssrc.0,
                );
                buf[h..h + payload.len()].copy_from_slice(payload);
                // The event's duration counts in the RTP clock (RFC 4733 2.3.5): an 8 kHz
                // source's event to a 48 kHz Opus leg lasts six times as many units.
                dtmf::rescale_duration(&mut buf[h..h + payload.len()], src_clock_hz, clock_hz);
                len = seal_rtp(srtp, buf, h + payload.len());
                len
            });
            self.count_send(sent, len);
        }
    }
}

/// Whether an RTP packet with a `payload_len` payload, protected for a leg with `srtp`,
/// fits in a datagram: SRTP appends its tag to what a plain leg would send.
#[inline]
fn fits(srtp: &Option<Box<LegSrtp>>, payload_len: usize) -> bool {
    let overhead = srtp.as_ref().map_or(0, |s| s.rtp_overhead());
    rtp::HEADER_LEN + payload_len + overhead <= MAX_UDP_PAYLOAD
}

/// Protects `buf[..len]` in place for a leg with `srtp` (plain legs: as it is); the
/// length to send, 0 when protection failed (the send is cancelled and counted as
/// `srtp_protect`). The transmit buffer holds [`MAX_UDP_PAYLOAD`] octets and the caller
/// checked [`fits`], so the tag has room.
#[inline]
pub(super) fn seal_rtp(srtp: &mut Option<Box<LegSrtp>>, buf: &mut [u8], len: usize) -> usize {
    match srtp {
        None => len,
        Some(s) => s.protect_rtp(buf, len).unwrap_or(0),
    }
}

fn jitter_drop_reason(d: &earshot_media::jitter::DropReason) -> Option<DropReason> {
    use earshot_media::jitter::DropReason as J;
    match d {
        J::TooLate => Some(DropReason::JitterLate),
        J::Duplicate => Some(DropReason::JitterDuplicate),
        J::Overflow => Some(DropReason::JitterOverflow),
        J::BadPayloadLength => Some(DropReason::BadHeader),
        J::UnexpectedPayloadType => Some(DropReason::UnknownPayloadType),
        // Held while a new timeline proves itself: not a loss of input.
        J::Probation => None,
    }
}

/// Adapts a shard and a clock reading to the backend's [`PacketHandler`].
#[derive(Debug)]
pub struct ShardHandler<'a> {
    /// The shard.
    pub shard: &'a mut Shard,
    /// `now` for the whole batch: one clock read per batch, not per packet.
    pub now: Instant,
}

impl PacketHandler for ShardHandler<'_> {
    fn handle_datagram(&mut self, dgram: Datagram<'_>, tx: &mut dyn TxSink) {
        self.shard.handle_packet(self.now, dgram, tx);
    }
}
