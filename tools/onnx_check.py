#!/usr/bin/env python3
"""Checks rnnkit's ONNX export in ONNX Runtime.

1. Every graph in tests/fixtures/onnx/ (written by `RNNKIT_WRITE_ONNX_FIXTURES=1 cargo
   test -p rnnkit --test onnx_export`, which also proves they are what the exporter
   writes today) passes `onnx.checker` with full shape inference, and ONNX Runtime's
   outputs on every committed case (variable lengths and several batch sizes
   included) match rnnkit's within 1e-5.
2. With --checkpoint (a char-LM checkpoint) and --rnnkit (the binary): the model is
   exported at every --opsets value, and a greedy continuation computed step by step
   in ONNX Runtime (one character per call, the state carried through h0/c0 → hn/cn)
   equals `rnnkit sample --temperature 0`.

    ~/torch/bin/pip install onnxruntime onnx safetensors numpy
    ~/torch/bin/python tools/onnx_check.py
    ~/torch/bin/python tools/onnx_check.py --rnnkit target/release/rnnkit \
        --checkpoint runs/char-lm/best.safetensors
"""

import argparse
import collections
import json
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from safetensors.numpy import load_file

TOLERANCE = 1e-5
ROOT = pathlib.Path(__file__).resolve().parent.parent


def session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def check_fixtures(folder):
    graphs = sorted(folder.glob("*.onnx"))
    if not graphs:
        sys.exit(f"no .onnx files in {folder}")
    worst_all = 0.0
    for path in graphs:
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
        cases_path = path.with_name(path.name[: -len(".onnx")] + ".cases.safetensors")
        tensors = load_file(str(cases_path))
        cases = collections.defaultdict(lambda: {"in": {}, "out": {}, "mask": {}})
        for name, value in tensors.items():
            case, kind, key = name.split("/", 2)
            cases[case][kind][key] = value
        sess = session(path)
        worst, lengths_varied = 0.0, 0
        for case_name in sorted(cases, key=lambda c: int(c[1:])):
            case = cases[case_name]
            names = [o.name for o in sess.get_outputs()]
            got = dict(zip(names, sess.run(names, case["in"])))
            for out, want in case["out"].items():
                have = got[out].astype(np.float64)
                if have.shape != want.shape:
                    sys.exit(f"{path.name} {case_name} {out}: shape {have.shape}, rnnkit {want.shape}")
                mask = case["mask"][out] > 0
                err = float(np.max(np.abs(have - want.astype(np.float64))[mask], initial=0.0))
                if err > TOLERANCE:
                    sys.exit(f"{path.name} {case_name} {out}: max error {err:.2e} > {TOLERANCE}")
                worst = max(worst, err)
            lens = case["in"].get("lengths")
            if lens is not None and len(set(lens.tolist())) > 1:
                lengths_varied += 1
        meta = {p.key: p.value for p in model.metadata_props}
        opset = model.opset_import[0].version
        print(
            f"{path.name:48s} opset {opset}  {len(cases)} cases ({lengths_varied} of varied lengths)"
            f"  max |ORT - rnnkit| {worst:.2e}  task {meta.get('rnnkit.task')}"
        )
        worst_all = max(worst_all, worst)
    print(f"{len(graphs)} graphs: worst error {worst_all:.2e} (tolerance {TOLERANCE})")


def greedy_in_ort(path, vocab, prime, length):
    sess = session(path)
    index = {c: i for i, c in enumerate(vocab)}
    inputs = {i.name: i for i in sess.get_inputs()}
    layers, hidden = inputs["h0"].shape[0], inputs["h0"].shape[2]
    state = {"h0": np.zeros((layers, 1, hidden), np.float32)}
    if "c0" in inputs:
        state["c0"] = np.zeros((layers, 1, hidden), np.float32)
    out_names = [o.name for o in sess.get_outputs()]
    text, logits = "", None
    for ch in prime if prime else "\n":
        res = dict(zip(out_names, sess.run(out_names, {"tokens": np.array([[index[ch]]], np.int64), **state})))
        logits = res["logits"][0, -1]
        state = {"h0": res["hn"], **({"c0": res["cn"]} if "cn" in res else {})}
    for _ in range(length):
        nxt = int(np.argmax(logits))
        text += vocab[nxt]
        res = dict(zip(out_names, sess.run(out_names, {"tokens": np.array([[nxt]], np.int64), **state})))
        logits = res["logits"][0, -1]
        state = {"h0": res["hn"], **({"c0": res["cn"]} if "cn" in res else {})}
    return text


def check_sampling(rnnkit, checkpoint, prime, length, opsets):
    sample = subprocess.run(
        [rnnkit, "sample", "--checkpoint", checkpoint, "--prime", prime, "--length", str(length), "--temperature", "0"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    want = sample[len(prime):]
    with tempfile.TemporaryDirectory() as tmp:
        for opset in opsets:
            out = pathlib.Path(tmp) / f"lm{opset}.onnx"
            subprocess.run([rnnkit, "export", "--checkpoint", checkpoint, "--out", str(out), "--opset", str(opset)], check=True)
            model = onnx.load(str(out))
            onnx.checker.check_model(model, full_check=True)
            vocab = json.loads({p.key: p.value for p in model.metadata_props}["rnnkit.vocab"])
            got = greedy_in_ort(out, vocab, prime, length)
            same = got == want
            print(f"greedy continuation, opset {opset}: {'equal' if same else 'DIFFERENT'} to `rnnkit sample --temperature 0` over {length} characters")
            if not same:
                sys.exit(f"ONNX Runtime: {got!r}\nrnnkit:       {want!r}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixtures", default=str(ROOT / "tests/fixtures/onnx"))
    ap.add_argument("--rnnkit", help="the rnnkit binary, for the greedy-continuation check")
    ap.add_argument("--checkpoint", help="a char-LM checkpoint for the greedy-continuation check")
    ap.add_argument("--prime", default="ROMEO.\n")
    ap.add_argument("--length", type=int, default=300)
    ap.add_argument("--opsets", default="13,17,21")
    a = ap.parse_args()
    print(f"onnx {onnx.__version__}, onnxruntime {ort.__version__}")
    check_fixtures(pathlib.Path(a.fixtures))
    if a.checkpoint:
        if not a.rnnkit:
            sys.exit("--checkpoint needs --rnnkit")
        check_sampling(a.rnnkit, a.checkpoint, a.prime, a.length, [int(x) for x in a.opsets.split(",")])


if __name__ == "__main__":
    main()
