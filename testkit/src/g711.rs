//! G.711 for tests, always through `earshot-dsp` (the engine's own bit-exact tables):
//! a test never carries a second G.711 of its own, so an encoder bug cannot hide behind
//! a matching bug in the test.

pub use earshot_dsp::g711::{
    alaw_decode_sample, alaw_encode_sample, decode, encode, ulaw_decode_sample, ulaw_encode_sample,
};
use earshot_types::Codec;

use crate::tone::Tone;

/// Frame `index` of `tone` (samples `index * N ..`), encoded with `codec`.
pub fn tone_frame<const N: usize>(codec: Codec, tone: &Tone, index: u64) -> [u8; N] {
    let mut pcm = [0i16; N];
    tone.fill(index * N as u64, &mut pcm);
    let mut out = [0u8; N];
    encode(codec, &pcm, &mut out);
    out
}

/// `payload` decoded with `codec`.
pub fn decode_vec(codec: Codec, payload: &[u8]) -> Vec<i16> {
    let mut pcm = vec![0i16; payload.len()];
    decode(codec, payload, &mut pcm);
    pcm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tone_frame_round_trips_within_g711_precision() {
        let tone = Tone::narrowband(500.0);
        let frame: [u8; 160] = tone_frame(Codec::Pcmu, &tone, 3);
        let back = decode_vec(Codec::Pcmu, &frame);
        for (i, &s) in back.iter().enumerate() {
            let want = tone.sample(480 + i as u64);
            // mu-law steps are at most 1/16 of the magnitude (plus the bias near zero).
            let tolerance = i32::from(want).abs() / 16 + 8;
            assert!(
                (i32::from(s) - i32::from(want)).abs() <= tolerance,
                "sample {i}: {s} vs {want}"
            );
        }
        let alaw: [u8; 160] = tone_frame(Codec::Pcma, &tone, 3);
        assert_ne!(alaw, frame, "A-law codes differ from mu-law codes");
    }
}
