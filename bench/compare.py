#!/usr/bin/env python3
"""Compare `rnnkit bench` with its PyTorch reference (bench/pytorch_ref.py).

Default mode: for each configuration of a built-in table, run rnnkit (f32),
rnnkit with --bf16 (bfloat16 matrix products; skip with --no-bf16) and the
PyTorch reference ALTERNATELY --repeats times, all with --threads workers, take
the median of each figure over the repeats and print a Markdown table; then the
same for the classifier, the tagger, the encoder-decoder and the CTC recogniser
(`--task classify`, `--task tag`, `--task seq2seq`, `--task ctc`), in a second table.  Ratios
read "> 1 = rnnkit better": tok/s ratio = rnnkit / PyTorch, sampling speed-up =
PyTorch µs / rnnkit µs (f32 weights, and bfloat16 weights), RSS ratio =
PyTorch MiB / rnnkit MiB.

--scaling: rnnkit alone, LSTM 2x512 (embed 64): threads 1 vs --threads,
batch 1 / 8 / 64 and seq-len 50 / 100 / 400.

Standard library only; run with plain python3 from anywhere:

    python3 bench/compare.py                      # full comparison table
    python3 bench/compare.py --only lstm-2x512    # one row
    python3 bench/compare.py --only classify,tag,seq2seq,ctc  # the task rows only
    python3 bench/compare.py --scaling            # rnnkit scaling table
    python3 bench/compare.py --json-out raw.json  # also dump every run

Progress goes to stderr, the table to stdout.
"""

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PYTORCH_REF = os.path.join(HERE, "pytorch_ref.py")

FIGURES = ("train_tokens_per_sec", "train_gflops", "step_seconds",
           "sample_us_per_char", "peak_rss_mb", "threads")

# name, flags (vocab 65 everywhere), show sampling, show peak RSS
COMPARE_ROWS = [
    ("lstm-2x512", "--cell lstm --layers 2 --hidden 512 --embed 64 --batch 64 --seq-len 100", True, True),
    ("gru-2x512", "--cell gru --layers 2 --hidden 512 --embed 64 --batch 64 --seq-len 100", False, False),
    ("rnn-2x512", "--cell rnn_tanh --layers 2 --hidden 512 --embed 64 --batch 64 --seq-len 100", False, False),
    ("lstm-1x1024", "--cell lstm --layers 1 --hidden 1024 --embed 256 --batch 64 --seq-len 100", False, False),
    ("lstm-1x128", "--cell lstm --layers 1 --hidden 128 --embed 32 --batch 32 --seq-len 64", True, False),
]
DEFAULT_STEPS = 10
SAMPLE_CHARS = 500

# The task rows: name, flags (the models and batches of the `rnnkit classify train`,
# `rnnkit tag train` and `rnnkit ctc train` recipes, and a G2P-sized encoder-decoder,
# given explicitly so both programs build the same model), timed steps (each on its own
# batch), what a token is.
TASK_ROWS = [
    ("classify", "--task classify --cell gru --layers 2 --hidden 256", 100, "timesteps"),
    ("tag", "--task tag --cell lstm --layers 2 --hidden 200 --char-hidden 100", 20, "words"),
    ("seq2seq", "--task seq2seq --cell lstm --layers 2 --hidden 256 --embed 64 --attention general "
     "--batch 64", 20, "tokens"),
    ("ctc", "--task ctc --cell lstm --layers 2 --hidden 128 --bidirectional true --stack 3 "
     "--bands 40 --labels 11 --min-len 100 --max-len 300 --batch 32", 20, "steps"),
]
TASK_FIGURES = ("train_tokens_per_sec", "train_gflops", "step_seconds", "tokens_per_step",
                "peak_rss_mb", "threads")

# rnnkit alone, LSTM 2x512 embed 64.  name, flags, threads (None = --threads), steps
SCALING_MODEL = "--cell lstm --layers 2 --hidden 512 --embed 64"


def scaling_rows(threads):
    rows = []
    for t in sorted({1, threads}):
        rows.append((f"threads-{t}", "--batch 64 --seq-len 100", t, DEFAULT_STEPS))
    for b, steps in ((1, 3), (8, DEFAULT_STEPS), (64, DEFAULT_STEPS)):
        rows.append((f"batch-{b}", f"--batch {b} --seq-len 100", threads, steps))
    for s, steps in ((50, DEFAULT_STEPS), (100, DEFAULT_STEPS), (400, 3)):
        rows.append((f"seq-{s}", f"--batch 64 --seq-len {s}", threads, steps))
    return rows


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def run_json(cmd, timeout, figures=FIGURES):
    """Runs one benchmark process; returns (report dict, None) or (None, error text)."""
    log("  $ " + " ".join(shlex.quote(c) for c in cmd))
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout} s"
    except OSError as e:
        return None, str(e)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        return None, f"exit {p.returncode}: {p.stderr.strip()[-2000:]}"
    for line in reversed(p.stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                r = json.loads(line)
            except ValueError:
                break
            missing = [k for k in figures if k not in r]
            if missing:
                return None, f"JSON lacks {missing}: {line}"
            r["wall_seconds"] = wall
            return r, None
    return None, f"no JSON object in output: {p.stdout.strip()[-2000:]}"


def medians(runs):
    """Median of every numeric figure that all runs report."""
    if not runs:
        return None
    keys = [k for k, v in runs[0].items()
            if isinstance(v, (int, float)) and all(k in r for r in runs)]
    return {k: statistics.median(r[k] for r in runs) for k in keys}


def fmt(x, digits=0):
    if x is None:
        return "—"
    return f"{x:,.{digits}f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}×"


def flags_with(flags, threads, steps, sample_chars):
    return (["--vocab", "65"] + shlex.split(flags)
            + ["--steps", str(steps), "--sample-chars", str(sample_chars),
               "--threads", str(threads), "--json"])


def torch_version(python):
    try:
        p = subprocess.run([python, "-c", "import torch; print(torch.__version__)"],
                           capture_output=True, text=True, timeout=120)
        return p.stdout.strip() or "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def env_note():
    """Threading-related environment variables that are set, for the table header."""
    keys = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS")
    set_ = [f"{k}={os.environ[k]}" for k in keys if k in os.environ]
    return ("; env: " + " ".join(set_)) if set_ else ""


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def measure(cmds, args, figures=FIGURES):
    """Runs the commands `cmds` (who -> argv) alternately --repeats times."""
    runs = {who: [] for who in cmds}
    errors = []
    for rep in range(args.repeats):
        for who in cmds:
            log(f" repeat {rep + 1}/{args.repeats} {who}")
            r, err = run_json(cmds[who], args.timeout, figures)
            if r is None:
                log(f"  FAILED: {err}")
                errors.append(f"{who}: {err}")
            else:
                runs[who].append(r)
    return runs, errors


def compare(args):
    rows = [r for r in COMPARE_ROWS if args.only is None or r[0] in args.only]
    results = []
    failed = False
    for name, flags, with_sampling, with_rss in rows:
        steps = args.steps or DEFAULT_STEPS
        sample_chars = SAMPLE_CHARS if with_sampling else 0
        extra = flags_with(flags, args.threads, steps, sample_chars)
        cmds = {
            "rnnkit": [args.rnnkit, "bench"] + extra,
            "pytorch": [args.python, PYTORCH_REF] + extra,
        }
        if not args.no_bf16:
            bf16 = flags_with(flags, args.threads, steps, 0)
            cmds["rnnkit_bf16"] = [args.rnnkit, "bench"] + bf16 + ["--bf16"]
        log(f"{name}: {flags} (steps {steps}, sample-chars {sample_chars}, threads {args.threads})")
        runs, errors = measure(cmds, args)
        failed = failed or bool(errors)
        results.append({
            "name": name, "flags": flags, "steps": steps, "sample_chars": sample_chars,
            "sampling": with_sampling, "rss": with_rss, "commands": cmds,
            "runs": runs, "errors": errors,
            "median": {who: medians(rs) for who, rs in runs.items()},
        })

    bf = not args.no_bf16
    out = [
        f"rnnkit vs PyTorch {torch_version(args.python)}, {args.threads} threads, "
        f"median of {args.repeats} alternating runs each; CPU: {cpu_model()} "
        f"({os.cpu_count()} logical cores){env_note()}",
    ]
    g = lambda m, k: None if m is None else m.get(k)  # noqa: E731
    tok = lambda m: g(m, "train_tokens_per_sec")  # noqa: E731
    if results:
        out += char_lm_table(results, bf, g, tok)
        out += gemm_ceiling(args, g(results[0]["median"]["rnnkit"], "fma_peak_gflops"))
    task_results, task_failed = compare_tasks(args)
    if task_results:
        out += task_table(task_results, bf, g, tok, args.pytorch_bf16)
    return results + task_results, out, failed or task_failed


def pct(part, whole):
    if part is None or whole is None or whole == 0:
        return "—"
    return f"{100 * part / whole:.1f} %"


def table(header, rows):
    return ["", "| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)] + [
        "| " + " | ".join(r) + " |" for r in rows]


def char_lm_table(results, bf, g, tok):
    def share(m, key):
        return fmt(g(m, key), 1) + " %" if g(m, key) else "—"

    header = (["configuration", "rnnkit tok/s"] + (["rnnkit bf16 tok/s"] if bf else [])
              + ["PyTorch tok/s", "ratio"] + (["bf16 ratio"] if bf else [])
              + ["rnnkit GFLOP/s"] + (["bf16 GFLOP/s"] if bf else []) + ["PyTorch GFLOP/s"]
              + ["f32 FMA peak GFLOP/s", "rnnkit % of peak", "executed"]
              + (["bf16 % of bf16 peak", "executed"] if bf else []) + ["PyTorch % of peak"]
              + ["rnnkit µs/char", "bound µs/char", "÷ bound", "bf16-weights µs/char",
                 "bf16 bound µs/char", "÷ bound", "int8-weights µs/char", "int8 bound µs/char",
                 "÷ bound", "PyTorch µs/char", "sampling speed-up",
                 "bf16-weights speed-up", "int8-weights speed-up", "rnnkit peak RSS MiB", "PyTorch peak RSS MiB",
                 "RSS ratio"])
    rows = []
    for res in results:
        med = res["median"]
        mr, mp, mb = med["rnnkit"], med["pytorch"], med.get("rnnkit_bf16")
        peak = g(mr, "fma_peak_gflops")
        cells = [res["name"], fmt(tok(mr))] + ([fmt(tok(mb))] if bf else [])
        cells += [fmt(tok(mp)), ratio(tok(mr), tok(mp))] + ([ratio(tok(mb), tok(mp))] if bf else [])
        cells += [fmt(g(mr, "train_gflops"), 1)] + ([fmt(g(mb, "train_gflops"), 1)] if bf else [])
        cells += [fmt(g(mp, "train_gflops"), 1), fmt(peak), pct(g(mr, "train_gflops"), peak),
                  pct(g(mr, "train_executed_gflops"), peak)]
        cells += [share(mb, "train_peak_percent"), share(mb, "train_executed_peak_percent")] if bf else []
        cells += [pct(g(mp, "train_gflops"), peak)]
        if res["sampling"]:
            us, us16, ust = (g(mr, "sample_us_per_char"), g(mr, "sample_bf16_us_per_char"),
                             g(mp, "sample_us_per_char"))
            bound, bound16 = g(mr, "sample_bound_us_per_char"), g(mr, "sample_bf16_bound_us_per_char")
            us8, bound8 = g(mr, "sample_int8_us_per_char"), g(mr, "sample_int8_bound_us_per_char")
            cells += [fmt(us, 1), fmt(bound, 1), ratio(us, bound), fmt(us16, 1), fmt(bound16, 1),
                      ratio(us16, bound16), fmt(us8, 1), fmt(bound8, 1), ratio(us8, bound8),
                      fmt(ust, 1), ratio(ust, us), ratio(ust, us16), ratio(ust, us8)]
        else:
            cells += ["—"] * 13
        if res["rss"]:
            cells += [fmt(g(mr, "peak_rss_mb"), 1), fmt(g(mp, "peak_rss_mb"), 1),
                      ratio(g(mp, "peak_rss_mb"), g(mr, "peak_rss_mb"))]
        else:
            cells += ["—"] * 3
        rows.append(cells)
    out = table(header, rows)
    out += ["", "ratio = rnnkit tok/s ÷ PyTorch tok/s; sampling speed-up = PyTorch µs ÷ rnnkit µs; "
            "RSS ratio = PyTorch MiB ÷ rnnkit MiB (> 1 = rnnkit better in all three). "
            "bf16: `rnnkit bench --bf16` (bfloat16 operands, f32 sums in the matrix products) "
            "and sampling with bfloat16 weights; int8: sampling with int8 weights (a scale per row, "
            "the vector quantised at each product); every other column is f32. "
            "Peaks are measured by `rnnkit bench` on this machine with the same threads "
            "(independent FMA / vdpbf16ps chains on every thread, or AMX tile products where the bf16 "
            "products run on AMX: `bf16_unit`); PyTorch's share is of the same f32 peak. "
            "GFLOP/s count the same FLOPs for both programs (bench/README.md); executed = the share "
            "in the FLOPs rnnkit executes, whose first layer's input products run over the "
            "vocabulary's rows instead of every token's. "
            "bound = the weight bytes batch-1 sampling reads per character ÷ the read bandwidth "
            "measured on a working set of that size; ÷ bound = measured µs ÷ bound (1 = at the memory limit)."]
    return out


# The f32 products of one LSTM 2x512 training step (m, k, n, A transposed): over the
# whole batch the input projection, the input gradient and a weight gradient dgᵀ·x,
# and one timestep's product with W_hh.
CEILING_SHAPES = [(6400, 512, 2048, False), (6400, 2048, 512, False), (2048, 6400, 512, True),
                  (64, 512, 2048, False)]

CEILING_SCRIPT = """
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
out = []
for m, k, n, transposed in json.loads(sys.argv[2]):
    a, b, c = torch.randn(k, m).t() if transposed else torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)
    times = []
    reps = 200 if m * n * k < 1 << 28 else 1
    for _ in range(9):
        t = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b, out=c)
        times.append((time.perf_counter() - t) / reps)
    times.sort()
    out.append(2 * m * n * k / times[4] / 1e9)
print(json.dumps(out))
"""


def gemm_ceiling(args, peak):
    """PyTorch's own f32 matrix product (MKL or oneDNN) at the large products of a
    training step, with the same threads: what a tuned GEMM reaches of the peak here."""
    log("PyTorch f32 GEMM ceiling")
    try:
        p = subprocess.run([args.python, "-c", CEILING_SCRIPT, str(args.threads),
                            json.dumps(CEILING_SHAPES)],
                           capture_output=True, text=True, timeout=600)
        rates = json.loads(p.stdout)
    except (OSError, subprocess.TimeoutExpired, ValueError) as e:
        return ["", f"PyTorch f32 GEMM ceiling: not measured ({e})"]
    parts = [f"{f'({k}×{m})ᵀ' if t else f'{m}×{k}'} · {k}×{n} {fmt(r, 1)} GFLOP/s ({pct(r, peak)})"
             for (m, k, n, t), r in zip(CEILING_SHAPES, rates)]
    return ["", "PyTorch's own f32 matrix product (`torch.mm`, median of 9) at LSTM 2×512's "
            f"products (whole batch; the last one timestep's), {args.threads} threads, "
            "against the same FMA peak: "
            + "; ".join(parts) + "."]


def compare_tasks(args):
    """The task rows: rnnkit, PyTorch (and rnnkit --bf16, PyTorch under bf16 autocast) alternately."""
    rows = [r for r in TASK_ROWS if args.only is None or r[0] in args.only]
    results = []
    failed = False
    for name, flags, default_steps, unit in rows:
        steps = args.steps or default_steps
        extra = shlex.split(flags) + ["--steps", str(steps), "--threads", str(args.threads), "--json"]
        cmds = {
            "rnnkit": [args.rnnkit, "bench"] + extra,
            "pytorch": [args.python, PYTORCH_REF] + extra,
        }
        if not args.no_bf16:
            cmds["rnnkit_bf16"] = [args.rnnkit, "bench"] + extra + ["--bf16"]
        if args.pytorch_bf16:
            cmds["pytorch_bf16"] = [args.python, PYTORCH_REF] + extra + ["--autocast-bf16"]
        log(f"{name}: {flags} (steps {steps}, threads {args.threads})")
        runs, errors = measure(cmds, args, TASK_FIGURES)
        # Both programs draw the same data from the same seed: equal tokens per step.
        per_step = {round(r["tokens_per_step"], 6) for rs in runs.values() for r in rs}
        if len(per_step) > 1:
            errors.append(f"the programs trained on different data: tokens per step {sorted(per_step)}")
            log(f"  FAILED: {errors[-1]}")
        # Both count the multiply-adds of their model: equal models, equal work per token.
        work = {who: r["train_gflops"] / r["train_tokens_per_sec"]
                for who, rs in runs.items() for r in rs[:1] if r.get("train_tokens_per_sec")}
        if work and max(work.values()) > 1.1 * min(work.values()):
            errors.append(f"the programs trained different models: GFLOP per token {work}")
            log(f"  FAILED: {errors[-1]}")
        failed = failed or bool(errors)
        results.append({
            "name": name, "flags": flags, "steps": steps, "unit": unit, "commands": cmds,
            "runs": runs, "errors": errors,
            "median": {who: medians(rs) for who, rs in runs.items()},
        })
    return results, failed


def task_table(results, bf, g, tok, pbf=False):
    header = (["task", "tokens per step", "rnnkit tok/s"] + (["rnnkit bf16 tok/s"] if bf else [])
              + ["PyTorch tok/s", "ratio"] + (["bf16 ratio"] if bf else [])
              + (["PyTorch autocast-bf16 tok/s", "bf16 ratio to it"] if pbf else [])
              + ["rnnkit GFLOP/s"] + (["bf16 GFLOP/s"] if bf else []) + ["PyTorch GFLOP/s"]
              + ["rnnkit % of f32 peak", "PyTorch % of f32 peak", "rnnkit ms/step",
                 "PyTorch ms/step", "rnnkit peak RSS MiB", "PyTorch peak RSS MiB"])
    rows = []
    for res in results:
        med = res["median"]
        mr, mp, mb = med["rnnkit"], med["pytorch"], med.get("rnnkit_bf16")
        peak = g(mr, "fma_peak_gflops")
        per_step = g(mr, "tokens_per_step") or g(mp, "tokens_per_step")
        ms = lambda m: None if g(m, "step_seconds") is None else 1e3 * m["step_seconds"]  # noqa: E731
        cells = [res["name"], f"{fmt(per_step, 1)} {res['unit']}", fmt(tok(mr))]
        cells += [fmt(tok(mb))] if bf else []
        cells += [fmt(tok(mp)), ratio(tok(mr), tok(mp))] + ([ratio(tok(mb), tok(mp))] if bf else [])
        if pbf:
            mpb = med.get("pytorch_bf16")
            cells += [fmt(tok(mpb)), ratio(tok(mb), tok(mpb)) if bf else "-"]
        cells += [fmt(g(mr, "train_gflops"), 1)] + ([fmt(g(mb, "train_gflops"), 1)] if bf else [])
        cells += [fmt(g(mp, "train_gflops"), 1), pct(g(mr, "train_gflops"), peak),
                  pct(g(mp, "train_gflops"), peak), fmt(ms(mr), 2), fmt(ms(mp), 2),
                  fmt(g(mr, "peak_rss_mb"), 1), fmt(g(mp, "peak_rss_mb"), 1)]
        rows.append(cells)
    out = table(header, rows)
    out += ["", "Tasks: tok/s = valid tokens (timesteps for classify, words for tag, source and "
            "target tokens with </s> for seq2seq, stacked steps of 3 frames for ctc) of the timed "
            "steps ÷ their seconds, each step on "
            "its own batch of the same synthetic data in both programs; ms/step is the median step. "
            "ratio = rnnkit ÷ PyTorch (> 1 = rnnkit faster)."]
    return out


def scaling(args):
    rows = [r for r in scaling_rows(args.threads) if args.only is None or r[0] in args.only]
    results = []
    failed = False
    done = {}  # identical commands are measured once
    for name, flags, threads, steps in rows:
        steps = args.steps or steps
        cmd = [args.rnnkit, "bench"] + flags_with(f"{SCALING_MODEL} {flags}", threads, steps, 0)
        key = tuple(cmd)
        log(f"{name}: {SCALING_MODEL} {flags} (steps {steps}, threads {threads})")
        if key in done:
            log("  same command as an earlier row; reusing its runs")
            runs, errors = done[key]
        else:
            runs, errors = [], []
            for rep in range(args.repeats):
                log(f" repeat {rep + 1}/{args.repeats}")
                r, err = run_json(cmd, args.timeout)
                if r is None:
                    log(f"  FAILED: {err}")
                    errors.append(err)
                    failed = True
                else:
                    runs.append(r)
            done[key] = (runs, errors)
        results.append({"name": name, "flags": f"{SCALING_MODEL} {flags}", "threads": threads,
                        "steps": steps, "command": cmd, "runs": {"rnnkit": runs},
                        "errors": errors, "median": {"rnnkit": medians(runs)}})

    out = [
        f"rnnkit scaling, LSTM 2x512 embed 64 vocab 65, median of {args.repeats} runs; "
        f"CPU: {cpu_model()} ({os.cpu_count()} logical cores){env_note()}",
        "",
        "| config | tok/s | GFLOP/s | s/step |",
        "|---|---:|---:|---:|",
    ]
    for res in results:
        m = res["median"]["rnnkit"]
        desc = {"threads": f"threads {res['threads']} (batch 64, seq 100)",
                "batch": f"batch {res['name'].split('-')[1]} (seq 100, {res['threads']} threads)",
                "seq": f"seq-len {res['name'].split('-')[1]} (batch 64, {res['threads']} threads)",
                }[res["name"].split("-")[0]]
        if m is None:
            out.append(f"| {desc} | — | — | — |")
        else:
            out.append(f"| {desc} | {fmt(m['train_tokens_per_sec'])} | {fmt(m['train_gflops'], 1)} "
                       f"| {m['step_seconds']:.3f} |")
    out += ["", "With cost linear in seq-len, tok/s stays flat across the seq-len rows."]
    return results, out, failed


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rnnkit", default=os.path.join(REPO, "target", "release", "rnnkit"),
                   help="rnnkit binary [default: target/release/rnnkit of this repository]")
    p.add_argument("--python", default=os.path.expanduser("~/torch/bin/python"),
                   help="Python with torch installed [default: ~/torch/bin/python]")
    p.add_argument("--threads", type=int, default=2, help="worker threads for both [default: 2]")
    p.add_argument("--repeats", type=int, default=3,
                   help="alternating runs per configuration [default: 3]")
    p.add_argument("--steps", type=int, default=None,
                   help="timed training steps for every row [default: 10; 100 for classify, "
                        "20 for tag, seq2seq and ctc, 3 for the batch-1 and seq-400 scaling rows]")
    p.add_argument("--only", metavar="NAMES", default=None,
                   help="run only these rows (comma-separated names, e.g. classify,tag,seq2seq,ctc)")
    p.add_argument("--scaling", action="store_true",
                   help="measure rnnkit alone: threads, batch and seq-len scaling")
    p.add_argument("--no-bf16", action="store_true",
                   help="skip the rnnkit --bf16 runs and columns")
    p.add_argument("--pytorch-bf16", action="store_true",
                   help="task rows: also time PyTorch under bfloat16 autocast (pytorch_ref.py "
                        "--autocast-bf16) and compare rnnkit --bf16 with it")
    p.add_argument("--json-out", metavar="FILE", help="write every raw result to FILE")
    p.add_argument("--timeout", type=float, default=1800,
                   help="seconds before one benchmark process is abandoned [default: 1800]")
    args = p.parse_args()

    if args.threads < 1 or args.repeats < 1 or (args.steps is not None and args.steps < 1):
        p.error("--threads, --repeats and --steps must be >= 1")
    names = ([r[0] for r in scaling_rows(args.threads)] if args.scaling
             else [r[0] for r in COMPARE_ROWS + TASK_ROWS])
    if args.only is not None:
        args.only = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in args.only if n not in names]
        if unknown or not args.only:
            p.error(f"--only: unknown row {', '.join(unknown) or '(none)'}; one of {', '.join(names)}")
    if not os.path.isfile(args.rnnkit):
        p.error(f"rnnkit binary not found at {args.rnnkit} (cargo build --release, or --rnnkit PATH)")
    if not args.scaling and not os.path.isfile(args.python):
        p.error(f"Python not found at {args.python} (see bench/README.md, or --python PATH)")

    results, lines, failed = (scaling if args.scaling else compare)(args)
    print("\n".join(lines))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"mode": "scaling" if args.scaling else "compare",
                       "threads": args.threads, "repeats": args.repeats,
                       "cpu": cpu_model(), "rows": results}, f, indent=2)
        log(f"raw results written to {args.json_out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
