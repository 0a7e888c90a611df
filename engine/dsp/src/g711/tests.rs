//! Exhaustive checks of the G.711 tables against an independent derivation.
//!
//! The implementation ports G.191's bit-twiddling formulas. These tests instead rebuild
//! every code from the *segment end points and step sizes* printed in G.711 Tables 1
//! (A-law) and 2 (mu-law), and the transcoding tables from the two laws' stated maximum
//! loads, so a shared mistake is unlikely.

use super::*;

/// One law's quantiser as the standard's table describes it, in that law's own units
/// (13-bit for A-law, 14-bit for mu-law): segment `k` covers magnitudes
/// `[start(k), ends[k])` in steps of `steps[k]`, 16 codes per segment.
struct Quantiser {
    /// Where segment 0 starts. mu-law's first interval is [-1, 1) folded onto [0, 1):
    /// its code 0 decodes to exactly 0.
    first_start: i32,
    ends: [i32; 8],
    steps: [i32; 8],
    /// 16-bit units per unit of this law (the left-justification shift).
    scale_16bit: i32,
}

const A_LAW: Quantiser = Quantiser {
    first_start: 0,
    ends: [32, 64, 128, 256, 512, 1024, 2048, 4096],
    steps: [2, 2, 4, 8, 16, 32, 64, 128],
    scale_16bit: 8,
};

const MU_LAW: Quantiser = Quantiser {
    first_start: -1,
    ends: [31, 95, 223, 479, 991, 2015, 4063, 8159],
    steps: [2, 4, 8, 16, 32, 64, 128, 256],
    scale_16bit: 4,
};

impl Quantiser {
    fn start(&self, segment: usize) -> i32 {
        if segment == 0 {
            self.first_start
        } else {
            self.ends[segment - 1]
        }
    }

    /// The magnitude number (0..128) of a magnitude in this law's units. Magnitudes past
    /// the last decision value overload to the top code.
    fn magnitude_number(&self, magnitude: i32) -> u8 {
        for segment in 0..8 {
            if magnitude < self.ends[segment] {
                let q = (magnitude - self.start(segment)) / self.steps[segment];
                assert!((0..16).contains(&q));
                return (16 * segment as i32 + q) as u8;
            }
        }
        127
    }

    /// Decoder output magnitude, in 16-bit units: the middle of the decision interval.
    fn output_16bit(&self, number: u8) -> i32 {
        let segment = usize::from(number / 16);
        let q = i32::from(number % 16);
        let step = self.steps[segment];
        (self.start(segment) + q * step + step / 2) * self.scale_16bit
    }

    /// Sign and magnitude of a 16-bit sample as G.191 quantises it: truncate to this
    /// law's units (floor), and code a negative value `v` as magnitude `-v - 1`.
    fn sign_and_magnitude(&self, x: i16) -> (bool, i32) {
        let v = i32::from(x).div_euclid(self.scale_16bit);
        if v >= 0 { (true, v) } else { (false, -v - 1) }
    }
}

/// mu-law byte: sign bit set for positive, magnitude number inverted.
fn mu_code(positive: bool, number: u8) -> u8 {
    (if positive { 0x80 } else { 0 }) | (0x7F - number)
}

/// A-law byte: sign bit set for positive, even bits inverted.
fn a_code(positive: bool, number: u8) -> u8 {
    ((if positive { 0x80 } else { 0 }) | number) ^ 0x55
}

fn mu_number(code: u8) -> (bool, u8) {
    (code & 0x80 != 0, 0x7F - (code & 0x7F))
}

fn a_number(code: u8) -> (bool, u8) {
    (code & 0x80 != 0, (code ^ 0x55) & 0x7F)
}

#[test]
fn ulaw_encoder_matches_the_standard_segments_for_all_65536_samples() {
    for x in i16::MIN..=i16::MAX {
        let (positive, magnitude) = MU_LAW.sign_and_magnitude(x);
        let expected = mu_code(positive, MU_LAW.magnitude_number(magnitude));
        assert_eq!(ulaw_encode_sample(x), expected, "sample {x}");
    }
}

#[test]
fn alaw_encoder_matches_the_standard_segments_for_all_65536_samples() {
    for x in i16::MIN..=i16::MAX {
        let (positive, magnitude) = A_LAW.sign_and_magnitude(x);
        let expected = a_code(positive, A_LAW.magnitude_number(magnitude));
        assert_eq!(alaw_encode_sample(x), expected, "sample {x}");
    }
}

#[test]
fn table_encoders_equal_the_reference_formulas_for_all_65536_samples() {
    // The tables index by the top bits only; this proves no lower bit mattered.
    for x in i16::MIN..=i16::MAX {
        assert_eq!(ulaw_encode_sample(x), ulaw_compress(x), "mu-law {x}");
        assert_eq!(alaw_encode_sample(x), alaw_compress(x), "A-law {x}");
    }
}

#[test]
fn ulaw_decoder_outputs_the_middle_of_each_decision_interval() {
    for code in 0..=255u8 {
        let (positive, number) = mu_number(code);
        let magnitude = MU_LAW.output_16bit(number);
        let expected = if positive { magnitude } else { -magnitude };
        assert_eq!(
            i32::from(ulaw_decode_sample(code)),
            expected,
            "code {code:#04x}"
        );
        assert_eq!(ulaw_decode_sample(code), ulaw_expand(code));
    }
}

#[test]
fn alaw_decoder_outputs_the_middle_of_each_decision_interval() {
    for code in 0..=255u8 {
        let (positive, number) = a_number(code);
        let magnitude = A_LAW.output_16bit(number);
        let expected = if positive { magnitude } else { -magnitude };
        assert_eq!(
            i32::from(alaw_decode_sample(code)),
            expected,
            "code {code:#04x}"
        );
        assert_eq!(alaw_decode_sample(code), alaw_expand(code));
    }
}

#[test]
fn known_values_from_the_standard() {
    // Silence: mu-law's "positive zero" and A-law's smallest positive code.
    assert_eq!(ulaw_encode_sample(0), 0xFF);
    assert_eq!(alaw_encode_sample(0), 0xD5);
    // -1 is quantised like 0 but keeps its sign (one's complement).
    assert_eq!(ulaw_encode_sample(-1), 0x7F);
    assert_eq!(alaw_encode_sample(-1), 0x55);
    // Full scale clips to the top codes.
    assert_eq!(ulaw_encode_sample(i16::MAX), 0x80);
    assert_eq!(ulaw_encode_sample(i16::MIN), 0x00);
    assert_eq!(alaw_encode_sample(i16::MAX), 0xAA);
    assert_eq!(alaw_encode_sample(i16::MIN), 0x2A);
    // The top mu-law code starts at decision value 7903 (14-bit), 31612 in 16 bits, and
    // everything above the last decision value 8159 clips to it.
    assert_eq!(ulaw_encode_sample(31611), 0x81);
    assert_eq!(ulaw_encode_sample(31612), 0x80);
    assert_eq!(ulaw_encode_sample(-31613), 0x00);
    assert_eq!(ulaw_encode_sample(-31612), 0x01);
    // Decoder extremes: 8031 * 4 and 4032 * 8.
    assert_eq!(ulaw_decode_sample(0x80), 32124);
    assert_eq!(ulaw_decode_sample(0x00), -32124);
    assert_eq!(alaw_decode_sample(0xAA), 32256);
    assert_eq!(alaw_decode_sample(0x2A), -32256);
    assert_eq!(ulaw_decode_sample(0xFF), 0);
    assert_eq!(ulaw_decode_sample(0x7F), 0);
    assert_eq!(alaw_decode_sample(0xD5), 8);
    assert_eq!(alaw_decode_sample(0x55), -8);
}

#[test]
fn every_code_survives_decode_then_encode_except_mulaw_negative_zero() {
    for code in 0..=255u8 {
        assert_eq!(
            alaw_encode_sample(alaw_decode_sample(code)),
            code,
            "A-law {code:#04x}"
        );
        let mu = ulaw_encode_sample(ulaw_decode_sample(code));
        if code == 0x7F {
            // 0x7F and 0xFF both decode to 0, which encodes as 0xFF.
            assert_eq!(mu, 0xFF);
        } else {
            assert_eq!(mu, code, "mu-law {code:#04x}");
        }
    }
}

/// mu-law 14-bit units per A-law 13-bit unit. G.711 states the theoretical maximum
/// load of each law: A-law's decision value 4096 is +3.14 dBm0 and mu-law's 8159 is
/// +3.17 dBm0. The conversion tables map each decoder output to the other law's
/// nearest output at the same physical level.
#[allow(clippy::approx_constant)] // +3.14 dBm0 is G.711's A-law maximum load, not pi
fn mu_units_per_a_unit() -> f64 {
    (8159.0 / 4096.0) * 10f64.powf(-(3.17 - 3.14) / 20.0)
}

/// Index of the value in `candidates` closest to `target`; asserts there is no near-tie,
/// so the derivation does not depend on floating-point luck.
fn nearest(candidates: &[f64], target: f64) -> u8 {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|&a, &b| {
        (candidates[a] - target)
            .abs()
            .total_cmp(&(candidates[b] - target).abs())
    });
    let best = (candidates[order[0]] - target).abs();
    let second = (candidates[order[1]] - target).abs();
    assert!(second - best > 1e-6, "tie near {target}");
    order[0] as u8
}

#[test]
fn ulaw_to_alaw_is_g711_table_3_derived_from_signal_levels() {
    let a_outputs: Vec<f64> = (0..128u8)
        .map(|n| f64::from(A_LAW.output_16bit(n)) / 8.0)
        .collect();
    for code in 0..=255u8 {
        let (positive, number) = mu_number(code);
        let level_mu = f64::from(MU_LAW.output_16bit(number)) / 4.0;
        let expected = a_code(
            positive,
            nearest(&a_outputs, level_mu / mu_units_per_a_unit()),
        );
        assert_eq!(ulaw_to_alaw(code), expected, "mu-law {code:#04x}");
    }
}

#[test]
fn alaw_to_ulaw_is_g711_table_4_derived_from_signal_levels() {
    let mu_outputs: Vec<f64> = (0..128u8)
        .map(|n| f64::from(MU_LAW.output_16bit(n)) / 4.0)
        .collect();
    for code in 0..=255u8 {
        let (positive, number) = a_number(code);
        let level_a = f64::from(A_LAW.output_16bit(number)) / 8.0;
        let expected = mu_code(
            positive,
            nearest(&mu_outputs, level_a * mu_units_per_a_unit()),
        );
        assert_eq!(alaw_to_ulaw(code), expected, "A-law {code:#04x}");
    }
}

#[test]
fn transcoding_differs_from_decode_then_encode_where_the_standard_says() {
    // The module doc claims 44 mu-law and 32 A-law codes differ; this keeps it honest.
    let mu_differ = (0..=255u8)
        .filter(|&c| ulaw_to_alaw(c) != alaw_encode_sample(ulaw_decode_sample(c)))
        .count();
    let a_differ = (0..=255u8)
        .filter(|&c| alaw_to_ulaw(c) != ulaw_encode_sample(alaw_decode_sample(c)))
        .count();
    assert_eq!((mu_differ, a_differ), (44, 32));
    // The erratum entries: mu-law number 80 <-> A-law number 80 (magnitude index 79).
    assert_eq!(ulaw_to_alaw(0xFF ^ 80), a_code(true, 79));
    assert_eq!(alaw_to_ulaw(a_code(true, 79)), mu_code(true, 80));
}

#[test]
fn slice_functions_apply_the_per_sample_functions() {
    let samples: Vec<i16> = (i16::MIN..=i16::MAX).step_by(7).collect();
    for (codec, enc, dec) in [
        (
            Codec::Pcmu,
            ulaw_encode_sample as fn(i16) -> u8,
            ulaw_decode_sample as fn(u8) -> i16,
        ),
        (Codec::Pcma, alaw_encode_sample, alaw_decode_sample),
    ] {
        let mut bytes = vec![0u8; samples.len()];
        encode(codec, &samples, &mut bytes);
        assert!(bytes.iter().zip(&samples).all(|(&b, &s)| b == enc(s)));

        let codes: Vec<u8> = (0..=255).collect();
        let mut linear = vec![0i16; 256];
        decode(codec, &codes, &mut linear);
        assert!(linear.iter().zip(&codes).all(|(&l, &c)| l == dec(c)));
    }
    let codes: Vec<u8> = (0..=255).collect();
    let mut out = [0u8; 256];
    transcode(Codec::Pcmu, Codec::Pcma, &codes, &mut out);
    assert!(out.iter().zip(&codes).all(|(&o, &c)| o == ulaw_to_alaw(c)));
    transcode(Codec::Pcma, Codec::Pcmu, &codes, &mut out);
    assert!(out.iter().zip(&codes).all(|(&o, &c)| o == alaw_to_ulaw(c)));
    transcode(Codec::Pcma, Codec::Pcma, &codes, &mut out);
    assert_eq!(out[..], codes[..]);
}

#[test]
fn slice_functions_stop_at_the_shorter_buffer() {
    let mut linear = [7i16; 4];
    decode(Codec::Pcmu, &[0xFF, 0x80], &mut linear);
    assert_eq!(linear, [0, 32124, 7, 7]);
    let mut bytes = [1u8; 2];
    encode(Codec::Pcma, &[0, 0, 0, 0], &mut bytes);
    assert_eq!(bytes, [0xD5, 0xD5]);
    let mut out = [9u8; 3];
    transcode(Codec::Pcmu, Codec::Pcmu, &[1, 2], &mut out);
    assert_eq!(out, [1, 2, 9]);
}
