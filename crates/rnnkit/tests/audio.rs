//! The speech front end: WAV decoding of every supported encoding and refusal of bad
//! files, resampling, log-mel features against the numpy reference, and manifests.
//! Fixtures: `~/torch/bin/python tools/logmel_reference.py` (writes `tests/fixtures/audio/`).

use rnnkit::audio::{
    features_of_file, features_of_files, log_mel, read_wav, resample, wav_from_bytes, Audio,
    FeatureConfig, MelBank, MAX_WAV_BYTES,
};
use rnnkit::checkpoint::TensorFile;
use rnnkit::data::read_manifest;
use std::f64::consts::PI;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/audio")
        .join(name)
}

/// A WAV file's bytes with the given fmt fields and data, built by hand so that
/// headers can be wrong on purpose.
fn wav_bytes(format_tag: u16, channels: u16, rate: u32, bits: u16, data: &[u8]) -> Vec<u8> {
    let block_align = channels * bits / 8;
    let mut b = Vec::new();
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&format_tag.to_le_bytes());
    b.extend_from_slice(&channels.to_le_bytes());
    b.extend_from_slice(&rate.to_le_bytes());
    b.extend_from_slice(&(rate * block_align as u32).to_le_bytes());
    b.extend_from_slice(&block_align.to_le_bytes());
    b.extend_from_slice(&bits.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&(data.len() as u32).to_le_bytes());
    b.extend_from_slice(data);
    b
}

/// 16-bit PCM bytes of `samples` (in [−1, 1]).
fn pcm16(samples: &[f64]) -> Vec<u8> {
    samples
        .iter()
        .flat_map(|&x| ((x * 32767.0).round() as i16).to_le_bytes())
        .collect()
}

fn tone(freq: f64, rate: u32, seconds: f64, amplitude: f64) -> Vec<f64> {
    (0..(rate as f64 * seconds) as usize)
        .map(|i| amplitude * (2.0 * PI * freq * i as f64 / rate as f64).sin())
        .collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The error of reading `bytes` as a WAV file named `name`, as text.
fn wav_error(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = write(dir, name, bytes);
    let e = features_of_file(&path, &FeatureConfig::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains(name), "the error names the file: {e}");
    assert!(!e.contains('\n'), "one line: {e}");
    e
}

#[test]
fn features_match_the_numpy_reference() {
    let want = TensorFile::open(fixture("logmel.safetensors")).unwrap();
    for (file, bands, name) in [
        ("mono16k.wav", 40, "mono16k_b40"),
        ("mono16k.wav", 80, "mono16k_b80"),
        ("stereo22k.wav", 40, "stereo22k_b40"),
    ] {
        let cfg = FeatureConfig {
            bands,
            ..FeatureConfig::default()
        };
        let got = features_of_file(&fixture(file), &cfg).unwrap();
        let shape = want.shape(name).unwrap();
        assert_eq!(
            [got.frames, got.bands],
            [shape[0], shape[1]],
            "{name}: shape"
        );
        let want = want.get::<f32>(name, None).unwrap();
        let (i, err) = got
            .values
            .iter()
            .zip(want.data())
            .map(|(a, b)| (a - b).abs())
            .enumerate()
            .fold((0, 0f32), |m, (i, e)| if e > m.1 { (i, e) } else { m });
        assert!(
            err < 1e-4,
            "{name}: frame {} band {} is off by {err}",
            i / bands,
            i % bands
        );
    }
}

#[test]
fn a_pure_tone_peaks_in_the_band_around_its_frequency() {
    let cfg = FeatureConfig::default();
    let centres = MelBank::centres_hz(&cfg);
    let bank = MelBank::new(&cfg);
    for nearest in [3, 12, 25, 36] {
        let freq = centres[nearest];
        let x: Vec<f32> = tone(freq, 16_000, 0.3, 0.5)
            .iter()
            .map(|&v| v as f32)
            .collect();
        let frames = cfg.frames_of(x.len());
        let energies = bank.log_energies(&x, frames);
        for t in 0..frames {
            let row = &energies[t * cfg.bands..(t + 1) * cfg.bands];
            let peak = (0..cfg.bands)
                .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                .unwrap();
            assert_eq!(
                peak, nearest,
                "{freq} Hz, frame {t}: peak in band {peak} ({:.0} Hz), want {nearest} ({:.0} Hz)",
                centres[peak], centres[nearest]
            );
        }
    }
}

#[test]
fn frame_counts_are_whole_frames() {
    let cfg = FeatureConfig::default();
    assert_eq!(
        (cfg.window_len(), cfg.hop_len(), cfg.n_fft()),
        (400, 160, 512)
    );
    for (n, frames) in [(400, 1), (559, 1), (560, 2), (16_000, 98)] {
        let audio = Audio {
            samples: vec![0.01; n],
            sample_rate: 16_000,
        };
        let f = log_mel(&audio, &cfg).unwrap();
        assert_eq!(
            (f.frames, f.bands, f.values.len()),
            (frames, 40, frames * 40),
            "{n} samples"
        );
    }
    // 0.5 s at 8 kHz resamples to 7999 samples at 16 kHz: 1 + (7999 − 400) / 160 frames.
    let audio = Audio {
        samples: tone(440.0, 8_000, 0.5, 0.3)
            .iter()
            .map(|&v| v as f32)
            .collect(),
        sample_rate: 8_000,
    };
    assert_eq!(log_mel(&audio, &cfg).unwrap().frames, 48);
    // Digital silence gives zeros, not NaN.
    let silent = Audio {
        samples: vec![0.0; 1600],
        sample_rate: 16_000,
    };
    let values = log_mel(&silent, &cfg).unwrap().values;
    assert!(values.iter().all(|v| v.abs() < 1e-6), "silence: {values:?}");
}

#[test]
fn every_band_has_zero_mean_and_unit_variance() {
    let f = features_of_file(&fixture("mono16k.wav"), &FeatureConfig::default()).unwrap();
    for b in 0..f.bands {
        let col: Vec<f64> = (0..f.frames)
            .map(|t| f.values[t * f.bands + b] as f64)
            .collect();
        let mean = col.iter().sum::<f64>() / f.frames as f64;
        let var = col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / f.frames as f64;
        assert!(
            mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-4,
            "band {b}: {mean}, {var}"
        );
    }
}

#[test]
fn resampling_a_tone_keeps_its_frequency() {
    for from in [
        8_000, 11_025, 22_050, 24_000, 32_000, 44_100, 48_000, 96_000,
    ] {
        for freq in [440.0, 1000.0, 3000.0] {
            let x: Vec<f32> = tone(freq, from, 0.5, 0.5)
                .iter()
                .map(|&v| v as f32)
                .collect();
            let y = resample(&x, from, 16_000).unwrap();
            let ideal = tone(freq, 16_000, 0.5, 0.5);
            // Away from the edges, where the kernel runs off the signal.
            let (lo, hi) = (400, y.len().min(ideal.len()) - 400);
            let err = (lo..hi)
                .map(|j| (y[j] as f64 - ideal[j]).abs())
                .fold(0.0, f64::max);
            assert!(err < 2e-3, "{freq} Hz at {from} → 16000 Hz: off by {err}");
        }
    }
}

#[test]
fn resampling_down_removes_what_would_alias() {
    // 12 kHz is above the 8 kHz Nyquist frequency of 16 kHz: it must vanish, not fold to 4 kHz.
    let x: Vec<f32> = tone(12_000.0, 48_000, 0.5, 0.5)
        .iter()
        .map(|&v| v as f32)
        .collect();
    let y = resample(&x, 48_000, 16_000).unwrap();
    let mid = &y[400..y.len() - 400];
    let rms = (mid.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / mid.len() as f64).sqrt();
    assert!(rms < 1e-3, "rms {rms} of a 12 kHz tone after 48 → 16 kHz");
}

#[test]
fn reads_every_supported_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let values = [0.0, 0.5, -0.5, 0.25];
    for (bits, format) in [
        (8, hound::SampleFormat::Int),
        (16, hound::SampleFormat::Int),
        (24, hound::SampleFormat::Int),
        (32, hound::SampleFormat::Int),
        (32, hound::SampleFormat::Float),
    ] {
        for channels in [1u16, 2, 6] {
            let path = dir.path().join(format!("{bits}_{format:?}_{channels}.wav"));
            let spec = hound::WavSpec {
                channels,
                sample_rate: 44_100,
                bits_per_sample: bits,
                sample_format: format,
            };
            let mut w = hound::WavWriter::create(&path, spec).unwrap();
            for &v in &values {
                for c in 0..channels {
                    // Channel c holds v·(1 + c/10) and its mirror, so the mean is v.
                    let ch = if c % 2 == 0 { v * 1.1 } else { v * 0.9 };
                    let ch = if channels == 1 { v } else { ch };
                    match format {
                        hound::SampleFormat::Float => w.write_sample(ch as f32).unwrap(),
                        hound::SampleFormat::Int => {
                            let max = (1i64 << (bits - 1)) as f64;
                            w.write_sample((ch * max).round() as i32).unwrap()
                        }
                    }
                }
            }
            w.finalize().unwrap();
            let audio = read_wav(&path).unwrap();
            assert_eq!(audio.sample_rate, 44_100);
            assert_eq!(audio.samples.len(), values.len(), "{}", path.display());
            let tol = 2.0 / (1u64 << (bits - 1)) as f32 + 1e-6;
            for (got, want) in audio.samples.iter().zip(values) {
                assert!(
                    (got - want as f32).abs() <= tol,
                    "{}: {got} vs {want}",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn float_samples_are_clamped_and_must_be_finite() {
    let data: Vec<u8> = [2.0f32, -3.0, 0.5]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let audio = wav_from_bytes(&wav_bytes(3, 1, 16_000, 32, &data), "f.wav").unwrap();
    assert_eq!(audio.samples, [1.0, -1.0, 0.5]);
    let data: Vec<u8> = [0.0f32, f32::NAN]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let e = wav_from_bytes(&wav_bytes(3, 1, 16_000, 32, &data), "f.wav").unwrap_err();
    assert!(
        e.to_string().contains("sample 1 is not a finite number"),
        "{e}"
    );
}

#[test]
fn refuses_bad_files_with_a_message_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = wav_bytes(1, 1, 16_000, 16, &pcm16(&tone(440.0, 16_000, 0.1, 0.5)));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("text.wav", b"path\ttranscript\n".to_vec(), "not a WAV file"),
        ("empty.wav", Vec::new(), "the file is empty"),
        (
            "rf64.wav",
            [b"RF64".as_slice(), &good[4..]].concat(),
            "RF64",
        ),
        ("header_cut.wav", good[..30].to_vec(), "truncated"),
        (
            "data_cut.wav",
            good[..good.len() - 100].to_vec(),
            "truncated",
        ),
        (
            "no_samples.wav",
            wav_bytes(1, 1, 16_000, 16, &[]),
            "no samples",
        ),
        (
            "short.wav",
            wav_bytes(1, 1, 16_000, 16, &pcm16(&[0.1; 399])),
            "shorter than one 25 ms frame",
        ),
        (
            "adpcm.wav",
            wav_bytes(2, 1, 16_000, 16, &pcm16(&[0.1; 800])),
            "unsupported WAV encoding",
        ),
        (
            "float64.wav",
            wav_bytes(3, 1, 16_000, 64, &[0; 64]),
            "malformed WAV file",
        ),
        (
            "slow.wav",
            wav_bytes(1, 1, 1_000, 16, &pcm16(&[0.1; 800])),
            "sample rate 1000 Hz is outside",
        ),
        (
            "fast.wav",
            wav_bytes(1, 1, 400_000, 16, &pcm16(&[0.1; 800])),
            "sample rate 400000 Hz is outside",
        ),
    ];
    for (name, bytes, needle) in cases {
        let e = wav_error(d, name, &bytes);
        assert!(e.contains(needle), "{name}: {e}");
    }
    // A header that claims ~4 GiB of samples in a tiny file: refused before allocating.
    let mut huge = good.clone();
    let at = huge.len() - pcm16(&tone(440.0, 16_000, 0.1, 0.5)).len() - 4;
    huge[at..at + 4].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    let e = wav_error(d, "huge.wav", &huge);
    assert!(e.contains("promises 2147483640 samples"), "{e}");
    // A file over the size limit is refused from its length alone (a sparse file).
    let big = d.join("big.wav");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(MAX_WAV_BYTES + 1)
        .unwrap();
    let e = read_wav(&big).unwrap_err().to_string();
    assert!(e.contains("big.wav") && e.contains("limit"), "{e}");
    // A missing file is an I/O error naming it.
    let e = read_wav(&d.join("absent.wav")).unwrap_err().to_string();
    assert!(e.contains("absent.wav"), "{e}");
}

#[test]
fn many_files_in_parallel_keep_their_order_and_their_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for (i, secs) in [0.3, 0.01, 0.5].into_iter().enumerate() {
        let bytes = wav_bytes(1, 1, 16_000, 16, &pcm16(&tone(500.0, 16_000, secs, 0.3)));
        paths.push(write(dir.path(), &format!("{i}.wav"), &bytes));
    }
    let out = features_of_files(&paths, &FeatureConfig::default());
    assert_eq!(out[0].as_ref().unwrap().frames, 28);
    assert!(out[1].as_ref().unwrap_err().to_string().contains("1.wav"));
    assert_eq!(out[2].as_ref().unwrap().frames, 48);
}

#[test]
fn feature_config_defaults_validate_and_round_trip() {
    let cfg = FeatureConfig::default();
    assert_eq!(
        (cfg.sample_rate, cfg.window_ms, cfg.hop_ms, cfg.bands),
        (16_000, 25.0, 10.0, 40)
    );
    cfg.validate().unwrap();
    let json = serde_json::to_string(&cfg).unwrap();
    assert_eq!(serde_json::from_str::<FeatureConfig>(&json).unwrap(), cfg);
    let partial: FeatureConfig = serde_json::from_str(r#"{"bands": 80}"#).unwrap();
    assert_eq!(partial.bands, 80);
    assert_eq!(partial.sample_rate, 16_000);
    for (bad, field) in [
        (
            FeatureConfig {
                bands: 4,
                ..cfg.clone()
            },
            "bands",
        ),
        (
            FeatureConfig {
                bands: 1000,
                ..cfg.clone()
            },
            "bands",
        ),
        (
            FeatureConfig {
                sample_rate: 1000,
                ..cfg.clone()
            },
            "sample_rate",
        ),
        (
            FeatureConfig {
                window_ms: f32::NAN,
                ..cfg.clone()
            },
            "window_ms",
        ),
        (
            FeatureConfig {
                hop_ms: 30.0,
                ..cfg.clone()
            },
            "hop_ms",
        ),
        (
            FeatureConfig {
                hop_ms: 0.0,
                ..cfg.clone()
            },
            "hop_ms",
        ),
    ] {
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains(field), "{bad:?}: {e}");
        let audio = Audio {
            samples: vec![0.0; 16_000],
            sample_rate: 16_000,
        };
        assert!(log_mel(&audio, &bad).is_err());
    }
}

#[test]
fn manifests_resolve_paths_and_name_the_bad_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("wav")).unwrap();
    let bytes = wav_bytes(1, 1, 16_000, 16, &pcm16(&tone(500.0, 16_000, 0.1, 0.3)));
    let a = write(d, "wav/a.wav", &bytes);
    let manifest = d.join("train.tsv");
    let text = format!(
        "# path\ttranscript\nwav/a.wav\t12 345\n\n{}\toh four\n",
        a.display()
    );
    std::fs::write(&manifest, text).unwrap();
    let u = read_manifest(&manifest).unwrap();
    assert_eq!(u.len(), 2);
    assert_eq!(
        (u[0].path.clone(), u[0].transcript.as_str(), u[0].line),
        (a.clone(), "12 345", 2)
    );
    assert_eq!(
        (u[1].path.clone(), u[1].transcript.as_str(), u[1].line),
        (a, "oh four", 4)
    );
    features_of_file(&u[0].path, &FeatureConfig::default()).unwrap();

    std::fs::write(&manifest, "wav/a.wav\t1\nwav/b.wav\t2\n").unwrap();
    let e = read_manifest(&manifest).unwrap_err().to_string();
    assert!(
        e.contains("train.tsv:2:") && e.contains("b.wav") && e.contains("does not exist"),
        "{e}"
    );
    std::fs::write(&manifest, "wav/a.wav 1\n").unwrap();
    let e = read_manifest(&manifest).unwrap_err().to_string();
    assert!(e.contains("train.tsv:1:") && e.contains("no tab"), "{e}");
    std::fs::write(&manifest, "wav/a.wav\t\n").unwrap();
    let e = read_manifest(&manifest).unwrap_err().to_string();
    assert!(
        e.contains("train.tsv:1:") && e.contains("transcript is empty"),
        "{e}"
    );
    std::fs::write(&manifest, b"wav/a.wav\t\xff\n").unwrap();
    let e = read_manifest(&manifest).unwrap_err().to_string();
    assert!(e.contains("train.tsv:1:") && e.contains("UTF-8"), "{e}");
}

/// Reads every utterance of a generated data set (`tools/make_digits.py`) and reports
/// the feature throughput: `RNNKIT_DIGITS=data/digits cargo test -p rnnkit --test library
/// audio:: -- --ignored --nocapture`.
#[test]
#[ignore = "needs a data set made by tools/make_digits.py in $RNNKIT_DIGITS"]
fn a_generated_digit_set_reads_whole() {
    let Some(dir) = std::env::var_os("RNNKIT_DIGITS") else {
        panic!("set RNNKIT_DIGITS to the folder made by tools/make_digits.py");
    };
    let cfg = FeatureConfig::default();
    for split in ["train", "dev", "test"] {
        let u = read_manifest(&Path::new(&dir).join(format!("{split}.tsv"))).unwrap();
        let paths: Vec<PathBuf> = u.iter().map(|u| u.path.clone()).collect();
        let start = std::time::Instant::now();
        let feats = features_of_files(&paths, &cfg);
        let secs = start.elapsed().as_secs_f64();
        let frames: usize = feats.iter().map(|f| f.as_ref().unwrap().frames).sum();
        println!(
            "{split}: {} utterances, {frames} frames ({:.2} h of audio) in {secs:.2} s: \
             {:.0} utterances/s",
            u.len(),
            frames as f64 / 360_000.0,
            u.len() as f64 / secs
        );
    }
}
