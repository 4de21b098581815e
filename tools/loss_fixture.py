#!/usr/bin/env python3
"""PyTorch reference for rnnkit's masked, class-weighted cross-entropy.

Each case runs, in float64,

    loss = F.cross_entropy(logits, torch_targets, weight=w, ignore_index=ii,
                           reduction="mean", label_smoothing=eps)

and records the loss and d loss / d logits. rnnkit's ``loss::cross_entropy`` takes
a boolean row mask besides the ignore index; torch has none, so a masked-out row
is given to torch with its target replaced by the ignore index (torch's default
-100 when the case has none). The stored ``targets`` are the originals, which
rnnkit reads together with ``mask``.

Cases (``NAME`` below), all logits seeded normal(0, scale):

* ``plain``:        7 rows × 5 classes, no weights, no ignore index, no mask;
* ``weighted``:     9 × 6, class weights uniform(0.1, 3) with class 4's set to 0;
* ``ignore_class``: 8 × 5, ignore index 1 (a real class), weights;
* ``masked``:       10 × 4, logits × 8 (saturated softmax), ignore index 4 (a
                    padding id outside the classes), rows 2, 5, 9 masked out, weights;
* ``all_ignored``:  3 × 3, every target is the ignore index: torch's loss is NaN
                    (0/0), where rnnkit returns 0 with weight 0;
* ``smoothed``:     7 × 5, label smoothing ε = 0.1, no weights;
* ``smoothed_weighted``: 10 × 6, ε = 0.25, class weights (class 4's 0), ignore
                    index 2, rows 3 and 7 masked out.

Where ε is not 0 (``NAME.label_smoothing`` in the metadata) torch's definition is
``[(1 − ε)·Σ_r w_{t_r}·nll_r + ε/C·Σ_r Σ_c w_c·(−log p_rc)] / Σ_r w_{t_r}`` over the
counted rows.

Tensors per case: ``NAME.logits`` F64 [n, C], ``NAME.targets`` I64 [n],
``NAME.mask`` I64 [n] (1 = counted; every case has one, all ones where unmasked),
``NAME.weight`` F64 [C] (only where the case has weights), ``NAME.loss`` F64 [1],
``NAME.weight_sum`` F64 [1] (Σ weights of the counted rows), ``NAME.grad`` F64
[n, C]. Metadata: ``cases`` (comma-separated names), ``NAME.ignore_index`` (only
where set), ``NAME.label_smoothing`` (only where not 0), ``generator``,
``torch_version``, sorted so that the file is byte-for-byte reproducible.

Every torch result is checked against the formula evaluated in NumPy (to 1e-12)
before the file is written.

Usage, from the repository root (Python environment with torch, safetensors and
numpy, see tools/README.md)::

    ~/torch/bin/python tools/loss_fixture.py tests/fixtures/loss/cross_entropy.safetensors
"""

from __future__ import annotations

import os
import sys
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from charlm_torch import canonical_safetensors  # noqa: E402

TORCH_DEFAULT_IGNORE = -100


def numpy_reference(logits, targets, counted, weight, eps=0.0):
    """(loss, grad) of the weighted mean cross-entropy smoothed by ``eps``, straight
    from its formula."""
    x = logits.numpy()
    p = np.exp(x - x.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    w = np.array([
        0.0 if not counted[r] else 1.0 if weight is None else weight[t].item()
        for r, t in enumerate(targets)
    ])
    nll = np.array([-np.log(p[r, t]) if counted[r] else 0.0 for r, t in enumerate(targets)])
    total = w.sum()
    onehot = np.zeros_like(p)
    for r, t in enumerate(targets):
        if counted[r]:
            onehot[r, t] = 1.0
    classes = x.shape[1]
    wc = np.ones(classes) if weight is None else weight.numpy()
    rows = np.array(counted, dtype=float)
    # Σ_c w_c·(−log p_rc) of each counted row, and its gradient p_k·Σ_c w_c − w_k.
    smooth = rows * -(np.log(p) * wc).sum(axis=1)
    dsmooth = rows[:, None] * (p * wc.sum() - wc)
    loss = ((1 - eps) * (w * nll).sum() + eps / classes * smooth.sum()) / total
    grad = ((1 - eps) * w[:, None] * (p - onehot) + eps / classes * dsmooth) / total
    return loss, grad, total


def make_case(
    tensors: Dict[str, torch.Tensor],
    meta: Dict[str, str],
    name: str,
    seed: int,
    rows: int,
    classes: int,
    scale: float = 1.0,
    weights: bool = False,
    ignore_index: Optional[int] = None,
    masked_rows: List[int] = (),
    all_ignored: bool = False,
    eps: float = 0.0,
) -> None:
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(rows, classes, generator=gen, dtype=torch.float64) * scale)
    targets = torch.randint(0, classes, (rows,), generator=gen)
    if ignore_index is not None:
        # Two rows carry the ignore index as their target (all rows for all_ignored).
        for r in range(rows) if all_ignored else (1, rows - 2):
            targets[r] = ignore_index
    mask = torch.ones(rows, dtype=torch.int64)
    mask[list(masked_rows)] = 0
    weight = None
    if weights:
        weight = torch.rand(classes, generator=gen, dtype=torch.float64) * 2.9 + 0.1
        if classes > 4:
            weight[4] = 0.0
    ii = TORCH_DEFAULT_IGNORE if ignore_index is None else ignore_index
    torch_targets = torch.where(mask.bool(), targets, torch.full_like(targets, ii))

    x = logits.clone().requires_grad_(True)
    loss = F.cross_entropy(x, torch_targets, weight=weight, ignore_index=ii, reduction="mean",
                           label_smoothing=eps)
    loss.backward()
    counted = (torch_targets != ii).numpy()
    if all_ignored:
        assert torch.isnan(loss), loss
        weight_sum = 0.0
    else:
        want_loss, want_grad, weight_sum = numpy_reference(
            logits, targets.tolist(), counted, weight, eps)
        assert abs(loss.item() - want_loss) < 1e-12, (name, loss.item(), want_loss)
        assert np.abs(x.grad.numpy() - want_grad).max() < 1e-12, name

    tensors[f"{name}.logits"] = logits
    tensors[f"{name}.targets"] = targets.to(torch.int64)
    tensors[f"{name}.mask"] = mask
    if weight is not None:
        tensors[f"{name}.weight"] = weight
    tensors[f"{name}.loss"] = loss.detach().reshape(1)
    tensors[f"{name}.weight_sum"] = torch.tensor([weight_sum], dtype=torch.float64)
    tensors[f"{name}.grad"] = x.grad.detach()
    if ignore_index is not None:
        meta[f"{name}.ignore_index"] = str(ignore_index)
    if eps:
        meta[f"{name}.label_smoothing"] = repr(eps)


def main(argv: List[str]) -> None:
    if len(argv) != 1:
        raise SystemExit("usage: loss_fixture.py OUT.safetensors")
    tensors: Dict[str, torch.Tensor] = {}
    meta: Dict[str, str] = {}
    make_case(tensors, meta, "plain", 1, 7, 5)
    make_case(tensors, meta, "weighted", 2, 9, 6, weights=True)
    make_case(tensors, meta, "ignore_class", 3, 8, 5, weights=True, ignore_index=1)
    make_case(tensors, meta, "masked", 4, 10, 4, scale=8.0, weights=True, ignore_index=4,
              masked_rows=[2, 5, 9])
    make_case(tensors, meta, "all_ignored", 5, 3, 3, ignore_index=0, all_ignored=True)
    make_case(tensors, meta, "smoothed", 6, 7, 5, eps=0.1)
    make_case(tensors, meta, "smoothed_weighted", 7, 10, 6, weights=True, ignore_index=2,
              masked_rows=[3, 7], eps=0.25)
    meta["cases"] = "plain,weighted,ignore_class,masked,all_ignored,smoothed,smoothed_weighted"
    meta["generator"] = "tools/loss_fixture.py"
    meta["torch_version"] = torch.__version__
    tensors = {k: v.contiguous() for k, v in sorted(tensors.items())}
    with open(argv[0], "wb") as f:
        f.write(canonical_safetensors(tensors, meta))


if __name__ == "__main__":
    main(sys.argv[1:])
