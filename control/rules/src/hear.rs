//! The hear relation (SPEC section 1, rules 1-4): who hears whom in one interaction.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::model::{Interaction, ParticipantState, Supervision, SupervisionMode, SupervisionState};

/// Who hears whom in one interaction, as the engine needs it to build a gain matrix.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HearRelation {
    /// The interaction.
    pub interaction_id: String,
    /// Every participant with a media leg (CONNECTING or CONNECTED), so the engine knows
    /// who exists and who hears silence. CONNECTING legs (a ringing supervisor phone)
    /// have no edges until `MediaConnected`.
    pub legs: BTreeSet<String>,
    /// `(listener, source)`: the listener hears the source. Never `(x, x)`.
    pub edges: BTreeSet<(String, String)>,
    /// Participants that must never receive telephone events, even from sources they
    /// hear: every supervisor of a live MONITOR supervision (SPEC section 5: DTMF never
    /// reaches a monitoring supervisor; a coach or a barging supervisor may key in digits
    /// the agent's IVR expects, so they receive them).
    #[serde(default)]
    pub no_dtmf: BTreeSet<String>,
}

impl HearRelation {
    /// Whether `listener` hears `source`.
    pub fn hears(&self, listener: &str, source: &str) -> bool {
        // BTreeSet<(String, String)> cannot be probed with borrowed strs; the sets are
        // a handful of entries, so a scan of the listener's range is cheap enough.
        self.sources_of(listener).any(|s| s == source)
    }

    /// Everyone `listener` hears, in id order.
    pub fn sources_of<'a>(&'a self, listener: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.edges
            .range((listener.to_owned(), String::new())..)
            .take_while(move |(l, _)| l == listener)
            .map(|(_, s)| s.as_str())
    }

    /// Everyone who hears `source`, in id order.
    pub fn listeners_of<'a>(&'a self, source: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.edges
            .iter()
            .filter(move |(_, s)| s == source)
            .map(|(l, _)| l.as_str())
    }
}

/// Computes the relation from an interaction and its supervisions. `supervisions` looks
/// a supervision up by id.
pub(crate) fn compute<'a>(
    interaction: &Interaction,
    supervision: impl Fn(&str) -> Option<&'a Supervision>,
) -> HearRelation {
    let mut rel = HearRelation {
        interaction_id: interaction.interaction_id.clone(),
        ..HearRelation::default()
    };
    if interaction.is_ended() {
        return rel;
    }
    for p in &interaction.participants {
        if p.state != ParticipantState::Disconnected {
            rel.legs.insert(p.participant_id.clone());
        }
    }

    // Group index of every connected non-supervisor participant.
    let groups = interaction.talk_groups();
    let mut group_of: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, g) in groups.iter().enumerate() {
        for m in g {
            group_of.insert(m.as_str(), i);
        }
    }

    // DTMF: never to a monitor, whether its phone has answered yet or not.
    for s in interaction
        .supervision_ids
        .iter()
        .filter_map(|id| supervision(id))
    {
        if s.mode == SupervisionMode::Monitor && s.state != SupervisionState::Ended {
            rel.no_dtmf.insert(s.supervisor_participant_id.clone());
        }
    }

    // Only ACTIVE supervisions carry audio. Their supervisor leg is CONNECTED and their
    // target a connected non-supervisor (invariants kept by the state machine).
    let active: Vec<&Supervision> = interaction
        .supervision_ids
        .iter()
        .filter_map(|id| supervision(id))
        .filter(|s| s.state == SupervisionState::Active)
        .collect();

    // Rule 2: each group extended with the barging supervisors whose target is in it.
    let mut extended: Vec<Vec<&str>> = groups
        .iter()
        .map(|g| g.iter().map(String::as_str).collect())
        .collect();
    for s in &active {
        if s.mode == SupervisionMode::Barge
            && let Some(&g) = group_of.get(s.target_participant_id.as_str())
        {
            extended[g].push(s.supervisor_participant_id.as_str());
        }
    }

    // Rules 1 and 2: everyone in an extended group hears everyone else in it.
    for members in &extended {
        for &l in members {
            for &x in members {
                if l != x {
                    rel.edges.insert((l.to_owned(), x.to_owned()));
                }
            }
        }
    }

    for s in &active {
        let Some(&g) = group_of.get(s.target_participant_id.as_str()) else {
            continue;
        };
        match s.mode {
            SupervisionMode::Barge => {}
            SupervisionMode::Monitor | SupervisionMode::Coach => {
                // Rule 3: hears the target's extended group; nobody hears a monitor.
                for &x in &extended[g] {
                    if x != s.supervisor_participant_id {
                        rel.edges
                            .insert((s.supervisor_participant_id.clone(), x.to_owned()));
                    }
                }
                // Rule 4: the coached target, and only it, hears the coach.
                if s.mode == SupervisionMode::Coach {
                    rel.edges.insert((
                        s.target_participant_id.clone(),
                        s.supervisor_participant_id.clone(),
                    ));
                }
            }
        }
    }
    rel
}
