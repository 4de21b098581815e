//! Data-parallel training over MPI (`--features mpi`): under `mpirun -np N` every
//! process trains on its share of each batch and the gradients are summed with
//! all-reduces, in buckets that start while the backward pass is still running on
//! the layers below (`--mpi-overlap off`: one all-reduce after the backward pass).

use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::request::{LocalScope, Request};
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives};
use mpi::Threading;
use rnnkit::task::BatchLoss;
use rnnkit::train::{Collective, LocalStep, Shard};
use rnnkit::Tensor;
use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// This process's place in the MPI job, set once MPI is started.
static SHARD: OnceLock<Shard> = OnceLock::new();

/// Starts MPI when an MPI launcher started this process (`mpirun`, `mpiexec`,
/// `srun --mpi`); otherwise the process runs alone and MPI is never touched. MPI
/// ends when the returned universe is dropped.
pub(crate) fn init() -> Option<Universe> {
    let launched = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
    if !launched {
        return None;
    }
    // Every MPI call is made from the main thread (the trainer's loop); the worker
    // threads only compute.
    let (universe, _) = mpi::initialize_with_threading(Threading::Funneled)?;
    let world = universe.world();
    let _ = SHARD.set(Shard {
        rank: world.rank() as usize,
        ranks: world.size() as usize,
    });
    Some(universe)
}

/// This process's share: the whole batch unless MPI started several processes.
pub(crate) fn shard() -> Shard {
    SHARD.get().copied().unwrap_or(Shard::WHOLE)
}

/// Ends every process of the job (after an error on this one), so that none is
/// left waiting in a collective for a process that will not come.
pub(crate) fn abort_others() {
    if !shard().is_whole() {
        SimpleCommunicator::world().abort(1);
    }
}

/// Gradients handed over together during the backward pass, summed by one all-reduce.
#[derive(Default)]
struct Bucket {
    send: Vec<f32>,
    recv: Vec<f32>,
}

/// Buckets started in one step at most; later groups are summed after the backward pass.
const MAX_BUCKETS: usize = 64;

/// [`Collective`] over `MPI_COMM_WORLD`.
pub(crate) struct MpiCollective {
    world: SimpleCommunicator,
    shard: Shard,
    overlap: bool,
    buckets: Vec<Bucket>,
    rest: Bucket,
    scalars: (Vec<f64>, Vec<f64>),
    /// Time the calling thread spent summing (copies, starts, waits), all steps.
    pub comm: Duration,
    /// Steps summed.
    pub steps: u64,
    /// Gradient values summed per step.
    pub values: usize,
    /// Buckets started during the backward pass in the last step.
    pub started: usize,
}

impl MpiCollective {
    /// The collective of this job; `overlap` starts summing gradients during the backward pass.
    pub(crate) fn new(overlap: bool) -> Self {
        MpiCollective {
            world: SimpleCommunicator::world(),
            shard: shard(),
            overlap,
            buckets: (0..MAX_BUCKETS).map(|_| Bucket::default()).collect(),
            rest: Bucket::default(),
            scalars: (Vec::new(), Vec::new()),
            comm: Duration::ZERO,
            steps: 0,
            values: 0,
            started: 0,
        }
    }
}

impl Collective for MpiCollective {
    fn shard(&self) -> Shard {
        self.shard
    }

    fn sum(&mut self, values: &mut [f64]) -> rnnkit::Result<()> {
        let t = Instant::now();
        let (send, recv) = &mut self.scalars;
        send.clear();
        send.extend_from_slice(values);
        recv.resize(values.len(), 0.0);
        self.world
            .all_reduce_into(&send[..], &mut recv[..], SystemOperation::sum());
        values.copy_from_slice(recv);
        self.comm += t.elapsed();
        Ok(())
    }

    fn sum_f32(&mut self, values: &mut [f32]) -> rnnkit::Result<()> {
        let b = &mut self.rest;
        b.send.clear();
        b.send.extend_from_slice(values);
        b.recv.resize(values.len(), 0.0);
        self.world
            .all_reduce_into(&b.send[..], &mut b.recv[..], SystemOperation::sum());
        values.copy_from_slice(&b.recv);
        Ok(())
    }

    fn step(&mut self, step: &mut dyn LocalStep, scale: f32) -> rnnkit::Result<BatchLoss> {
        let world = &self.world;
        let overlap = self.overlap;
        let mut comm = Duration::ZERO;
        // Where each handed-over gradient went: its data's address → (bucket, offset).
        let mut placed: HashMap<usize, (usize, usize)> = HashMap::new();
        let buckets = &mut self.buckets;
        let (out, started) = mpi::request::scope(|scope: &LocalScope<'_>| {
            let mut free = buckets.iter_mut().enumerate();
            let mut pending: Vec<Request<'_, [f32], _>> = Vec::new();
            let mut started = 0;
            let mut sink = |grads: &[&Tensor<f32>]| {
                if !overlap {
                    return;
                }
                let Some((i, b)) = free.next() else {
                    return;
                };
                let t = Instant::now();
                let Bucket { send, recv } = b;
                send.clear();
                for g in grads.iter().filter(|g| !g.is_empty()) {
                    placed.insert(g.data().as_ptr() as usize, (i, send.len()));
                    send.extend(g.data().iter().map(|&v| v * scale));
                }
                recv.clear();
                recv.resize(send.len(), 0.0);
                let (send, recv): (&[f32], &mut [f32]) = (send, recv);
                pending.push(world.immediate_all_reduce_into(
                    scope,
                    send,
                    recv,
                    SystemOperation::sum(),
                ));
                started += 1;
                // MPI moves a non-blocking collective on only inside MPI calls: give
                // the ones in flight a turn each time a layer finishes.
                pending = std::mem::take(&mut pending)
                    .into_iter()
                    .filter_map(|r| r.test().err())
                    .collect();
                comm += t.elapsed();
            };
            let out = step.run(&mut sink);
            let t = Instant::now();
            for r in pending {
                r.wait_without_status();
            }
            comm += t.elapsed();
            (out, started)
        });
        let out = out?;
        let t = Instant::now();
        // Summed buckets back into the gradients; the rest summed in one piece.
        let rest = &mut self.rest;
        rest.send.clear();
        let mut values = 0;
        step.params().visit_params_mut(&mut |_, _, g| {
            values += g.len();
            match placed.get(&(g.data().as_ptr() as usize)) {
                Some(&(i, at)) => {
                    let n = g.len();
                    g.data_mut().copy_from_slice(&buckets[i].recv[at..at + n]);
                }
                None => rest.send.extend(g.data().iter().map(|&v| v * scale)),
            }
        });
        rest.recv.clear();
        rest.recv.resize(rest.send.len(), 0.0);
        world.all_reduce_into(&rest.send[..], &mut rest.recv[..], SystemOperation::sum());
        let mut at = 0;
        step.params().visit_params_mut(&mut |_, _, g| {
            if !placed.contains_key(&(g.data().as_ptr() as usize)) {
                let n = g.len();
                g.data_mut().copy_from_slice(&rest.recv[at..at + n]);
                at += n;
            }
        });
        comm += t.elapsed();
        self.comm += comm;
        self.steps += 1;
        self.values = values;
        self.started = started;
        Ok(out)
    }
}
