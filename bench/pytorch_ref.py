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

Output is one JSON object with exactly the keys of `rnnkit bench --json`
(or a short human-readable summary without --json).

How to run
----------
torch is not a dependency of the repository; install it outside it:

    python3 -m venv ~/torch && ~/torch/bin/pip install torch
    ~/torch/bin/python bench/pytorch_ref.py --cell lstm --layers 2 --hidden 512 \\
        --embed 64 --vocab 65 --batch 64 --seq-len 100 --steps 10 \\
        --sample-chars 500 --threads 2 --json

bench/compare.py runs it alternately with `rnnkit bench` and tabulates both.
"""

import argparse
import json
import os
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


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="PyTorch reference of `rnnkit bench`: training and sampling "
        "throughput of the char-LM on synthetic tokens.")
    p.add_argument("--cell", choices=CELLS, default="lstm", help="recurrent cell [default: lstm]")
    p.add_argument("--layers", type=positive, default=2, help="stacked recurrent layers [default: 2]")
    p.add_argument("--hidden", type=positive, default=512, help="hidden units per layer [default: 512]")
    p.add_argument("--embed", type=positive, default=64, help="embedding width [default: 64]")
    p.add_argument("--vocab", type=int, default=65, help="vocabulary size [default: 65]")
    p.add_argument("--batch", type=positive, default=64, help="sequences per batch [default: 64]")
    p.add_argument("--seq-len", type=positive, default=100, help="timesteps per batch [default: 100]")
    p.add_argument("--steps", type=positive, default=10,
                   help="timed training steps (the median is reported) [default: 10]")
    p.add_argument("--sample-chars", type=non_negative, default=500,
                   help="timed batch-1 sampled characters [default: 500]")
    p.add_argument("--threads", type=positive, default=os.cpu_count() or 1,
                   help="worker threads [default: all cores]")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if args.vocab < 2:
        p.error("--vocab must be >= 2")
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


def main():
    args = parse_args()
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
