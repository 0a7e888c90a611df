//! The receive path: one datagram in place, forwarded at once or buffered for the mix.
//! No allocation, no locks, no logging: count and drop.

use earshot_media::jitter::rtp_units;
use earshot_media::time::Instant;
use earshot_media::wire::seq::SeqTracker;
use earshot_media::{PayloadType, RtpTs, SeqNo, Ssrc};

use super::{NO_SLOT, Shard, ShardEvent};
use crate::io::{Datagram, MAX_UDP_PAYLOAD, PacketHandler, TxSink};
use crate::rtp::{self, RtpView};
use crate::stats::DropReason;

impl Shard {
    /// Handles one received datagram in place; `tx` is where forwarded copies are built.
    pub fn handle_packet(&mut self, now: Instant, d: Datagram<'_>, tx: &mut dyn TxSink) {
        self.counters.packets_in += 1;
        self.counters.bytes_in += d.payload.len() as u64;
        if d.payload.len() > MAX_UDP_PAYLOAD {
            return self.counters.drop(DropReason::Oversize);
        }
        let Some(offset) = d.local_port.checked_sub(self.cfg.port_first) else {
            return self.counters.drop(DropReason::UnknownPort);
        };
        let slot = match self.port_table.get(usize::from(offset)) {
            Some(&slot) if slot != NO_SLOT => slot,
            _ => return self.counters.drop(DropReason::UnknownPort),
        };
        let leg = self.legs[slot as usize]
            .as_mut()
            .expect("port table names live legs");
        let is_rtcp_port = leg.paired && d.local_port != leg.port;
        let Some(media) = leg.media.as_mut() else {
            return self.counters.drop(DropReason::UnconfiguredLeg);
        };
        // RTCP: on port+1, or multiplexed (RFC 5761: second byte 192..=223).
        if is_rtcp_port || (media.rtcp_mux && rtp::looks_like_rtcp(d.payload)) {
            // Only from the leg's peer: its address (rtcp-mux) or its host (port+1).
            let from_peer = leg.remote.is_some_and(|r| {
                if is_rtcp_port {
                    r.ip() == d.remote.ip()
                } else {
                    r == d.remote
                }
            });
            if !from_peer {
                return self.counters.drop(DropReason::WrongSource);
            }
            return self.handle_rtcp(now, slot, d);
        }
        let view = match RtpView::parse(d.payload) {
            Ok(v) => v,
            Err(reason) => return self.counters.drop(reason),
        };
        // Symmetric RTP: latch the first valid source, then refuse every other one. A
        // remote once known (configured or latched) is never replaced by a packet.
        if leg.remote.is_some_and(|r| r != d.remote) {
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
        if !is_event {
            let arrival = rtp_units(now, media.codec.rtp_clock_hz());
            media.rx_jitter.handle_arrival(arrival, RtpTs(view.ts));
        }
        let report_first = media.report_first_packet;
        let id = leg.id;
        let mut event = None;
        if leg.remote.is_none() {
            leg.remote = Some(d.remote);
            leg.latched = true;
            event = Some(ShardEvent::RemoteLatched(id, d.remote));
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
        let leg = self.leg(slot);
        let (s, src_index) = (leg.session, usize::from(leg.index));
        if is_event {
            return self.forward_event(now, s, src_index, &view, d.payload, tx);
        }
        // Forward to every listener whose plan forwards this source.
        let sess = self.session(s);
        let targets = sess.plan.forward_targets(src_index);
        if !targets.is_empty() {
            let legs = sess.legs;
            for l in targets {
                self.forward_audio(now, legs[l], &view, d.payload, tx);
            }
        }
        // Buffer for the mix if anyone mixes this source.
        if self.session(s).plan.is_mixed_input(src_index) {
            let media = self.leg_mut(slot).media.as_mut().expect("checked above");
            let r = media.jitter.handle_packet(
                now,
                Ssrc(view.ssrc),
                SeqNo(view.seq),
                RtpTs(view.ts),
                PayloadType(view.payload_type),
                view.marker,
                view.payload(d.payload),
            );
            if let Err(drop) = r {
                if let Some(reason) = jitter_drop_reason(&drop) {
                    self.counters.drop(reason);
                }
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
        let pt = m.payload_type;
        let sent = tx.send_with(leg.port, remote, &mut |buf| {
            let h = rtp::write_header(buf, pt, stamp.marker, stamp.seq.0, stamp.ts.0, stamp.ssrc.0);
            buf[h..h + payload.len()].copy_from_slice(payload);
            h + payload.len()
        });
        if sent {
            m.packets_sent = m.packets_sent.wrapping_add(1);
            m.octets_sent = m.octets_sent.wrapping_add(payload.len() as u32);
        }
        self.count_send(sent, rtp::HEADER_LEN + payload.len());
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
            let stamp = m.out.event(out_ts, view.marker);
            let payload = view.payload(packet);
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
                h + payload.len()
            });
            self.count_send(sent, rtp::HEADER_LEN + payload.len());
        }
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
