//! `C (+)= op(A) · op(B)` through the `gemm` crate, which picks AVX-512, AVX2 or
//! scalar micro-kernels at run time, so one binary runs on any x86-64 CPU.

use crate::tensor::{Kernel, Real};
use gemm_common::Parallelism;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};

/// A product of the `gemm` crate's kernels, `dst ← alpha·dst + beta·lhs·rhs` (`dst`
/// read only when asked): the shapes `m, n, k`, each matrix as a pointer, its column
/// stride and its row stride, then `alpha`, `beta`, three conjugation flags (unused
/// for real types) and the threads.
type CrateGemm<T> = unsafe fn(
    usize,
    usize,
    usize,
    *mut T,
    isize,
    isize,
    bool,
    *const T,
    isize,
    isize,
    *const T,
    isize,
    isize,
    T,
    T,
    bool,
    bool,
    bool,
    Parallelism,
);

/// The `gemm` crate's product for `T` (its kernels picked for the CPU at first use).
///
/// # Panics
/// For a type other than f32 and f64, the two that implement [`Real`] here.
fn crate_gemm<T: Real>() -> CrateGemm<T> {
    use std::any::TypeId;
    let f = if TypeId::of::<T>() == TypeId::of::<f32>() {
        gemm_f32::gemm::f32::get_gemm_fn() as *const ()
    } else if TypeId::of::<T>() == TypeId::of::<f64>() {
        gemm_f64::gemm::f64::get_gemm_fn() as *const ()
    } else {
        panic!("matrix products are implemented for f32 and f64")
    };
    // SAFETY: `f` is the product for `T` itself (the types compared above).
    unsafe { std::mem::transmute::<*const (), CrateGemm<T>>(f) }
}

/// A read-only matrix operand: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a, T> {
    pub(crate) data: &'a [T],
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) rs: usize,
    pub(crate) cs: usize,
}

impl<'a, T> MatRef<'a, T> {
    /// A row-major `rows × cols` matrix whose rows start `ld` elements apart.
    ///
    /// # Panics
    /// If an element of the matrix would lie outside `data`. Rows may overlap
    /// (`ld < cols`, even 0, repeats a row): the operand is only read.
    pub fn new(data: &'a [T], rows: usize, cols: usize, ld: usize) -> Self {
        let m = MatRef {
            data,
            rows,
            cols,
            rs: ld,
            cs: 1,
        };
        m.check();
        m
    }

    /// A dense row-major `rows × cols` matrix.
    pub fn dense(data: &'a [T], rows: usize, cols: usize) -> Self {
        Self::new(data, rows, cols, cols)
    }

    /// The transpose, without moving data.
    pub fn t(self) -> Self {
        MatRef {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Panics unless every element lies inside `data`. The kernels read through raw
    /// pointers on the strength of this one check, so it is overflow-checked: a
    /// wrapped offset would pass it and let them read anywhere.
    fn check(&self) {
        if self.rows > 0 && self.cols > 0 {
            let last = last_index(self.rows, self.rs, self.cols, self.cs);
            assert!(
                last.is_some_and(|l| l < self.data.len()),
                "matrix operand outside its buffer"
            );
            // The GEMM crate takes strides as isize.
            assert!(
                isize::try_from(self.rs.max(self.cs)).is_ok(),
                "matrix stride too large"
            );
        }
    }
}

/// `(rows − 1)·rs + (cols − 1)·cs` for `rows, cols ≥ 1`: the offset of the last
/// element, or `None` if it does not fit in a `usize`.
fn last_index(rows: usize, rs: usize, cols: usize, cs: usize) -> Option<usize> {
    (rows - 1)
        .checked_mul(rs)?
        .checked_add((cols - 1).checked_mul(cs)?)
}

/// A row-major output matrix: element `(i, j)` is `data[i * ld + j]`.
#[derive(Debug)]
pub struct MatMut<'a, T> {
    pub(crate) data: &'a mut [T],
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) ld: usize,
}

impl<'a, T> MatMut<'a, T> {
    /// A row-major `rows × cols` output whose rows start `ld` elements apart.
    ///
    /// # Panics
    /// If `ld < cols` (rows would overlap, and threads writing different rows would
    /// race on the shared elements) or an element would lie outside `data`.
    pub fn new(data: &'a mut [T], rows: usize, cols: usize, ld: usize) -> Self {
        if rows > 0 && cols > 0 {
            assert!(ld >= cols, "output rows overlap: ld {ld} < cols {cols}");
            assert!(
                last_index(rows, ld, cols, 1).is_some_and(|l| l < data.len()),
                "output outside its buffer"
            );
            assert!(isize::try_from(ld).is_ok(), "output stride too large");
        }
        MatMut {
            data,
            rows,
            cols,
            ld,
        }
    }

    /// A dense row-major `rows × cols` output.
    pub fn dense(data: &'a mut [T], rows: usize, cols: usize) -> Self {
        Self::new(data, rows, cols, cols)
    }
}

use super::FEW_ROWS;

thread_local! {
    /// Set while the caller already runs one task per core (see [`serial`]).
    pub(crate) static SERIAL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The arithmetic of matrix products.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// f32 throughout: results match PyTorch's float32 to rounding.
    #[default]
    F32,
    /// Operands rounded to bfloat16 (8-bit mantissa), products summed in f32:
    /// about twice the multiply-adds per second on CPUs with AVX-512 BF16 (others
    /// compute in f32). Everything outside the products stays f32.
    Bf16,
}

thread_local! {
    /// The precision of [`matmul`] on this thread (see [`with_precision`]).
    static PRECISION: std::cell::Cell<Precision> = const { std::cell::Cell::new(Precision::F32) };
}

/// Runs `f` with every f32 [`matmul`] it makes on this thread (and in the row
/// blocks the cells hand to other threads) in `precision`; bf16 on a CPU without
/// AVX-512 BF16 runs as f32, through the same kernels and to the same bits.
pub fn with_precision<R>(precision: Precision, f: impl FnOnce() -> R) -> R {
    // Downgraded here, not kernel by kernel: a bf16 product the CPU cannot run
    // would otherwise fall through to the GEMM crate (another order of sums) where
    // f32 reads A in place.
    let precision = match precision {
        Precision::Bf16 if !super::bf16_supported() => Precision::F32,
        p => p,
    };
    let before = PRECISION.replace(precision);
    let r = f();
    PRECISION.set(before);
    r
}

/// The precision [`matmul`] uses on this thread.
pub fn precision() -> Precision {
    PRECISION.get()
}

/// Whether this thread runs inside [`serial`] (its products and helpers on it alone).
pub(crate) fn is_serial() -> bool {
    SERIAL.get()
}

/// Runs `f` with every [`matmul`] it makes on this thread single-threaded: for
/// callers that already split work across the cores, so no GEMM is nested in them.
pub fn serial<R>(f: impl FnOnce() -> R) -> R {
    let before = SERIAL.replace(true);
    let r = f();
    SERIAL.set(before);
    r
}

/// Runs `f` on the pool's first thread (at once when already on a thread of the
/// pool). Batch-1 work splits each matrix–vector product between the cores: from
/// inside the pool a split costs about a microsecond, from outside it each one waits
/// for a worker to wake (tens of microseconds under a hypervisor). Loops of batch-1
/// steps run here.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    on_first_thread(f, false)
}

/// [`on_pool`] for a training step (or a pass of scoring): meanwhile the pool's other
/// threads look for its jobs without pause instead of going to sleep between them.
/// A step splits dozens of pieces of work between the threads, with serial work
/// between them (the loss, the optimiser) long enough for an idle thread to fall
/// asleep; waking it again cost tens of microseconds each time under a hypervisor.
/// Not for loops on a [`crate::model::Stepper`], whose own team of threads needs the
/// cores those would poll on.
pub fn on_pool_polling<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    on_first_thread(f, true)
}

/// How many times in a row an idle thread of [`on_pool_polling`] finds no job before
/// it polls through the scheduler (`sched_yield`) rather than a pause instruction,
/// so that it gives the core away where there are more threads than cores.
const POLL_PAUSES: u32 = 4096;

/// [`on_pool`], with the other threads polling for jobs while `f` runs when `poll`.
fn on_first_thread<R: Send>(f: impl FnOnce() -> R + Send, poll: bool) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    /// Tells the polling threads that `f` is over, even if it panicked.
    struct Over<'a>(&'a AtomicBool);
    impl Drop for Over<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    // Always the same thread: the buffers that the unsplit part of a step keeps per
    // thread then grow there once, at the first step. Handed to whichever worker
    // woke first, a step found a thread that had never run one as late as the
    // tenth step, and grew (and kept) a second copy of them there.
    let f = std::sync::Mutex::new(Some(f));
    let over = AtomicBool::new(false);
    rayon::broadcast(|ctx| {
        if ctx.index() == 0 {
            let _over = Over(&over);
            let f = f.lock().unwrap_or_else(|e| e.into_inner()).take();
            return f.map(|f| f());
        }
        let mut idle = 0u32;
        while poll && !over.load(Ordering::Acquire) {
            if rayon::yield_now() == Some(rayon::Yield::Executed) {
                idle = 0;
            } else if idle < POLL_PAUSES {
                idle += 1;
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        None
    })
    .into_iter()
    .flatten()
    .next()
    .expect("the pool's first thread runs f")
}

/// Below this many multiply-adds a product runs on the calling thread: waking
/// the pool costs more than it saves.
const PARALLEL_MIN_FLOPS: usize = 1 << 18;

/// Fewest rows of an f32 product by a row-major B that [`matmul`] gives to the
/// packed kernels (fewer read B in place).
const PACKED_F32_MIN_ROWS: usize = 256;

/// `C = A·B`, or `C += A·B` when `accumulate`. Shapes must agree (checked).
pub fn matmul<T: Real>(c: MatMut<'_, T>, a: MatRef<'_, T>, b: MatRef<'_, T>, accumulate: bool) {
    let (m, n, k) = (c.rows, c.cols, a.cols);
    assert!(a.rows == m && b.rows == k && b.cols == n, "matmul shapes");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                c.data[i * c.ld..i * c.ld + n].fill(T::zero());
            }
        }
        return;
    }
    if m == 1 && (a.cs == 1 || k == 1) && T::gemv(&mut c.data[..n], &a.data[..k], b, accumulate) {
        return;
    }
    let c = if PRECISION.get() == Precision::F32 && m <= FEW_ROWS {
        match T::gemm_kernel(Kernel::FewRows, c, a, b, accumulate) {
            Ok(()) => return,
            Err(c) => c,
        }
    } else {
        c
    };
    // An f32 weight gradient `dgᵀ·x` reads both operands in place, its tiles running
    // along A's columns (no packing, which at a narrow B cost a quarter of the time).
    let c = if PRECISION.get() == Precision::F32 && a.rs == 1 && b.cs == 1 {
        match T::gemm_kernel(Kernel::DepthMajor, c, a, b, accumulate) {
            Ok(()) => return,
            Err(c) => c,
        }
    } else {
        c
    };
    // Fewer rows by a row-major B that fits the cache read B in place (packing it
    // would cost as much as the product: 100 × 512 · 512 × 128, 195 GFLOP/s against
    // 106 packed).
    let c =
        if PRECISION.get() == Precision::F32 && a.cs == 1 && b.cs == 1 && m < PACKED_F32_MIN_ROWS {
            match T::gemm_kernel(Kernel::Rows, c, a, b, accumulate) {
                Ok(()) => return,
                Err(c) => c,
            }
        } else {
            c
        };
    // The packed kernels where the CPU has them (into buffers kept per thread; the
    // GEMM crate allocates its buffers on every call): every bf16 product, and every
    // f32 product with a row-major A, which the tiles read in place (LSTM 2×512's
    // input gradient: 206 against the crate's 198 GFLOP/s; a hoisted input product
    // of 176 rows per thread, 176 × 256 · 256 × 512, 167 against 129). The GEMM crate
    // keeps the other strides and the CPUs without AVX-512.
    let packed = match PRECISION.get() {
        Precision::Bf16 => true,
        Precision::F32 => a.cs == 1,
    };
    let c = if packed {
        match T::matmul_packed(c, a, b, accumulate, PRECISION.get()) {
            Ok(()) => return,
            Err(c) => c,
        }
    } else {
        c
    };
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 && !SERIAL.get() && m * n * k >= PARALLEL_MIN_FLOPS {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // The crate's kernels prefer a column-major C: a row-major C (rows `ld` apart)
    // is computed as `Cᵀ = Bᵀ·Aᵀ`, the operands swapped with their strides, as the
    // crate's own entry point does.
    let a = (a.data.as_ptr(), a.cs as isize, a.rs as isize);
    let b = (b.data.as_ptr(), b.cs as isize, b.rs as isize);
    let ld = c.ld as isize;
    let (m, n, (dcs, drs), lhs, rhs) = if ld > 1 {
        (n, m, (ld, 1), (b.0, b.2, b.1), (a.0, a.2, a.1))
    } else {
        (m, n, (1, ld), a, b)
    };
    // SAFETY: `MatRef::new`/`MatMut::new` checked that every addressed element lies
    // inside its slice; `c` is borrowed mutably so it aliases neither input.
    unsafe {
        crate_gemm::<T>()(
            m,
            n,
            k,
            c.data.as_mut_ptr(),
            dcs,
            drs,
            accumulate,
            lhs.0,
            lhs.1,
            lhs.2,
            rhs.0,
            rhs.1,
            rhs.2,
            T::one(),
            T::one(),
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// The plain triple loop that [`matmul`] must agree with.
pub fn matmul_ref<T: Real>(c: MatMut<'_, T>, a: MatRef<'_, T>, b: MatRef<'_, T>, accumulate: bool) {
    let (m, n, k) = (c.rows, c.cols, a.cols);
    assert!(a.rows == m && b.rows == k && b.cols == n, "matmul shapes");
    for i in 0..m {
        for j in 0..n {
            let mut s = T::zero();
            for p in 0..k {
                s += a.data[i * a.rs + p * a.cs] * b.data[p * b.rs + j * b.cs];
            }
            let dst = &mut c.data[i * c.ld + j];
            *dst = if accumulate { *dst + s } else { s };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn steps_run_on_the_first_thread_and_a_panic_in_one_reaches_the_caller() {
        use rayon::prelude::*;
        for run in [on_pool::<Option<usize>>, on_pool_polling] {
            assert_eq!(run(Box::new(rayon::current_thread_index)), Some(0));
        }
        // The other threads take the step's jobs while it runs, and stop polling
        // when it is over, also when it panics.
        let sum = || (0..100_000u64).into_par_iter().map(|i| i * i).sum::<u64>();
        let want: u64 = (0..100_000u64).map(|i| i * i).sum();
        assert_eq!(on_pool_polling(sum), want);
        let caught = std::panic::catch_unwind(|| on_pool_polling(|| -> u64 { panic!("a step") }));
        assert!(caught.is_err());
        assert_eq!(on_pool_polling(sum), want);
    }

    /// `d` as an `r × c` operand, stored transposed when `t`.
    fn op(d: &[f32], r: usize, c: usize, t: bool) -> MatRef<'_, f32> {
        if t {
            MatRef::dense(&d[..r * c], c, r).t()
        } else {
            MatRef::dense(&d[..r * c], r, c)
        }
    }

    fn random(n: usize, rng: &mut Rng) -> Vec<f32> {
        (0..n).map(|_| rng.uniform_in(-1.0, 1.0) as f32).collect()
    }

    #[test]
    fn agrees_with_the_triple_loop_on_awkward_shapes_and_transposes() {
        let mut rng = Rng::new(3);
        // Under Miri (which runs the scalar paths, slowly) the small shapes only.
        let small = if cfg!(miri) { 9 * 9 * 9 } else { usize::MAX };
        for &(m, n, k) in [
            (0, 3, 2),
            (1, 1, 1),
            (3, 0, 5),
            (2, 3, 0),
            (15, 17, 16),
            (63, 33, 65),
            (64, 200, 50),
            (1, 2048, 512),
            (1, 300, 77),
            (1, 17, 3),
            (1, 65, 33),
            (1, 256, 1),
            // A few rows (the hand-written few-rows kernel when b is transposed),
            // serial and split over threads.
            (2, 71, 256),
            (5, 1024, 320),
            (8, 9, 31),
            (16, 256, 512),
            (17, 40, 24),
            (64, 256, 512),
            (65, 30, 20),
        ]
        .iter()
        .filter(|(m, n, k)| m * n * k <= small)
        {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                for accumulate in [false, true] {
                    let a = random(m * k + 1, &mut rng);
                    let b = random(k * n + 1, &mut rng);
                    let init = random(m * n, &mut rng);
                    let mut c1 = init.clone();
                    let mut c2 = init.clone();
                    matmul(
                        MatMut::dense(&mut c1, m, n),
                        op(&a, m, k, ta),
                        op(&b, k, n, tb),
                        accumulate,
                    );
                    matmul_ref(
                        MatMut::dense(&mut c2, m, n),
                        op(&a, m, k, ta),
                        op(&b, k, n, tb),
                        accumulate,
                    );
                    for (i, (x, y)) in c1.iter().zip(&c2).enumerate() {
                        assert!(
                            (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                            "m{m} n{n} k{k} ta{ta} tb{tb} acc{accumulate} [{i}]: {x} vs {y}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "outside its buffer")]
    fn operand_whose_last_offset_overflows_is_refused() {
        // (2 − 1)·usize::MAX + (2 − 1)·1 wraps to 0, inside a 4-element buffer.
        let d = [0.0f32; 4];
        MatRef::new(&d, 2, 2, usize::MAX);
    }

    #[test]
    #[should_panic(expected = "outside its buffer")]
    fn output_whose_last_offset_overflows_is_refused() {
        let mut d = [0.0f32; 4];
        MatMut::new(&mut d, 2, 2, usize::MAX);
    }

    #[test]
    #[should_panic(expected = "output rows overlap")]
    fn output_with_overlapping_rows_is_refused() {
        let mut d = [0.0f32; 8];
        MatMut::new(&mut d, 3, 4, 2);
    }

    #[test]
    fn empty_and_single_row_views_need_no_stride() {
        // No element is addressed, so any stride is fine.
        let d: [f32; 0] = [];
        MatRef::new(&d, 0, 5, usize::MAX);
        MatMut::<f32>::new(&mut [], 5, 0, 0);
        let one = [1.0f32, 2.0];
        let m = MatRef::new(&one, 1, 2, 7);
        assert_eq!((m.rows, m.cols), (1, 2));
    }

    #[test]
    #[should_panic(expected = "gemv shapes")]
    fn gemv_with_a_longer_row_than_the_matrix_has_rows_is_refused() {
        let b = [1.0f32; 4];
        let (x, mut y) = ([1.0f32; 3], [0.0f32; 2]);
        <f32 as Real>::gemv(&mut y, &x, MatRef::dense(&b, 2, 2), false);
    }

    #[test]
    #[should_panic(expected = "gemv shapes")]
    fn gemv_with_a_longer_output_than_the_matrix_has_columns_is_refused() {
        let b = [1.0f32; 4];
        let (x, mut y) = ([1.0f32; 2], [0.0f32; 40]);
        <f32 as Real>::gemv(&mut y, &x, MatRef::dense(&b, 2, 2).t(), false);
    }

    #[test]
    fn gemv_of_an_empty_product_leaves_it_to_the_caller() {
        let mut y = [3.0f32; 4];
        let b = MatRef::new(&[], 0, 4, usize::MAX >> 2);
        assert!(!<f32 as Real>::gemv(&mut y, &[], b, false));
        // matmul zeroes it.
        matmul(
            MatMut::dense(&mut y, 1, 4),
            MatRef::dense(&[], 1, 0),
            b,
            false,
        );
        assert_eq!(y, [0.0; 4]);
    }

    #[test]
    fn strided_sub_blocks() {
        // The middle 2 columns of a 3×4 matrix, times a 2×2 block.
        let a: Vec<f64> = (0..12).map(f64::from).collect();
        let b = [1.0, 2.0, 3.0, 4.0];
        let mut c = vec![0.0; 3 * 5];
        matmul(
            MatMut::new(&mut c, 3, 2, 5),
            MatRef::new(&a[1..], 3, 2, 4),
            MatRef::dense(&b, 2, 2),
            false,
        );
        assert_eq!(&c[0..2], &[1.0 + 2.0 * 3.0, 2.0 + 2.0 * 4.0]);
        assert_eq!(&c[5..7], &[5.0 + 6.0 * 3.0, 2.0 * 5.0 + 6.0 * 4.0]);
    }
}
