//! Whether a stepper's characters alternate the direction of their reads or all read
//! forward, chosen by timing both on its first characters.
//!
//! Alternating pays where a core's caches keep what the last character read last
//! (see `Order`): on a Sapphire Rapids Xeon (2 MiB of L2 a core) LSTM 2×512 sampled
//! in 213 µs a character instead of 240 in f32, 95 instead of 115 in bf16. On an
//! AMD EPYC Zen 4 (1 MiB of L2) nothing read last is found again, and groups read
//! last to first stream slower than first to last (the share of one core, read
//! forward: 72.8 µs a character in f32, backward 80.5; bf16 36.0 and 43.5): there
//! forward reads sample LSTM 2×512 5.8 % faster in f32 and 7.3 % in bf16, and 1.3 %
//! slower in int8, whose 1.6 MB a core nearly fit its L2. Every sum is the same in
//! both orders, so the choice changes no result.

use std::time::Instant;

/// How consecutive characters order their reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Reads {
    /// Forward and backward in turn, each character starting with what the last
    /// ended with.
    Alternate,
    /// Forward at every character.
    Forward,
}

/// Characters fed before the timing starts (the team's threads start at the first).
const WARM: usize = 16;
/// Characters per timed block; a block of alternating reads holds both directions.
const BLOCK: usize = 8;
/// Timed blocks of each kind, taken in turn.
const BLOCKS: usize = 12;

/// Times blocks of characters read each way in turn, then keeps the way whose
/// median block was faster.
#[derive(Clone, Debug, Default)]
pub(super) struct ReadTuner {
    /// Characters fed while tuning.
    fed: usize,
    /// When the current block began.
    block_start: Option<Instant>,
    /// Seconds of the timed blocks: alternating, forward.
    seconds: [[f64; BLOCKS]; 2],
    chosen: Option<Reads>,
}

impl ReadTuner {
    /// The reads of the next character (and the time of the block it ends).
    pub(super) fn next(&mut self) -> Reads {
        if let Some(reads) = self.chosen {
            return reads;
        }
        let k = self.fed.saturating_sub(WARM);
        let warm = self.fed < WARM;
        self.fed += 1;
        if warm {
            return Reads::Alternate;
        }
        if k.is_multiple_of(BLOCK) {
            let now = Instant::now();
            let block = k / BLOCK;
            if let Some(t0) = self.block_start {
                let done = block - 1;
                self.seconds[done % 2][done / 2] = now.duration_since(t0).as_secs_f64();
            }
            self.block_start = Some(now);
            if block == 2 * BLOCKS {
                let [alternate, forward] = self.seconds.map(median);
                let reads = if forward < alternate {
                    Reads::Forward
                } else {
                    Reads::Alternate
                };
                self.chosen = Some(reads);
                return reads;
            }
        }
        if (k / BLOCK).is_multiple_of(2) {
            Reads::Alternate
        } else {
            Reads::Forward
        }
    }

    /// The reads chosen, once the tuning is over.
    #[cfg(test)]
    pub(super) fn chosen(&self) -> Option<Reads> {
        self.chosen
    }

    /// Skips the tuning: every character reads `reads`' way.
    #[cfg(test)]
    pub(super) fn force(&mut self, reads: Reads) {
        self.chosen = Some(reads);
    }
}

fn median(mut v: [f64; BLOCKS]) -> f64 {
    v.sort_by(f64::total_cmp);
    (v[BLOCKS / 2 - 1] + v[BLOCKS / 2]) / 2.0
}

#[cfg(test)]
mod tests {
    use super::super::{CharLm, Stepper, Weights};
    use super::*;
    use crate::cell::CellKind;
    use crate::data::Vocab;
    use crate::Rng;

    /// The next reads after a microsecond's work, so that every block's time is above 0.
    fn slow_next(t: &mut ReadTuner) -> Reads {
        let t0 = Instant::now();
        while t0.elapsed().as_nanos() < 1000 {}
        t.next()
    }

    /// Warm-up, then blocks of alternating and forward reads in turn; then one choice
    /// for good.
    #[test]
    fn the_tuner_times_both_ways_then_keeps_one() {
        let mut t = ReadTuner::default();
        let ways: Vec<Reads> = (0..WARM + 2 * BLOCKS * BLOCK)
            .map(|_| slow_next(&mut t))
            .collect();
        assert!(ways[..WARM + BLOCK].iter().all(|&r| r == Reads::Alternate));
        assert!(ways[WARM + BLOCK..WARM + 2 * BLOCK]
            .iter()
            .all(|&r| r == Reads::Forward));
        assert_eq!(t.chosen(), None);
        assert!(t
            .seconds
            .iter()
            .flatten()
            .take(2 * BLOCKS - 1)
            .all(|&s| s > 0.0));
        let chosen = t.next();
        assert_eq!(t.chosen(), Some(chosen));
        assert!((0..50).all(|_| t.next() == chosen));
    }

    /// Two steppers on two threads, one reading forward at every character, the other
    /// alternating: the same logits, bit for bit, for every cell and precision.
    #[test]
    fn both_ways_give_the_same_bits() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        pool.install(|| {
            for cell in CellKind::ALL {
                let cfg = crate::bench::model(cell, 3, 48, 8);
                let chars = (0..20u32).map(|i| char::from_u32(0x41 + i).unwrap());
                let vocab = Vocab::from_chars(chars.collect()).unwrap();
                let m = CharLm::new(&cfg, vocab, &mut Rng::new(3)).unwrap();
                for weights in [Weights::F32, Weights::Bf16, Weights::Int8] {
                    let mut a = Stepper::new(&m, weights).unwrap();
                    a.set_threads(2);
                    let mut b = a.clone();
                    a.reads.force(Reads::Alternate);
                    b.reads.force(Reads::Forward);
                    for i in 0..9 {
                        let id = (i * 7 + 3) % 20;
                        let bits = |l: &[f32]| l.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                        let want = bits(a.feed(id).unwrap());
                        assert_eq!(bits(b.feed(id).unwrap()), want, "{cell} {weights:?} {i}");
                    }
                }
            }
        });
    }
}
