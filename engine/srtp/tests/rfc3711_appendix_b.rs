//! RFC 3711 appendix B: the AES-CM keystream (B.2) and the key derivation (B.3), plus
//! HMAC-SHA1 against RFC 2202 and against RustCrypto's generic HMAC on every length.

use earshot_srtp::primitives::{HmacSha1, KdfLabel, aes_cm_keystream_xor, derive};
use earshot_srtp::{MasterKey, SrtpSuite};
use proptest::prelude::*;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// B.2: session key 2B7E...3C, IV F0F1...FD0000; keystream blocks for counters 0000,
/// 0001, 0002, FEFF, FF00, FF01.
#[test]
fn b2_aes_cm_keystream() {
    let key = hex("2B7E151628AED2A6ABF7158809CF4F3C");
    let iv: [u8; 16] = hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD0000").try_into().unwrap();
    let mut keystream = vec![0u8; 0xFF02 * 16];
    aes_cm_keystream_xor(&key, &iv, &mut keystream);
    let block = |counter: usize| &keystream[counter * 16..counter * 16 + 16];
    assert_eq!(block(0x0000), hex("E03EAD0935C95E80E166B16DD92B4EB4"));
    assert_eq!(block(0x0001), hex("D23513162B02D0F72A43A2FE4A5F97AB"));
    assert_eq!(block(0x0002), hex("41E95B3BB0A2E8DD477901E4FCA894C0"));
    assert_eq!(block(0xFEFF), hex("EC8CDF7398607CB0F2D21675EA9EA1E4"));
    assert_eq!(block(0xFF00), hex("362B7C3C6773516318A077D7FC5073AE"));
    assert_eq!(block(0xFF01), hex("6A2CC3787889374FBEB4C81B17BA6C44"));
}

/// Keystream generated in one call equals keystream generated block by block: the
/// eight-block batching does not skip or repeat a counter.
#[test]
fn b2_keystream_is_the_same_in_one_call_or_per_block() {
    let key = hex("2B7E151628AED2A6ABF7158809CF4F3C");
    let iv: [u8; 16] = hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD0000").try_into().unwrap();
    let mut whole = vec![0u8; 37 * 16 + 5];
    aes_cm_keystream_xor(&key, &iv, &mut whole);
    for (j, chunk) in whole.chunks(16).enumerate() {
        let mut iv_j = iv;
        iv_j[14..].copy_from_slice(&(j as u16).to_be_bytes());
        let mut one = vec![0u8; chunk.len()];
        aes_cm_keystream_xor(&key, &iv_j, &mut one);
        assert_eq!(chunk, &one[..], "block {j}");
    }
}

/// B.3: master key E1F9...39, master salt 0EC6...E6, index 0, KDR 0.
#[test]
fn b3_key_derivation() {
    let material = hex("E1F97A0D3E018BE0D64FA32C06DE4139 0EC675AD498AFEEBB6960B3AABE6");
    let master = MasterKey::new(SrtpSuite::AesCm128HmacSha1_80, &material).unwrap();
    let mut key = [0u8; 16];
    derive(&master, KdfLabel::RtpEncryption, &mut key);
    assert_eq!(key.to_vec(), hex("C61E7A93744F39EE10734AFE3FF7A087"));
    let mut salt = [0u8; 14];
    derive(&master, KdfLabel::RtpSalt, &mut salt);
    assert_eq!(salt.to_vec(), hex("30CBBC08863D8C85D49DB34A9AE1"));
    let mut auth = [0u8; 20];
    derive(&master, KdfLabel::RtpAuth, &mut auth);
    assert_eq!(
        auth.to_vec(),
        hex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4")
    );
}

/// The SRTCP labels (3, 4, 5) under the B.3 master key. Not printed in RFC 3711; these
/// values are the ones other implementations' test suites carry, and the libsrtp
/// interoperability tests check the same derivation end to end.
#[test]
fn b3_key_derivation_srtcp_labels() {
    let material = hex("E1F97A0D3E018BE0D64FA32C06DE4139 0EC675AD498AFEEBB6960B3AABE6");
    let master = MasterKey::new(SrtpSuite::AesCm128HmacSha1_80, &material).unwrap();
    let mut key = [0u8; 16];
    derive(&master, KdfLabel::RtcpEncryption, &mut key);
    assert_eq!(key.to_vec(), hex("4c1aa45a81f73d61c800bbb00fbb1eaa"));
    let mut auth = [0u8; 20];
    derive(&master, KdfLabel::RtcpAuth, &mut auth);
    assert_eq!(
        auth.to_vec(),
        hex("8d54534feb49ae8e7993a6bd0b844fc323a93dfd")
    );
    let mut salt = [0u8; 14];
    derive(&master, KdfLabel::RtcpSalt, &mut salt);
    assert_eq!(salt.to_vec(), hex("9581c7ad87b3e530bf3e4454a8b3"));
}

/// RFC 2202 test cases 1 to 4 (keys no longer than a block, as SRTP's are).
#[test]
fn hmac_sha1_rfc2202() {
    let cases: [(Vec<u8>, Vec<u8>, &str); 4] = [
        (
            vec![0x0b; 20],
            b"Hi There".to_vec(),
            "b617318655057264e28bc0b6fb378c8ef146be00",
        ),
        (
            b"Jefe".to_vec(),
            b"what do ya want for nothing?".to_vec(),
            "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79",
        ),
        (
            vec![0xaa; 20],
            vec![0xdd; 50],
            "125d7342b9ac11cd91a39af48aa17b4f63f175d3",
        ),
        (
            (1..=25).collect(),
            vec![0xcd; 50],
            "4c9007f4026250c6bc8414f9bf50c86c2d7235da",
        ),
    ];
    for (key, data, expected) in cases {
        assert_eq!(HmacSha1::new(&key).mac(&data, &[]).to_vec(), hex(expected));
    }
}

fn reference_hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(key).unwrap();
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Every message length from 0 to 300 and every split into head and tail (as the
    /// ROC is passed) matches RustCrypto's HMAC over the concatenation.
    #[test]
    fn hmac_sha1_matches_rustcrypto(
        key in proptest::collection::vec(any::<u8>(), 0..=64),
        data in proptest::collection::vec(any::<u8>(), 0..300),
        tail_len in 0usize..=4,
    ) {
        let split = data.len().saturating_sub(tail_len);
        let ours = HmacSha1::new(&key).mac(&data[..split], &data[split..]);
        prop_assert_eq!(ours.to_vec(), reference_hmac(&key, &data));
    }
}
