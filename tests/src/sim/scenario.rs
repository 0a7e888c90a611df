//! Who hears whom: SPEC section 1's hear relation, written out by hand.
//!
//! A [`Hearing`] is the call's talk groups plus its supervisions; [`Hearing::hears`] is
//! the one function that turns them into directed edges, rule by rule, so that every
//! behaviour test states its scenario the way the product does (monitor, coach, barge,
//! hold) and the edges come from one reviewed place rather than from each test.

use super::world::Party;

/// A supervisor's mode (SPEC section 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Listens silently; never heard; never receives telephone events.
    Monitor,
    /// Whispers to the target agent only.
    Coach,
    /// Joins the target's talk group as a full participant.
    Barge,
}

/// One supervision: `supervisor` attached to `target` in `mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Supervision {
    /// The supervisor.
    pub supervisor: Party,
    /// The participant supervised.
    pub target: Party,
    /// How.
    pub mode: Mode,
}

/// A call's talk groups and supervisions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hearing {
    /// Talk groups of non-supervisor participants; each participant in at most one.
    pub groups: Vec<Vec<Party>>,
    /// Supervisions.
    pub supervisions: Vec<Supervision>,
}

/// What a listener's output carries when every leg has the same format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// Hears nobody.
    Silence,
    /// Hears exactly one source (forwarded).
    Forward(Party),
    /// Hears two or more (mixed).
    Mix,
}

impl Hearing {
    /// An active call: `customer` and `agent` in one group.
    pub fn call(customer: Party, agent: Party) -> Hearing {
        Hearing {
            groups: vec![vec![customer, agent]],
            supervisions: Vec::new(),
        }
    }

    /// `customer` on hold: customer and agent each alone.
    pub fn held(customer: Party, agent: Party) -> Hearing {
        Hearing {
            groups: vec![vec![customer], vec![agent]],
            supervisions: Vec::new(),
        }
    }

    /// Adds a supervision.
    pub fn with(mut self, supervisor: Party, target: Party, mode: Mode) -> Hearing {
        self.supervisions.push(Supervision {
            supervisor,
            target,
            mode,
        });
        self
    }

    fn supervision_of(&self, p: Party) -> Option<&Supervision> {
        self.supervisions.iter().find(|s| s.supervisor == p)
    }

    fn group_of(&self, p: Party) -> Option<usize> {
        self.groups.iter().position(|g| g.contains(&p))
    }

    /// The talk group a party takes part in for rule 1: its own, or for a barging
    /// supervisor its target's (rule 2). Monitors and coaches belong to none.
    fn member_group(&self, p: Party) -> Option<usize> {
        match self.supervision_of(p) {
            Some(s) if s.mode == Mode::Barge => self.group_of(s.target),
            Some(_) => None,
            None => self.group_of(p),
        }
    }

    /// True when `p` is a monitoring supervisor (never receives telephone events).
    pub fn is_monitor(&self, p: Party) -> bool {
        self.supervision_of(p)
            .is_some_and(|s| s.mode == Mode::Monitor)
    }

    /// SPEC section 1: listener `l` hears source `x` exactly when
    /// 1. both are non-supervisors in the same talk group, or
    /// 2. one or both is a barging supervisor, counted as a member of its target's group;
    /// 3. `l` monitors or coaches, and `x` is a member (rules 1-2) of its target's group;
    /// 4. `x` coaches and `l` is its target.
    ///
    /// Nobody hears themselves; nobody hears a monitor (it is never a member, rule 3).
    pub fn hears(&self, l: Party, x: Party) -> bool {
        if l == x {
            return false;
        }
        let x_group = self.member_group(x);
        let same_group = |g: Option<usize>| g.is_some() && g == x_group;
        match self.supervision_of(l) {
            Some(s) if s.mode != Mode::Barge => same_group(self.group_of(s.target)),
            _ => {
                let coached_by_x = self
                    .supervision_of(x)
                    .is_some_and(|s| s.mode == Mode::Coach && s.target == l);
                same_group(self.member_group(l)) || coached_by_x
            }
        }
    }

    /// The sources `l` hears among `parties`.
    pub fn sources_of(&self, l: Party, parties: impl Iterator<Item = Party>) -> Vec<Party> {
        parties.filter(|&x| self.hears(l, x)).collect()
    }

    /// What `l`'s output carries when all legs share one format.
    pub fn output_of(&self, l: Party, parties: impl Iterator<Item = Party>) -> OutputKind {
        match self.sources_of(l, parties).as_slice() {
            [] => OutputKind::Silence,
            [one] => OutputKind::Forward(*one),
            _ => OutputKind::Mix,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: Party = Party(0);
    const A: Party = Party(1);
    const S: Party = Party(2);

    fn heard_by(h: &Hearing, l: Party) -> Vec<Party> {
        h.sources_of(l, [C, A, S].into_iter())
    }

    #[test]
    fn the_product_table_holds_for_a_monitored_agent() {
        // Active call: the supervisor hears both; nobody hears the supervisor.
        let h = Hearing::call(C, A).with(S, A, Mode::Monitor);
        assert_eq!(heard_by(&h, S), vec![C, A]);
        assert_eq!(heard_by(&h, C), vec![A]);
        assert_eq!(heard_by(&h, A), vec![C]);
        // Hold: the supervisor hears the agent only; the customer hears nobody.
        let h = Hearing::held(C, A).with(S, A, Mode::Monitor);
        assert_eq!(heard_by(&h, S), vec![A]);
        assert_eq!(heard_by(&h, C), vec![]);
        // Monitoring the customer on hold: the customer only.
        let h = Hearing::held(C, A).with(S, C, Mode::Monitor);
        assert_eq!(heard_by(&h, S), vec![C]);
    }

    #[test]
    fn a_coach_is_heard_by_the_agent_only_and_a_barger_by_everyone() {
        let h = Hearing::call(C, A).with(S, A, Mode::Coach);
        assert_eq!(heard_by(&h, A), vec![C, S]);
        assert_eq!(heard_by(&h, C), vec![A]);
        assert_eq!(heard_by(&h, S), vec![C, A]);
        let h = Hearing::call(C, A).with(S, A, Mode::Barge);
        assert_eq!(heard_by(&h, A), vec![C, S]);
        assert_eq!(heard_by(&h, C), vec![A, S]);
        assert_eq!(heard_by(&h, S), vec![C, A]);
    }
}
