#!/usr/bin/env python3
"""Fixtures proving that an rnnkit ``ctc`` checkpoint is the PyTorch module
``task_modules.CtcRecognizer`` and that rnnkit's training step computes its loss and
gradients: for each case a randomly initialised module is saved as ``NAME.safetensors``
(what ``rnnkit ctc`` reads) and ``NAME.expected.safetensors`` holds the inputs
(``values`` F32 [B, T, F] zero past each end, ``lengths`` I64 [B], ``targets`` I64
concatenated with ``target_lengths`` I64 [B], label ids 1-based), the module's
``log_probs`` [T', B, L+1] (time-major, stacked), its mean CTC ``loss`` [1] (blank 0,
zero_infinity) and ``grad.NAME`` of every parameter.

Cases: ``lstm_bi_2l_stack3`` (2-layer bidirectional LSTM, frames stacked by 3) and
``gru_uni_1l_stack1``.

Usage, from the repository root (see tools/README.md)::

    ~/torch/bin/python tools/ctc_task_fixture.py tests/fixtures/tasks/ctc
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import task_modules as tm  # noqa: E402
from charlm_torch import canonical_safetensors  # noqa: E402


def make_case(out_dir: str, name: str, cell: str, layers: int, bi: bool, stack: int, seed: int) -> None:
    torch.manual_seed(seed)
    bands, labels = 5, ["a", "b", " "]
    model = tm.CtcRecognizer(cell, bands, 6, labels, layers, bi, stack).double()
    lengths = torch.tensor([10, 7, 4])
    values = torch.randn(3, 10, bands, dtype=torch.float64)
    for b, n in enumerate(lengths.tolist()):
        values[b, n:] = 0.0
    targets = [[1, 2, 2], [3, 1], [2]]
    log_probs, _ = model(values, lengths)
    loss = model.loss(values, lengths, targets)
    loss.backward()
    model.float().save(os.path.join(out_dir, f"{name}.safetensors"))
    tensors = {
        "values": values.float(),
        "lengths": lengths.to(torch.int64),
        "targets": torch.tensor([c for t in targets for c in t], dtype=torch.int64),
        "target_lengths": torch.tensor([len(t) for t in targets], dtype=torch.int64),
        "log_probs": log_probs.detach(),
        "loss": loss.detach().reshape(1),
    }
    for n, p in model.named_parameters():
        tensors[f"grad.{n}"] = p.grad.detach().double()
    meta = {"generator": "tools/ctc_task_fixture.py", "torch_version": torch.__version__}
    tensors = {k: v.contiguous() for k, v in sorted(tensors.items())}
    with open(os.path.join(out_dir, f"{name}.expected.safetensors"), "wb") as f:
        f.write(canonical_safetensors(tensors, meta))


def main(argv) -> None:
    if len(argv) != 1:
        raise SystemExit("usage: ctc_task_fixture.py OUT_DIR")
    os.makedirs(argv[0], exist_ok=True)
    make_case(argv[0], "lstm_bi_2l_stack3", "lstm", 2, True, 3, 1)
    make_case(argv[0], "gru_uni_1l_stack1", "gru", 1, False, 1, 2)


if __name__ == "__main__":
    main(sys.argv[1:])
