//! The mel filterbank and the per-frame log energies (steps 2–4 of the module docs).

use super::FeatureConfig;
use realfft::RealFftPlanner;

/// Lowest filter edge in Hz: below it is hum and DC, not speech.
pub const LOW_HZ: f64 = 20.0;
/// Highest filter edge in Hz (or the Nyquist frequency, when lower).
pub const HIGH_HZ: f64 = 8_000.0;
/// Floor under each band's energy before the logarithm, so silence stays finite.
pub const ENERGY_FLOOR: f64 = 1e-10;

/// HTK's mel scale.
pub fn hz_to_mel(hz: f64) -> f64 {
    2595.0 * (1.0 + hz / 700.0).log10()
}

/// Inverse of [`hz_to_mel`].
pub fn mel_to_hz(mel: f64) -> f64 {
    700.0 * (10f64.powf(mel / 2595.0) - 1.0)
}

/// Triangular mel filters over the power spectrum of one configuration, with its window.
#[derive(Clone, Debug)]
pub struct MelBank {
    /// Per band: the first FFT bin it covers and its weights from there on.
    filters: Vec<(usize, Vec<f64>)>,
    window: Vec<f64>,
    n_fft: usize,
    hop: usize,
}

impl MelBank {
    /// The filters and window of `cfg` (assumed valid).
    pub fn new(cfg: &FeatureConfig) -> Self {
        let (win, n_fft) = (cfg.window_len(), cfg.n_fft());
        let rate = cfg.sample_rate as f64;
        let (lo, hi) = (hz_to_mel(LOW_HZ), hz_to_mel(HIGH_HZ.min(rate / 2.0)));
        let step = (hi - lo) / (cfg.bands + 1) as f64;
        let bin_mel: Vec<f64> = (0..=n_fft / 2)
            .map(|k| hz_to_mel(k as f64 * rate / n_fft as f64))
            .collect();
        let filters = (0..cfg.bands)
            .map(|b| {
                let (left, centre, right) = (
                    lo + b as f64 * step,
                    lo + (b + 1) as f64 * step,
                    lo + (b + 2) as f64 * step,
                );
                let weight = |m: f64| {
                    if m > left && m <= centre {
                        (m - left) / (centre - left)
                    } else if m > centre && m < right {
                        (right - m) / (right - centre)
                    } else {
                        0.0
                    }
                };
                let first = bin_mel.iter().position(|&m| m > left).unwrap_or(0);
                let weights: Vec<f64> = bin_mel[first..]
                    .iter()
                    .map(|&m| weight(m))
                    .take_while(|&w| w > 0.0)
                    .collect();
                (first, weights)
            })
            .collect();
        let window = (0..win)
            .map(|i| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / (win - 1) as f64).cos())
            .collect();
        MelBank {
            filters,
            window,
            n_fft,
            hop: cfg.hop_len(),
        }
    }

    /// Number of FFT bins each band covers (0 would be a band that is always the floor).
    pub fn band_widths(&self) -> Vec<usize> {
        self.filters.iter().map(|(_, w)| w.len()).collect()
    }

    /// Centre frequency of each band in Hz.
    pub fn centres_hz(cfg: &FeatureConfig) -> Vec<f64> {
        let rate = cfg.sample_rate as f64;
        let (lo, hi) = (hz_to_mel(LOW_HZ), hz_to_mel(HIGH_HZ.min(rate / 2.0)));
        let step = (hi - lo) / (cfg.bands + 1) as f64;
        (1..=cfg.bands)
            .map(|b| mel_to_hz(lo + b as f64 * step))
            .collect()
    }

    /// `ln(max(e, 1e-10))` of every band's energy in each of `frames` whole frames of
    /// `samples`, row-major `[frames, bands]`; `samples` must hold that many frames.
    pub fn log_energies(&self, samples: &[f32], frames: usize) -> Vec<f64> {
        let win = self.window.len();
        let fft = RealFftPlanner::<f64>::new().plan_fft_forward(self.n_fft);
        let mut input = fft.make_input_vec();
        let mut spectrum = fft.make_output_vec();
        let mut scratch = fft.make_scratch_vec();
        let mut power = vec![0f64; spectrum.len()];
        let mut out = Vec::with_capacity(frames * self.filters.len());
        for t in 0..frames {
            let frame = &samples[t * self.hop..t * self.hop + win];
            let mean = frame.iter().map(|&x| x as f64).sum::<f64>() / win as f64;
            for ((dst, &x), w) in input.iter_mut().zip(frame).zip(&self.window) {
                *dst = (x as f64 - mean) * w;
            }
            input[win..].fill(0.0);
            // Only buffers of the wrong length make realfft fail, and these come from its
            // own planner.
            let done = fft.process_with_scratch(&mut input, &mut spectrum, &mut scratch);
            debug_assert!(done.is_ok(), "realfft buffers sized by its own planner");
            for (p, c) in power.iter_mut().zip(&spectrum) {
                *p = c.norm_sqr();
            }
            for (first, weights) in &self.filters {
                let e: f64 = weights
                    .iter()
                    .zip(&power[*first..])
                    .map(|(w, p)| w * p)
                    .sum();
                out.push(e.max(ENERGY_FLOOR).ln());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mel_scale_round_trips() {
        for hz in [0.0, 20.0, 700.0, 8000.0] {
            assert!((mel_to_hz(hz_to_mel(hz)) - hz).abs() < 1e-9);
        }
        assert!((hz_to_mel(700.0) - 2595.0 * 2f64.log10()).abs() < 1e-9);
    }

    #[test]
    fn validate_refuses_bands_without_a_bin() {
        for rate in [8_000, 16_000, 22_050, 48_000] {
            for bands in [super::super::MIN_BANDS, 40, 80] {
                let cfg = FeatureConfig {
                    sample_rate: rate,
                    bands,
                    ..FeatureConfig::default()
                };
                cfg.validate().unwrap();
                let widths = MelBank::new(&cfg).band_widths();
                assert!(
                    widths.iter().all(|&w| w > 0),
                    "{rate} Hz, {bands} bands: {widths:?}"
                );
            }
        }
        let cfg = FeatureConfig {
            sample_rate: 8_000,
            bands: 128,
            ..FeatureConfig::default()
        };
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("fewer bands"), "{e}");
    }
}
