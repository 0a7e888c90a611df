//! Interoperability with libsrtp 2 (an independent implementation, loaded at run time):
//! libsrtp protects and we unprotect, we protect and libsrtp unprotects, for every suite,
//! SRTP and SRTCP, several SSRCs, CSRCs and header extensions, across a sequence number
//! wrap (so the rollover counter must agree on both sides).
//!
//! Needs `libsrtp2-1` (Debian: `apt-get install libsrtp2-dev`); without it each test
//! prints `SKIPPED: libsrtp2 not installed` and passes.

mod support;

use earshot_srtp::reference::{LibSrtp, MAX_TRAILER_LEN, RefSession};
use earshot_srtp::{Direction, MasterKey, SrtpConfig, SrtpError, SrtpSession, SrtpSuite, Ssrc};
use support::{Rng, rtcp_packet, rtp_packet, seed, with_room};

fn libsrtp(test: &str) -> Option<&'static LibSrtp> {
    match LibSrtp::load() {
        Ok(lib) => Some(lib),
        Err(why) => {
            println!("SKIPPED: libsrtp2 not installed ({test}: {why})");
            None
        }
    }
}

const SSRCS: [u32; 3] = [0x1111_1111, 0xDEAD_BEEF, 0x0000_0001];
/// Starts below the wrap so each stream's ROC goes from 0 to 1 during the test.
const FIRST_SEQ: u16 = 65_300;
const PACKETS_PER_SSRC: usize = 600;

fn key(rng: &mut Rng, suite: SrtpSuite) -> MasterKey {
    MasterKey::generate(suite, |bytes| rng.fill(bytes))
}

/// The n-th packet of stream `s`: shapes vary with n (CSRCs, extension, payload size).
fn nth_rtp(rng: &mut Rng, ssrc: u32, n: usize) -> Vec<u8> {
    let seq = FIRST_SEQ.wrapping_add(n as u16);
    let csrcs = n % 3;
    let ext = (n % 4 == 1).then_some(n % 3 + 1);
    let payload = [160, 0, 1, 17, 320, 1000][n % 6];
    rtp_packet(rng, ssrc, seq, csrcs, ext, payload)
}

#[test]
fn libsrtp_protects_we_unprotect_rtp_across_the_wrap() {
    let Some(lib) = libsrtp("libsrtp_protects_we_unprotect_rtp") else {
        return;
    };
    let mut rng = Rng::new(seed("libsrtp_protects_we_unprotect_rtp"));
    for suite in SrtpSuite::ALL {
        let key = key(&mut rng, suite);
        let mut theirs = RefSession::new(lib, suite, &raw(&key), true, 0).expect("srtp_create");
        let mut ours = SrtpSession::new(Direction::Inbound, &key, SrtpConfig::default());
        for n in 0..PACKETS_PER_SSRC {
            for ssrc in SSRCS {
                let plain = nth_rtp(&mut rng, ssrc, n);
                let mut buf = with_room(&plain, MAX_TRAILER_LEN);
                let len = theirs
                    .protect_rtp(&mut buf, plain.len())
                    .expect("srtp_protect");
                assert_eq!(len, plain.len() + suite.rtp_tag_len(), "{suite:?}");
                let got = ours.unprotect_rtp(&mut buf[..len]);
                assert_eq!(got, Ok(plain.len()), "{suite:?} ssrc {ssrc:#x} packet {n}");
                assert_eq!(&buf[..plain.len()], &plain[..], "{suite:?} packet {n}");
            }
        }
        for ssrc in SSRCS {
            let highest = ours.rtp_highest_index(Ssrc(ssrc)).expect("stream known");
            assert_eq!(highest >> 16, 1, "{suite:?}: ROC advanced past the wrap");
        }
    }
}

#[test]
fn we_protect_libsrtp_unprotects_rtp_across_the_wrap() {
    let Some(lib) = libsrtp("we_protect_libsrtp_unprotects_rtp") else {
        return;
    };
    let mut rng = Rng::new(seed("we_protect_libsrtp_unprotects_rtp"));
    for suite in SrtpSuite::ALL {
        let key = key(&mut rng, suite);
        let mut theirs = RefSession::new(lib, suite, &raw(&key), false, 0).expect("srtp_create");
        let mut ours = SrtpSession::new(Direction::Outbound, &key, SrtpConfig::default());
        for n in 0..PACKETS_PER_SSRC {
            for ssrc in SSRCS {
                let plain = nth_rtp(&mut rng, ssrc, n);
                let mut buf = with_room(&plain, suite.rtp_overhead());
                let len = ours.protect_rtp(&mut buf, plain.len()).expect("protect");
                assert_eq!(len, buf.len());
                let got = theirs.unprotect_rtp(&mut buf);
                assert_eq!(got, Ok(plain.len()), "{suite:?} ssrc {ssrc:#x} packet {n}");
                assert_eq!(&buf[..plain.len()], &plain[..], "{suite:?} packet {n}");
            }
        }
    }
}

#[test]
fn srtcp_both_ways_with_libsrtp() {
    let Some(lib) = libsrtp("srtcp_both_ways_with_libsrtp") else {
        return;
    };
    let mut rng = Rng::new(seed("srtcp_both_ways_with_libsrtp"));
    for suite in SrtpSuite::ALL {
        let key = key(&mut rng, suite);
        let mut their_tx = RefSession::new(lib, suite, &raw(&key), true, 0).expect("create");
        let mut their_rx = RefSession::new(lib, suite, &raw(&key), false, 0).expect("create");
        let mut our_rx = SrtpSession::new(Direction::Inbound, &key, SrtpConfig::default());
        let mut our_tx = SrtpSession::new(Direction::Outbound, &key, SrtpConfig::default());
        for n in 0..200 {
            for ssrc in SSRCS {
                let plain = rtcp_packet(&mut rng, ssrc, n % 4);

                let mut buf = with_room(&plain, MAX_TRAILER_LEN);
                let len = their_tx
                    .protect_rtcp(&mut buf, plain.len())
                    .expect("protect_rtcp");
                assert_eq!(len, plain.len() + suite.rtcp_overhead(), "{suite:?}");
                assert_eq!(
                    our_rx.unprotect_rtcp(&mut buf[..len]),
                    Ok(plain.len()),
                    "{suite:?} {n}"
                );
                assert_eq!(&buf[..plain.len()], &plain[..]);

                let mut buf = with_room(&plain, suite.rtcp_overhead());
                let len = our_tx.protect_rtcp(&mut buf, plain.len()).expect("protect");
                assert_eq!(len, buf.len());
                assert_eq!(
                    their_rx.unprotect_rtcp(&mut buf),
                    Ok(plain.len()),
                    "{suite:?} {n}"
                );
                assert_eq!(&buf[..plain.len()], &plain[..]);
            }
        }
        // What libsrtp protected once is a replay the second time.
        let plain = rtcp_packet(&mut rng, SSRCS[0], 1);
        let mut buf = with_room(&plain, MAX_TRAILER_LEN);
        let len = their_tx
            .protect_rtcp(&mut buf, plain.len())
            .expect("protect_rtcp");
        let copy = buf[..len].to_vec();
        assert_eq!(our_rx.unprotect_rtcp(&mut buf[..len]), Ok(plain.len()));
        assert_eq!(
            our_rx.unprotect_rtcp(&mut copy.clone()),
            Err(SrtpError::Replay)
        );
    }
}

/// A tag made with another key is refused by both implementations, and a packet we
/// refuse for authentication libsrtp refuses too (status 7).
#[test]
fn both_refuse_a_packet_under_the_wrong_key() {
    let Some(lib) = libsrtp("both_refuse_a_packet_under_the_wrong_key") else {
        return;
    };
    let mut rng = Rng::new(seed("both_refuse_a_packet_under_the_wrong_key"));
    for suite in SrtpSuite::ALL {
        let right = key(&mut rng, suite);
        let wrong = key(&mut rng, suite);
        let mut ours = SrtpSession::new(Direction::Outbound, &wrong, SrtpConfig::default());
        let plain = nth_rtp(&mut rng, SSRCS[1], 0);
        let mut buf = with_room(&plain, suite.rtp_overhead());
        ours.protect_rtp(&mut buf, plain.len()).expect("protect");
        let mut their_rx = RefSession::new(lib, suite, &raw(&right), false, 0).expect("create");
        assert_eq!(
            their_rx.unprotect_rtp(&mut buf.clone()).map_err(|e| e.0),
            Err(7)
        );
        let mut our_rx = SrtpSession::new(Direction::Inbound, &right, SrtpConfig::default());
        assert_eq!(our_rx.unprotect_rtp(&mut buf), Err(SrtpError::Auth));
    }
}

/// key||salt of a MasterKey, through its SDES form (the only way out of the type).
fn raw(key: &MasterKey) -> Vec<u8> {
    use base64::Engine as _;
    let sdes = key.to_sdes();
    base64::engine::general_purpose::STANDARD
        .decode(sdes.trim_start_matches("inline:"))
        .expect("our own base64")
}
