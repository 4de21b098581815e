//! Buffers of 32-bit lanes that start on a cache line. A 64-byte vector load from
//! an address that is not a multiple of 64 spans two lines and costs two loads;
//! the allocator aligns a `Vec<u32>` to 16 bytes only, so every vector read of a
//! packed operand held in one did (large allocations lay 16 bytes past a line).
//! Packed into these instead, LSTM 2×512's products on an Ice Lake Xeon, 2 threads,
//! GFLOP/s: input projection 255–274 → 290–307, input gradient 274–282 → 307–316,
//! `dW_hh` 233 → 264–274, per-step 267–278 → 304–318; a training step 0.525 →
//! 0.475 s.

use std::ops::{Deref, DerefMut};

/// Lanes per [`Line`].
pub(crate) const LINE_LANES: usize = 16;

/// The mask of the first `n` lanes of a 16-lane vector (all of them from 16 on).
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn first_lanes(n: usize) -> u16 {
    if n >= 16 {
        u16::MAX
    } else {
        (1u16 << n) - 1
    }
}

/// 64 bytes, aligned to a cache line.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Line(pub(crate) [u32; LINE_LANES]);

/// A growable run of 32-bit lanes whose first lane starts a cache line; it reads
/// and writes as a `[u32]`.
#[derive(Clone, Debug, Default)]
pub(crate) struct Lanes {
    lines: Vec<Line>,
    len: usize,
}

impl Lanes {
    /// Makes it `len` lanes long; lanes past the old length are `value`.
    pub(crate) fn resize(&mut self, len: usize, value: u32) {
        let old = self.len;
        self.lines
            .resize(len.div_ceil(LINE_LANES), Line([value; LINE_LANES]));
        self.len = len;
        // The old last line's lanes past the old length were kept, not refilled.
        let kept = old.next_multiple_of(LINE_LANES).min(len);
        if kept > old {
            self[old..kept].fill(value);
        }
    }
}

impl Deref for Lanes {
    type Target = [u32];

    fn deref(&self) -> &[u32] {
        // SAFETY: a `Line` is 16 `u32` with no padding (`repr(C)`), so the lines
        // are `16 · lines.len() ≥ len` initialised lanes in a row.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast(), self.len) }
    }
}

impl DerefMut for Lanes {
    fn deref_mut(&mut self) -> &mut [u32] {
        // SAFETY: as in `deref`, borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast(), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_start_a_line_and_resize_as_a_vec_does() {
        let mut lanes = Lanes::default();
        let mut vec = Vec::new();
        for (len, value) in [(5, 1), (37, 2), (3, 0), (16, 4), (100, 5), (0, 6), (17, 7)] {
            lanes.resize(len, value);
            vec.resize(len, value);
            assert_eq!(&lanes[..], &vec[..]);
            lanes
                .iter_mut()
                .enumerate()
                .for_each(|(i, l)| *l = i as u32 * 3);
            vec.iter_mut()
                .enumerate()
                .for_each(|(i, l)| *l = i as u32 * 3);
            if len > 0 {
                assert_eq!(lanes.as_ptr() as usize % 64, 0);
            }
        }
    }
}
