//! ITU-T G.711 mu-law and A-law (being hardened: exhaustive tests and tables to come).
//!
//! Linear samples are 16-bit; mu-law uses the top 14 bits and A-law the top 13, as the
//! standard's encoders do.

use earshot_types::Codec;

const ULAW_BIAS: i32 = 0x84;
const ULAW_CLIP: i32 = 32635;

/// Encodes one 16-bit linear sample to mu-law.
pub fn ulaw_encode_sample(x: i16) -> u8 {
    let mut s = i32::from(x);
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    if s > ULAW_CLIP {
        s = ULAW_CLIP;
    }
    s += ULAW_BIAS;
    let exp = (31 - (s as u32).leading_zeros()) as i32 - 7;
    let mant = (s >> (exp + 3)) & 0x0f;
    !((sign | (exp << 4) | mant) as u8)
}

/// Decodes one mu-law code to 16-bit linear.
pub fn ulaw_decode_sample(c: u8) -> i16 {
    let c = !c;
    let exp = i32::from((c >> 4) & 0x07);
    let mant = i32::from(c & 0x0f);
    let mag = (((mant << 3) + ULAW_BIAS) << exp) - ULAW_BIAS;
    (if c & 0x80 != 0 { -mag } else { mag }) as i16
}

/// Encodes one 16-bit linear sample to A-law.
pub fn alaw_encode_sample(x: i16) -> u8 {
    let s = i32::from(x) >> 3; // 13-bit
    let (mask, mag) = if s >= 0 { (0xd5, s) } else { (0x55, -s - 1) };
    let code = if mag < 32 {
        mag >> 1
    } else {
        let exp = (31 - (mag as u32).leading_zeros()) as i32 - 4; // 1..=7 for mag < 4096
        if exp > 7 {
            0x7f
        } else {
            (exp << 4) | ((mag >> exp) & 0x0f)
        }
    };
    (code as u8) ^ mask
}

/// Decodes one A-law code to 16-bit linear.
pub fn alaw_decode_sample(c: u8) -> i16 {
    let c = c ^ 0x55;
    let exp = i32::from((c >> 4) & 0x07);
    let mant = i32::from(c & 0x0f);
    let mag = if exp == 0 {
        (mant << 4) + 8
    } else {
        ((mant << 4) + 0x108) << (exp - 1)
    };
    (if c & 0x80 != 0 { mag } else { -mag }) as i16
}

/// mu-law to A-law (G.711 conversion table).
pub fn ulaw_to_alaw(c: u8) -> u8 {
    alaw_encode_sample(ulaw_decode_sample(c))
}

/// A-law to mu-law (G.711 conversion table).
pub fn alaw_to_ulaw(c: u8) -> u8 {
    ulaw_encode_sample(alaw_decode_sample(c))
}

/// Decodes `src` into `dst` (equal lengths; the shorter one bounds the work).
pub fn decode(codec: Codec, src: &[u8], dst: &mut [i16]) {
    let f = match codec {
        Codec::Pcmu => ulaw_decode_sample,
        Codec::Pcma => alaw_decode_sample,
    };
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f(s);
    }
}

/// Encodes `src` into `dst` (equal lengths; the shorter one bounds the work).
pub fn encode(codec: Codec, src: &[i16], dst: &mut [u8]) {
    let f = match codec {
        Codec::Pcmu => ulaw_encode_sample,
        Codec::Pcma => alaw_encode_sample,
    };
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f(s);
    }
}

/// Transcodes G.711 bytes between the two laws without going through a linear buffer.
pub fn transcode(from: Codec, to: Codec, src: &[u8], dst: &mut [u8]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = match (from, to) {
            (Codec::Pcmu, Codec::Pcma) => ulaw_to_alaw(s),
            (Codec::Pcma, Codec::Pcmu) => alaw_to_ulaw(s),
            _ => s,
        };
    }
}
