//! Packet builders and a seeded generator shared by the integration tests (included with
//! `mod support;`). Not a test itself.
#![allow(dead_code)]

/// xorshift64*: small, seedable, good enough to vary test packets.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn fill(&mut self, out: &mut [u8]) {
        for b in out {
            *b = self.next_u64() as u8;
        }
    }
}

/// A seed from `EARSHOT_SEED` or a fixed default, printed so a failure replays.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("EARSHOT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_5127_0000_0011);
    println!("{test}: seed {seed} (EARSHOT_SEED={seed} replays it)");
    seed
}

/// An RTP packet: `csrcs` CSRCs, an RFC 8285 one-byte extension block of `ext_words`
/// words when `Some`, and `payload_len` random octets.
pub fn rtp_packet(
    rng: &mut Rng,
    ssrc: u32,
    seq: u16,
    csrcs: usize,
    ext_words: Option<usize>,
    payload_len: usize,
) -> Vec<u8> {
    let mut p = vec![0x80 | csrcs as u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    if ext_words.is_some() {
        p[0] |= 0x10;
    }
    p[1] = 0;
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&(u32::from(seq).wrapping_mul(160)).to_be_bytes());
    p[8..12].copy_from_slice(&ssrc.to_be_bytes());
    for _ in 0..csrcs {
        p.extend_from_slice(&(rng.next_u64() as u32).to_be_bytes());
    }
    if let Some(words) = ext_words {
        p.extend_from_slice(&[0xBE, 0xDE]);
        p.extend_from_slice(&(words as u16).to_be_bytes());
        let mut ext = vec![0u8; words * 4];
        rng.fill(&mut ext);
        p.extend_from_slice(&ext);
    }
    let mut payload = vec![0u8; payload_len];
    rng.fill(&mut payload);
    p.extend_from_slice(&payload);
    p
}

/// A sender report from `ssrc` with `blocks` report blocks of random content.
pub fn rtcp_packet(rng: &mut Rng, ssrc: u32, blocks: usize) -> Vec<u8> {
    let words = 6 + 6 * blocks; // SSRC + sender info + blocks, in 32-bit words
    let mut p = vec![0x80 | blocks as u8, 200];
    p.extend_from_slice(&(words as u16).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    let mut body = vec![0u8; (words - 1) * 4];
    rng.fill(&mut body);
    p.extend_from_slice(&body);
    p
}

/// `packet` copied into a buffer with `room` spare octets after it.
pub fn with_room(packet: &[u8], room: usize) -> Vec<u8> {
    let mut buf = packet.to_vec();
    buf.resize(packet.len() + room, 0);
    buf
}
