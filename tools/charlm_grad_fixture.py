#!/usr/bin/env python3
"""PyTorch reference for one full training step of rnnkit's character LM.

For each cell (``lstm``, ``gru``, ``rnn_tanh``) this script builds the PyTorch
``CharLM`` module of ``tools/charlm_torch.py`` (vocabulary V = 11, embedding
E = 5, hidden H = 7, L = 2 layers) with seeded uniform(-0.5, 0.5) weights drawn
in float32, then runs one training step in float64 on those exact weights:

1. forward: embedding -> 2-layer recurrent stack (initial state ``h0`` and,
   for the LSTM, ``c0``, both seeded uniform(-0.5, 0.5) float32) -> linear
   head, on a batch of B = 3 sequences of T = 6 random input ids;
2. ``loss = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1))``
   (the mean over the B·T predictions) against random target ids;
3. backward, recording the gradient of every parameter;
4. the global gradient norm (2-norm over all parameters, before clipping),
   then ``torch.nn.utils.clip_grad_norm_(params, max_norm)``, which multiplies
   every gradient by ``min(1, max_norm / (norm + 1e-6))``; max_norm = 0.1
   (the norms are 0.26 to 0.50 with these weights, so 0.5 would not clip
   them all), and the script asserts that the norm exceeds it, so clipping
   takes place;
5. one ``torch.optim.Adam(params, lr=0.01)`` step (betas (0.9, 0.999),
   eps 1e-8, no weight decay), recording the updated parameters.

It writes ``OUT_DIR/<cell>.safetensors`` with

* the initial parameters under their state-dict names (``embed.weight``,
  ``rnn.weight_ih_l0``, ..., ``head.bias``), F32, and the metadata
  ``rnnkit.cell`` and ``rnnkit.vocab``, so that the file loads as an rnnkit
  char-LM checkpoint (the loader ignores the other tensors);
* ``step.inputs`` and ``step.targets``: I64 [T, B], TIME-MAJOR (the transpose
  of the batch-first tensors fed to the torch module);
* ``step.h0`` (and ``step.c0`` for lstm): F32 [L, B, H];
* float64 references: ``step.loss`` [1], ``step.grad_norm`` [1] (before
  clipping), ``step.grad.<P>`` (unclipped gradient of parameter P) and
  ``step.updated.<P>`` (P after clipping and the Adam step) for every
  parameter P;
* metadata ``step.max_norm``, ``step.lr``, ``step.adam_betas``,
  ``step.adam_eps``, ``step.clip_eps``, ``generator`` and ``torch_version``
  (all strings, in sorted order).

The clip and Adam results are cross-checked against a direct NumPy evaluation
of the formulas (to 1e-12) before anything is written. The output is
deterministic (seeded generators, sorted metadata).

Usage, from the repository root (Python environment with torch, safetensors
and numpy, see tools/README.md)::

    ~/torch/bin/python tools/charlm_grad_fixture.py tests/fixtures/charlm_step
"""

from __future__ import annotations

import json
import os
import sys
from typing import Dict, List

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from charlm_torch import (  # noqa: E402
    META_CELL,
    META_VOCAB,
    CharLM,
    canonical_safetensors,
    fixture_model,
)

CELLS = ["lstm", "gru", "rnn_tanh"]
VOCAB: List[str] = list("\n abcdefghi")  # sorted by code point, as rnnkit orders it
EMBED = 5
HIDDEN = 7
LAYERS = 2
BATCH = 3
SEQ_LEN = 6
BOUND = 0.5  # weights and initial states are uniform(-BOUND, BOUND)
MAX_NORM = 0.1  # below every cell's gradient norm (0.26 to 0.50), so clipping happens
LR = 0.01
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_: coef = max_norm / (norm + 1e-6)
SEED = 20240607  # cell i: weights from SEED + i, data from SEED + 100 + i
GENERATOR = "tools/charlm_grad_fixture.py"


def uniform(shape, gen: torch.Generator) -> torch.Tensor:
    """float32 uniform(-BOUND, BOUND) values (exactly representable)."""
    return (torch.rand(shape, generator=gen, dtype=torch.float32) * 2 - 1) * BOUND


def make_case(cell: str, index: int) -> Dict[str, object]:
    """Runs the step for one cell; returns tensors, metadata and a summary."""
    V = len(VOCAB)
    assert VOCAB == sorted(VOCAB) and len(set(VOCAB)) == V

    # Parameters: seeded uniform(-0.5, 0.5), float32 (registration order).
    init = fixture_model(cell, V, SEED + index)
    assert init["embed.weight"].shape == (V, EMBED)
    assert init["rnn.weight_hh_l0"].shape[1] == HIDDEN

    # Data, batch-first as the torch module takes it.
    gen = torch.Generator().manual_seed(SEED + 100 + index)
    inputs = torch.randint(0, V, (BATCH, SEQ_LEN), generator=gen, dtype=torch.int64)
    targets = torch.randint(0, V, (BATCH, SEQ_LEN), generator=gen, dtype=torch.int64)
    h0 = uniform((LAYERS, BATCH, HIDDEN), gen)
    c0 = uniform((LAYERS, BATCH, HIDDEN), gen) if cell == "lstm" else None

    # Float64 model with the exact float32 weights.
    model = CharLM(cell, V, EMBED, HIDDEN, LAYERS).double()
    model.load_state_dict({k: v.double() for k, v in init.items()}, strict=True)
    model.train()
    names = [n for n, _ in model.named_parameters()]
    assert names == list(init.keys()), (names, list(init.keys()))
    params = [p for _, p in model.named_parameters()]

    state = (h0.double(), c0.double()) if cell == "lstm" else h0.double()
    logits, _ = model(inputs, state)
    loss = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1))
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in zip(names, params)}

    grad_norm = torch.sqrt(sum((g * g).sum() for g in grads.values()))
    if not grad_norm.item() > MAX_NORM:
        raise SystemExit(f"{cell}: grad norm {grad_norm.item()} does not exceed max_norm {MAX_NORM}; "
                         "clipping would not take place")
    clip_norm = torch.nn.utils.clip_grad_norm_(params, max_norm=MAX_NORM)
    assert abs(clip_norm.item() - grad_norm.item()) <= 1e-12 * grad_norm.item()

    opt = torch.optim.Adam(params, lr=LR, betas=ADAM_BETAS, eps=ADAM_EPS)
    opt.step()
    updated = {n: p.detach().clone() for n, p in zip(names, params)}

    # Independent check of clip + first Adam step: bias corrections make
    # m_hat = g_c and sqrt(v_hat) = |g_c|, so p1 = p0 - lr * g_c / (|g_c| + eps).
    coef = min(1.0, MAX_NORM / (grad_norm.item() + CLIP_EPS))
    for n in names:
        g = grads[n].numpy() * coef
        want = init[n].double().numpy() - LR * g / (np.abs(g) + ADAM_EPS)
        err = np.max(np.abs(want - updated[n].numpy()))
        assert err <= 1e-12, (cell, n, err)

    tensors: Dict[str, torch.Tensor] = {k: v.contiguous() for k, v in init.items()}
    tensors["step.inputs"] = inputs.t().contiguous()  # [T, B], time-major
    tensors["step.targets"] = targets.t().contiguous()
    tensors["step.h0"] = h0.contiguous()
    if c0 is not None:
        tensors["step.c0"] = c0.contiguous()
    tensors["step.loss"] = loss.detach().reshape(1).clone()
    tensors["step.grad_norm"] = grad_norm.detach().reshape(1).clone()
    for n in names:
        tensors[f"step.grad.{n}"] = grads[n].contiguous()
        tensors[f"step.updated.{n}"] = updated[n].contiguous()

    meta = {
        META_CELL: cell,
        META_VOCAB: json.dumps(VOCAB, ensure_ascii=False),
        "step.max_norm": repr(MAX_NORM),
        "step.lr": repr(LR),
        "step.adam_betas": json.dumps(list(ADAM_BETAS)),
        "step.adam_eps": repr(ADAM_EPS),
        "step.clip_eps": repr(CLIP_EPS),
        "generator": GENERATOR,
        "torch_version": torch.__version__,
    }
    summary = {
        "loss": loss.item(),
        "grad_norm": grad_norm.item(),
        "clip_coef": coef,
        "zero_grad_elems": int(sum((g == 0).sum().item() for g in grads.values())),
    }
    return {"tensors": tensors, "meta": meta, "summary": summary}


def main(argv: List[str]) -> None:
    if len(argv) != 1:
        raise SystemExit("usage: charlm_grad_fixture.py OUT_DIR  (e.g. tests/fixtures/charlm_step)")
    out_dir = argv[0]
    os.makedirs(out_dir, exist_ok=True)
    for i, cell in enumerate(CELLS):
        case = make_case(cell, i)
        path = os.path.join(out_dir, f"{cell}.safetensors")
        with open(path, "wb") as f:
            f.write(canonical_safetensors(case["tensors"], case["meta"]))
        s = case["summary"]
        print(f"{path}: loss {s['loss']:.17g}, grad_norm {s['grad_norm']:.17g}, "
              f"clip coef {s['clip_coef']:.6g}, zero grad elements {s['zero_grad_elems']}")


if __name__ == "__main__":
    main(sys.argv[1:])
