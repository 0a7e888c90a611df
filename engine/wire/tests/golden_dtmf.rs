//! RFC 4733 telephone-event payloads against hand-written bytes.

use earshot_wire::Error;
use earshot_wire::dtmf::{DtmfEvent, DtmfPacket, DtmfRepr};

#[test]
fn end_of_digit_5_reads_every_field() {
    // event 5, E=1 R=0 volume 10, duration 800 (100 ms at 8 kHz).
    let bytes = [0x05, 0x8A, 0x03, 0x20];
    let packet = DtmfPacket::new_checked(&bytes[..]).unwrap();
    assert_eq!(packet.event(), DtmfEvent::Digit(5));
    assert!(packet.end());
    assert!(!packet.reserved());
    assert_eq!(packet.volume(), 10);
    assert_eq!(packet.duration(), 800);
    let repr = DtmfRepr::parse(&packet).unwrap();
    assert_eq!(
        repr,
        DtmfRepr {
            event: DtmfEvent::Digit(5),
            end: true,
            volume: 10,
            duration: 800
        }
    );
    let mut out = [0xFFu8; 4];
    repr.emit(&mut DtmfPacket::new_unchecked(&mut out[..]));
    assert_eq!(out, bytes);
}

#[test]
fn reserved_bit_is_ignored_on_receipt_and_cleared_on_emit() {
    let bytes = [0x0B, 0x40 | 0x3F, 0x00, 0xA0]; // '#', R=1, E=0, volume 63
    let repr = DtmfRepr::parse(&DtmfPacket::new_unchecked(&bytes[..])).unwrap();
    assert_eq!(repr.event, DtmfEvent::Pound);
    assert_eq!(repr.event.key(), Some('#'));
    assert!(!repr.end);
    assert_eq!(repr.volume, 63);
    let mut out = [0u8; 4];
    repr.emit(&mut DtmfPacket::new_unchecked(&mut out[..]));
    assert_eq!(out, [0x0B, 0x3F, 0x00, 0xA0]);
}

#[test]
fn event_codes_map_to_keys_and_unknown_codes_are_kept() {
    let keys: String = (0u8..16).filter_map(|c| DtmfEvent::from(c).key()).collect();
    assert_eq!(keys, "0123456789*#ABCD");
    assert_eq!(DtmfEvent::from(16), DtmfEvent::Flash);
    assert_eq!(DtmfEvent::from(16).key(), None);
    assert_eq!(DtmfEvent::from(70), DtmfEvent::Other(70));
    for code in 0..=u8::MAX {
        assert_eq!(u8::from(DtmfEvent::from(code)), code);
    }
}

#[test]
fn short_payload_is_truncated() {
    assert_eq!(
        DtmfPacket::new_checked(&[0x05, 0x8A, 0x03][..]),
        Err(Error::Truncated)
    );
    assert_eq!(
        DtmfRepr::parse(&DtmfPacket::new_unchecked(&[][..])),
        Err(Error::Truncated)
    );
}

#[test]
fn durations_are_rescaled_between_rtp_clocks() {
    use earshot_wire::dtmf::rescale_duration;
    // Digit 5, 100 ms: 800 units at 8 kHz is 4,800 at 48 kHz and back.
    let mut p = [0x05, 0x8A, 0x03, 0x20];
    rescale_duration(&mut p, 8_000, 48_000);
    assert_eq!(p, [0x05, 0x8A, 0x12, 0xC0], "event and flags untouched");
    rescale_duration(&mut p, 48_000, 8_000);
    assert_eq!(p, [0x05, 0x8A, 0x03, 0x20]);
    // 8 s at 8 kHz does not fit a 48 kHz duration: it saturates.
    let mut long = [0x05, 0x0A, 0xFA, 0x00];
    rescale_duration(&mut long, 8_000, 48_000);
    assert_eq!(long[2..], [0xFF, 0xFF]);
    // Too short to be an event: left alone.
    let mut short = [0x05, 0x8A, 0x03];
    rescale_duration(&mut short, 8_000, 16_000);
    assert_eq!(short, [0x05, 0x8A, 0x03]);
}
