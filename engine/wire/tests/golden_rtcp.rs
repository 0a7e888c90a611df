//! RTCP compounds against byte vectors written by hand from RFC 3550 section 6, emission
//! of the SR + SDES CNAME compound the engine sends, and each rejection reason.

use earshot_types::{RtpTs, Ssrc};
use earshot_wire::Error;
use earshot_wire::rtcp::{
    self, App, Goodbye, PacketType, ReportBlock, ReportBlocks, RtcpPacket, RtcpRepr, SdesChunk,
    SdesChunks, SdesItem, SdesItemType, SdesItems, SenderInfo, SenderReport, SsrcList,
};

/// SR (1 report block) followed by SDES with one chunk holding CNAME "earshot@lab".
#[rustfmt::skip]
const SR_SDES: [u8; 76] = [
    // SR header: V=2 P=0 RC=1, PT=200, length 12 words (52 bytes).
    0x81, 0xC8, 0x00, 0x0C,
    0x01, 0x02, 0x03, 0x04, // sender SSRC
    0xE1, 0x23, 0x45, 0x67, // NTP seconds
    0x89, 0xAB, 0xCD, 0xEF, // NTP fraction
    0x00, 0x00, 0x1F, 0x40, // RTP ts 8000
    0x00, 0x00, 0x00, 0x64, // packet count 100
    0x00, 0x00, 0x3E, 0x80, // octet count 16000
    // report block
    0x0A, 0x0B, 0x0C, 0x0D, // source SSRC
    0x40, 0xFF, 0xFF, 0xFE, // fraction 64/256, cumulative lost -2
    0x00, 0x01, 0x00, 0x05, // extended highest seq: 1 cycle, seq 5
    0x00, 0x00, 0x00, 0x10, // jitter 16
    0x45, 0x67, 0x89, 0x12, // LSR
    0x00, 0x01, 0x00, 0x00, // DLSR 1 s
    // SDES header: V=2 P=0 SC=1, PT=202, length 5 words (24 bytes).
    0x81, 0xCA, 0x00, 0x05,
    0x01, 0x02, 0x03, 0x04, // chunk SSRC
    0x01, 0x0B, b'e', b'a', // CNAME, 11 bytes
    b'r', b's', b'h', b'o',
    b't', b'@', b'l', b'a',
    b'b', 0x00, 0x00, 0x00, // terminator + padding to the word
];

/// BYE for two sources with reason "hangup".
#[rustfmt::skip]
const BYE_REASON: [u8; 20] = [
    0x82, 0xCB, 0x00, 0x04,
    0x01, 0x02, 0x03, 0x04,
    0x05, 0x06, 0x07, 0x08,
    0x06, b'h', b'a', b'n',
    b'g', b'u', b'p', 0x00,
];

/// RR with no blocks, padded by 4 bytes (P=1), then APP subtype 3 named "ERSH".
#[rustfmt::skip]
const RR_PADDED: [u8; 12] = [
    0xA0, 0xC9, 0x00, 0x02,
    0x0F, 0x0E, 0x0D, 0x0C,
    0x00, 0x00, 0x00, 0x04,
];
#[rustfmt::skip]
const APP: [u8; 16] = [
    0x83, 0xCC, 0x00, 0x03,
    0x01, 0x02, 0x03, 0x04,
    b'E', b'R', b'S', b'H',
    0xDE, 0xAD, 0xBE, 0xEF,
];

fn parse_all(datagram: &[u8]) -> Result<Vec<RtcpRepr<'_>>, Error> {
    rtcp::packets(datagram)
        .map(|p| p.and_then(|p| RtcpRepr::parse(&p)))
        .collect()
}

#[test]
fn sr_plus_sdes_compound_reads_every_field() {
    let reprs = parse_all(&SR_SDES).expect("valid compound");
    assert_eq!(reprs.len(), 2);
    let RtcpRepr::SenderReport(sr) = reprs[0] else {
        panic!("first packet is {:?}", reprs[0]);
    };
    assert_eq!(sr.ssrc, Ssrc(0x0102_0304));
    assert_eq!(
        sr.sender_info,
        SenderInfo {
            ntp_ts: 0xE123_4567_89AB_CDEF,
            rtp_ts: RtpTs(8000),
            packet_count: 100,
            octet_count: 16_000,
        }
    );
    assert!(sr.profile_extension.is_empty());
    let blocks: Vec<ReportBlock> = sr.reports.iter().collect();
    assert_eq!(
        blocks,
        [ReportBlock {
            ssrc: Ssrc(0x0A0B_0C0D),
            fraction_lost: 64,
            cumulative_lost: -2,
            ext_highest_seq: 0x0001_0005,
            jitter: 16,
            lsr: 0x4567_8912,
            dlsr: 0x0001_0000,
        }]
    );

    let RtcpRepr::SourceDescription(chunks) = reprs[1] else {
        panic!("second packet is {:?}", reprs[1]);
    };
    let chunks: Vec<SdesChunk<'_>> = chunks.iter().collect();
    assert_eq!(chunks.len(), 1);
    assert_eq!(chunks[0].ssrc, Ssrc(0x0102_0304));
    assert_eq!(chunks[0].items.cname(), Some(&b"earshot@lab"[..]));
    assert_eq!(chunks[0].items.iter().count(), 1);
}

#[test]
fn engine_sr_and_cname_emit_to_the_golden_compound() {
    let block = [ReportBlock {
        ssrc: Ssrc(0x0A0B_0C0D),
        fraction_lost: 64,
        cumulative_lost: -2,
        ext_highest_seq: 0x0001_0005,
        jitter: 16,
        lsr: 0x4567_8912,
        dlsr: 0x0001_0000,
    }];
    let items = [SdesItem {
        kind: SdesItemType::Cname,
        value: b"earshot@lab",
    }];
    let chunk = [SdesChunk {
        ssrc: Ssrc(0x0102_0304),
        items: SdesItems::from_slice(&items),
    }];
    let reprs = [
        RtcpRepr::SenderReport(SenderReport {
            ssrc: Ssrc(0x0102_0304),
            sender_info: SenderInfo {
                ntp_ts: 0xE123_4567_89AB_CDEF,
                rtp_ts: RtpTs(8000),
                packet_count: 100,
                octet_count: 16_000,
            },
            reports: ReportBlocks::from_slice(&block).unwrap(),
            profile_extension: &[],
        }),
        RtcpRepr::SourceDescription(SdesChunks::from_slice(&chunk).unwrap()),
    ];
    assert_eq!(rtcp::compound_buffer_len(&reprs), SR_SDES.len());
    let mut out = [0xAAu8; 100];
    let written = rtcp::emit_compound(&reprs, &mut out).unwrap();
    assert_eq!(&out[..written], &SR_SDES[..]);
    // Parsed (wire-backed) and built (slice-backed) reprs compare equal.
    assert_eq!(parse_all(&SR_SDES).unwrap(), reprs);

    let mut small = [0u8; 75];
    assert_eq!(
        rtcp::emit_compound(&reprs, &mut small),
        Err(Error::Capacity)
    );
}

#[test]
fn bye_with_reason_reads_sources_and_reason() {
    let reprs = parse_all(&BYE_REASON).unwrap();
    let RtcpRepr::Goodbye(bye) = reprs[0] else {
        panic!("not a BYE: {:?}", reprs[0]);
    };
    assert_eq!(
        bye.sources.iter().collect::<Vec<_>>(),
        [Ssrc(0x0102_0304), Ssrc(0x0506_0708)]
    );
    assert_eq!(bye.reason, Some(&b"hangup"[..]));

    let sources = [Ssrc(0x0102_0304), Ssrc(0x0506_0708)];
    let built = RtcpRepr::Goodbye(Goodbye {
        sources: SsrcList::from_slice(&sources).unwrap(),
        reason: Some(b"hangup"),
    });
    let mut out = [0u8; 20];
    built.emit(&mut RtcpPacket::new_unchecked(&mut out[..]));
    assert_eq!(out, BYE_REASON);
}

#[test]
fn padding_is_accepted_only_on_the_last_packet() {
    let mut last_padded = Vec::from(APP);
    last_padded.extend_from_slice(&RR_PADDED);
    let reprs = parse_all(&last_padded).unwrap();
    assert_eq!(
        reprs[0],
        RtcpRepr::App(App {
            subtype: 3,
            ssrc: Ssrc(0x0102_0304),
            name: *b"ERSH",
            data: &[0xDE, 0xAD, 0xBE, 0xEF],
        })
    );
    let RtcpRepr::ReceiverReport(rr) = reprs[1] else {
        panic!("not an RR: {:?}", reprs[1]);
    };
    assert_eq!(rr.ssrc, Ssrc(0x0F0E_0D0C));
    assert!(rr.reports.is_empty());
    assert!(rr.profile_extension.is_empty(), "padding is not body");

    let mut padded_first = Vec::from(RR_PADDED);
    padded_first.extend_from_slice(&APP);
    let results: Vec<_> = rtcp::packets(&padded_first).collect();
    assert_eq!(results.len(), 1, "iteration stops at the error");
    assert_eq!(results[0].unwrap_err(), Error::BadPadding);
}

#[test]
fn each_malformation_is_rejected_with_its_reason() {
    let first_error = |bytes: &[u8]| parse_all(bytes).unwrap_err();
    // Header cut short, then a length that runs past the datagram.
    assert_eq!(first_error(&SR_SDES[..3]), Error::Truncated);
    assert_eq!(first_error(&SR_SDES[..50]), Error::Truncated);
    // Trailing bytes that cannot hold another header.
    let mut trailing = Vec::from(BYE_REASON);
    trailing.extend_from_slice(&[0x80, 0xC9]);
    assert_eq!(first_error(&trailing), Error::Truncated);

    let mut version = BYE_REASON;
    version[0] = 0x42;
    assert_eq!(first_error(&version), Error::BadVersion);

    // SR claims 2 report blocks but its length only holds one.
    let mut count = SR_SDES;
    count[0] = 0x82;
    assert_eq!(first_error(&count), Error::Truncated);

    // SDES chunk without a null terminator before the packet ends.
    let mut sdes = SR_SDES;
    sdes[73] = b'!'; // an item of type 33 ...
    sdes[74] = 5; // ... whose 5 bytes run past the packet
    assert_eq!(first_error(&sdes), Error::BadSdes);
    // SDES announcing no chunks but carrying one.
    let mut sdes_count = SR_SDES;
    sdes_count[52] = 0x80;
    assert_eq!(first_error(&sdes_count), Error::BadLength);

    // BYE reason longer than the packet.
    let mut reason = BYE_REASON;
    reason[12] = 8;
    assert_eq!(first_error(&reason), Error::BadLength);

    // Padding count not a multiple of 4, and padding eating the header word.
    let mut pad = RR_PADDED;
    pad[11] = 3;
    assert_eq!(first_error(&pad), Error::BadPadding);
    pad[11] = 12;
    assert_eq!(first_error(&pad), Error::BadPadding);
}

#[test]
fn unknown_packet_types_are_kept_raw() {
    // RFC 4585 PSFB (206), FMT 1 (PLI): sender SSRC + media SSRC.
    let pli = [0x81, 0xCE, 0x00, 0x02, 0, 0, 0, 1, 0, 0, 0, 2];
    let packet = RtcpPacket::new_checked(&pli[..]).unwrap();
    assert_eq!(packet.packet_type(), PacketType::Unknown(206));
    assert_eq!(
        RtcpRepr::parse(&packet).unwrap(),
        RtcpRepr::Unknown {
            packet_type: 206,
            count: 1,
            body: &pli[4..]
        }
    );
}

#[test]
fn cumulative_lost_is_clamped_to_24_bits_on_emit() {
    let blocks = [
        ReportBlock {
            cumulative_lost: 10_000_000,
            ..ReportBlock::default()
        },
        ReportBlock {
            cumulative_lost: -10_000_000,
            ..ReportBlock::default()
        },
    ];
    let rr = RtcpRepr::ReceiverReport(rtcp::ReceiverReport {
        ssrc: Ssrc(1),
        reports: ReportBlocks::from_slice(&blocks).unwrap(),
        profile_extension: &[],
    });
    let mut out = vec![0u8; rr.buffer_len()];
    rr.emit(&mut RtcpPacket::new_unchecked(&mut out[..]));
    let RtcpRepr::ReceiverReport(parsed) = parse_all(&out).unwrap()[0] else {
        panic!("not an RR");
    };
    let lost: Vec<i32> = parsed.reports.iter().map(|b| b.cumulative_lost).collect();
    assert_eq!(
        lost,
        [
            ReportBlock::CUMULATIVE_LOST_MAX,
            ReportBlock::CUMULATIVE_LOST_MIN
        ]
    );
    assert_eq!(ReportBlock::CUMULATIVE_LOST_MAX, 8_388_607);
}
