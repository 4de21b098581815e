#!/usr/bin/env python3
"""Scaling model of data-parallel training (docs/scaling.md): ring all-reduce time of
the gradients, compute time per step from a measured GFLOP/s, and the efficiency with
and without overlapping the all-reduce with the backward pass. Standard library only.

    python3 tools/scaling_model.py --gflops-2x512 164 --gflops-1024 199 --latency-us 10
"""

import argparse

V = 76  # characters of the bundled Shakespeare
SEQ = 100  # timesteps per sequence (the benchmarks' and the presets' seq-len)
GATES = 4  # LSTM


def lstm_charlm(embed, hidden, layers, vocab=V):
    """Buckets in the order the backward pass finishes them (head, top layer, ...,
    first layer, embedding): (parameters, backward FLOPs per token) each."""
    buckets = [((hidden + 1) * vocab, 2 * 2 * hidden * vocab)]
    for l in reversed(range(layers)):
        inp = embed if l == 0 else hidden
        params = GATES * hidden * (inp + hidden) + 2 * GATES * hidden
        buckets.append((params, 2 * 2 * (inp + hidden) * GATES * hidden))
    buckets.append((vocab * embed, 0))
    return buckets


MODELS = {
    "LSTM 2×512 (embed 64)": lstm_charlm(64, 512, 2),
    "LSTM 1×1024 (embed 256)": lstm_charlm(256, 1024, 1),
}


def ring_allreduce(nbytes, p, bandwidth, latency):
    """Seconds for a ring all-reduce of nbytes over p nodes: 2(p-1)/p of the data
    crosses every link, in 2(p-1) steps each paying the latency once."""
    if p < 2:
        return 0.0
    return 2 * (p - 1) / p * nbytes / bandwidth + 2 * (p - 1) * latency


def step_times(buckets, batch, p, gbit, gflops, latency):
    """(compute, all-reduce, exposed with overlap) seconds of one step on one node
    with `batch` sequences of SEQ timesteps."""
    tokens = batch * SEQ
    bw = gbit * 1e9 / 8
    bwd_flops = [f * tokens for _, f in buckets]
    fwd = sum(bwd_flops) / 2  # forward = half of backward (3x forward in all)
    compute = (fwd + sum(bwd_flops)) / (gflops * 1e9)
    comm = [ring_allreduce(4 * n, p, bw, latency) for n, _ in buckets]
    # Bucket i is ready when the backward pass has finished it; the all-reduces go
    # one after another; what is left after the backward pass is exposed.
    t, end = fwd / (gflops * 1e9), 0.0
    for f, c in zip(bwd_flops, comm):
        t += f / (gflops * 1e9)
        end = max(end, t) + c
    exposed = max(0.0, end - compute)
    return compute, sum(comm), exposed


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gflops-2x512", type=float, default=164.0)
    ap.add_argument("--gflops-1024", type=float, default=199.0)
    ap.add_argument("--latency-us", type=float, default=10.0)
    ap.add_argument("--batch", type=int, default=64, help="sequences per node per step")
    a = ap.parse_args()
    gflops = {
        "LSTM 2×512 (embed 64)": a.gflops_2x512,
        "LSTM 1×1024 (embed 256)": a.gflops_1024,
    }
    lat = a.latency_us * 1e-6
    nodes = [2, 4, 8, 16, 32, 64]
    for name, buckets in MODELS.items():
        params = sum(n for n, _ in buckets)
        flops_tok = 1.5 * sum(f for _, f in buckets)
        g = gflops[name]
        compute, _, _ = step_times(buckets, a.batch, 2, 10, g, lat)
        print(f"\n### {name}: {params:,} parameters ({4 * params / 1e6:.1f} MB of f32 gradients)\n")
        print(
            f"Training {flops_tok / 1e6:.2f} MFLOP per token; at {g:.0f} GFLOP/s a step of "
            f"{a.batch} × {SEQ} tokens per node computes for {compute * 1e3:.0f} ms.\n"
        )
        print("| link | " + " | ".join(f"{p} nodes" for p in nodes) + " |")
        print("|---|" + "---:|" * len(nodes))
        for gbit in (10, 25, 100):
            cells = []
            for p in nodes:
                c, comm, exp = step_times(buckets, a.batch, p, gbit, g, lat)
                cells.append(f"{comm * 1e3:.1f} ms · {100 * c / (c + comm):.1f} % / {100 * c / (c + exp):.1f} %")
            print(f"| {gbit} Gbit/s | " + " | ".join(cells) + " |")
        print()
        print("| link | batch per node for 90 % (no overlap / overlap) | for 50 % (no overlap / overlap) |")
        print("|---|---:|---:|")
        for gbit in (10, 25, 100):
            row = []
            for target in (0.9, 0.5):
                found = []
                for overlap in (False, True):
                    b = next(
                        (
                            b
                            for b in range(1, 4097)
                            if (lambda c, comm, exp: c / (c + (exp if overlap else comm)))(
                                *step_times(buckets, b, 64, gbit, g, lat)
                            )
                            >= target
                        ),
                        None,
                    )
                    found.append(str(b) if b else "> 4096")
                row.append(" / ".join(found))
            print(f"| {gbit} Gbit/s | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
