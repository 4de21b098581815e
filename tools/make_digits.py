#!/usr/bin/env python3
"""Synthesises a spoken-digit data set for rnnkit's CTC recogniser with espeak-ng.

Each utterance is a string of 1–7 digits (uniform), spoken as words ("zero" or
"oh" for 0, each half the time). Three in ten utterances of two or more digits are
two groups with a pause between them, transcribed with a space ("12 345");
otherwise the transcript is the digit string ("4072").

Every utterance draws its own voice (an espeak-ng English voice + a variant),
speaking rate (-s 120–220 words/min), pitch (-p 20–80), word gap (-g 0–6, in 10 ms
units) and group pause (250–700 ms), then additive noise (white, pink or brown,
equally likely) at an SNR uniform in 5–30 dB over the whole utterance, then a gain
that puts its peak uniform in 0.1–0.9 of full scale. espeak-ng speaks at 22.05 kHz;
the audio is resampled to 16 kHz here (Kaiser-windowed sinc, 32 taps), except for
a share (--native-share, default half) kept at 22.05 kHz so that the reader's
resampler is exercised too. All files are 16-bit PCM mono WAV.

Voices are held out: a voice is a (base, variant) pair, and its split is fixed by
`split_of` below. Test: every voice of the Caribbean base `en-029` and every base
with one of TEST_VARIANTS. Dev: the West Midlands base `en-gb-x-gbcwmd` and
DEV_VARIANTS (minus the test voices). Train: all the rest. So test and dev speak
with accents and timbres that training never heard.

Output in --out: wav/<split>/<split>_NNNNNN.wav, manifests train.tsv, dev.tsv,
test.tsv (`path<TAB>transcript<TAB>voice+variant`, paths relative to --out) and meta.tsv (one row per
utterance with its voice, variant, rate, pitch, gap, pause, noise, SNR, peak, rate
and duration, for per-voice results). Deterministic given --seed: every
utterance draws from its own generator seeded by (seed, split, index), so --jobs
does not change the output.

Needs only Python 3's standard library and espeak-ng (`apt-get install espeak-ng`).

  python3 tools/make_digits.py --out data/digits
"""

import argparse
import array
import math
import multiprocessing
import operator
import os
import random
import subprocess
import sys
import time
import wave

BASES = [
    "en-gb", "en-us", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp",
    "en-gb-x-gbcwmd", "en-029", "en-us-nyc",
]
# Human-sounding variants of `espeak-ng --voices=variant` (robots, whispers and
# novelty voices left out).
VARIANTS = [
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5",
    "croak", "klatt", "klatt2", "klatt3", "klatt4", "klatt5", "klatt6",
    "Alex", "Andrea", "Andy", "Annie", "aunty", "benjamin", "caleb", "david", "ed",
    "edward", "Gene", "gustave", "Hugo", "iven", "iven2", "iven3", "iven4", "Jacky",
    "john", "Lee", "linda", "max", "Michael", "Mike", "Mr", "pablo", "paul", "quincy",
    "rob", "robert", "steph", "steph2", "steph3", "Storm", "zac", "anika", "grandpa",
    "grandma", "norbert", "shelby", "travis", "victor",
]
TEST_BASES = {"en-029"}
TEST_VARIANTS = {"m3", "f2", "klatt4", "Andrea", "iven2", "steph2", "grandma", "Mike"}
DEV_BASES = {"en-gb-x-gbcwmd"}
DEV_VARIANTS = {"m6", "f5", "klatt3", "Annie", "iven3", "steph3", "grandpa", "john"}
SPLITS = ("train", "dev", "test")
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

ESPEAK_RATE = 22050
OUT_RATE = 16000


def split_of(base, variant):
    """The split a voice belongs to (see the module docs)."""
    if base in TEST_BASES or variant in TEST_VARIANTS:
        return "test"
    if base in DEV_BASES or variant in DEV_VARIANTS:
        return "dev"
    return "train"


VOICES = {s: [(b, v) for b in BASES for v in VARIANTS if split_of(b, v) == s] for s in SPLITS}


def plan(seed, split, index, native_share):
    """Everything random about one utterance, from its own generator."""
    rng = random.Random(f"{seed}/{split}/{index}")
    n = rng.randint(1, 7)
    digits = [rng.randrange(10) for _ in range(n)]
    groups = [digits]
    if n >= 2 and rng.random() < 0.3:
        cut = rng.randint(1, n - 1)
        groups = [digits[:cut], digits[cut:]]
    spoken = [["oh" if d == 0 and rng.random() < 0.5 else WORDS[d] for d in g] for g in groups]
    base, variant = rng.choice(VOICES[split])
    return {
        "split": split,
        "index": index,
        "transcript": " ".join("".join(str(d) for d in g) for g in groups),
        "spoken": spoken,
        "voice": base,
        "variant": variant,
        "rate": rng.randint(120, 220),
        "pitch": rng.randint(20, 80),
        "gap": rng.randint(0, 6),
        "pause_ms": rng.randint(250, 700),
        "noise": rng.choice(["white", "pink", "brown"]),
        "snr_db": round(rng.uniform(5.0, 30.0), 2),
        "peak": round(rng.uniform(0.1, 0.9), 3),
        "sample_rate": ESPEAK_RATE if rng.random() < native_share else OUT_RATE,
        "noise_seed": rng.getrandbits(63),
    }


def speak(p):
    """espeak-ng's 16-bit samples at 22.05 kHz as floats in [-1, 1]."""
    pause = f' <break time="{p["pause_ms"]}ms"/> '
    text = "<speak>" + pause.join(" ".join(g) for g in p["spoken"]) + "</speak>"
    cmd = [
        "espeak-ng", "-m", "--stdout",
        "-v", f'{p["voice"]}+{p["variant"]}',
        "-s", str(p["rate"]), "-p", str(p["pitch"]), "-g", str(p["gap"]), text,
    ]
    out = subprocess.run(cmd, check=True, capture_output=True).stdout
    # --stdout streams, so the header's sizes are placeholders: take every byte after
    # the data chunk's header.
    at = out.find(b"data")
    if out[:4] != b"RIFF" or at < 0:
        raise RuntimeError(f"espeak-ng gave no WAV for {cmd}")
    body = out[at + 8:]
    samples = array.array("h", body[: len(body) // 2 * 2])
    if sys.byteorder != "little":
        samples.byteswap()
    return [s / 32768.0 for s in samples]


def _kernel_table(up, down, half, cutoff, beta):
    """Polyphase Kaiser-windowed sinc weights, table[p][d] for d in 0..2·half."""

    def i0(x):
        s, t = 1.0, 1.0
        for k in range(1, 40):
            t *= (x / 2) / k
            s += t * t
        return s

    table = []
    for p in range(up):
        frac = p / up
        row = []
        for d in range(-half + 1, half + 1):
            tau = frac - d
            r = tau / half
            w = i0(beta * math.sqrt(max(0.0, 1 - r * r))) / i0(beta) if abs(r) < 1 else 0.0
            x = cutoff * tau
            row.append(cutoff * (math.sin(math.pi * x) / (math.pi * x) if x else 1.0) * w)
        table.append(row)
    return table


_TABLE = None


def to_16k(x):
    """22.05 kHz → 16 kHz (ratio 320/441), cutoff at 0.92 of 8 kHz, 32 taps."""
    global _TABLE
    up, down, half = 320, 441, 16
    if _TABLE is None:
        _TABLE = _kernel_table(up, down, half, 0.92 * OUT_RATE / ESPEAK_RATE, 6.0)
    padded = [0.0] * half + x + [0.0] * half
    out = []
    mul = operator.mul
    for j in range((len(x) - 1) * up // down + 1):
        pos = j * down
        i, p = pos // up, pos % up
        # Input samples i−half+1 … i+half sit at padded[i+1 … i+2·half].
        out.append(sum(map(mul, _TABLE[p], padded[i + 1 : i + 1 + 2 * half])))
    return out


def noise(kind, n, rng):
    """`n` samples of white, pink (Kellet's filter) or brown (leaky integral) noise."""
    out = [0.0] * n
    b0 = b1 = b2 = 0.0
    for k in range(n):
        w = rng.gauss(0.0, 1.0)
        if kind == "white":
            out[k] = w
        elif kind == "pink":
            b0 = 0.99765 * b0 + w * 0.0990460
            b1 = 0.96300 * b1 + w * 0.2965164
            b2 = 0.57000 * b2 + w * 1.0526913
            out[k] = b0 + b1 + b2 + w * 0.1848
        else:
            b0 = 0.995 * b0 + 0.1 * w
            out[k] = b0
    return out


def make(args):
    """Synthesises, noises and writes one utterance; returns its meta row."""
    p, out_dir = args
    x = speak(p)
    if p["sample_rate"] == OUT_RATE:
        x = to_16k(x)
    rng = random.Random(p["noise_seed"])
    nz = noise(p["noise"], len(x), rng)
    ps = sum(v * v for v in x) / len(x)
    pn = sum(v * v for v in nz) / len(nz)
    g = math.sqrt(ps / (pn * 10 ** (p["snr_db"] / 10))) if pn > 0 else 0.0
    mixed = [a + g * b for a, b in zip(x, nz)]
    top = max(abs(v) for v in mixed) or 1.0
    scale = p["peak"] / top * 32767
    ints = array.array("h", (max(-32768, min(32767, round(v * scale))) for v in mixed))
    if sys.byteorder != "little":
        ints.byteswap()
    rel = f'wav/{p["split"]}/{p["split"]}_{p["index"]:06d}.wav'
    with wave.open(os.path.join(out_dir, rel), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(p["sample_rate"])
        w.writeframes(ints.tobytes())
    seconds = len(ints) / p["sample_rate"]
    return rel, p, seconds


META_COLUMNS = [
    "path", "split", "transcript", "spoken", "voice", "variant", "rate", "pitch", "gap",
    "pause_ms", "noise", "snr_db", "peak", "sample_rate", "seconds",
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--train", type=int, default=6000)
    ap.add_argument("--dev", type=int, default=500)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--native-share", type=float, default=0.5,
                    help="share of utterances kept at espeak-ng's 22.05 kHz")
    args = ap.parse_args()
    if min(args.train, args.dev, args.test) < 0 or args.jobs < 1:
        ap.error("counts must be ≥ 0 and --jobs ≥ 1")
    counts = {"train": args.train, "dev": args.dev, "test": args.test}
    for s in SPLITS:
        os.makedirs(os.path.join(args.out, "wav", s), exist_ok=True)
    work = [
        (plan(args.seed, s, i, args.native_share), args.out)
        for s in SPLITS
        for i in range(counts[s])
    ]
    start = time.time()
    rows, total_seconds = {s: [] for s in SPLITS}, 0.0
    with multiprocessing.Pool(args.jobs) as pool:
        for k, (rel, p, seconds) in enumerate(pool.imap(make, work, chunksize=8), 1):
            rows[p["split"]].append((rel, p, seconds))
            total_seconds += seconds
            if k % 500 == 0 or k == len(work):
                rate = k / (time.time() - start)
                print(f"{k}/{len(work)} utterances, {rate:.1f}/s", file=sys.stderr)
    elapsed = time.time() - start
    for s in SPLITS:
        with open(os.path.join(args.out, f"{s}.tsv"), "w", encoding="utf-8", newline="\n") as f:
            for rel, p, _ in rows[s]:
                f.write(f'{rel}\t{p["transcript"]}\t{p["voice"]}+{p["variant"]}\n')
    with open(os.path.join(args.out, "meta.tsv"), "w", encoding="utf-8", newline="\n") as f:
        f.write("\t".join(META_COLUMNS) + "\n")
        for s in SPLITS:
            for rel, p, seconds in rows[s]:
                spoken = " | ".join(" ".join(g) for g in p["spoken"])
                vals = dict(p, path=rel, spoken=spoken, seconds=f"{seconds:.3f}")
                f.write("\t".join(str(vals[c]) for c in META_COLUMNS) + "\n")
    n = len(work)
    print(
        f"made {n} utterances ({total_seconds / 3600:.2f} h of audio) in {elapsed:.1f} s "
        f"with {args.jobs} jobs: {n / max(elapsed, 1e-9):.1f} utterances/s",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
