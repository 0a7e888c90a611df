//! Whatever arrives from the network, unprotect never panics, always answers with a
//! typed error or a length within the buffer, and a refused datagram leaves the buffer
//! and the session's state as they were: a valid packet sent afterwards still passes.

mod support;

use earshot_srtp::{Direction, MasterKey, SrtpConfig, SrtpSession, SrtpSuite};
use proptest::prelude::*;
use support::{Rng, rtcp_packet, rtp_packet, with_room};

fn sessions(suite: SrtpSuite) -> (SrtpSession, SrtpSession) {
    let mut rng = Rng::new(0xB17E5);
    let key = MasterKey::generate(suite, |b| rng.fill(b));
    (
        SrtpSession::new(Direction::Outbound, &key, SrtpConfig::default()),
        SrtpSession::new(Direction::Inbound, &key, SrtpConfig::default()),
    )
}

fn suite() -> impl Strategy<Value = SrtpSuite> {
    prop::sample::select(SrtpSuite::ALL.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 5000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_to_unprotect(suite in suite(), bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let (mut tx, mut rx) = sessions(suite);
        let mut buf = bytes.clone();
        if let Ok(n) = rx.unprotect_rtp(&mut buf) {
            prop_assert!(n <= bytes.len());
        } else {
            prop_assert_eq!(&buf, &bytes);
        }
        let mut buf = bytes.clone();
        if let Ok(n) = rx.unprotect_rtcp(&mut buf) {
            prop_assert!(n <= bytes.len());
        } else {
            prop_assert_eq!(&buf, &bytes);
        }
        // The session still works for the genuine stream.
        let plain = rtp_packet(&mut Rng::new(1), 0x77, 9, 0, None, 160);
        let mut good = with_room(&plain, suite.rtp_overhead());
        let len = tx.protect_rtp(&mut good, plain.len()).unwrap();
        prop_assert_eq!(rx.unprotect_rtp(&mut good[..len]), Ok(plain.len()));
    }

    /// Valid protected packets with random octets overwritten, truncated or extended:
    /// the mutations a hostile or broken network makes that keep the header plausible.
    #[test]
    fn mutated_packets_to_unprotect(
        suite in suite(),
        rtcp: bool,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in 0usize..40,
        extend in 0usize..8,
    ) {
        let (mut tx, mut rx) = sessions(suite);
        let mut rng = Rng::new(5);
        let (plain, mut buf) = if rtcp {
            let p = rtcp_packet(&mut rng, 0x99, 1);
            let mut b = with_room(&p, suite.rtcp_overhead());
            tx.protect_rtcp(&mut b, p.len()).unwrap();
            (p, b)
        } else {
            let p = rtp_packet(&mut rng, 0x99, 100, 2, Some(1), 40);
            let mut b = with_room(&p, suite.rtp_overhead());
            tx.protect_rtp(&mut b, p.len()).unwrap();
            (p, b)
        };
        for (at, value) in edits {
            let i = at.index(buf.len());
            buf[i] = value;
        }
        buf.truncate(buf.len().saturating_sub(cut));
        buf.extend(std::iter::repeat_n(0xEE, extend));
        let before = buf.clone();
        let result = if rtcp { rx.unprotect_rtcp(&mut buf) } else { rx.unprotect_rtp(&mut buf) };
        match result {
            Ok(n) => {
                prop_assert!(n <= buf.len());
                prop_assert_eq!(&buf[..n], &plain[..], "only the genuine packet passes");
            }
            Err(_) => prop_assert_eq!(buf, before),
        }
    }

    /// Protect with lengths and buffers that do not fit never panics either.
    #[test]
    fn arbitrary_input_to_protect(suite in suite(), bytes in prop::collection::vec(any::<u8>(), 0..300), len in 0usize..400) {
        let (mut tx, _) = sessions(suite);
        let mut buf = bytes.clone();
        if let Ok(n) = tx.protect_rtp(&mut buf, len) {
            prop_assert!(n <= buf.len());
        }
        let mut buf = bytes.clone();
        if let Ok(n) = tx.protect_rtcp(&mut buf, len) {
            prop_assert!(n <= buf.len());
        }
    }
}
