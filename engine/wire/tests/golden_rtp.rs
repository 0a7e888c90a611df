//! RTP and RFC 8285 parsing against byte vectors written by hand from the RFC layouts,
//! in-place re-stamping, and each rejection reason.

use earshot_types::{PayloadType, RtpTs, SeqNo, Ssrc};
use earshot_wire::Error;
use earshot_wire::rtp::{
    CsrcList, ExtensionElement, ExtensionForm, HeaderExtension, RtpPacket, RtpRepr,
};

/// V=2 P=1 X=1 CC=2, M=1 PT=0, seq 0x1234, ts 0xDEADBEEF, SSRC 0x11223344, CSRCs
/// 0xAABBCCDD and 0x01020304, one-byte extension (id 1 len 1, id 3 len 3, 2 padding
/// bytes), 5 payload bytes, 3 bytes of padding.
#[rustfmt::skip]
const RTP_CSRC_EXT_PAD: [u8; 40] = [
    0xB2, 0x80, 0x12, 0x34,
    0xDE, 0xAD, 0xBE, 0xEF,
    0x11, 0x22, 0x33, 0x44,
    0xAA, 0xBB, 0xCC, 0xDD,
    0x01, 0x02, 0x03, 0x04,
    0xBE, 0xDE, 0x00, 0x02,
    0x10, 0x7F, 0x32, 0x01,
    0x02, 0x03, 0x00, 0x00,
    0xFF, 0xFE, 0xFD, 0xFC,
    0xFB, 0x00, 0x00, 0x03,
];

/// V=2 X=1 CC=0, M=0 PT=8, two-byte extension profile 0x1001 (id 5 empty, id 200 with
/// 3 bytes, 1 padding byte), 4 payload bytes.
#[rustfmt::skip]
const RTP_TWO_BYTE_EXT: [u8; 28] = [
    0x90, 0x08, 0xFF, 0xFF,
    0x00, 0x00, 0x00, 0xA0,
    0xCA, 0xFE, 0xBA, 0xBE,
    0x10, 0x01, 0x00, 0x02,
    0x05, 0x00, 0xC8, 0x03,
    0xAA, 0xBB, 0xCC, 0x00,
    0xD5, 0xD5, 0xD5, 0xD5,
];

#[test]
fn packet_with_csrcs_one_byte_extension_and_padding_reads_every_field() {
    let packet = RtpPacket::new_checked(&RTP_CSRC_EXT_PAD[..]).expect("valid packet");
    assert_eq!(packet.version(), 2);
    assert!(packet.padding_flag());
    assert!(packet.extension_flag());
    assert_eq!(packet.csrc_count(), 2);
    assert!(packet.marker());
    assert_eq!(packet.payload_type(), PayloadType::PCMU);
    assert_eq!(packet.seq(), SeqNo(0x1234));
    assert_eq!(packet.ts(), RtpTs(0xDEAD_BEEF));
    assert_eq!(packet.ssrc(), Ssrc(0x1122_3344));
    let csrcs: Vec<Ssrc> = packet.csrcs().collect();
    assert_eq!(csrcs, [Ssrc(0xAABB_CCDD), Ssrc(0x0102_0304)]);
    assert_eq!(packet.csrc(2), None);
    assert_eq!(packet.header_len(), 32);
    assert_eq!(packet.padding_len(), 3);
    assert_eq!(packet.payload(), &[0xFF, 0xFE, 0xFD, 0xFC, 0xFB]);

    let ext = packet.extension().expect("X bit set");
    assert_eq!(ext.profile, 0xBEDE);
    assert_eq!(ext.form(), ExtensionForm::OneByte);
    let elements: Vec<ExtensionElement<'_>> = ext.elements().map(Result::unwrap).collect();
    assert_eq!(
        elements,
        [
            ExtensionElement {
                id: 1,
                data: &[0x7F]
            },
            ExtensionElement {
                id: 3,
                data: &[0x01, 0x02, 0x03]
            },
        ]
    );
}

#[test]
fn repr_of_the_golden_packet_re_emits_the_same_bytes() {
    let packet = RtpPacket::new_checked(&RTP_CSRC_EXT_PAD[..]).unwrap();
    let repr = RtpRepr::parse(&packet).unwrap();
    assert_eq!(
        repr.csrcs.as_slice(),
        [Ssrc(0xAABB_CCDD), Ssrc(0x0102_0304)]
    );
    assert_eq!(repr.padding_len, 3);
    assert_eq!(repr.payload.len(), 5);
    assert_eq!(repr.buffer_len(), RTP_CSRC_EXT_PAD.len());

    let mut out = [0u8; 40];
    repr.emit(&mut RtpPacket::new_unchecked(&mut out[..]));
    assert_eq!(out, RTP_CSRC_EXT_PAD);
}

#[test]
fn two_byte_extension_elements_carry_ids_above_14_and_empty_data() {
    let packet = RtpPacket::new_checked(&RTP_TWO_BYTE_EXT[..]).unwrap();
    assert_eq!(packet.payload_type(), PayloadType::PCMA);
    assert!(!packet.marker());
    assert_eq!(packet.seq(), SeqNo(0xFFFF));
    assert_eq!(packet.ts(), RtpTs(160));
    assert_eq!(packet.ssrc(), Ssrc(0xCAFE_BABE));
    assert_eq!(packet.padding_len(), 0);
    assert_eq!(packet.payload(), &[0xD5; 4]);
    let ext = packet.extension().unwrap();
    assert_eq!(ext.form(), ExtensionForm::TwoByte { appbits: 1 });
    let elements: Vec<_> = ext.elements().map(Result::unwrap).collect();
    assert_eq!(
        elements,
        [
            ExtensionElement { id: 5, data: &[] },
            ExtensionElement {
                id: 200,
                data: &[0xAA, 0xBB, 0xCC]
            },
        ]
    );
}

#[test]
fn in_place_restamp_changes_only_the_rewritten_fields() {
    let mut buf = RTP_CSRC_EXT_PAD;
    let mut packet = RtpPacket::new_checked(&mut buf[..]).unwrap();
    packet.set_seq(SeqNo(7));
    packet.set_ts(RtpTs(0x0102_0304));
    packet.set_ssrc(Ssrc(0x5566_7788));
    packet.set_marker(false);
    packet.set_payload_type(PayloadType(101));

    let packet = RtpPacket::new_checked(&buf[..]).unwrap();
    assert_eq!(packet.seq(), SeqNo(7));
    assert_eq!(packet.ts(), RtpTs(0x0102_0304));
    assert_eq!(packet.ssrc(), Ssrc(0x5566_7788));
    assert!(!packet.marker());
    assert_eq!(packet.payload_type(), PayloadType(101));
    // Flags, CSRCs, extension, payload and padding are untouched.
    assert_eq!(buf[0], RTP_CSRC_EXT_PAD[0]);
    assert_eq!(buf[12..], RTP_CSRC_EXT_PAD[12..]);
}

#[test]
fn header_only_emit_leaves_room_to_encode_the_payload_in_place() {
    let repr = RtpRepr {
        marker: true,
        payload_type: PayloadType::PCMU,
        seq: SeqNo(1),
        ts: RtpTs(160),
        ssrc: Ssrc(9),
        csrcs: CsrcList::EMPTY,
        extension: None,
        payload: &[],
        padding_len: 0,
    };
    let mut buf = [0xEEu8; 172];
    repr.emit(&mut RtpPacket::new_unchecked(&mut buf[..]));
    assert_eq!(repr.header_len(), 12);
    assert_eq!(&buf[..12], &[0x80, 0x80, 0, 1, 0, 0, 0, 160, 0, 0, 0, 9]);
    let packet = RtpPacket::new_checked(&buf[..]).unwrap();
    assert_eq!(packet.payload().len(), 160);
}

#[test]
fn each_malformation_is_rejected_with_its_reason() {
    let check = |bytes: &[u8]| RtpPacket::new_checked(bytes).map(|_| ());
    assert_eq!(check(&RTP_CSRC_EXT_PAD[..11]), Err(Error::Truncated));

    let mut bad_version = RTP_CSRC_EXT_PAD;
    bad_version[0] = 0x72; // version 1
    assert_eq!(check(&bad_version), Err(Error::BadVersion));

    // CSRC list declared but cut off.
    assert_eq!(check(&RTP_CSRC_EXT_PAD[..16]), Err(Error::Truncated));
    // Extension preamble cut off, then extension body cut off.
    assert_eq!(check(&RTP_CSRC_EXT_PAD[..22]), Err(Error::Truncated));
    assert_eq!(check(&RTP_CSRC_EXT_PAD[..28]), Err(Error::Truncated));

    let mut zero_pad = RTP_CSRC_EXT_PAD;
    zero_pad[39] = 0;
    assert_eq!(check(&zero_pad), Err(Error::BadPadding));
    let mut pad_eats_header = RTP_CSRC_EXT_PAD;
    pad_eats_header[39] = 9; // only 8 bytes follow the header
    assert_eq!(check(&pad_eats_header), Err(Error::BadPadding));
    pad_eats_header[39] = 8; // the whole payload is padding: allowed
    assert_eq!(check(&pad_eats_header), Ok(()));
    assert_eq!(Error::BadPadding.reason(), "bad_padding");
}

#[test]
fn extension_element_past_the_block_yields_bad_extension_once() {
    // One-byte element id 2 claiming 4 bytes with only 3 left.
    let data = [0x23, 0x01, 0x02, 0x03];
    let ext = HeaderExtension {
        profile: 0xBEDE,
        data: &data,
    };
    let items: Vec<_> = ext.elements().collect();
    assert_eq!(items, [Err(Error::BadExtension)]);

    // Two-byte element whose length byte is missing.
    let data = [0x00, 0x00, 0x00, 0x07];
    let ext = HeaderExtension {
        profile: 0x1000,
        data: &data,
    };
    assert_eq!(
        ext.elements().collect::<Vec<_>>(),
        [Err(Error::BadExtension)]
    );
}

#[test]
fn one_byte_id_15_stops_processing_and_other_profiles_are_opaque() {
    let data = [0x10, 0xAA, 0xF3, 0x20, 0xBB, 0x00, 0x00, 0x00];
    let ext = HeaderExtension {
        profile: 0xBEDE,
        data: &data,
    };
    let items: Vec<_> = ext.elements().map(Result::unwrap).collect();
    assert_eq!(
        items,
        [ExtensionElement {
            id: 1,
            data: &[0xAA]
        }]
    );

    let ext = HeaderExtension {
        profile: 0x0042,
        data: &data,
    };
    assert_eq!(ext.form(), ExtensionForm::Other(0x0042));
    assert_eq!(ext.elements().count(), 0);
}

#[test]
fn csrc_list_holds_at_most_fifteen() {
    let many = [Ssrc(1); 16];
    assert_eq!(CsrcList::from_slice(&many[..15]).unwrap().len(), 15);
    assert_eq!(CsrcList::from_slice(&many), Err(Error::Capacity));
}

#[test]
fn rtcp_mux_demultiplexing_follows_rfc_5761() {
    assert!(earshot_wire::is_rtcp(&[0x80, 200, 0, 6]));
    assert!(earshot_wire::is_rtcp(&[0x80, 223]));
    assert!(!earshot_wire::is_rtcp(&RTP_CSRC_EXT_PAD)); // M=1 PT=0 -> 0x80
    assert!(!earshot_wire::is_rtcp(&[0x80, 0xE0])); // M=1 PT=96
    assert!(!earshot_wire::is_rtcp(&[0x80]));
}
