#!/usr/bin/env python3
"""Fixtures proving that rnnkit's classify and tag checkpoints are the PyTorch modules
of ``tools/task_modules.py``, in both directions.

For every case NAME it writes two files to OUT_DIR:

``NAME.safetensors``
    The checkpoint. ``rnnkit_*`` cases are made by rnnkit's CLI: a few training
    steps (``rnnkit classify train`` / ``rnnkit tag train``) on tiny synthetic data
    written to a temporary folder, the saved ``latest.safetensors`` copied with
    its model tensors and ``rnnkit.*`` metadata unchanged and its ``train.*``
    entries (optimizer state, temporary paths) left out. ``torch_*`` cases are
    written by PyTorch: the module with torch's default initialisation (seeded;
    random ``norm.mean``/``norm.std`` for the classifier; forget-gate biases 3 in
    the tagger's character LSTM), saved with ``module.save``.
``NAME.logits.safetensors``
    Fixed inputs and the logits of the module loaded from that checkpoint with
    ``task_modules.load``, computed in float64 from the float32 weights:
    classify: ``values`` F32 [B, T, C] (zero past each end), ``lengths`` I64 [B],
    ``logits`` F64 [B, K]; tag: metadata ``sentences`` (one sentence a line, words
    separated by one space), ``lengths`` I64 [B], ``word_ids`` I64 [B, T] (the
    encoding, for diagnosis), ``logits`` F64 [B, T, K] (batch-first; padding
    positions included). Metadata: ``checkpoint``, ``generator``, ``torch_version``.

``crates/rnnkit/tests/task_parity.rs`` loads each checkpoint with ``Classifier::load``
/ ``Tagger::load`` and compares rnnkit's logits with these.

Usage, from the repository root, after ``cargo build --release -p rnnkit-cli``::

    ~/torch/bin/python tools/task_fixtures.py tests/fixtures/tasks

The output does not depend on the run (seeded data, weights and training, sorted
metadata), given the same rnnkit and torch versions.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import subprocess
import sys
import tempfile
from typing import Dict, List

import torch
from safetensors import safe_open

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import task_modules as tm  # noqa: E402
from charlm_torch import TRAIN_PREFIX, canonical_safetensors  # noqa: E402

GENERATOR = "tools/task_fixtures.py"

# ---------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------

CHANNELS = 3
CLASSES = ["low", "mid", "high"]
HIDDEN = 4
# (cell, layers, bidirectional, pool) of the classifiers made by rnnkit and by torch.
RNNKIT_CLASSIFIERS = [(cell, 1, bi, pool) for cell in ("lstm", "gru") for bi in (False, True)
                      for pool in tm.POOLS] + [("lstm", 2, True, "mean")]
TORCH_CLASSIFIERS = [("lstm", 2, True, "last"), ("gru", 2, False, "mean"), ("gru", 1, True, "max"),
                     ("rnn_tanh", 1, True, "max"), ("rnn_relu", 1, False, "last")]
# Series of the logits files: lengths unsorted, one of a single step.
SERIES_LENGTHS = [7, 1, 4, 6]

# (cell, layers, char_hidden) of the taggers.
TAGGER_SIZES = dict(word_embed=5, char_embed=3, hidden_size=4)
RNNKIT_TAGGERS = [("lstm", 1, 3), ("gru", 2, 3)]
TORCH_TAGGERS = [("lstm", 2, 3), ("lstm", 1, 0)]
# Forget-gate bias of the torch-written taggers' character LSTM (see torch_tagger).
CHAR_FORGET_BIAS = 3.0
# Sentences of the logits files: known words in other cases, unknown words, unknown
# characters (Ω, €, Z), a word of exactly 24 characters, words longer than 24 (one
# with two-byte characters, so clipping by bytes would differ), one single word.
SENTENCES = [
    "The cat sees a dog .",
    "Every naïve ZEBRA chases the antidisestablishmentarianism café !",
    "Dog",
    "Ωmega sees € überquerungsfähigkeitsprüfungen abcdefghijklmnopqrstuvwx quick !",
]

# ---------------------------------------------------------------------------
# Synthetic data
# ---------------------------------------------------------------------------


def series_case(rng: random.Random, length: int, klass: int) -> List[List[float]]:
    """[C][length] values: a level by class, a wave and noise."""
    return [[round(2.0 * klass + 10.0 * c + math.sin(0.7 * t + c) + rng.gauss(0, 0.3), 3)
             for t in range(length)] for c in range(CHANNELS)]


def write_ts(path: str) -> None:
    rng = random.Random(7)
    lines = ["@problemName Toy", "@timeStamps false", "@missing false", "@univariate false",
             f"@dimensions {CHANNELS}", "@equalLength false",
             "@classLabel true " + " ".join(CLASSES), "@data"]
    for i in range(18):
        klass = i % len(CLASSES)
        chans = series_case(rng, 3 + (5 * i) % 7, klass)
        lines.append(":".join(",".join(f"{v:.3f}" for v in ch) for ch in chans) + ":" + CLASSES[klass])
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


LEXICON = {
    "DET": ["the", "a", "this", "every"],
    "ADJ": ["small", "grüne", "naïve", "quick"],
    "NOUN": ["cat", "dog", "café", "internationalisation", "bird"],
    "VERB": ["sees", "likes", "chases", "éats"],
    "PUNCT": [".", "!"],
}


def training_sentences() -> List[List[tuple]]:
    """Seeded sentences DET (ADJ) NOUN VERB DET (ADJ) NOUN PUNCT, as (form, upos)."""
    rng = random.Random(11)
    out = []
    for _ in range(24):
        tags = ["DET"] + ["ADJ"] * rng.randint(0, 1) + ["NOUN", "VERB", "DET"] \
            + ["ADJ"] * rng.randint(0, 1) + ["NOUN", "PUNCT"]
        words = [(rng.choice(LEXICON[t]), t) for t in tags]
        words[0] = (words[0][0].capitalize(), words[0][1])
        out.append(words)
    return out


def write_conllu(path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for k, s in enumerate(training_sentences()):
            f.write(f"# sent_id = {k + 1}\n")
            for i, (form, tag) in enumerate(s):
                f.write(f"{i + 1}\t{form}\t{form.lower()}\t{tag}\t_\t_\t0\t_\t_\t_\n")
            f.write("\n")


def tagger_lists():
    """Word, character and tag lists as ``rnnkit tag train`` builds them from the data."""
    sents = training_sentences()
    words = [tm.UNK] + sorted({w.lower() for s in sents for w, _ in s})
    chars = [tm.UNK] + sorted({c for s in sents for w, _ in s for c in w})
    tags = sorted({t for s in sents for _, t in s})
    return words, chars, tags


# ---------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------


def rnnkit_train(binary: str, args: List[str], workdir: str) -> Dict:
    out = os.path.join(workdir, "run")
    cmd = [binary] + args + ["--out", out, "--force", "--threads", "1", "--seed", "1"]
    done = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr}")
    return os.path.join(out, "latest.safetensors")


def copy_model(src: str, dst: str) -> None:
    """Copies a checkpoint without its ``train.*`` tensors and metadata."""
    with safe_open(src, framework="pt") as f:
        meta = {k: v for k, v in (f.metadata() or {}).items() if not k.startswith(TRAIN_PREFIX)}
        tensors = {k: f.get_tensor(k) for k in f.keys() if not k.startswith(TRAIN_PREFIX)}
    with open(dst, "wb") as f:
        f.write(canonical_safetensors(tensors, meta))


def classifier_name(origin: str, cell: str, layers: int, bi: bool, pool: str) -> str:
    return f"{origin}_classify_{cell}_{layers}l_{'bi' if bi else 'uni'}_{pool}"


def tagger_name(origin: str, cell: str, layers: int, char_hidden: int) -> str:
    return f"{origin}_tag_{cell}_{layers}l" + ("" if char_hidden else "_nochars")


def seed_of(name: str) -> int:
    return sum((i + 1) * ord(c) for i, c in enumerate(name))


def torch_classifier(name: str, cell: str, layers: int, bi: bool, pool: str) -> tm.SequenceClassifier:
    torch.manual_seed(seed_of(name))
    model = tm.SequenceClassifier(cell, CHANNELS, HIDDEN, CLASSES, layers, bi, pool)
    with torch.no_grad():
        model.norm.mean.copy_(torch.randn(CHANNELS) * 5)
        model.norm.std.copy_(torch.rand(CHANNELS) * 2 + 0.5)
    return model


def torch_tagger(name: str, cell: str, layers: int, char_hidden: int) -> tm.Tagger:
    torch.manual_seed(seed_of(name))
    config = {"cell": cell, "word_embed": TAGGER_SIZES["word_embed"],
              "char_embed": TAGGER_SIZES["char_embed"], "char_hidden": char_hidden,
              "hidden_size": TAGGER_SIZES["hidden_size"], "num_layers": layers, "dropout": 0.0,
              "word_dropout": 0.0, "min_freq": 1, "column": "upos"}
    model = tm.Tagger(config, *tagger_lists())
    if cell == "lstm" and char_hidden > 0:
        # Forget gates near 1, so that the characters in the middle of a long word still
        # reach the final states: the fixture then sees which characters were read.
        with torch.no_grad():
            for n, p in model.char_rnn.named_parameters():
                if n.startswith("bias_ih"):
                    p[char_hidden:2 * char_hidden] = CHAR_FORGET_BIAS
    return model


# ---------------------------------------------------------------------------
# Reference logits
# ---------------------------------------------------------------------------


def series_inputs():
    """values [B, T, C] float32 (zero past each end) and lengths [B] of the logits files."""
    rng = random.Random(3)
    lengths = SERIES_LENGTHS
    values = torch.zeros(len(lengths), max(lengths), CHANNELS)
    for b, n in enumerate(lengths):
        values[b, :n] = torch.tensor(series_case(rng, n, b % len(CLASSES))).T
    return values, torch.tensor(lengths, dtype=torch.int64)


def write_logits(out_dir: str, name: str, tensors: Dict[str, torch.Tensor], meta: Dict[str, str]) -> None:
    meta = dict(meta, checkpoint=name + ".safetensors", generator=GENERATOR,
                torch_version=torch.__version__)
    with open(os.path.join(out_dir, name + ".logits.safetensors"), "wb") as f:
        f.write(canonical_safetensors({k: v.contiguous() for k, v in tensors.items()}, meta))


@torch.inference_mode()
def classify_logits(out_dir: str, name: str) -> None:
    model = tm.load(os.path.join(out_dir, name + ".safetensors")).eval()
    values, lengths = series_inputs()
    logits32 = model(values, lengths)
    logits = model.double()(values.double(), lengths)
    gap = (logits32.double() - logits).abs().max().item()
    write_logits(out_dir, name, {"values": values, "lengths": lengths, "logits": logits}, {})
    print(f"{name}: logits {tuple(logits.shape)}, float32 torch within {gap:.1e} of float64")


@torch.inference_mode()
def tag_logits(out_dir: str, name: str) -> None:
    model = tm.load(os.path.join(out_dir, name + ".safetensors")).eval()
    sentences = [s.split(" ") for s in SENTENCES]
    inputs = model.encode(sentences)
    logits32 = model(*inputs)
    logits = model.double()(*inputs)
    gap = (logits32.double() - logits).abs().max().item()
    word_ids, lengths = inputs[0], inputs[1]
    write_logits(out_dir, name, {"lengths": lengths, "word_ids": word_ids, "logits": logits},
                 {"sentences": "\n".join(SENTENCES)})
    print(f"{name}: logits {tuple(logits.shape)}, float32 torch within {gap:.1e} of float64")


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="output folder, e.g. tests/fixtures/tasks")
    parser.add_argument("--rnnkit", default="target/release/rnnkit", help="the rnnkit binary")
    args = parser.parse_args()
    binary = os.path.abspath(args.rnnkit)
    if not os.path.isfile(binary):
        raise SystemExit(f"{binary} not found: run `cargo build --release -p rnnkit-cli` first")
    os.makedirs(args.out_dir, exist_ok=True)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as work:
        write_ts(os.path.join(work, "train.ts"))
        write_conllu(os.path.join(work, "train.conllu"))
        for cell, layers, bi, pool in RNNKIT_CLASSIFIERS:
            name = classifier_name("rnnkit", cell, layers, bi, pool)
            ckpt = rnnkit_train(binary, [
                "classify", "train", "--train", "train.ts", "--cell", cell, "--layers", str(layers),
                "--hidden", str(HIDDEN), "--bidirectional", str(bi).lower(), "--pool", pool,
                "--dropout", "0", "--batch", "4", "--val-frac", "0", "--steps", "3"], work)
            copy_model(ckpt, os.path.join(args.out_dir, name + ".safetensors"))
            classify_logits(args.out_dir, name)
        for cell, layers, char_hidden in RNNKIT_TAGGERS:
            name = tagger_name("rnnkit", cell, layers, char_hidden)
            ckpt = rnnkit_train(binary, [
                "tag", "train", "--train", "train.conllu", "--cell", cell, "--layers", str(layers),
                "--word-embed", str(TAGGER_SIZES["word_embed"]),
                "--char-embed", str(TAGGER_SIZES["char_embed"]), "--char-hidden", str(char_hidden),
                "--hidden", str(TAGGER_SIZES["hidden_size"]), "--dropout", "0",
                "--word-dropout", "0", "--batch", "4", "--steps", "3"], work)
            copy_model(ckpt, os.path.join(args.out_dir, name + ".safetensors"))
            tag_logits(args.out_dir, name)

    for cell, layers, bi, pool in TORCH_CLASSIFIERS:
        name = classifier_name("torch", cell, layers, bi, pool)
        torch_classifier(name, cell, layers, bi, pool).save(os.path.join(args.out_dir, name + ".safetensors"))
        classify_logits(args.out_dir, name)
    for cell, layers, char_hidden in TORCH_TAGGERS:
        name = tagger_name("torch", cell, layers, char_hidden)
        torch_tagger(name, cell, layers, char_hidden).save(os.path.join(args.out_dir, name + ".safetensors"))
        tag_logits(args.out_dir, name)


if __name__ == "__main__":
    main()
