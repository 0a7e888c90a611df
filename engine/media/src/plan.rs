//! From a session's hear relation to one plan per output leg.
//!
//! The control side turns "who hears whom" (SPEC section 1) into a [`HearMatrix`] of
//! gains. [`SessionPlan::build`] then decides, once per change and never per packet,
//! what each listener's output is:
//! - [`OutputPlan::Silence`]: nobody audible (a participant alone on hold);
//! - [`OutputPlan::Forward`]: exactly one audible source at unity gain with the same
//!   codec and ptime as the listener, so its packets are re-stamped and sent as they
//!   arrive, never decoded (the customer-agent path of a monitored call);
//! - [`OutputPlan::Mix`]: anything else, decoded through jitter buffers and mixed at
//!   ticks (a supervisor hearing both sides, a barge, a transcoded or attenuated path).
//!
//! The plan also answers the two questions the per-packet path asks, as lookups:
//! [`SessionPlan::is_mixed_input`] (must this source's packets go into its jitter
//! buffer?) and [`SessionPlan::forward_targets`] (which listeners forward it?).
//!
//! Legs are identified by their index in the session, `0..legs`. A plan is plain data of
//! fixed size: building one does not allocate.

use crate::{Codec, Gain, MAX_SESSION_LEGS};

/// A leg's index within its session, `0..MAX_SESSION_LEGS`.
pub type LegIndex = usize;

/// The most sources one listener can mix: everyone but itself.
pub const MAX_MIX_SOURCES: usize = MAX_SESSION_LEGS - 1;

// Leg sets are u16 bitmasks; a session must fit.
const _: () = assert!(MAX_SESSION_LEGS <= 16);

/// Why a change to a [`HearMatrix`] was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// Nobody hears themselves (SPEC section 1): the diagonal is always mute.
    #[error("leg {0} cannot hear itself")]
    SelfHearing(LegIndex),
    /// A leg index at or beyond the matrix's leg count.
    #[error("leg {leg} is outside a session of {legs} legs")]
    LegOutOfRange {
        /// The offending index.
        leg: LegIndex,
        /// The session's leg count.
        legs: usize,
    },
}

/// Gains from every source to every listener of one session. Starts all mute.
#[derive(Clone, PartialEq, Eq)]
pub struct HearMatrix {
    legs: usize,
    /// `gains[listener][source]`; entries outside `legs` and on the diagonal stay mute.
    gains: [[Gain; MAX_SESSION_LEGS]; MAX_SESSION_LEGS],
}

impl core::fmt::Debug for HearMatrix {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut list = f.debug_list();
        for row in &self.gains[..self.legs] {
            list.entry(&&row[..self.legs]);
        }
        list.finish()
    }
}

impl HearMatrix {
    /// A matrix for `legs` legs where nobody hears anybody.
    ///
    /// Panics if `legs > MAX_SESSION_LEGS`: the control side sizes sessions, so a bigger
    /// one is a programmer error.
    pub fn new(legs: usize) -> Self {
        assert!(
            legs <= MAX_SESSION_LEGS,
            "{legs} legs exceed MAX_SESSION_LEGS"
        );
        HearMatrix {
            legs,
            gains: [[Gain::MUTE; MAX_SESSION_LEGS]; MAX_SESSION_LEGS],
        }
    }

    /// How many legs the session has.
    pub fn legs(&self) -> usize {
        self.legs
    }

    /// The gain at which `listener` hears `source` (mute when out of range).
    pub fn gain(&self, listener: LegIndex, source: LegIndex) -> Gain {
        if listener < self.legs && source < self.legs {
            self.gains[listener][source]
        } else {
            Gain::MUTE
        }
    }

    /// True when `listener` hears `source` at all.
    pub fn hears(&self, listener: LegIndex, source: LegIndex) -> bool {
        !self.gain(listener, source).is_mute()
    }

    /// Sets the gain at which `listener` hears `source`. Refuses the diagonal (even a
    /// mute gain, so a caller that tries it learns of its bug) and out-of-range legs,
    /// leaving the matrix unchanged.
    pub fn set(
        &mut self,
        listener: LegIndex,
        source: LegIndex,
        gain: Gain,
    ) -> Result<(), PlanError> {
        for leg in [listener, source] {
            if leg >= self.legs {
                return Err(PlanError::LegOutOfRange {
                    leg,
                    legs: self.legs,
                });
            }
        }
        if listener == source {
            return Err(PlanError::SelfHearing(listener));
        }
        self.gains[listener][source] = gain;
        Ok(())
    }
}

/// The media format of one leg, as negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegFormat {
    /// The leg's codec.
    pub codec: Codec,
    /// The leg's packetisation time.
    pub ptime_ms: u32,
}

/// One source of a mixed output and its gain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MixSource {
    /// The source leg.
    pub source: LegIndex,
    /// Its gain in the listener's mix (never mute).
    pub gain: Gain,
}

/// The sources of one mixed output, in ascending leg order: a leg set and a gain per
/// leg, 34 bytes, so that a session's plan stays small enough to stay in cache at
/// 10,000 sessions per core.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MixSources {
    set: LegSet,
    gains: [Gain; MAX_SESSION_LEGS],
}

impl MixSources {
    const EMPTY: MixSources = MixSources {
        set: LegSet(0),
        gains: [Gain::MUTE; MAX_SESSION_LEGS],
    };

    /// The audible sources with their gains, in ascending leg order.
    pub fn iter(&self) -> impl Iterator<Item = MixSource> + '_ {
        self.set.map(|source| MixSource {
            source,
            gain: self.gains[source],
        })
    }

    /// The audible sources as a set.
    pub fn set(&self) -> LegSet {
        self.set
    }

    /// How many sources are mixed.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// True when nothing is mixed (never the case inside an [`OutputPlan::Mix`]).
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    fn push(&mut self, source: LegIndex, gain: Gain) {
        self.set.0 |= 1 << source;
        self.gains[source] = gain;
    }
}

impl core::fmt::Debug for MixSources {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// What one listener's output carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputPlan {
    /// Nobody audible: the output sends nothing (DTX) or silence, at the engine's choice.
    Silence,
    /// Re-stamp and send the packets of exactly one source as they arrive.
    Forward {
        /// The forwarded leg.
        source: LegIndex,
    },
    /// Decode, mix at ticks, encode.
    Mix(MixSources),
}

/// The plan of a whole session: one [`OutputPlan`] per leg plus per-source lookups.
///
/// Laid out in declaration order (`repr(C)`): the per-session masks and per-leg lookups
/// first, then the outputs, so that a session of a few legs reads its plan from the
/// first [`SessionPlan::HOT_BYTES`] (what a caller may prefetch).
#[derive(Clone, PartialEq, Eq)]
#[repr(C)]
pub struct SessionPlan {
    legs: usize,
    /// Bit `s` set when some listener mixes source `s`.
    mixed_inputs: u16,
    /// Bit `l` set when listener `l` mixes.
    mixed_outputs: u16,
    /// Bit `l` set when `l` leads a mix that some later listener shares.
    shared: u16,
    /// Bit `l` set when listener `l` mixes and leads its mix (only leaders are mixed).
    mix_leaders: u16,
    /// Bit `l` set when leader `l`'s mix is exactly two sources at unity gain (the
    /// commonest mix: a listener in a three-party call), which has its own kernel.
    unity_pairs: u16,
    /// `leaders[l]`: the first listener whose mix is the same as `l`'s (same sources,
    /// same gains, same format); `l` itself when none comes before. Listeners that share
    /// a leader share one mix and one encode.
    leaders: [u8; MAX_SESSION_LEGS],
    /// `forward_targets[s]`: bit `l` set when listener `l` forwards source `s`.
    forward_targets: [u16; MAX_SESSION_LEGS],
    outputs: [OutputPlan; MAX_SESSION_LEGS],
}

impl core::fmt::Debug for SessionPlan {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(&self.outputs[..self.legs]).finish()
    }
}

impl SessionPlan {
    /// Bytes from the start of a plan that a session of up to four legs reads (the
    /// lookups and the first four outputs).
    pub const HOT_BYTES: usize =
        std::mem::offset_of!(SessionPlan, outputs) + 4 * std::mem::size_of::<OutputPlan>();

    /// Builds the plan of every listener from the gains and the legs' formats.
    ///
    /// Panics if `legs.len()` differs from `matrix.legs()` (a programmer error on the
    /// control path).
    pub fn build(matrix: &HearMatrix, legs: &[LegFormat]) -> SessionPlan {
        assert_eq!(
            legs.len(),
            matrix.legs(),
            "one format per leg of the matrix"
        );
        let mut plan = SessionPlan {
            legs: legs.len(),
            outputs: [OutputPlan::Silence; MAX_SESSION_LEGS],
            mixed_inputs: 0,
            forward_targets: [0; MAX_SESSION_LEGS],
            mixed_outputs: 0,
            leaders: core::array::from_fn(|l| l as u8),
            shared: 0,
            mix_leaders: 0,
            unity_pairs: 0,
        };
        for (listener, format) in legs.iter().enumerate() {
            let mut sources = MixSources::EMPTY;
            for source in 0..legs.len() {
                let gain = matrix.gain(listener, source);
                if source != listener && !gain.is_mute() {
                    sources.push(source, gain);
                }
            }
            let only = (sources.len() == 1)
                .then(|| sources.iter().next())
                .flatten();
            plan.outputs[listener] = match only {
                _ if sources.is_empty() => OutputPlan::Silence,
                Some(only) if only.gain == Gain::UNITY && legs[only.source] == *format => {
                    plan.forward_targets[only.source] |= 1 << listener;
                    OutputPlan::Forward {
                        source: only.source,
                    }
                }
                _ => {
                    plan.mixed_inputs |= sources.set.0;
                    plan.mixed_outputs |= 1 << listener;
                    if let Some(leader) = (0..listener).find(|&l| {
                        plan.outputs[l] == OutputPlan::Mix(sources) && legs[l] == *format
                    }) {
                        plan.leaders[listener] = leader as u8;
                        plan.shared |= 1 << leader;
                    } else {
                        plan.mix_leaders |= 1 << listener;
                        if sources.len() == 2 && sources.iter().all(|s| s.gain == Gain::UNITY) {
                            plan.unity_pairs |= 1 << listener;
                        }
                    }
                    OutputPlan::Mix(sources)
                }
            };
        }
        plan
    }

    /// The listeners that hear nobody, in ascending order.
    pub fn silent_outputs(&self) -> LegSet {
        let all = if self.legs == 0 {
            0
        } else {
            u16::MAX >> (16 - self.legs)
        };
        let active = self.mixed_outputs | self.forward_targets.iter().fold(0, |a, &t| a | t);
        LegSet(all & !active)
    }

    /// The listeners that mix, in ascending order.
    pub fn mixed_outputs(&self) -> LegSet {
        LegSet(self.mixed_outputs)
    }

    /// The sources that some listener mixes, in ascending order.
    pub fn mixed_inputs(&self) -> LegSet {
        LegSet(self.mixed_inputs)
    }

    /// The listeners that mix and lead their mix (the mixes to compute), ascending.
    pub fn mix_leaders(&self) -> LegSet {
        LegSet(self.mix_leaders)
    }

    /// The two sources of leader `listener`'s mix when it is exactly two sources at
    /// unity gain, in ascending order; `None` for any other output.
    pub fn unity_pair(&self, listener: LegIndex) -> Option<(LegIndex, LegIndex)> {
        if listener >= MAX_SESSION_LEGS || self.unity_pairs & (1 << listener) == 0 {
            return None;
        }
        let OutputPlan::Mix(sources) = &self.outputs[listener] else {
            return None;
        };
        let set = sources.set.0;
        let a = set.trailing_zeros() as LegIndex;
        let b = (set & (set - 1)).trailing_zeros() as LegIndex;
        Some((a, b))
    }

    /// The first listener whose mix equals `listener`'s (itself if none comes before):
    /// one mix and one encode serve both.
    pub fn mix_leader(&self, listener: LegIndex) -> LegIndex {
        usize::from(self.leaders[listener])
    }

    /// True when `listener` leads a mix that a later listener shares (its encoded frame
    /// is worth keeping for the followers).
    pub fn is_shared_mix(&self, listener: LegIndex) -> bool {
        listener < MAX_SESSION_LEGS && self.shared & (1 << listener) != 0
    }

    /// True when some listener mixes: then the session ticks.
    pub fn is_mixing(&self) -> bool {
        self.mixed_outputs != 0
    }

    /// How many legs the session has.
    pub fn legs(&self) -> usize {
        self.legs
    }

    /// The plan of `listener`'s output. Panics when `listener` is out of range.
    pub fn output(&self, listener: LegIndex) -> &OutputPlan {
        assert!(listener < self.legs, "listener {listener} out of range");
        &self.outputs[listener]
    }

    /// True when some listener mixes `source`, so its packets must go into its jitter
    /// buffer and be decoded at ticks. False for out-of-range legs.
    pub fn is_mixed_input(&self, source: LegIndex) -> bool {
        source < self.legs && self.mixed_inputs & (1 << source) != 0
    }

    /// The listeners that forward `source`'s packets, in ascending order.
    pub fn forward_targets(&self, source: LegIndex) -> LegSet {
        LegSet(if source < self.legs {
            self.forward_targets[source]
        } else {
            0
        })
    }
}

/// A set of legs of one session, iterated in ascending order without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LegSet(pub u16);

impl LegSet {
    /// True when `leg` is in the set.
    pub fn contains(self, leg: LegIndex) -> bool {
        leg < MAX_SESSION_LEGS && self.0 & (1 << leg) != 0
    }
    /// True when the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// How many legs are in the set.
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }
}

impl Iterator for LegSet {
    type Item = LegIndex;
    fn next(&mut self) -> Option<LegIndex> {
        if self.0 == 0 {
            return None;
        }
        let leg = self.0.trailing_zeros() as LegIndex;
        self.0 &= self.0 - 1;
        Some(leg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PCMU20: LegFormat = LegFormat {
        codec: Codec::Pcmu,
        ptime_ms: 20,
    };
    const U: Gain = Gain::UNITY;
    // Leg indices in the scenarios below.
    const C: usize = 0;
    const A: usize = 1;
    const S: usize = 2;

    fn matrix(legs: usize, edges: &[(usize, usize)]) -> HearMatrix {
        let mut m = HearMatrix::new(legs);
        for &(listener, source) in edges {
            m.set(listener, source, U).unwrap();
        }
        m
    }

    fn mixed(plan: &OutputPlan) -> Vec<usize> {
        match plan {
            OutputPlan::Mix(s) => s.iter().map(|m| m.source).collect(),
            other => panic!("expected a mix, got {other:?}"),
        }
    }

    #[test]
    fn the_diagonal_is_refused_and_stays_mute() {
        let mut m = HearMatrix::new(3);
        assert_eq!(m.set(1, 1, U), Err(PlanError::SelfHearing(1)));
        assert_eq!(m.set(1, 1, Gain::MUTE), Err(PlanError::SelfHearing(1)));
        assert_eq!(m.gain(1, 1), Gain::MUTE);
        assert_eq!(
            m.set(0, 3, U),
            Err(PlanError::LegOutOfRange { leg: 3, legs: 3 })
        );
        assert_eq!(m, HearMatrix::new(3));
    }

    #[test]
    fn monitor_forwards_the_call_and_mixes_both_sides_for_the_supervisor() {
        let m = matrix(3, &[(C, A), (A, C), (S, C), (S, A)]);
        let p = SessionPlan::build(&m, &[PCMU20; 3]);
        assert_eq!(*p.output(C), OutputPlan::Forward { source: A });
        assert_eq!(*p.output(A), OutputPlan::Forward { source: C });
        assert_eq!(mixed(p.output(S)), vec![C, A]);
        assert!(p.is_mixed_input(C) && p.is_mixed_input(A));
        assert!(!p.is_mixed_input(S), "nobody hears a monitor");
        assert_eq!(p.forward_targets(A).collect::<Vec<_>>(), vec![C]);
        assert_eq!(p.forward_targets(C).collect::<Vec<_>>(), vec![A]);
        assert!(p.forward_targets(S).is_empty());
    }

    #[test]
    fn coach_mixes_for_the_agent_and_forwards_the_agent_to_the_customer() {
        let m = matrix(3, &[(C, A), (A, C), (A, S), (S, C), (S, A)]);
        let p = SessionPlan::build(&m, &[PCMU20; 3]);
        assert_eq!(mixed(p.output(A)), vec![C, S]);
        assert_eq!(*p.output(C), OutputPlan::Forward { source: A });
        assert_eq!(mixed(p.output(S)), vec![C, A]);
        assert!(p.is_mixed_input(S) && p.is_mixed_input(C) && p.is_mixed_input(A));
        assert_eq!(p.forward_targets(A).collect::<Vec<_>>(), vec![C]);
        assert!(p.forward_targets(C).is_empty());
    }

    #[test]
    fn barge_mixes_for_everyone() {
        let all: Vec<_> = (0..3)
            .flat_map(|l| (0..3).map(move |s| (l, s)))
            .filter(|(l, s)| l != s)
            .collect();
        let p = SessionPlan::build(&matrix(3, &all), &[PCMU20; 3]);
        assert_eq!(mixed(p.output(C)), vec![A, S]);
        assert_eq!(mixed(p.output(A)), vec![C, S]);
        assert_eq!(mixed(p.output(S)), vec![C, A]);
        assert!((0..3).all(|s| p.forward_targets(s).is_empty() && p.is_mixed_input(s)));
    }

    #[test]
    fn hold_silences_both_and_a_monitor_on_the_agent_forwards_the_agent() {
        let p = SessionPlan::build(&matrix(3, &[(S, A)]), &[PCMU20; 3]);
        assert_eq!(*p.output(C), OutputPlan::Silence);
        assert_eq!(*p.output(A), OutputPlan::Silence);
        assert_eq!(*p.output(S), OutputPlan::Forward { source: A });
        assert!((0..3).all(|s| !p.is_mixed_input(s)));
        assert_eq!(p.forward_targets(A).collect::<Vec<_>>(), vec![S]);
    }

    #[test]
    fn a_codec_or_ptime_mismatch_prevents_forwarding() {
        let m = matrix(2, &[(0, 1), (1, 0)]);
        let pcma20 = LegFormat {
            codec: Codec::Pcma,
            ptime_ms: 20,
        };
        let p = SessionPlan::build(&m, &[PCMU20, pcma20]);
        assert_eq!(mixed(p.output(0)), vec![1]);
        assert_eq!(mixed(p.output(1)), vec![0]);
        let pcmu30 = LegFormat {
            codec: Codec::Pcmu,
            ptime_ms: 30,
        };
        let p = SessionPlan::build(&m, &[PCMU20, pcmu30]);
        assert_eq!(mixed(p.output(0)), vec![1]);
        assert!(p.is_mixed_input(0) && p.is_mixed_input(1));
    }

    #[test]
    fn a_gain_other_than_unity_prevents_forwarding() {
        let mut m = matrix(2, &[(0, 1), (1, 0)]);
        m.set(0, 1, Gain::from_linear(0.5)).unwrap();
        let p = SessionPlan::build(&m, &[PCMU20; 2]);
        match p.output(0) {
            OutputPlan::Mix(s) => {
                assert_eq!(
                    s.iter().collect::<Vec<_>>(),
                    [MixSource {
                        source: 1,
                        gain: Gain(2048)
                    }]
                );
            }
            other => panic!("expected a mix, got {other:?}"),
        }
        assert_eq!(*p.output(1), OutputPlan::Forward { source: 0 });
    }

    #[test]
    fn a_full_session_mixes_fifteen_sources_per_listener() {
        let n = MAX_SESSION_LEGS;
        let all: Vec<_> = (0..n)
            .flat_map(|l| (0..n).map(move |s| (l, s)))
            .filter(|(l, s)| l != s)
            .collect();
        let p = SessionPlan::build(&matrix(n, &all), &[PCMU20; MAX_SESSION_LEGS]);
        for l in 0..n {
            let sources = mixed(p.output(l));
            assert_eq!(sources.len(), MAX_MIX_SOURCES);
            assert!(!sources.contains(&l));
        }
    }

    #[test]
    fn listeners_hearing_the_same_mix_share_one_leader() {
        // Customer and agent talk; two supervisors monitor the call (each hears both),
        // a third hears only the customer at half gain.
        let mut m = matrix(5, &[(C, A), (A, C), (S, C), (S, A), (3, C), (3, A)]);
        m.set(4, C, Gain(2048)).unwrap();
        m.set(4, A, U).unwrap();
        let p = SessionPlan::build(&m, &[PCMU20; 5]);
        assert_eq!(p.mix_leader(S), S);
        assert_eq!(
            p.mix_leader(3),
            S,
            "the second monitor reuses the first one's mix"
        );
        assert!(p.is_shared_mix(S) && !p.is_shared_mix(3) && !p.is_shared_mix(4));
        assert_eq!(p.mix_leader(4), 4, "different gains, different mix");
        assert_eq!(p.mixed_outputs().collect::<Vec<_>>(), [S, 3, 4]);
        assert_eq!(p.mix_leaders().collect::<Vec<_>>(), [S, 4], "3 follows S");
        // S mixes customer and agent at unity; 4 has a gain; 3 is a follower.
        assert_eq!(p.unity_pair(S), Some((C, A)));
        assert_eq!((p.unity_pair(3), p.unity_pair(4)), (None, None));
        assert_eq!(
            (p.unity_pair(C), p.unity_pair(15)),
            (None, None),
            "forwarding"
        );
        // The same sources in another format cannot share the encode.
        let mut formats = [PCMU20; 5];
        formats[3].ptime_ms = 30;
        let p = SessionPlan::build(&m, &formats);
        assert_eq!(p.mix_leader(3), 3);
    }
}
