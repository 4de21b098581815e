//! The limits of the machine the benchmark runs on, measured there: the f32 FMA
//! peak, the bf16 peak of the unit the bf16 products use (AMX tiles' `tdpbf16ps`
//! where they run, else `vdpbf16ps`) where the CPU has one, and the read
//! bandwidth for a working set of a given size. Training throughput is reported as a
//! share of the first; batch-1 sampling, which reads every weight once per character,
//! against the time the last allows.
//!
//! Each thread of the worker pool runs 16 independent accumulator chains (more than an
//! FMA unit's latency × throughput on Zen 4 and Zen 5), so no chain waits for another
//! and the compiler cannot merge them; the best of three runs is kept.

use std::hint::black_box;
use std::time::Instant;

/// Independent accumulators per thread.
const CHAINS: usize = 16;

/// Measured limits; field names are the `--json` keys.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Limits {
    /// f32 multiply-add peak of all worker threads together, in GFLOP/s (2 FLOPs per lane).
    pub fma_peak_gflops: f64,
    /// bfloat16 dot-product peak of the bf16 products' unit (2 FLOPs per bf16 pair),
    /// in GFLOP/s; `None` where the CPU lacks AVX-512 BF16.
    pub bf16_peak_gflops: Option<f64>,
    /// That unit: `"amx"` (`tdpbf16ps` tiles) or `"avx512"` (`vdpbf16ps`); `None` as above.
    pub bf16_unit: Option<&'static str>,
    /// The vectors rnnkit's own kernels run on here: `"avx512"`, `"avx2"` (a CPU
    /// without AVX-512, or `RNNKIT_AVX512=0`) or `"portable"`.
    pub kernels: &'static str,
}

/// Measures the peaks with every thread of the current worker pool.
pub fn measure() -> Limits {
    Limits {
        fma_peak_gflops: best_of_three(|| parallel_gflops(fma_chains)),
        bf16_peak_gflops: bf16_available().then(|| best_of_three(|| parallel_gflops(bf16_chains))),
        bf16_unit: bf16_available().then_some(match crate::kernel::amx_supported() {
            true => "amx",
            false => "avx512",
        }),
        kernels: kernels(),
    }
}

/// [`Limits::kernels`] of this CPU and setting.
fn kernels() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if crate::kernel::avx512_enabled() {
            return "avx512";
        }
        if has!("avx2") && has!("fma") {
            return "avx2";
        }
    }
    "portable"
}

fn best_of_three(f: impl Fn() -> f64) -> f64 {
    (0..3).map(|_| f()).fold(0.0, f64::max)
}

/// Runs `kernel(iterations) → FLOPs` on every pool thread at once for about 0.1 s; GFLOP/s.
fn parallel_gflops(kernel: fn(u64) -> f64) -> f64 {
    // Calibrate on one thread, then give every thread the same work.
    let mut iters = 1u64 << 12;
    loop {
        let t0 = Instant::now();
        kernel(iters);
        if t0.elapsed().as_secs_f64() > 0.02 || iters > 1 << 40 {
            break;
        }
        iters *= 2;
    }
    iters *= 5;
    let t0 = Instant::now();
    let flops: f64 = rayon::broadcast(|_| kernel(iters)).into_iter().sum();
    flops / t0.elapsed().as_secs_f64() / 1e9
}

fn bf16_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::kernel::avx512_enabled() && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `iters` rounds of [`CHAINS`] independent multiply-adds on the widest vectors the CPU
/// has; returns the FLOPs done.
fn fma_chains(iters: u64) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::kernel::avx512_enabled() {
            // SAFETY: the CPU has AVX-512F.
            unsafe { x86::fma512(iters) };
            return (iters * CHAINS as u64 * 16 * 2) as f64;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA.
            unsafe { x86::fma256(iters) };
            return (iters * x86::CHAINS_256 as u64 * 8 * 2) as f64;
        }
    }
    let mut acc = [0f32; CHAINS];
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = a.mul_add(0.999_999, 1e-7);
        }
        black_box(&mut acc);
    }
    black_box(acc);
    (iters * CHAINS as u64 * 2) as f64
}

/// `iters` rounds of independent tile products on AMX where the bf16 products use it,
/// else of [`CHAINS`] independent `vdpbf16ps` (32 bf16 pairs each); FLOPs done.
fn bf16_chains(iters: u64) -> f64 {
    if crate::kernel::amx_supported() {
        return crate::kernel::amx_dot_chains(iters);
    }
    #[cfg(target_arch = "x86_64")]
    {
        if bf16_available() {
            // SAFETY: the CPU has AVX-512F and AVX-512 BF16.
            unsafe { x86::dpbf16(iters) };
            return (iters * CHAINS as u64 * 32 * 2) as f64;
        }
    }
    let _ = iters;
    0.0
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::CHAINS;
    use std::arch::x86_64::*;
    use std::hint::black_box;

    /// 16 ymm registers hold 14 chains and the two operands.
    pub(super) const CHAINS_256: usize = 14;

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn fma512(iters: u64) {
        let a = _mm512_set1_ps(0.999_999);
        let b = _mm512_set1_ps(1e-7);
        let mut acc = [_mm512_setzero_ps(); CHAINS];
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(*x, a, b);
            }
        }
        black_box(acc);
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn fma256(iters: u64) {
        let a = _mm256_set1_ps(0.999_999);
        let b = _mm256_set1_ps(1e-7);
        let mut acc = [_mm256_setzero_ps(); CHAINS_256];
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm256_fmadd_ps(*x, a, b);
            }
        }
        black_box(acc);
    }

    /// Eight 64-byte loads per round into eight accumulators.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn sum512(x: &[f32]) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 8];
        let mut rows = x.chunks_exact(128);
        for r in &mut rows {
            for (k, a) in acc.iter_mut().enumerate() {
                // SAFETY: 16 lanes at 16·k < 128 of the row.
                *a = _mm512_add_ps(*a, unsafe { _mm512_loadu_ps(r.as_ptr().add(16 * k)) });
            }
        }
        let total = acc.iter().map(|&a| _mm512_reduce_add_ps(a)).sum::<f32>();
        total + rows.remainder().iter().sum::<f32>()
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn dpbf16(iters: u64) {
        // SAFETY: both are 64-byte plain vectors; every bit pattern is valid in both.
        let a = unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi16(0x3f80)) };
        let mut acc = [_mm512_setzero_ps(); CHAINS];
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm512_dpbf16_ps(*x, a, a);
            }
        }
        black_box(acc);
    }
}

/// Read bandwidth in GB/s of `threads` worker threads (at most the pool's) summing a
/// `bytes`-sized buffer (split between them) again and again, as batch-1 sampling
/// reads the weights: what fits in a cache is read at that cache's speed. Best of
/// three runs of about 0.1 s.
pub fn read_bandwidth_gbs(bytes: usize, threads: usize) -> f64 {
    let threads = threads.clamp(1, rayon::current_num_threads());
    let n = (bytes / 4).max(16 * threads);
    let data = vec![1f32; n];
    let chunk = n.div_ceil(threads);
    let sweep = |reps: usize| {
        rayon::broadcast(|ctx| {
            if ctx.index() >= threads {
                return;
            }
            let part = data.chunks(chunk).nth(ctx.index()).unwrap_or(&[]);
            let mut total = 0f32;
            for _ in 0..reps {
                total += sum(black_box(part));
            }
            black_box(total);
        });
    };
    let mut reps = 1usize;
    loop {
        let t0 = Instant::now();
        sweep(reps);
        if t0.elapsed().as_secs_f64() > 0.02 || reps > 1 << 30 {
            break;
        }
        reps *= 2;
    }
    reps *= 5;
    best_of_three(|| {
        let t0 = Instant::now();
        sweep(reps);
        (n * 4 * reps) as f64 / t0.elapsed().as_secs_f64() / 1e9
    })
}

/// Sum with independent accumulators, so the loads, not the additions, set the pace.
fn sum(x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::kernel::avx512_enabled() {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { x86::sum512(x) };
        }
    }
    let mut acc = [0f32; 16];
    let mut rows = x.chunks_exact(16);
    for r in &mut rows {
        for (a, v) in acc.iter_mut().zip(r) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + rows.remainder().iter().sum::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_and_bandwidth_are_positive_and_finite() {
        let l = measure();
        assert!(l.fma_peak_gflops.is_finite() && l.fma_peak_gflops > 0.0);
        if let Some(b) = l.bf16_peak_gflops {
            assert!(b.is_finite() && b > 0.0);
        }
        // The unit is named exactly where a bf16 peak is measured, and it is the
        // one the bf16 products use.
        assert_eq!(l.bf16_unit.is_some(), l.bf16_peak_gflops.is_some());
        if let Some(unit) = l.bf16_unit {
            assert_eq!(unit == "amx", crate::kernel::amx_supported());
        }
        for threads in [1, rayon::current_num_threads(), usize::MAX] {
            let bw = read_bandwidth_gbs(1 << 20, threads);
            assert!(bw.is_finite() && bw > 0.0);
        }
    }

    #[test]
    fn sum_reads_every_element() {
        let x: Vec<f32> = (0..37).map(|i| i as f32).collect();
        assert_eq!(sum(&x), (0..37).sum::<i32>() as f32);
    }
}
