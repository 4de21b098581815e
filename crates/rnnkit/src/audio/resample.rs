//! Band-limited resampling by a Kaiser-windowed sinc at the exact rational ratio.
//!
//! Output sample `j` sits at input time `t = j·from/to`; its value is
//! `Σ_k x[k]·h(t − k)` with `h(τ) = s·r·sinc(s·r·τ)·kaiser(τ·s/Z)`, where
//! `s = min(1, to/from)` puts the cutoff at the lower of the two Nyquist rates,
//! `r = 0.96` leaves the transition band under it (at 16 kHz: pass to ~7.5 kHz, stop by
//! 8 kHz), and `Z = 64` zero crossings of the lower rate's sinc on each side with
//! Kaiser β = 8 give ≈ 80 dB stopband. With `g = gcd(from, to)` the fractional part
//! of `t` takes only `to/g` values, so the kernel is tabulated once per phase.
//! Samples before the start and after the end count as zero. The output has
//! `⌊(n − 1)·to/from⌋ + 1` samples: every output time inside the input.

use crate::error::{Error, Result};

/// Lowest sample rate read or resampled, in Hz.
pub const MIN_SAMPLE_RATE: u32 = 4_000;
/// Highest sample rate read or resampled, in Hz.
pub const MAX_SAMPLE_RATE: u32 = 192_000;

/// Zero crossings of the lower rate's sinc on each side of the centre.
const ZERO_CROSSINGS: f64 = 64.0;
/// Cutoff as a share of the lower Nyquist frequency.
const ROLLOFF: f64 = 0.96;
/// Kaiser window shape: about 80 dB of stopband attenuation.
const KAISER_BETA: f64 = 8.0;
/// Most kernel weights tabulated (4 MiB of f32).
const MAX_TABLE: usize = 1 << 20;

/// `samples` at `from` Hz resampled to `to` Hz; both rates must lie in
/// [`MIN_SAMPLE_RATE`, `MAX_SAMPLE_RATE`]. Equal rates return a copy.
pub fn resample(samples: &[f32], from: u32, to: u32) -> Result<Vec<f32>> {
    for rate in [from, to] {
        if !(MIN_SAMPLE_RATE..=MAX_SAMPLE_RATE).contains(&rate) {
            return Err(Error::Input(format!(
                "sample rate {rate} Hz is outside {MIN_SAMPLE_RATE}–{MAX_SAMPLE_RATE} Hz; \
                 convert the audio, e.g. `sox in.wav -r 16000 out.wav`"
            )));
        }
    }
    if from == to || samples.is_empty() {
        return Ok(samples.to_vec());
    }
    let g = gcd(from as u64, to as u64);
    let (up, down) = (to as u64 / g, from as u64 / g);
    let scale = (to as f64 / from as f64).min(1.0);
    let half_width = ZERO_CROSSINGS / scale;
    let reach = half_width.ceil() as i64;
    let taps = (2 * reach + 1) as usize;
    let kernel_into = |frac: f64, out: &mut [f32]| {
        let (i0_beta, c) = (bessel_i0(KAISER_BETA), scale * ROLLOFF);
        for (d, w) in out.iter_mut().enumerate() {
            let tau = frac - (d as i64 - reach) as f64;
            let x = tau / half_width;
            *w = if x.abs() < 1.0 {
                let window = bessel_i0(KAISER_BETA * (1.0 - x * x).sqrt()) / i0_beta;
                (c * sinc(c * tau) * window) as f32
            } else {
                0.0
            };
        }
    };
    // table[p][d]: weight of input sample i0 + d − reach at phase p/up. Ratios of
    // awkward rates (44 101 → 16 000) have so many phases that the table would be
    // large, and then each output's kernel is computed as it is needed instead.
    let tabulated = up as usize * taps <= MAX_TABLE;
    let mut table = vec![0f32; if tabulated { up as usize * taps } else { taps }];
    if tabulated {
        for (p, row) in table.chunks_exact_mut(taps).enumerate() {
            kernel_into(p as f64 / up as f64, row);
        }
    }
    let n = samples.len() as u64;
    let out_len = ((n - 1) * up / down + 1) as usize;
    let mut out = Vec::with_capacity(out_len);
    for j in 0..out_len as u64 {
        let pos = j * down;
        let (i0, p) = ((pos / up) as i64, (pos % up) as usize);
        let kernel = if tabulated {
            &table[p * taps..(p + 1) * taps]
        } else {
            kernel_into(p as f64 / up as f64, &mut table);
            &table[..]
        };
        let first = i0 - reach;
        // Clip the kernel to the samples that exist; the rest are zero.
        let lo = (-first).max(0) as usize;
        let hi = (n as i64 - first).min(taps as i64) as usize;
        let start = (first + lo as i64) as usize;
        let acc: f32 = kernel[lo..hi]
            .iter()
            .zip(&samples[start..start + (hi - lo)])
            .map(|(w, x)| w * x)
            .sum();
        out.push(acc);
    }
    Ok(out)
}

fn sinc(x: f64) -> f64 {
    if x.abs() < 1e-12 {
        1.0
    } else {
        let px = std::f64::consts::PI * x;
        px.sin() / px
    }
}

/// The modified Bessel function of the first kind, order 0, by its power series
/// (converges fast for the arguments a Kaiser window uses, ≤ β).
fn bessel_i0(x: f64) -> f64 {
    let (mut sum, mut term, half) = (1.0, 1.0, x / 2.0);
    for k in 1..64 {
        term *= half / k as f64;
        let t = term * term;
        sum += t;
        if t < sum * 1e-17 {
            break;
        }
    }
    sum
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_cover_the_input() {
        for (n, from, to, want) in [
            (48_000, 48_000, 16_000, 16_000),
            (8_000, 8_000, 16_000, 15_999),
            (1, 44_100, 16_000, 1),
            (441, 44_100, 16_000, 160),
        ] {
            let out = resample(&vec![0.0; n], from, to).unwrap();
            assert_eq!(out.len(), want, "{n} samples {from} → {to}");
        }
    }

    #[test]
    fn dc_passes_with_unit_gain() {
        for (from, to) in [
            (48_000, 16_000),
            (8_000, 16_000),
            (44_100, 16_000),
            (22_050, 16_000),
        ] {
            let out = resample(&vec![0.5; from as usize], from, to).unwrap();
            let mid = &out[out.len() / 4..3 * out.len() / 4];
            for (i, v) in mid.iter().enumerate() {
                assert!((v - 0.5).abs() < 1e-3, "{from} → {to}: sample {i} is {v}");
            }
        }
    }

    #[test]
    fn refuses_rates_out_of_range() {
        assert!(resample(&[0.0], 3_999, 16_000).is_err());
        assert!(resample(&[0.0], 16_000, 192_001).is_err());
    }

    #[test]
    fn bessel_matches_known_values() {
        assert!((bessel_i0(0.0) - 1.0).abs() < 1e-15);
        assert!((bessel_i0(1.0) - 1.266_065_877_752_008_4).abs() < 1e-12);
        assert!((bessel_i0(8.0) - 427.564_115_721_804_74).abs() < 1e-8);
    }
}
