//! Properties of one key in both directions: protect then unprotect is the identity;
//! any single bit flipped in a protected packet is refused (and the buffer is left as it
//! was); a replay is refused; packets reordered within the window are accepted exactly
//! once; the rollover counter follows 70,000 packets through loss and reordering.
//! proptest prints a failing case and keeps it in the `.proptest-regressions` file.

mod support;

use earshot_srtp::{Direction, MasterKey, SrtpConfig, SrtpError, SrtpSession, SrtpSuite, Ssrc};
use proptest::prelude::*;
use support::{Rng, rtcp_packet, rtp_packet, seed, with_room};

fn suite() -> impl Strategy<Value = SrtpSuite> {
    prop::sample::select(SrtpSuite::ALL.to_vec())
}

fn pair(suite: SrtpSuite, key_seed: u64) -> (SrtpSession, SrtpSession) {
    let mut rng = Rng::new(key_seed);
    let key = MasterKey::generate(suite, |b| rng.fill(b));
    (
        SrtpSession::new(Direction::Outbound, &key, SrtpConfig::default()),
        SrtpSession::new(Direction::Inbound, &key, SrtpConfig::default()),
    )
}

/// An arbitrary valid RTP packet: CSRCs, optional extension, payload 0..400 octets.
fn rtp() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<u64>(),
        any::<u32>(),
        any::<u16>(),
        0usize..=15,
        prop::option::of(0usize..8),
        0usize..400,
    )
        .prop_map(|(s, ssrc, seq, csrcs, ext, payload)| {
            rtp_packet(&mut Rng::new(s), ssrc, seq, csrcs, ext, payload)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn rtp_protect_then_unprotect_is_identity(suite in suite(), key_seed: u64, plain in rtp()) {
        let (mut tx, mut rx) = pair(suite, key_seed);
        let mut buf = with_room(&plain, suite.rtp_overhead());
        let len = tx.protect_rtp(&mut buf, plain.len()).unwrap();
        prop_assert_eq!(len, plain.len() + suite.rtp_tag_len());
        let header_len = plain.len() - payload_len_of(&plain);
        prop_assert_eq!(&buf[..header_len], &plain[..header_len], "header stays in clear");
        prop_assert_eq!(rx.unprotect_rtp(&mut buf[..len]), Ok(plain.len()));
        prop_assert_eq!(&buf[..plain.len()], &plain[..]);
    }

    #[test]
    fn rtcp_protect_then_unprotect_is_identity(suite in suite(), key_seed: u64, s: u64, ssrc: u32, blocks in 0usize..31) {
        let (mut tx, mut rx) = pair(suite, key_seed);
        let plain = rtcp_packet(&mut Rng::new(s), ssrc, blocks);
        let mut buf = with_room(&plain, suite.rtcp_overhead());
        let len = tx.protect_rtcp(&mut buf, plain.len()).unwrap();
        prop_assert_eq!(len, buf.len());
        prop_assert_eq!(rx.unprotect_rtcp(&mut buf[..len]), Ok(plain.len()));
        prop_assert_eq!(&buf[..plain.len()], &plain[..]);
    }

    /// Flip one bit anywhere (header, payload, tag): refused, buffer untouched. A flip
    /// in the header may make it unparseable (Malformed/TooShort) instead of Auth.
    #[test]
    fn any_single_bit_flip_in_srtp_is_refused(suite in suite(), key_seed: u64, plain in rtp(), bit: prop::sample::Index) {
        let (mut tx, mut rx) = pair(suite, key_seed);
        let mut buf = with_room(&plain, suite.rtp_overhead());
        let len = tx.protect_rtp(&mut buf, plain.len()).unwrap();
        let bit = bit.index(len * 8);
        buf[bit / 8] ^= 1 << (bit % 8);
        let before = buf.clone();
        let result = rx.unprotect_rtp(&mut buf);
        prop_assert!(
            matches!(result, Err(SrtpError::Auth | SrtpError::Malformed | SrtpError::TooShort)),
            "bit {} gave {:?}", bit, result
        );
        let header_len = plain.len() - payload_len_of(&plain);
        if bit / 8 >= header_len {
            prop_assert_eq!(result, Err(SrtpError::Auth), "payload or tag bit {}", bit);
        }
        prop_assert_eq!(buf, before, "buffer unchanged on error");
    }

    #[test]
    fn any_single_bit_flip_in_srtcp_is_refused(suite in suite(), key_seed: u64, s: u64, ssrc: u32, blocks in 0usize..4, bit: prop::sample::Index) {
        let (mut tx, mut rx) = pair(suite, key_seed);
        let plain = rtcp_packet(&mut Rng::new(s), ssrc, blocks);
        let mut buf = with_room(&plain, suite.rtcp_overhead());
        let len = tx.protect_rtcp(&mut buf, plain.len()).unwrap();
        let bit = bit.index(len * 8);
        buf[bit / 8] ^= 1 << (bit % 8);
        let before = buf.clone();
        let result = rx.unprotect_rtcp(&mut buf);
        if bit / 8 == 0 && bit % 8 >= 6 {
            prop_assert_eq!(result, Err(SrtpError::Malformed), "version bit");
        } else {
            prop_assert_eq!(result, Err(SrtpError::Auth), "bit {}", bit);
        }
        prop_assert_eq!(buf, before, "buffer unchanged on error");
    }

    #[test]
    fn a_replayed_packet_is_refused(suite in suite(), key_seed: u64, plain in rtp()) {
        let (mut tx, mut rx) = pair(suite, key_seed);
        let mut buf = with_room(&plain, suite.rtp_overhead());
        let len = tx.protect_rtp(&mut buf, plain.len()).unwrap();
        let mut copy = buf.clone();
        prop_assert_eq!(rx.unprotect_rtp(&mut buf[..len]), Ok(plain.len()));
        prop_assert_eq!(rx.unprotect_rtp(&mut copy), Err(SrtpError::Replay));
        // And the sender refuses to protect the same index twice.
        let mut again = with_room(&plain, suite.rtp_overhead());
        prop_assert_eq!(tx.protect_rtp(&mut again, plain.len()), Err(SrtpError::IndexReused));
    }

    /// A burst of 200 packets delivered in an arbitrary order: each is accepted exactly
    /// when a brute-force model of the 128-packet window says so (not seen before, and
    /// fewer than 128 behind the highest accepted), and every one replayed afterwards is
    /// refused.
    #[test]
    fn reordered_packets_accepted_once_as_the_window_model_says(suite in suite(), key_seed: u64, first in 0u16..65_000, swaps in prop::collection::vec((0usize..200, 0usize..200), 0..100)) {
        let (mut tx, mut rx) = pair(suite, key_seed);
        let mut rng = Rng::new(key_seed ^ 0xA5A5);
        let mut wire: Vec<(usize, Vec<u8>, Vec<u8>)> = (0..200u16)
            .map(|i| {
                let plain = rtp_packet(&mut rng, 0xCAFE, first + i, 0, None, 20);
                let mut buf = with_room(&plain, suite.rtp_overhead());
                tx.protect_rtp(&mut buf, plain.len()).unwrap();
                (usize::from(i), plain, buf)
            })
            .collect();
        for (i, j) in swaps {
            wire.swap(i, j);
        }
        let mut highest: Option<usize> = None;
        let mut seen = [false; 200];
        for (i, plain, buf) in &wire {
            let expect_ok = !seen[*i] && highest.is_none_or(|h| *i + 128 > h);
            let mut b = buf.clone();
            let got = rx.unprotect_rtp(&mut b);
            if expect_ok {
                prop_assert_eq!(got, Ok(plain.len()), "packet {}", i);
                prop_assert_eq!(&b[..plain.len()], &plain[..]);
                seen[*i] = true;
                highest = Some(highest.map_or(*i, |h| h.max(*i)));
            } else {
                prop_assert_eq!(got, Err(SrtpError::Replay), "packet {}", i);
            }
        }
        for (_, _, buf) in &wire {
            prop_assert_eq!(rx.unprotect_rtp(&mut buf.clone()), Err(SrtpError::Replay));
        }
    }
}

/// Payload octets of a packet built by `rtp_packet` (header parsed the RFC 3550 way).
fn payload_len_of(p: &[u8]) -> usize {
    let mut header = 12 + 4 * usize::from(p[0] & 0x0F);
    if p[0] & 0x10 != 0 {
        header += 4 + 4 * usize::from(u16::from_be_bytes([p[header + 2], p[header + 3]]));
    }
    p.len() - header
}

/// Adjacent swaps (distance 1..=50) keep every packet within 128 of the highest seen,
/// so all are accepted exactly once.
#[test]
fn bounded_reordering_is_all_accepted() {
    let seed = seed("bounded_reordering_is_all_accepted");
    let mut rng = Rng::new(seed);
    for suite in SrtpSuite::ALL {
        let (mut tx, mut rx) = pair(suite, rng.next_u64());
        let mut wire: Vec<Vec<u8>> = (0..2000u16)
            .map(|i| {
                let plain = rtp_packet(&mut rng, 7, i.wrapping_add(64_000), 0, None, 8);
                let mut buf = with_room(&plain, suite.rtp_overhead());
                tx.protect_rtp(&mut buf, plain.len()).unwrap();
                buf
            })
            .collect();
        // Reverse disjoint chunks of up to 50 packets: displacement < 50 < 128.
        let mut at = 0;
        while at < wire.len() {
            let n = (1 + rng.below(50) as usize).min(wire.len() - at);
            wire[at..at + n].reverse();
            at += n;
        }
        for (i, buf) in wire.iter().enumerate() {
            assert!(
                rx.unprotect_rtp(&mut buf.clone()).is_ok(),
                "{suite:?} packet {i}"
            );
        }
        for buf in &wire {
            assert_eq!(rx.unprotect_rtp(&mut buf.clone()), Err(SrtpError::Replay));
        }
    }
}

/// 70,000 packets from one SSRC (the sequence number wraps once, twice for those that
/// start high), received with 5% loss and reordering of up to 40 places: every packet
/// that arrives decrypts to what was sent, and both sides end on the same ROC.
#[test]
fn rollover_counter_survives_70000_packets_with_loss_and_reorder() {
    let seed = seed("rollover_counter_survives_70000_packets");
    let mut rng = Rng::new(seed);
    for suite in SrtpSuite::ALL {
        let (mut tx, mut rx) = pair(suite, rng.next_u64());
        let first = rng.next_u64() as u16;
        let mut wire: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(70_000);
        for i in 0..70_000u32 {
            let plain = rtp_packet(&mut rng, 0xABCD, first.wrapping_add(i as u16), 0, None, 4);
            let mut buf = with_room(&plain, suite.rtp_overhead());
            tx.protect_rtp(&mut buf, plain.len()).unwrap();
            if rng.below(100) >= 5 {
                wire.push((plain, buf));
            }
        }
        let mut at = 0;
        while at < wire.len() {
            let n = (1 + rng.below(40) as usize).min(wire.len() - at);
            if rng.below(4) == 0 {
                wire[at..at + n].reverse();
            }
            at += n;
        }
        for (i, (plain, buf)) in wire.iter().enumerate() {
            let mut b = buf.clone();
            let n = rx
                .unprotect_rtp(&mut b)
                .unwrap_or_else(|e| panic!("{suite:?} #{i}: {e:?}"));
            assert_eq!(&b[..n], &plain[..]);
        }
        let sent = tx.rtp_highest_index(Ssrc(0xABCD)).unwrap();
        assert_eq!(sent, u64::from(first) + 69_999, "{suite:?}: sender index");
        let received = rx.rtp_highest_index(Ssrc(0xABCD)).unwrap();
        assert_eq!(received >> 16, sent >> 16, "{suite:?}: ROC agrees");
    }
}
