#!/usr/bin/env python3
"""Decoding speed of a trained rnnkit seq2seq checkpoint, rnnkit beside PyTorch, on
real words: grapheme-to-phoneme on the CMUdict test part.

What it measures
----------------
The first --words (500) words of the CMUdict test part (data/cmudict/cmudict.dict,
read as rnnkit reads it: entries with a `#` dropped, `word(N)` folded into `word`,
only words of a-z and the apostrophe, the part by 64-bit FNV-1a of the word mod 100,
95-99 = test; dictionary order of first appearance; every distinct pronunciation of
a word is one of its references) decoded by one checkpoint of `rnnkit seq2seq
train` (--checkpoint), greedy and with a beam of --beam (5) hypotheses:

* rnnkit: the words and their references go to a temporary pairs file
  (`word<TAB>PH1 PH2 ...`, one line per reference), scored by
  `rnnkit seq2seq eval --checkpoint C --data FILE --beam 1|K --json --threads T`,
  which reports wer, per, sources, seconds and sources_per_second (decoding and
  scoring only; loading the model and reading the data are not timed).  Its greedy
  path decodes the words in batches of 128 of similar length, its beam path one
  word at a time.  Then `rnnkit seq2seq predict --checkpoint C --beam 1|K` with the
  words on stdin gives the outputs themselves (untimed), to compare word by word.
* PyTorch: the Seq2seq module of tools/task_modules.py loaded from the same
  checkpoint (task_modules.load), torch.set_num_threads(T), inference mode under
  torch.no_grad(), float32 on the CPU.  Greedy (Seq2seq.greedy) and beam
  (Seq2seq.beam, a port of rnnkit's beam search) one word at a time (batch 1); and
  greedy in rnnkit's batches (the words sorted by length, stably, in chunks of
  128), the like-for-like counterpart of rnnkit's greedy figure.  The source tensors
  are built before the clock starts.  The first 3 words are decoded untimed
  (warm-up), then all --words words timed: words/s = words / seconds.

WER = the fraction of words whose output equals none of their references; PER = the
edits to the closest reference (fewest edits, then the shortest) over that
reference's length, summed over the words (rnnkit's TransductionScores).  The same
model and the same algorithm should give the same outputs up to float rounding
(near-ties of two tokens can flip); "differ" counts the words whose PyTorch output is
not rnnkit's `predict` output.

Runs alternate (rnnkit greedy, PyTorch greedy, rnnkit beam, PyTorch beam) and each
is measured once: on a busy machine take the figures as rough.  Progress and the
command lines go to stderr, the table (or with --json one JSON object) to stdout.

    ~/torch/bin/python bench/seq2seq_decode.py --checkpoint runs/g2p/best.safetensors
    ~/torch/bin/python bench/seq2seq_decode.py --checkpoint C --words 200 --beam 5 --json
"""

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tools"))
import task_modules  # noqa: E402

WARMUP_WORDS = 3
GREEDY_CHUNK = 128  # rnnkit's Seq2seq::greedy decodes in batches of this many sources


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------


def fnv1a64(text):
    h = 0xcbf29ce484222325
    for b in text.encode("utf-8"):
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def is_word(word):
    return bool(word) and all("a" <= c <= "z" or c == "'" for c in word)


def cmudict_test(path):
    """[(word, [reference phoneme lists])] of the test part, in dictionary order of
    first appearance (rnnkit::data::parse_cmudict, then the part 95-99)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    words = {}
    out = []
    for line in text.split("\n"):
        line = line[:-1] if line.endswith("\r") else line
        if not line.strip() or "#" in line:
            continue
        fields = line.split()
        head, phones = fields[0], fields[1:]
        k = head.find("(")
        word = head[:k] if k >= 0 and head.endswith(")") else head
        if not phones:
            raise ValueError(f"{path}: {word!r} has no phonemes")
        if not is_word(word):
            continue
        if word in words:
            refs = out[words[word]][1]
            if phones not in refs:
                refs.append(phones)
        else:
            words[word] = len(out)
            out.append((word, [phones]))
    return [(w, refs) for w, refs in out if fnv1a64(w) % 100 >= 95]


def edit_distance(a, b):
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a):
        cur = [i + 1] + [0] * len(b)
        for j, y in enumerate(b):
            cur[j + 1] = min(prev[j] + (x != y), prev[j + 1] + 1, cur[j] + 1)
        prev = cur
    return prev[len(b)]


def score(outputs, refs):
    """(WER, PER) of token lists against the reference lists, as rnnkit scores them."""
    wrong = edits = ref_tokens = 0
    for out, rs in zip(outputs, refs):
        dist, length = min((edit_distance(out, r), len(r)) for r in rs)
        wrong += dist > 0
        edits += dist
        ref_tokens += length
    return wrong / max(len(outputs), 1), edits / max(ref_tokens, 1)


# ---------------------------------------------------------------------------
# PyTorch
# ---------------------------------------------------------------------------


def encode(model, word):
    try:
        ids = [model.source_ids[t] for t in task_modules.split_tokens(word, model.source_tokens)]
    except KeyError as e:
        raise SystemExit(f"{word!r}: token {e.args[0]!r} is not in the checkpoint's source vocabulary")
    return torch.tensor(ids, dtype=torch.int64)


def tokens_of(model, ids):
    return [model.target_vocab[i] for i in ids]


def time_batch1(decode, srcs):
    """Decodes every source alone (src [S, 1]) after WARMUP_WORDS untimed ones:
    (outputs as id lists, seconds)."""
    with torch.inference_mode():
        for s in srcs[:WARMUP_WORDS]:
            decode(s.unsqueeze(1), torch.tensor([len(s)]))
        inputs = [(s.unsqueeze(1), torch.tensor([len(s)])) for s in srcs]
        outs = []
        t0 = time.perf_counter()
        for src, src_len in inputs:
            outs.append(decode(src, src_len))
        secs = time.perf_counter() - t0
    return outs, secs


def time_greedy_chunks(model, srcs):
    """Greedy in rnnkit's batches: sources sorted by length (stable), chunks of 128,
    each decoded as one padded batch; WARMUP_WORDS words untimed first."""
    order = sorted(range(len(srcs)), key=lambda i: len(srcs[i]))
    batches = []
    for c in range(0, len(order), GREEDY_CHUNK):
        chunk = order[c:c + GREEDY_CHUNK]
        lens = torch.tensor([len(srcs[i]) for i in chunk], dtype=torch.int64)
        src = torch.zeros(int(lens.max()), len(chunk), dtype=torch.int64)
        for b, i in enumerate(chunk):
            src[:len(srcs[i]), b] = srcs[i]
        batches.append((chunk, src, lens))
    out = [None] * len(srcs)
    with torch.inference_mode():
        for s in srcs[:WARMUP_WORDS]:
            model.greedy(s.unsqueeze(1), torch.tensor([len(s)]))
        t0 = time.perf_counter()
        for chunk, src, lens in batches:
            for i, ids in zip(chunk, model.greedy(src, lens)):
                out[i] = ids
        secs = time.perf_counter() - t0
    return out, secs


# ---------------------------------------------------------------------------
# rnnkit
# ---------------------------------------------------------------------------


def run(argv, timeout, stdin=None):
    log("$ " + " ".join(shlex.quote(a) for a in argv))
    p = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise SystemExit(f"{argv[0]} failed (exit {p.returncode}):\n{p.stderr.strip()}")
    return p.stdout


def rnnkit_eval(args, pairs_path, beam):
    out = run([args.rnnkit, "seq2seq", "eval", "--checkpoint", args.checkpoint, "--data", pairs_path,
               "--beam", str(beam), "--length-penalty", str(args.length_penalty), "--json",
               "--threads", str(args.threads)], args.timeout)
    lines = [l for l in out.splitlines() if l.strip().startswith("{")]
    if not lines:
        raise SystemExit(f"rnnkit seq2seq eval printed no JSON:\n{out}")
    return json.loads(lines[-1])


def rnnkit_predict(args, words, beam):
    out = run([args.rnnkit, "seq2seq", "predict", "--checkpoint", args.checkpoint, "--beam", str(beam),
               "--length-penalty", str(args.length_penalty), "--threads", str(args.threads)],
              args.timeout, stdin="".join(w + "\n" for w in words))
    lines = out.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != len(words):
        raise SystemExit(f"rnnkit seq2seq predict gave {len(lines)} lines for {len(words)} words")
    return [[t for t in l.rstrip("\r").split(" ") if t] for l in lines]


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def env_note():
    keys = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS")
    set_ = [f"{k}={os.environ[k]}" for k in keys if k in os.environ]
    return ("; env: " + " ".join(set_)) if set_ else ""


def fmt(x, spec):
    return "—" if x is None else format(x, spec)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint of `rnnkit seq2seq train` (safetensors)")
    p.add_argument("--words", type=int, default=500, help="the first N words of the CMUdict test part [500]")
    p.add_argument("--beam", type=int, default=5, help="hypotheses of the beam search [5]")
    p.add_argument("--length-penalty", type=float, default=1.0,
                   help="α of the beam's score log p / len^α, passed to both [1]")
    p.add_argument("--threads", type=int, default=2, help="threads of both programs [2]")
    p.add_argument("--rnnkit", default=os.path.join(REPO, "target", "release", "rnnkit"),
                   help="rnnkit binary [target/release/rnnkit of this repository]")
    p.add_argument("--cmudict", default=os.path.join(REPO, "data", "cmudict", "cmudict.dict"),
                   help="the dictionary [data/cmudict/cmudict.dict of this repository]")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per rnnkit run [1800]")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = p.parse_args()
    if args.words < 1 or args.beam < 1 or args.threads < 1:
        p.error("--words, --beam and --threads must be at least 1")
    if not os.path.exists(args.rnnkit):
        p.error(f"--rnnkit {args.rnnkit}: not found (cargo build --release)")

    test = cmudict_test(args.cmudict)
    data = test[:args.words]
    if len(data) < args.words:
        log(f"the test part has {len(test)} words; using all of them")
    words = [w for w, _ in data]
    refs = [r for _, r in data]

    torch.set_num_threads(args.threads)
    model = task_modules.load(args.checkpoint)
    if not isinstance(model, task_modules.Seq2seq):
        raise SystemExit(f"{args.checkpoint}: not a seq2seq checkpoint")
    model.eval()
    srcs = [encode(model, w) for w in words]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

    modes = [("greedy", 1)] + ([(f"beam {args.beam}", args.beam)] if args.beam > 1 else [])
    results = {}
    with tempfile.TemporaryDirectory(prefix="seq2seq_decode.") as tmp:
        pairs_path = os.path.join(tmp, "pairs.tsv")
        with open(pairs_path, "w", encoding="utf-8") as f:
            for w, rs in data:
                for r in rs:
                    f.write(f"{w}\t{' '.join(r)}\n")
        for name, k in modes:
            rk = rnnkit_eval(args, pairs_path, k)
            if rk.get("sources") != len(words):
                raise SystemExit(f"rnnkit scored {rk.get('sources')} sources, expected {len(words)}")
            log(f"rnnkit {name}: {rk['sources_per_second']:.1f} words/s, WER {rk['wer']:.4f}")
            if k == 1:
                decode = lambda src, src_len: model.greedy(src, src_len)[0]  # noqa: E731
            else:
                decode = lambda src, src_len, k=k: model.beam(src, src_len, k, args.length_penalty)  # noqa: E731
            ids, secs = time_batch1(decode, srcs)
            outs = [tokens_of(model, i) for i in ids]
            wer, per = score(outs, refs)
            log(f"PyTorch {name} (batch 1): {len(words) / secs:.1f} words/s, WER {wer:.4f}")
            results[name] = {"beam": k, "rnnkit": rk, "torch": {"words_per_second": len(words) / secs,
                                                                "seconds": secs, "wer": wer, "per": per},
                             "torch_outputs": outs}
            if k == 1:
                ids, secs = time_greedy_chunks(model, srcs)
                outs = [tokens_of(model, i) for i in ids]
                wer, per = score(outs, refs)
                log(f"PyTorch greedy (batches of {GREEDY_CHUNK}): {len(words) / secs:.1f} words/s, WER {wer:.4f}")
                results["greedy-batched"] = {"beam": 1, "rnnkit": rk,
                                             "torch": {"words_per_second": len(words) / secs, "seconds": secs,
                                                       "wer": wer, "per": per},
                                             "torch_outputs": outs}
        predicted = {k: rnnkit_predict(args, words, k) for _, k in modes}

    rows = []
    labels = {"greedy": f"greedy (rnnkit batches of {GREEDY_CHUNK}, PyTorch batch 1)",
              "greedy-batched": f"greedy (both batches of {GREEDY_CHUNK})",
              f"beam {args.beam}": f"beam {args.beam} (both batch 1)"}
    for key in ["greedy", "greedy-batched"] + [n for n, _ in modes[1:]]:
        r = results[key]
        rk, pt = r["rnnkit"], r["torch"]
        rk_outs = predicted[r["beam"]]
        differ = [i for i, (a, b) in enumerate(zip(rk_outs, r["torch_outputs"])) if a != b]
        rows.append({
            "mode": key, "label": labels[key], "beam": r["beam"],
            "rnnkit_batch": GREEDY_CHUNK if r["beam"] == 1 else 1,
            "torch_batch": GREEDY_CHUNK if key == "greedy-batched" else 1,
            "rnnkit_words_per_second": rk["sources_per_second"], "rnnkit_seconds": rk["seconds"],
            "torch_words_per_second": pt["words_per_second"], "torch_seconds": pt["seconds"],
            "ratio": rk["sources_per_second"] / pt["words_per_second"],
            "rnnkit_wer": rk["wer"], "torch_wer": pt["wer"], "rnnkit_per": rk["per"], "torch_per": pt["per"],
            "rnnkit_predict_wer": score(rk_outs, refs)[0],
            "differ": len(differ),
            "differ_examples": [{"word": words[i], "rnnkit": " ".join(rk_outs[i]),
                                 "torch": " ".join(r["torch_outputs"][i])} for i in differ[:5]],
        })

    info = {
        "checkpoint": args.checkpoint, "words": len(words),
        "references": sum(len(r) for r in refs), "beam": args.beam,
        "length_penalty": args.length_penalty, "threads": args.threads,
        "model": {"cell": model.cell, "attention": model.attention, "hidden": model.hidden,
                  "layers": model.layers, "bidirectional": model.directions == 2,
                  "embed": model.src_embed.embedding_dim},
        "torch_version": torch.__version__, "cpu": cpu_model(), "load_average": load,
        "env": {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                            "RAYON_NUM_THREADS") if k in os.environ},
    }
    if args.json:
        print(json.dumps({**info, "rows": rows}, indent=2))
        return
    m = info["model"]
    print(f"{len(words)} CMUdict test words ({info['references']} references), "
          f"{m['cell'].upper()} {m['layers']} × {m['hidden']}{' bidirectional' if m['bidirectional'] else ''}, "
          f"attention {m['attention']}; {args.threads} threads, torch {torch.__version__}, {info['cpu']}"
          f"{'' if load is None else f'; load average {load:.2f} at start'}{env_note()}")
    print()
    print("| mode | rnnkit words/s | PyTorch words/s | ratio | WER rnnkit | WER PyTorch | PER rnnkit | PER PyTorch | outputs differ |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['label']} | {fmt(r['rnnkit_words_per_second'], ',.1f')} | "
              f"{fmt(r['torch_words_per_second'], ',.1f')} | {r['ratio']:.2f}× | "
              f"{100 * r['rnnkit_wer']:.2f} % | {100 * r['torch_wer']:.2f} % | "
              f"{100 * r['rnnkit_per']:.2f} % | {100 * r['torch_per']:.2f} % | "
              f"{r['differ']} / {len(words)} |")
    print()
    print(f"ratio = rnnkit ÷ PyTorch words/s (> 1 = rnnkit faster). rnnkit's greedy decodes "
          f"the words in batches of {GREEDY_CHUNK} of similar length, its beam one word at a time; "
          f"the first row sets that against PyTorch one word at a time, the second against "
          f"PyTorch in the same batches. outputs differ: words whose PyTorch output is not "
          f"`rnnkit seq2seq predict`'s.")
    for r in rows:
        for e in r["differ_examples"]:
            print(f"  {r['mode']}: {e['word']}: rnnkit {e['rnnkit']!r}, PyTorch {e['torch']!r}")


if __name__ == "__main__":
    main()
