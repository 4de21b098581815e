//! Speech front end: WAV files ([`read_wav`]), resampling to the feature rate
//! ([`resample()`]) and normalised log-mel filterbank features ([`log_mel`]).
//!
//! The features, per utterance:
//! 1. mono samples in [−1, 1], resampled to [`FeatureConfig::sample_rate`] (16 kHz)
//!    with a Kaiser-windowed sinc ([`resample()`]);
//! 2. frames of `window_ms` (25 ms = 400 samples) every `hop_ms` (10 ms = 160), only
//!    whole frames (Kaldi's `snip_edges`): `1 + (n − window) / hop` frames;
//! 3. each frame: its mean removed (as Kaldi does, so a DC offset does not leak into
//!    the lowest band), a symmetric Hann window `0.5 − 0.5·cos(2πi/(N−1))`, zero
//!    padding to `n_fft`, the next power of two (512), and the power spectrum |X|²;
//!    no pre-emphasis and no dither: under the per-band normalisation of step 5 a
//!    fixed pre-emphasis filter only shifts each band by a near-constant, and
//!    dither would make the features depend on a random seed;
//! 4. `bands` triangular filters on the HTK mel scale `2595·log10(1 + f/700)`,
//!    centres equally spaced in mel from 20 Hz to min(8 kHz, rate/2), each triangle
//!    linear in mel (as Kaldi), unnormalised; `ln(max(e, 1e-10))`;
//! 5. each band shifted to zero mean and scaled to unit (population) variance over
//!    the utterance's frames; a band with a standard deviation under 1e-5 (silence)
//!    is only centred, so it becomes zeros rather than noise blown up.
//!
//! `tools/logmel_reference.py` is the same computation in numpy; the test
//! `tests/audio.rs` matches its fixture.

pub mod augment;
mod mel;
mod resample;
mod wav;

use crate::error::{Error, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub use mel::MelBank;
pub use resample::{resample, MAX_SAMPLE_RATE, MIN_SAMPLE_RATE};
pub use wav::{wav_from_bytes, MAX_WAV_BYTES};

/// How audio becomes features; stored with a model so that prediction computes the same.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FeatureConfig {
    /// Rate the audio is resampled to before framing, in Hz (16000).
    pub sample_rate: u32,
    /// Frame length in milliseconds (25).
    pub window_ms: f32,
    /// Frame step in milliseconds (10).
    pub hop_ms: f32,
    /// Mel bands per frame (40).
    pub bands: usize,
}

impl Default for FeatureConfig {
    fn default() -> Self {
        FeatureConfig {
            sample_rate: 16_000,
            window_ms: 25.0,
            hop_ms: 10.0,
            bands: 40,
        }
    }
}

/// Most mel bands: beyond this the lowest filters hold no FFT bin at 25 ms frames.
pub const MAX_BANDS: usize = 128;
/// Fewest mel bands accepted.
pub const MIN_BANDS: usize = 10;

impl FeatureConfig {
    /// Checks every field; the message names the field and its accepted range.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(msg));
        if !(8_000..=48_000).contains(&self.sample_rate) {
            return bad(format!(
                "feature sample_rate {} Hz is outside 8000–48000 Hz",
                self.sample_rate
            ));
        }
        if !(self.window_ms.is_finite() && (5.0..=100.0).contains(&self.window_ms)) {
            return bad(format!(
                "feature window_ms {} is outside 5–100 ms",
                self.window_ms
            ));
        }
        if !(self.hop_ms.is_finite() && self.hop_ms >= 1.0 && self.hop_ms <= self.window_ms) {
            return bad(format!(
                "feature hop_ms {} must be at least 1 ms and at most window_ms ({})",
                self.hop_ms, self.window_ms
            ));
        }
        if !(MIN_BANDS..=MAX_BANDS).contains(&self.bands) {
            return bad(format!(
                "feature bands {} is outside {MIN_BANDS}–{MAX_BANDS}",
                self.bands
            ));
        }
        let widths = MelBank::new(self).band_widths();
        if let Some(b) = widths.iter().position(|&w| w == 0) {
            return bad(format!(
                "feature bands {}: band {b} falls between two FFT bins at {} Hz with {} ms \
                 frames and would always be silent; use fewer bands or a longer window",
                self.bands, self.sample_rate, self.window_ms
            ));
        }
        Ok(())
    }

    /// Samples per frame at `sample_rate` (400 for 25 ms at 16 kHz).
    pub fn window_len(&self) -> usize {
        (self.sample_rate as f64 * self.window_ms as f64 / 1000.0).round() as usize
    }

    /// Samples between frame starts (160 for 10 ms at 16 kHz).
    pub fn hop_len(&self) -> usize {
        (self.sample_rate as f64 * self.hop_ms as f64 / 1000.0).round() as usize
    }

    /// FFT size: the next power of two at or above the window (512 for 400).
    pub fn n_fft(&self) -> usize {
        self.window_len().next_power_of_two()
    }

    /// Frames of `samples` samples at `sample_rate`: whole frames only; 0 when shorter than one.
    pub fn frames_of(&self, samples: usize) -> usize {
        let (win, hop) = (self.window_len(), self.hop_len());
        if samples < win {
            0
        } else {
            1 + (samples - win) / hop
        }
    }
}

/// Mono audio: samples in [−1, 1] at `sample_rate` Hz.
#[derive(Clone, Debug, PartialEq)]
pub struct Audio {
    /// The samples, channels already mixed down.
    pub samples: Vec<f32>,
    /// Samples per second.
    pub sample_rate: u32,
}

impl Audio {
    /// Length in seconds.
    pub fn seconds(&self) -> f64 {
        self.samples.len() as f64 / self.sample_rate.max(1) as f64
    }
}

/// Features of one utterance: `values` is row-major `[frames, bands]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Features {
    /// Number of frames (time steps).
    pub frames: usize,
    /// Values per frame.
    pub bands: usize,
    /// Frame `t`, band `b` is `values[t * bands + b]`.
    pub values: Vec<f32>,
}

/// Reads a WAV file as mono f32 in [−1, 1] at its own rate (see [`wav_from_bytes`]).
pub fn read_wav(path: &Path) -> Result<Audio> {
    let bytes = crate::data::read_bounded(path, MAX_WAV_BYTES, "a WAV file")?;
    wav_from_bytes(&bytes, &path.display().to_string())
}

/// Normalised log-mel features of `audio` (see the module docs), resampled first
/// when its rate differs from `cfg.sample_rate`.
pub fn log_mel(audio: &Audio, cfg: &FeatureConfig) -> Result<Features> {
    log_mel_named(audio, cfg, "audio")
}

/// [`log_mel`] with `what` naming the audio in errors.
pub(crate) fn log_mel_named(audio: &Audio, cfg: &FeatureConfig, what: &str) -> Result<Features> {
    cfg.validate()?;
    if let Some(i) = audio.samples.iter().position(|x| !x.is_finite()) {
        return Err(Error::Input(format!(
            "{what}: sample {i} is not a finite number; fix the audio"
        )));
    }
    let resampled;
    let samples = if audio.sample_rate == cfg.sample_rate {
        &audio.samples[..]
    } else {
        resampled =
            resample(&audio.samples, audio.sample_rate, cfg.sample_rate).map_err(|e| match e {
                Error::Input(msg) => Error::Input(format!("{what}: {msg}")),
                e => e,
            })?;
        &resampled[..]
    };
    let frames = cfg.frames_of(samples.len());
    if frames == 0 {
        return Err(Error::Input(format!(
            "{what}: {:.1} ms of audio is shorter than one {} ms frame; give a longer recording",
            audio.seconds() * 1000.0,
            cfg.window_ms
        )));
    }
    let bank = MelBank::new(cfg);
    let mut values = bank.log_energies(samples, frames);
    normalise_bands(&mut values, cfg.bands);
    Ok(Features {
        frames,
        bands: cfg.bands,
        values: values.into_iter().map(|v| v as f32).collect(),
    })
}

/// Shifts each band of row-major `[frames, bands]` to zero mean and scales it to unit
/// population variance; a near-constant band (std < 1e-5) is only centred.
fn normalise_bands(values: &mut [f64], bands: usize) {
    let frames = values.len() / bands;
    for b in 0..bands {
        let column = || values.iter().skip(b).step_by(bands);
        let mean = column().sum::<f64>() / frames as f64;
        let var = column().map(|v| (v - mean) * (v - mean)).sum::<f64>() / frames as f64;
        let std = var.sqrt();
        let scale = if std < 1e-5 { 1.0 } else { 1.0 / std };
        for v in values.iter_mut().skip(b).step_by(bands) {
            *v = (*v - mean) * scale;
        }
    }
}

/// Reads a WAV file and computes its features; errors name the file.
pub fn features_of_file(path: &Path, cfg: &FeatureConfig) -> Result<Features> {
    let audio = read_wav(path)?;
    log_mel_named(&audio, cfg, &path.display().to_string())
}

/// [`features_of_file`] for many files in parallel (rayon), results in the given order.
pub fn features_of_files(paths: &[PathBuf], cfg: &FeatureConfig) -> Vec<Result<Features>> {
    paths.par_iter().map(|p| features_of_file(p, cfg)).collect()
}
