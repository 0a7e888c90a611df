//! Per-stream packet index state: the RFC 3711 section 3.3.1 index estimate (appendix
//! A), the replay window of section 3.3.2, and a small fixed table of streams by SSRC.

/// Largest replay window, in packets. The bitmap lives inline so no stream allocates.
pub const MAX_REPLAY_WINDOW: u16 = 1024;
/// Smallest replay window RFC 3711 section 3.3.2 allows.
pub const MIN_REPLAY_WINDOW: u16 = 64;

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

/// The replay bitmap of one stream, over the words its window uses: bit k is index
/// `highest - k`. Free functions over a slice, so that a table keeps the bitmaps of all
/// its streams in one allocation sized by the configured window (two words each for the
/// default 128) rather than inline at the largest window.
mod bitmap {
    /// True when `index` is new: above `highest`, or inside the window and unseen.
    pub(super) fn accepts(highest: u64, bits: &[u64], index: u64, size: u64) -> bool {
        if index > highest {
            return true;
        }
        let delta = highest - index;
        if delta >= size {
            return false;
        }
        bits[(delta / 64) as usize] & (1 << (delta % 64)) == 0
    }

    /// Records `index` as seen (the caller checked `accepts` and authenticated it);
    /// returns the new highest index.
    pub(super) fn mark(highest: u64, bits: &mut [u64], index: u64, size: u64) -> u64 {
        if index > highest {
            shift(bits, index - highest, size);
            bits[0] |= 1;
            index
        } else {
            let delta = highest - index;
            bits[(delta / 64) as usize] |= 1 << (delta % 64);
            highest
        }
    }

    /// Moves every bit k to k + by, dropping those that leave the first `size` bits.
    fn shift(bits: &mut [u64], by: u64, size: u64) {
        if by >= size {
            bits.fill(0);
            return;
        }
        let used = bits.len();
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

/// One stream's index state (its bitmap lives in the table's `bits`).
#[derive(Clone, Copy, Debug)]
struct Slot {
    /// The highest index seen (SRTP: `2^16 * ROC + SEQ`; SRTCP: the 31-bit index).
    highest: u64,
    /// When the stream was last used, in table ticks (least recently used goes first).
    last_used: u64,
    ssrc: u32,
    live: bool,
}

const EMPTY: Slot = Slot {
    highest: 0,
    last_used: 0,
    ssrc: 0,
    live: false,
};

/// A fixed number of streams by SSRC, allocated once; when full, a new authenticated
/// SSRC evicts the least recently used one. Lookups scan: the table holds a handful.
///
/// Layout: the slots (24 octets each) and, in a second allocation, each slot's bitmap
/// of `window_size / 64` words: 160 octets for the default 4 streams and 128-packet
/// window (a bitmap sized for the largest window inline in every slot was 640).
#[derive(Clone, Debug)]
pub(crate) struct StreamTable {
    slots: Box<[Slot]>,
    bits: Box<[u64]>,
    tick: u64,
    /// Bitmap words per slot (`window_size / 64`), kept to spare a division per packet.
    words: u32,
    window_size: u32,
}

impl StreamTable {
    pub(crate) fn new(capacity: usize, window_size: u16) -> Self {
        let window_size = window_size.clamp(MIN_REPLAY_WINDOW, MAX_REPLAY_WINDOW);
        let capacity = capacity.max(1);
        let words = usize::from(window_size).div_ceil(64);
        Self {
            slots: vec![EMPTY; capacity].into_boxed_slice(),
            bits: vec![0; capacity * words].into_boxed_slice(),
            words: words as u32,
            window_size: u32::from(window_size),
            tick: 0,
        }
    }

    /// Octets allocated for the slots and their bitmaps.
    #[cfg(test)]
    pub(crate) fn heap_bytes(&self) -> usize {
        core::mem::size_of_val(&*self.slots) + core::mem::size_of_val(&*self.bits)
    }

    fn bitmap(&self, slot: usize) -> &[u64] {
        let w = self.words as usize;
        &self.bits[slot * w..(slot + 1) * w]
    }

    fn bitmap_mut(&mut self, slot: usize) -> &mut [u64] {
        let w = self.words as usize;
        &mut self.bits[slot * w..(slot + 1) * w]
    }

    /// Where stream `ssrc` lives, if it is known: one scan per packet, reused by
    /// [`StreamTable::accepts`] and [`StreamTable::mark`].
    pub(crate) fn find(&self, ssrc: u32) -> Option<usize> {
        self.slots.iter().position(|s| s.live && s.ssrc == ssrc)
    }

    /// The highest index of the stream in `slot` (`None`: an unknown stream).
    pub(crate) fn highest(&self, slot: Option<usize>) -> Option<u64> {
        slot.map(|i| self.slots[i].highest)
    }

    /// True when `index` of the stream in `slot` has not been seen (an unknown stream,
    /// `None`, has seen nothing).
    pub(crate) fn accepts(&self, slot: Option<usize>, index: u64) -> bool {
        slot.is_none_or(|i| {
            bitmap::accepts(
                self.slots[i].highest,
                self.bitmap(i),
                index,
                u64::from(self.window_size),
            )
        })
    }

    /// Records `index` for the stream in `slot`, or creates stream `ssrc` (evicting the
    /// least recently used one when full) when `slot` is `None`.
    pub(crate) fn mark(&mut self, slot: Option<usize>, ssrc: u32, index: u64) {
        self.tick += 1;
        let tick = self.tick;
        let size = u64::from(self.window_size);
        if let Some(i) = slot {
            debug_assert_eq!(self.slots[i].ssrc, ssrc);
            let highest = self.slots[i].highest;
            let highest = bitmap::mark(highest, self.bitmap_mut(i), index, size);
            let s = &mut self.slots[i];
            s.highest = highest;
            s.last_used = tick;
            return;
        }
        let i = self.victim();
        self.slots[i] = Slot {
            highest: index,
            last_used: tick,
            ssrc,
            live: true,
        };
        let bits = self.bitmap_mut(i);
        bits.fill(0);
        bits[0] = 1;
    }

    /// Sets stream `ssrc` to "everything up to and including `highest` was seen".
    pub(crate) fn resume(&mut self, ssrc: u32, highest: u64) {
        self.tick += 1;
        let i = self.find(ssrc).unwrap_or_else(|| self.victim());
        self.slots[i] = Slot {
            highest,
            last_used: self.tick,
            ssrc,
            live: true,
        };
        self.bitmap_mut(i).fill(u64::MAX);
    }

    /// A free slot, or the least recently used one when full.
    fn victim(&self) -> usize {
        if let Some(free) = self.slots.iter().position(|s| !s.live) {
            return free;
        }
        let mut oldest = 0;
        for (i, s) in self.slots.iter().enumerate() {
            if s.last_used < self.slots[oldest].last_used {
                oldest = i;
            }
        }
        oldest
    }

    /// Number of streams held.
    pub(crate) fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.live).count()
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
        let mut t = StreamTable::new(1, size as u16);
        t.mark(None, 7, 1000);
        let s = t.find(7);
        assert!(!t.accepts(s, 1000));
        assert!(t.accepts(s, 999));
        t.mark(s, 7, 999);
        assert!(!t.accepts(s, 999));
        t.mark(s, 7, 1200);
        assert!(!t.accepts(s, 1200));
        assert!(t.accepts(s, 1100));
        assert!(
            !t.accepts(s, 1072),
            "1200 - 1072 = 128 is outside a 128 window"
        );
        assert!(t.accepts(s, 1073));
        t.mark(s, 7, 1073);
        t.mark(s, 7, 1201);
        assert!(!t.accepts(s, 1073), "shifted bit still remembered");
        assert_eq!(t.highest(s), Some(1201));
    }

    /// Streams do not share bitmap words: marks in one slot never show in another, and
    /// a slot reused for a new SSRC starts clean.
    #[test]
    fn slots_keep_their_own_bitmaps() {
        let mut t = StreamTable::new(2, 256);
        t.mark(None, 1, 500);
        t.mark(None, 2, 500);
        let (a, b) = (t.find(1), t.find(2));
        for i in (300..500).step_by(3) {
            t.mark(a, 1, i);
        }
        for i in 300..500 {
            assert_eq!(t.accepts(a, i), (i - 300) % 3 != 0, "a {i}");
            assert!(t.accepts(b, i), "b {i}");
        }
        // A third SSRC evicts the least recently used (2) and starts clean.
        t.mark(None, 3, 400);
        assert_eq!(t.find(2), None);
        let c = t.find(3);
        assert!(!t.accepts(c, 400));
        assert!(t.accepts(c, 399) && t.accepts(c, 300));
        assert!(!t.accepts(a, 498) && t.accepts(a, 497), "a unchanged");
        t.resume(1, 10_000);
        assert!(!t.accepts(t.find(1), 10_000 - 255));
        assert!(t.accepts(c, 399), "resume touches only its slot");
    }
}
