//! WAV files decoded with `hound`: PCM 8, 16, 24 and 32-bit integers and 32-bit
//! floats, any channel count (averaged to mono), rates from 4 to 192 kHz.
//!
//! The whole file is read first (bounded by [`MAX_WAV_BYTES`]), so the header's
//! sample count can be checked against the bytes that really exist before anything
//! is allocated for it: a truncated file, or one whose header was never finished by
//! a streaming writer (a data length of 0xFFFFFFFF), is refused instead of trusted.
//! hound 3.5 returns errors, not panics, for the malformed headers it meets (checked
//! against its source and by the `wav` fuzz target).

use super::resample::{MAX_SAMPLE_RATE, MIN_SAMPLE_RATE};
use super::Audio;
use crate::error::{Error, Result};

/// Largest WAV file read: over two hours of 16 kHz 16-bit mono. Decoding needs at
/// most four times the file's size again (f32 samples), so memory stays bounded.
pub const MAX_WAV_BYTES: u64 = 256 << 20;

/// What a user can do about a WAV file this reader cannot use.
const CONVERT: &str = "convert it to 16-bit PCM WAV, e.g. `sox in -b 16 out.wav` or \
                       `ffmpeg -i in -c:a pcm_s16le out.wav`";

/// Decodes the bytes of a WAV file to mono f32 in [−1, 1] at the file's rate; `what`
/// names the file in errors. Integers are scaled by 2^(bits−1); floats are clamped to
/// [−1, 1] and refused when not finite; channels are averaged.
pub fn wav_from_bytes(bytes: &[u8], what: &str) -> Result<Audio> {
    let fail = |msg: String| Error::Input(format!("{what}: {msg}"));
    if bytes.is_empty() {
        return Err(fail(format!(
            "the file is empty, not a WAV file; {CONVERT}"
        )));
    }
    if bytes.len() < 12 || &bytes[8..12] != b"WAVE" || !matches!(&bytes[..4], b"RIFF") {
        let kind = match bytes.get(..4) {
            Some(b"RF64") => "an RF64 file (WAV over 4 GiB), which is not supported",
            Some(b"RIFX") => "a big-endian RIFX file, which is not supported",
            _ => "not a WAV file (no RIFF/WAVE header)",
        };
        return Err(fail(format!("{kind}; {CONVERT}")));
    }
    let reader = hound::WavReader::new(bytes).map_err(|e| fail(describe(e)))?;
    let spec = reader.spec();
    let channels = spec.channels as usize;
    if !(MIN_SAMPLE_RATE..=MAX_SAMPLE_RATE).contains(&spec.sample_rate) {
        return Err(fail(format!(
            "sample rate {} Hz is outside {MIN_SAMPLE_RATE}–{MAX_SAMPLE_RATE} Hz; \
             resample it, e.g. `sox in.wav -r 16000 out.wav`",
            spec.sample_rate
        )));
    }
    let supported = match spec.sample_format {
        hound::SampleFormat::Int => matches!(spec.bits_per_sample, 8 | 16 | 24 | 32),
        hound::SampleFormat::Float => spec.bits_per_sample == 32,
    };
    if !supported {
        return Err(fail(format!(
            "{}-bit {} samples are not supported (only 8, 16, 24, 32-bit integers and \
             32-bit floats); {CONVERT}",
            spec.bits_per_sample,
            if spec.sample_format == hound::SampleFormat::Int {
                "integer"
            } else {
                "float"
            }
        )));
    }
    // The header's count against the bytes present, before allocating for it.
    let declared = reader.len() as u64;
    let needed = declared * (spec.bits_per_sample as u64 / 8);
    if needed > bytes.len() as u64 {
        return Err(fail(format!(
            "truncated: the header promises {declared} samples ({needed} bytes) but the file \
             has only {} bytes; re-export or re-download it",
            bytes.len()
        )));
    }
    if declared == 0 {
        return Err(fail(
            "no samples (the data chunk is empty); record or export it again".into(),
        ));
    }
    let frames = declared as usize / channels;
    let mut samples = Vec::with_capacity(frames);
    // hound reads from memory here, so an I/O error can only mean the bytes ran out.
    let read_error = |e: hound::Error| match e {
        hound::Error::IoError(_) => {
            fail("truncated: the data chunk ends early; re-export or re-download it".into())
        }
        e => fail(describe(e)),
    };
    match spec.sample_format {
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample - 1)) as f64;
            mix_down(
                reader
                    .into_samples::<i32>()
                    .map(|s| s.map(|v| v as f64 * scale)),
                channels,
                &mut samples,
            )
            .map_err(read_error)?;
        }
        hound::SampleFormat::Float => {
            let mut bad = None;
            mix_down(
                reader.into_samples::<f32>().enumerate().map(|(i, s)| {
                    s.map(|v| {
                        if !v.is_finite() && bad.is_none() {
                            bad = Some(i);
                        }
                        v as f64
                    })
                }),
                channels,
                &mut samples,
            )
            .map_err(read_error)?;
            if let Some(i) = bad {
                return Err(fail(format!(
                    "sample {i} is not a finite number (NaN or infinity); fix the recording"
                )));
            }
        }
    }
    Ok(Audio {
        samples,
        sample_rate: spec.sample_rate,
    })
}

/// Averages each group of `channels` interleaved samples into `out`, clamped to [−1, 1].
fn mix_down(
    interleaved: impl Iterator<Item = hound::Result<f64>>,
    channels: usize,
    out: &mut Vec<f32>,
) -> hound::Result<()> {
    let (mut sum, mut k) = (0.0, 0);
    for s in interleaved {
        sum += s?;
        k += 1;
        if k == channels {
            out.push((sum / channels as f64).clamp(-1.0, 1.0) as f32);
            (sum, k) = (0.0, 0);
        }
    }
    Ok(())
}

/// One clause saying what hound found wrong and what to do.
fn describe(e: hound::Error) -> String {
    match e {
        // The bytes are in memory: an I/O error can only mean that they ran out.
        hound::Error::IoError(_) => {
            "truncated: the file ends inside its header; re-export or re-download it".into()
        }
        hound::Error::FormatError(msg) => format!("malformed WAV file ({msg}); {CONVERT}"),
        hound::Error::Unsupported => format!(
            "unsupported WAV encoding (compressed, e.g. ADPCM or µ-law, or an unknown format); \
             {CONVERT}"
        ),
        hound::Error::TooWide | hound::Error::InvalidSampleFormat => {
            format!("unsupported sample format; {CONVERT}")
        }
        hound::Error::UnfinishedSample => {
            "truncated: the last sample is incomplete; re-export it".into()
        }
    }
}
