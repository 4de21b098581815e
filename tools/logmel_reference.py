#!/usr/bin/env python3
"""numpy reference for rnnkit's speech features (``rnnkit::audio``).

Writes ``tests/fixtures/audio/`` (or the folder given as the first argument):

* ``mono16k.wav``: 0.6 s, 16 kHz, 16-bit mono: a 440 Hz tone, a 300→3000 Hz chirp
  and seeded white noise, with a DC offset of 0.05;
* ``stereo22k.wav``: 0.5 s, 22.05 kHz, 16-bit stereo: different tones on each
  channel plus noise, so the reader's mix-down and the resampler are exercised;
* ``logmel.safetensors``: float32 features ``[frames, bands]`` computed here in
  float64 from the samples as the reader decodes them (int16 / 32768, channels
  averaged): ``mono16k_b40``, ``mono16k_b80`` and ``stereo22k_b40`` (resampled to
  16 kHz first, by the same Kaiser-windowed sinc evaluated directly, without tables).

The computation is the one the module docs of ``crates/rnnkit/src/audio/mod.rs``
state: whole 25 ms frames every 10 ms, frame mean removed, symmetric Hann window,
zero-padded FFT to the next power of two, power spectrum, HTK-mel triangles
(linear in mel) from 20 Hz to min(8 kHz, rate/2), ln(max(e, 1e-10)), each band to
zero mean and unit population variance (std < 1e-5: centred only).

Run from the repository root:  ~/torch/bin/python tools/logmel_reference.py
Deterministic: a second run writes the same bytes.
"""

import json
import math
import os
import struct
import sys
import wave

import numpy as np
from safetensors.numpy import save

ZERO_CROSSINGS, ROLLOFF, KAISER_BETA = 64.0, 0.96, 8.0


def resample(x, fin, fout):
    """Kaiser-windowed sinc at the exact rational ratio, each weight evaluated directly."""
    if fin == fout:
        return x.astype(np.float64)
    g = math.gcd(fin, fout)
    up, down = fout // g, fin // g
    scale = min(1.0, fout / fin)
    half = ZERO_CROSSINGS / scale
    reach = math.ceil(half)
    n = len(x)
    out_len = (n - 1) * up // down + 1
    pos = np.arange(out_len, dtype=np.int64) * down
    i0, frac = pos // up, (pos % up) / up
    d = np.arange(-reach, reach + 1)
    k = i0[:, None] + d[None, :]
    tau = frac[:, None] - d[None, :]
    r = tau / half
    window = np.where(
        np.abs(r) < 1.0,
        np.i0(KAISER_BETA * np.sqrt(np.clip(1.0 - r * r, 0.0, None))) / np.i0(KAISER_BETA),
        0.0,
    )
    c = scale * ROLLOFF
    h = c * np.sinc(c * tau) * window
    xs = np.where((k >= 0) & (k < n), x.astype(np.float64)[np.clip(k, 0, n - 1)], 0.0)
    return (h * xs).sum(axis=1)


def mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def log_mel(x, sr=16000, window_ms=25.0, hop_ms=10.0, bands=40):
    win, hop = round(sr * window_ms / 1000), round(sr * hop_ms / 1000)
    nfft = 1 << (win - 1).bit_length()
    frames = 1 + (len(x) - win) // hop
    idx = np.arange(win)[None, :] + hop * np.arange(frames)[:, None]
    f = np.asarray(x, dtype=np.float64)[idx]
    f = f - f.mean(axis=1, keepdims=True)
    f = f * (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / (win - 1)))
    power = np.abs(np.fft.rfft(f, nfft)) ** 2
    lo, hi = mel(20.0), mel(min(8000.0, sr / 2))
    step = (hi - lo) / (bands + 1)
    pts = lo + np.arange(bands + 2) * step
    bm = mel(np.arange(nfft // 2 + 1) * sr / nfft)[None, :]
    left, centre, right = pts[:-2, None], pts[1:-1, None], pts[2:, None]
    weights = np.where(
        (bm > left) & (bm <= centre),
        (bm - left) / (centre - left),
        np.where((bm > centre) & (bm < right), (right - bm) / (right - centre), 0.0),
    )
    energies = np.log(np.maximum(power @ weights.T, 1e-10))
    mean, std = energies.mean(axis=0), energies.std(axis=0)
    std = np.where(std < 1e-5, 1.0, std)
    return ((energies - mean) / std).astype(np.float32)


def write_wav(path, rate, channels):
    """16-bit PCM; returns the samples as the reader decodes them, channels averaged, float32."""
    ints = np.clip(np.round(channels * 32767), -32768, 32767).astype("<i2")
    with wave.open(path, "wb") as w:
        w.setnchannels(ints.shape[0])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(ints.T.tobytes())
    return (ints.astype(np.float64) / 32768.0).mean(axis=0).astype(np.float32)


def canonical_safetensors(tensors, metadata):
    """safetensors bytes with the metadata sorted (it is written in hash order), as
    ``charlm_torch.canonical_safetensors`` does, without needing torch."""
    blob = save(tensors, metadata=metadata)
    (header_len,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + header_len])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    new_header = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert len(new_header) <= header_len
    return blob[:8] + new_header.ljust(header_len, b" ") + blob[8 + header_len :]


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/audio"
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(20240611)

    sr = 16000
    t = np.arange(int(0.6 * sr)) / sr
    chirp = np.sin(2 * np.pi * (300 * t + (3000 - 300) / (2 * 0.6) * t * t))
    mono = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * chirp + 0.02 * rng.standard_normal(len(t)) + 0.05
    x16 = write_wav(os.path.join(out, "mono16k.wav"), sr, mono[None, :])

    sr2 = 22050
    t2 = np.arange(int(0.5 * sr2)) / sr2
    left = 0.4 * np.sin(2 * np.pi * 700 * t2) + 0.01 * rng.standard_normal(len(t2))
    right = 0.3 * np.sin(2 * np.pi * 2500 * t2) + 0.01 * rng.standard_normal(len(t2))
    x22 = write_wav(os.path.join(out, "stereo22k.wav"), sr2, np.stack([left, right]))

    tensors = {
        "mono16k_b40": log_mel(x16, bands=40),
        "mono16k_b80": log_mel(x16, bands=80),
        "stereo22k_b40": log_mel(resample(x22, sr2, 16000), bands=40),
    }
    meta = {"generator": "tools/logmel_reference.py", "numpy_version": np.__version__}
    with open(os.path.join(out, "logmel.safetensors"), "wb") as f:
        f.write(canonical_safetensors(tensors, meta))
    for name, v in tensors.items():
        print(f"{name}: {v.shape}")


if __name__ == "__main__":
    main()
