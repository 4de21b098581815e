//! Vectorised logistic sigmoid and tanh over f32 slices.
//!
//! The functions are plain Rust loops without branches, compiled three times
//! (AVX-512, AVX2+FMA, baseline: `simd_variant!`) and picked at run time, so the
//! compiler turns them into full-width SIMD on whatever CPU runs them; their
//! polynomials are `mul_add` chains, one instruction a term where the CPU has FMA
//! (half the latency of a multiply and an add; a baseline build calls libm's `fmaf`,
//! the same bits). `exp` is Cephes' `expf` (range reduction by ln 2 in two parts,
//! degree-6 polynomial), about 1 ulp;
//! `tanh` uses Cephes' odd polynomial below |x| = 0.625 and `1 − 2/(e^{2x}+1)` above.

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;

/// `e^x` for x ≤ 88: [`exp_f32`]'s element, inlined into fused loops.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.0);
    let n = (x * LOG2E + 0.5).floor();
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    let z = r * r;
    let p = 1.987_569_1e-4f32
        .mul_add(r, 1.398_199_9e-3)
        .mul_add(r, 8.333_452e-3)
        .mul_add(r, 4.166_579_6e-2)
        .mul_add(r, 1.666_666_5e-1)
        .mul_add(r, 0.5);
    let y = p.mul_add(z, r) + 1.0;
    // 2^n from the bits of 2^23 + 127 + n, whose low mantissa bits are n + 127 (in
    // [1, 254] after the clamp): the shift moves them into the exponent. An `as i32`
    // cast would do the same, but its saturating semantics keep it scalar.
    y * f32::from_bits((n + 8_388_735.0).to_bits() << 23)
}

/// `1 / (1 + e^{−x})` by [`exp`]: [`sigmoid_f32`]'s element, inlined into fused loops.
#[inline(always)]
pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `tanh(x)`: [`tanh_f32`]'s element, inlined into fused loops.
#[inline(always)]
pub(crate) fn tanh(x: f32) -> f32 {
    let z = x * x;
    let small = (-5.704_988_7e-3f32)
        .mul_add(z, 2.063_909e-2)
        .mul_add(z, -5.373_971_6e-2)
        .mul_add(z, 1.333_144_2e-1)
        .mul_add(z, -3.333_328e-1)
        .mul_add(z * x, x);
    let large = 1.0 - 2.0 / (exp(2.0 * x) + 1.0);
    if x.abs() < 0.625 {
        small
    } else {
        large
    }
}

simd_variant! {
    /// `x ← 1 / (1 + e^{−x})` elementwise, finite for every finite input.
    pub fn sigmoid_f32(x: &mut [f32]) {
        x.iter_mut().for_each(|v| *v = sigmoid(*v));
    }
}

simd_variant! {
    /// `x ← tanh(x)` elementwise.
    pub fn tanh_f32(x: &mut [f32]) {
        x.iter_mut().for_each(|v| *v = tanh(*v));
    }
}

simd_variant! {
    /// `x ← e^x` elementwise, for x ≤ 88 (larger x give e^88; below −87.3, e^−87.3).
    pub fn exp_f32(x: &mut [f32]) {
        x.iter_mut().for_each(|v| *v = exp(*v));
    }
}

/// The plain twin of [`sigmoid_f32`]: libm's `exp`.
pub fn sigmoid_f32_ref(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = super::sigmoid(*v));
}

/// The plain twin of [`tanh_f32`]: libm's `tanh`.
pub fn tanh_f32_ref(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = v.tanh());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn compare(fast: fn(&mut [f32]), reference: fn(&mut [f32]), what: &str) {
        let mut rng = Rng::new(11);
        for &n in &[0usize, 1, 7, 15, 16, 17, 31, 32, 33, 63, 64, 65, 1000] {
            for &scale in &[0.01f64, 0.7, 3.0, 12.0, 100.0] {
                let xs: Vec<f32> = (0..n)
                    .map(|_| rng.uniform_in(-scale, scale) as f32)
                    .collect();
                let (mut a, mut b) = (xs.clone(), xs.clone());
                fast(&mut a);
                reference(&mut b);
                for (i, ((&x, &f), &r)) in xs.iter().zip(&a).zip(&b).enumerate() {
                    let tol = 4.0 * f32::EPSILON * r.abs().max(1e-3) + 1e-7;
                    assert!((f - r).abs() <= tol, "{what}({x}) [{i} of {n}]: {f} vs {r}");
                }
            }
        }
        let mut edge = [
            0.0f32,
            -0.0,
            0.625,
            -0.625,
            88.0,
            -88.0,
            1e30,
            -1e30,
            f32::MAX,
            f32::MIN,
        ];
        fast(&mut edge);
        assert!(edge.iter().all(|v| v.is_finite()), "{what}: {edge:?}");
    }

    #[test]
    fn sigmoid_matches_libm() {
        compare(sigmoid_f32, sigmoid_f32_ref, "sigmoid");
    }

    #[test]
    // Miri perturbs libm's results on purpose (floating-point non-determinism), so
    // the 2-ulp comparison says nothing there.
    #[cfg_attr(miri, ignore)]
    fn exp_matches_libm() {
        let xs: Vec<f32> = (0..4000).map(|i| -87.0 + i as f32 * 0.04375).collect();
        let mut fast = xs.clone();
        exp_f32(&mut fast);
        for (&x, &f) in xs.iter().zip(&fast) {
            let r = x.exp();
            assert!(
                (f - r).abs() <= 2.0 * f32::EPSILON * r,
                "exp({x}): {f} vs {r}"
            );
        }
    }

    #[test]
    fn tanh_matches_libm() {
        compare(tanh_f32, tanh_f32_ref, "tanh");
    }
}
