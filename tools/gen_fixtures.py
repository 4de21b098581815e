#!/usr/bin/env python3
"""Generate PyTorch reference fixtures for the recurrent layers of rnnkit.

For every combination of

* cell:        rnn_tanh, rnn_relu, lstm, gru, gru_reset_before
* num_layers:  1, 2
* direction:   uni (unidirectional), bi (bidirectional)
* lengths:     eq (all sequences have length T), var (lengths [11, 4, 7])

this script runs a time-major recurrent network forward and backward in
float64 and writes ``tests/fixtures/recurrent/<cell>_<L>l_<uni|bi>_<eq|var>.safetensors``
containing the inputs (float32), the parameters (float32, under the names a
torch state dict uses) and the float64 reference outputs and gradients.

``rnn_tanh``, ``rnn_relu``, ``lstm`` and ``gru`` use ``torch.nn.RNN`` /
``torch.nn.LSTM`` / ``torch.nn.GRU``.  ``gru_reset_before`` is the GRU variant
that applies the reset gate *before* the hidden-to-hidden matrix product
(Keras ``GRU(reset_after=False)``) with a single bias vector per layer and
direction; torch has no module for it, so it is computed by an explicit
time-step loop with autograd.  That loop is first checked against
``torch.nn.GRU`` (same code, torch's GRU equations) before it is used.

All random values are drawn as float32 from per-case seeded generators and then
cast to float64, so the stored float32 inputs are exactly the values the
float64 reference computation used.  Running the script twice produces
byte-identical files.

Usage (from the repository root, with a Python environment that has torch,
safetensors and numpy; see tools/README.md)::

    ~/torch/bin/python tools/gen_fixtures.py
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn as nn
from safetensors.torch import save as safetensors_save
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------

INPUT_SIZE = 7
HIDDEN_SIZE = 13
BATCH = 3
SEQ_LEN = 11

CELLS = ["rnn_tanh", "rnn_relu", "lstm", "gru", "gru_reset_before"]
NUM_LAYERS = [1, 2]
DIRECTIONS = ["uni", "bi"]
LENGTH_MODES = {
    "eq": [SEQ_LEN, SEQ_LEN, SEQ_LEN],
    # Deliberately unsorted, so packing has to permute the batch.
    "var": [11, 4, 7],
}

# Parameters are drawn from uniform(-PARAM_RANGE, PARAM_RANGE) so that the
# reference values are not trivially close to zero.
PARAM_RANGE = 0.6
# Cases whose input is multiplied by this factor, so that pre-activations
# reach the saturating range of sigmoid/tanh (and large values for relu).
SATURATING_SCALE = 4.0

OUT_DIR = os.path.join("tests", "fixtures", "recurrent")
GENERATOR_NAME = "tools/gen_fixtures.py"

# Tolerance for the check of the explicit loop against torch.nn.GRU.
VALIDATION_TOL = 1e-12

Params = Dict[str, torch.Tensor]


def case_name(cell: str, num_layers: int, direction: str, mode: str) -> str:
    return f"{cell}_{num_layers}l_{direction}_{mode}"


def is_saturating_case(num_layers: int, direction: str, mode: str) -> bool:
    """The ``*_1l_uni_eq`` cases use a scaled-up input."""
    return num_layers == 1 and direction == "uni" and mode == "eq"


def make_generator(name: str) -> torch.Generator:
    """A CPU generator seeded from a stable hash of ``name``."""
    gen = torch.Generator()
    gen.manual_seed(zlib.crc32(name.encode("utf-8")))
    return gen


def randn32(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float32)


def uniform32(gen: torch.Generator, shape: Tuple[int, ...], bound: float) -> torch.Tensor:
    u = torch.rand(*shape, generator=gen, dtype=torch.float32)
    return (u * 2.0 - 1.0) * bound


# ---------------------------------------------------------------------------
# Parameter layout
# ---------------------------------------------------------------------------


def gate_multiplier(cell: str) -> int:
    return {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3, "gru_reset_before": 3}[cell]


def param_shapes(cell: str, num_layers: int, bidirectional: bool) -> List[Tuple[str, Tuple[int, ...]]]:
    """Parameter names and shapes, in torch's ``named_parameters`` order.

    ``gru_reset_before`` has no ``bias_hh_l{k}``: its only bias is
    ``bias_ih_l{k}`` of shape [3H].
    """
    g = gate_multiplier(cell) * HIDDEN_SIZE
    num_dirs = 2 if bidirectional else 1
    shapes = []
    for layer in range(num_layers):
        in_size = INPUT_SIZE if layer == 0 else num_dirs * HIDDEN_SIZE
        for d in range(num_dirs):
            sfx = f"l{layer}" + ("_reverse" if d == 1 else "")
            shapes.append((f"weight_ih_{sfx}", (g, in_size)))
            shapes.append((f"weight_hh_{sfx}", (g, HIDDEN_SIZE)))
            shapes.append((f"bias_ih_{sfx}", (g,)))
            if cell != "gru_reset_before":
                shapes.append((f"bias_hh_{sfx}", (g,)))
    return shapes


def random_params(gen: torch.Generator, cell: str, num_layers: int, bidirectional: bool) -> Dict[str, torch.Tensor]:
    """float32 parameter values, uniform(-PARAM_RANGE, PARAM_RANGE)."""
    return {
        name: uniform32(gen, shape, PARAM_RANGE)
        for name, shape in param_shapes(cell, num_layers, bidirectional)
    }


# ---------------------------------------------------------------------------
# Explicit time-step loop (used for gru_reset_before and for validation)
# ---------------------------------------------------------------------------

CellFn = Callable[[torch.Tensor, torch.Tensor, Params, str], torch.Tensor]


def gru_cell_reset_after(x: torch.Tensor, h: torch.Tensor, p: Params, sfx: str) -> torch.Tensor:
    """torch.nn.GRU's step: n = tanh(W_in x + b_in + r * (W_hn h + b_hn))."""
    gi = x @ p[f"weight_ih_{sfx}"].t() + p[f"bias_ih_{sfx}"]
    gh = h @ p[f"weight_hh_{sfx}"].t() + p[f"bias_hh_{sfx}"]
    i_r, i_z, i_n = gi.chunk(3, dim=1)
    h_r, h_z, h_n = gh.chunk(3, dim=1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return (1.0 - z) * n + z * h


def gru_cell_reset_before(x: torch.Tensor, h: torch.Tensor, p: Params, sfx: str) -> torch.Tensor:
    """Reset-before GRU step with a single bias b = bias_ih (gate order r, z, n).

    r = sigmoid(W_ir x + b_r + W_hr h)
    z = sigmoid(W_iz x + b_z + W_hz h)
    n = tanh(W_in x + b_n + W_hn (r * h))
    h' = (1 - z) * n + z * h
    """
    gi = x @ p[f"weight_ih_{sfx}"].t() + p[f"bias_ih_{sfx}"]
    w_hr, w_hz, w_hn = p[f"weight_hh_{sfx}"].chunk(3, dim=0)
    i_r, i_z, i_n = gi.chunk(3, dim=1)
    r = torch.sigmoid(i_r + h @ w_hr.t())
    z = torch.sigmoid(i_z + h @ w_hz.t())
    n = torch.tanh(i_n + (r * h) @ w_hn.t())
    return (1.0 - z) * n + z * h


def run_loop(
    cell_fn: CellFn,
    params: Params,
    x: torch.Tensor,
    lengths: torch.Tensor,
    h0: torch.Tensor,
    num_layers: int,
    bidirectional: bool,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Run a stacked (bi)directional single-state RNN with torch's semantics.

    x: [T, B, I], lengths: [B] int64, h0: [L*D, B, H].
    Returns output [T, B, D*H] (zero at t >= length[b]) and h_n [L*D, B, H]
    ordered (layer0 fwd, layer0 bwd, layer1 fwd, ...).  For a sequence of
    length L_b, steps t >= L_b leave its state unchanged; the reverse
    direction therefore starts from h0 at t = L_b - 1.
    """
    seq_len, batch, _ = x.shape
    num_dirs = 2 if bidirectional else 1
    # valid[t] is a [B, 1] mask that is True where t < length[b].
    valid = [(t < lengths).unsqueeze(1) for t in range(seq_len)]
    layer_input = x
    h_n = []
    for layer in range(num_layers):
        dir_outputs = []
        for d in range(num_dirs):
            sfx = f"l{layer}" + ("_reverse" if d == 1 else "")
            h = h0[layer * num_dirs + d]
            zeros = torch.zeros_like(h)
            steps: List[torch.Tensor] = [zeros] * seq_len
            order = range(seq_len) if d == 0 else range(seq_len - 1, -1, -1)
            for t in order:
                h_new = cell_fn(layer_input[t], h, params, sfx)
                h = torch.where(valid[t], h_new, h)
                steps[t] = torch.where(valid[t], h_new, zeros)
            dir_outputs.append(torch.stack(steps, dim=0))
            h_n.append(h)
        layer_input = torch.cat(dir_outputs, dim=2)
    return layer_input, torch.stack(h_n, dim=0)


# ---------------------------------------------------------------------------
# Reference computation
# ---------------------------------------------------------------------------


class CaseData:
    """float32 inputs of one case (all random draws happen here)."""

    def __init__(self, cell: str, num_layers: int, direction: str, mode: str):
        self.cell = cell
        self.num_layers = num_layers
        self.bidirectional = direction == "bi"
        self.num_dirs = 2 if self.bidirectional else 1
        self.packed = mode == "var"
        self.name = case_name(cell, num_layers, direction, mode)

        gen = make_generator(self.name)
        ld = num_layers * self.num_dirs
        dh = self.num_dirs * HIDDEN_SIZE
        self.lengths = torch.tensor(LENGTH_MODES[mode], dtype=torch.int64)
        self.params = random_params(gen, cell, num_layers, self.bidirectional)
        self.input = randn32(gen, SEQ_LEN, BATCH, INPUT_SIZE)
        if is_saturating_case(num_layers, direction, mode):
            self.input = self.input * SATURATING_SCALE  # exact in float32
        self.h0 = randn32(gen, ld, BATCH, HIDDEN_SIZE)
        self.c0 = randn32(gen, ld, BATCH, HIDDEN_SIZE) if cell == "lstm" else None
        grad_output = randn32(gen, SEQ_LEN, BATCH, dh)
        # Padded outputs are constant zero, so their upstream gradient is zeroed.
        t_idx = torch.arange(SEQ_LEN).unsqueeze(1)  # [T, 1]
        pad_mask = (t_idx < self.lengths.unsqueeze(0)).unsqueeze(2)  # [T, B, 1]
        self.grad_output = grad_output * pad_mask.to(torch.float32)
        self.grad_h_n = randn32(gen, ld, BATCH, HIDDEN_SIZE)
        self.grad_c_n = randn32(gen, ld, BATCH, HIDDEN_SIZE) if cell == "lstm" else None


def leaf64(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float64).requires_grad_(True)


def make_torch_module(cell: str, num_layers: int, bidirectional: bool) -> nn.RNNBase:
    kwargs = dict(
        input_size=INPUT_SIZE,
        hidden_size=HIDDEN_SIZE,
        num_layers=num_layers,
        bidirectional=bidirectional,
        batch_first=False,
        bias=True,
    )
    if cell == "rnn_tanh":
        return nn.RNN(nonlinearity="tanh", **kwargs)
    if cell == "rnn_relu":
        return nn.RNN(nonlinearity="relu", **kwargs)
    if cell == "lstm":
        return nn.LSTM(**kwargs)
    if cell == "gru":
        return nn.GRU(**kwargs)
    raise ValueError(f"no torch module for cell {cell!r}")


def run_torch_module(
    module: nn.RNNBase,
    x: torch.Tensor,
    lengths: torch.Tensor,
    state,
    packed: bool,
):
    """Forward a torch RNN module; returns (output [T,B,D*H], final state)."""
    if not packed:
        return module(x, state)
    packed_x = pack_padded_sequence(x, lengths, enforce_sorted=False)
    packed_out, final = module(packed_x, state)
    output, _ = pad_packed_sequence(packed_out, total_length=x.shape[0])
    return output, final


def torch_module_params(module: nn.RNNBase, values: Dict[str, torch.Tensor]) -> Params:
    """Overwrite every parameter of a float64 module with ``values``."""
    names = [n for n, _ in module.named_parameters()]
    assert names == list(values), (names, list(values))
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(values[name].to(torch.float64))
    return dict(module.named_parameters())


def compute_reference(case: CaseData) -> Dict[str, torch.Tensor]:
    """Forward + backward in float64. Returns the float64 reference tensors."""
    x = leaf64(case.input)
    h0 = leaf64(case.h0)
    c0 = leaf64(case.c0) if case.c0 is not None else None

    if case.cell == "gru_reset_before":
        params = {n: leaf64(v) for n, v in case.params.items()}
        output, h_n = run_loop(
            gru_cell_reset_before, params, x, case.lengths, h0, case.num_layers, case.bidirectional
        )
        c_n = None
    else:
        torch.manual_seed(0)  # default init is overwritten; seed only for tidiness
        module = make_torch_module(case.cell, case.num_layers, case.bidirectional).double()
        params = torch_module_params(module, case.params)
        state = (h0, c0) if case.cell == "lstm" else h0
        output, final = run_torch_module(module, x, case.lengths, state, case.packed)
        if case.cell == "lstm":
            h_n, c_n = final
        else:
            h_n, c_n = final, None

    loss = (output * case.grad_output.double()).sum() + (h_n * case.grad_h_n.double()).sum()
    if c_n is not None:
        loss = loss + (c_n * case.grad_c_n.double()).sum()
    loss.backward()

    ref = {"output": output, "h_n": h_n, "grad_input": x.grad, "grad_h0": h0.grad}
    if c_n is not None:
        ref["c_n"] = c_n
        ref["grad_c0"] = c0.grad
    for name, p in params.items():
        ref[f"grad.{name}"] = p.grad
    return {k: v.detach().to(torch.float64) for k, v in ref.items()}


# ---------------------------------------------------------------------------
# Validation of the explicit loop against torch.nn.GRU
# ---------------------------------------------------------------------------


def validate_loop_against_torch_gru() -> None:
    """The explicit loop with torch's GRU step must reproduce torch.nn.GRU.

    Checks outputs, final states and all gradients for every layer count,
    direction and length mode used by the fixtures.
    """
    for num_layers in NUM_LAYERS:
        for direction in DIRECTIONS:
            for mode in LENGTH_MODES:
                case = CaseData("gru", num_layers, direction, mode)
                expected = compute_reference(case)

                x = leaf64(case.input)
                h0 = leaf64(case.h0)
                params = {n: leaf64(v) for n, v in case.params.items()}
                output, h_n = run_loop(
                    gru_cell_reset_after, params, x, case.lengths, h0, num_layers, case.bidirectional
                )
                loss = (output * case.grad_output.double()).sum() + (
                    h_n * case.grad_h_n.double()
                ).sum()
                loss.backward()
                got = {"output": output, "h_n": h_n, "grad_input": x.grad, "grad_h0": h0.grad}
                got.update({f"grad.{n}": p.grad for n, p in params.items()})

                assert set(got) == set(expected), (case.name, set(got) ^ set(expected))
                for key, want in expected.items():
                    err = (got[key].detach() - want).abs().max().item()
                    assert err <= VALIDATION_TOL, (
                        f"explicit loop disagrees with torch.nn.GRU on {case.name}/{key}: {err:.3e}"
                    )
    print(f"explicit GRU loop matches torch.nn.GRU to {VALIDATION_TOL:g} on all configurations")


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------


def fixture_tensors(case: CaseData, ref: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    tensors: Dict[str, torch.Tensor] = {}
    for name, value in case.params.items():
        tensors[name] = value.to(torch.float32)
    tensors["input"] = case.input
    tensors["h0"] = case.h0
    tensors["grad_output"] = case.grad_output
    tensors["grad_h_n"] = case.grad_h_n
    if case.cell == "lstm":
        tensors["c0"] = case.c0
        tensors["grad_c_n"] = case.grad_c_n
    tensors["lengths"] = case.lengths
    tensors.update(ref)
    # safetensors needs contiguous tensors that do not share storage.
    return {k: v.detach().contiguous().clone() for k, v in tensors.items()}


def canonical_safetensors(tensors: Dict[str, torch.Tensor], metadata: Dict[str, str]) -> bytes:
    """Serialize with safetensors, then sort the ``__metadata__`` entries.

    safetensors writes the metadata map in hash order, which varies from run
    to run; sorting it (the header keeps its length, so no offsets change)
    makes the files byte-for-byte reproducible.  Tensor entries and data are
    left exactly as safetensors wrote them.
    """
    blob = safetensors_save(tensors, metadata=metadata)
    (header_len,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + header_len])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    new_header = json.dumps(header, separators=(",", ":")).encode("utf-8")
    assert len(new_header) <= header_len, (len(new_header), header_len)
    new_header = new_header.ljust(header_len, b" ")
    return blob[:8] + new_header + blob[8 + header_len :]


def fixture_metadata(case: CaseData) -> Dict[str, str]:
    return {
        "cell": case.cell,
        "num_layers": str(case.num_layers),
        "bidirectional": "true" if case.bidirectional else "false",
        "input_size": str(INPUT_SIZE),
        "hidden_size": str(HIDDEN_SIZE),
        "batch": str(BATCH),
        "seq_len": str(SEQ_LEN),
        "generator": GENERATOR_NAME,
        "torch_version": torch.__version__,
    }


def main() -> None:
    torch.use_deterministic_algorithms(True)
    validate_loop_against_torch_gru()

    os.makedirs(OUT_DIR, exist_ok=True)
    count = 0
    for cell in CELLS:
        for num_layers in NUM_LAYERS:
            for direction in DIRECTIONS:
                for mode in LENGTH_MODES:
                    case = CaseData(cell, num_layers, direction, mode)
                    ref = compute_reference(case)
                    path = os.path.join(OUT_DIR, f"{case.name}.safetensors")
                    blob = canonical_safetensors(fixture_tensors(case, ref), fixture_metadata(case))
                    with open(path, "wb") as f:
                        f.write(blob)
                    count += 1
    print(f"wrote {count} fixtures to {OUT_DIR}")


if __name__ == "__main__":
    main()
