//! Fast failure detection between node agents (docs/cluster.md, "Fast failure
//! detection").
//!
//! A node's etcd lease proves it lives, but only coarsely: a dead node is noticed when
//! its lease expires, up to its TTL (2 s by default; etcd will not go much below 1 s)
//! plus etcd's own expiry sweep later. Agents therefore also ping each other over UDP
//! every [`PING_INTERVAL`]. A node that answers none of its peers' pings for
//! [`GuardTimes::suspect_after`] is *suspected* by each of them (`suspects/{node}@{lease}/
//! {suspecter}` in etcd, under the suspecter's lease). When every other live node
//! suspects it, and a node's own suspicion has stood in etcd for
//! [`GuardTimes::confirm`] (the suspected node mutes on seeing any suspicion of it, so
//! the window runs from that write), that node records the verdict
//! (`dead/{node}@{lease}`, only if no verdict names the recorder itself: of two nodes
//! that cannot hear each other, exactly one survives) and revokes the dead node's lease.
//! From there failover runs exactly as after an expiry.
//!
//! The guard against duplicate senders: a node that hears none of its peers for
//! [`GuardTimes::isolated_after`] (shorter than `suspect_after`) **mutes** its engine
//! (`Request::Mute`: nothing is sent, every stream's state moves on) unless etcd told it,
//! within the last [`GuardTimes::clear_for`], that nobody suspects it. It unmutes once it
//! hears a peer again, or etcd confirms nobody suspects it while its lease lives; if its
//! lease was revoked instead, the agent fences as after an expiry.
//!
//! What it does not cover: a node cut off from its peers and from etcd but not from its
//! callers keeps its calls muted until the lease expires (its calls then move). Nodes
//! whose registration names no peer address are never suspected (older agents): the
//! fast path needs every live node to take part.
//!
//! This module holds the pure parts (the [`PeerTracker`] state machine, with time as
//! an argument, and the datagram format); the agent binary runs them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

/// How often an agent pings each peer.
pub const PING_INTERVAL: Duration = Duration::from_millis(50);

/// A gap in the agent's own loop longer than this means the agent itself did not run
/// (the process was descheduled): nothing it missed meanwhile counts against a peer.
pub const SELF_STALL: Duration = Duration::from_millis(150);

/// The detector's timings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuardTimes {
    /// A peer unheard this long is suspected.
    pub suspect_after: Duration,
    /// Hearing no peer this long mutes this node (unless etcd cleared it).
    pub isolated_after: Duration,
    /// How long the declaring node's own suspicion of a peer must have stood in etcd
    /// (with every other live node suspecting it too) before the peer is declared dead.
    pub confirm: Duration,
    /// How long etcd's "nobody suspects you" vetoes muting.
    pub clear_for: Duration,
}

impl Default for GuardTimes {
    /// Suspicion after 400 ms: isolation at 250, confirmation 150, clearance 100.
    fn default() -> Self {
        GuardTimes::from_suspect_after(Duration::from_millis(400))
    }
}

impl GuardTimes {
    /// Derived from the one knob operators set (`--suspect-after-ms`): isolation at
    /// 5/8 of it, confirmation at 3/8, etcd's clearance at 1/4. Isolation must come
    /// first: a node its peers stopped hearing stops sending before they suspect it,
    /// and before any verdict.
    pub fn from_suspect_after(suspect_after: Duration) -> GuardTimes {
        GuardTimes {
            suspect_after,
            isolated_after: suspect_after * 5 / 8,
            confirm: suspect_after * 3 / 8,
            clear_for: suspect_after / 4,
        }
    }
}

#[derive(Clone, Debug)]
struct Peer {
    address: SocketAddr,
    lease: i64,
    /// When this node first saw the peer (or its current lease), or last resumed from
    /// a stall of its own: the peer is judged from here on, not before.
    judged_from: Instant,
    last_heard: Option<Instant>,
}

impl Peer {
    fn silent_since(&self) -> Instant {
        self.last_heard
            .map_or(self.judged_from, |h| h.max(self.judged_from))
    }
}

/// What one agent knows of its peers' liveness. Time is an argument.
#[derive(Debug)]
pub struct PeerTracker {
    times: GuardTimes,
    peers: BTreeMap<String, Peer>,
    last_tick: Option<Instant>,
}

impl PeerTracker {
    /// An agent with no peers yet.
    pub fn new(times: GuardTimes) -> PeerTracker {
        PeerTracker {
            times,
            peers: BTreeMap::new(),
            last_tick: None,
        }
    }

    /// The detector's timings.
    pub fn times(&self) -> GuardTimes {
        self.times
    }

    /// The live peers (other nodes' id, ping address and lease), as etcd lists them
    /// now. New peers, and peers registered again under a new lease, are judged from
    /// `now`; peers gone from the list are forgotten.
    pub fn set_peers(
        &mut self,
        now: Instant,
        live: impl IntoIterator<Item = (String, SocketAddr, i64)>,
    ) {
        let mut next = BTreeMap::new();
        for (id, address, lease) in live {
            let peer = match self.peers.remove(&id) {
                Some(p) if p.lease == lease => Peer { address, ..p },
                _ => Peer {
                    address,
                    lease,
                    judged_from: now,
                    last_heard: None,
                },
            };
            next.insert(id, peer);
        }
        self.peers = next;
    }

    /// The agent's loop ran at `now`. After a stall of its own, every peer is judged
    /// afresh: this node not running is no evidence against anyone.
    pub fn tick(&mut self, now: Instant) {
        if let Some(last) = self.last_tick
            && now.saturating_duration_since(last) > SELF_STALL
        {
            for p in self.peers.values_mut() {
                p.judged_from = now;
            }
        }
        self.last_tick = Some(now);
    }

    /// A peer answered one of our pings (a round trip: both directions work).
    pub fn heard(&mut self, now: Instant, from: &str) {
        if let Some(p) = self.peers.get_mut(from) {
            p.last_heard = Some(now);
        }
    }

    /// Where to send pings.
    pub fn targets(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.peers.values().map(|p| p.address)
    }

    /// Peers (id, lease) unheard for `suspect_after`.
    pub fn suspects(&self, now: Instant) -> Vec<(String, i64)> {
        self.peers
            .iter()
            .filter(|(_, p)| {
                now.saturating_duration_since(p.silent_since()) >= self.times.suspect_after
            })
            .map(|(id, p)| (id.clone(), p.lease))
            .collect()
    }

    /// Whether this node heard none of its peers for `isolated_after` (false with no
    /// peers: a lone node has nobody to be cut off from).
    pub fn isolated(&self, now: Instant) -> bool {
        !self.peers.is_empty()
            && self.peers.values().all(|p| {
                now.saturating_duration_since(p.silent_since()) >= self.times.isolated_after
            })
    }

    /// Whether this node heard any peer within `isolated_after`.
    pub fn hears_a_peer(&self, now: Instant) -> bool {
        self.peers.values().any(|p| {
            p.last_heard
                .is_some_and(|h| now.saturating_duration_since(h) < self.times.isolated_after)
        })
    }
}

/// The two datagrams agents exchange: `b"ESP1"`, a kind octet (1 ping, 2 pong), a
/// big-endian u64 sequence number, then the sender's node id (UTF-8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerMessage {
    /// "Are you there?" from `from`.
    Ping {
        /// The pinging node.
        from: String,
        /// Its sequence number.
        seq: u64,
    },
    /// "Here" from `from`, echoing the ping's sequence number.
    Pong {
        /// The answering node.
        from: String,
        /// The ping's sequence number.
        seq: u64,
    },
}

const MAGIC: &[u8; 4] = b"ESP1";

impl PeerMessage {
    /// The datagram.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, from, seq) = match self {
            PeerMessage::Ping { from, seq } => (1u8, from, seq),
            PeerMessage::Pong { from, seq } => (2u8, from, seq),
        };
        let mut out = Vec::with_capacity(13 + from.len());
        out.extend_from_slice(MAGIC);
        out.push(kind);
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(from.as_bytes());
        out
    }

    /// Parses a datagram; anything else (another protocol, truncated, not UTF-8, an
    /// empty id) is `None`.
    pub fn decode(datagram: &[u8]) -> Option<PeerMessage> {
        let rest = datagram.strip_prefix(MAGIC)?;
        let (&kind, rest) = rest.split_first()?;
        let (seq, id) = rest.split_first_chunk::<8>()?;
        let seq = u64::from_be_bytes(*seq);
        let from = std::str::from_utf8(id).ok()?;
        if from.is_empty() {
            return None;
        }
        let from = from.to_owned();
        match kind {
            1 => Some(PeerMessage::Ping { from, seq }),
            2 => Some(PeerMessage::Pong { from, seq }),
            _ => None,
        }
    }
}

/// Where `suspecter` records that it suspects `node` (registered under `lease`).
pub fn suspicion_key(prefix: &str, node: &str, lease: i64, suspecter: &str) -> String {
    format!("{}{suspecter}", suspicions_of(prefix, node, lease))
}

/// The prefix of every suspicion of `node` under `lease`.
pub fn suspicions_of(prefix: &str, node: &str, lease: i64) -> String {
    format!("{prefix}suspects/{node}@{lease:x}/")
}

/// The verdict that `node` (registered under `lease`) is dead.
pub fn verdict_key(prefix: &str, node: &str, lease: i64) -> String {
    format!("{prefix}dead/{node}@{lease:x}")
}

/// Whether every node of `required` is among `suspecters` (and there is at least one
/// suspecter): the condition for a verdict.
pub fn unanimous<'a>(suspecters: &[String], required: impl IntoIterator<Item = &'a str>) -> bool {
    !suspecters.is_empty()
        && required
            .into_iter()
            .all(|r| suspecters.iter().any(|s| s == r))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn tracker_with(t0: Instant, peers: &[&str]) -> PeerTracker {
        let mut t = PeerTracker::new(GuardTimes::default());
        t.set_peers(
            t0,
            peers
                .iter()
                .enumerate()
                .map(|(i, id)| ((*id).to_owned(), addr(9000 + i as u16), 7)),
        );
        t.tick(t0);
        t
    }

    /// Ticks every 25 ms from `from` to `to`, with the listed peers answering.
    fn run(t: &mut PeerTracker, from: Instant, to: Instant, answering: &[&str]) {
        let mut now = from;
        while now <= to {
            t.tick(now);
            for a in answering {
                t.heard(now, a);
            }
            now += ms(25);
        }
    }

    #[test]
    fn a_silent_peer_is_suspected_after_suspect_after_and_not_before() {
        let t0 = Instant::now();
        let mut t = tracker_with(t0, &["a", "b"]);
        run(&mut t, t0, t0 + ms(375), &["a"]);
        assert!(t.suspects(t0 + ms(375)).is_empty(), "not before 400 ms");
        run(&mut t, t0 + ms(400), t0 + ms(400), &["a"]);
        assert_eq!(t.suspects(t0 + ms(400)), vec![("b".to_owned(), 7)]);
        assert!(!t.isolated(t0 + ms(400)), "a still answers");
        // b answers again: no longer suspected.
        t.heard(t0 + ms(425), "b");
        assert!(t.suspects(t0 + ms(425)).is_empty());
    }

    #[test]
    fn hearing_nobody_isolates_before_anyone_could_be_suspected() {
        let t0 = Instant::now();
        let mut t = tracker_with(t0, &["a", "b"]);
        run(&mut t, t0, t0 + ms(100), &["a", "b"]);
        run(&mut t, t0 + ms(125), t0 + ms(350), &[]);
        assert!(t.isolated(t0 + ms(350)), "250 ms without any answer");
        assert!(!t.hears_a_peer(t0 + ms(350)));
        assert!(t.suspects(t0 + ms(350)).is_empty(), "isolation comes first");
        let times = GuardTimes::from_suspect_after(ms(800));
        assert!(times.isolated_after + times.clear_for < times.suspect_after);
    }

    #[test]
    fn a_stall_of_our_own_is_no_evidence_against_peers() {
        let t0 = Instant::now();
        let mut t = tracker_with(t0, &["a"]);
        run(&mut t, t0, t0 + ms(100), &["a"]);
        // The agent did not run for 2 s.
        let back = t0 + ms(2_100);
        t.tick(back);
        assert!(t.suspects(back).is_empty());
        assert!(!t.isolated(back));
        // But silence after it counts.
        run(&mut t, back + ms(25), back + ms(400), &[]);
        assert_eq!(t.suspects(back + ms(400)).len(), 1);
    }

    #[test]
    fn a_peer_registered_again_is_judged_afresh_and_gone_peers_are_forgotten() {
        let t0 = Instant::now();
        let mut t = tracker_with(t0, &["a", "b"]);
        run(&mut t, t0, t0 + ms(500), &[]);
        assert_eq!(t.suspects(t0 + ms(500)).len(), 2);
        t.set_peers(t0 + ms(500), [("a".to_owned(), addr(9000), 8)]);
        assert!(
            t.suspects(t0 + ms(500)).is_empty(),
            "new lease: judged from now"
        );
        assert_eq!(t.targets().collect::<Vec<_>>(), vec![addr(9000)]);
        let mut lone = PeerTracker::new(GuardTimes::default());
        lone.tick(t0);
        assert!(
            !lone.isolated(t0 + ms(10_000)),
            "no peers, nobody to be cut off from"
        );
    }

    #[test]
    fn messages_round_trip_and_garbage_is_refused() {
        for m in [
            PeerMessage::Ping {
                from: "node-1".into(),
                seq: 42,
            },
            PeerMessage::Pong {
                from: "n".into(),
                seq: u64::MAX,
            },
        ] {
            assert_eq!(PeerMessage::decode(&m.encode()), Some(m));
        }
        let ping = PeerMessage::Ping {
            from: "x".into(),
            seq: 1,
        }
        .encode();
        for bad in [
            &b""[..],
            b"ESP1",
            b"ESP2\x01\0\0\0\0\0\0\0\x01x",
            b"ESP1\x03\0\0\0\0\0\0\0\x01x",
            b"ESP1\x01\0\0\0\0\0\0\0\x01",
            b"ESP1\x01\0\0\0\0\0\0\0\x01\xff",
            &ping[..ping.len() - 2],
        ] {
            assert_eq!(PeerMessage::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_verdict_needs_every_other_live_node() {
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert!(unanimous(&s(&["a", "b"]), ["a", "b"]));
        assert!(unanimous(&s(&["b", "a", "c"]), ["a", "b"]));
        assert!(!unanimous(&s(&["a"]), ["a", "b"]));
        assert!(!unanimous(&s(&[]), []));
        assert_eq!(
            suspicion_key("/e/", "n1", 0x1f, "n2"),
            "/e/suspects/n1@1f/n2"
        );
        assert!(
            suspicion_key("/e/", "n1", 0x1f, "n2").starts_with(&suspicions_of("/e/", "n1", 0x1f))
        );
        assert_eq!(verdict_key("/e/", "n1", 0x1f), "/e/dead/n1@1f");
    }
}
