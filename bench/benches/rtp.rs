//! Wire-format costs on the per-packet path: parsing a 172-byte PCMU packet (view alone,
//! and view plus validated repr), re-stamping it in place for forwarding, emitting a
//! header, and the RTCP SR + SDES compound each leg sends every few seconds.
//!
//! Each bench checks its result once before timing, so the measured work is the work
//! that produces a correct answer and cannot be optimised away.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use earshot_types::{PayloadType, RtpTs, SeqNo, Ssrc};
use earshot_wire::rtcp::{
    self, ReportBlock, ReportBlocks, RtcpRepr, SdesChunk, SdesChunks, SdesItem, SdesItemType,
    SdesItems, SenderInfo, SenderReport,
};
use earshot_wire::rtp::{CsrcList, RtpPacket, RtpRepr};

/// 12-byte header + 160 bytes of 20 ms PCMU.
const PCMU_PACKET_LEN: usize = 172;

fn header_repr(seq: u16, ts: u32, payload: &[u8]) -> RtpRepr<'_> {
    RtpRepr {
        marker: false,
        payload_type: PayloadType::PCMU,
        seq: SeqNo(seq),
        ts: RtpTs(ts),
        ssrc: Ssrc(0x1234_5678),
        csrcs: CsrcList::EMPTY,
        extension: None,
        payload,
        padding_len: 0,
    }
}

fn pcmu_packet() -> [u8; PCMU_PACKET_LEN] {
    let payload = [0xD5u8; 160];
    let mut buf = [0u8; PCMU_PACKET_LEN];
    header_repr(1000, 160_000, &payload).emit(&mut RtpPacket::new_unchecked(&mut buf[..]));
    buf
}

/// Reads what the forwarding path reads: the view's fields and the payload length.
fn parse_view(bytes: &[u8]) -> (u16, u32, u32, usize) {
    match RtpPacket::new_checked(bytes) {
        Ok(p) => (p.seq().0, p.ts().0, p.ssrc().0, p.payload().len()),
        Err(_) => (0, 0, 0, 0),
    }
}

fn parse_repr(bytes: &[u8]) -> Option<RtpRepr<'_>> {
    RtpPacket::new_checked(bytes)
        .and_then(|p| RtpRepr::parse(&p))
        .ok()
}

fn restamp(buf: &mut [u8], seq: SeqNo, ts: RtpTs, ssrc: Ssrc) -> bool {
    match RtpPacket::new_checked(buf) {
        Ok(mut p) => {
            p.set_seq(seq);
            p.set_ts(ts);
            p.set_ssrc(ssrc);
            true
        }
        Err(_) => false,
    }
}

fn rtp(c: &mut Criterion) {
    let packet = pcmu_packet();

    assert_eq!(parse_view(&packet), (1000, 160_000, 0x1234_5678, 160));
    c.bench_function("rtp/parse_view_pcmu_172B", |b| {
        b.iter(|| parse_view(black_box(&packet)))
    });

    let repr = parse_repr(&packet).expect("the packet is valid");
    assert_eq!((repr.seq, repr.payload.len()), (SeqNo(1000), 160));
    c.bench_function("rtp/parse_view_and_repr_pcmu_172B", |b| {
        b.iter(|| parse_repr(black_box(&packet)).map(|r| r.payload.len()))
    });

    let mut buf = packet;
    assert!(restamp(&mut buf, SeqNo(7), RtpTs(8), Ssrc(9)));
    let view = RtpPacket::new_checked(&buf[..]).unwrap();
    assert_eq!(
        (view.seq(), view.ts(), view.ssrc()),
        (SeqNo(7), RtpTs(8), Ssrc(9))
    );
    let mut seq = 0u16;
    c.bench_function("rtp/restamp_seq_ts_ssrc_in_place", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            restamp(
                black_box(&mut buf),
                SeqNo(seq),
                RtpTs(u32::from(seq) * 160),
                black_box(Ssrc(0xCAFE_F00D)),
            )
        })
    });

    let mut out = [0u8; PCMU_PACKET_LEN];
    let header = header_repr(1000, 160_000, &[]);
    header.emit(&mut RtpPacket::new_unchecked(&mut out[..]));
    assert_eq!(out[..12], packet[..12]);
    c.bench_function("rtp/emit_header_12B", |b| {
        b.iter(|| {
            let repr = header_repr(black_box(1001), black_box(160_160), &[]);
            repr.emit(&mut RtpPacket::new_unchecked(black_box(&mut out[..])));
            out[3]
        })
    });
}

fn rtcp_sr_sdes(c: &mut Criterion) {
    let blocks = [ReportBlock {
        ssrc: Ssrc(0x0A0B_0C0D),
        fraction_lost: 3,
        cumulative_lost: 12,
        ext_highest_seq: 70_000,
        jitter: 40,
        lsr: 0x1234_5678,
        dlsr: 0x0001_0000,
    }];
    let items = [SdesItem {
        kind: SdesItemType::Cname,
        value: b"leg-42@earshot",
    }];
    let chunks = [SdesChunk {
        ssrc: Ssrc(0x0102_0304),
        items: SdesItems::from_slice(&items),
    }];
    let compound = |ntp_ts: u64| {
        [
            RtcpRepr::SenderReport(SenderReport {
                ssrc: Ssrc(0x0102_0304),
                sender_info: SenderInfo {
                    ntp_ts,
                    rtp_ts: RtpTs(8000),
                    packet_count: 500,
                    octet_count: 80_000,
                },
                reports: ReportBlocks::from_slice(&blocks).expect("one block"),
                profile_extension: &[],
            }),
            RtcpRepr::SourceDescription(SdesChunks::from_slice(&chunks).expect("one chunk")),
        ]
    };
    let reprs = compound(1 << 40);
    let mut buf = [0u8; 256];
    let len = rtcp::emit_compound(&reprs, &mut buf).expect("fits");
    let parsed: Vec<RtcpRepr<'_>> = rtcp::packets(&buf[..len])
        .map(|p| RtcpRepr::parse(&p.unwrap()).unwrap())
        .collect();
    assert_eq!(parsed, reprs);

    c.bench_function("rtcp/emit_sr_1block_plus_sdes_cname", |b| {
        b.iter(|| rtcp::emit_compound(&compound(black_box(1 << 41)), black_box(&mut buf)))
    });
    let datagram = &buf[..len];
    c.bench_function("rtcp/parse_sr_1block_plus_sdes_cname", |b| {
        b.iter(|| {
            let mut jitter = 0;
            for packet in rtcp::packets(black_box(datagram)) {
                match packet.and_then(|p| RtcpRepr::parse(&p)) {
                    Ok(RtcpRepr::SenderReport(sr)) => {
                        jitter += sr.reports.iter().map(|b| b.jitter).sum::<u32>();
                    }
                    Ok(RtcpRepr::SourceDescription(chunks)) => {
                        jitter += chunks.iter().filter_map(|c| c.items.cname()).count() as u32;
                    }
                    _ => {}
                }
            }
            jitter
        })
    });
}

criterion_group!(benches, rtp, rtcp_sr_sdes);
criterion_main!(benches);
