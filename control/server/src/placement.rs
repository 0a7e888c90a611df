//! Placement of interactions on engine nodes (SPEC section 7): **weighted rendezvous
//! hashing** (highest random weight) on the interaction id, over the nodes that are
//! live, not draining and have headroom.
//!
//! Every node gets a score for the key, `-weight / ln(u)` with `u` a uniform number in
//! (0, 1) hashed from (node, key); the highest score wins. So:
//! - each node receives a share of new interactions proportional to its weight;
//! - every replica, given the same nodes, picks the same node with no coordination;
//! - when a node leaves, only its own interactions move, and they spread over the
//!   survivors in proportion to their weights (not all onto one): failover
//!   re-places each of them with the same function over the survivors.
//!
//! Pure: no I/O, no clock. The caller supplies the live nodes (from their leases).

use serde::{Deserialize, Serialize};

/// An engine node as it registers itself (under its lease) and as placement sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct NodeInfo {
    /// Stable node name (the host name by default).
    pub node_id: String,
    /// Where the node's engine is programmed: a Unix socket path or `tcp://host:port`.
    pub engine: String,
    /// The node's media address (its virtual address: legs bind to it and it moves to
    /// a survivor with them on failover).
    pub media_address: String,
    /// Shards (cores) of the node's engine.
    pub shards: u16,
    /// Legs the node accepts at most.
    pub capacity_legs: u64,
    /// Legs it holds now (reported with each lease renewal).
    pub legs: u64,
    /// Relative share of new interactions (default: its shard count).
    pub weight: f64,
    /// Set by `DrainNode`: no new interactions; existing ones stay until they end.
    #[serde(default)]
    pub draining: bool,
    /// The node's own block of virtual addresses: each interaction placed here binds
    /// one of them (those the node holds), and each moves to a survivor on its own when
    /// the node fails (docs/cluster.md). Empty: legs bind the engine's address.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Where the node's agent answers its peers' liveness pings (`ip:port`; module
    /// [`crate::peers`]). None: an agent without fast failure detection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
}

impl NodeInfo {
    /// Whether the node can take an interaction of `legs` more legs.
    pub fn has_headroom(&self, legs: u64) -> bool {
        self.legs.saturating_add(legs) <= self.capacity_legs
    }

    /// Whether new interactions may go to the node at all.
    pub fn accepts(&self, legs: u64) -> bool {
        !self.draining && self.weight > 0.0 && self.has_headroom(legs)
    }
}

/// FNV-1a over the bytes, then a splitmix64 finalizer: stable across versions and
/// platforms (unlike `std`'s hasher), well mixed in every bit.
fn hash64(node: &str, key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.bytes().chain([0xff]).chain(key.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The rendezvous score of `node` for `key` (higher wins).
pub fn score(node: &NodeInfo, key: &str) -> f64 {
    // u in (0, 1): never 0 (ln 0) nor 1 (ln 1 = 0 divides by zero).
    let u = ((hash64(&node.node_id, key) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -node.weight / u.ln()
}

/// The address of `addresses` that `key`'s legs bind (rendezvous on the address, so
/// that a node's interactions spread over its block); `None` if there is none.
pub fn choose_address(key: &str, addresses: &[std::net::IpAddr]) -> Option<std::net::IpAddr> {
    addresses
        .iter()
        .map(|a| (hash64(&a.to_string(), key), a))
        .max()
        .map(|(_, a)| *a)
}

/// The node for `key` among those that accept `legs` more legs, or `None` if none
/// does. Ties (equal scores: practically never) go to the smaller node id so every
/// replica agrees.
pub fn place<'a>(key: &str, nodes: &'a [NodeInfo], legs: u64) -> Option<&'a NodeInfo> {
    nodes
        .iter()
        .filter(|n| n.accepts(legs))
        .map(|n| (score(n, key), n))
        .max_by(|(sa, a), (sb, b)| sa.total_cmp(sb).then_with(|| b.node_id.cmp(&a.node_id)))
        .map(|(_, n)| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, weight: f64) -> NodeInfo {
        NodeInfo {
            node_id: id.into(),
            engine: format!("/run/{id}.sock"),
            media_address: "10.0.0.1".into(),
            shards: 2,
            capacity_legs: 10_000,
            legs: 0,
            weight,
            draining: false,
            addresses: Vec::new(),
            peer: None,
        }
    }

    fn shares(nodes: &[NodeInfo], keys: usize) -> Vec<usize> {
        let mut count = vec![0; nodes.len()];
        for k in 0..keys {
            let n = place(&format!("call-{k}"), nodes, 3).unwrap();
            count[nodes.iter().position(|x| x.node_id == n.node_id).unwrap()] += 1;
        }
        count
    }

    #[test]
    fn equal_nodes_get_equal_shares() {
        let nodes = [node("a", 1.0), node("b", 1.0), node("c", 1.0)];
        let keys = 30_000;
        let count = shares(&nodes, keys);
        for c in &count {
            let share = *c as f64 / keys as f64;
            assert!((share - 1.0 / 3.0).abs() < 0.02, "shares {count:?}");
        }
    }

    #[test]
    fn shares_follow_the_weights() {
        let nodes = [node("a", 1.0), node("b", 2.0), node("c", 3.0)];
        let keys = 60_000;
        let count = shares(&nodes, keys);
        for (c, w) in count.iter().zip([1.0, 2.0, 3.0]) {
            let share = *c as f64 / keys as f64;
            assert!((share - w / 6.0).abs() < 0.02, "shares {count:?}");
        }
    }

    #[test]
    fn a_node_leaving_moves_only_its_own_keys_and_spreads_them() {
        let all = [
            node("a", 1.0),
            node("b", 1.0),
            node("c", 1.0),
            node("d", 1.0),
        ];
        let survivors: Vec<NodeInfo> = all.iter().filter(|n| n.node_id != "b").cloned().collect();
        let mut moved_to = std::collections::BTreeMap::new();
        for k in 0..20_000 {
            let key = format!("call-{k}");
            let before = place(&key, &all, 3).unwrap().node_id.clone();
            let after = place(&key, &survivors, 3).unwrap().node_id.clone();
            if before == "b" {
                *moved_to.entry(after).or_insert(0usize) += 1;
            } else {
                assert_eq!(before, after, "{key} was not on the node that left");
            }
        }
        let total: usize = moved_to.values().sum();
        assert_eq!(
            moved_to.len(),
            3,
            "spread over every survivor: {moved_to:?}"
        );
        for (n, c) in &moved_to {
            let share = *c as f64 / total as f64;
            assert!((share - 1.0 / 3.0).abs() < 0.04, "{n}: {moved_to:?}");
        }
    }

    #[test]
    fn draining_full_and_zero_weight_nodes_take_nothing_new() {
        let mut nodes = vec![node("a", 1.0), node("b", 1.0), node("c", 0.0)];
        nodes[0].draining = true;
        for k in 0..1000 {
            assert_eq!(place(&format!("k{k}"), &nodes, 3).unwrap().node_id, "b");
        }
        nodes[1].legs = nodes[1].capacity_legs - 2;
        assert!(
            place("k", &nodes, 3).is_none(),
            "no node has room for 3 legs"
        );
        assert_eq!(place("k", &nodes, 2).unwrap().node_id, "b");
    }

    #[test]
    fn placement_is_a_pure_function_of_key_and_nodes() {
        let nodes = [node("a", 1.0), node("b", 1.0)];
        let reversed = [node("b", 1.0), node("a", 1.0)];
        for k in 0..1000 {
            let key = format!("k{k}");
            assert_eq!(
                place(&key, &nodes, 1).unwrap().node_id,
                place(&key, &reversed, 1).unwrap().node_id,
                "the order nodes are listed in does not matter"
            );
        }
        assert_eq!(hash64("a", "b"), hash64("a", "b"));
        assert_ne!(hash64("ab", ""), hash64("a", "b"), "the separator matters");
    }
}
