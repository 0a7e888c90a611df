//! Fixtures: the parties of a supervised call, the hear relation of each supervision
//! mode (SPEC section 1, the supervisor targeting the agent), the PCMU media every test
//! leg uses, and the session plan built from them.

use std::net::SocketAddr;

use earshot_engine_api::{Codec, Edge, LegId, MediaConfig, SessionPlan};
use earshot_types::Gain;

use crate::tone::Tone;

/// Party index of the customer in a supervised session's legs.
pub const CUSTOMER: usize = 0;
/// Party index of the agent.
pub const AGENT: usize = 1;
/// Party index of the supervisor.
pub const SUPERVISOR: usize = 2;

/// The parties of a supervised call, in leg order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The customer.
    Customer,
    /// The agent.
    Agent,
    /// The supervisor (monitoring, coaching or barging into the agent's call).
    Supervisor,
}

impl Role {
    /// Every role, in leg order.
    pub const ALL: [Role; 3] = [Role::Customer, Role::Agent, Role::Supervisor];

    /// The party index ([`CUSTOMER`], [`AGENT`], [`SUPERVISOR`]).
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Each party talks its own tone; all are multiples of 50 Hz (8000 / 160), so a
    /// 20 ms frame holds whole periods and the detector's bins do not leak.
    pub const fn tone_hz(self) -> f64 {
        match self {
            Role::Customer => 500.0,
            Role::Agent => 900.0,
            Role::Supervisor => 1400.0,
        }
    }

    /// The party's tone at the tests' amplitude, 8 kHz.
    pub const fn tone(self) -> Tone {
        Tone::narrowband(self.tone_hz())
    }

    /// The party's leg key.
    pub const fn key(self) -> &'static str {
        match self {
            Role::Customer => "customer",
            Role::Agent => "agent",
            Role::Supervisor => "supervisor",
        }
    }
}

/// Who hears whom in one session of customer, agent and supervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Supervision {
    /// Customer and agent hear each other; the supervisor hears nobody (nobody mixes:
    /// the bare forward path).
    Call,
    /// Customer and agent hear each other (forwarded); the supervisor hears both
    /// (mixed) and is heard by nobody.
    Monitor,
    /// As monitor, and the agent also hears the supervisor (whisper).
    Coach,
    /// Everyone hears the other two.
    Barge,
    /// The customer is held: customer and agent are apart, and the monitoring supervisor
    /// hears the agent's group, which is the agent alone.
    Hold,
}

impl Supervision {
    /// Every mode.
    pub const ALL: [Supervision; 5] = [
        Supervision::Call,
        Supervision::Monitor,
        Supervision::Coach,
        Supervision::Barge,
        Supervision::Hold,
    ];

    /// The hear relation as (listener, source) party indices.
    pub const fn edges(self) -> &'static [(usize, usize)] {
        match self {
            Supervision::Call => &[(AGENT, CUSTOMER), (CUSTOMER, AGENT)],
            Supervision::Monitor => &[
                (AGENT, CUSTOMER),
                (CUSTOMER, AGENT),
                (SUPERVISOR, CUSTOMER),
                (SUPERVISOR, AGENT),
            ],
            Supervision::Coach => &[
                (AGENT, CUSTOMER),
                (CUSTOMER, AGENT),
                (SUPERVISOR, CUSTOMER),
                (SUPERVISOR, AGENT),
                (AGENT, SUPERVISOR),
            ],
            Supervision::Barge => &[
                (AGENT, CUSTOMER),
                (CUSTOMER, AGENT),
                (SUPERVISOR, CUSTOMER),
                (SUPERVISOR, AGENT),
                (CUSTOMER, SUPERVISOR),
                (AGENT, SUPERVISOR),
            ],
            Supervision::Hold => &[(SUPERVISOR, AGENT)],
        }
    }

    /// Whether `listener` hears `source` in this mode.
    pub fn hears(self, listener: Role, source: Role) -> bool {
        self.edges().contains(&(listener.index(), source.index()))
    }

    /// Whether `listener` hears anybody in this mode.
    pub fn hears_anyone(self, listener: Role) -> bool {
        self.edges().iter().any(|&(l, _)| l == listener.index())
    }

    /// Party indices that must not receive telephone events: a supervisor who only
    /// monitors or coaches (SPEC section 5).
    pub const fn no_dtmf(self) -> &'static [usize] {
        match self {
            Supervision::Barge | Supervision::Call => &[],
            _ => &[SUPERVISOR],
        }
    }

    /// The session plan of this mode over `legs` (in party order): unity gains, and
    /// `no_dtmf` when `with_no_dtmf`.
    pub fn plan(self, session: &str, legs: &[LegId], with_no_dtmf: bool) -> SessionPlan {
        let no_dtmf = if with_no_dtmf { self.no_dtmf() } else { &[] };
        plan(session, legs, self.edges(), no_dtmf)
    }
}

/// Every ordered pair of distinct parties among `parties`: a barge of that many.
pub fn all_hear_all(parties: usize) -> Vec<(usize, usize)> {
    let mut edges = Vec::with_capacity(parties * parties.saturating_sub(1));
    for listener in 0..parties {
        for source in 0..parties {
            if listener != source {
                edges.push((listener, source));
            }
        }
    }
    edges
}

/// A session plan over `legs` with `edges` (party indices into `legs`) at unity gain.
pub fn plan(
    session: &str,
    legs: &[LegId],
    edges: &[(usize, usize)],
    no_dtmf: &[usize],
) -> SessionPlan {
    SessionPlan {
        session: session.into(),
        edges: edges
            .iter()
            .map(|&(listener, source)| Edge {
                listener: legs[listener],
                source: legs[source],
                gain: Gain::UNITY,
            })
            .collect(),
        no_dtmf: no_dtmf.iter().map(|&i| legs[i]).collect(),
    }
}

/// The media of every test leg: PCMU on payload type 0, 20 ms, rtcp-mux, no telephone
/// events, no first-packet report; `remote` `None` latches the first source. Vary it
/// with struct update syntax (`MediaConfig { telephone_event_pt: Some(101),
/// ..pcmu_media(remote) }`).
pub fn pcmu_media(remote: Option<SocketAddr>) -> MediaConfig {
    MediaConfig {
        remote,
        codec: Codec::Pcmu,
        payload_type: 0,
        ptime_ms: 20,
        telephone_event_pt: None,
        rtcp_mux: true,
        report_first_packet: false,
        max_ptime_ms: None,
        opus: Default::default(),
        srtp: None,
        strict_source: None,
        quiet_when_unheard: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn barge_is_everyone_hearing_everyone_else() {
        let mut barge = Supervision::Barge.edges().to_vec();
        barge.sort_unstable();
        let mut all = all_hear_all(3);
        all.sort_unstable();
        assert_eq!(barge, all);
    }

    #[test]
    fn nobody_hears_the_monitoring_supervisor_and_the_coach_is_heard_by_the_agent_only() {
        use Role::*;
        for mode in [Supervision::Monitor, Supervision::Hold, Supervision::Call] {
            assert!(!mode.hears(Customer, Supervisor) && !mode.hears(Agent, Supervisor));
        }
        assert!(Supervision::Coach.hears(Agent, Supervisor));
        assert!(!Supervision::Coach.hears(Customer, Supervisor));
        assert!(
            !Supervision::Hold.hears(Customer, Agent) && !Supervision::Hold.hears(Agent, Customer)
        );
        assert!(!Supervision::Call.hears_anyone(Supervisor));
        for mode in Supervision::ALL {
            for &(l, s) in mode.edges() {
                assert_ne!(l, s, "{mode:?}: nobody hears themself");
            }
        }
    }

    #[test]
    fn plans_map_party_indices_to_legs() {
        let legs = [LegId(10), LegId(11), LegId(12)];
        let p = Supervision::Monitor.plan("s", &legs, true);
        assert_eq!(p.edges.len(), 4);
        assert!(p.edges.iter().all(|e| e.gain == Gain::UNITY));
        assert!(
            p.edges
                .iter()
                .any(|e| e.listener == LegId(12) && e.source == LegId(10))
        );
        assert_eq!(p.no_dtmf, vec![LegId(12)]);
        assert!(
            Supervision::Monitor
                .plan("s", &legs, false)
                .no_dtmf
                .is_empty()
        );
    }
}
