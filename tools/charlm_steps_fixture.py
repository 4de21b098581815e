#!/usr/bin/env python3
"""PyTorch reference for several consecutive training steps of rnnkit's char LM.

For each cell (``lstm``, ``gru``) this script builds the PyTorch ``CharLM``
module of ``tools/charlm_torch.py`` (vocabulary = the sorted distinct
characters of ``tests/fixtures/charlm/sonnet.txt``, embedding E = 6, hidden
H = 9, L = 2 layers, no dropout) with torch's DEFAULT initialisation drawn
right after ``torch.manual_seed(SEED + i)`` (cell i), float32 parameters, and
trains it for STEPS = 6 consecutive steps in float32, batched exactly as
``rnnkit train`` batches (``Streams`` in ``tools/charlm_torch.py``) with no
validation split:

* ids = the encoded sonnet (n = 350 characters); batch = 3 streams,
  seq_len = 8, stream_len = (n - 1) // 3 = 116; batch k has inputs
  ``ids[b * stream_len + k * seq_len + t]`` and targets one position later
  (b = 0..2, t = 0..7), for k = 0..5;
* step k: ``zero_grad``, forward from the carried state (None, i.e. zeros,
  at k = 0; the detached final state of step k - 1 afterwards),
  ``loss = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1))``
  (mean over the 24 predictions), backward,
  ``clip_grad_norm_(params, max_norm=1.0)``, one
  ``torch.optim.Adam(params, lr=0.01)`` step (betas (0.9, 0.999), eps 1e-8),
  then the state is detached (truncated BPTT). With these weights the
  gradient norms are 0.24 to 0.51, below max_norm, so the clip never scales
  (its factor is clamped to exactly 1); ``tests/fixtures/charlm_step`` is the
  fixture where clipping does take place.

It writes ``OUT_DIR/<cell>.safetensors`` with

* the INITIAL parameters under their state-dict names (``embed.weight``,
  ``rnn.weight_ih_l0``, ..., ``head.bias``), F32, and the metadata
  ``rnnkit.cell`` and ``rnnkit.vocab``, so that the file loads as an rnnkit
  char-LM checkpoint (the loader ignores the other tensors);
* ``steps.losses``: F64 [6], the float32 loss of each step, widened exactly;
* ``steps.final.<P>``: F32, parameter P after the 6th Adam step;
* metadata ``steps.batch``, ``steps.seq_len``, ``steps.max_norm``,
  ``steps.lr``, ``steps.count``, ``generator`` and ``torch_version`` (all
  strings, in sorted order).

The output is deterministic (fixed seeds, one thread, sorted metadata).

Usage, from the repository root (Python environment with torch, safetensors
and numpy, see tools/README.md)::

    ~/torch/bin/python tools/charlm_steps_fixture.py tests/fixtures/charlm_steps
"""

from __future__ import annotations

import json
import os
import sys
from typing import Dict, List

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from charlm_torch import (  # noqa: E402
    META_CELL,
    META_VOCAB,
    SONNET,
    CharLM,
    Streams,
    canonical_safetensors,
    detach_state,
    encode,
    read_text,
    vocab_of,
)

CELLS = ["lstm", "gru"]
TEXT_PATH = os.path.join(os.path.dirname(HERE), "tests", "fixtures", "charlm", "sonnet.txt")
EMBED = 6
HIDDEN = 9
LAYERS = 2
BATCH = 3
SEQ_LEN = 8
STEPS = 6
MAX_NORM = 1.0
LR = 0.01
SEED = 20240612  # cell i: torch.manual_seed(SEED + i) right before building the model
GENERATOR = "tools/charlm_steps_fixture.py"


def make_case(cell: str, index: int, text: str) -> Dict[str, object]:
    """Trains STEPS steps for one cell; returns tensors, metadata and a summary."""
    vocab = vocab_of(text)
    V = len(vocab)
    ids = encode(text, vocab)
    streams = Streams(ids, BATCH, SEQ_LEN, "sonnet")
    assert streams.stream_len == (ids.numel() - 1) // BATCH
    assert streams.batches >= STEPS, (streams.batches, STEPS)

    torch.manual_seed(SEED + index)
    model = CharLM(cell, V, EMBED, HIDDEN, LAYERS)  # torch default init, float32
    model.train()
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    assert names == list(model.state_dict().keys()), names
    assert all(p.dtype == torch.float32 for p in params)
    init = {n: p.detach().clone().contiguous() for n, p in zip(names, params)}

    optimizer = torch.optim.Adam(params, lr=LR)
    state = None
    losses: List[float] = []
    grad_norms: List[float] = []
    for k in range(STEPS):
        x, y = streams.get(k)
        # Batching as rnnkit does it, spelled out.
        for b in range(BATCH):
            for t in range(SEQ_LEN):
                pos = b * streams.stream_len + k * SEQ_LEN + t
                assert x[b, t].item() == ids[pos].item() and y[b, t].item() == ids[pos + 1].item()
        optimizer.zero_grad(set_to_none=True)
        logits, state = model(x, state)
        loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
        assert loss.dtype == torch.float32
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm=MAX_NORM)
        optimizer.step()
        state = detach_state(state)
        losses.append(float(loss.item()))  # exact float32 value as a float64
        grad_norms.append(float(norm.item()))

    tensors: Dict[str, torch.Tensor] = dict(init)
    tensors["steps.losses"] = torch.tensor(losses, dtype=torch.float64)
    for n, p in zip(names, params):
        tensors[f"steps.final.{n}"] = p.detach().clone().contiguous()

    meta = {
        META_CELL: cell,
        META_VOCAB: json.dumps(vocab, ensure_ascii=False),
        "steps.batch": str(BATCH),
        "steps.seq_len": str(SEQ_LEN),
        "steps.max_norm": repr(MAX_NORM),
        "steps.lr": repr(LR),
        "steps.count": str(STEPS),
        "generator": GENERATOR,
        "torch_version": torch.__version__,
    }
    summary = {
        "seed": SEED + index,
        "vocab_size": V,
        "stream_len": streams.stream_len,
        "losses": losses,
        "grad_norms": grad_norms,
    }
    return {"tensors": tensors, "meta": meta, "summary": summary}


README = """\
PyTorch reference for several consecutive training steps of rnnkit's character
language model, with the hidden state carried from batch to batch. Each
<cell>.safetensors (cell = lstm, gru) holds the INITIAL parameters of the
PyTorch CharLM module (embed.weight, rnn.*, head.*; F32; embedding 6, hidden 9,
2 layers, torch's default initialisation after torch.manual_seed(20240612 + i),
i = 0 for lstm, 1 for gru) with the metadata rnnkit.cell and rnnkit.vocab (the
sorted distinct characters of ../charlm/sonnet.txt, 350 characters), so it
loads as an rnnkit char-LM checkpoint. PyTorch then trained it in float32 for
6 steps on that text, batched as rnnkit train batches with no validation split:
3 streams, seq_len 8, stream_len = (350 - 1) // 3 = 116, batch k (k = 0..5)
with inputs at positions b*116 + k*8 + t (b = 0..2, t = 0..7) and targets one
position later; the state starts at zeros and is carried (detached) from step
to step; each step is zero_grad, forward, mean cross-entropy over the 24
predictions, backward, clip_grad_norm_(max_norm = 1.0), Adam(lr = 0.01, betas
(0.9, 0.999), eps 1e-8); the gradient norms are 0.24 to 0.51, so the clip
never scales here (../charlm_step covers clipping that does). steps.losses
(F64 [6]) holds the float32 loss of each step, widened exactly, and
steps.final.<name> (F32) every parameter after the 6th step; the metadata
steps.batch, steps.seq_len, steps.max_norm, steps.lr and steps.count restate
the settings. The files are deterministic; regenerate
them from the repository root with
`~/torch/bin/python tools/charlm_steps_fixture.py tests/fixtures/charlm_steps`.
"""


def main(argv: List[str]) -> None:
    if len(argv) != 1:
        raise SystemExit("usage: charlm_steps_fixture.py OUT_DIR  (e.g. tests/fixtures/charlm_steps)")
    out_dir = argv[0]
    torch.set_num_threads(1)
    text = read_text(TEXT_PATH)
    assert text == SONNET, f"{TEXT_PATH} is not the fixture sonnet"
    os.makedirs(out_dir, exist_ok=True)
    for i, cell in enumerate(CELLS):
        case = make_case(cell, i, text)
        path = os.path.join(out_dir, f"{cell}.safetensors")
        with open(path, "wb") as f:
            f.write(canonical_safetensors(case["tensors"], case["meta"]))
        s = case["summary"]
        print(f"{path}: seed {s['seed']}, V {s['vocab_size']}, stream_len {s['stream_len']}")
        for k, (loss, norm) in enumerate(zip(s["losses"], s["grad_norms"])):
            print(f"  step {k + 1}: loss {loss:.17g}  grad_norm {norm:.9g}"
                  f"{'  (clipped)' if norm > MAX_NORM else ''}")
    with open(os.path.join(out_dir, "README"), "w", encoding="utf-8", newline="\n") as f:
        f.write(README)


if __name__ == "__main__":
    main(sys.argv[1:])
