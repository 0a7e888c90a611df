//! Per-stream packet index state: the RFC 3711 section 3.3.1 index estimate (appendix
//! A), the replay window of section 3.3.2, and a small fixed table of streams by SSRC.

/// Largest replay window, in packets. The bitmap lives inline so no stream allocates.
pub const MAX_REPLAY_WINDOW: u16 = 1024;
/// Smallest replay window RFC 3711 section 3.3.2 allows.
pub const MIN_REPLAY_WINDOW: u16 = 64;
const WORDS: usize = MAX_REPLAY_WINDOW as usize / 64;

/// The SRTP packet index `2^16 * ROC + SEQ` that a received or sent sequence number
/// most likely has, given the highest index of its stream so far (RFC 3711 appendix A).
/// `None` when the guess falls before index 0 (a straggler from before the stream began).
pub(crate) fn estimate_index(highest: u64, seq: u16) -> Option<u64> {
    let roc = highest >> 16;
    let s_l = highest & 0xFFFF;
    let seq = u64::from(seq);
    let v = if s_l < 0x8000 {
        if seq > s_l + 0x8000 {
            roc.checked_sub(1)?
        } else {
            roc
        }
    } else if s_l - 0x8000 > seq {
        roc + 1
    } else {
        roc
    };
    Some(v << 16 | seq)
}

/// The highest index seen and which of the `size` indices at and below it were seen:
/// bit k of the bitmap is index `highest - k`.
#[derive(Clone, Debug)]
pub(crate) struct ReplayWindow {
    highest: u64,
    bits: [u64; WORDS],
}

impl ReplayWindow {
    /// A window whose only seen index is `index`.
    fn first(index: u64) -> Self {
        let mut bits = [0; WORDS];
        bits[0] = 1;
        Self {
            highest: index,
            bits,
        }
    }

    /// A window in which `highest` and everything below it counts as seen.
    fn full(highest: u64) -> Self {
        Self {
            highest,
            bits: [u64::MAX; WORDS],
        }
    }

    pub(crate) fn highest(&self) -> u64 {
        self.highest
    }

    /// True when `index` is new: above the highest, or inside the window and unseen.
    fn accepts(&self, index: u64, size: u64) -> bool {
        if index > self.highest {
            return true;
        }
        let delta = self.highest - index;
        if delta >= size {
            return false;
        }
        self.bits[(delta / 64) as usize] & (1 << (delta % 64)) == 0
    }

    /// Records `index` as seen (the caller checked `accepts` and authenticated it).
    fn mark(&mut self, index: u64, size: u64) {
        if index > self.highest {
            self.shift(index - self.highest, size);
            self.highest = index;
            self.bits[0] |= 1;
        } else {
            let delta = self.highest - index;
            self.bits[(delta / 64) as usize] |= 1 << (delta % 64);
        }
    }

    /// Moves every bit k to k + by, dropping those that leave the first `size` bits
    /// (only the words a window of `size` uses are touched: two for the default 128).
    fn shift(&mut self, by: u64, size: u64) {
        let used = size.div_ceil(64) as usize;
        let bits = &mut self.bits[..used];
        if by >= size {
            bits.fill(0);
            return;
        }
        let words = (by / 64) as usize;
        let shift = (by % 64) as u32;
        for i in (0..used).rev() {
            let hi = if i >= words { bits[i - words] } else { 0 };
            let lo = if i > words { bits[i - words - 1] } else { 0 };
            bits[i] = if shift == 0 {
                hi
            } else {
                hi << shift | lo >> (64 - shift)
            };
        }
    }
}

#[derive(Clone, Debug)]
struct Slot {
    ssrc: u32,
    last_used: u64,
    window: ReplayWindow,
}

/// A fixed number of streams by SSRC, allocated once; when full, a new authenticated
/// SSRC evicts the least recently used one. Lookups scan: the table holds a handful.
#[derive(Clone, Debug)]
pub(crate) struct StreamTable {
    slots: Box<[Option<Slot>]>,
    window_size: u64,
    tick: u64,
}

impl StreamTable {
    pub(crate) fn new(capacity: usize, window_size: u16) -> Self {
        Self {
            slots: vec![None; capacity.max(1)].into_boxed_slice(),
            window_size: u64::from(window_size.clamp(MIN_REPLAY_WINDOW, MAX_REPLAY_WINDOW)),
            tick: 0,
        }
    }

    /// Octets allocated for the slots.
    #[cfg(test)]
    pub(crate) fn heap_bytes(&self) -> usize {
        core::mem::size_of_val(&*self.slots)
    }

    /// Where stream `ssrc` lives, if it is known: one scan per packet, reused by
    /// [`StreamTable::accepts`] and [`StreamTable::mark`].
    pub(crate) fn find(&self, ssrc: u32) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.ssrc == ssrc))
    }

    pub(crate) fn window(&self, slot: Option<usize>) -> Option<&ReplayWindow> {
        slot.and_then(|i| self.slots[i].as_ref()).map(|s| &s.window)
    }

    /// True when `index` of the stream in `slot` has not been seen (an unknown stream,
    /// `None`, has seen nothing).
    pub(crate) fn accepts(&self, slot: Option<usize>, index: u64) -> bool {
        self.window(slot)
            .is_none_or(|w| w.accepts(index, self.window_size))
    }

    /// Records `index` for the stream in `slot`, or creates stream `ssrc` (evicting the
    /// least recently used one when full) when `slot` is `None`.
    pub(crate) fn mark(&mut self, slot: Option<usize>, ssrc: u32, index: u64) {
        self.tick += 1;
        let tick = self.tick;
        let size = self.window_size;
        if let Some(s) = slot.and_then(|i| self.slots[i].as_mut()) {
            debug_assert_eq!(s.ssrc, ssrc);
            s.window.mark(index, size);
            s.last_used = tick;
            return;
        }
        self.put(Slot {
            ssrc,
            last_used: tick,
            window: ReplayWindow::first(index),
        });
    }

    /// Sets stream `ssrc` to "everything up to and including `highest` was seen".
    pub(crate) fn resume(&mut self, ssrc: u32, highest: u64) {
        self.tick += 1;
        let slot = Slot {
            ssrc,
            last_used: self.tick,
            window: ReplayWindow::full(highest),
        };
        if let Some(existing) = self.slots.iter_mut().flatten().find(|s| s.ssrc == ssrc) {
            *existing = slot;
        } else {
            self.put(slot);
        }
    }

    fn put(&mut self, slot: Slot) {
        let victim = self
            .slots
            .iter()
            .position(Option::is_none)
            .unwrap_or_else(|| {
                // Full: the least recently used stream goes.
                let mut oldest = 0;
                for (i, s) in self.slots.iter().enumerate() {
                    if s.as_ref().map_or(0, |s| s.last_used)
                        < self.slots[oldest].as_ref().map_or(0, |s| s.last_used)
                    {
                        oldest = i;
                    }
                }
                oldest
            });
        self.slots[victim] = Some(slot);
    }

    /// Number of streams held.
    pub(crate) fn len(&self) -> usize {
        self.slots.iter().flatten().count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate_follows_rfc3711_appendix_a() {
        // Same ROC near the middle.
        assert_eq!(estimate_index(5 << 16 | 1000, 1001), Some(5 << 16 | 1001));
        // Wrap forward: highest near the top, seq small.
        assert_eq!(estimate_index(5 << 16 | 65_000, 10), Some(6 << 16 | 10));
        // Late packet from before the wrap: highest small, seq near the top.
        assert_eq!(estimate_index(6 << 16 | 10, 65_000), Some(5 << 16 | 65_000));
        // Before the start of the stream.
        assert_eq!(estimate_index(10, 65_000), None);
    }

    #[test]
    fn window_accepts_each_index_once_and_forgets_beyond_size() {
        let size = 128;
        let mut w = ReplayWindow::first(1000);
        assert!(!w.accepts(1000, size));
        assert!(w.accepts(999, size));
        w.mark(999, size);
        assert!(!w.accepts(999, size));
        w.mark(1200, size);
        assert!(!w.accepts(1200, size));
        assert!(w.accepts(1100, size));
        assert!(
            !w.accepts(1072, size),
            "1200 - 1072 = 128 is outside a 128 window"
        );
        assert!(w.accepts(1073, size));
        w.mark(1073, size);
        w.mark(1201, size);
        assert!(!w.accepts(1073, size), "shifted bit still remembered");
    }
}
