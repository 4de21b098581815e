//! Plain owned tensors: a shape and a row-major buffer. No autograd tape.

use crate::error::{Error, Result};
use crate::kernel::{MatMut, MatRef, PackedB, Precision};
use std::cell::RefCell;
use std::fmt::Debug;
use std::thread::LocalKey;

thread_local! {
    static POOL_F32: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
    static POOL_F64: RefCell<Vec<Vec<f64>>> = const { RefCell::new(Vec::new()) };
}

/// Floating-point element type of tensors: `f32` for work, `f64` for gradient checks.
pub trait Real:
    num_traits::Float
    + num_traits::FromPrimitive
    + num_traits::ToPrimitive
    + Default
    + Debug
    + Send
    + Sync
    + std::iter::Sum
    + std::ops::AddAssign
    + std::ops::SubAssign
    + std::ops::MulAssign
    + 'static
{
    /// Name of the safetensors dtype (`F32`, `F64`).
    const DTYPE: &'static str;
    /// Converts from `f64`, rounding to nearest.
    fn of(x: f64) -> Self;
    /// Widens to `f64`.
    fn f64(self) -> f64;
    /// This thread's spare buffers for scratch tensors (the crate's `Scratch`).
    fn scratch_pool() -> &'static LocalKey<RefCell<Vec<Vec<Self>>>>;
    /// `x ← σ(x)` elementwise (vectorised for f32).
    fn sigmoid_inplace(x: &mut [Self]) {
        x.iter_mut().for_each(|v| *v = v.sigmoid_one());
    }
    /// `x ← tanh(x)` elementwise (vectorised for f32).
    fn tanh_inplace(x: &mut [Self]) {
        x.iter_mut().for_each(|v| *v = v.tanh_one());
    }
    /// `σ(x)` exactly as [`Self::sigmoid_inplace`] computes it, for the fused loops of
    /// the cells (inlined, so that they vectorise).
    #[inline(always)]
    fn sigmoid_one(self) -> Self {
        crate::kernel::sigmoid(self)
    }
    /// `tanh(x)` exactly as [`Self::tanh_inplace`] computes it (see [`Self::sigmoid_one`]).
    #[inline(always)]
    fn tanh_one(self) -> Self {
        self.tanh()
    }
    /// `c (+)= a·b` by the packed products in `precision` where this type and CPU
    /// have them; hands `c` back untouched otherwise.
    fn matmul_packed<'c>(
        c: MatMut<'c, Self>,
        _a: MatRef<'_, Self>,
        _b: MatRef<'_, Self>,
        _accumulate: bool,
        _precision: Precision,
    ) -> std::result::Result<(), MatMut<'c, Self>> {
        Err(c)
    }
    /// `c (+)= a·b` with `b` packed by [`Real::pack`].
    fn gemm_packed(_c: MatMut<'_, Self>, _a: MatRef<'_, Self>, _b: &PackedB, _accumulate: bool) {
        unreachable!("only types whose pack succeeds have packed operands")
    }
    /// Packs `b` for [`Real::gemm_packed`] in `precision` where this type and CPU
    /// have the packed products; false otherwise.
    fn pack(_b: MatRef<'_, Self>, _precision: Precision, _out: &mut PackedB) -> bool {
        false
    }
    /// `x ← e^x` elementwise (vectorised for f32, where x ≤ 88 is required).
    fn exp_inplace(x: &mut [Self]) {
        x.iter_mut().for_each(|v| *v = v.exp());
    }
    /// `y = x·b` (or `y += x·b`) for one row `x` by a hand-written kernel, where this
    /// type and CPU have one; false (nothing done) sends the caller to the GEMM.
    fn gemv(_y: &mut [Self], _x: &[Self], _b: MatRef<'_, Self>, _accumulate: bool) -> bool {
        false
    }
    /// `c (+)= a·b` by the hand-written f32 product `kernel`, where this type, CPU,
    /// precision and layout allow; hands `c` back untouched otherwise.
    fn gemm_kernel<'c>(
        _kernel: Kernel,
        c: MatMut<'c, Self>,
        _a: MatRef<'_, Self>,
        _b: MatRef<'_, Self>,
        _accumulate: bool,
    ) -> std::result::Result<(), MatMut<'c, Self>> {
        Err(c)
    }
}

/// The hand-written f32 products that [`Real::gemm_kernel`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// A few rows of `a` by a `b` whose columns are contiguous (`x·Wᵀ`).
    FewRows,
    /// A row-major `b` that stays in cache (a per-step product), read in place.
    Rows,
    /// A column-major `a` by a row-major `b` (a weight gradient `dgᵀ·x`), both read
    /// in place.
    DepthMajor,
}

impl Real for f32 {
    fn scratch_pool() -> &'static LocalKey<RefCell<Vec<Vec<Self>>>> {
        &POOL_F32
    }
    const DTYPE: &'static str = "F32";
    fn of(x: f64) -> Self {
        x as f32
    }
    fn f64(self) -> f64 {
        self as f64
    }
    fn sigmoid_inplace(x: &mut [Self]) {
        crate::kernel::sigmoid_f32(x)
    }
    fn gemv(y: &mut [Self], x: &[Self], b: MatRef<'_, Self>, accumulate: bool) -> bool {
        crate::kernel::gemv_f32(y, x, b, accumulate)
    }
    fn gemm_kernel<'c>(
        kernel: Kernel,
        mut c: MatMut<'c, Self>,
        a: MatRef<'_, Self>,
        b: MatRef<'_, Self>,
        accumulate: bool,
    ) -> std::result::Result<(), MatMut<'c, Self>> {
        let done = match kernel {
            Kernel::FewRows => crate::kernel::few_rows_f32(&mut c, a, b, accumulate),
            Kernel::Rows => crate::kernel::gemm_rows_f32(&mut c, a, b, accumulate),
            Kernel::DepthMajor => crate::kernel::gemm_depth_major_f32(&mut c, a, b, accumulate),
        };
        if done {
            Ok(())
        } else {
            Err(c)
        }
    }
    fn exp_inplace(x: &mut [Self]) {
        crate::kernel::exp_f32(x)
    }
    fn matmul_packed<'c>(
        c: MatMut<'c, Self>,
        a: MatRef<'_, Self>,
        b: MatRef<'_, Self>,
        accumulate: bool,
        precision: Precision,
    ) -> std::result::Result<(), MatMut<'c, Self>> {
        if crate::kernel::packed_supported(precision) {
            crate::kernel::matmul_packed(c, a, b, accumulate, precision);
            Ok(())
        } else {
            Err(c)
        }
    }
    fn gemm_packed(c: MatMut<'_, Self>, a: MatRef<'_, Self>, b: &PackedB, accumulate: bool) {
        crate::kernel::gemm_packed(c, a, b, accumulate)
    }
    fn pack(b: MatRef<'_, Self>, precision: Precision, out: &mut PackedB) -> bool {
        crate::kernel::packed_supported(precision) && {
            out.pack(b, precision);
            true
        }
    }
    fn tanh_inplace(x: &mut [Self]) {
        crate::kernel::tanh_f32(x)
    }
    #[inline(always)]
    fn sigmoid_one(self) -> Self {
        crate::kernel::sigmoid_one_f32(self)
    }
    #[inline(always)]
    fn tanh_one(self) -> Self {
        crate::kernel::tanh_one_f32(self)
    }
}

impl Real for f64 {
    fn scratch_pool() -> &'static LocalKey<RefCell<Vec<Vec<Self>>>> {
        &POOL_F64
    }
    const DTYPE: &'static str = "F64";
    fn of(x: f64) -> Self {
        x
    }
    fn f64(self) -> f64 {
        self
    }
}

/// An owned, row-major, n-dimensional array.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor<T = f32> {
    shape: Vec<usize>,
    data: Vec<T>,
}

impl<T: Real> Default for Tensor<T> {
    /// An empty tensor `[0]`, for a buffer that a pass then reshapes and fills.
    fn default() -> Self {
        Tensor::zeros(&[0])
    }
}

impl<T: Real> Tensor<T> {
    /// Makes this tensor `shape`, keeping its storage: the elements hold whatever
    /// they held (zeros where it grew), for a buffer whose every element is then written.
    pub(crate) fn reshape_overwritten(&mut self, shape: &[usize]) {
        self.shape.clear();
        self.shape.extend_from_slice(shape);
        overwritten(&mut self.data, shape.iter().product());
    }

    /// A tensor of zeros.
    pub fn zeros(shape: &[usize]) -> Self {
        Tensor {
            shape: shape.to_vec(),
            data: vec![T::zero(); shape.iter().product()],
        }
    }

    /// Wraps a buffer; fails if its length is not the product of `shape`.
    pub fn from_vec(shape: &[usize], data: Vec<T>) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::Shape(format!(
                "shape {shape:?} holds {n} elements but {} were given",
                data.len()
            )));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            data,
        })
    }

    /// The dimensions.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The elements, row-major.
    pub fn data(&self) -> &[T] {
        &self.data
    }

    /// The elements, row-major, mutable.
    pub fn data_mut(&mut self) -> &mut [T] {
        &mut self.data
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the tensor holds no element.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Gives up the buffer.
    pub fn into_vec(self) -> Vec<T> {
        self.data
    }

    /// Same elements under another shape with the same element count.
    pub fn reshape(mut self, shape: &[usize]) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != self.data.len() {
            return Err(Error::Shape(format!(
                "cannot reshape {:?} into {shape:?}",
                self.shape
            )));
        }
        self.shape = shape.to_vec();
        Ok(self)
    }

    /// Sets every element to zero.
    pub fn fill_zero(&mut self) {
        self.data.iter_mut().for_each(|x| *x = T::zero());
    }

    /// Converts every element to another precision.
    pub fn cast<U: Real>(&self) -> Tensor<U> {
        Tensor {
            shape: self.shape.clone(),
            data: self.data.iter().map(|&x| U::of(x.f64())).collect(),
        }
    }

    /// Fails unless the shape is exactly `expected`; `what` names the tensor in the message.
    pub fn expect_shape(&self, what: &str, expected: &[usize]) -> Result<()> {
        if self.shape != expected {
            return Err(Error::Shape(format!(
                "{what}: expected shape {expected:?}, got {:?}",
                self.shape
            )));
        }
        Ok(())
    }
}

/// `n` zeros in `buf`, reusing its allocation when it is large enough (zeroed on every
/// thread when large).
pub(crate) fn scratch<T: Real>(buf: &mut Vec<T>, n: usize) -> &mut [T] {
    let b = overwritten(buf, n);
    crate::kernel::fill(b, T::zero());
    b
}

/// `buf` as `n` elements holding whatever they held (zeros where it grows): for
/// buffers whose every element is written before it is read, which zeroing on
/// every pass would only slow down (LSTM 2×512: 0.3 GB a step, on one thread).
pub(crate) fn overwritten<T: Real>(buf: &mut Vec<T>, n: usize) -> &mut [T] {
    buf.truncate(n);
    buf.resize(n, T::zero());
    &mut buf[..]
}

/// A zeroed buffer taken from this thread's pool and given back when dropped:
/// scratch space inside a pass that allocates nothing once the pool holds buffers
/// of the sizes in use (worker threads live as long as their pool).
pub(crate) struct Scratch<T: Real> {
    buf: Vec<T>,
}

impl<T: Real> Scratch<T> {
    /// `n` zeros.
    pub(crate) fn zeroed(n: usize) -> Self {
        let mut buf = T::scratch_pool()
            .with(|p| p.borrow_mut().pop())
            .unwrap_or_default();
        buf.clear();
        buf.resize(n, T::zero());
        Scratch { buf }
    }
}

impl<T: Real> std::ops::Deref for Scratch<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.buf
    }
}

impl<T: Real> std::ops::DerefMut for Scratch<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.buf
    }
}

impl<T: Real> Drop for Scratch<T> {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        // During thread teardown the pool may be gone: the buffer is then freed.
        let _ = T::scratch_pool().try_with(|p| p.borrow_mut().push(buf));
    }
}
