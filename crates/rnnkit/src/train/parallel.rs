//! Data-parallel training: every process holds the whole model, trains on its share
//! of each global batch, and the gradients are summed across processes before
//! clipping and the optimizer step (what PyTorch DDP and Horovod do with an
//! all-reduce). The library knows only the [`Collective`] trait; the CLI implements
//! it over MPI. A single process uses [`Alone`], and the trainer then takes its
//! usual path with no reduction at all.

use crate::error::Result;
use crate::layer::Parameters;
use crate::task::BatchLoss;
use crate::tensor::Tensor;
use std::ops::Range;

/// Which share of every global batch this process trains on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// This process's index, from 0.
    pub rank: usize,
    /// Number of processes.
    pub ranks: usize,
}

impl Shard {
    /// The whole batch: one process.
    pub const WHOLE: Shard = Shard { rank: 0, ranks: 1 };

    /// Whether this is the only process.
    pub fn is_whole(self) -> bool {
        self.ranks <= 1
    }

    /// The items `[start, end)` of `n` that this process takes: contiguous, the sizes
    /// of the parts differing by at most one (the first ranks take the larger ones).
    pub fn range(self, n: usize) -> Range<usize> {
        let ranks = self.ranks.max(1);
        let (q, r) = (n / ranks, n % ranks);
        let start = self.rank * q + self.rank.min(r);
        start..start + q + usize::from(self.rank < r)
    }

    /// Refuses a batch of `n` items that leaves some process without one; `what`
    /// names the items (e.g. "streams").
    pub fn check(self, n: usize, what: &str) -> Result<()> {
        if n < self.ranks {
            return Err(crate::Error::Config(format!(
                "a batch of {n} {what} cannot be shared by {} processes: every process needs at least one; raise --batch to {} or more, or start fewer processes",
                self.ranks, self.ranks
            )));
        }
        Ok(())
    }
}

/// Receives gradient tensors as the backward pass finishes them (the top of the
/// model first), so that a data-parallel trainer can start summing them while the
/// backward pass goes on with the layers below.
pub type GradientSink<'a> = dyn FnMut(&[&Tensor<f32>]) + 'a;

/// One training step on this process's share, as a [`Collective`] runs it.
pub trait LocalStep {
    /// Forward, loss and backward, handing finished gradients to `ready`.
    fn run(&mut self, ready: &mut GradientSink<'_>) -> Result<BatchLoss>;
    /// The parameters whose gradients are summed.
    fn params(&mut self) -> &mut dyn Parameters<f32>;
}

/// The processes of a data-parallel run, as the trainer needs them.
pub trait Collective {
    /// This process's share.
    fn shard(&self) -> Shard;
    /// Sums `values` over every process, in place: every process gets the sums.
    fn sum(&mut self, values: &mut [f64]) -> Result<()>;
    /// [`Collective::sum`] for f32 values (the carried state of a checkpoint).
    fn sum_f32(&mut self, values: &mut [f32]) -> Result<()>;
    /// Runs `step` and sums its gradients, each multiplied by `scale`, over every
    /// process: afterwards every process holds the same gradients. Gradients handed
    /// over during the backward pass may be summed while it still runs.
    fn step(&mut self, step: &mut dyn LocalStep, scale: f32) -> Result<BatchLoss>;
}

/// One process alone: nothing to sum.
#[derive(Clone, Copy, Debug, Default)]
pub struct Alone;

impl Collective for Alone {
    fn shard(&self) -> Shard {
        Shard::WHOLE
    }

    fn sum(&mut self, _values: &mut [f64]) -> Result<()> {
        Ok(())
    }

    fn sum_f32(&mut self, _values: &mut [f32]) -> Result<()> {
        Ok(())
    }

    fn step(&mut self, step: &mut dyn LocalStep, _scale: f32) -> Result<BatchLoss> {
        step.run(&mut |_| {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_batch_once_in_near_equal_parts() {
        for n in [1, 2, 7, 32, 33] {
            for ranks in 1..=n.min(5) {
                let parts: Vec<Range<usize>> = (0..ranks)
                    .map(|rank| Shard { rank, ranks }.range(n))
                    .collect();
                assert_eq!(parts[0].start, 0, "n {n} ranks {ranks}");
                assert_eq!(parts[ranks - 1].end, n, "n {n} ranks {ranks}");
                for w in parts.windows(2) {
                    assert_eq!(w[0].end, w[1].start, "n {n} ranks {ranks}");
                }
                let (min, max) = (
                    parts.iter().map(|p| p.len()).min().unwrap(),
                    parts.iter().map(|p| p.len()).max().unwrap(),
                );
                assert!(min >= 1 && max - min <= 1, "n {n} ranks {ranks}: {parts:?}");
            }
        }
        assert!(Shard { rank: 0, ranks: 3 }.check(2, "streams").is_err());
    }
}
