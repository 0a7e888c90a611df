//! Sequence validation and loss (RFC 3550 A.1, A.3) and interarrival jitter (A.8).

use earshot_types::{RtpTs, SeqNo};
use earshot_wire::seq::{JitterEstimator, SeqOutcome, SeqTracker};
use proptest::prelude::*;

fn feed(tracker: &mut SeqTracker, seqs: impl IntoIterator<Item = u16>) -> Vec<SeqOutcome> {
    seqs.into_iter()
        .map(|s| tracker.handle_seq(SeqNo(s)))
        .collect()
}

/// A tracker already past probation, with `last` as its highest sequence number.
fn validated_at(last: u16) -> SeqTracker {
    let mut tracker = SeqTracker::new();
    feed(&mut tracker, [last.wrapping_sub(1), last]);
    assert!(tracker.is_valid());
    tracker
}

#[test]
fn probation_requires_two_in_sequence() {
    let mut tracker = SeqTracker::new();
    assert_eq!(
        feed(&mut tracker, [100, 150, 151]),
        [
            SeqOutcome::Probation,
            SeqOutcome::Probation,
            SeqOutcome::Accepted
        ]
    );
    assert!(tracker.is_valid());
    // A.1 restarts the statistics at the packet that ends probation.
    assert_eq!(tracker.received(), 1);
    assert_eq!(tracker.expected(), 1);
    assert_eq!(tracker.max_seq(), SeqNo(151));

    let mut fresh = SeqTracker::new();
    assert_eq!(fresh.handle_seq(SeqNo(7)), SeqOutcome::Probation);
    assert!(!fresh.is_valid());
    assert_eq!(fresh.received(), 0);
}

#[test]
fn wrap_around_increments_cycles_in_the_extended_max() {
    let mut tracker = validated_at(65534);
    let outcomes = feed(&mut tracker, [65535, 0, 1]);
    assert!(outcomes.iter().all(|o| *o == SeqOutcome::Accepted));
    assert_eq!(tracker.extended_max(), (1 << 16) + 1);
    assert_eq!(tracker.expected(), 4); // 65534, 65535, 0, 1
    assert_eq!(tracker.received(), 4);
    assert_eq!(tracker.cumulative_lost(), 0);
}

#[test]
fn large_jump_is_accepted_only_after_two_sequential_packets() {
    let mut tracker = validated_at(11);
    assert_eq!(tracker.handle_seq(SeqNo(5000)), SeqOutcome::BadSeq);
    assert_eq!(tracker.received(), 1, "a bad packet is not counted");
    assert_eq!(tracker.max_seq(), SeqNo(11));
    assert_eq!(tracker.handle_seq(SeqNo(5001)), SeqOutcome::Resynced);
    assert_eq!(tracker.max_seq(), SeqNo(5001));
    assert_eq!((tracker.expected(), tracker.received()), (1, 1));
    assert_eq!(tracker.handle_seq(SeqNo(5002)), SeqOutcome::Accepted);

    // A lone jump followed by the old sequence leaves the stream where it was.
    let mut tracker = validated_at(11);
    assert_eq!(
        feed(&mut tracker, [40_000, 12, 40_001]),
        [
            SeqOutcome::BadSeq,
            SeqOutcome::Accepted,
            SeqOutcome::Resynced
        ]
    );
    // Two jumps that do not follow each other both stay bad.
    let mut tracker = validated_at(11);
    assert_eq!(feed(&mut tracker, [9000, 20_000]), [SeqOutcome::BadSeq; 2]);
    assert_eq!(tracker.max_seq(), SeqNo(11));
}

#[test]
fn misorder_within_100_is_counted_and_further_back_is_bad() {
    let mut tracker = validated_at(1010);
    assert_eq!(tracker.handle_seq(SeqNo(950)), SeqOutcome::Misordered);
    assert_eq!(tracker.handle_seq(SeqNo(911)), SeqOutcome::Misordered);
    assert_eq!(tracker.handle_seq(SeqNo(1010)), SeqOutcome::Duplicate);
    assert_eq!(tracker.received(), 4);
    assert_eq!(
        tracker.max_seq(),
        SeqNo(1010),
        "late packets do not move the max"
    );
    // 200 behind is beyond MAX_MISORDER: treated as a jump.
    assert_eq!(tracker.handle_seq(SeqNo(810)), SeqOutcome::BadSeq);
    assert_eq!(tracker.received(), 4);
    // Misordered packets push received past expected: loss goes negative, as in A.3.
    assert_eq!(tracker.expected(), 1);
    assert_eq!(tracker.cumulative_lost(), -3);
    assert!(SeqOutcome::Misordered.is_valid() && !SeqOutcome::BadSeq.is_valid());
}

#[test]
fn interval_fraction_lost_follows_a3() {
    let mut tracker = validated_at(1);
    // 2..=101 with every multiple of 10 missing: 10 lost of 101 expected (1..=101).
    feed(&mut tracker, (2..=101).filter(|s| s % 10 != 0));
    assert_eq!(tracker.expected(), 101);
    assert_eq!(tracker.cumulative_lost(), 10);
    let first = tracker.poll_interval_loss();
    assert_eq!((first.expected, first.received), (101, 91));
    assert_eq!(first.fraction_lost, (10 * 256 / 101) as u8);

    // Next interval: 102..=121 all arrive, plus two duplicates: no loss reported.
    feed(&mut tracker, 102..=121);
    feed(&mut tracker, [121, 120]);
    let second = tracker.poll_interval_loss();
    assert_eq!((second.expected, second.received), (20, 22));
    assert_eq!(second.fraction_lost, 0);
    assert_eq!(tracker.poll_interval_loss().expected, 0, "empty interval");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// For an in-order stream with gaps below MAX_DROPOUT, loss is exactly the gaps and
    /// the extended max counts every wrap.
    #[test]
    fn in_order_stream_loss_equals_the_gaps(start in any::<u16>(), gaps in prop::collection::vec(0u32..50, 1..400)) {
        let mut tracker = validated_at(start);
        let mut ext = u64::from(start);
        for gap in &gaps {
            ext += u64::from(*gap) + 1;
            prop_assert_eq!(tracker.handle_seq(SeqNo(ext as u16)), SeqOutcome::Accepted);
        }
        let lost: u64 = gaps.iter().map(|g| u64::from(*g)).sum();
        prop_assert_eq!(tracker.cumulative_lost(), lost as i64);
        prop_assert_eq!(tracker.expected(), ext - u64::from(start) + 1);
        prop_assert_eq!(u64::from(tracker.extended_max()), ext);
    }
}

/// A.8 in floating point, the way the RFC first states it, as the reference.
fn reference_jitter(arrivals_and_ts: &[(u32, u32)]) -> f64 {
    let mut jitter = 0.0f64;
    let mut previous: Option<i64> = None;
    for &(arrival, ts) in arrivals_and_ts {
        let transit = i64::from(arrival) - i64::from(ts);
        if let Some(p) = previous {
            jitter += ((transit - p).abs() as f64 - jitter) / 16.0;
        }
        previous = Some(transit);
    }
    jitter
}

#[test]
fn jitter_converges_to_a_constant_delay_variation() {
    // 20 ms packets at 8 kHz; every other packet is delayed by 10 ms (80 units), so the
    // transit difference is 80 every packet and the estimate tends to 80.
    let delay_variation = 80u32;
    let samples: Vec<(u32, u32)> = (0..400u32)
        .map(|i| {
            let ts = 1_000 + i * 160;
            let arrival = 50_000 + i * 160 + if i % 2 == 1 { delay_variation } else { 0 };
            (arrival, ts)
        })
        .collect();
    let mut estimator = JitterEstimator::new();
    let mut after_50 = 0;
    for (i, &(arrival, ts)) in samples.iter().enumerate() {
        estimator.handle_arrival(arrival, RtpTs(ts));
        if i == 50 {
            after_50 = estimator.jitter();
        }
    }
    let reference = reference_jitter(&samples);
    assert!((reference - f64::from(delay_variation)).abs() < 0.01);
    assert!(
        estimator.jitter().abs_diff(delay_variation) <= 1,
        "got {}",
        estimator.jitter()
    );
    // (15/16)^50 is about 4%: by then the estimate has covered most of the way.
    assert!(
        (70..=delay_variation).contains(&after_50),
        "after 50: {after_50}"
    );
}

#[test]
fn constant_transit_gives_zero_jitter_even_across_the_wrap() {
    let mut estimator = JitterEstimator::new();
    for i in 0..100u32 {
        let ts = (u32::MAX - 4_000).wrapping_add(i * 160);
        estimator.handle_arrival(ts.wrapping_add(12_345), RtpTs(ts));
    }
    assert_eq!(estimator.jitter(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The integer estimator stays within a couple of units of the floating-point A.8
    /// reference for arbitrary transit variation.
    #[test]
    fn integer_jitter_tracks_the_floating_point_reference(offsets in prop::collection::vec(0u32..2_000, 2..300)) {
        let samples: Vec<(u32, u32)> = offsets
            .iter()
            .enumerate()
            .map(|(i, off)| {
                let ts = i as u32 * 160;
                (ts + 10_000 + off, ts)
            })
            .collect();
        let mut estimator = JitterEstimator::new();
        for &(arrival, ts) in &samples {
            estimator.handle_arrival(arrival, RtpTs(ts));
        }
        let reference = reference_jitter(&samples);
        prop_assert!((f64::from(estimator.jitter()) - reference).abs() <= 2.0,
            "integer {} vs reference {}", estimator.jitter(), reference);
    }
}
