//! One session tick's mix: frames in, the plan, frames out.
//!
//! A pure function (STYLE.md rule 2): no I/O, lock, allocation or clock. The shard pulls
//! one tick of linear PCM per mixed input (decoded or concealed by the jitter buffers),
//! calls [`mix_session`], then encodes and sends each mixing listener's frame. The
//! decisions (who hears whom at what gain, which listeners share a mix) were taken when
//! the [`SessionPlan`] was built; here they are only followed.
//!
//! Listeners whose mixes are equal share one: [`SessionPlan::mix_leader`] names the
//! listener whose output frame holds it, and only leaders are mixed.

use crate::dsp::mix::MixKernels;
use crate::plan::{OutputPlan, SessionPlan};
use crate::{Gain, MAX_FRAME_SAMPLES, MAX_SESSION_LEGS};

/// One frame of linear PCM per leg of a session, in leg index order.
pub type Frames = [[i16; MAX_FRAME_SAMPLES]; MAX_SESSION_LEGS];

/// Mixes `samples` samples for every leading mixing listener of `plan`: `outputs[l]`
/// receives listener `l`'s mix of `inputs` (only the plan's mixed inputs are read).
/// Followers' rows are left alone: read their leader's row.
///
/// Panics if `samples` exceeds [`MAX_FRAME_SAMPLES`] (a programmer error).
pub fn mix_session(
    plan: &SessionPlan,
    kernels: &MixKernels,
    samples: usize,
    inputs: &Frames,
    outputs: &mut Frames,
) {
    assert!(samples <= MAX_FRAME_SAMPLES, "a tick fits a frame");
    for listener in plan.mix_leaders() {
        let out = &mut outputs[listener][..samples];
        // The commonest mix (a listener in a three-party call: two sources at unity
        // gain, known from the plan) has its own kernel.
        if let Some((a, b)) = plan.unity_pair(listener) {
            (kernels.pair)(out, &inputs[a][..samples], &inputs[b][..samples]);
            continue;
        }
        let OutputPlan::Mix(sources) = plan.output(listener) else {
            continue;
        };
        let mut frames: [&[i16]; MAX_SESSION_LEGS] = [&[]; MAX_SESSION_LEGS];
        let mut gains = [Gain::MUTE; MAX_SESSION_LEGS];
        let mut n = 0;
        for source in sources.iter() {
            frames[n] = &inputs[source.source][..samples];
            gains[n] = source.gain;
            n += 1;
        }
        (kernels.mix)(out, &frames[..n], &gains[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Codec;
    use crate::plan::{HearMatrix, LegFormat};

    const PCMU20: LegFormat = LegFormat {
        codec: Codec::Pcmu,
        ptime_ms: 20,
    };

    fn frames(values: &[i16]) -> Box<Frames> {
        let mut f = Box::new([[0i16; MAX_FRAME_SAMPLES]; MAX_SESSION_LEGS]);
        for (leg, &v) in values.iter().enumerate() {
            f[leg].fill(v);
        }
        f
    }

    #[test]
    fn a_barge_mixes_everyone_but_the_listener() {
        let mut m = HearMatrix::new(3);
        for l in 0..3 {
            for s in 0..3 {
                if l != s {
                    m.set(l, s, Gain::UNITY).unwrap();
                }
            }
        }
        let plan = SessionPlan::build(&m, &[PCMU20; 3]);
        let inputs = frames(&[100, 20, 3]);
        let mut out = frames(&[]);
        for kernels in MixKernels::available() {
            mix_session(&plan, &kernels, 160, &inputs, &mut out);
            assert_eq!(out[0][..160], [23; 160], "{}", kernels.name);
            assert_eq!(out[1][..160], [103; 160], "{}", kernels.name);
            assert_eq!(out[2][..160], [120; 160], "{}", kernels.name);
            assert_eq!(out[0][160], 0, "nothing written past the tick");
        }
    }

    #[test]
    fn followers_are_not_mixed_and_non_mixing_listeners_are_untouched() {
        // 0 and 1 talk (forwarded); 2 and 3 monitor both; 4 is alone.
        let mut m = HearMatrix::new(5);
        for (l, s) in [(0, 1), (1, 0), (2, 0), (2, 1), (3, 0), (3, 1)] {
            m.set(l, s, Gain::UNITY).unwrap();
        }
        let plan = SessionPlan::build(&m, &[PCMU20; 5]);
        let inputs = frames(&[7, 5]);
        let mut out = frames(&[-1, -1, -1, -1, -1]);
        mix_session(&plan, &MixKernels::scalar(), 160, &inputs, &mut out);
        assert_eq!(out[2][0], 12);
        assert_eq!(out[3][0], -1, "the follower reads its leader's row");
        assert_eq!((out[0][0], out[1][0], out[4][0]), (-1, -1, -1));
    }
}
