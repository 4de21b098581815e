#!/usr/bin/env python3
"""PyTorch reference for rnnkit's CTC loss (``loss::ctc_loss``).

Each case runs, in float64 and in float32,

    loss = F.ctc_loss(F.log_softmax(logits, -1), targets, input_lengths, target_lengths,
                      blank=blank, reduction=reduction, zero_infinity=zero_infinity)

on time-major logits ``[T, B, C]`` and records the loss (per sequence for
``reduction="none"``, else the scalar) and d(sum of the loss)/d logits. rnnkit fuses
the log-softmax into its gradient, so the reference gradient is taken with respect to
the logits, not the log-probabilities.

Cases (``NAME``), logits seeded normal(0, 1) unless said:

* ``mixed_mean``:   B = 6, T = 12, C = 5; varied input lengths (12, 9, 7, 12, 3, 10)
                    and target lengths (4, 0, 3, 2, 1, 5) with repeated labels
                    ("1 1", "2 2 2"); reduction mean;
* ``mixed_sum`` and ``mixed_none``: the same inputs, reductions sum and none;
* ``zero_lengths``: an input of length 0 with an empty target (loss 0), an empty
                    target over 6 frames, and a one-label target; mean;
* ``infeasible``:   targets too long for their inputs (3 labels in 2 frames; "1 1"
                    in 2 frames needs 3), beside a feasible one; none, zero_infinity
                    true (torch's gradient is NaN without it, rnnkit's is zero) and
                    ``infeasible_inf``: the same without zero_infinity (loss only);
* ``blank_last``:   blank = C − 1 = 6, B = 3, T = 10; mean;
* ``long``:         B = 1, T = 500, C = 30, target length 256 with repeats; sum;
                    logits × 3.

Tensors per case and precision ``P`` (``f64`` or ``f32``): ``NAME.P.logits`` [T, B, C],
``NAME.P.loss`` [B] for none else [1], ``NAME.P.grad`` [T, B, C] (absent for
``infeasible_inf``); per case ``NAME.input_lengths`` I64 [B], ``NAME.target_lengths``
I64 [B], ``NAME.targets`` I64 [Σ target lengths] (concatenated). Metadata: ``cases``,
``NAME.blank``, ``NAME.reduction``, ``NAME.zero_infinity``, ``generator``,
``torch_version``.

Usage, from the repository root (see tools/README.md)::

    ~/torch/bin/python tools/ctc_fixture.py tests/fixtures/loss/ctc.safetensors
"""

from __future__ import annotations

import os
import sys
from typing import Dict, List

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from charlm_torch import canonical_safetensors  # noqa: E402


def make_case(tensors: Dict[str, torch.Tensor], meta: Dict[str, str], name: str, seed: int,
              frames: int, classes: int, input_lengths: List[int], targets: List[List[int]],
              blank: int = 0, reduction: str = "mean", zero_infinity: bool = False,
              scale: float = 1.0, grad: bool = True) -> None:
    gen = torch.Generator().manual_seed(seed)
    b = len(input_lengths)
    logits = torch.randn(frames, b, classes, generator=gen, dtype=torch.float64) * scale
    flat = torch.tensor([c for t in targets for c in t], dtype=torch.int64)
    il = torch.tensor(input_lengths, dtype=torch.int64)
    tl = torch.tensor([len(t) for t in targets], dtype=torch.int64)
    for prec, dtype in (("f64", torch.float64), ("f32", torch.float32)):
        x = logits.to(dtype).clone().requires_grad_(True)
        loss = F.ctc_loss(F.log_softmax(x, -1), flat, il, tl, blank=blank,
                          reduction=reduction, zero_infinity=zero_infinity)
        tensors[f"{name}.{prec}.logits"] = x.detach().clone()
        tensors[f"{name}.{prec}.loss"] = loss.detach().reshape(-1).clone()
        if grad:
            (g,) = torch.autograd.grad(loss.sum(), x)
            assert not torch.isnan(g).any(), name
            tensors[f"{name}.{prec}.grad"] = g.detach()
    tensors[f"{name}.input_lengths"] = il
    tensors[f"{name}.target_lengths"] = tl
    tensors[f"{name}.targets"] = flat if len(flat) else torch.zeros(0, dtype=torch.int64)
    meta[f"{name}.blank"] = str(blank)
    meta[f"{name}.reduction"] = reduction
    meta[f"{name}.zero_infinity"] = str(zero_infinity).lower()


def main(argv: List[str]) -> None:
    if len(argv) != 1:
        raise SystemExit("usage: ctc_fixture.py OUT.safetensors")
    tensors: Dict[str, torch.Tensor] = {}
    meta: Dict[str, str] = {}
    mixed_lengths = [12, 9, 7, 12, 3, 10]
    mixed_targets = [[1, 2, 3, 4], [], [1, 1, 2], [2, 3], [4], [2, 2, 2, 1, 3]]
    for red in ("mean", "sum", "none"):
        make_case(tensors, meta, f"mixed_{red}", 1, 12, 5, mixed_lengths, mixed_targets,
                  reduction=red)
    make_case(tensors, meta, "zero_lengths", 2, 6, 4, [0, 6, 4], [[], [], [3]])
    make_case(tensors, meta, "infeasible", 3, 4, 4, [2, 2, 4], [[1, 2, 3], [1, 1], [1, 1]],
              reduction="none", zero_infinity=True)
    make_case(tensors, meta, "infeasible_inf", 3, 4, 4, [2, 2, 4], [[1, 2, 3], [1, 1], [1, 1]],
              reduction="none", grad=False)
    make_case(tensors, meta, "blank_last", 4, 10, 7, [10, 8, 5], [[0, 1, 5], [5, 5], [2, 3]],
              blank=6)
    gen = torch.Generator().manual_seed(5)
    long_target = torch.randint(1, 30, (256,), generator=gen).tolist()
    long_target[10] = long_target[11]  # repeats need a blank between them
    long_target[100] = long_target[101] = long_target[102]
    make_case(tensors, meta, "long", 6, 500, 30, [500], [long_target], reduction="sum",
              scale=3.0)
    names = sorted({k.split(".")[0] for k in tensors})
    meta["cases"] = ",".join(names)
    meta["generator"] = "tools/ctc_fixture.py"
    meta["torch_version"] = torch.__version__
    tensors = {k: v.contiguous() for k, v in sorted(tensors.items())}
    with open(argv[0], "wb") as f:
        f.write(canonical_safetensors(tensors, meta))


if __name__ == "__main__":
    main(sys.argv[1:])
