//! Unit tests of the jitter buffer: a sender, a network schedule and a ticking reader
//! in virtual time.

use super::*;
use crate::dsp::g711;
use proptest::prelude::*;
use std::collections::HashMap;

const PTIME_MS: u64 = 20;
const FRAME: usize = 160;
const MS: u64 = 1_000_000;
/// Ticks happen 7 ms after the nominal send times, so arrival and poll never tie.
const TICK_PHASE_NS: u64 = 7 * MS;

#[derive(Clone, Debug)]
struct Pkt {
    at_ns: u64,
    ssrc: Ssrc,
    seq: SeqNo,
    ts: RtpTs,
    pt: PayloadType,
    marker: bool,
    payload: Vec<u8>,
}

/// Frame `k`'s payload: seeded random G.711 bytes (loud, and unique per frame).
fn payload(k: u64) -> Vec<u8> {
    let mut r = SeedRng::new(k ^ 0x5EED);
    (0..FRAME).map(|_| (r.next_u32() & 0xff) as u8).collect()
}

fn decoded(k: u64) -> Vec<i16> {
    let mut out = vec![0; FRAME];
    g711::decode(Codec::Pcmu, &payload(k), &mut out);
    out
}

/// Audio packet `k` of a stream, sent at `k * ptime` and arriving `delay_ns` later.
fn audio(k: u64, delay_ns: u64) -> Pkt {
    Pkt {
        at_ns: k * PTIME_MS * MS + delay_ns,
        ssrc: Ssrc(0x1111),
        seq: SeqNo(1000u16.wrapping_add(k as u16)),
        ts: RtpTs(50_000u32.wrapping_add(k as u32 * FRAME as u32)),
        pt: PayloadType::PCMU,
        marker: k == 0,
        payload: payload(k),
    }
}

#[derive(Debug, Clone)]
struct Out {
    polled: Polled,
    samples: Vec<i16>,
    /// Which sent frame the samples are, if they are one bit-exactly.
    frame: Option<u64>,
}

/// Delivers `pkts` in arrival order and polls at every tick in `ticks`.
fn run(
    jb: &mut JitterBuffer,
    mut pkts: Vec<Pkt>,
    ticks: core::ops::Range<u64>,
    frames: u64,
) -> Vec<Out> {
    pkts.sort_by_key(|p| p.at_ns);
    let by_samples: HashMap<Vec<i16>, u64> = (0..frames).map(|k| (decoded(k), k)).collect();
    let mut next = 0;
    let mut outs = Vec::new();
    for tick in ticks {
        let now_ns = tick * PTIME_MS * MS + TICK_PHASE_NS;
        while next < pkts.len() && pkts[next].at_ns <= now_ns {
            let p = &pkts[next];
            let _ = jb.handle_packet(
                Instant::from_nanos(p.at_ns),
                p.ssrc,
                p.seq,
                p.ts,
                p.pt,
                p.marker,
                &p.payload,
            );
            next += 1;
        }
        let mut samples = vec![0; FRAME];
        let polled = jb.poll_frame(Instant::from_nanos(now_ns), &mut samples);
        let frame = by_samples.get(&samples).copied();
        outs.push(Out {
            polled,
            samples,
            frame,
        });
    }
    outs
}

fn kinds(outs: &[Out]) -> Vec<FrameKind> {
    outs.iter().map(|o| o.polled.kind).collect()
}

/// The sent frames that came out, in output order.
fn audio_frames(outs: &[Out]) -> Vec<u64> {
    outs.iter()
        .filter(|o| o.polled.kind == FrameKind::Audio)
        .map(|o| o.frame.expect("audio is bit-exact"))
        .collect()
}

fn buffer() -> JitterBuffer {
    JitterBuffer::new(JitterConfig::new(Codec::Pcmu, 20))
}

fn rms(x: &[i16]) -> f64 {
    (x.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>() / x.len() as f64).sqrt()
}

#[test]
fn an_in_order_stream_comes_out_bit_exact_after_the_initial_depth() {
    let mut jb = buffer();
    let outs = run(
        &mut jb,
        (0..200).map(|k| audio(k, 0)).collect(),
        0..200,
        200,
    );
    let first = outs
        .iter()
        .position(|o| o.polled.kind == FrameKind::Audio)
        .unwrap();
    // First packet at 0 ms, target 20 ms: playout starts at the first tick >= 20 ms.
    assert_eq!(first, 1, "{:?}", kinds(&outs[..4]));
    assert!(
        outs[..first]
            .iter()
            .all(|o| o.polled.kind == FrameKind::Silence)
    );
    assert_eq!(
        audio_frames(&outs),
        (0..(200 - first as u64)).collect::<Vec<_>>()
    );
    assert!(outs[first].polled.talkspurt_start);
    assert_eq!(outs.iter().filter(|o| o.polled.talkspurt_start).count(), 1);
    let s = jb.stats();
    assert_eq!(
        (s.lost_ms, s.concealed_ms, s.inserted_ms, s.dropped_ms),
        (0, 0, 0, 0)
    );
    assert_eq!(s.accepted, 200);
    assert_eq!(s.target_depth_us, 20_000);
}

#[test]
fn reordered_packets_within_the_depth_come_out_in_order() {
    let mut cfg = JitterConfig::new(Codec::Pcmu, 20);
    cfg.min_depth_ms = 60;
    let mut jb = JitterBuffer::new(cfg);
    // Every even frame is held back 30 ms, behind its odd successor.
    let pkts = (0..200)
        .map(|k| audio(k, if k % 2 == 0 { 30 * MS } else { 0 }))
        .collect();
    let outs = run(&mut jb, pkts, 0..200, 200);
    let mut frames = audio_frames(&outs);
    // Inserted frames (the fill growing to the jitter) repeat a frame; nothing else may.
    frames.dedup();
    assert!(frames.len() > 150);
    assert!(
        frames.windows(2).all(|w| w[1] == w[0] + 1),
        "out of order: {frames:?}"
    );
    assert_eq!(jb.stats().late_drops, 0);
    assert_eq!(jb.stats().concealed_ms, 0);
}

#[test]
fn duplicates_are_dropped_and_counted() {
    let mut jb = buffer();
    let mut pkts: Vec<Pkt> = (0..100).map(|k| audio(k, 0)).collect();
    pkts.extend((0..100).map(|k| audio(k, MS)));
    let outs = run(&mut jb, pkts, 0..100, 100);
    let frames = audio_frames(&outs);
    assert_eq!(frames, (0..frames.len() as u64).collect::<Vec<_>>());
    assert_eq!(jb.stats().duplicates, 100);
    assert_eq!(jb.stats().accepted, 100);
}

#[test]
fn a_single_loss_is_concealed_with_a_faded_repeat_and_audio_resumes() {
    let mut jb = buffer();
    let pkts = (0..100).filter(|&k| k != 50).map(|k| audio(k, 0)).collect();
    let outs = run(&mut jb, pkts, 0..100, 100);
    let at = outs
        .iter()
        .position(|o| o.polled.kind == FrameKind::Concealed)
        .unwrap();
    assert_eq!(outs[at - 1].frame, Some(49));
    let concealed = outs[at..]
        .iter()
        .take_while(|o| o.polled.kind == FrameKind::Concealed)
        .count();
    assert!(
        (1..=2).contains(&concealed),
        "{concealed} concealed frames for one loss"
    );
    // Faded copies of the last 10 ms unit played (the end of frame 49): every sample no
    // louder and of the same sign, and the energy between a quarter and all of it.
    let (last, conc) = (&outs[at - 1].samples, &outs[at].samples);
    let last_unit = &last[FRAME / 2..];
    assert!(conc.chunks(FRAME / 2).all(|c| {
        last_unit
            .iter()
            .zip(c)
            .all(|(&l, &c)| c.unsigned_abs() <= l.unsigned_abs() && (c == 0 || (c < 0) == (l < 0)))
    }));
    let last = &last_unit.repeat(2);
    let ratio = rms(conc) / rms(last);
    assert!((0.25..0.95).contains(&ratio), "fade ratio {ratio}");
    assert_eq!(outs[at + concealed].frame, Some(51));
    let after = audio_frames(&outs[at..]);
    assert_eq!(after, (51..51 + after.len() as u64).collect::<Vec<_>>());
    // Each concealed 20 ms poll was a lost frame, or the start of an underrun.
    assert_eq!(
        jb.stats().lost_ms / PTIME_MS + jb.stats().underruns,
        concealed as u64
    );
}

#[test]
fn a_long_loss_turns_to_silence_and_audio_returns_as_a_new_talkspurt() {
    let mut jb = buffer();
    let pkts = (0..150)
        .filter(|&k| !(50..80).contains(&k))
        .map(|k| audio(k, 0))
        .collect();
    let outs = run(&mut jb, pkts, 0..150, 150);
    let at = outs
        .iter()
        .position(|o| o.polled.kind == FrameKind::Concealed)
        .unwrap();
    let k = kinds(&outs[at..]);
    assert_eq!(&k[..3], &[FrameKind::Concealed; 3]);
    let silent = k[3..]
        .iter()
        .take_while(|&&k| k == FrameKind::Silence)
        .count();
    assert!(silent >= 20, "{k:?}");
    let back = &outs[at + 3 + silent];
    assert_eq!(
        (back.polled.kind, back.frame, back.polled.talkspurt_start),
        (FrameKind::Audio, Some(80), true)
    );
    assert_eq!(jb.stats().concealed_ms, 60);
}

/// Frames 0..50 of stream A, then frames 50..150 from stream B with unrelated seq, ts
/// (and SSRC when `new_ssrc`), sent without a break.
fn switch_streams(new_ssrc: bool) -> Vec<Pkt> {
    (0..150)
        .map(|k| {
            let mut p = audio(k, 0);
            if k >= 50 {
                if new_ssrc {
                    p.ssrc = Ssrc(0x2222);
                }
                p.seq = SeqNo(40_000u16.wrapping_add(k as u16));
                p.ts = RtpTs(3_000_000_000u32.wrapping_add(k as u32 * FRAME as u32));
            }
            p
        })
        .collect()
}

#[test]
fn an_ssrc_change_resyncs_without_a_glitch_longer_than_one_frame() {
    let mut jb = buffer();
    let outs = run(&mut jb, switch_streams(true), 0..150, 150);
    let first = outs
        .iter()
        .position(|o| o.polled.kind == FrameKind::Audio)
        .unwrap();
    let gaps = outs[first..]
        .iter()
        .filter(|o| o.polled.kind != FrameKind::Audio)
        .count();
    assert!(gaps <= 1, "{:?}", kinds(&outs));
    // B's first two packets are held on probation; its third follows A's last frame.
    let frames = audio_frames(&outs);
    let at = frames.iter().position(|&k| k == 49).unwrap();
    assert_eq!(&frames[at..at + 3], &[49, 52, 53]);
    assert!(frames.contains(&140));
    assert_eq!((jb.stats().resyncs, jb.stats().probation_drops), (1, 2));
}

#[test]
fn a_timestamp_jump_resyncs_without_a_glitch_longer_than_one_frame() {
    let mut jb = buffer();
    let outs = run(&mut jb, switch_streams(false), 0..150, 150);
    let first = outs
        .iter()
        .position(|o| o.polled.kind == FrameKind::Audio)
        .unwrap();
    let gaps = outs[first..]
        .iter()
        .filter(|o| o.polled.kind != FrameKind::Audio)
        .count();
    assert!(gaps <= 1, "{:?}", kinds(&outs));
    assert!(audio_frames(&outs).contains(&140));
    assert_eq!(jb.stats().resyncs, 1);
}

#[test]
fn a_stray_packet_from_a_replaced_ssrc_does_not_flip_the_timeline() {
    let mut jb = buffer();
    let mut pkts = switch_streams(true);
    pkts.push(audio(49, 50 * PTIME_MS * MS)); // A's frame 49 again, a second later
    let outs = run(&mut jb, pkts, 0..150, 150);
    // B's first two packets, then A's stray.
    assert_eq!(jb.stats().probation_drops, 3);
    assert_eq!(jb.stats().resyncs, 1);
    let mut frames = audio_frames(&outs);
    frames.dedup();
    assert_eq!(frames.last(), Some(&(149 - 1)));
}

#[test]
fn stragglers_a_second_late_are_dropped_and_never_start_a_timeline() {
    let mut jb = buffer();
    // Frames 50 and 51 arrive together a second late, in sequence.
    let pkts = (0..150)
        .map(|k| audio(k, if (50..52).contains(&k) { 1_000 * MS } else { 0 }))
        .collect();
    let outs = run(&mut jb, pkts, 0..150, 150);
    let s = jb.stats();
    assert_eq!(
        (s.late_drops, s.resyncs, s.probation_drops),
        (2, 0, 0),
        "{s:?}"
    );
    let mut frames = audio_frames(&outs);
    frames.dedup();
    assert!(frames.windows(2).all(|w| w[0] < w[1]), "{frames:?}");
    assert!(frames.contains(&140));
}

/// Streams `minutes` of loud audio from a sender whose clock runs `ppm` fast (or slow)
/// and returns the buffer and the largest level seen after the first second.
fn drift(ppm: i64, minutes: u64) -> (JitterBuffer, u32) {
    let mut jb = buffer();
    let frames = minutes * 60 * 1000 / PTIME_MS;
    let interval_ns = (PTIME_MS * MS) as i64 * (1_000_000 - ppm) / 1_000_000;
    let mut sent = 0u64;
    let mut max_level = 0;
    let mut out = [0i16; FRAME];
    let pay = payload(1);
    for tick in 0..frames {
        let now_ns = tick * PTIME_MS * MS + TICK_PHASE_NS;
        while (sent as i64 * interval_ns) as u64 <= now_ns {
            let p = audio(sent, 0);
            let at = Instant::from_nanos((sent as i64 * interval_ns) as u64);
            jb.handle_packet(at, p.ssrc, p.seq, p.ts, p.pt, false, &pay)
                .unwrap();
            sent += 1;
        }
        jb.poll_frame(Instant::from_nanos(now_ns), &mut out);
        if tick > 50 {
            max_level = max_level.max(jb.stats().level_ms);
        }
    }
    (jb, max_level)
}

#[test]
fn a_sender_1000_ppm_fast_for_ten_minutes_keeps_the_fill_bounded() {
    let (jb, max_level) = drift(1_000, 10);
    let s = jb.stats();
    // 600 s at +1000 ppm is 0.6 s of extra audio to drop (30 frames of 20 ms).
    assert!((500..=700).contains(&s.dropped_ms), "{s:?}");
    assert!(max_level <= 80, "level reached {max_level} ms: {s:?}");
    assert!(s.underruns <= 2 && s.lost_ms == 0, "{s:?}");
}

#[test]
fn a_sender_1000_ppm_slow_for_ten_minutes_does_not_underrun_repeatedly() {
    let (jb, max_level) = drift(-1_000, 10);
    let s = jb.stats();
    assert!((500..=700).contains(&s.inserted_ms), "{s:?}");
    assert!(s.underruns <= 2, "{s:?}");
    assert!(s.concealed_ms <= 4 * PTIME_MS, "{s:?}");
    assert!(max_level <= 80, "level reached {max_level} ms: {s:?}");
}

#[test]
fn comfort_noise_plays_at_the_signalled_level_through_a_dtx_gap() {
    let mut jb = buffer();
    let mut pkts: Vec<Pkt> = (0..50).chain(150..200).map(|k| audio(k, 0)).collect();
    pkts.iter_mut()
        .find(|p| p.seq == SeqNo(1150))
        .unwrap()
        .marker = true;
    let mut cn = audio(50, 0);
    cn.pt = PayloadType::CN;
    cn.payload = vec![40]; // -40 dBov
    pkts.push(cn);
    let outs = run(&mut jb, pkts, 0..200, 200);
    let at = outs
        .iter()
        .position(|o| o.polled.kind == FrameKind::ComfortNoise)
        .unwrap();
    assert_eq!(outs[at - 1].frame, Some(49));
    let noise: Vec<&Out> = outs[at..]
        .iter()
        .take_while(|o| o.polled.kind == FrameKind::ComfortNoise)
        .collect();
    assert!(noise.len() >= 95, "{} noise frames", noise.len());
    let expected = 32_768.0 * 10f64.powf(-40.0 / 20.0);
    for o in &noise {
        let level = rms(&o.samples);
        assert!(
            (0.7 * expected..1.3 * expected).contains(&level),
            "noise rms {level}, want {expected}"
        );
    }
    let back = outs[at + noise.len()].clone();
    assert_eq!(
        (back.polled.kind, back.frame, back.polled.talkspurt_start),
        (FrameKind::Audio, Some(150), true)
    );
    let s = jb.stats();
    assert_eq!((s.lost_ms, s.concealed_ms, s.underruns), (0, 0, 0), "{s:?}");
}

#[test]
fn thirty_ms_of_jitter_grows_the_target_and_it_shrinks_after_the_jitter_stops() {
    let mut jb = buffer();
    let mut r = SeedRng::new(30);
    // 20 s with arrival delays uniform in 0..30 ms, then 60 s without.
    let jittery = 1_000;
    let pkts: Vec<Pkt> = (0..4_000)
        .map(|k| {
            audio(
                k,
                if k < jittery {
                    u64::from(r.next_u32()) % (30 * MS)
                } else {
                    0
                },
            )
        })
        .collect();
    // Split by arrival at the last tick of the jittery part, and run the two parts.
    let split_ns = (jittery - 1) * PTIME_MS * MS + TICK_PHASE_NS;
    let (first, second): (Vec<Pkt>, Vec<Pkt>) = pkts.into_iter().partition(|p| p.at_ns <= split_ns);
    run(&mut jb, first, 0..jittery, 0);
    let during = jb.stats();
    run(&mut jb, second, jittery..4_000, 0);
    let after = jb.stats();
    assert!(
        during.target_depth_us >= 50_000,
        "target under jitter: {during:?}"
    );
    assert!(during.jitter_us >= 7_000, "jitter estimate: {during:?}");
    assert!(
        after.target_depth_us <= 25_000,
        "target after calm: {after:?}"
    );
    assert!(after.level_ms <= 60, "fill after calm: {after:?}");
    // Once grown, the buffer stops losing packets to lateness.
    assert!(during.late_drops < 60, "{during:?}");
}

#[test]
fn every_ptime_plays_in_order_and_conceals_a_loss() {
    for ptime_ms in PTIMES_MS {
        let frame = Codec::Pcma.pcm_samples_per_frame(ptime_ms);
        let mut jb = JitterBuffer::new(JitterConfig::new(Codec::Pcma, ptime_ms));
        let mut out = [0i16; crate::MAX_FRAME_SAMPLES];
        let mut played = Vec::new();
        for k in 0..100u64 {
            let now = Instant::from_nanos(k * u64::from(ptime_ms) * MS);
            // Frame k is constant: the A-law code k, so the output says which frame it is.
            let pay = [k as u8; crate::MAX_FRAME_SAMPLES];
            if k != 40 {
                let ts = RtpTs((k as usize * frame) as u32);
                jb.handle_packet(
                    now,
                    Ssrc(9),
                    SeqNo(k as u16),
                    ts,
                    PayloadType::PCMA,
                    false,
                    &pay[..frame],
                )
                .unwrap();
            }
            let tick = now + Duration::from_micros(u64::from(ptime_ms) * 500);
            if jb.poll_frame(tick, &mut out).kind == FrameKind::Audio {
                played.push(
                    out[..frame]
                        .iter()
                        .map(|&x| g711::alaw_encode_sample(x))
                        .max()
                        .unwrap(),
                );
            }
        }
        let expected: Vec<u8> = (0..100u8).filter(|&k| k != 40).take(played.len()).collect();
        assert_eq!(played, expected, "ptime {ptime_ms}");
        assert!(
            played.len() >= 90,
            "ptime {ptime_ms}: {} frames",
            played.len()
        );
        let s = jb.stats();
        assert_eq!(
            s.lost_ms / u64::from(ptime_ms) + s.underruns,
            1,
            "ptime {ptime_ms}: {s:?}"
        );
        assert_eq!(
            (s.inserted_ms, s.dropped_ms),
            (0, 0),
            "ptime {ptime_ms}: {s:?}"
        );
    }
}

#[test]
fn malformed_and_foreign_packets_are_refused_and_counted() {
    let mut jb = buffer();
    let now = Instant::ZERO;
    let h = |jb: &mut JitterBuffer, pt, payload: &[u8]| {
        jb.handle_packet(
            now,
            Ssrc(1),
            SeqNo(1),
            RtpTs(0),
            PayloadType(pt),
            false,
            payload,
        )
    };
    assert_eq!(h(&mut jb, 0, &[0; 159]), Err(DropReason::BadPayloadLength));
    assert_eq!(h(&mut jb, 13, &[]), Err(DropReason::BadPayloadLength));
    assert_eq!(
        h(&mut jb, 101, &[0; 4]),
        Err(DropReason::UnexpectedPayloadType)
    );
    assert_eq!(
        h(&mut jb, 8, &[0; 160]),
        Err(DropReason::UnexpectedPayloadType)
    );
    let s = jb.stats();
    assert_eq!(
        (s.bad_payload_drops, s.unexpected_pt_drops, s.accepted),
        (2, 2, 0)
    );
    let mut out = [1i16; FRAME];
    assert_eq!(jb.poll_frame(now, &mut out).kind, FrameKind::Silence);
    assert!(out.iter().all(|&s| s == 0));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the network does (loss, duplicates, jitter up to 100 ms), audio frames
    /// come out bit-exact, in sending order, each at most twice (an inserted frame).
    #[test]
    fn any_network_yields_ordered_bit_exact_audio(
        delays in prop::collection::vec((0..100u64, prop::bool::weighted(0.05), prop::bool::weighted(0.05)), 150..300),
    ) {
        let mut jb = buffer();
        let n = delays.len() as u64;
        let mut pkts = Vec::new();
        for (k, &(delay_ms, lost, dup)) in delays.iter().enumerate() {
            if lost { continue; }
            pkts.push(audio(k as u64, delay_ms * MS));
            if dup { pkts.push(audio(k as u64, delay_ms * MS + 3 * MS)); }
        }
        let outs = run(&mut jb, pkts, 0..n + 20, n);
        let frames = audio_frames(&outs);
        for w in frames.windows(3) {
            prop_assert!(w[0] <= w[1], "out of order: {:?}", frames);
            prop_assert!(!(w[0] == w[1] && w[1] == w[2]), "a frame played three times: {:?}", frames);
        }
        let s = jb.stats();
        prop_assert!(s.target_depth_us <= 200_000);
        prop_assert!(s.level_ms <= 32 * 20);
    }
}

#[test]
fn junk_in_sequence_from_the_latched_address_never_moves_the_timeline() {
    // Issue 9 item 14: pairs of junk packets (another SSRC, consecutive sequence
    // numbers, timestamps a few samples apart) used to pass probation, and each resync
    // appended the new timeline after the newest frame until the buffer held 600 ms.
    let mut jb = buffer();
    let mut pkts: Vec<_> = (0..150).map(|k| audio(k, 0)).collect();
    for k in (10..140).step_by(7) {
        for (i, dt) in [(0u16, 0u32), (1, 37), (2, 200)] {
            let mut junk = audio(k, 0);
            junk.ssrc = Ssrc(0x0102_0304);
            junk.seq = SeqNo(40_000 + k as u16 * 3 + i);
            junk.ts = RtpTs(2_560 + dt);
            pkts.push(junk);
        }
    }
    let outs = run(&mut jb, pkts, 0..150, 150);
    let s = jb.stats();
    assert_eq!(s.resyncs, 0, "{s:?}");
    assert!(s.level_ms <= 60, "the buffer's delay grew: {s:?}");
    let mut frames = audio_frames(&outs);
    frames.dedup();
    assert!(frames.windows(2).all(|w| w[0] < w[1]), "{frames:?}");
}

/// One packet of the differential test's stream: its duration in units, what the
/// network does to it, and what the sender does at it.
#[derive(Clone, Copy, Debug)]
struct Step {
    units: u32,
    delay_ms: u64,
    lost: bool,
    dup: bool,
    /// 0: audio; 1: comfort noise instead; 2: a new SSRC from here on; 3: a timestamp
    /// jump from here on; 4: a marker bit.
    event: u8,
}

fn step() -> impl Strategy<Value = Step> {
    (
        prop::sample::select(vec![1u32, 2, 2, 2, 2, 3]),
        prop::sample::select(vec![0u64, 0, 0, 1, 3, 5, 15, 30, 45, 70]),
        prop::bool::weighted(0.05),
        prop::bool::weighted(0.03),
        prop::sample::select(vec![
            0u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4,
        ]),
    )
        .prop_map(|(units, delay_ms, lost, dup, event)| Step {
            units,
            delay_ms,
            lost,
            dup,
            event,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The fast paths (the next packet of a steady stream stored in one go, whole runs
    /// decoded in one call, the in-window fill check) change nothing: a buffer that
    /// takes only the general paths plays the same samples, says the same about them
    /// and counts the same, whatever the stream (any packetisation, loss, duplicates,
    /// jitter, reordering, comfort noise, SSRC changes, timestamp jumps, markers).
    #[test]
    fn the_fast_paths_play_exactly_what_the_general_paths_play(
        steps in prop::collection::vec(step(), 50..250),
    ) {
        let mut fast = buffer();
        let mut slow = buffer();
        slow.general_paths_only = true;
        let (mut ssrc, mut seq, mut ts, mut sent_ms) = (Ssrc(0x1111), SeqNo(7), RtpTs(9_000), 0u64);
        let mut pkts = Vec::new();
        for (k, s) in steps.iter().enumerate() {
            match s.event {
                2 => ssrc = Ssrc(ssrc.0 + 1),
                3 => ts = ts.add(123_456),
                _ => {}
            }
            let cn = s.event == 1;
            let mut r = SeedRng::new(k as u64);
            let bytes = if cn { 1 } else { 80 * s.units as usize };
            let p = Pkt {
                at_ns: (sent_ms + s.delay_ms) * MS,
                ssrc,
                seq,
                ts,
                pt: if cn { PayloadType::CN } else { PayloadType::PCMU },
                marker: s.event == 4,
                payload: (0..bytes).map(|_| if cn { 40 } else { (r.next_u32() & 0xff) as u8 }).collect(),
            };
            if !s.lost {
                if s.dup {
                    let mut d = p.clone();
                    d.at_ns += 2 * MS;
                    pkts.push(d);
                }
                pkts.push(p);
            }
            seq = seq.next();
            ts = ts.add(80 * s.units);
            sent_ms += 10 * u64::from(s.units);
        }
        pkts.sort_by_key(|p| p.at_ns);
        let (mut next, mut a, mut b) = (0, [0i16; FRAME], [0i16; FRAME]);
        for tick in 0..sent_ms / PTIME_MS + 30 {
            let now_ns = tick * PTIME_MS * MS + TICK_PHASE_NS;
            while next < pkts.len() && pkts[next].at_ns <= now_ns {
                let p = &pkts[next];
                let at = Instant::from_nanos(p.at_ns);
                let ra = fast.handle_packet(at, p.ssrc, p.seq, p.ts, p.pt, p.marker, &p.payload);
                let rb = slow.handle_packet(at, p.ssrc, p.seq, p.ts, p.pt, p.marker, &p.payload);
                prop_assert_eq!(ra, rb, "packet {}", next);
                next += 1;
            }
            let now = Instant::from_nanos(now_ns);
            let pa = fast.poll_frame(now, &mut a);
            let pb = slow.poll_frame(now, &mut b);
            prop_assert_eq!(pa, pb, "tick {}", tick);
            prop_assert_eq!(&a[..], &b[..], "tick {}", tick);
            prop_assert_eq!(fast.stats(), slow.stats(), "tick {}", tick);
        }
    }
}

/// The packet path skips recomputing the target while its inputs are unchanged and it
/// has reached them (`target_settled`); the target must still be exactly what
/// recomputing it at every packet gives (RFC 3550 A.8 estimate, clamp(P + 4 x jitter),
/// grow at once, shrink by 1/64 of the gap), through steady arrival (settled), jitter
/// (moving), calm again (shrinking, then settled) and a change of packet duration.
#[test]
fn the_target_is_what_recomputing_it_at_every_packet_gives() {
    let mut jb = buffer();
    let mut r = SeedRng::new(7);
    // (packets, units per packet, max arrival delay in ms) per phase.
    let phases = [(200u64, 2u32, 0u64), (300, 2, 15), (800, 2, 0), (200, 4, 0)];
    let (mut seq, mut ts, mut sent_ns) = (SeqNo(1000), RtpTs(50_000), 0u64);
    let (mut q4, mut prev_transit, mut target) = (0u32, None::<u32>, 20_000i64);
    let (mut settled_runs, mut changes, mut last) = (0u32, 0u32, target);
    let mut tick = 0u64;
    let mut out = [0i16; 2 * FRAME];
    for (n, units, jitter_ms) in phases {
        for _ in 0..n {
            let delay = if jitter_ms == 0 {
                0
            } else {
                u64::from(r.next_u32()) % (jitter_ms * MS)
            };
            let at_ns = sent_ns + delay;
            // Poll every tick up to this arrival, as the engine does.
            while tick * PTIME_MS * MS + TICK_PHASE_NS <= at_ns {
                let now = Instant::from_nanos(tick * PTIME_MS * MS + TICK_PHASE_NS);
                jb.poll_frame(now, &mut out);
                tick += 1;
            }
            let bytes = vec![0xff; 80 * units as usize];
            let at = Instant::from_nanos(at_ns);
            let res = jb.handle_packet(at, Ssrc(1), seq, ts, PayloadType::PCMU, false, &bytes);
            assert!(res.is_ok(), "packet {seq:?}: {res:?}");
            // The model: every accepted packet updates the estimate and the target.
            let transit = rtp_units(at, 8_000).wrapping_sub(ts.0);
            if let Some(p) = prev_transit {
                let d = (transit.wrapping_sub(p) as i32).unsigned_abs().min(8_000);
                q4 = q4 + d - ((q4 + 8) >> 4);
            }
            prev_transit = Some(transit);
            let jitter_us = i64::from(q4 >> 4) * 1_000_000 / 8_000;
            let raw = (i64::from(units) * 10_000 + 4 * jitter_us).clamp(20_000, 200_000);
            target = if raw >= target {
                raw
            } else {
                target - (target - raw + 63) / 64
            };
            assert_eq!(jb.stats().target_depth_us, target as u64, "packet {seq:?}");
            if target == last {
                settled_runs += 1;
            } else {
                changes += 1;
            }
            last = target;
            seq = seq.next();
            ts = ts.add(80 * units);
            sent_ns += u64::from(units) * 10 * MS;
        }
    }
    // Both regimes were exercised: long settled stretches and a moving target.
    assert!(
        settled_runs > 500 && changes > 50,
        "{settled_runs} {changes}"
    );
}
