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

// ---------------------------------------------------------------------------------------
// Every kernel variant against the scalar reference, exhaustively.
// ---------------------------------------------------------------------------------------

/// Every SIMD variant this CPU runs (the scalar reference left out), after saying which
/// exist but cannot run here.
fn simd_variants(test: &str) -> Vec<G711Kernels> {
    for (name, needs) in G711Kernels::unavailable() {
        println!("SKIPPED: {test}: variant {name} (needs {needs}, which this CPU lacks)");
    }
    let variants: Vec<_> = G711Kernels::available().into_iter().skip(1).collect();
    for k in &variants {
        println!("{test}: checking variant {}", k.name);
    }
    variants
}

/// A byte that no kernel output is checked against by accident: the dst is pre-filled
/// with it, and everything past the written length must still hold it.
const FILL_BYTE: u8 = 0xA5;
const FILL_SAMPLE: i16 = 0x5A5A;

/// Runs one encoder on `src` into a fresh dst that starts `dst_offset` elements into its
/// buffer (so the dst is unaligned too) and is `extra` elements longer than `src`.
fn run_encode(f: EncodeFn, src: &[i16], dst_offset: usize, extra: usize) -> Vec<u8> {
    let mut buffer = vec![FILL_BYTE; dst_offset + src.len() + extra];
    f(src, &mut buffer[dst_offset..]);
    buffer.drain(..dst_offset);
    buffer
}

fn run_decode(f: DecodeFn, src: &[u8], dst_offset: usize, extra: usize) -> Vec<i16> {
    let mut buffer = vec![FILL_SAMPLE; dst_offset + src.len() + extra];
    f(src, &mut buffer[dst_offset..]);
    buffer.drain(..dst_offset);
    buffer
}

fn encoders(k: &G711Kernels) -> [(&'static str, EncodeFn); 2] {
    [("mu-law", k.ulaw_encode), ("A-law", k.alaw_encode)]
}

fn decoders(k: &G711Kernels) -> [(&'static str, DecodeFn); 2] {
    [("mu-law", k.ulaw_decode), ("A-law", k.alaw_decode)]
}

/// The scalar reference applied sample by sample, with the fill past the end: what
/// every kernel must produce.
fn expected_encode(law: &str, src: &[i16], extra: usize) -> Vec<u8> {
    let per_sample = if law == "mu-law" {
        ulaw_encode_sample
    } else {
        alaw_encode_sample
    };
    let mut out: Vec<u8> = src.iter().map(|&x| per_sample(x)).collect();
    out.resize(src.len() + extra, FILL_BYTE);
    out
}

fn expected_decode(law: &str, src: &[u8], extra: usize) -> Vec<i16> {
    let per_code = if law == "mu-law" {
        ulaw_decode_sample
    } else {
        alaw_decode_sample
    };
    let mut out: Vec<i16> = src.iter().map(|&c| per_code(c)).collect();
    out.resize(src.len() + extra, FILL_SAMPLE);
    out
}

#[test]
fn scalar_kernels_apply_the_per_sample_reference() {
    let scalar = G711Kernels::scalar();
    let all: Vec<i16> = (i16::MIN..=i16::MAX).collect();
    for (law, f) in encoders(&scalar) {
        assert_eq!(run_encode(f, &all, 0, 3), expected_encode(law, &all, 3));
    }
    let codes: Vec<u8> = (0..=255).collect();
    for (law, f) in decoders(&scalar) {
        assert_eq!(run_decode(f, &codes, 0, 3), expected_decode(law, &codes, 3));
    }
}

#[test]
fn every_variant_encodes_all_65536_samples_like_the_reference_at_many_offsets() {
    let all: Vec<i16> = (i16::MIN..=i16::MAX).collect();
    let variants = simd_variants("encode, all samples");
    for k in &variants {
        for (law, f) in encoders(k) {
            // Offsets into the source shift every sample into every lane position of a
            // 32-sample chunk (and make the loads unaligned); the end trims make odd
            // lengths and partial last chunks.
            for start in 0..32 {
                for trim in [0, 1, 15, 31] {
                    let src = &all[start..all.len() - trim];
                    let dst_offset = (start * 7) % 5;
                    assert_eq!(
                        run_encode(f, src, dst_offset, 2),
                        expected_encode(law, src, 2),
                        "{} {law} start {start} trim {trim}",
                        k.name
                    );
                }
            }
            // Every sample value once more in a reversed order.
            let reversed: Vec<i16> = all.iter().rev().copied().collect();
            assert_eq!(
                run_encode(f, &reversed, 1, 0),
                expected_encode(law, &reversed, 0),
                "{} {law} reversed",
                k.name
            );
        }
    }
}

#[test]
fn every_variant_decodes_all_256_codes_like_the_reference_at_many_offsets() {
    // Each code at every position of a 32-code chunk: 256 x 33 codes, coprime stride.
    let codes: Vec<u8> = (0..256 * 33).map(|i| (i * 37 % 256) as u8).collect();
    let variants = simd_variants("decode, all codes");
    for k in &variants {
        for (law, f) in decoders(k) {
            for start in 0..32 {
                for trim in [0, 1, 15, 31] {
                    let src = &codes[start..codes.len() - trim];
                    let dst_offset = (start * 3) % 7;
                    assert_eq!(
                        run_decode(f, src, dst_offset, 2),
                        expected_decode(law, src, 2),
                        "{} {law} start {start} trim {trim}",
                        k.name
                    );
                }
            }
            // All 256 codes in order, as one 256-code slice.
            let in_order: Vec<u8> = (0..=255).collect();
            assert_eq!(
                run_decode(f, &in_order, 1, 0),
                expected_decode(law, &in_order, 0),
                "{} {law} in order",
                k.name
            );
        }
    }
}

#[test]
fn every_variant_is_exact_at_every_length_up_to_300() {
    // Lengths below one chunk (scalar path), at one chunk, and every partial last chunk;
    // the extremes and both zeros sit at the ends where tails are handled.
    let mut samples: Vec<i16> = (0..300)
        .map(|i: i32| ((i * 2617 + 12345) % 65536 - 32768) as i16)
        .collect();
    samples[..4].copy_from_slice(&[i16::MIN, i16::MAX, -1, 0]);
    let codes: Vec<u8> = (0..300).map(|i: u32| (i * 101 + 7) as u8).collect();
    let variants = simd_variants("every length");
    for k in &variants {
        for len in 0..=300 {
            for offset in [0, 1, 3] {
                if offset + len > 300 {
                    continue;
                }
                let mut src = samples[offset..offset + len].to_vec();
                src.reverse(); // puts the extremes at the tail
                for (law, f) in encoders(k) {
                    assert_eq!(
                        run_encode(f, &src, offset, 5),
                        expected_encode(law, &src, 5),
                        "{} {law} encode len {len} offset {offset}",
                        k.name
                    );
                }
                let src = &codes[offset..offset + len];
                for (law, f) in decoders(k) {
                    assert_eq!(
                        run_decode(f, src, offset, 5),
                        expected_decode(law, src, 5),
                        "{} {law} decode len {len} offset {offset}",
                        k.name
                    );
                }
            }
        }
    }
}

#[test]
fn every_kernel_stops_at_the_shorter_buffer() {
    let samples: Vec<i16> = (0..100).map(|i| i * 300 - 15000).collect();
    let codes: Vec<u8> = (0..100u32).map(|i| (i * 5) as u8).collect();
    for k in G711Kernels::available() {
        for (src_len, dst_len) in [(100, 40), (40, 100), (31, 100), (100, 33), (0, 10)] {
            for (law, f) in encoders(&k) {
                let mut dst = vec![FILL_BYTE; dst_len];
                f(&samples[..src_len], &mut dst);
                let n = src_len.min(dst_len);
                let mut expected = expected_encode(law, &samples[..n], 0);
                expected.resize(dst_len, FILL_BYTE);
                assert_eq!(dst, expected, "{} {law} {src_len} -> {dst_len}", k.name);
            }
            for (law, f) in decoders(&k) {
                let mut dst = vec![FILL_SAMPLE; dst_len];
                f(&codes[..src_len], &mut dst);
                let n = src_len.min(dst_len);
                let mut expected = expected_decode(law, &codes[..n], 0);
                expected.resize(dst_len, FILL_SAMPLE);
                assert_eq!(dst, expected, "{} {law} {src_len} -> {dst_len}", k.name);
            }
        }
    }
}

#[test]
fn detection_prefers_the_fastest_variant_unless_forced() {
    let available = G711Kernels::available();
    assert_eq!(available[0].name, "scalar");
    assert_eq!(G711Kernels::detect_with(true).name, "scalar");
    assert_eq!(
        G711Kernels::detect_with(false).name,
        available[available.len() - 1].name
    );
    let mut names: Vec<_> = available.iter().map(|k| k.name).collect();
    names.dedup();
    assert_eq!(names.len(), available.len(), "no variant listed twice");
    // What exists is either available or reported as skipped, never both.
    for (name, _) in G711Kernels::unavailable() {
        assert!(!names.contains(&name), "{name}");
    }
    // The process-wide table is one of them, and stays the same.
    let chosen = kernels().name;
    assert!(names.contains(&chosen), "{chosen}");
    assert_eq!(kernels().name, chosen);
}

#[test]
fn kernel_table_methods_pick_the_law_by_codec() {
    let samples: Vec<i16> = (-100..100).map(|i| i * 163).collect();
    for k in G711Kernels::available() {
        let mut bytes = vec![0u8; samples.len()];
        k.encode(Codec::Pcmu, &samples, &mut bytes);
        assert_eq!(bytes, expected_encode("mu-law", &samples, 0), "{}", k.name);
        k.encode(Codec::Pcma, &samples, &mut bytes);
        assert_eq!(bytes, expected_encode("A-law", &samples, 0), "{}", k.name);
        let mut linear = vec![0i16; bytes.len()];
        k.decode(Codec::Pcma, &bytes, &mut linear);
        assert_eq!(linear, expected_decode("A-law", &bytes, 0), "{}", k.name);
        k.decode(Codec::Pcmu, &bytes, &mut linear);
        assert_eq!(linear, expected_decode("mu-law", &bytes, 0), "{}", k.name);
    }
}

// ---------------------------------------------------------------------------------------
// AVX-512 on an emulated CPU: the harness half of `emulate_avx512.py`.
// ---------------------------------------------------------------------------------------

/// One kernel call for the emulator, prepared natively: buffers, the kernel, and what
/// the scalar reference produced (with the fill past the end).
enum EmuCase {
    Encode {
        kernel: EncodeFn,
        src: Vec<i16>,
        dst: Vec<u8>,
        expected: Vec<u8>,
    },
    Decode {
        kernel: DecodeFn,
        src: Vec<u8>,
        dst: Vec<i16>,
        expected: Vec<i16>,
    },
}

/// Runs one prepared case and compares with the reference: returns the number of
/// mismatching elements shifted left by one, with bit 0 set when this CPU reports
/// AVX-512F and BW (so the kernel ran its vector body, not the scalar fallback). Called
/// by the emulator with the case's address in `rdi`; it allocates nothing and touches
/// no thread-local state, so it runs on a bare emulated CPU.
#[allow(improper_ctypes_definitions)] // called only by our own emulator driver
extern "C" fn emu_run(case: &mut EmuCase) -> u64 {
    let detected = is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw");
    let mismatches = match case {
        EmuCase::Encode {
            kernel,
            src,
            dst,
            expected,
        } => {
            kernel(src, dst);
            dst.iter()
                .zip(expected.iter())
                .filter(|(a, b)| a != b)
                .count()
        }
        EmuCase::Decode {
            kernel,
            src,
            dst,
            expected,
        } => {
            kernel(src, dst);
            dst.iter()
                .zip(expected.iter())
                .filter(|(a, b)| a != b)
                .count()
        }
    };
    ((mismatches as u64) << 1) | u64::from(detected)
}

/// Not a test by itself: `engine/dsp/src/g711/emulate_avx512.py` runs this in a process
/// whose memory it copies into an emulated AVX-512 CPU (bochscpu), where it calls
/// [`emu_run`] on every case. This half prepares the cases natively (without running
/// CPU detection, whose cached "no AVX-512" would otherwise be copied too), prints their
/// addresses as one JSON line, and waits on stdin while the driver reads its memory.
#[test]
#[ignore = "harness for emulate_avx512.py (needs an AVX-512 emulator)"]
fn avx512_emulation_harness() {
    let kernels = G711Kernels::compiled()
        .into_iter()
        .find(|k| k.name == "avx512")
        .expect("x86-64 build");
    let scalar = G711Kernels::scalar();
    let all: Vec<i16> = (i16::MIN..=i16::MAX).collect();
    let codes: Vec<u8> = (0..256 * 33).map(|i| (i * 37 % 256) as u8).collect();
    let mut cases = Vec::new();
    let mut labels = Vec::new();
    // The same shapes as the native exhaustive tests: every start offset in a chunk,
    // partial last chunks, and short slices that take the scalar path.
    for (law, enc, reference) in [
        ("mu-law", kernels.ulaw_encode, scalar.ulaw_encode),
        ("A-law", kernels.alaw_encode, scalar.alaw_encode),
    ] {
        for start in 0..32 {
            for trim in [0, 1, 15, 31] {
                let src = all[start..all.len() - trim].to_vec();
                let mut expected = vec![FILL_BYTE; src.len() + 2];
                reference(&src, &mut expected);
                let dst = vec![FILL_BYTE; src.len() + 2];
                labels.push(format!("encode {law} start {start} trim {trim}"));
                cases.push(EmuCase::Encode {
                    kernel: enc,
                    src,
                    dst,
                    expected,
                });
            }
        }
        for len in [0, 1, 31, 32, 33, 63, 64, 65, 80, 159, 160, 161, 240, 300] {
            let src = all[1000..1000 + len].to_vec();
            let mut expected = vec![FILL_BYTE; len + 2];
            reference(&src, &mut expected);
            labels.push(format!("encode {law} len {len}"));
            cases.push(EmuCase::Encode {
                kernel: enc,
                src,
                dst: vec![FILL_BYTE; len + 2],
                expected,
            });
        }
    }
    for (law, dec, reference) in [
        ("mu-law", kernels.ulaw_decode, scalar.ulaw_decode),
        ("A-law", kernels.alaw_decode, scalar.alaw_decode),
    ] {
        for start in 0..32 {
            for trim in [0, 1, 15, 31] {
                let src = codes[start..codes.len() - trim].to_vec();
                let mut expected = vec![FILL_SAMPLE; src.len() + 2];
                reference(&src, &mut expected);
                let dst = vec![FILL_SAMPLE; src.len() + 2];
                labels.push(format!("decode {law} start {start} trim {trim}"));
                cases.push(EmuCase::Decode {
                    kernel: dec,
                    src,
                    dst,
                    expected,
                });
            }
        }
        for len in [
            0, 1, 31, 32, 33, 63, 64, 65, 80, 159, 160, 161, 240, 256, 300,
        ] {
            let src: Vec<u8> = (0..len).map(|i| (i * 101 + 7) as u8).collect();
            let mut expected = vec![FILL_SAMPLE; len + 2];
            reference(&src, &mut expected);
            labels.push(format!("decode {law} len {len}"));
            cases.push(EmuCase::Decode {
                kernel: dec,
                src,
                dst: vec![FILL_SAMPLE; len + 2],
                expected,
            });
        }
    }
    // One case whose expectation is deliberately wrong, so the driver can check that a
    // mismatch is reported (the comparison is live, not vacuous).
    let mut wrong = vec![FILL_BYTE; 66];
    (scalar.ulaw_encode)(&all[..64], &mut wrong);
    wrong[40] ^= 1;
    labels.push("control: expected one mismatch".to_string());
    cases.push(EmuCase::Encode {
        kernel: kernels.ulaw_encode,
        src: all[..64].to_vec(),
        dst: vec![FILL_BYTE; 66],
        expected: wrong,
    });

    let addresses: Vec<String> = cases
        .iter_mut()
        .map(|c| format!("{}", c as *mut EmuCase as usize))
        .collect();
    let labels: Vec<String> = labels.iter().map(|l| format!("\"{l}\"")).collect();
    println!(
        "EMU {{\"entry\": {}, \"cases\": [{}], \"labels\": [{}]}}",
        emu_run as extern "C" fn(&mut EmuCase) -> u64 as usize,
        addresses.join(", "),
        labels.join(", ")
    );
    // Wait for the driver to finish reading this process's memory.
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).expect("stdin");
    // Keep the cases alive (and unmoved) until here.
    assert!(!cases.is_empty());
}
