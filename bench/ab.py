#!/usr/bin/env python3
"""Two builds of rnnkit against each other on a noisy machine: paired runs.

Runs `OLD bench ARGS --json` and `NEW bench ARGS --json` in turn, ROUNDS times
(the order alternating every round), and prints each build's median of a figure
of the JSON (the training step's seconds unless --figure names others, such as
sample_us_per_char) and the median and quartiles of the per-round ratios
old/new. A machine shared with other tenants drifts by tens of percent over
minutes; the two runs of a round share that drift, so their ratio keeps a few
percent of signal that the medians of separate sessions lose.

    python3 bench/ab.py --old /tmp/rnnkit_before --new target/release/rnnkit \
        --rounds 10 -- --threads 2 --steps 4 --sample-chars 1
    python3 bench/ab.py --old A --new B --figure sample_us_per_char \
        --figure sample_int8_us_per_char -- --layers 1 --hidden 128 --steps 1

Standard library only.
"""

import argparse
import json
import statistics
import subprocess
import sys


def figures(binary, args, keys):
    """One `bench --json` run of `binary`: its figures `keys`."""
    out = subprocess.run(
        [binary, "bench", *args, "--json"], capture_output=True, text=True
    )
    if out.returncode != 0:
        sys.exit(f"{binary} bench failed ({out.returncode}):\n{out.stderr}")
    report = json.loads(out.stdout)
    missing = [k for k in keys if not isinstance(report.get(k), (int, float))]
    if missing:
        sys.exit(f"{binary} bench --json has no figure {missing}")
    return [report[k] for k in keys]


def quartiles(values):
    """First quartile, median and third quartile of `values`."""
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4)
    return q1, q2, q3


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old", required=True, help="the build before the change")
    p.add_argument("--new", required=True, help="the build after it")
    p.add_argument("--rounds", type=int, default=10, help="pairs of runs (10)")
    p.add_argument("--figure", action="append", metavar="KEY",
                   help="a JSON figure to compare, lower = better (repeatable; "
                        "default step_seconds)")
    p.add_argument("bench_args", nargs="*", help="after --: flags for `rnnkit bench`")
    a = p.parse_args()
    if a.rounds < 1:
        sys.exit("--rounds must be at least 1")
    keys = a.figure or ["step_seconds"]
    runs = {"old": [], "new": []}
    for r in range(a.rounds):
        order = ("old", "new") if r % 2 == 0 else ("new", "old")
        for which in order:
            runs[which].append(figures(getattr(a, which), a.bench_args, keys))
    for i, key in enumerate(keys):
        old = [f[i] for f in runs["old"]]
        new = [f[i] for f in runs["new"]]
        q1, med, q3 = quartiles([o / n for o, n in zip(old, new)])
        print(
            f"{key}: old {statistics.median(old):.4g}, new {statistics.median(new):.4g}; "
            f"speedup old/new per round: median {med:.3f} (quartiles {q1:.3f}–{q3:.3f}), "
            f"{a.rounds} rounds: bench {' '.join(a.bench_args)}"
        )


if __name__ == "__main__":
    main()
