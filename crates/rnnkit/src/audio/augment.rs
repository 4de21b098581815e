//! Feature-level augmentation for training a recogniser on few speakers: time
//! stretching (frames resampled by linear interpolation, rate uniform in
//! `[1 − s, 1 + s]`, as speed perturbation does to the audio), a warp of the band
//! axis (band `b` reads band `b·α`, α uniform in `[1 − w, 1 + w]`: a longer or
//! shorter vocal tract, as in vocal tract length perturbation) and SpecAugment masks
//! (Park et al., 2019): bands and spans of frames set to 0, the mean of features
//! normalised per utterance.

use crate::rng::Rng;

/// How much to perturb each training utterance.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Augment {
    /// Largest relative change of the length (0.1: 90 % to 110 %).
    pub stretch: f32,
    /// Largest relative warp of the band axis.
    pub warp: f32,
    /// Frequency masks per utterance.
    pub freq_masks: usize,
    /// Widest frequency mask, in bands.
    pub freq_width: usize,
    /// Time masks per utterance.
    pub time_masks: usize,
    /// Widest time mask, in frames (at most a fifth of the utterance).
    pub time_width: usize,
}

impl Default for Augment {
    fn default() -> Self {
        Augment {
            stretch: 0.1,
            warp: 0.1,
            freq_masks: 2,
            freq_width: 6,
            time_masks: 2,
            time_width: 10,
        }
    }
}

/// A perturbed copy of `values [frames, bands]` and its frame count (at least 1).
pub fn augment(
    values: &[f32],
    frames: usize,
    bands: usize,
    a: &Augment,
    rng: &mut Rng,
) -> (Vec<f32>, usize) {
    let rate = 1.0 + rng.uniform_in(-a.stretch as f64, a.stretch as f64);
    let n = ((frames as f64 / rate).round() as usize).max(1);
    let mut out = vec![0.0f32; n * bands];
    for (t, row) in out.chunks_exact_mut(bands).enumerate() {
        // Output frame t reads input position t·rate, between two frames.
        let x = (t as f64 * rate).min((frames - 1) as f64);
        let (i, w) = (x.floor() as usize, (x - x.floor()) as f32);
        let j = (i + 1).min(frames - 1);
        let (ri, rj) = (&values[i * bands..][..bands], &values[j * bands..][..bands]);
        for ((o, &p), &q) in row.iter_mut().zip(ri).zip(rj) {
            *o = p + w * (q - p);
        }
    }
    let alpha = 1.0 + rng.uniform_in(-a.warp as f64, a.warp as f64);
    if alpha != 1.0 {
        let mut row = vec![0.0f32; bands];
        for frame in out.chunks_exact_mut(bands) {
            for (b, r) in row.iter_mut().enumerate() {
                let x = (b as f64 * alpha).min((bands - 1) as f64);
                let (i, w) = (x.floor() as usize, (x - x.floor()) as f32);
                let j = (i + 1).min(bands - 1);
                *r = frame[i] + w * (frame[j] - frame[i]);
            }
            frame.copy_from_slice(&row);
        }
    }
    for _ in 0..a.freq_masks {
        let width = rng.below(a.freq_width.min(bands) + 1);
        let start = rng.below(bands - width + 1);
        for row in out.chunks_exact_mut(bands) {
            row[start..start + width].fill(0.0);
        }
    }
    let time_width = a.time_width.min(n / 5);
    for _ in 0..a.time_masks {
        let width = rng.below(time_width + 1);
        let start = rng.below(n - width + 1);
        out[start * bands..(start + width) * bands].fill(0.0);
    }
    (out, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stretching_keeps_the_shape_and_masks_zero_whole_bands_and_frames() {
        let (frames, bands) = (50, 8);
        let values: Vec<f32> = (0..frames * bands).map(|i| 1.0 + (i % 7) as f32).collect();
        let mut rng = Rng::new(3);
        for _ in 0..20 {
            let (out, n) = augment(&values, frames, bands, &Augment::default(), &mut rng);
            assert!((45..=56).contains(&n), "{n}");
            assert_eq!(out.len(), n * bands);
            // Every zero is part of a whole masked band or a whole masked frame.
            for t in 0..n {
                for b in 0..bands {
                    if out[t * bands + b] == 0.0 {
                        let frame = out[t * bands..][..bands].iter().all(|&v| v == 0.0);
                        let band = (0..n).all(|s| out[s * bands + b] == 0.0);
                        assert!(frame || band, "({t}, {b})");
                    }
                }
            }
        }
        // No perturbation at all gives the input back.
        let none = Augment {
            stretch: 0.0,
            warp: 0.0,
            freq_masks: 0,
            time_masks: 0,
            ..Default::default()
        };
        assert_eq!(
            augment(&values, frames, bands, &none, &mut rng),
            (values, frames)
        );
        // A single frame stays a frame.
        let (out, n) = augment(&[1.0, 2.0], 1, 2, &Augment::default(), &mut rng);
        assert_eq!((out.len(), n), (2, 1));
    }
}
