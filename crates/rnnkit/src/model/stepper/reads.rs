//! Whether a stepper's characters alternate the direction of their reads or all read
//! forward, and whether its products stream one group of rows at a time or four
//! (see `Streams`), chosen by timing each way on its first characters, and timed
//! again every few seconds or once the chosen way slows.
//!
//! Alternating pays where a core's caches keep what the last character read last
//! (see `Order`): on a Sapphire Rapids Xeon (2 MiB of L2 a core) LSTM 2×512 sampled
//! in 213 µs a character instead of 240 in f32, 95 instead of 115 in bf16. On an
//! AMD EPYC Zen 4 (1 MiB of L2) nothing read last is found again, and groups read
//! last to first stream slower than first to last (the share of one core, read
//! forward: 72.8 µs a character in f32, backward 80.5; bf16 36.0 and 43.5): there
//! forward reads sample LSTM 2×512 5.8 % faster in f32 and 7.3 % in bf16, and 1.3 %
//! slower in int8, whose 1.6 MB a core nearly fit its L2. Every sum is the same in
//! both orders, so the choice changes no result; nor does the number of streams.

use crate::kernel::Streams;
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

/// How a character reads its weights: the order of consecutive characters' reads,
/// how many groups of rows each product streams at once, and whether the step is
/// shared between the stepper's threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Way {
    /// The order of consecutive characters' reads.
    pub(super) reads: Reads,
    /// The groups each product streams at once.
    pub(super) streams: Streams,
    /// Whether the step is shared between the stepper's threads (else one does it).
    pub(super) split: bool,
}

/// The most ways a tuner times: two orders × two stream counts × two splits.
const MAX_WAYS: usize = 8;

/// Characters fed before the timing starts (the team's threads start at the first).
const WARM: usize = 16;
/// The fewest characters per timed block; a block of alternating reads holds both
/// directions.
const BLOCK: usize = 8;
/// The most characters per timed block.
const MAX_BLOCK: usize = 256;
/// The time a block should take, from which the warm-up's second half sizes the
/// blocks: 8 characters of LSTM 1×128 took 16 µs, where one interruption decided a
/// way's median and processes kept the slower way of sharing a step.
const BLOCK_SECONDS: f64 = 200e-6;
/// Timed blocks of each kind, taken in turn.
const BLOCKS: usize = 12;
/// Blocks of the chosen way before it is timed again against the others: about
/// two seconds (more where [`BLOCK`] characters take longer than 200 µs). A choice
/// does not hold for good: under a hypervisor, LSTM 1×128's step shared between two
/// threads took 1.45 µs a character on a Zen 5 for seconds at a time, and 3.3–3.5 µs
/// at other times (on one thread 1.9 throughout), so a process kept whichever way the
/// machine favoured while it tuned.
const KEEP_BLOCKS: usize = 10_000;
/// From this many blocks of the chosen way on (0.2 s or more), blocks running
/// [`SLOWER`] than the way's timed median, [`SLOW_BLOCKS`] in a row, start the
/// timing again early. The wait bounds the share of a caller's time spent timing
/// when its own pauses make blocks slow (a tenth of its blocks at most).
const MIN_KEEP_BLOCKS: usize = 1_000;
/// How much slower than its timed median a chosen way's block is slow.
const SLOWER: f64 = 1.3;
/// Slow blocks in a row that start the timing again.
const SLOW_BLOCKS: usize = 8;

/// Times blocks of characters read each way in turn, then keeps the way whose
/// median block was fastest, while it stays about as fast (see [`KEEP_BLOCKS`]).
#[derive(Clone, Debug)]
pub(super) struct ReadTuner {
    /// The ways timed, a block of each in turn (the first `n`).
    ways: [Way; MAX_WAYS],
    n: usize,
    /// Characters fed while tuning, then since the choice.
    fed: usize,
    /// Characters per timed block, sized at the end of the warm-up.
    block: usize,
    /// When the current block (or the warm-up's second half) began.
    block_start: Option<Instant>,
    /// Seconds of the timed blocks of each way.
    seconds: [[f64; BLOCKS]; MAX_WAYS],
    chosen: Option<Way>,
    /// The chosen way's median block, in seconds.
    chosen_block: f64,
    /// Blocks of the chosen way so far, and how many of the last ran slow in a row.
    kept: usize,
    slow: usize,
}

impl ReadTuner {
    /// A tuner of the read orders, of the streams too where `streams` (see
    /// `streams_matter`), and of the split where `split` is `None` (else every way
    /// has that split). The first way alternates, on one stream, unsplit where the
    /// split is timed.
    pub(super) fn new(streams: bool, split: Option<bool>) -> ReadTuner {
        let splits: &[bool] = match split {
            Some(false) => &[false],
            Some(true) => &[true],
            None => &[false, true],
        };
        let counts: &[Streams] = if streams {
            &[Streams::One, Streams::Four]
        } else {
            &[Streams::One]
        };
        let mut ways = [Way {
            reads: Reads::Alternate,
            streams: Streams::One,
            split: false,
        }; MAX_WAYS];
        let mut n = 0;
        for &split in splits {
            for &streams in counts {
                for reads in [Reads::Alternate, Reads::Forward] {
                    ways[n] = Way {
                        reads,
                        streams,
                        split,
                    };
                    n += 1;
                }
            }
        }
        ReadTuner::timing(ways, n)
    }

    /// A tuner of the first `n` of `ways` at the start of its timing.
    fn timing(ways: [Way; MAX_WAYS], n: usize) -> ReadTuner {
        ReadTuner {
            ways,
            n,
            fed: 0,
            block: BLOCK,
            block_start: None,
            seconds: [[0.0; BLOCKS]; MAX_WAYS],
            chosen: None,
            chosen_block: 0.0,
            kept: 0,
            slow: 0,
        }
    }

    /// The way of the next character (and the time of the block it ends).
    pub(super) fn next(&mut self) -> Way {
        if let Some(way) = self.chosen {
            self.fed += 1;
            if self.fed.is_multiple_of(self.block) {
                self.watch();
            }
            return way;
        }
        let k = self.fed.saturating_sub(WARM);
        let warm = self.fed < WARM;
        if self.fed == WARM / 2 {
            self.block_start = Some(Instant::now());
        }
        self.fed += 1;
        if warm {
            return self.ways[0];
        }
        if k == 0 {
            if let Some(t0) = self.block_start.take() {
                self.block = block_for(t0.elapsed().as_secs_f64() / (WARM - WARM / 2) as f64);
            }
        }
        let n = self.n;
        if k.is_multiple_of(self.block) {
            let now = Instant::now();
            let block = k / self.block;
            if let Some(t0) = self.block_start {
                let done = block - 1;
                self.seconds[done % n][done / n] = now.duration_since(t0).as_secs_f64();
            }
            self.block_start = Some(now);
            if block == n * BLOCKS {
                let medians = self.seconds.map(median);
                let best = (0..n)
                    .min_by(|&a, &b| medians[a].total_cmp(&medians[b]))
                    .expect("at least two ways");
                self.chosen = Some(self.ways[best]);
                self.chosen_block = medians[best];
                self.fed = 0;
                return self.ways[best];
            }
        }
        self.ways[(k / self.block) % n]
    }

    /// Times a block of the chosen way, and starts the timing again if the choice
    /// is old (see [`KEEP_BLOCKS`]) or its blocks have run slow (see [`SLOW_BLOCKS`]).
    fn watch(&mut self) {
        let now = Instant::now();
        if let Some(t0) = self.block_start.replace(now) {
            let slow = now.duration_since(t0).as_secs_f64() > SLOWER * self.chosen_block;
            self.slow = if slow { self.slow + 1 } else { 0 };
        }
        self.kept += 1;
        let slowed = self.kept >= MIN_KEEP_BLOCKS && self.slow >= SLOW_BLOCKS;
        if slowed || self.kept >= KEEP_BLOCKS {
            *self = ReadTuner::timing(self.ways, self.n);
        }
    }

    /// Whether a way is chosen (every character reads it until the choice is timed
    /// again, after a few seconds or sooner if it slows).
    pub(super) fn done(&self) -> bool {
        self.chosen.is_some()
    }

    /// The way chosen, once the tuning is over.
    #[cfg(test)]
    pub(super) fn chosen(&self) -> Option<Way> {
        self.chosen
    }

    /// Skips the tuning: every character reads `way`.
    #[cfg(test)]
    pub(super) fn force(&mut self, way: Way) {
        self.chosen = Some(way);
        self.chosen_block = f64::INFINITY;
    }
}

/// Characters per timed block for characters of `per_char` seconds: about
/// [`BLOCK_SECONDS`], an even number from [`BLOCK`] to [`MAX_BLOCK`].
fn block_for(per_char: f64) -> usize {
    let chars = (BLOCK_SECONDS / per_char.max(1e-9)).round().min(1e6) as usize;
    chars.clamp(BLOCK, MAX_BLOCK).next_multiple_of(2)
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
    fn slow_next(t: &mut ReadTuner) -> Way {
        let t0 = Instant::now();
        while t0.elapsed().as_nanos() < 1000 {}
        t.next()
    }

    /// Warm-up, then a block of each way in turn (both orders, four streams too where
    /// they matter, both splits where the split is timed); then one choice among the
    /// ways timed, kept (until it is timed again, below).
    #[test]
    fn the_tuner_times_every_way_then_keeps_one() {
        let cases = [
            (false, Some(false), 2),
            (false, Some(true), 2),
            (true, Some(false), 4),
            (false, None, 4),
            (true, None, 8),
        ];
        for (streams, split, n) in cases {
            let mut t = ReadTuner::new(streams, split);
            assert_eq!(t.n, n);
            let timed = &t.ways[..n];
            assert!(timed
                .iter()
                .enumerate()
                .all(|(i, w)| !timed[..i].contains(w)));
            assert!(timed.iter().all(|w| split.is_none_or(|s| w.split == s)));
            assert!(timed.iter().all(|w| streams || w.streams == Streams::One));
            let (first, timed) = (t.ways[0], t.ways);
            assert_eq!(first.reads, Reads::Alternate);
            let mut ways: Vec<Way> = (0..=WARM).map(|_| slow_next(&mut t)).collect();
            // Blocks sized by the warm-up (how long these 1 µs characters took
            // depends on the machine's load).
            let block = t.block;
            assert!(
                (BLOCK..=MAX_BLOCK).contains(&block) && block.is_multiple_of(2),
                "{block}"
            );
            ways.extend((1..n * BLOCKS * block).map(|_| slow_next(&mut t)));
            assert!(ways[..WARM].iter().all(|&w| w == first));
            for (b, block) in ways[WARM..].chunks(block).enumerate() {
                assert!(
                    block.iter().all(|&w| w == timed[b % n]),
                    "{streams} {split:?} block {b}"
                );
            }
            assert_eq!(t.chosen(), None);
            assert!(
                t.seconds[..n]
                    .iter()
                    .flat_map(|s| s.iter())
                    .filter(|&&s| s > 0.0)
                    .count()
                    >= n * BLOCKS - 1
            );
            assert!(t.seconds[n..].iter().flatten().all(|&s| s == 0.0));
            assert!(!t.done());
            let chosen = t.next();
            assert!(t.done());
            assert_eq!(t.chosen(), Some(chosen));
            assert!(timed[..n].contains(&chosen));
            assert!((0..50).all(|_| t.next() == chosen));
        }
    }

    /// A choice is timed again after [`KEEP_BLOCKS`] blocks however fast they run,
    /// or after [`MIN_KEEP_BLOCKS`] when the last [`SLOW_BLOCKS`] ran slow, with the
    /// same ways.
    #[test]
    fn a_choice_is_timed_again_when_old_or_slow() {
        for (median, blocks) in [(f64::INFINITY, KEEP_BLOCKS), (-1.0, MIN_KEEP_BLOCKS)] {
            let mut t = ReadTuner::new(true, None);
            let (ways, n) = (t.ways, t.n);
            let way = ways[3];
            t.force(way);
            t.chosen_block = median;
            for _ in 1..blocks * BLOCK {
                assert_eq!(t.next(), way);
            }
            assert!(t.done(), "{median}");
            assert_eq!(t.next(), way);
            assert!(!t.done(), "{median}: timing again");
            assert_eq!((t.ways, t.n, t.fed), (ways, n, 0));
            assert_eq!(t.next(), ways[0]);
        }
    }

    /// Blocks of about 200 µs: 8 characters of a large model, 100 of a 2 µs one,
    /// 256 at most; even, and sane for a warm-up that measured nothing.
    #[test]
    fn blocks_last_about_200_microseconds() {
        assert_eq!(block_for(65e-6), BLOCK);
        assert_eq!(block_for(20e-6), 10);
        assert_eq!(block_for(2e-6), 100);
        assert_eq!(block_for(1.5e-6), 134);
        assert_eq!(block_for(0.5e-6), MAX_BLOCK);
        assert_eq!(block_for(0.0), MAX_BLOCK);
        assert_eq!(block_for(f64::NAN), MAX_BLOCK);
    }

    /// Small steppers on two threads reading every way (forward at every character or
    /// alternating, one stream or four, on one thread or both), and one that changes
    /// its way at every character: the same logits, bit for bit, for every cell and
    /// precision.
    #[test]
    fn every_way_gives_the_same_bits() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        pool.install(|| {
            let tuner = ReadTuner::new(true, None);
            let ways = &tuner.ways[..tuner.n];
            for cell in CellKind::ALL {
                let cfg = crate::bench::model(cell, 3, 48, 8);
                let chars = (0..20u32).map(|i| char::from_u32(0x41 + i).unwrap());
                let vocab = Vocab::from_chars(chars.collect()).unwrap();
                let m = CharLm::new(&cfg, vocab, &mut Rng::new(3)).unwrap();
                for weights in [Weights::F32, Weights::Bf16, Weights::Int8] {
                    let first = Stepper::new(&m, weights).unwrap();
                    assert!(!first.other.is_empty(), "a small model times the split");
                    let mut steppers: Vec<Stepper> = ways
                        .iter()
                        .map(|&way| {
                            let mut s = first.clone();
                            s.reads.force(way);
                            s
                        })
                        .collect();
                    let mut changing = first.clone();
                    for i in 0..9 {
                        let id = (i * 7 + 3) % 20;
                        let bits = |l: &[f32]| l.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                        let (a, rest) = steppers.split_first_mut().unwrap();
                        let want = bits(a.feed(id).unwrap());
                        for (b, way) in rest.iter_mut().zip(&ways[1..]) {
                            let got = bits(b.feed(id).unwrap());
                            assert_eq!(got, want, "{cell} {weights:?} {way:?} {i}");
                        }
                        let way = ways[(i * 3 + 1) % ways.len()];
                        changing.reads.force(way);
                        let got = bits(changing.feed(id).unwrap());
                        assert_eq!(got, want, "{cell} {weights:?} changing to {way:?} {i}");
                        assert_eq!(changing.threads(), if way.split { 2 } else { 1 });
                    }
                }
            }
        });
    }
}
