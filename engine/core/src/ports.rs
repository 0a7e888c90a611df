//! Which local ports of a shard's range are free: the allocation policy, apart from the
//! shard's port table (which maps ports in use to legs on the packet path).
//!
//! The engine handle chooses and binds a leg's port off the shard thread (binding is a
//! syscall that can fail because another process holds the port), then hands the bound
//! port to the shard. This pool is that choice. It is pure data: the simulation harness
//! and the benchmarks use it too.
//!
//! Policy:
//! - A leg without rtcp-mux takes a pair (RTP on an even port, RTCP on the next); a
//!   multiplexed leg takes one port, preferring halves of pairs already split.
//! - Ports are reused **first in, first out**: a port released now is handed out again
//!   only after every other free port. A peer of the previous leg may still be sending to
//!   it, and a new leg that learns its remote from the first packet must not latch onto
//!   that stale peer.
//! - A port the operating system refuses to bind (another process holds it) is
//!   [`PortPool::set_aside`]: it goes to the back of the queue and is counted, so one
//!   foreign socket never wedges allocation.
//! - In a cluster each node allocates new legs from its own **slice** of the range
//!   (pair numbers `i` with `i % slices == slice`), so that a leg taken over from a
//!   failed node, re-created on its recorded port, never meets a leg of this node on
//!   that port. Ports outside the slice are taken only by [`PortPool::take_specific`].

use std::collections::VecDeque;

/// Why a specific port cannot be taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortRefusal {
    /// Outside this pool's range.
    OutOfRange,
    /// In use by another leg, or (for a pair) its partner is.
    InUse,
    /// A leg without rtcp-mux needs an even port (its RTCP takes the next one).
    NotEven,
}

/// Free ports of one shard's range.
#[derive(Clone, Debug)]
pub struct PortPool {
    first: u16,
    count: u16,
    /// Even ports whose pair (port, port + 1) is wholly free, oldest release first.
    pairs: VecDeque<u16>,
    /// Single ports whose partner is taken by a multiplexed leg.
    singles: VecDeque<u16>,
    /// Ports refused by the OS since the pool was built.
    set_aside: u64,
    /// This node's slice of the range: (slice, slices).
    slice: (u16, u16),
    /// Free pairs and singles outside the slice (for legs taken over from other nodes).
    foreign_pairs: VecDeque<u16>,
    foreign_singles: VecDeque<u16>,
}

impl PortPool {
    /// A pool over `first .. first + count`; `first` even, `count` even and >= 2.
    pub fn new(first: u16, count: u16) -> PortPool {
        PortPool::sliced(first, count, 0, 1)
    }

    /// A pool over `first .. first + count` that hands out only slice `slice` of
    /// `slices` to new legs (see the module doc); `slice < slices`.
    pub fn sliced(first: u16, count: u16, slice: u16, slices: u16) -> PortPool {
        assert!(slice < slices, "slice {slice} of {slices}");
        assert!(first.is_multiple_of(2), "port ranges start on an even port");
        assert!(
            count >= 2 && count.is_multiple_of(2),
            "port ranges hold whole pairs"
        );
        assert!(
            u32::from(first) + u32::from(count) <= 65_536,
            "port range ends within 65535"
        );
        let (own, foreign) = (0..count / 2).partition(|i| i % slices == slice);
        let base = |v: Vec<u16>| v.into_iter().map(|i| first + 2 * i).collect();
        PortPool {
            first,
            count,
            pairs: base(own),
            singles: VecDeque::new(),
            set_aside: 0,
            slice: (slice, slices),
            foreign_pairs: base(foreign),
            foreign_singles: VecDeque::new(),
        }
    }

    /// Whether `port` belongs to this node's slice.
    fn own(&self, port: u16) -> bool {
        ((port - self.first) / 2) % self.slice.1 == self.slice.0
    }

    /// The free pairs and singles `port` belongs with.
    fn lists(&mut self, port: u16) -> (&mut VecDeque<u16>, &mut VecDeque<u16>) {
        if self.own(port) {
            (&mut self.pairs, &mut self.singles)
        } else {
            (&mut self.foreign_pairs, &mut self.foreign_singles)
        }
    }

    /// First port of the range.
    pub fn first(&self) -> u16 {
        self.first
    }

    /// Ports in the range.
    pub fn count(&self) -> u16 {
        self.count
    }

    /// Whether `port` lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        port >= self.first && u32::from(port) < u32::from(self.first) + u32::from(self.count)
    }

    /// Free ports of this node's slice (a pair counts two).
    pub fn free_ports(&self) -> usize {
        self.pairs.len() * 2 + self.singles.len()
    }

    /// Ports the OS refused to bind so far.
    pub fn set_aside_count(&self) -> u64 {
        self.set_aside
    }

    /// Takes the next free port: an even port of a free pair, or for a multiplexed leg a
    /// single port (a split pair's half first).
    pub fn take(&mut self, rtcp_mux: bool) -> Option<u16> {
        if rtcp_mux && let Some(p) = self.singles.pop_front() {
            return Some(p);
        }
        let base = self.pairs.pop_front()?;
        if rtcp_mux {
            self.singles.push_back(base + 1);
        }
        Some(base)
    }

    /// Takes `port` itself (a leg re-created on its recorded port).
    pub fn take_specific(&mut self, port: u16, rtcp_mux: bool) -> Result<u16, PortRefusal> {
        if !self.contains(port) {
            return Err(PortRefusal::OutOfRange);
        }
        if !rtcp_mux && !port.is_multiple_of(2) {
            return Err(PortRefusal::NotEven);
        }
        let (pairs, singles) = self.lists(port);
        if let Some(i) = singles.iter().position(|&p| p == port) {
            if !rtcp_mux {
                return Err(PortRefusal::InUse);
            }
            singles.remove(i);
            return Ok(port);
        }
        let base = port & !1;
        let i = pairs
            .iter()
            .position(|&p| p == base)
            .ok_or(PortRefusal::InUse)?;
        pairs.remove(i);
        if rtcp_mux {
            singles.push_back(port ^ 1);
        }
        Ok(port)
    }

    /// Returns a port taken with the same `rtcp_mux`. Halves of split pairs stay single:
    /// pairs are re-formed only when both halves come back (checked here).
    pub fn give(&mut self, port: u16, rtcp_mux: bool) {
        debug_assert!(self.contains(port));
        let (pairs, singles) = self.lists(port);
        if !rtcp_mux {
            pairs.push_back(port);
            return;
        }
        let partner = port ^ 1;
        if let Some(i) = singles.iter().position(|&p| p == partner) {
            singles.remove(i);
            pairs.push_back(port & !1);
        } else {
            singles.push_back(port);
        }
    }

    /// Returns a port that the OS refused to bind: it is retried only after every other
    /// free port, and counted.
    pub fn set_aside(&mut self, port: u16, rtcp_mux: bool) {
        self.set_aside += 1;
        self.give(port, rtcp_mux);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_reused_first_in_first_out() {
        let mut pool = PortPool::new(1000, 8);
        let a = pool.take(false).unwrap();
        assert_eq!(a, 1000);
        pool.give(a, false);
        // The released pair goes behind every other free pair.
        assert_eq!(pool.take(false), Some(1002));
        assert_eq!(pool.take(false), Some(1004));
        assert_eq!(pool.take(false), Some(1006));
        assert_eq!(pool.take(false), Some(1000));
        assert_eq!(pool.take(false), None);
    }

    #[test]
    fn multiplexed_legs_split_pairs_and_pairs_reform() {
        let mut pool = PortPool::new(2000, 4);
        assert_eq!(pool.take(true), Some(2000));
        assert_eq!(pool.take(true), Some(2001));
        assert_eq!(pool.free_ports(), 2);
        pool.give(2000, true);
        pool.give(2001, true);
        assert_eq!(pool.free_ports(), 4);
        // Both pairs whole again: a non-multiplexed leg can take either.
        assert!(pool.take(false).is_some());
        assert!(pool.take(false).is_some());
    }

    #[test]
    fn a_busy_port_is_retried_last_and_counted() {
        let mut pool = PortPool::new(3000, 6);
        let p = pool.take(false).unwrap();
        pool.set_aside(p, false);
        assert_eq!(pool.set_aside_count(), 1);
        assert_ne!(pool.take(false), Some(p));
        assert_ne!(pool.take(false), Some(p));
        assert_eq!(pool.take(false), Some(p));
    }

    #[test]
    fn a_slice_hands_out_only_its_own_pairs_and_takes_any_port_when_asked() {
        let mut a = PortPool::sliced(10_000, 12, 0, 3);
        let mut b = PortPool::sliced(10_000, 12, 1, 3);
        let from_a: Vec<u16> = std::iter::from_fn(|| a.take(false)).collect();
        let from_b: Vec<u16> = std::iter::from_fn(|| b.take(false)).collect();
        assert_eq!(from_a, [10_000, 10_006]);
        assert_eq!(from_b, [10_002, 10_008]);
        // B re-creates A's leg on A's port, and gives it back to its foreign lists.
        assert_eq!(b.take_specific(10_000, false), Ok(10_000));
        assert_eq!(b.take_specific(10_000, true), Err(PortRefusal::InUse));
        b.give(10_000, false);
        assert_eq!(b.take(false), None, "a foreign port is never handed out");
        assert_eq!(b.take_specific(10_001, true), Ok(10_001));
        assert_eq!(b.take_specific(10_000, true), Ok(10_000));
    }

    #[test]
    fn specific_ports_are_refused_when_taken_odd_or_out_of_range() {
        let mut pool = PortPool::new(4000, 8);
        assert_eq!(pool.take_specific(4002, false), Ok(4002));
        assert_eq!(pool.take_specific(4002, false), Err(PortRefusal::InUse));
        assert_eq!(pool.take_specific(4003, true), Err(PortRefusal::InUse));
        assert_eq!(pool.take_specific(4005, false), Err(PortRefusal::NotEven));
        assert_eq!(pool.take_specific(5000, true), Err(PortRefusal::OutOfRange));
        assert_eq!(pool.take_specific(4005, true), Ok(4005));
        assert_eq!(
            pool.take(true),
            Some(4004),
            "the split half is handed out first"
        );
    }
}
