//! Sessions: the hear relation turned into a media plan, and the tick wheel.

use earshot_engine_api::{EngineError, Response, SessionPlan as ApiPlan};
use earshot_media::plan::{HearMatrix, LegFormat, LegSet, OutputPlan, SessionPlan};
use earshot_media::time::{Duration, Instant};
use earshot_media::{Codec, MAX_SESSION_LEGS, SampleRate};

use super::tick::{WHEEL_SLOT_NS, WHEEL_SLOTS};
use super::{NO_SLOT, Shard};

/// The engine's view of one interaction: the legs that may hear each other.
///
/// Laid out in declaration order (`repr(C)`), what the tick and the packet path read
/// first: the leg slots, the schedule and the media plan (whose own hot part leads),
/// then what only the control path reads (the hear matrix, the API plan, the key).
/// [`Session::hot`] is that leading part, which the tick wheel prefetches for the
/// sessions due next.
#[derive(Debug)]
#[repr(C)]
pub(super) struct Session {
    pub(super) legs: [u32; MAX_SESSION_LEGS],
    pub(super) len: usize,
    /// Next session in the same wheel slot, or NO_SLOT.
    pub(super) wheel_next: u32,
    pub(super) scheduled: bool,
    /// Whether the session ticks: some output mixes, or idles.
    pub(super) mixing: bool,
    /// Configured outputs that hear nobody and still get a stream of silence at their
    /// ptime, so their endpoints do not take the call for dead (SPEC section 5).
    pub(super) idle: LegSet,
    pub(super) next_tick: Instant,
    pub(super) tick_period: Duration,
    /// Samples of one tick at the mix rate.
    pub(super) tick_samples: usize,
    /// The rate the session mixes at (SPEC section 5): the highest rate that some
    /// listener both hears from a source and plays.
    pub(super) mix_rate: SampleRate,
    /// Bit per leg index: never receives telephone events.
    pub(super) no_dtmf: u16,
    pub(super) plan: SessionPlan,
    pub(super) matrix: HearMatrix,
    pub(super) api_plan: ApiPlan,
    pub(super) key: String,
}

impl Session {
    /// Bytes from the start of the session that a tick of a session of up to four legs
    /// reads: everything before the plan, and the plan's hot part.
    pub(super) const HOT_BYTES: usize =
        std::mem::offset_of!(Session, plan) + SessionPlan::HOT_BYTES;

    /// An empty session: no legs, an empty plan, not ticking.
    pub(super) fn new(key: &str, now: Instant) -> Session {
        Session {
            key: key.to_owned(),
            legs: [NO_SLOT; MAX_SESSION_LEGS],
            len: 0,
            api_plan: ApiPlan {
                session: key.to_owned(),
                ..ApiPlan::default()
            },
            plan: SessionPlan::build(&HearMatrix::new(0), &[]),
            no_dtmf: 0,
            matrix: HearMatrix::new(0),
            mixing: false,
            idle: LegSet(0),
            mix_rate: SampleRate::Hz8000,
            tick_samples: 160,
            tick_period: Duration::from_millis(20),
            next_tick: now,
            wheel_next: NO_SLOT,
            scheduled: false,
        }
    }
}

impl Shard {
    pub(super) fn set_plan(
        &mut self,
        now: Instant,
        plan: ApiPlan,
    ) -> Result<Response, EngineError> {
        let s = *self
            .session_by_key
            .get(&plan.session)
            .ok_or_else(|| EngineError::NotFound(format!("session {}", plan.session)))?;
        for (i, e) in plan.edges.iter().enumerate() {
            for (field, id) in [("listener", e.listener), ("source", e.source)] {
                let slot = self.resolve(id).map_err(|_| EngineError::InvalidArgument {
                    field: format!("edges[{i}].{field}"),
                    message: format!("{id} is not a leg of this engine"),
                })?;
                if self.leg(slot).session != s {
                    return Err(EngineError::InvalidArgument {
                        field: format!("edges[{i}].{field}"),
                        message: format!("{id} is not a leg of session {}", plan.session),
                    });
                }
            }
            if e.listener == e.source {
                return Err(EngineError::InvalidArgument {
                    field: format!("edges[{i}]"),
                    message: "nobody hears themselves".into(),
                });
            }
        }
        self.session_mut(s).api_plan = plan;
        self.rebuild_plan(now, s);
        Ok(Response::Done)
    }

    /// Rebuilds the media plan of session `s` from its API plan and its legs' formats.
    pub(super) fn rebuild_plan(&mut self, now: Instant, s: u32) {
        let sess = self.session(s);
        let n = sess.len;
        let mut matrix = HearMatrix::new(n);
        let mut no_dtmf = 0u16;
        let mut formats = [LegFormat {
            codec: Codec::Pcmu,
            ptime_ms: 20,
        }; MAX_SESSION_LEGS];
        let mut configured = [false; MAX_SESSION_LEGS];
        let mut sends_idle = 0u16;
        for i in 0..n {
            let leg = self.leg(sess.legs[i]);
            if let Some(m) = &leg.media {
                formats[i] = LegFormat {
                    codec: m.codec,
                    ptime_ms: m.ptime_ms,
                };
                configured[i] = true;
                if m.send_idle {
                    sends_idle |= 1 << i;
                }
            }
            if sess.api_plan.no_dtmf.contains(&leg.id) {
                no_dtmf |= 1 << i;
            }
        }
        for e in &sess.api_plan.edges {
            let (Some(l), Some(src)) = (self.index_in(s, e.listener), self.index_in(s, e.source))
            else {
                continue; // A leg removed since the plan was set.
            };
            // An unconfigured leg can neither be heard nor hear: it has no codec yet.
            if configured[l] && configured[src] {
                // set_plan refused self-edges and the indices come from this session, so
                // the matrix cannot refuse this edge.
                let _ = matrix.set(l, src, e.gain);
            }
        }
        let plan = SessionPlan::build(&matrix, &formats[..n]);
        // A listener whose forwarded source changes starts a new source mapping, even if
        // the two sources happen to share an SSRC.
        for l in 0..n.min(self.session(s).plan.legs()) {
            let before = *self.session(s).plan.output(l);
            let after = *plan.output(l);
            if before != after {
                if let OutputPlan::Forward { .. } = before {
                    let slot = self.session(s).legs[l];
                    if let Some(m) = self.leg_mut(slot).media.as_mut() {
                        m.out.end_forward();
                    }
                }
            }
        }
        let idle = LegSet(plan.silent_outputs().0 & sends_idle);
        let mixing = plan.is_mixing() || !idle.is_empty();
        // The session ticks at the greatest common divisor of its ticking legs' ptimes so
        // that every leg's frames are whole numbers of ticks.
        let mut tick_ms = 0u32;
        let ticking = plan.mixed_outputs().0 | plan.mixed_inputs().0 | idle.0;
        for i in LegSet(ticking) {
            if configured[i] {
                tick_ms = gcd(tick_ms, formats[i].ptime_ms);
            }
        }
        let tick_ms = if tick_ms == 0 { 20 } else { tick_ms };
        let mix_rate = self.mix_rate_of(s, &plan);
        // Staggering: a session's ticks fall at a phase derived from its slot, spreading
        // sessions evenly over the period instead of bursting every 20 ms.
        // Phases are whole wheel slots, so that a tick's deadline is the start of its slot
        // and the shard wakes exactly when it is due.
        let phase_ns = (u64::from(s).wrapping_mul(7_919) % u64::from(tick_ms)) * WHEEL_SLOT_NS;
        // Audio after silence (or silence after audio) is a new talk spurt: its first
        // packet carries the marker.
        // Only legs still in the session: after a removal the old set may name an index
        // past the end (the removed leg's), which has no slot any more.
        let present = u16::try_from((1u32 << n) - 1).unwrap_or(u16::MAX);
        let flipped = (self.session(s).idle.0 ^ idle.0) & present;
        for l in LegSet(flipped) {
            let slot = self.session(s).legs[l];
            if let Some(m) = self.leg_mut(slot).media.as_mut() {
                m.mixed_active = false;
            }
        }
        let sess = self.session_mut(s);
        sess.matrix = matrix;
        sess.plan = plan;
        sess.no_dtmf = no_dtmf;
        sess.idle = idle;
        sess.mix_rate = mix_rate;
        sess.tick_samples = mix_rate.samples_in_ms(tick_ms);
        sess.tick_period = Duration::from_millis(u64::from(tick_ms));
        let was_mixing = sess.mixing;
        sess.mixing = mixing;
        if mixing && !was_mixing {
            let period = u64::from(tick_ms) * 1_000_000;
            let base = now.as_nanos() - now.as_nanos() % period;
            let mut next = Instant::from_nanos(base + phase_ns);
            if next <= now {
                next += sess.tick_period;
            }
            sess.next_tick = next;
            if !sess.scheduled {
                self.schedule(s);
            }
        }
        // Inputs that stopped being mixed drop what they buffered so that when they are
        // mixed again they start fresh rather than from stale audio.
        let legs = self.session(s).legs;
        for i in 0..n {
            let mixed_input = self.session(s).plan.is_mixed_input(i);
            let sess = self.session(s);
            let mixed_out = i < sess.plan.legs()
                && (matches!(sess.plan.output(i), OutputPlan::Mix(_)) || sess.idle.contains(i));
            let forward_to = self.session(s).plan.forward_targets(i);
            if let Some(m) = self.leg_mut(legs[i]).media.as_mut() {
                m.forward_to = forward_to;
                m.set_mix_rate(mix_rate);
                if !mixed_input && (m.in_len > 0 || m.jitter_live) {
                    // Nobody mixes this input now: its jitter buffer is neither fed nor
                    // polled from here on, so it starts afresh when it is mixed again
                    // rather than from a stale timeline.
                    m.in_len = 0;
                    m.jitter.reset();
                    m.jitter_live = false;
                } else if mixed_input {
                    m.jitter_live = true;
                }
                if !mixed_out {
                    m.out_len = 0;
                    m.mixed_active = false;
                }
            }
        }
    }

    /// The rate session `s` mixes at under `plan`: for every mixed listener and every
    /// source it hears, the lower of what the listener plays and what the source
    /// carries; the highest of those, and at least 8 kHz. So a G.711 call that a G.722
    /// supervisor monitors mixes at 8 kHz (nobody in it carries more), and a G.722 agent
    /// barged by a G.722 supervisor at 16 kHz.
    fn mix_rate_of(&self, s: u32, plan: &SessionPlan) -> SampleRate {
        let sess = self.session(s);
        let media = |i: usize| self.leg(sess.legs[i]).media.as_deref();
        let mut rate = SampleRate::Hz8000;
        for l in plan.mixed_outputs() {
            let (Some(listener), OutputPlan::Mix(sources)) = (media(l), plan.output(l)) else {
                continue;
            };
            for src in sources.set() {
                if let Some(source) = media(src) {
                    rate = rate.max(listener.listener_rate().min(source.source_rate()));
                }
            }
        }
        rate
    }

    pub(super) fn schedule(&mut self, s: u32) {
        let sess = self.sessions[s as usize]
            .as_mut()
            .expect("scheduling a live session");
        // A deadline the wheel's cursor has already passed (a session that starts mixing
        // on a packet stamped before the last tick run) goes into the cursor's slot,
        // which the next run visits first: in its own slot it would wait a whole lap.
        let at = (sess.next_tick.as_nanos() / WHEEL_SLOT_NS).max(self.wheel_cursor);
        let slot = (at % WHEEL_SLOTS as u64) as usize;
        sess.wheel_next = self.wheel[slot];
        sess.scheduled = true;
        self.wheel[slot] = s;
        self.wheel_busy |= 1 << slot;
    }

    pub(super) fn unschedule(&mut self, s: u32) {
        for slot in 0..WHEEL_SLOTS {
            let mut prev = NO_SLOT;
            let mut cur = self.wheel[slot];
            while cur != NO_SLOT {
                let next = self.session(cur).wheel_next;
                if cur == s {
                    if prev == NO_SLOT {
                        self.wheel[slot] = next;
                        if next == NO_SLOT {
                            self.wheel_busy &= !(1 << slot);
                        }
                    } else {
                        self.session_mut(prev).wheel_next = next;
                    }
                    self.session_mut(s).scheduled = false;
                    return;
                }
                prev = cur;
                cur = next;
            }
        }
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}
