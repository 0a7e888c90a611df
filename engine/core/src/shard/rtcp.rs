//! RTCP: reports received (for LSR/DLSR) and each leg's SR/RR with SDES CNAME.

use std::net::SocketAddr;

use earshot_media::time::{Duration, Instant};
use earshot_media::wire::report::{Reception, emit_report};
use earshot_media::wire::rtcp::{self, RtcpRepr, SenderInfo};

use super::Shard;
use crate::io::TxSink;
use crate::stats::DropReason;

/// The canonical name every leg reports (RFC 3550 6.5.1 asks for a stable name per
/// endpoint; one engine is one endpoint).
const CNAME: &[u8] = b"earshot";

impl Shard {
    /// One RTCP compound from the leg's peer, in place: SRTCP is verified and decrypted
    /// first on an SRTP leg.
    pub(super) fn handle_rtcp(&mut self, now: Instant, slot: u32, payload: &mut [u8]) {
        let srtp = self
            .leg_mut(slot)
            .media
            .as_mut()
            .and_then(|m| m.srtp.as_deref_mut());
        let payload: &[u8] = match srtp {
            None => payload,
            Some(srtp) => match srtp.unprotect_rtcp(now, payload) {
                Ok(len) => &payload[..len],
                Err(reason) => return self.counters.drop(reason),
            },
        };
        let mut sr_ntp = None;
        for p in rtcp::packets(payload) {
            let Ok(p) = p else {
                return self.counters.drop(DropReason::BadRtcp);
            };
            match RtcpRepr::parse(&p) {
                Ok(RtcpRepr::SenderReport(sr)) => sr_ntp = Some(sr.sender_info.ntp_ts),
                Ok(_) => {}
                Err(_) => return self.counters.drop(DropReason::BadRtcp),
            }
        }
        // The peer's sender report feeds LSR/DLSR in our next report block, so that it
        // can compute the round-trip time.
        if let (Some(ntp), Some(m)) = (sr_ntp, self.leg_mut(slot).media.as_mut()) {
            m.last_sr = Some(((ntp >> 16) as u32, now));
        }
    }

    /// Sends the RTCP reports that are due, a bounded number per call.
    pub(super) fn send_rtcp(&mut self, now: Instant, tx: &mut dyn TxSink) {
        let max = self.cfg.max_legs;
        for _ in 0..super::tick::SWEEP_PER_CALL.min(max) {
            let slot = self.rtcp_sweep;
            self.rtcp_sweep = (self.rtcp_sweep + 1) % max;
            let Some(leg) = self.legs[slot as usize].as_mut() else {
                continue;
            };
            let (Some(remote), Some(m)) = (leg.remote, leg.media.as_mut()) else {
                continue;
            };
            if m.next_rtcp > now {
                continue;
            }
            let jitter_ms = self.rng.next_u32() % 5_000;
            let ntp = self.ntp_at_zero.wrapping_add(ntp_of(now));
            // [0.5, 1.5] of the interval, so that legs set up together drift apart.
            m.next_rtcp = now + Duration::from_millis(2_500 + u64::from(jitter_ms) / 2 * 2);
            let ssrc = m.out.ssrc();
            let sender = (m.packets_sent > 0).then(|| SenderInfo {
                ntp_ts: ntp,
                rtp_ts: m.out.event_timestamp(now),
                packet_count: m.packets_sent,
                octet_count: m.octets_sent,
            });
            let mut reception = m.rx_ssrc.map(|source| Reception {
                source,
                seq: &mut m.rx_seq,
                jitter: &m.rx_jitter,
                last_sr: m
                    .last_sr
                    .map(|(mid, at)| (mid, now.saturating_since(at).as_nanos())),
            });
            let dst = if m.rtcp_mux {
                remote
            } else {
                SocketAddr::new(remote.ip(), remote.port().wrapping_add(1))
            };
            let src_port = if m.rtcp_mux { leg.port } else { leg.port + 1 };
            let srtp = &mut m.srtp;
            let overhead = srtp.as_ref().map_or(0, |s| s.rtcp_overhead());
            let (mut len, mut sealed) = (0, true);
            let sent = tx.send_with(src_port, dst, &mut |buf| {
                // Room for SRTCP's index word and tag after the compound.
                let room = buf.len().saturating_sub(overhead);
                len = emit_report(ssrc, sender, reception.as_mut(), CNAME, &mut buf[..room])
                    .unwrap_or(0);
                if let (Some(s), true) = (srtp.as_deref_mut(), len > 0) {
                    let protected = s.protect_rtcp(buf, len);
                    sealed = protected.is_some();
                    len = protected.unwrap_or(0);
                }
                len
            });
            if !sealed {
                self.counters.drop(DropReason::SrtpProtect);
            } else if sent && len > 0 {
                self.counters.packets_out += 1;
                self.counters.bytes_out += len as u64;
            } else if !sent {
                self.counters.drop(DropReason::TxFull);
            }
        }
    }
}

/// `now` as a 64-bit NTP duration (32.32 fixed point seconds).
fn ntp_of(now: Instant) -> u64 {
    let ns = now.as_nanos();
    ((ns / 1_000_000_000) << 32) | (((ns % 1_000_000_000) << 32) / 1_000_000_000)
}
