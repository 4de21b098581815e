//! An LSTM step's recurrent product in f32 with the cell's update of each group of
//! 16 units done while the next group's rows stream (AVX-512).
//!
//! At batch 1 the product reads `W_hh` at the speed of the loads and leaves the
//! arithmetic units mostly idle, while the update (five `exp`s a unit) is arithmetic
//! with nothing to wait for: after the product it adds its whole time. Here the four
//! gates' groups of one group of units stream together, and the previous group's
//! update runs in six pieces between stretches of 16 steps, each stretch a loop of a
//! fixed count (with stretches whose length is known only at run time, most of the
//! gain went: a probe took 1.42 µs against 1.33 for LSTM 1×128's step).

use super::{PanelVector, Panels, Pass, Streams, Weights, GROUP};

/// A share of an LSTM layer's step: its input side's pre-activations `xp` (`[4, m]`,
/// biases included; the activated gates on return), the recurrent side's `hp`
/// (`[4, m]`, written), and the state `(c_{t-1}, c_t)` and `h_t` of its `m` units.
pub(crate) struct LstmShare<'a> {
    pub(crate) xp: &'a mut [f32],
    pub(crate) hp: &'a mut [f32],
    pub(crate) c: (&'a [f32], &'a mut [f32]),
    pub(crate) h: &'a mut [f32],
}

impl Panels {
    /// `hp = W_hh·x + b_hh` for units `j0..j0 + m` of the four gates' blocks (these
    /// panels) and the LSTM update of those units ([`crate::cell::lstm`]'s, the same
    /// bits as the product and then the update), the groups of units in the pass's
    /// order. Returns false, having done nothing, unless the pass streams four groups
    /// at once (this streams a group of every gate), the panels are f32 on a CPU with
    /// AVX-512 and `m` is a multiple of [`GROUP`]: the caller then does both parts.
    /// A stepper times both ways ([`Streams`]): on a Zen 5 this one took LSTM 1×128's
    /// step on one thread from 1.85 to 1.74 µs, and sampled LSTM 2×512, whose shares
    /// stream from L3, 3 % slower (there the stepper keeps one stream).
    ///
    /// # Panics
    /// If the panels are not four blocks, the units run past a block, or `x` or the
    /// share's buffers have other lengths.
    pub(crate) fn lstm_f32(
        &self,
        j0: usize,
        x: &PanelVector,
        bias: Option<&[f32]>,
        pass: Pass,
        share: LstmShare<'_>,
    ) -> bool {
        let m = share.h.len();
        let taken = pass.streams == Streams::Four
            && self.weights == Weights::F32
            && crate::kernel::avx512_enabled()
            && m.is_multiple_of(GROUP)
            && j0.is_multiple_of(GROUP);
        if !taken {
            return false;
        }
        self.check(x);
        assert!(
            self.blocks == 4
                && j0 + m <= self.block_rows
                && share.xp.len() == 4 * m
                && share.hp.len() == 4 * m
                && share.c.0.len() == m
                && share.c.1.len() == m
                && bias.is_none_or(|b| b.len() == 4 * self.block_rows),
            "an LSTM share of {m} units from {j0} of {} rows",
            self.block_rows
        );
        #[cfg(target_arch = "x86_64")]
        {
            let groups = [0, 1, 2, 3].map(|b| b * self.groups_per_block + j0 / GROUP);
            let bias = bias.map(|b| [0, 1, 2, 3].map(|g| &b[g * self.block_rows + j0..][..m]));
            // SAFETY: the CPU has AVX-512; each gate's groups of the share lie inside
            // the panels (asserted) and `x` holds their steps (checked).
            unsafe { avx512::step(&self.lines, groups, self.steps, x, bias, pass.sweep, share) };
            true
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!(
            "AVX-512 on another architecture: {:?}",
            (bias.is_some(), share.xp.len())
        )
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{LstmShare, GROUP};
    use crate::kernel::panel::{Line, PanelVector, Sweep, CHAINS};
    use crate::tensor::Real;
    use std::arch::x86_64::*;

    /// Steps per stretch between two pieces of the update: four turns of the chains.
    const STRETCH: usize = 4 * CHAINS;

    /// The four gates' chains of one group of units.
    type Chains = [[__m512; CHAINS]; 4];

    /// Pieces the update of a group of units is cut into.
    const PIECES: usize = 6;

    /// Steps `s..s + CHAINS` of the groups at `base` into `acc`, step `s + c` into
    /// chain `c` (as every product of the panels sums them).
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn turn(base: [*const Line; 4], xs: *const f32, s: usize, acc: &mut Chains) {
        for c in 0..CHAINS {
            // SAFETY: the caller's steps lie inside every group and `x`.
            let xb = _mm512_set1_ps(unsafe { *xs.add(s + c) });
            for (a, b) in acc.iter_mut().zip(base) {
                let w = unsafe { _mm512_load_ps(b.add(s + c).cast()) };
                a[c] = _mm512_fmadd_ps(w, xb, a[c]);
            }
        }
    }

    /// Steps `s0..s0 + STRETCH`: a fixed count of turns.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn stretch(base: [*const Line; 4], xs: *const f32, s0: usize, acc: &mut Chains) {
        for t in 0..STRETCH / CHAINS {
            // SAFETY: as the caller's.
            unsafe { turn(base, xs, s0 + t * CHAINS, acc) };
        }
    }

    /// The steps `s0..steps` left after the whole stretches: whole turns, then the
    /// last `steps % CHAINS` into chain 0.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn rest(
        base: [*const Line; 4],
        xs: *const f32,
        s0: usize,
        steps: usize,
        acc: &mut Chains,
    ) {
        let mut s = s0;
        while steps - s >= CHAINS {
            // SAFETY: as the caller's.
            unsafe { turn(base, xs, s, acc) };
            s += CHAINS;
        }
        for s in s..steps {
            // SAFETY: as the caller's.
            let xb = _mm512_set1_ps(unsafe { *xs.add(s) });
            for (a, b) in acc.iter_mut().zip(base) {
                let w = unsafe { _mm512_load_ps(b.add(s).cast()) };
                a[0] = _mm512_fmadd_ps(w, xb, a[0]);
            }
        }
    }

    /// A group's 16 lanes of `v` from `at`.
    #[inline(always)]
    fn lanes(v: &[f32], at: usize) -> [f32; GROUP] {
        v[at..at + GROUP].try_into().expect("a group's lanes")
    }

    /// Gate `k`'s activation (σ, or tanh for `g`) of units `j..j + 16` from both
    /// sides' pre-activations, in local arrays (through the share's slices the
    /// loops stayed scalar: the compiler cannot tell they do not overlap).
    #[inline(always)]
    fn gate(xp: &[f32], hp: &[f32], m: usize, k: usize, j: usize) -> [f32; GROUP] {
        let (a, r) = (lanes(xp, k * m + j), lanes(hp, k * m + j));
        let mut out = [0.0; GROUP];
        for l in 0..GROUP {
            out[l] = if k == 2 {
                (a[l] + r[l]).tanh_one()
            } else {
                (a[l] + r[l]).sigmoid_one()
            };
        }
        out
    }

    /// See [`super::Panels::lstm_f32`].
    ///
    /// # Safety
    /// The CPU has AVX-512; `lines` holds `steps` lines for each of the `m / 16`
    /// groups from each of `groups`, and `x` is prepared for `steps` f32 steps.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn step(
        lines: &[Line],
        groups: [usize; 4],
        steps: usize,
        x: &PanelVector,
        bias: Option<[&[f32]; 4]>,
        sweep: Sweep,
        share: LstmShare<'_>,
    ) {
        let LstmShare {
            xp,
            hp,
            c: (c_prev, c),
            h,
        } = share;
        let m = h.len();
        let xs = x.values.as_ptr();
        let whole = steps / STRETCH;
        // The update of units `j..j + 16`, a gate at a time, then `c` and `tanh(c)`,
        // then `h` and the activated gates (lstm.rs's equations).
        let (mut i, mut f, mut g, mut o, mut tanh_c) = (
            [0.0; GROUP],
            [0.0; GROUP],
            [0.0; GROUP],
            [0.0; GROUP],
            [0.0; GROUP],
        );
        macro_rules! piece {
            ($k:expr, $j:expr) => {{
                let j = $j;
                match $k {
                    0 => i = gate(xp, hp, m, 0, j),
                    1 => f = gate(xp, hp, m, 1, j),
                    2 => g = gate(xp, hp, m, 2, j),
                    3 => o = gate(xp, hp, m, 3, j),
                    4 => {
                        let (cp, mut cn) = (lanes(c_prev, j), [0.0; GROUP]);
                        for l in 0..GROUP {
                            cn[l] = f[l] * cp[l] + i[l] * g[l];
                            tanh_c[l] = cn[l].tanh_one();
                        }
                        c[j..j + GROUP].copy_from_slice(&cn);
                    }
                    _ => {
                        let mut hn = [0.0; GROUP];
                        for l in 0..GROUP {
                            hn[l] = o[l] * tanh_c[l];
                        }
                        h[j..j + GROUP].copy_from_slice(&hn);
                        for (k, act) in [i, f, g, o].iter().enumerate() {
                            xp[k * m + j..][..GROUP].copy_from_slice(act);
                        }
                    }
                }
            }};
        }
        let mut done: Option<usize> = None;
        for u in sweep.order(m / GROUP) {
            // SAFETY: the caller guarantees the groups' lines.
            let base = groups.map(|first| unsafe { lines.as_ptr().add((first + u) * steps) });
            let mut acc: Chains = [[_mm512_setzero_ps(); CHAINS]; 4];
            let mut s0 = 0;
            // The previous group's pieces after the first stretches (all after the
            // product where it has fewer).
            for k in 0..PIECES {
                if k < whole {
                    unsafe { stretch(base, xs, s0, &mut acc) };
                    s0 += STRETCH;
                }
                if let Some(v) = done.filter(|_| k < whole) {
                    piece!(k, v * GROUP);
                }
            }
            for _ in PIECES..whole {
                unsafe { stretch(base, xs, s0, &mut acc) };
                s0 += STRETCH;
            }
            unsafe { rest(base, xs, s0, steps, &mut acc) };
            if let Some(v) = done.filter(|_| whole < PIECES) {
                for k in whole..PIECES {
                    piece!(k, v * GROUP);
                }
            }
            // The sums made outputs in registers, then stored.
            for (k, a) in acc.iter().enumerate() {
                let mut sum = _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]));
                if let Some(b) = bias {
                    sum = _mm512_add_ps(sum, _mm512_loadu_ps(b[k][u * GROUP..][..GROUP].as_ptr()));
                }
                let out = &mut hp[k * m + u * GROUP..][..GROUP];
                // SAFETY: `out` is 16 lanes.
                unsafe { _mm512_storeu_ps(out.as_mut_ptr(), sum) };
            }
            done = Some(u);
        }
        if let Some(v) = done {
            for k in 0..PIECES {
                piece!(k, v * GROUP);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Sweep;
    use super::*;
    use crate::cell::{lstm, Projection};
    use crate::rng::Rng;

    /// Against the product and then the update, bit for bit: shares from a later
    /// group, both sweeps, with and without a bias, columns that fill six stretches
    /// and more, fewer, and not whole turns of the chains.
    #[test]
    fn the_step_is_the_product_then_the_update() {
        let mut rng = Rng::new(12);
        for (rows, cols) in [(64, 128), (48, 37), (32, 200), (16, 100), (32, 5)] {
            let w: Vec<f32> = (0..4 * rows * cols)
                .map(|_| rng.uniform_in(-0.3, 0.3) as f32)
                .collect();
            let p = Panels::new(&w, cols, 4, Weights::F32);
            let x: Vec<f32> = (0..cols)
                .map(|_| rng.uniform_in(-1.0, 1.0) as f32)
                .collect();
            let mut v = PanelVector::default();
            v.set(&x, Weights::F32);
            let bias: Vec<f32> = (0..4 * rows)
                .map(|_| rng.uniform_in(-1.0, 1.0) as f32)
                .collect();
            for (j0, m) in [(0, rows), (16, rows - 16), (rows - 16, 16)] {
                if m == 0 {
                    continue;
                }
                let input: Vec<f32> = (0..4 * m)
                    .map(|_| rng.uniform_in(-2.0, 2.0) as f32)
                    .collect();
                let c_prev: Vec<f32> = (0..m).map(|_| rng.uniform_in(-1.0, 1.0) as f32).collect();
                for sweep in [Sweep::Forward, Sweep::Backward] {
                    for bias in [None, Some(&bias[..])] {
                        let at = format!("{rows}×{cols} {j0}+{m} {sweep:?} {}", bias.is_some());
                        let (mut xp, mut hp) = (input.clone(), vec![0.0; 4 * m]);
                        let (mut c, mut h) = (vec![0.0; m], vec![0.0; m]);
                        let pass = Pass {
                            sweep,
                            streams: Streams::Four,
                        };
                        p.dot_blocks(0..4, j0, &v, bias, &mut hp, pass);
                        let (mut tanh_c, mut y) = (vec![0.0; m], vec![0.0; m]);
                        lstm::step(
                            &mut xp,
                            Projection::Here,
                            &hp,
                            (&c_prev, &mut c),
                            &mut tanh_c,
                            &mut h,
                            &mut y,
                        );
                        let (mut xp2, mut hp2) = (input.clone(), vec![f32::NAN; 4 * m]);
                        let (mut c2, mut h2) = (vec![f32::NAN; m], vec![f32::NAN; m]);
                        let share = LstmShare {
                            xp: &mut xp2,
                            hp: &mut hp2,
                            c: (&c_prev, &mut c2),
                            h: &mut h2,
                        };
                        if !p.lstm_f32(j0, &v, bias, pass, share) {
                            // No AVX-512 here (or turned off): nothing to compare.
                            assert!(!crate::kernel::avx512_enabled(), "{at}: not taken");
                            return;
                        }
                        let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&hp2), bits(&hp), "{at}: recurrent side");
                        assert_eq!(bits(&xp2), bits(&xp), "{at}: gates");
                        assert_eq!(bits(&c2), bits(&c), "{at}: c");
                        assert_eq!(bits(&h2), bits(&h), "{at}: h");
                    }
                }
            }
        }
    }

    #[test]
    fn other_panels_passes_and_partial_groups_are_left_to_the_caller() {
        let four = Pass {
            sweep: Sweep::Forward,
            streams: Streams::Four,
        };
        // Whether the step of `m` units of panels of 32 rows a gate was taken.
        let taken = |weights: Weights, m: usize, pass: Pass| {
            let p = Panels::new(&[0.5; 4 * 32 * 8], 8, 4, weights);
            let mut v = PanelVector::default();
            v.set(&[1.0; 8], weights);
            let (mut xp, mut hp, mut c, mut h) = (
                vec![0.0; 4 * m],
                vec![0.0; 4 * m],
                vec![0.0; m],
                vec![0.0; m],
            );
            let c_prev = vec![0.0; m];
            let share = LstmShare {
                xp: &mut xp,
                hp: &mut hp,
                c: (&c_prev, &mut c),
                h: &mut h,
            };
            p.lstm_f32(0, &v, None, pass, share)
        };
        assert!(!taken(Weights::Bf16, 32, four));
        assert!(!taken(Weights::Int8, 32, four));
        assert!(!taken(Weights::F32, 24, four), "a partial group");
        assert!(!taken(Weights::F32, 32, Pass::default()), "one stream");
        assert_eq!(
            taken(Weights::F32, 32, four),
            crate::kernel::avx512_enabled()
        );
    }
}
