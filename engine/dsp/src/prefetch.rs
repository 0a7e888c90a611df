//! Software prefetch: a hint that data will be read soon, so that its cache lines are on
//! their way while the caller works on something else.
//!
//! The shard ticks thousands of sessions per period and each session's state (its legs,
//! their jitter buffers and output streams) is far from the last one's: at large session
//! counts every tick starts with cache misses, one pointer level after another. Asking
//! for the next sessions' lines while the current one is mixed hides that latency. A
//! prefetch never faults and changes no result: only when data arrives.
//!
//! On x86-64 this is `prefetcht0` (SSE, which every x86-64 has); elsewhere a no-op.

/// Bytes in one cache line (x86-64 and most ARM cores).
pub const LINE_BYTES: usize = 64;

/// Hints that the cache line holding `value`'s first byte, and the `lines - 1` lines
/// after it (capped at `value`'s size), will be read soon.
#[inline(always)]
pub fn read<T: ?Sized>(value: &T, lines: usize) {
    let start = (value as *const T).cast::<u8>();
    let bytes = std::mem::size_of_val(value).max(1);
    let n = lines.min(bytes.div_ceil(LINE_BYTES));
    for i in 0..n {
        // wrapping_add: the address only, never dereferenced here; it stays within
        // `value` (n lines cover at most its size, rounded up to a line).
        line(start.wrapping_add(i * LINE_BYTES));
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)] // One instruction that reads nothing architecturally.
#[inline(always)]
fn line(p: *const u8) {
    use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
    // SAFETY: `prefetcht0` is a hint: it never faults, whatever the address, and has no
    // architectural effect; SSE is part of the x86-64 baseline, so the instruction exists.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>()) }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn line(_p: *const u8) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetching_changes_nothing_and_stays_within_the_value() {
        let data = [7u8; 3 * LINE_BYTES + 5];
        read(&data, 100);
        read(&data[..], 0);
        read(&(), 4);
        let small = 3u32;
        read(&small, 8);
        assert_eq!(
            data.iter().map(|&b| u32::from(b)).sum::<u32>(),
            7 * data.len() as u32
        );
        assert_eq!(small, 3);
    }
}
