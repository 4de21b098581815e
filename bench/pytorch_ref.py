#!/usr/bin/env python3
"""PyTorch reference for `rnnkit bench`: the same measurement, the same flags.

What it measures
----------------
The character language model Embedding(V, E) -> L-layer nn.LSTM / nn.GRU /
nn.RNN (hidden H, batch_first=True) -> Linear(H, V), float32 on the CPU,
trained on synthetic tokens (one fixed batch of random inputs and random
targets, B sequences of T steps).

* Training: each step is zero grads, forward, mean softmax cross-entropy,
  backward, clip_grad_norm_(5), Adam(lr 1e-3).  One untimed warm-up step, then
  --steps timed steps; the MEDIAN step time is reported.
    train_tokens_per_sec = B*T / median step seconds
    train_gflops         = 3 * flops_per_token * tokens/s / 1e9
        flops_per_token  = sum_l 2*(in_l + H)*G*H + 2*H*V
        in_0 = E, in_l = H (l > 0), G = 4 lstm, 3 gru, 1 rnn
    step_seconds         = the median step time
* Sampling: batch 1, model in eval mode under torch.no_grad().  Feed one token,
  then repeatedly sample the next one (temperature 1: torch.multinomial on the
  full softmax) and feed it back with the recurrent state carried.  10 untimed
  warm-up characters, then --sample-chars timed ones:
    sample_us_per_char   = mean microseconds per character
* peak_rss_mb: VmHWM of this process (/proc/self/status), in MiB.  Note that
  it includes the Python interpreter and the torch libraries.
* threads: torch.get_num_threads() after torch.set_num_threads(--threads).

--task classify: rnnkit's sequence classifier (`rnnkit classify train`'s model):
standardised [T, B, C] series -> nn.LSTM/GRU/RNN (bidirectional by default)
over pack_padded_sequence -> pooling over the valid steps (max by default; last
= the final states, mean) -> dropout 0.2 -> Linear -> cross-entropy.
--task tag: rnnkit's tagger (`rnnkit tag train`'s model): lowercased word
embedding (word dropout 0.1 to id 0) concatenated with a character BiLSTM's final
states over each distinct word of the batch (packed; forward at the last
character, reverse at the first) -> dropout 0.25 -> BiLSTM (packed) -> dropout ->
Linear -> cross-entropy over the words.
--task seq2seq: the encoder-decoder of `rnnkit seq2seq train`, as the module Seq2seq
of tools/task_modules.py (imported from there, so this task needs safetensors besides
torch): source embedding -> encoder over each source's own length (packed;
bidirectional by default, H/2 units per direction) -> decoder started from the
encoder's final states, input feeding, attention (general by default) over the
valid source steps, tanh(combine([context, q])) -> dropout 0.2 -> Linear ->
cross-entropy over the target tokens and </s>, teacher forcing.  Data: random pairs
shaped like grapheme-to-phoneme entries, source lengths uniform in
--min-len..--max-len (4..12), target length = source length - 1, +0 or +1 (at least
1), source ids uniform below --src-vocab (28), target ids uniform over the
--tgt-vocab (69) tokens besides </s> and <s>.
--task ctc: the CTC recogniser of `rnnkit ctc train`, as the module CtcRecognizer of
tools/task_modules.py (imported from there, like seq2seq): [B, T, bands] features
zero-padded, frames stacked --stack (3) at a time (stack_frames) -> recurrent stack
over each utterance's stacked steps (packed; bidirectional LSTM 2x128 by default,
dropout 0.1 between layers) -> dropout 0.1 -> Linear -> log_softmax ->
F.ctc_loss(blank=0, reduction="mean", zero_infinity=True).  Data: random utterances
of --min-len..--max-len (100..300) frames of --bands (40) features uniform in
[-1, 1), each with a target of 1 + below(steps / 4) labels uniform over the
--labels (11) labels besides the blank (steps = ceil(frames / stack)).  A token is
a stacked step; the counted FLOPs (ctc_flops) are 3 x steps x the multiply-adds x 2
of one forward step: sum_l D*2*(in_l + H)*G*H + 2*D*H*(labels + 1), in_0 =
stack*bands, in_l = D*H.
Both draw the data of `rnnkit bench --task ...` from the same seed with a port of
rnnkit's generator (class Rng), so both programs train on the same batches: random
series of random lengths, random sentences of random words, or random pairs.  Each
step builds its batch from the raw data (padding, standardising / encoding words and
characters), as rnnkit's step does, then zero grads, forward, backward,
clip_grad_norm_(5), Adam(lr 1e-3).  3 untimed warm-up steps, then --steps timed
ones, each on its own batch:
    train_tokens_per_sec = valid tokens (timesteps / words / seq2seq tokens) of the
                           timed steps / their seconds
    train_gflops         = counted FLOPs of the timed steps / their seconds / 1e9
                           (classify_flops, tag_flops, seq2seq_flops: as rnnkit's
                           bench::classify::flops, bench::tag::flops and
                           bench::seq2seq::flops)
    step_seconds         = the median step time
    tokens_per_step      = mean valid tokens per timed step (equal in both programs)
A seq2seq token is a source token or a target token (</s> included): a pair of
source length n and target length m counts n + m + 1.  Its counted FLOPs
(seq2seq_flops) are 3 x (source tokens x enc + target tokens x dec), enc and dec
the multiply-adds x 2 of one forward pass per token:
    enc = sum_l D*2*(in_l + H/D)*G*(H/D)  + 2*H*H (the keys: general, additive)
    dec = sum_l 2*(in'_l + H)*G*H + att + 2*2H*H (combine) + 2*H*Vt
    att = 2*2*S*H (scores and context)    + 2*H*H (the query: additive)
with in_0 = E, in_l = H (encoder), in'_0 = E + H, in'_l = H (decoder), Vt = the
target vocabulary with </s> and <s>, S the mean source length of the step's batch;
--attention none has no keys, att or combine, and in'_0 = E.
After the training steps, the trained model decodes the first --decode-sources (200)
sources one at a time (batch 1, eval mode, torch.no_grad(), at most 2*len + 10 output
tokens): 3 untimed, then all of them timed, greedy (Seq2seq.greedy), then the same
with a beam of --beam (5) hypotheses as one batch (Seq2seq.beam, scores log p / len):
    greedy_words_per_sec, beam_words_per_sec = sources / their seconds
    greedy_steps_per_word, beam_steps_per_word = decoder steps per source (one per
        output token and live hypothesis, </s> included): the work behind a word,
        which depends on the weights (after a few steps on random pairs, </s>,
        the most frequent target, comes early)
    beam                 = the beam width

Output is one JSON object with exactly the keys of `rnnkit bench --json`, plus
greedy_steps_per_word and beam_steps_per_word for seq2seq (or a short
human-readable summary without --json).

How to run
----------
torch is not a dependency of the repository; install it outside it:

    python3 -m venv ~/torch && ~/torch/bin/pip install torch
    ~/torch/bin/python bench/pytorch_ref.py --cell lstm --layers 2 --hidden 512 \\
        --embed 64 --vocab 65 --batch 64 --seq-len 100 --steps 10 \\
        --sample-chars 500 --threads 2 --json

    ~/torch/bin/python bench/pytorch_ref.py --task classify --threads 2 --json
    ~/torch/bin/python bench/pytorch_ref.py --task tag --threads 2 --json
    ~/torch/bin/python bench/pytorch_ref.py --task seq2seq --threads 2 --json
    ~/torch/bin/python bench/pytorch_ref.py --task ctc --threads 2 --json

bench/compare.py runs it alternately with `rnnkit bench` and tabulates both.
"""

import argparse
import json
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


def positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def int_range(text):
    """MIN-MAX or N (= N-N), as `rnnkit bench`."""
    lo, _, hi = text.partition("-")
    try:
        lo, hi = int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN-MAX or N with whole numbers, got {text!r}")
    if lo < 1 or lo > hi or hi > 100_000:
        raise argparse.ArgumentTypeError(f"expected 1 <= MIN <= MAX <= 100000, got {text!r}")
    return lo, hi


def boolean(text):
    if text in ("true", "false"):
        return text == "true"
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


# Defaults per task: (char-lm, classify, tag, seq2seq, ctc), as `rnnkit bench` (whose
# classify, tag, seq2seq and ctc defaults are the `train` recipes'); None = the flag
# does not apply.
TASK_DEFAULTS = {
    "cell": ("lstm", "gru", "lstm", "lstm", "lstm"),
    "layers": (2, 2, 2, 1, 2),
    "hidden": (512, 256, 200, 256, 128),
    "batch": (64, 16, 32, 64, 32),
    "steps": (10, 100, 20, 20, 20),
    "embed": (64, None, None, 64, None),
    "vocab": (65, None, None, None, None),
    "seq_len": (100, None, None, None, None),
    "sample_chars": (500, None, None, None, None),
    "channels": (None, 12, None, None, None),
    "classes": (None, 9, None, None, None),
    "min_len": (None, 7, None, 4, 100),
    "max_len": (None, 29, None, 12, 300),
    "pool": (None, "max", None, None, None),
    "bidirectional": (None, True, None, True, True),
    "word_vocab": (None, None, 16000, None, None),
    "char_vocab": (None, None, 100, None, None),
    "tags": (None, None, 17, None, None),
    "words_per_sentence": (None, None, (5, 30), None, None),
    "chars_per_word": (None, None, (2, 10), None, None),
    "word_embed": (None, None, 100, None, None),
    "char_embed": (None, None, 32, None, None),
    "char_hidden": (None, None, 100, None, None),
    "attention": (None, None, None, "general", None),
    "src_vocab": (None, None, None, 28, None),
    "tgt_vocab": (None, None, None, 69, None),
    "beam": (None, None, None, 5, None),
    "decode_sources": (None, None, None, 200, None),
    "bands": (None, None, None, None, 40),
    "labels": (None, None, None, None, 11),
    "stack": (None, None, None, None, 3),
    "seed": (None, 1, 1, 1, 1),
}
TASKS = ("char-lm", "classify", "tag", "seq2seq", "ctc")
ATTENTIONS = ("none", "dot", "general", "additive")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="PyTorch reference of `rnnkit bench`: training and sampling "
        "throughput of the char-LM on synthetic tokens, training throughput of "
        "the classifier (--task classify), the tagger (--task tag) or the encoder-decoder "
        "(--task seq2seq, then its decoding speed) or the CTC recogniser (--task ctc) on "
        "synthetic data.")
    p.add_argument("--task", choices=TASKS, default="char-lm", help="what to measure [default: char-lm]")
    p.add_argument("--cell", choices=CELLS, help="recurrent cell [default: lstm; classify: gru]")
    p.add_argument("--layers", type=positive, help="stacked recurrent layers [default: 2; seq2seq: 1]")
    p.add_argument("--hidden", type=positive,
                   help="hidden units per layer (per direction; seq2seq: the decoder's, the "
                   "encoder's outputs) [default: 512; classify, seq2seq: 256; tag: 200; ctc: 128]")
    p.add_argument("--embed", type=positive, help="embedding width (char-lm, seq2seq) [default: 64]")
    p.add_argument("--vocab", type=int, help="vocabulary size (char-lm) [default: 65]")
    p.add_argument("--batch", type=positive,
                   help="sequences per batch [default: 64; classify: 16; tag, ctc: 32]")
    p.add_argument("--seq-len", type=positive, help="timesteps per batch (char-lm) [default: 100]")
    p.add_argument("--steps", type=positive,
                   help="timed training steps [default: 10; classify: 100; tag, seq2seq, ctc: 20]")
    p.add_argument("--sample-chars", type=non_negative,
                   help="timed batch-1 sampled characters (char-lm) [default: 500]")
    p.add_argument("--channels", type=positive, help="input channels (classify) [default: 12]")
    p.add_argument("--classes", type=int, help="classes (classify) [default: 9]")
    p.add_argument("--min-len", type=positive,
                   help="fewest steps of a series (classify) [default: 7], tokens of a source "
                   "(seq2seq) [default: 4], or frames of an utterance (ctc) [default: 100]")
    p.add_argument("--max-len", type=positive,
                   help="most steps of a series (classify) [default: 29], tokens of a source "
                   "(seq2seq) [default: 12], or frames of an utterance (ctc) [default: 300]")
    p.add_argument("--pool", choices=("last", "mean", "max"), help="pooling over time (classify) [default: max]")
    p.add_argument("--bidirectional", type=boolean,
                   help="read each series (classify), source (seq2seq) or utterance (ctc) in both "
                   "directions [default: true]")
    p.add_argument("--word-vocab", type=positive, help="distinct words of the lexicon (tag) [default: 16000]")
    p.add_argument("--char-vocab", type=positive, help="characters of the words (tag) [default: 100]")
    p.add_argument("--tags", type=int, help="distinct tags (tag) [default: 17]")
    p.add_argument("--words-per-sentence", type=int_range,
                   help="words of a sentence, MIN-MAX or N (tag) [default: 5-30]")
    p.add_argument("--chars-per-word", type=int_range,
                   help="characters of a word, MIN-MAX or N (tag) [default: 2-10]")
    p.add_argument("--word-embed", type=positive, help="word embedding width (tag) [default: 100]")
    p.add_argument("--char-embed", type=positive, help="character embedding width (tag) [default: 32]")
    p.add_argument("--char-hidden", type=non_negative,
                   help="hidden units per direction of the character network (tag) [default: 64]")
    p.add_argument("--attention", choices=ATTENTIONS,
                   help="how the decoder looks at the source (seq2seq) [default: general]")
    p.add_argument("--src-vocab", type=positive, help="source tokens (seq2seq) [default: 28]")
    p.add_argument("--tgt-vocab", type=positive,
                   help="target tokens besides the end and start tokens (seq2seq) [default: 69]")
    p.add_argument("--beam", type=positive, help="width of the timed beam search (seq2seq) [default: 5]")
    p.add_argument("--decode-sources", type=positive,
                   help="sources decoded one at a time, greedy and with the beam (seq2seq) "
                   "[default: 200]")
    p.add_argument("--bands", type=positive, help="features per frame (ctc) [default: 40]")
    p.add_argument("--labels", type=positive,
                   help="labels besides the blank (ctc) [default: 11, the digits and the space]")
    p.add_argument("--stack", type=positive,
                   help="consecutive frames joined into one step, 1 to 16 (ctc) [default: 3]")
    p.add_argument("--seed", type=non_negative,
                   help="seed of the synthetic data (classify, tag, seq2seq, ctc) [default: 1]")
    p.add_argument("--threads", type=positive, default=os.cpu_count() or 1,
                   help="worker threads [default: all cores]")
    p.add_argument("--autocast-bf16", action="store_true",
                   help="train under torch.autocast('cpu', dtype=torch.bfloat16), PyTorch's own "
                        "bfloat16 mode (classify, tag, seq2seq, ctc)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if args.autocast_bf16 and args.task == "char-lm":
        p.error("--autocast-bf16 applies to --task classify, tag, seq2seq or ctc only")
    k = TASKS.index(args.task)
    for name, defaults in TASK_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, defaults[k])
        elif defaults[k] is None:
            tasks = [t for t, d in zip(TASKS, defaults) if d is not None]
            p.error(f"--{name.replace('_', '-')} applies to --task {' or '.join(tasks)} only")
    if args.task == "char-lm" and args.vocab < 2:
        p.error("--vocab must be >= 2")
    if args.task == "classify":
        if args.classes < 2:
            p.error("--classes must be >= 2")
    if args.task in ("classify", "seq2seq", "ctc"):
        if args.min_len > args.max_len:
            p.error(f"--min-len ({args.min_len}) must not exceed --max-len ({args.max_len})")
    if args.task == "tag":
        if args.tags < 2:
            p.error("--tags must be >= 2")
        if args.word_vocab < args.tags:
            p.error("--word-vocab must be at least --tags: every tag needs a word")
        lo, hi = args.chars_per_word
        if sum(args.char_vocab ** n for n in range(lo, min(hi, lo + 64) + 1)) < 2 * args.word_vocab:
            p.error("too few spellings for --word-vocab: raise --char-vocab or --chars-per-word")
    if args.task == "ctc":
        if args.stack > 16:
            p.error(f"--stack must be 1 to 16 frames, got {args.stack}")
        if args.min_len < 4 * args.stack:
            p.error(f"--min-len ({args.min_len} frames) must be at least 4 x --stack ({args.stack}): "
                    "every utterance needs room for a transcript")
    if args.task == "seq2seq":
        if args.bidirectional and args.hidden % 2:
            p.error("--hidden must be even with a bidirectional encoder (hidden / 2 per direction)")
    return args


class CharLm(nn.Module):
    def __init__(self, cell, layers, hidden, embed, vocab):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        if cell == "lstm":
            self.rnn = nn.LSTM(embed, hidden, num_layers=layers, batch_first=True)
        elif cell == "gru":
            self.rnn = nn.GRU(embed, hidden, num_layers=layers, batch_first=True)
        else:
            self.rnn = nn.RNN(embed, hidden, num_layers=layers, batch_first=True,
                              nonlinearity="tanh" if cell == "rnn_tanh" else "relu")
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens, state=None):
        out, state = self.rnn(self.embed(tokens), state)
        return self.head(out), state


def flops_per_token(cell, layers, hidden, embed, vocab):
    g, h = GATES[cell], hidden
    rnn = sum(2 * ((embed if l == 0 else h) + h) * g * h for l in range(layers))
    return rnn + 2 * h * vocab


def peak_rss_mb():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def run(args):
    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    model = CharLm(args.cell, args.layers, args.hidden, args.embed, args.vocab).float()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    b, t, v = args.batch, args.seq_len, args.vocab
    inputs = torch.randint(v, (b, t))
    targets = torch.randint(v, (b, t))

    model.train()
    times = []
    for i in range(args.steps + 1):
        t0 = time.perf_counter()
        optimizer.zero_grad()
        logits, _ = model(inputs)
        loss = F.cross_entropy(logits.reshape(-1, v), targets.reshape(-1))
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        loss_value = loss.item()
        elapsed = time.perf_counter() - t0
        if loss_value != loss_value or abs(loss_value) == float("inf"):
            raise SystemExit(f"benchmark loss became {loss_value}")
        if i > 0:
            times.append(elapsed)
    times.sort()
    step_seconds = times[len(times) // 2]  # the upper median, as rnnkit
    tokens_per_sec = b * t / step_seconds
    flops = 3.0 * flops_per_token(args.cell, args.layers, args.hidden, args.embed, v)

    model.eval()
    warm = 10
    with torch.no_grad():
        logits, state = model(torch.zeros((1, 1), dtype=torch.long))
        t0 = time.perf_counter()
        for i in range(warm + args.sample_chars):
            if i == warm:
                t0 = time.perf_counter()
            probs = torch.softmax(logits.reshape(-1), dim=0)
            token = torch.multinomial(probs, 1).reshape(1, 1)
            logits, state = model(token, state)
        sample_us = (time.perf_counter() - t0) * 1e6 / max(args.sample_chars, 1)

    return {
        "train_tokens_per_sec": tokens_per_sec,
        "train_gflops": flops * tokens_per_sec / 1e9,
        "step_seconds": step_seconds,
        "sample_us_per_char": sample_us,
        "peak_rss_mb": peak_rss_mb(),
        "threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------------------
# The classifier and tagger benchmarks (--task classify, --task tag)
# ---------------------------------------------------------------------------

WARMUP_STEPS = 3  # untimed steps before the timed ones, as rnnkit's TASK_WARMUP_STEPS
MAX_WORD_CHARS = 24  # characters of a word the tagger's character network reads
ALPHABET_START = 0x4E00  # caseless characters, so lowercasing keeps words distinct
MASK64 = (1 << 64) - 1


def _rotl(x, k):
    return ((x << k) | (x >> (64 - k))) & MASK64


class Rng:
    """rnnkit::Rng (xoshiro256++ seeded by SplitMix64), so that the data are rnnkit's."""

    def __init__(self, seed):
        x, s = seed & MASK64, []
        for _ in range(4):
            x = (x + 0x9E3779B97F4A7C15) & MASK64
            z = x
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
            s.append(z ^ (z >> 31))
        self.s = s

    def next_u64(self):
        s0, s1, s2, s3 = self.s
        result = (_rotl((s0 + s3) & MASK64, 23) + s0) & MASK64
        t = (s1 << 17) & MASK64
        s2 ^= s0
        s3 ^= s1
        s1 ^= s2
        s0 ^= s3
        s2 ^= t
        s3 = _rotl(s3, 45)
        self.s = [s0, s1, s2, s3]
        return result

    def uniform(self):
        return (self.next_u64() >> 11) * (1.0 / (1 << 53))

    def below(self, n):
        return (self.next_u64() * n) >> 64

    def uniforms_in(self, lo, hi, n):
        """[uniform_in(lo, hi) for _ in range(n)] (rnnkit's Rng::uniform_in: lo + (hi - lo) *
        uniform()), with the state in locals: the same numbers, several times faster."""
        s0, s1, s2, s3 = self.s
        out = [0.0] * n
        scale, width = 1.0 / (1 << 53), hi - lo
        for i in range(n):
            r = (s0 + s3) & MASK64
            r = ((((r << 23) | (r >> 41)) & MASK64) + s0) & MASK64
            t = (s1 << 17) & MASK64
            s2 ^= s0
            s3 ^= s1
            s1 ^= s2
            s0 ^= s3
            s2 ^= t
            s3 = ((s3 << 45) | (s3 >> 19)) & MASK64
            out[i] = lo + width * ((r >> 11) * scale)
        self.s = [s0, s1, s2, s3]
        return out


def make_rnn(cell, input_size, hidden, layers, bidirectional, dropout):
    kw = dict(num_layers=layers, bidirectional=bidirectional,
              dropout=dropout if layers > 1 else 0.0)
    if cell == "lstm":
        return nn.LSTM(input_size, hidden, **kw)
    if cell == "gru":
        return nn.GRU(input_size, hidden, **kw)
    return nn.RNN(input_size, hidden, nonlinearity="tanh" if cell == "rnn_tanh" else "relu", **kw)


def final_h(cell, h_n):
    return h_n[0] if cell == "lstm" else h_n


class Classifier(nn.Module):
    """rnnkit's Classifier: [T, B, C] -> (bi)RNN over the valid steps -> pooling -> dropout -> linear."""

    def __init__(self, a, dropout):
        super().__init__()
        self.cell, self.pool = a.cell, a.pool
        self.dirs = 2 if a.bidirectional else 1
        self.rnn = make_rnn(a.cell, a.channels, a.hidden, a.layers, a.bidirectional, dropout)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(self.dirs * a.hidden, a.classes)

    def forward(self, x, lengths):
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        out, h_n = self.rnn(packed)
        if self.pool == "last":
            h = final_h(self.cell, h_n)[-self.dirs:]  # the last layer's directions
            pooled = torch.cat(list(h), dim=1)
        elif self.pool == "max":
            y, _ = nn.utils.rnn.pad_packed_sequence(out, padding_value=float("-inf"))
            pooled = y.max(dim=0).values
        else:
            y, _ = nn.utils.rnn.pad_packed_sequence(out)
            pooled = y.sum(dim=0) / lengths.unsqueeze(1).to(y.dtype)
        return self.head(self.drop(pooled))


class Tagger(nn.Module):
    """rnnkit's Tagger: word embedding + char BiRNN final states -> dropout -> BiRNN -> dropout -> linear."""

    def __init__(self, a, words, chars, dropout):
        super().__init__()
        self.cell, self.char_hidden = a.cell, a.char_hidden
        self.word_embed = nn.Embedding(words, a.word_embed)
        if a.char_hidden > 0:
            self.char_embed = nn.Embedding(chars, a.char_embed)
            self.char_rnn = make_rnn(a.cell, a.char_embed, a.char_hidden, 1, True, 0.0)
        self.rnn = make_rnn(a.cell, a.word_embed + 2 * a.char_hidden, a.hidden, a.layers, True, dropout)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(2 * a.hidden, a.tags)

    def forward(self, word_ids, lengths, unique_of, char_ids, char_lengths):
        """Logits of the valid words [N, K], in the order of the packed sequence."""
        x = self.word_embed(word_ids)  # [T, B, Ew]
        if self.char_hidden > 0:
            chars = nn.utils.rnn.pack_padded_sequence(
                self.char_embed(char_ids), char_lengths, enforce_sorted=False)
            _, h_n = self.char_rnn(chars)
            h = final_h(self.cell, h_n)  # [2, U, Hc]: forward at the last char, reverse at the first
            x = torch.cat([x, torch.cat([h[0], h[1]], dim=1)[unique_of]], dim=2)
        packed = nn.utils.rnn.pack_padded_sequence(self.drop(x), lengths, enforce_sorted=False)
        out, _ = self.rnn(packed)
        return self.head(self.drop(out.data))


def classify_data(a):
    """The series of rnnkit::bench::classify::series, batch after batch."""
    rng = Rng(a.seed)
    cases = []
    for _ in range((WARMUP_STEPS + a.steps) * a.batch):
        n = a.min_len + rng.below(a.max_len - a.min_len + 1)
        label = rng.below(a.classes)
        values = [-1.0 + 2.0 * rng.uniform() for _ in range(n * a.channels)]
        cases.append((torch.tensor(values, dtype=torch.float32).reshape(n, a.channels), label))
    return cases


def standardizer(cases, channels):
    """Per-channel mean and std over all steps (as rnnkit's Standardizer::fit, in float64)."""
    allv = torch.cat([v for v, _ in cases]).double()
    mean = allv.mean(dim=0)
    var = ((allv * allv).mean(dim=0) - mean * mean).clamp(min=0.0)
    std = torch.where(var > 1e-12, var.sqrt(), torch.ones_like(var))
    return mean.float(), std.float()


def classify_flops(a, tokens, batch):
    d, g, h = (2 if a.bidirectional else 1), GATES[a.cell], a.hidden
    per_token = sum(d * 2 * ((a.channels if l == 0 else d * h) + h) * g * h for l in range(a.layers))
    return 3.0 * (tokens * per_token + batch * 2 * d * h * a.classes)


def tag_data(a):
    """The lexicon and sentences of rnnkit::bench::tag::sentences."""
    rng = Rng(a.seed)
    lo, hi = a.chars_per_word
    lexicon, seen = [], set()
    while len(lexicon) < a.word_vocab:
        n = lo + rng.below(hi - lo + 1)
        w = "".join(chr(ALPHABET_START + rng.below(a.char_vocab)) for _ in range(n))
        if w not in seen:
            seen.add(w)
            lexicon.append(w)
    lo, hi = a.words_per_sentence
    sentences = []
    for _ in range((WARMUP_STEPS + a.steps) * a.batch):
        n = lo + rng.below(hi - lo + 1)
        words, tags = [], []
        for _ in range(n):
            words.append(lexicon[rng.below(a.word_vocab)])
            tags.append(rng.below(a.tags))
        sentences.append((words, tags))
    return lexicon, sentences


def tag_flops(a, words, chars):
    g, h, hc = GATES[a.cell], a.hidden, a.char_hidden
    per_word = sum(4 * ((a.word_embed + 2 * hc if l == 0 else 2 * h) + h) * g * h
                   for l in range(a.layers)) + 4 * h * a.tags
    per_char = 4 * (a.char_embed + hc) * g * hc if hc > 0 else 0
    return 3.0 * (words * per_word + chars * per_char)


def clipped_chars(form, char_index):
    ids = [char_index.get(c, 0) for c in form]
    if len(ids) > MAX_WORD_CHARS:
        h = MAX_WORD_CHARS // 2
        ids = ids[:h] + ids[-h:]
    return ids


def encode_tag_batch(sents, word_index, char_index, word_dropout):
    """What rnnkit's Tagger::encode makes of a batch, as tensors (word dropout drawn here)."""
    b = len(sents)
    steps = max(len(w) for w, _ in sents)
    word_ids, unique_of, targets = [0] * (steps * b), [0] * (steps * b), [0] * (steps * b)
    unique, forms = {}, []
    for j, (words, tags) in enumerate(sents):
        for t, form in enumerate(words):
            p = t * b + j
            word_ids[p] = word_index.get(form.lower(), 0)
            u = unique.get(form)
            if u is None:
                u = unique[form] = len(forms)
                forms.append(form)
            unique_of[p] = u
            targets[p] = tags[t]
    lengths = torch.tensor([len(w) for w, _ in sents])
    word_ids = torch.tensor(word_ids).reshape(steps, b)
    drop = (torch.rand(steps, b) < word_dropout) & (word_ids != 0)
    word_ids = word_ids.masked_fill(drop, 0)
    clipped = [clipped_chars(f, char_index) for f in forms]
    char_steps, u = max(len(c) for c in clipped), len(clipped)
    char_ids = [0] * (char_steps * u)
    for k, ids in enumerate(clipped):
        for t, c in enumerate(ids):
            char_ids[t * u + k] = c
    return (word_ids, lengths, torch.tensor(unique_of).reshape(steps, b),
            torch.tensor(char_ids).reshape(char_steps, u),
            torch.tensor([len(c) for c in clipped]), torch.tensor(targets).reshape(steps, b))


def time_task_steps(model, work, step, autocast=False):
    """WARMUP_STEPS untimed + the timed steps: zero grads, step(i) -> loss, clip 5, Adam 1e-3;
    with autocast, the forward pass under torch.autocast('cpu', dtype=torch.bfloat16)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    times = []
    for i in range(len(work)):
        t0 = time.perf_counter()
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = step(i)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        loss_value = loss.item()
        elapsed = time.perf_counter() - t0
        if loss_value != loss_value or abs(loss_value) == float("inf"):
            raise SystemExit(f"benchmark loss became {loss_value}")
        times.append(elapsed)
    times, work = times[WARMUP_STEPS:], work[WARMUP_STEPS:]
    seconds = sum(times)
    tokens = sum(w[0] for w in work)
    times.sort()
    return {
        "train_tokens_per_sec": tokens / seconds,
        "train_gflops": sum(w[1] for w in work) / seconds / 1e9,
        "step_seconds": times[len(times) // 2],
        "tokens_per_step": tokens / len(times),
        "peak_rss_mb": peak_rss_mb(),
        "threads": torch.get_num_threads(),
    }


def run_classify(a):
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed + 1)
    cases = classify_data(a)
    mean, std = standardizer(cases, a.channels)
    model = Classifier(a, dropout=0.2).float()  # the dropout of `rnnkit classify train`
    batches = [cases[i:i + a.batch] for i in range(0, len(cases), a.batch)]
    work = []
    for b in batches:
        tokens = sum(v.shape[0] for v, _ in b)
        work.append((tokens, classify_flops(a, tokens, len(b))))

    def step(i):
        b = batches[i]
        x = nn.utils.rnn.pad_sequence([(v - mean) / std for v, _ in b])  # [T, B, C]
        lengths = torch.tensor([v.shape[0] for v, _ in b])
        targets = torch.tensor([label for _, label in b])
        return F.cross_entropy(model(x, lengths), targets)

    return {"task": "classify", **time_task_steps(model, work, step, a.autocast_bf16)}


def run_tag(a):
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed + 1)
    lexicon, sentences = tag_data(a)
    word_index = {w: i + 1 for i, w in enumerate(sorted({w.lower() for w in lexicon}))}  # 0 = <unk>
    char_index = {c: i + 1 for i, c in enumerate(sorted({c for w in lexicon for c in w}))}
    # the dropouts of `rnnkit tag train`
    model = Tagger(a, len(word_index) + 1, len(char_index) + 1, dropout=0.25).float()
    batches = [sentences[i:i + a.batch] for i in range(0, len(sentences), a.batch)]
    work = []
    for b in batches:
        distinct = {w for words, _ in b for w in words}
        chars = sum(min(len(w), MAX_WORD_CHARS) for w in distinct)
        words = sum(len(words) for words, _ in b)
        work.append((words, tag_flops(a, words, chars)))

    def step(i):
        word_ids, lengths, unique_of, char_ids, char_lengths, targets = encode_tag_batch(
            batches[i], word_index, char_index, word_dropout=0.1)
        logits = model(word_ids, lengths, unique_of, char_ids, char_lengths)
        packed = nn.utils.rnn.pack_padded_sequence(targets, lengths, enforce_sorted=False)
        return F.cross_entropy(logits, packed.data)

    return {"task": "tag", **time_task_steps(model, work, step, a.autocast_bf16)}


SEQ2SEQ_DROPOUT = 0.2  # the dropout of `rnnkit seq2seq train`
DECODE_WARMUP = 3  # sources decoded untimed before each timed pass, as rnnkit's bench


def tools_task_modules():
    """tools/task_modules.py, the module whose checkpoints rnnkit reads: the benchmark
    times that exact model."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
    import task_modules  # noqa: E402
    return task_modules


def seq2seq_pairs(a):
    """rnnkit::bench::seq2seq::pairs: the (WARMUP_STEPS + steps) * batch pairs (source ids,
    target ids) from Rng(seed), for each pair its source length n = min_len +
    below(max_len - min_len + 1), its target length max(1, n + below(3) - 1), the n
    source ids below(src_vocab), then the target ids 2 + below(tgt_vocab)."""
    rng = Rng(a.seed)
    pairs = []
    for _ in range((WARMUP_STEPS + a.steps) * a.batch):
        n = a.min_len + rng.below(a.max_len - a.min_len + 1)
        m = max(1, n + rng.below(3) - 1)
        source = [rng.below(a.src_vocab) for _ in range(n)]
        target = [2 + rng.below(a.tgt_vocab) for _ in range(m)]
        pairs.append((source, target))
    return pairs


def seq2seq_flops(a, src_tokens, tgt_tokens, batch):
    """Counted FLOPs of one training step (the module docstring has the formula): 3 x the
    multiply-adds x 2 of one forward pass, the encoder per source token, the decoder,
    attention at the batch's mean source length, combine and output per target token."""
    d, g, h = (2 if a.bidirectional else 1), GATES[a.cell], a.hidden
    he, attends = h // d, a.attention != "none"
    enc = sum(d * 2 * ((a.embed if l == 0 else h) + he) * g * he for l in range(a.layers))
    dec = sum(2 * ((a.embed + (h if attends else 0) if l == 0 else h) + h) * g * h for l in range(a.layers))
    dec += 2 * h * (a.tgt_vocab + 2)
    if attends:
        projects = a.attention in ("general", "additive")
        enc += 2 * h * h if projects else 0
        dec += 2 * 2 * (src_tokens / batch) * h + 2 * 2 * h * h
        dec += 2 * h * h if a.attention == "additive" else 0
    return 3.0 * (src_tokens * enc + tgt_tokens * dec)


def decode_speed(model, sources, decode):
    """Sources per second and decoder steps per source of decode(src, src_len), batch 1:
    DECODE_WARMUP untimed sources first, then all of them timed."""
    steps = [0]
    step = model.step

    def counted(tokens, feed, state, memory):
        steps[0] += tokens.shape[0]
        return step(tokens, feed, state, memory)

    model.step = counted  # counts the decoder steps (times the live hypotheses) and changes nothing
    inputs = [(torch.tensor(s, dtype=torch.int64).unsqueeze(1), torch.tensor([len(s)])) for s in sources]
    try:
        for src, src_len in inputs[:DECODE_WARMUP]:
            decode(src, src_len)
        steps[0] = 0
        t0 = time.perf_counter()
        for src, src_len in inputs:
            decode(src, src_len)
        seconds = time.perf_counter() - t0
    finally:
        del model.step
    return len(inputs) / seconds, steps[0] / len(inputs)


def run_seq2seq(a):
    tm = tools_task_modules()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed + 1)
    pairs = seq2seq_pairs(a)
    source_vocab = [f"t{i}" for i in range(a.src_vocab)]
    target_vocab = [tm.EOS_TOKEN, tm.BOS_TOKEN] + [f"t{i}" for i in range(a.tgt_vocab)]
    model = tm.Seq2seq(a.cell, a.attention, source_vocab, target_vocab, a.embed, a.hidden, a.layers,
                       a.bidirectional, dropout=SEQ2SEQ_DROPOUT).float()
    batches = [pairs[i:i + a.batch] for i in range(0, len(pairs), a.batch)]
    work = []
    for b in batches:
        src_tokens = sum(len(s) for s, _ in b)
        tgt_tokens = sum(len(t) + 1 for _, t in b)  # </s> included
        work.append((src_tokens + tgt_tokens, seq2seq_flops(a, src_tokens, tgt_tokens, len(b))))

    def step(i):
        b = batches[i]
        return model.loss(*tm.seq2seq_batch([s for s, _ in b], [t for _, t in b]))

    report = {"task": "seq2seq", **time_task_steps(model, work, step, a.autocast_bf16)}
    model.eval()
    sources = [s for s, _ in pairs[:a.decode_sources]]
    greedy, greedy_steps = decode_speed(model, sources, lambda s, n: model.greedy(s, n))
    beam, beam_steps = decode_speed(model, sources, lambda s, n: model.beam(s, n, a.beam))
    report.update(greedy_words_per_sec=greedy, beam_words_per_sec=beam, beam=a.beam,
                  greedy_steps_per_word=greedy_steps, beam_steps_per_word=beam_steps,
                  peak_rss_mb=peak_rss_mb())
    return report


CTC_DROPOUT = 0.1  # the dropout of `rnnkit ctc train`


def stacked_len(frames, stack):
    return -(-frames // stack)


def ctc_utterances(a):
    """rnnkit::bench::ctc::utterances: the (WARMUP_STEPS + steps) * batch utterances
    (features [frames, bands], target) from Rng(seed), for each its frames min_len +
    below(max_len - min_len + 1), a target of 1 + below(ceil(frames / stack) / 4) labels
    each 1 + below(labels), then its frames * bands values uniform_in(-1, 1)."""
    rng = Rng(a.seed)
    utts = []
    for _ in range((WARMUP_STEPS + a.steps) * a.batch):
        frames = a.min_len + rng.below(a.max_len - a.min_len + 1)
        n = 1 + rng.below(stacked_len(frames, a.stack) // 4)
        target = [1 + rng.below(a.labels) for _ in range(n)]
        values = torch.tensor(rng.uniforms_in(-1.0, 1.0, frames * a.bands), dtype=torch.float32)
        utts.append((values.reshape(frames, a.bands), target))
    return utts


def ctc_flops(a, steps):
    """rnnkit::bench::ctc::flops: 3 x steps x the multiply-adds x 2 of one forward step of
    the recurrent layers and the output layer."""
    d, g, h = (2 if a.bidirectional else 1), GATES[a.cell], a.hidden
    rnn = sum(d * 2 * ((a.stack * a.bands if l == 0 else d * h) + h) * g * h for l in range(a.layers))
    return 3.0 * steps * (rnn + 2 * d * h * (a.labels + 1))


def run_ctc(a):
    tm = tools_task_modules()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed + 1)
    utts = ctc_utterances(a)
    labels = [chr(0x100 + i) for i in range(a.labels)]  # their characters never matter here
    model = tm.CtcRecognizer(a.cell, a.bands, a.hidden, labels, a.layers, a.bidirectional,
                             a.stack, dropout=CTC_DROPOUT).float()
    batches = [utts[i:i + a.batch] for i in range(0, len(utts), a.batch)]
    work = []
    for b in batches:
        steps = sum(stacked_len(v.shape[0], a.stack) for v, _ in b)
        work.append((steps, ctc_flops(a, steps)))

    def step(i):
        b = batches[i]
        values = nn.utils.rnn.pad_sequence([v for v, _ in b], batch_first=True)  # [B, T, bands]
        lengths = torch.tensor([v.shape[0] for v, _ in b])
        return model.loss(values, lengths, [t for _, t in b])

    return {"task": "ctc", **time_task_steps(model, work, step, a.autocast_bf16)}


def main():
    args = parse_args()
    if args.task != "char-lm":
        run_task = {"classify": run_classify, "tag": run_tag, "seq2seq": run_seq2seq,
                    "ctc": run_ctc}[args.task]
        r = run_task(args)
        unit = {"classify": "timesteps", "tag": "words", "seq2seq": "tokens", "ctc": "steps"}[args.task]
        if args.json:
            print(json.dumps(r))
        else:
            print(f"torch {torch.__version__} {args.task} {args.cell} {args.layers}x{args.hidden} "
                  f"batch {args.batch} threads {r['threads']}")
            print(f"training: {r['train_tokens_per_sec']:.0f} {unit}/s, {r['train_gflops']:.1f} GFLOP/s "
                  f"({r['step_seconds'] * 1e3:.2f} ms per step, median; "
                  f"{r['tokens_per_step']:.0f} {unit} per step)")
            if args.task == "seq2seq":
                print(f"decoding one source at a time: {r['greedy_words_per_sec']:.0f} words/s greedy "
                      f"({r['greedy_steps_per_word']:.1f} decoder steps per word), "
                      f"{r['beam_words_per_sec']:.0f} words/s with beam {r['beam']} "
                      f"({r['beam_steps_per_word']:.1f})")
            print(f"peak RSS: {r['peak_rss_mb']:.1f} MiB")
        return
    r = run(args)
    if args.json:
        print(json.dumps(r))
    else:
        print(f"torch {torch.__version__} {args.cell} {args.layers}x{args.hidden} embed {args.embed} "
              f"vocab {args.vocab} batch {args.batch} seq {args.seq_len} threads {r['threads']}")
        print(f"training: {r['train_tokens_per_sec']:.0f} tokens/s, {r['train_gflops']:.1f} GFLOP/s "
              f"({r['step_seconds']:.3f} s per step, median)")
        print(f"sampling: {r['sample_us_per_char']:.1f} µs per character (batch 1)")
        print(f"peak RSS: {r['peak_rss_mb']:.1f} MiB")


if __name__ == "__main__":
    main()
