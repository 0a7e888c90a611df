//! SDES key parameters (RFC 4568 section 6.1), secrecy of key material in every printed
//! form, and the session operations around the packet path: SSRC table eviction,
//! resuming an index after a restart, directions, and re-keying.

mod support;

use earshot_srtp::{
    Direction, KeyError, MasterKey, SrtpConfig, SrtpError, SrtpSession, SrtpSuite, Ssrc,
};
use support::{Rng, rtcp_packet, rtp_packet, with_room};

/// RFC 4568 section 6.1's example key parameter (AES_CM_128_HMAC_SHA1_80).
const RFC4568_EXAMPLE: &str = "inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:4";

#[test]
fn sdes_round_trip_for_every_suite() {
    let mut rng = Rng::new(3);
    for suite in SrtpSuite::ALL {
        let key = MasterKey::generate(suite, |b| rng.fill(b));
        let sdes = key.to_sdes();
        assert!(sdes.starts_with("inline:"));
        let parsed = MasterKey::from_sdes(suite, &sdes).expect("own output parses");
        assert_eq!(parsed, key, "{suite:?}");
        assert_eq!(SrtpSuite::from_sdes_name(suite.sdes_name()), Some(suite));
        assert_eq!(suite.id(), suite.sdes_name().to_lowercase());
    }
    assert_eq!(SrtpSuite::from_sdes_name("F8_128_HMAC_SHA1_80"), None);
}

#[test]
fn sdes_accepts_lifetime_and_missing_padding() {
    let base = "inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR";
    let plain = MasterKey::from_sdes(SrtpSuite::AesCm128HmacSha1_80, base).unwrap();
    for with_lifetime in [
        format!("{base}|2^31"),
        format!("{base}|2^48"),
        format!("{base}|1048576"),
    ] {
        let key = MasterKey::from_sdes(SrtpSuite::AesCm128HmacSha1_80, &with_lifetime).unwrap();
        assert_eq!(key, plain);
    }
    // A 28-octet AES-128-GCM key is 40 base64 characters with "==", which some
    // endpoints leave out.
    let mut rng = Rng::new(4);
    let key = MasterKey::generate(SrtpSuite::AeadAes128Gcm, |b| rng.fill(b));
    let sdes = key.to_sdes();
    assert!(sdes.ends_with('='));
    let unpadded = sdes.trim_end_matches('=');
    assert_eq!(
        MasterKey::from_sdes(SrtpSuite::AeadAes128Gcm, unpadded).unwrap(),
        key
    );
}

#[test]
fn sdes_refusals_are_typed_and_carry_no_key_material() {
    let suite = SrtpSuite::AesCm128HmacSha1_80;
    let secret = "PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR";
    let cases: [(String, KeyError); 7] = [
        (RFC4568_EXAMPLE.to_string(), KeyError::Mki),
        (format!("inline:{secret}|2^31|1:4"), KeyError::Mki),
        (secret.to_string(), KeyError::NotInline),
        (format!("inline:{secret}|2^99"), KeyError::Lifetime),
        (format!("inline:{secret}|forever"), KeyError::Lifetime),
        (
            format!("inline:{secret};inline:{secret}"),
            KeyError::MultipleKeys,
        ),
        (
            format!("inline:{}", &secret[..20]),
            KeyError::Length {
                expected: 30,
                got: 15,
            },
        ),
    ];
    for (input, expected) in cases {
        let err = MasterKey::from_sdes(suite, &input).unwrap_err();
        assert_eq!(err, expected, "{input}");
        let shown = format!("{err} {err:?}");
        assert!(
            !shown.contains(&secret[..8]),
            "error shows key material: {shown}"
        );
    }
    assert_eq!(
        MasterKey::from_sdes(suite, "inline:PS1uQCVeeCFCanVmcjkp!ywjNWhcYD0mXXtxaVBR"),
        Err(KeyError::Base64)
    );
    // A 256-bit GCM suite needs 44 octets: the 30 of an AES-CM key are refused.
    assert_eq!(
        MasterKey::from_sdes(SrtpSuite::AeadAes256Gcm, &format!("inline:{secret}")),
        Err(KeyError::Length {
            expected: 44,
            got: 30
        })
    );
}

#[test]
fn debug_output_never_shows_key_bytes() {
    let key = MasterKey::new(SrtpSuite::AesCm128HmacSha1_80, &[0xAB; 30]).unwrap();
    let shown = format!("{key:?}");
    assert!(shown.contains("[redacted]"), "{shown}");
    assert!(
        !shown.to_lowercase().contains("ab, ") && !shown.contains("171"),
        "{shown}"
    );
    let session = SrtpSession::new(Direction::Inbound, &key, SrtpConfig::default());
    let shown = format!("{session:?}");
    assert!(
        shown.contains("[redacted]") && !shown.contains("171"),
        "{shown}"
    );
}

fn protected_rtp(tx: &mut SrtpSession, ssrc: u32, seq: u16) -> Vec<u8> {
    let plain = rtp_packet(&mut Rng::new(u64::from(seq)), ssrc, seq, 0, None, 40);
    let mut buf = with_room(&plain, tx.suite().rtp_overhead());
    tx.protect_rtp(&mut buf, plain.len()).expect("protect");
    buf
}

fn pair(suite: SrtpSuite, config: SrtpConfig) -> (SrtpSession, SrtpSession, MasterKey) {
    let mut rng = Rng::new(11);
    let key = MasterKey::generate(suite, |b| rng.fill(b));
    (
        SrtpSession::new(Direction::Outbound, &key, config),
        SrtpSession::new(Direction::Inbound, &key, config),
        key,
    )
}

#[test]
fn ssrc_change_and_eviction_of_the_least_recently_used() {
    let config = SrtpConfig {
        max_ssrcs: 2,
        ..SrtpConfig::default()
    };
    let (mut tx, mut rx, _) = pair(SrtpSuite::AesCm128HmacSha1_80, config);
    let a1 = protected_rtp(&mut tx, 0xA, 1);
    let b1 = protected_rtp(&mut tx, 0xB, 1);
    let a2 = protected_rtp(&mut tx, 0xA, 2);
    let c1 = protected_rtp(&mut tx, 0xC, 1);
    for p in [&a1, &b1, &a2] {
        assert!(rx.unprotect_rtp(&mut p.clone()).is_ok());
    }
    // A is more recent than B, so C's arrival evicts B.
    assert!(rx.unprotect_rtp(&mut c1.clone()).is_ok());
    assert!(rx.rtp_highest_index(Ssrc(0xA)).is_some());
    assert!(rx.rtp_highest_index(Ssrc(0xB)).is_none());
    assert!(rx.rtp_highest_index(Ssrc(0xC)).is_some());
    // A's replay state was kept.
    assert_eq!(rx.unprotect_rtp(&mut a1.clone()), Err(SrtpError::Replay));
}

#[test]
fn forged_packets_from_new_ssrcs_evict_nothing() {
    let config = SrtpConfig {
        max_ssrcs: 1,
        ..SrtpConfig::default()
    };
    let (mut tx, mut rx, _) = pair(SrtpSuite::AesCm128HmacSha1_80, config);
    let a1 = protected_rtp(&mut tx, 0xA, 1);
    assert!(rx.unprotect_rtp(&mut a1.clone()).is_ok());
    let mut forged = protected_rtp(&mut tx, 0xF, 1);
    let last = forged.len() - 1;
    forged[last] ^= 0xFF;
    assert_eq!(rx.unprotect_rtp(&mut forged), Err(SrtpError::Auth));
    assert!(
        rx.rtp_highest_index(Ssrc(0xA)).is_some(),
        "A survived the forgery"
    );
    assert!(rx.rtp_highest_index(Ssrc(0xF)).is_none());
}

/// After a restart the engine resumes from its persisted high-water mark: packets at or
/// below it are refused (no keystream reuse), the next ones go out and the receiver,
/// which never restarted, still accepts them with the right ROC.
#[test]
fn resume_after_restart_never_reuses_an_index() {
    let (mut tx, mut rx, key) = pair(SrtpSuite::AeadAes128Gcm, SrtpConfig::default());
    for seq in 65_530..=65_535u16 {
        assert!(
            rx.unprotect_rtp(&mut protected_rtp(&mut tx, 0x5, seq))
                .is_ok()
        );
    }
    assert!(
        rx.unprotect_rtp(&mut protected_rtp(&mut tx, 0x5, 0))
            .is_ok()
    );
    let persisted = tx.rtp_highest_index(Ssrc(0x5)).unwrap();
    assert_eq!(persisted, 1 << 16, "ROC 1, SEQ 0");

    let mut restarted = SrtpSession::new(Direction::Outbound, &key, SrtpConfig::default());
    restarted.resume_rtp(Ssrc(0x5), persisted);
    let plain = rtp_packet(&mut Rng::new(9), 0x5, 0, 0, None, 40);
    let mut again = with_room(&plain, restarted.suite().rtp_overhead());
    assert_eq!(
        restarted.protect_rtp(&mut again, plain.len()),
        Err(SrtpError::IndexReused)
    );
    let next = protected_rtp(&mut restarted, 0x5, 1);
    assert!(rx.unprotect_rtp(&mut next.clone()).is_ok());
    assert_eq!(rx.rtp_highest_index(Ssrc(0x5)), Some((1 << 16) + 1));

    // SRTCP: the next index continues after the persisted one.
    let mut rtcp_tx = SrtpSession::new(Direction::Outbound, &key, SrtpConfig::default());
    rtcp_tx.resume_rtcp(Ssrc(0x5), 41);
    let plain = rtcp_packet(&mut Rng::new(2), 0x5, 0);
    let mut buf = with_room(&plain, rtcp_tx.suite().rtcp_overhead());
    rtcp_tx.protect_rtcp(&mut buf, plain.len()).unwrap();
    assert_eq!(rtcp_tx.rtcp_highest_index(Ssrc(0x5)), Some(42));
}

#[test]
fn index_exhaustion_is_refused() {
    let (mut tx, _, _) = pair(SrtpSuite::AesCm128HmacSha1_32, SrtpConfig::default());
    tx.resume_rtp(Ssrc(1), (1 << 48) - 1);
    let plain = rtp_packet(&mut Rng::new(1), 1, 0, 0, None, 10);
    let mut buf = with_room(&plain, 4);
    assert_eq!(
        tx.protect_rtp(&mut buf, plain.len()),
        Err(SrtpError::IndexExhausted)
    );
    tx.resume_rtcp(Ssrc(1), (1 << 31) - 1);
    let plain = rtcp_packet(&mut Rng::new(1), 1, 0);
    let mut buf = with_room(&plain, 14);
    assert_eq!(
        tx.protect_rtcp(&mut buf, plain.len()),
        Err(SrtpError::IndexExhausted)
    );
}

#[test]
fn wrong_direction_and_short_buffers_are_typed_errors() {
    let (mut tx, mut rx, _) = pair(SrtpSuite::AesCm128HmacSha1_80, SrtpConfig::default());
    let plain = rtp_packet(&mut Rng::new(1), 1, 1, 0, None, 10);
    let mut buf = plain.clone();
    assert_eq!(
        tx.protect_rtp(&mut buf, plain.len()),
        Err(SrtpError::BufferTooSmall)
    );
    assert_eq!(
        rx.protect_rtp(&mut buf, plain.len()),
        Err(SrtpError::WrongDirection)
    );
    assert_eq!(tx.unprotect_rtp(&mut buf), Err(SrtpError::WrongDirection));
    assert_eq!(buf, plain, "untouched");
    assert_eq!(rx.unprotect_rtp(&mut buf[..15]), Err(SrtpError::TooShort));
    let mut v1 = plain.clone();
    v1[0] = 0x40;
    assert_eq!(rx.unprotect_rtp(&mut v1), Err(SrtpError::Malformed));
    assert_eq!(SrtpError::Auth.reason(), "srtp_auth");
    assert_eq!(SrtpError::Replay.reason(), "srtp_replay");
}

/// A live re-key: the remote switches to a new key mid-stream. The new inbound session
/// (`rekeyed`) inherits the ROC and replay state, so packets under the new key after a
/// sequence wrap still decrypt; stragglers under the old key fail on the new session
/// with Auth, leave the buffer intact, and pass on the old session kept for the overlap.
#[test]
fn rekey_without_a_gap() {
    let suite = SrtpSuite::AesCm128HmacSha1_80;
    let (mut old_tx, mut old_rx, _) = pair(suite, SrtpConfig::default());
    for seq in 65_500..=65_535u16 {
        assert!(
            old_rx
                .unprotect_rtp(&mut protected_rtp(&mut old_tx, 0x42, seq))
                .is_ok()
        );
    }
    let straggler = protected_rtp(&mut old_tx, 0x42, 0); // ROC 1, sent under the old key
    let mut rng = Rng::new(77);
    let new_key = MasterKey::generate(suite, |b| rng.fill(b));
    let mut new_tx = old_tx.rekeyed(&new_key);
    let mut new_rx = old_rx.rekeyed(&new_key);

    for seq in 1..100u16 {
        let mut p = protected_rtp(&mut new_tx, 0x42, seq);
        assert!(
            new_rx.unprotect_rtp(&mut p).is_ok(),
            "seq {seq} under the new key"
        );
    }
    let mut late = straggler.clone();
    assert_eq!(new_rx.unprotect_rtp(&mut late), Err(SrtpError::Auth));
    assert_eq!(late, straggler, "buffer intact for the second try");
    assert!(
        old_rx.unprotect_rtp(&mut late).is_ok(),
        "old session takes the straggler"
    );
}

fn protected_rtcp(tx: &mut SrtpSession, ssrc: u32, seed: u64) -> Vec<u8> {
    let plain = rtcp_packet(&mut Rng::new(seed), ssrc, 1);
    let mut buf = with_room(&plain, tx.suite().rtcp_overhead());
    let n = tx.protect_rtcp(&mut buf, plain.len()).expect("protect");
    buf.truncate(n);
    buf
}

/// SRTCP across a re-key: a remote that re-creates its context for the new key (its
/// SRTCP index starts again, as with a fresh libsrtp session) is accepted by the
/// re-keyed inbound session, whose replay protection still works for the new key; a
/// remote that carries its index on is accepted too; our re-keyed outbound session
/// carries its SRTCP index on (never restarts it).
#[test]
fn rekey_srtcp_index_restart_and_carry_on() {
    let suite = SrtpSuite::AesCm128HmacSha1_80;
    let (mut old_tx, mut old_rx, _) = pair(suite, SrtpConfig::default());
    for seed in 0..20 {
        assert!(
            old_rx
                .unprotect_rtcp(&mut protected_rtcp(&mut old_tx, 0x42, seed))
                .is_ok()
        );
    }
    let mut rng = Rng::new(78);
    let new_key = MasterKey::generate(suite, |b| rng.fill(b));

    // Ours: the index continues.
    let mut carried_tx = old_tx.rekeyed(&new_key);
    assert_eq!(carried_tx.rtcp_highest_index(Ssrc(0x42)), Some(19));
    let p = protected_rtcp(&mut carried_tx, 0x42, 100);
    assert_eq!(carried_tx.rtcp_highest_index(Ssrc(0x42)), Some(20));

    // A remote that carried its index on: accepted.
    let mut rx = old_rx.rekeyed(&new_key);
    assert!(rx.unprotect_rtcp(&mut p.clone()).is_ok(), "carried index");

    // A remote with a fresh context: its index starts again, and is accepted...
    let mut fresh_tx = SrtpSession::new(Direction::Outbound, &new_key, SrtpConfig::default());
    let mut rx = old_rx.rekeyed(&new_key);
    let first = protected_rtcp(&mut fresh_tx, 0x42, 200);
    assert!(
        rx.unprotect_rtcp(&mut first.clone()).is_ok(),
        "restarted index 0"
    );
    for seed in 201..205 {
        let mut p = protected_rtcp(&mut fresh_tx, 0x42, seed);
        assert!(rx.unprotect_rtcp(&mut p).is_ok(), "restarted index");
    }
    // ...while a replay under the new key is still refused, and an old-key packet
    // does not authenticate.
    assert_eq!(
        rx.unprotect_rtcp(&mut first.clone()),
        Err(SrtpError::Replay)
    );
    let old = protected_rtcp(&mut old_tx, 0x42, 300);
    assert_eq!(rx.unprotect_rtcp(&mut old.clone()), Err(SrtpError::Auth));
    assert!(old_rx.unprotect_rtcp(&mut old.clone()).is_ok());
}
