//! A team of threads owned by one batch-1 stepper, which share out each step's
//! work between the caller and their own threads.
//!
//! A batch-1 step of a large model streams a few megabytes of weights in about ten
//! microseconds per core. Handing that to rayon's pool costs 1.5–2 µs per join: its
//! idle threads wait in `sched_yield`, and when the thief is late the caller runs the
//! other share as well, from the other core's cache. A team's threads serve one
//! caller only: thread k always takes share k, so that share's weights stay in its
//! core's cache, and it waits for the next job by spinning (for [`SPIN`]) before it
//! sleeps, so a job starts within a fraction of a microsecond.
//!
//! A share is claimed before it runs, by its thread or by the caller: the caller,
//! done with its own share, claims every share whose thread has not started (asleep,
//! descheduled, or sharing the caller's core) and runs it itself, so a late thread
//! costs at most the time of its share, never a wait on the scheduler.

use std::any::Any;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long a team thread spins for its next job before it sleeps: well above the
/// gap between two sampled characters (the head, the sampling, the caller's own
/// bookkeeping), short enough that an idle stepper soon gives its cores back.
const SPIN: Duration = Duration::from_micros(500);

/// The `posted` value that tells a thread to exit.
const STOP: u64 = u64::MAX;

/// A job as the threads see it: share index → work.
type Job<'a> = &'a (dyn Fn(usize) + Sync);

/// What the caller and one thread share. Aligned so that two threads' slots never
/// share a cache line.
#[repr(align(128))]
struct Slot {
    /// Sequence number of the latest job posted ([`STOP`]: exit).
    posted: AtomicU64,
    /// Who runs the latest job: `2·seq + 1` for the thread, `2·seq` for the caller.
    claimed: AtomicU64,
    /// Sequence number of the latest job the thread is through with (run or left).
    done: AtomicU64,
    /// Set while the thread sleeps (or is about to), so the caller wakes it.
    sleeping: AtomicBool,
    /// The caller's [`Job`] reference, valid while the thread holds the claim to a
    /// job it is not through with.
    job: AtomicPtr<()>,
    /// A panic of the job, handed back to the caller.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

struct Member {
    slot: Arc<Slot>,
    thread: JoinHandle<()>,
}

/// Threads that run shares `1..n` of a job while the caller runs share 0. Started
/// on the first job that needs them; a clone starts its own.
#[derive(Default)]
pub(crate) struct Team {
    members: Vec<Member>,
    seq: u64,
}

impl Clone for Team {
    fn clone(&self) -> Team {
        Team::default()
    }
}

impl fmt::Debug for Team {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Team({} threads)", self.members.len())
    }
}

/// A raw pointer that may cross threads: [`Team::for_each`] hands each thread a
/// different element.
struct Items<T>(*mut T);
// SAFETY: every element is reached by one thread only (see `for_each`), and `T: Send`.
unsafe impl<T: Send> Sync for Items<T> {}

impl Team {
    /// Calls `f(k, &mut items[k])` for every k, share 0 on the calling thread and
    /// share k on the team's thread k (or here, if that thread has not started it
    /// by the time share 0 is done), and returns when all are done. A panic in any
    /// share is resumed here once every share that started has finished (a share
    /// not started by then is not run).
    pub(crate) fn for_each<T: Send>(&mut self, items: &mut [T], f: impl Fn(usize, &mut T) + Sync) {
        let n = items.len();
        let base = Items(items.as_mut_ptr());
        let base = &base;
        // SAFETY: `run` calls the job once for each k < n, so each element is borrowed
        // by one share at a time and `items` outlives the call.
        self.run(n, &|k| f(k, unsafe { &mut *base.0.add(k) }));
    }

    /// Runs `job(k)` once for every `k < n`: share 0 here, the others on the team.
    fn run(&mut self, n: usize, job: Job<'_>) {
        if n == 0 {
            return;
        }
        self.grow(n - 1);
        let helpers = self.members.len().min(n - 1);
        self.seq += 1;
        let seq = self.seq;
        let ptr: *const Job<'_> = &job;
        for m in &self.members[..helpers] {
            m.slot.job.store(ptr as *mut (), Ordering::Relaxed);
            m.slot.posted.store(seq, Ordering::SeqCst);
            if m.slot.sleeping.load(Ordering::SeqCst) {
                m.thread.thread().unpark();
            }
        }
        {
            // Waits for the threads that claimed their shares even when a share here
            // panics: they read `job` from this frame until they are through.
            let _wait = Wait(&self.members[..helpers], seq);
            job(0);
            // Shares without a thread (one could not be started) run here, and so do
            // those whose thread has not started them yet.
            for k in helpers + 1..n {
                job(k);
            }
            for (i, m) in self.members[..helpers].iter().enumerate() {
                if m.slot.claim(2 * seq) {
                    job(i + 1);
                }
            }
        }
        for m in &self.members[..helpers] {
            let payload = m
                .slot
                .panic
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(payload) = payload {
                panic::resume_unwind(payload);
            }
        }
    }

    /// Starts threads until there are `want` (fewer if the system refuses).
    fn grow(&mut self, want: usize) {
        while self.members.len() < want {
            let index = self.members.len() + 1;
            let slot = Arc::new(Slot {
                posted: AtomicU64::new(0),
                claimed: AtomicU64::new(0),
                done: AtomicU64::new(0),
                sleeping: AtomicBool::new(false),
                job: AtomicPtr::new(std::ptr::null_mut()),
                panic: Mutex::new(None),
            });
            let theirs = Arc::clone(&slot);
            let spawned = thread::Builder::new()
                .name(format!("rnnkit-step-{index}"))
                .spawn(move || serve(&theirs, index));
            match spawned {
                Ok(thread) => self.members.push(Member { slot, thread }),
                Err(_) => break,
            }
        }
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        for m in &self.members {
            m.slot.posted.store(STOP, Ordering::SeqCst);
            m.thread.thread().unpark();
        }
        for m in self.members.drain(..) {
            // The thread catches its jobs' panics, so it ends normally.
            let _ = m.thread.join();
        }
    }
}

impl Slot {
    /// Claims job `seq` for `who` (`2·seq` or `2·seq + 1`); false if it is claimed
    /// already, or a later job is (a thread that read `posted` long ago).
    fn claim(&self, who: u64) -> bool {
        let mut seen = self.claimed.load(Ordering::SeqCst);
        while seen >> 1 < who >> 1 {
            match self
                .claimed
                .compare_exchange(seen, who, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return true,
                Err(now) => seen = now,
            }
        }
        false
    }
}

/// When dropped, claims for the caller every share of job `seq` still unclaimed (so
/// that no thread starts one), then waits until the threads that claimed theirs are
/// through.
struct Wait<'a>(&'a [Member], u64);

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        let seq = self.1;
        for m in self.0 {
            if m.slot.claim(2 * seq) || m.slot.claimed.load(Ordering::SeqCst) == 2 * seq {
                continue;
            }
            let mut spins = 0u32;
            while m.slot.done.load(Ordering::Acquire) != seq {
                // A member the system has descheduled needs this core back.
                if spins < 1 << 10 {
                    spins += 1;
                    std::hint::spin_loop();
                } else {
                    thread::yield_now();
                }
            }
            if thread::panicking() {
                // The caller's own panic goes on; a thread's would otherwise be
                // resumed by the next job.
                m.slot
                    .panic
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take();
            }
        }
    }
}

/// A team thread: runs share `index` of each job posted to `slot` until told to stop.
fn serve(slot: &Slot, index: usize) {
    let mut seen = 0;
    loop {
        let seq = next_post(slot, seen);
        if seq == STOP {
            return;
        }
        seen = seq;
        if slot.claim(2 * seq + 1) {
            let ptr = slot.job.load(Ordering::Relaxed) as *const Job<'_>;
            // SAFETY: the caller stored `ptr` before posting `seq` (the load of
            // `posted` acquired it) and, as this thread holds the claim, keeps the
            // job alive until `done` reaches `seq`.
            let job = unsafe { *ptr };
            if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| job(index))) {
                *slot.panic.lock().unwrap_or_else(PoisonError::into_inner) = Some(payload);
            }
        }
        slot.done.store(seq, Ordering::Release);
    }
}

/// Spins until a job after `seen` is posted, sleeping once [`SPIN`] has passed.
fn next_post(slot: &Slot, seen: u64) -> u64 {
    let mut since = Instant::now();
    let mut spins = 0u32;
    loop {
        let posted = slot.posted.load(Ordering::Acquire);
        if posted != seen {
            return posted;
        }
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(1024) {
            thread::yield_now();
        }
        if spins.is_multiple_of(256) && since.elapsed() > SPIN {
            slot.sleeping.store(true, Ordering::SeqCst);
            // Either the caller's post is seen here, or the caller sees `sleeping`
            // and unparks (an unpark before the park makes the park return at once).
            if slot.posted.load(Ordering::SeqCst) == seen {
                thread::park();
            }
            slot.sleeping.store(false, Ordering::SeqCst);
            since = Instant::now();
        }
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_share_runs_once_with_its_item() {
        let mut team = Team::default();
        for n in [1usize, 2, 3, 5, 2, 1, 0] {
            let mut items = vec![0usize; n];
            for round in 1..=50 {
                team.for_each(&mut items, |k, v| *v += k + round);
            }
            let want: Vec<usize> = (0..n).map(|k| 50 * k + 50 * 51 / 2).collect();
            assert_eq!(items, want);
        }
        assert_eq!(team.members.len(), 4);
    }

    #[test]
    fn shares_run_on_distinct_threads_that_persist() {
        let mut team = Team::default();
        let mut ids = vec![None; 3];
        // Share 0 waits, so that the threads claim their shares before the caller
        // would take them over.
        let record = |k: usize, id: &mut Option<thread::ThreadId>| {
            if k == 0 {
                thread::sleep(Duration::from_millis(20));
            }
            *id = Some(thread::current().id());
        };
        team.for_each(&mut ids, record);
        let first = ids.clone();
        assert_ne!(first[0], first[1]);
        assert_ne!(first[1], first[2]);
        assert_eq!(first[0], Some(thread::current().id()));
        team.for_each(&mut ids, record);
        assert_eq!(ids, first);
    }

    /// Shares taken over by the caller and shares run by their threads, mixed at
    /// random over many jobs: each runs exactly once per job.
    #[test]
    fn each_share_runs_exactly_once_under_stealing() {
        let mut team = Team::default();
        let mut counts = vec![0u64; 3];
        for round in 0..3000u64 {
            team.for_each(&mut counts, |k, c| {
                if (round + k as u64).is_multiple_of(7) {
                    std::hint::black_box((0..2000).sum::<u64>());
                }
                *c += 1;
            });
            if round.is_multiple_of(500) {
                thread::sleep(SPIN * 2);
            }
        }
        assert_eq!(counts, vec![3000; 3]);
    }

    #[test]
    fn a_sleeping_team_wakes_for_the_next_job() {
        let mut team = Team::default();
        let mut items = vec![0u32; 2];
        for _ in 0..3 {
            team.for_each(&mut items, |_, v| *v += 1);
            thread::sleep(SPIN * 4);
        }
        assert_eq!(items, vec![3, 3]);
    }

    #[test]
    fn a_panic_in_any_share_reaches_the_caller_after_the_others_finish() {
        let mut team = Team::default();
        for bad in [0usize, 1] {
            let mut items = vec![0u32; 2];
            let result = panic::catch_unwind(AssertUnwindSafe(|| {
                team.for_each(&mut items, |k, v| {
                    // Share 0 takes longest, so that the thread has started share 1.
                    thread::sleep(Duration::from_millis(if k == 0 { 20 } else { 5 }));
                    if k == bad {
                        panic!("share {k} failed");
                    }
                    *v = 7;
                })
            }));
            let payload = result.expect_err("the panic is resumed");
            assert_eq!(
                payload.downcast_ref::<String>().unwrap(),
                &format!("share {bad} failed")
            );
            // The other share finished before the caller went on.
            assert_eq!(items[1 - bad], 7);
        }
        // Both fail: the caller's panic is resumed, and the thread's is not kept
        // for the next job.
        let both = panic::catch_unwind(AssertUnwindSafe(|| {
            team.for_each(&mut [0u8; 2], |k, _| {
                thread::sleep(Duration::from_millis(if k == 0 { 20 } else { 5 }));
                panic!("share {k} failed");
            })
        }));
        let payload = both.expect_err("the panic is resumed");
        assert_eq!(payload.downcast_ref::<String>().unwrap(), "share 0 failed");
        // The team still works.
        let mut items = vec![0u32; 2];
        team.for_each(&mut items, |k, v| *v = k as u32 + 1);
        assert_eq!(items, vec![1, 2]);
    }

    #[test]
    fn a_clone_starts_its_own_threads() {
        let mut team = Team::default();
        team.for_each(&mut [0u8; 2], |_, _| {});
        let copy = team.clone();
        assert_eq!(copy.members.len(), 0);
        assert_eq!(format!("{team:?}"), "Team(1 threads)");
    }
}
