//! RFC 7714 known answers: section 16 (SRTP, AEAD_AES_128_GCM and AEAD_AES_256_GCM) and
//! section 17 (SRTCP, the same two suites, and the authenticated-only packet of 17.3).
//! The vectors give session keys, so they enter below the KDF; the KDF is pinned by the
//! RFC 3711 appendix B.3 test and, for GCM, by the libsrtp interoperability tests.

use earshot_srtp::{Direction, SessionKeys, SrtpConfig, SrtpError, SrtpSession, SrtpSuite, Ssrc};

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

const KEY_128: &str = "000102030405060708090a0b0c0d0e0f";
const KEY_256: &str = "000102030405060708090a0b0c0d0e0f 101112131415161718191a1b1c1d1e1f";
/// "Quid pro quo"
const SALT: &str = "517569642070726f2071756f";

/// Section 16: header 8040f17b 8041f8d3 5501a0b2 (SEQ f17b, SSRC 5501a0b2, ROC 0) and
/// the payload "Gallia est omnis divisa in partes tres".
const RTP: &str = "8040f17b8041f8d35501a0b2
    47616c6c696120657374206f6d6e69732064697669736120696e207061727465732074726573";
/// 16.1.1: ciphertext then 16-octet tag.
const SRTP_128: &str = "8040f17b8041f8d35501a0b2
    f24de3a3fb34de6cacba861c9d7e4bcabe633bd50d294e6f42a5f47a51c7d19b36de3adf8833
    899d7f27beb16a9152cf765ee4390cce";
/// 16.2.1
const SRTP_256: &str = "8040f17b8041f8d35501a0b2
    32b1de78a822fe12ef9f78fa332e33aab18012389a58e2f3b50b2a0276ffae0f1ba63799b87b
    7aa3db36dfffd6b0f9bb7878d7a76c13";

/// Section 17: an SR from SSRC "Mars" (4d617273), SRTCP index 0x5d4.
const RTCP: &str = "81c8000d4d6172734e5450314e545032525450200000042a0000e9304c756e61
    deadbeefdeadbeefdeadbeefdeadbeefdeadbeef";
/// 17.1: ciphertext, tag, then E||index.
const SRTCP_128: &str = "81c8000d4d617273
    63e94885dcdab67ca727d7662f6b7e997ff5c0f76c06f32dc676a5f1730d6fda4ce09b4686303ded0bb9275bc84aa45896cf4d2fc5abf87245d9eade
    800005d4";
/// 17.2
const SRTCP_256: &str = "81c8000d4d617273
    d50ae4d1f5ce5d304ba297e47d470c282c3ece5dbffe0a50a2eaa5c1110555be8415f658c61de0476f1b6fad1d1eb30c4446839f57ff6f6cb26ac3be
    800005d4";
/// 17.3: E flag clear, the packet in clear, the tag over packet||word, then the word.
const SRTCP_128_AUTH_ONLY: &str = "81c8000d4d6172734e5450314e545032525450200000042a0000e9304c756e61
    deadbeefdeadbeefdeadbeefdeadbeefdeadbeef
    841dd9683dd78ec92ae58790125f62b3
    000005d4";
const SRTCP_INDEX: u32 = 0x5d4;
const MARS: Ssrc = Ssrc(0x4d61_7273);

fn session(direction: Direction, suite: SrtpSuite, key: &str) -> SrtpSession {
    let key = hex(key);
    let salt = hex(SALT);
    let keys = SessionKeys {
        key: &key,
        salt: &salt,
        auth_key: &[],
    };
    SrtpSession::from_session_keys(direction, suite, &keys, &keys, SrtpConfig::default())
}

fn check_srtp(suite: SrtpSuite, key: &str, expected: &str) {
    let plain = hex(RTP);
    let expected = hex(expected);
    let mut buf = plain.clone();
    buf.resize(plain.len() + 16, 0);
    let n = session(Direction::Outbound, suite, key)
        .protect_rtp(&mut buf, plain.len())
        .expect("protect");
    assert_eq!(&buf[..n], &expected[..], "{suite:?} protect");

    let mut buf = expected.clone();
    let n = session(Direction::Inbound, suite, key)
        .unprotect_rtp(&mut buf)
        .expect("unprotect");
    assert_eq!(&buf[..n], &plain[..], "{suite:?} unprotect");
}

#[test]
fn section_16_1_srtp_aead_aes_128_gcm() {
    check_srtp(SrtpSuite::AeadAes128Gcm, KEY_128, SRTP_128);
}

#[test]
fn section_16_2_srtp_aead_aes_256_gcm() {
    check_srtp(SrtpSuite::AeadAes256Gcm, KEY_256, SRTP_256);
}

fn check_srtcp(suite: SrtpSuite, key: &str, expected: &str) {
    let plain = hex(RTCP);
    let expected = hex(expected);
    let mut sender = session(Direction::Outbound, suite, key);
    sender.resume_rtcp(MARS, SRTCP_INDEX - 1);
    let mut buf = plain.clone();
    buf.resize(plain.len() + 20, 0);
    let n = sender.protect_rtcp(&mut buf, plain.len()).expect("protect");
    assert_eq!(&buf[..n], &expected[..], "{suite:?} protect");
    assert_eq!(sender.rtcp_highest_index(MARS), Some(SRTCP_INDEX));

    let mut buf = expected.clone();
    let mut receiver = session(Direction::Inbound, suite, key);
    let n = receiver.unprotect_rtcp(&mut buf).expect("unprotect");
    assert_eq!(&buf[..n], &plain[..], "{suite:?} unprotect");
    let mut again = expected.clone();
    assert_eq!(receiver.unprotect_rtcp(&mut again), Err(SrtpError::Replay));
}

#[test]
fn section_17_1_srtcp_aead_aes_128_gcm() {
    check_srtcp(SrtpSuite::AeadAes128Gcm, KEY_128, SRTCP_128);
}

#[test]
fn section_17_2_srtcp_aead_aes_256_gcm() {
    check_srtcp(SrtpSuite::AeadAes256Gcm, KEY_256, SRTCP_256);
}

/// 17.3: an authenticated-only SRTCP packet (E flag clear) is accepted and left in
/// clear; with one bit of its tag flipped it is refused and the buffer is unchanged.
#[test]
fn section_17_3_srtcp_authenticated_only() {
    let plain = hex(RTCP);
    let tagged = hex(SRTCP_128_AUTH_ONLY);
    let mut buf = tagged.clone();
    let n = session(Direction::Inbound, SrtpSuite::AeadAes128Gcm, KEY_128)
        .unprotect_rtcp(&mut buf)
        .expect("unprotect");
    assert_eq!(&buf[..n], &plain[..]);

    let mut forged = tagged.clone();
    let tag_at = plain.len();
    forged[tag_at] ^= 1;
    let before = forged.clone();
    let result =
        session(Direction::Inbound, SrtpSuite::AeadAes128Gcm, KEY_128).unprotect_rtcp(&mut forged);
    assert_eq!(result, Err(SrtpError::Auth));
    assert_eq!(forged, before, "buffer unchanged on error");
}
