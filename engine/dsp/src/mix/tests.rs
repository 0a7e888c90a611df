//! The scalar reference against the formula, and every SIMD variant against the scalar
//! reference, bit for bit.

use super::*;
use proptest::prelude::*;

/// The module doc's formula in 64-bit arithmetic, independent of every kernel.
fn formula(len: usize, inputs: &[Vec<i16>], gains: &[Gain]) -> Vec<i16> {
    (0..len)
        .map(|i| {
            let sum: i64 = inputs
                .iter()
                .zip(gains)
                .map(|(input, g)| (i64::from(input[i]) * i64::from(g.0)).div_euclid(4096))
                .sum();
            sum.clamp(-32768, 32767) as i16
        })
        .collect()
}

fn run(kernels: &MixKernels, len: usize, inputs: &[Vec<i16>], gains: &[Gain]) -> Vec<i16> {
    let refs: Vec<&[i16]> = inputs.iter().map(Vec::as_slice).collect();
    // Pre-fill with garbage so a kernel that skips a sample is caught.
    let mut out = vec![0x5A5A_i16; len];
    (kernels.mix)(&mut out, &refs, gains);
    out
}

#[test]
fn scalar_reference_follows_the_formula_on_hand_picked_values() {
    let scalar = MixKernels::scalar();
    // Unity gains add; the products are shifted one by one, rounding toward -infinity.
    let inputs = vec![vec![1000, -3, 7], vec![2000, -3, 7]];
    let out = run(&scalar, 3, &inputs, &[Gain::UNITY, Gain(2048)]);
    // 1000 + 2000/2; -3 + (-3/2 = -1.5 -> -2); 7 + (7/2 = 3.5 -> 3).
    assert_eq!(out, [2000, -5, 10]);
    // Accumulate first, saturate once: +30000 +30000 -30000 is +30000, not 2767.
    let inputs = vec![vec![30000], vec![30000], vec![-30000]];
    assert_eq!(run(&scalar, 1, &inputs, &[Gain::UNITY; 3]), [30000]);
    // Muted inputs contribute nothing; no inputs is silence.
    assert_eq!(run(&scalar, 2, &[vec![123, -456]], &[Gain::MUTE]), [0, 0]);
    assert_eq!(run(&scalar, 4, &[], &[]), [0, 0, 0, 0]);
}

#[test]
fn every_kernel_saturates_both_ways_at_every_length() {
    for kernels in MixKernels::available() {
        for len in 0..=100 {
            for n in [1, 2, 3, 16] {
                let loud = vec![vec![i16::MAX; len]; n];
                let out = run(&kernels, len, &loud, &vec![Gain(u16::MAX); n]);
                assert!(
                    out.iter().all(|&s| s == i16::MAX),
                    "{} len {len} n {n}",
                    kernels.name
                );
                let loud = vec![vec![i16::MIN; len]; n];
                let out = run(&kernels, len, &loud, &vec![Gain(u16::MAX); n]);
                assert!(
                    out.iter().all(|&s| s == i16::MIN),
                    "{} len {len} n {n}",
                    kernels.name
                );
            }
            // Extremes that cancel exactly, with the largest gain: no intermediate clamp.
            let inputs = vec![vec![i16::MAX; len], vec![i16::MIN; len], vec![1; len]];
            let gains = [Gain(u16::MAX); 3];
            let expected = formula(len, &inputs, &gains);
            assert_eq!(
                run(&kernels, len, &inputs, &gains),
                expected,
                "{}",
                kernels.name
            );
        }
    }
}

#[test]
fn every_kernel_writes_silence_for_zero_inputs() {
    for kernels in MixKernels::available() {
        assert_eq!(run(&kernels, 77, &[], &[]), vec![0; 77], "{}", kernels.name);
    }
}

#[test]
fn detection_prefers_the_fastest_variant_unless_forced() {
    let available = MixKernels::available();
    assert_eq!(available[0].name, "scalar");
    assert_eq!(MixKernels::detect_with(true).name, "scalar");
    assert_eq!(
        MixKernels::detect_with(false).name,
        available[available.len() - 1].name
    );
    let mut names: Vec<_> = available.iter().map(|k| k.name).collect();
    names.dedup();
    assert_eq!(names.len(), available.len(), "no variant listed twice");
}

#[test]
#[should_panic(expected = "one gain per input")]
fn a_missing_gain_is_a_programmer_error() {
    let mut out = [0i16; 4];
    (MixKernels::detect_with(false).mix)(&mut out, &[&[1, 2, 3, 4]], &[]);
}

#[test]
#[should_panic(expected = "every input is one output frame long")]
fn a_short_input_is_a_programmer_error() {
    let mut out = [0i16; 40];
    (MixKernels::detect_with(false).mix)(&mut out, &[&[0; 39]], &[Gain::UNITY]);
}

fn sample() -> impl Strategy<Value = i16> {
    prop_oneof![8 => any::<i16>(), 1 => Just(i16::MAX), 1 => Just(i16::MIN), 1 => Just(0)]
}

fn gain() -> impl Strategy<Value = Gain> {
    prop_oneof![
        4 => any::<u16>().prop_map(Gain),
        2 => Just(Gain::UNITY),
        1 => Just(Gain::MUTE),
        1 => Just(Gain(u16::MAX)),
    ]
}

/// 0..=16 inputs of one random length in 0..=1000 (odd lengths included), one gain each.
fn mix_case() -> impl Strategy<Value = (usize, Vec<Vec<i16>>, Vec<Gain>)> {
    (0usize..=MAX_SESSION_LEGS, 0usize..=1000).prop_flat_map(|(n, len)| {
        (
            Just(len),
            prop::collection::vec(prop::collection::vec(sample(), len), n),
            prop::collection::vec(gain(), n),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn every_variant_is_bit_identical_to_the_scalar_reference(case in mix_case()) {
        let (len, inputs, gains) = case;
        let reference = run(&MixKernels::scalar(), len, &inputs, &gains);
        prop_assert_eq!(&reference, &formula(len, &inputs, &gains));
        for kernels in MixKernels::available() {
            prop_assert_eq!(&run(&kernels, len, &inputs, &gains), &reference, "{}", kernels.name);
        }
    }
}

/// One or two inputs at unity gain: the shapes the SIMD kernels take a shortcut for
/// (a copy, one saturating add), with saturating and odd-length inputs.
fn unity_case() -> impl Strategy<Value = (usize, Vec<Vec<i16>>, Vec<Gain>)> {
    (1usize..=2, 0usize..=1000).prop_flat_map(|(n, len)| {
        (
            Just(len),
            prop::collection::vec(prop::collection::vec(sample(), len), n),
            Just(vec![Gain::UNITY; n]),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn unity_shortcuts_are_bit_identical_to_the_scalar_reference(case in unity_case()) {
        let (len, inputs, gains) = case;
        let reference = run(&MixKernels::scalar(), len, &inputs, &gains);
        for kernels in MixKernels::available() {
            prop_assert_eq!(&run(&kernels, len, &inputs, &gains), &reference, "{}", kernels.name);
            if let [a, b] = &inputs[..] {
                let mut out = vec![7i16; len];
                (kernels.pair)(&mut out, a, b);
                prop_assert_eq!(&out, &reference, "pair {}", kernels.name);
            }
        }
    }
}
