//! Arbitrary and mutated bytes never panic any `new_checked`, `parse` or iterator, and
//! whatever parses re-emits to bytes that parse to the same repr.

use earshot_wire::dtmf::{DtmfPacket, DtmfRepr};
use earshot_wire::rtcp::{self, RtcpPacket, RtcpRepr};
use earshot_wire::rtp::{RtpPacket, RtpRepr};
use proptest::prelude::*;

/// Valid packets to mutate: random bytes rarely get past the version and length checks.
#[rustfmt::skip]
const SEEDS: [&[u8]; 3] = [
    // RTP: 2 CSRCs, one-byte extension, padding.
    &[0xB2, 0x80, 0x12, 0x34, 0xDE, 0xAD, 0xBE, 0xEF, 0x11, 0x22, 0x33, 0x44,
      0xAA, 0xBB, 0xCC, 0xDD, 0x01, 0x02, 0x03, 0x04, 0xBE, 0xDE, 0x00, 0x02,
      0x10, 0x7F, 0x32, 0x01, 0x02, 0x03, 0x00, 0x00, 0xFF, 0xFE, 0xFD, 0xFC,
      0xFB, 0x00, 0x00, 0x03],
    // RTCP: RR with one block, SDES with CNAME, BYE with reason.
    &[0x81, 0xC9, 0x00, 0x07, 0, 0, 0, 1, 0, 0, 0, 2, 0x10, 0xFF, 0xFF, 0xF0,
      0, 1, 0, 5, 0, 0, 0, 9, 1, 2, 3, 4, 0, 0, 0, 8,
      0x81, 0xCA, 0x00, 0x03, 0, 0, 0, 1, 0x01, 0x03, b'a', b'b', b'c', 0x00, 0x00, 0x00,
      0x81, 0xCB, 0x00, 0x02, 0, 0, 0, 1, 0x02, b'o', b'k', 0x00],
    // Two-byte RTP extension.
    &[0x90, 0x08, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0xA0, 0xCA, 0xFE, 0xBA, 0xBE,
      0x10, 0x01, 0x00, 0x02, 0x05, 0x00, 0xC8, 0x03, 0xAA, 0xBB, 0xCC, 0x00,
      0xD5, 0xD5, 0xD5, 0xD5],
];

fn mutated() -> impl Strategy<Value = Vec<u8>> {
    (
        0..SEEDS.len(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(seed, edits, cut)| {
            let mut bytes = SEEDS[seed].to_vec();
            for (at, value) in edits {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            let keep = cut.index(bytes.len() + 1);
            // Truncate only sometimes, so edits that keep the length get exercised too.
            if keep % 3 == 0 {
                bytes.truncate(keep);
            }
            bytes
        })
}

fn any_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![prop::collection::vec(any::<u8>(), 0..300), mutated()]
}

/// Touches every accessor and iterator of an RTP view and checks the parse/emit cycle.
fn exercise_rtp(bytes: &[u8]) {
    if let Ok(packet) = RtpPacket::new_checked(bytes) {
        let sum = u32::from(packet.seq().0)
            ^ packet.ts().0
            ^ packet.ssrc().0
            ^ packet.csrcs().fold(0, |acc, c| acc ^ c.0);
        std::hint::black_box(sum);
        assert!(packet.header_len() + packet.padding_len() <= bytes.len());
        assert_eq!(
            packet.header_len() + packet.payload().len() + packet.padding_len(),
            bytes.len()
        );
        if let Some(ext) = packet.extension() {
            let mut errors = 0;
            for element in ext.elements() {
                match element {
                    Ok(e) => assert!(e.data.len() <= ext.data.len()),
                    Err(_) => errors += 1,
                }
            }
            assert!(errors <= 1, "the iterator stops after an error");
        }
    }
    match RtpRepr::parse(&RtpPacket::new_unchecked(bytes)) {
        Ok(repr) => {
            assert_eq!(repr.buffer_len(), bytes.len());
            let mut out = vec![0u8; repr.buffer_len()];
            repr.emit(&mut RtpPacket::new_unchecked(&mut out[..]));
            assert_eq!(
                RtpRepr::parse(&RtpPacket::new_unchecked(&out[..])),
                Ok(repr)
            );
        }
        Err(e) => assert!(!e.reason().is_empty()),
    }
}

fn exercise_rtcp(bytes: &[u8]) {
    let mut errors = 0;
    for packet in rtcp::packets(bytes) {
        let Ok(packet) = packet else {
            errors += 1;
            continue;
        };
        std::hint::black_box((packet.count(), packet.packet_type(), packet.body().len()));
        let Ok(repr) = RtcpRepr::parse(&packet) else {
            continue;
        };
        match repr {
            RtcpRepr::SenderReport(sr) => {
                std::hint::black_box(sr.reports.iter().count());
            }
            RtcpRepr::ReceiverReport(rr) => {
                std::hint::black_box(rr.reports.iter().count());
            }
            RtcpRepr::SourceDescription(chunks) => {
                for chunk in chunks.iter() {
                    std::hint::black_box(chunk.items.iter().count());
                    std::hint::black_box(chunk.items.cname());
                }
            }
            RtcpRepr::Goodbye(bye) => {
                std::hint::black_box(bye.sources.iter().count());
            }
            RtcpRepr::App(_) | RtcpRepr::Unknown { .. } => {}
        }
        // Anything parsed from the wire can be emitted again (e.g. relayed) unchanged.
        let mut out = vec![0u8; repr.buffer_len()];
        repr.emit(&mut RtcpPacket::new_unchecked(&mut out[..]));
        assert_eq!(
            RtcpRepr::parse(&RtcpPacket::new_unchecked(&out[..])),
            Ok(repr)
        );
    }
    assert!(errors <= 1, "compound iteration stops after an error");
    let _ = RtcpRepr::parse(&RtcpPacket::new_unchecked(bytes));
}

fn exercise_dtmf(bytes: &[u8]) {
    if let Ok(repr) = DtmfRepr::parse(&DtmfPacket::new_unchecked(bytes)) {
        assert!(repr.volume <= 63);
        assert!(bytes.len() >= 4);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn rtp_views_and_parse_never_panic(bytes in any_bytes()) {
        exercise_rtp(&bytes);
    }

    #[test]
    fn rtcp_compounds_and_parse_never_panic(bytes in any_bytes()) {
        exercise_rtcp(&bytes);
    }

    #[test]
    fn dtmf_parse_never_panics(bytes in any_bytes()) {
        exercise_dtmf(&bytes);
    }
}
