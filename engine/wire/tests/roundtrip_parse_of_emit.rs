//! `parse(emit(repr)) == repr` for arbitrary representations within their documented
//! bounds, and `buffer_len` is exactly what `emit` writes.

use earshot_types::{PayloadType, RtpTs, SeqNo, Ssrc};
use earshot_wire::dtmf::{DtmfEvent, DtmfPacket, DtmfRepr};
use earshot_wire::rtcp::{
    self, App, Goodbye, ReceiverReport, ReportBlock, ReportBlocks, RtcpRepr, SdesChunk, SdesChunks,
    SdesItem, SdesItemType, SdesItems, SenderInfo, SenderReport, SsrcList,
};
use earshot_wire::rtp::{CsrcList, HeaderExtension, RtpPacket, RtpRepr};
use proptest::prelude::*;

fn words(max_words: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<[u8; 4]>(), 0..=max_words)
        .prop_map(|w| w.into_iter().flatten().collect())
}

#[derive(Debug, Clone)]
struct RtpCase {
    marker: bool,
    payload_type: u8,
    seq: u16,
    ts: u32,
    ssrc: u32,
    csrcs: Vec<u32>,
    extension: Option<(u16, Vec<u8>)>,
    payload: Vec<u8>,
    padding_len: u8,
}

fn rtp_case() -> impl Strategy<Value = RtpCase> {
    (
        (
            any::<bool>(),
            0u8..128,
            any::<u16>(),
            any::<u32>(),
            any::<u32>(),
        ),
        prop::collection::vec(any::<u32>(), 0..=15),
        prop::option::of((any::<u16>(), words(16))),
        prop::collection::vec(any::<u8>(), 0..200),
        any::<u8>(),
    )
        .prop_map(
            |((marker, payload_type, seq, ts, ssrc), csrcs, extension, payload, padding_len)| {
                RtpCase {
                    marker,
                    payload_type,
                    seq,
                    ts,
                    ssrc,
                    csrcs,
                    extension,
                    payload,
                    padding_len,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn rtp_repr_round_trips(case in rtp_case()) {
        let csrcs: Vec<Ssrc> = case.csrcs.iter().copied().map(Ssrc).collect();
        let repr = RtpRepr {
            marker: case.marker,
            payload_type: PayloadType(case.payload_type),
            seq: SeqNo(case.seq),
            ts: RtpTs(case.ts),
            ssrc: Ssrc(case.ssrc),
            csrcs: CsrcList::from_slice(&csrcs).unwrap(),
            extension: case.extension.as_ref().map(|(profile, data)| HeaderExtension {
                profile: *profile,
                data,
            }),
            payload: &case.payload,
            padding_len: case.padding_len,
        };
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut RtpPacket::new_unchecked(&mut buf[..]));
        let packet = RtpPacket::new_checked(&buf[..]).unwrap();
        prop_assert_eq!(packet.header_len(), repr.header_len());
        prop_assert_eq!(RtpRepr::parse(&packet).unwrap(), repr);
    }

    #[test]
    fn dtmf_repr_round_trips(code in any::<u8>(), end in any::<bool>(), volume in 0u8..=63, duration in any::<u16>()) {
        let repr = DtmfRepr { event: DtmfEvent::from(code), end, volume, duration };
        let mut buf = [0u8; 4];
        repr.emit(&mut DtmfPacket::new_unchecked(&mut buf[..]));
        prop_assert_eq!(DtmfRepr::parse(&DtmfPacket::new_checked(&buf[..]).unwrap()).unwrap(), repr);
    }
}

/// One SDES chunk as owned data: SSRC and (item type, value) pairs.
type OwnedChunk = (u32, Vec<(u8, Vec<u8>)>);

/// Owned data from which one RTCP repr borrows.
#[derive(Debug, Clone)]
enum RtcpCase {
    Sr {
        ssrc: u32,
        info: (u64, u32, u32, u32),
        blocks: Vec<ReportBlock>,
        ext: Vec<u8>,
    },
    Rr {
        ssrc: u32,
        blocks: Vec<ReportBlock>,
        ext: Vec<u8>,
    },
    Sdes(Vec<OwnedChunk>),
    Bye {
        ssrcs: Vec<Ssrc>,
        reason: Option<Vec<u8>>,
    },
    App {
        subtype: u8,
        ssrc: u32,
        name: [u8; 4],
        data: Vec<u8>,
    },
    Unknown {
        packet_type: u8,
        count: u8,
        body: Vec<u8>,
    },
}

fn report_block() -> impl Strategy<Value = ReportBlock> {
    (
        any::<u32>(),
        any::<u8>(),
        ReportBlock::CUMULATIVE_LOST_MIN..=ReportBlock::CUMULATIVE_LOST_MAX,
        any::<[u32; 4]>(),
    )
        .prop_map(
            |(ssrc, fraction_lost, cumulative_lost, [ext_highest_seq, jitter, lsr, dlsr])| {
                ReportBlock {
                    ssrc: Ssrc(ssrc),
                    fraction_lost,
                    cumulative_lost,
                    ext_highest_seq,
                    jitter,
                    lsr,
                    dlsr,
                }
            },
        )
}

fn rtcp_case() -> impl Strategy<Value = RtcpCase> {
    let blocks = || prop::collection::vec(report_block(), 0..=31);
    let item = (1u8..=255, prop::collection::vec(any::<u8>(), 0..=255));
    let chunk = (any::<u32>(), prop::collection::vec(item, 0..4));
    prop_oneof![
        (
            any::<u32>(),
            any::<(u64, u32, u32, u32)>(),
            blocks(),
            words(3)
        )
            .prop_map(|(ssrc, info, blocks, ext)| RtcpCase::Sr {
                ssrc,
                info,
                blocks,
                ext
            }),
        (any::<u32>(), blocks(), words(3)).prop_map(|(ssrc, blocks, ext)| RtcpCase::Rr {
            ssrc,
            blocks,
            ext
        }),
        prop::collection::vec(chunk, 0..=31).prop_map(RtcpCase::Sdes),
        (
            prop::collection::vec(any::<u32>().prop_map(Ssrc), 0..=31),
            prop::option::of(prop::collection::vec(any::<u8>(), 0..=255)),
        )
            .prop_map(|(ssrcs, reason)| RtcpCase::Bye { ssrcs, reason }),
        (0u8..32, any::<u32>(), any::<[u8; 4]>(), words(8)).prop_map(
            |(subtype, ssrc, name, data)| RtcpCase::App {
                subtype,
                ssrc,
                name,
                data
            }
        ),
        (
            any::<u8>().prop_filter("not a parsed type", |pt| !(200..=204).contains(pt)),
            0u8..32,
            words(8)
        )
            .prop_map(|(packet_type, count, body)| RtcpCase::Unknown {
                packet_type,
                count,
                body
            }),
    ]
}

/// Calls `check` with the repr `case` describes; nested SDES slices need local storage.
fn with_repr(case: &RtcpCase, check: &mut dyn FnMut(RtcpRepr<'_>)) {
    match case {
        RtcpCase::Sr {
            ssrc,
            info,
            blocks,
            ext,
        } => check(RtcpRepr::SenderReport(SenderReport {
            ssrc: Ssrc(*ssrc),
            sender_info: SenderInfo {
                ntp_ts: info.0,
                rtp_ts: RtpTs(info.1),
                packet_count: info.2,
                octet_count: info.3,
            },
            reports: ReportBlocks::from_slice(blocks).unwrap(),
            profile_extension: ext,
        })),
        RtcpCase::Rr { ssrc, blocks, ext } => check(RtcpRepr::ReceiverReport(ReceiverReport {
            ssrc: Ssrc(*ssrc),
            reports: ReportBlocks::from_slice(blocks).unwrap(),
            profile_extension: ext,
        })),
        RtcpCase::Sdes(chunks) => {
            let items: Vec<Vec<SdesItem<'_>>> = chunks
                .iter()
                .map(|(_, items)| {
                    items
                        .iter()
                        .map(|(kind, value)| SdesItem {
                            kind: SdesItemType::from(*kind),
                            value,
                        })
                        .collect()
                })
                .collect();
            let chunks: Vec<SdesChunk<'_>> = chunks
                .iter()
                .zip(&items)
                .map(|((ssrc, _), items)| SdesChunk {
                    ssrc: Ssrc(*ssrc),
                    items: SdesItems::from_slice(items),
                })
                .collect();
            check(RtcpRepr::SourceDescription(
                SdesChunks::from_slice(&chunks).unwrap(),
            ));
        }
        RtcpCase::Bye { ssrcs, reason } => check(RtcpRepr::Goodbye(Goodbye {
            sources: SsrcList::from_slice(ssrcs).unwrap(),
            reason: reason.as_deref(),
        })),
        RtcpCase::App {
            subtype,
            ssrc,
            name,
            data,
        } => check(RtcpRepr::App(App {
            subtype: *subtype,
            ssrc: Ssrc(*ssrc),
            name: *name,
            data,
        })),
        RtcpCase::Unknown {
            packet_type,
            count,
            body,
        } => check(RtcpRepr::Unknown {
            packet_type: *packet_type,
            count: *count,
            body,
        }),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn rtcp_repr_round_trips(case in rtcp_case()) {
        with_repr(&case, &mut |repr| {
            let mut buf = vec![0u8; repr.buffer_len()];
            repr.emit(&mut rtcp::RtcpPacket::new_unchecked(&mut buf[..]));
            let packet = rtcp::RtcpPacket::new_checked(&buf[..]).unwrap();
            assert_eq!(packet.total_len(), buf.len());
            assert_eq!(RtcpRepr::parse(&packet).unwrap(), repr);
        });
    }

    /// A compound of several packets frames back into the same packets, in order.
    #[test]
    fn rtcp_compound_round_trips(a in rtcp_case(), b in rtcp_case(), c in rtcp_case()) {
        with_repr(&a, &mut |ra| {
            with_repr(&b, &mut |rb| {
                with_repr(&c, &mut |rc| {
                    let reprs = [ra, rb, rc];
                    let mut buf = vec![0u8; rtcp::compound_buffer_len(&reprs)];
                    let written = rtcp::emit_compound(&reprs, &mut buf).unwrap();
                    assert_eq!(written, buf.len());
                    let parsed: Vec<RtcpRepr<'_>> = rtcp::packets(&buf)
                        .map(|p| RtcpRepr::parse(&p.unwrap()).unwrap())
                        .collect();
                    assert_eq!(parsed, reprs);
                });
            });
        });
    }
}
