#!/usr/bin/env python3
"""PyTorch counterpart of rnnkit's character language model.

rnnkit saves its character language model (``rnnkit train``) as the state dict
of the PyTorch module ``CharLM`` defined below, in one safetensors file:

* tensors ``embed.weight`` [V, E], ``rnn.weight_ih_l{k}``, ``rnn.weight_hh_l{k}``,
  ``rnn.bias_ih_l{k}``, ``rnn.bias_hh_l{k}`` (plus ``..._reverse`` when
  bidirectional), ``head.weight`` [V, H·D] and ``head.bias`` [V], all float32;
* metadata ``rnnkit.cell`` (``rnn_tanh``, ``rnn_relu``, ``lstm`` or ``gru``) and
  ``rnnkit.vocab`` (a JSON array of one-character strings; entry i is token i).

Checkpoints written by ``rnnkit train`` also hold the training state under
names starting with ``train.``; this script ignores those.

This script has three subcommands:

``make-fixture OUT_DIR``
    Builds small CharLM models (E=5, H=7, 2 layers) with seeded uniform(-0.5,
    0.5) weights: an LSTM, a GRU and a tanh RNN, vocabulary = the sorted
    distinct characters of a sonnet embedded below. It writes, for each cell,
    ``torch_charlm_<cell>.safetensors`` (no ``train.*`` entries) and
    ``torch_charlm_<cell>.json`` with float64 reference results: the
    nats/char that ``rnnkit eval`` must report on the sonnet and the greedy
    continuation that ``rnnkit sample --temperature 0`` must print. The
    sonnet itself goes to ``OUT_DIR/sonnet.txt``. The output is deterministic.

``check CHECKPOINT TEXT``
    Loads a checkpoint written by rnnkit into ``CharLM`` (strict state-dict
    load) and prints, as one JSON line, the mean cross-entropy of predicting
    characters 2..N of TEXT, computed in float64 exactly as ``rnnkit eval``
    defines it (batch 1, zero initial state, state carried over the whole
    text). Fields: ``chars``, ``nats_per_char``, ``bits_per_char``.

``train --data FILE --steps N [options]``
    Trains the same model family with PyTorch, batching, clipping, learning
    rate schedule and validation done the way ``rnnkit train`` does them, so
    that loss curves and throughput can be compared. Prints one JSON line per
    validation: ``step``, ``epoch``, ``lr``, ``train_nats_per_char`` (mean
    since the previous validation), ``val_nats_per_char``, ``elapsed_sec``
    (wall time since training started, validations included) and
    ``tokens_per_sec`` (training tokens per second of training time,
    validations excluded). Facts about the run go to stderr as one JSON line.

Usage, from the repository root, with a Python environment that has torch,
safetensors and numpy (see tools/README.md)::

    ~/torch/bin/python tools/charlm_torch.py make-fixture tests/fixtures/charlm
    ~/torch/bin/python tools/charlm_torch.py check runs/char-lm/latest.safetensors data/shakespeare.txt
    ~/torch/bin/python tools/charlm_torch.py train --data data/shakespeare.txt --steps 2000 --threads 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
import sys
import time
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save as safetensors_save

# ---------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------

META_CELL = "rnnkit.cell"
META_VOCAB = "rnnkit.vocab"
TRAIN_PREFIX = "train."

# Cell name in the checkpoint -> (torch module, nonlinearity for nn.RNN).
CELLS: Dict[str, Tuple[type, Optional[str]]] = {
    "rnn_tanh": (nn.RNN, "tanh"),
    "rnn_relu": (nn.RNN, "relu"),
    "lstm": (nn.LSTM, None),
    "gru": (nn.GRU, None),
}
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}


class CharLM(nn.Module):
    """Embedding -> stacked recurrent layers -> linear head, batch-first."""

    def __init__(self, cell: str, vocab_size: int, embed_size: int, hidden_size: int,
                 num_layers: int, dropout: float = 0.0, bidirectional: bool = False):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"cell {cell!r} has no torch module; expected one of {', '.join(CELLS)}")
        module, nonlinearity = CELLS[cell]
        kwargs = {"nonlinearity": nonlinearity} if nonlinearity else {}
        self.cell = cell
        self.embed = nn.Embedding(vocab_size, embed_size)
        self.rnn = module(embed_size, hidden_size, num_layers, batch_first=True,
                          dropout=dropout if num_layers > 1 else 0.0,
                          bidirectional=bidirectional, **kwargs)
        self.head = nn.Linear(hidden_size * (2 if bidirectional else 1), vocab_size)

    def forward(self, ids: torch.Tensor, state=None):
        """``ids`` [B, T] -> logits [B, T, V] and the final state."""
        y, state = self.rnn(self.embed(ids), state)
        return self.head(y), state


def detach_state(state):
    """Cuts the graph at a batch boundary (truncated BPTT)."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


def vocab_of(text: str) -> List[str]:
    """rnnkit's vocabulary: the sorted distinct characters of the text."""
    return sorted(set(text))


def encode(text: str, vocab: List[str]) -> torch.Tensor:
    """Token ids of ``text`` (int64); names the first character not in ``vocab``."""
    index = {c: i for i, c in enumerate(vocab)}
    try:
        return torch.tensor([index[c] for c in text], dtype=torch.int64)
    except KeyError as e:
        pos = text.index(e.args[0])
        raise SystemExit(f"character {e.args[0]!r} at position {pos} is not in the vocabulary")


def read_text(path: str) -> str:
    with open(path, "r", encoding="utf-8", newline="") as f:
        return f.read()


# ---------------------------------------------------------------------------
# Evaluation as `rnnkit eval` defines it
# ---------------------------------------------------------------------------


@torch.inference_mode()
def nats_per_char(model: CharLM, ids: torch.Tensor, chunk: int = 4096) -> Tuple[int, float]:
    """Mean cross-entropy of predicting ids[1..] from ids[..-1]: batch 1, zero
    initial state, the state carried over the whole sequence; fed ``chunk``
    characters at a time (which does not change the result) to bound memory.
    Computed in the model's dtype; returns (number of predictions, mean)."""
    n = ids.numel() - 1
    if n < 1:
        raise SystemExit("the text needs at least 2 characters to predict one")
    model.eval()
    state = None
    total = 0.0
    for pos in range(0, n, chunk):
        length = min(chunk, n - pos)
        x = ids[pos:pos + length].unsqueeze(0)
        y = ids[pos + 1:pos + 1 + length]
        logits, state = model(x, state)
        total += nn.functional.cross_entropy(logits[0], y, reduction="sum").item()
    return n, total / n


@torch.inference_mode()
def greedy(model: CharLM, prime_ids: torch.Tensor, length: int) -> Tuple[List[int], float]:
    """Greedy (argmax) continuation of ``prime_ids``: feed the prime from a zero
    state, then repeatedly append the argmax of the last logits and feed it.
    Returns the ``length`` new ids and the smallest gap between the largest
    and second-largest logit over those choices (how safe the argmax is)."""
    model.eval()
    logits, state = model(prime_ids.unsqueeze(0), None)
    last = logits[0, -1]
    out: List[int] = []
    min_gap = math.inf
    for _ in range(length):
        top2 = torch.topk(last, 2).values
        min_gap = min(min_gap, (top2[0] - top2[1]).item())
        nxt = int(torch.argmax(last))
        out.append(nxt)
        logits, state = model(torch.tensor([[nxt]]), state)
        last = logits[0, -1]
    return out, min_gap


# ---------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------


def canonical_safetensors(tensors: Dict[str, torch.Tensor], metadata: Dict[str, str]) -> bytes:
    """Serializes with safetensors, then sorts the ``__metadata__`` entries.

    safetensors writes the metadata map in hash order, which varies from run to
    run; sorting it (the header keeps its length, so no offset changes) makes
    the file byte-for-byte reproducible.
    """
    blob = safetensors_save(tensors, metadata=metadata)
    (header_len,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + header_len])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    new_header = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert len(new_header) <= header_len, (len(new_header), header_len)
    new_header = new_header.ljust(header_len, b" ")
    return blob[:8] + new_header + blob[8 + header_len:]


def load_checkpoint(path: str) -> Tuple[CharLM, List[str]]:
    """Loads an rnnkit (or PyTorch-written) CharLM checkpoint; sizes come from
    the tensor shapes, the cell and vocabulary from the metadata; ``train.*``
    tensors and metadata are ignored. The state-dict load is strict."""
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys() if not k.startswith(TRAIN_PREFIX)}
    for key in (META_CELL, META_VOCAB):
        if key not in meta:
            raise SystemExit(f"{path}: metadata `{key}` is missing: not an rnnkit char-LM checkpoint")
    cell = meta[META_CELL]
    if cell not in CELLS:
        raise SystemExit(f"{path}: cell {cell!r} has no torch module (supported: {', '.join(CELLS)})")
    vocab = json.loads(meta[META_VOCAB])
    if not (isinstance(vocab, list) and all(isinstance(c, str) and len(c) == 1 for c in vocab)):
        raise SystemExit(f"{path}: metadata `{META_VOCAB}` is not a JSON array of one-character strings")
    vocab_size, embed_size = tensors["embed.weight"].shape
    if vocab_size != len(vocab):
        raise SystemExit(f"{path}: embed.weight has {vocab_size} rows but the vocabulary has {len(vocab)} characters")
    hidden_size = tensors["rnn.weight_hh_l0"].shape[1]
    num_layers = sum(1 for k in tensors if k.startswith("rnn.weight_ih_l") and not k.endswith("_reverse"))
    bidirectional = "rnn.weight_ih_l0_reverse" in tensors
    model = CharLM(cell, vocab_size, embed_size, hidden_size, num_layers, bidirectional=bidirectional)
    model.load_state_dict(tensors, strict=True)
    return model, vocab


# ---------------------------------------------------------------------------
# make-fixture
# ---------------------------------------------------------------------------

# Sonnet 18, first eight lines (public domain).
SONNET = (
    "Shall I compare thee to a summer's day?\n"
    "Thou art more lovely and more temperate:\n"
    "Rough winds do shake the darling buds of May,\n"
    "And summer's lease hath all too short a date;\n"
    "Sometime too hot the eye of heaven shines,\n"
    "And often is his gold complexion dimm'd;\n"
    "And every fair from fair sometime declines,\n"
    "By chance or nature's changing course untrimm'd;\n"
)
FIXTURE_CELLS = ["lstm", "gru", "rnn_tanh"]
FIXTURE_EMBED = 5
FIXTURE_HIDDEN = 7
FIXTURE_LAYERS = 2
FIXTURE_BOUND = 0.5
FIXTURE_SEED = 20240518
# The weights of a cell come from the first seed FIXTURE_SEED, FIXTURE_SEED + 1,
# ... whose greedy continuation is not one repeated character (so it depends on
# the carried state) and never has its two largest logits closer than
# FIXTURE_MIN_GAP (so float32 rounding in any implementation cannot change an
# argmax).
FIXTURE_MIN_GAP = 1e-3
FIXTURE_MAX_TRIES = 1000
FIXTURE_PRIME_CHARS = 10
FIXTURE_GREEDY_LENGTH = 40


def fixture_model(cell: str, vocab_size: int, seed: int) -> Dict[str, torch.Tensor]:
    """State dict (float32) of a fixture model with uniform(-B, B) weights."""
    gen = torch.Generator().manual_seed(seed)
    model = CharLM(cell, vocab_size, FIXTURE_EMBED, FIXTURE_HIDDEN, FIXTURE_LAYERS)
    with torch.no_grad():
        for p in model.parameters():  # registration order, which is fixed
            p.copy_((torch.rand(p.shape, generator=gen, dtype=torch.float32) * 2 - 1) * FIXTURE_BOUND)
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}


def pick_fixture_model(cell: str, vocab: List[str], ids: torch.Tensor):
    """The first seed from FIXTURE_SEED on whose model passes the greedy checks
    above; returns (seed, float64 model, float32 state dict, greedy ids, gap)."""
    prime = ids[:FIXTURE_PRIME_CHARS]
    for seed in range(FIXTURE_SEED, FIXTURE_SEED + FIXTURE_MAX_TRIES):
        tensors = fixture_model(cell, len(vocab), seed)
        # References in float64 from the exact float32 weights.
        model64 = CharLM(cell, len(vocab), FIXTURE_EMBED, FIXTURE_HIDDEN, FIXTURE_LAYERS).double()
        model64.load_state_dict({k: v.double() for k, v in tensors.items()})
        cont, gap = greedy(model64, prime, FIXTURE_GREEDY_LENGTH)
        if len(set(cont)) < 2 or gap < FIXTURE_MIN_GAP:
            continue
        model32 = CharLM(cell, len(vocab), FIXTURE_EMBED, FIXTURE_HIDDEN, FIXTURE_LAYERS)
        model32.load_state_dict(tensors)
        if greedy(model32, prime, FIXTURE_GREEDY_LENGTH)[0] != cont:
            continue
        return seed, model64, tensors, cont, gap
    raise SystemExit(f"{cell}: no seed in {FIXTURE_MAX_TRIES} tries gives a usable greedy continuation")


def make_fixture(out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    text = SONNET
    vocab = vocab_of(text)
    ids = encode(text, vocab)
    prime = text[:FIXTURE_PRIME_CHARS]
    with open(os.path.join(out_dir, "sonnet.txt"), "w", encoding="utf-8", newline="") as f:
        f.write(text)
    for cell in FIXTURE_CELLS:
        seed, model, tensors, cont, gap = pick_fixture_model(cell, vocab, ids)
        meta = {META_CELL: cell, META_VOCAB: json.dumps(vocab, ensure_ascii=False)}
        name = f"torch_charlm_{cell}"
        with open(os.path.join(out_dir, name + ".safetensors"), "wb") as f:
            f.write(canonical_safetensors(tensors, meta))
        chars, nats = nats_per_char(model, ids)
        continuation = "".join(vocab[i] for i in cont)
        reference = {
            "cell": cell,
            "seed": seed,
            "checkpoint": name + ".safetensors",
            "vocab_size": len(vocab),
            "embed_size": FIXTURE_EMBED,
            "hidden_size": FIXTURE_HIDDEN,
            "num_layers": FIXTURE_LAYERS,
            "text": text,
            "chars": chars,
            "nats_per_char": nats,
            "bits_per_char": nats / math.log(2),
            "prime": prime,
            "greedy_length": FIXTURE_GREEDY_LENGTH,
            "greedy_continuation": continuation,
            "greedy_output": prime + continuation,
            "greedy_min_logit_gap": gap,
            "generator": "tools/charlm_torch.py make-fixture",
            "torch_version": torch.__version__,
        }
        with open(os.path.join(out_dir, name + ".json"), "w", encoding="utf-8", newline="\n") as f:
            json.dump(reference, f, indent=2, ensure_ascii=False)
            f.write("\n")
        print(f"{name}: nats/char {nats:.6f}, greedy {continuation!r}, min logit gap {gap:.3g}")


# ---------------------------------------------------------------------------
# check
# ---------------------------------------------------------------------------


def check(checkpoint: str, text_path: str) -> None:
    model, vocab = load_checkpoint(checkpoint)
    model = model.double()
    ids = encode(read_text(text_path), vocab)
    chars, nats = nats_per_char(model, ids)
    print(json.dumps({"chars": chars, "nats_per_char": nats, "bits_per_char": nats / math.log(2)}))


# ---------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------


class Streams:
    """A token sequence cut into ``batch`` contiguous streams read ``seq_len``
    steps at a time; batch k continues every stream where batch k-1 stopped
    (rnnkit's ``data::Streams``)."""

    def __init__(self, ids: torch.Tensor, batch: int, seq_len: int, what: str):
        need = batch * seq_len + 1
        if ids.numel() < need:
            raise SystemExit(f"the {what} has {ids.numel()} characters but one batch of "
                             f"{batch} x {seq_len} needs at least {need}")
        self.ids = ids
        self.batch = batch
        self.seq_len = seq_len
        self.stream_len = (ids.numel() - 1) // batch
        self.batches = self.stream_len // seq_len
        # positions[b, t] of batch 0; batch k adds k * seq_len.
        self.positions = (torch.arange(batch) * self.stream_len).unsqueeze(1) + torch.arange(seq_len).unsqueeze(0)

    def get(self, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Inputs and next-character targets of batch k, both [batch, seq_len]."""
        pos = self.positions + k * self.seq_len
        return self.ids[pos], self.ids[pos + 1]


@torch.no_grad()
def validate(model: CharLM, val: Streams) -> float:
    """Mean over the validation batches of the batch-mean cross-entropy,
    carrying the state, without dropout."""
    model.eval()
    state = None
    total = 0.0
    for k in range(val.batches):
        x, y = val.get(k)
        logits, state = model(x, state)
        total += nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).item()
    model.train()
    return total / max(val.batches, 1)


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    text = read_text(args.data)
    vocab = vocab_of(text)
    ids = encode(text, vocab)
    n = ids.numel()
    n_val = int(n * args.val_frac)
    train_streams = Streams(ids[:n - n_val], args.batch, args.seq_len, "training text")
    val_streams = None
    if n_val > 0:
        streams = max(1, min(args.batch, (n_val - 1) // args.seq_len))
        val_streams = Streams(ids[n - n_val:], streams, args.seq_len, "validation text")
    bpe = train_streams.batches

    model = CharLM(args.cell, len(vocab), args.embed, args.hidden, args.layers, dropout=args.dropout)
    model.train()
    params = list(model.parameters())
    optimizer = torch.optim.Adam(params, lr=args.lr)
    print(json.dumps({
        "vocab_size": len(vocab), "train_chars": n - n_val, "val_chars": n_val,
        "batches_per_epoch": bpe, "val_streams": val_streams.batch if val_streams else 0,
        "val_batches": val_streams.batches if val_streams else 0,
        "parameters": sum(p.numel() for p in params), "torch_version": torch.__version__,
        "threads": torch.get_num_threads(), "config": vars(args),
    }), file=sys.stderr, flush=True)

    state = None
    loss_sum, loss_count = 0.0, 0
    tokens = 0
    train_time = 0.0
    started = time.perf_counter()
    for step in range(args.steps):
        t0 = time.perf_counter()
        k = step % bpe
        if k == 0:
            state = None  # a new pass starts the streams again
        lr = args.lr * args.lr_decay ** max(0, step // bpe - args.decay_after)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = train_streams.get(k)
        logits, state = model(x, state)
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if args.grad_clip > 0:
            nn.utils.clip_grad_norm_(params, args.grad_clip)
        optimizer.step()
        state = detach_state(state)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise SystemExit(f"the loss became {loss_value} at step {step + 1}")
        loss_sum += loss_value
        loss_count += 1
        train_time += time.perf_counter() - t0
        tokens += args.batch * args.seq_len
        done = step + 1
        if done % args.eval_every == 0 or done == args.steps:
            val_loss = validate(model, val_streams) if val_streams else None
            print(json.dumps({
                "step": done,
                "epoch": done / bpe,
                "lr": lr,
                "train_nats_per_char": loss_sum / max(loss_count, 1),
                "val_nats_per_char": val_loss,
                "elapsed_sec": time.perf_counter() - started,
                "tokens_per_sec": tokens / max(train_time, 1e-9),
            }), flush=True)
            loss_sum, loss_count = 0.0, 0


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-fixture", help="write small reference checkpoints and results")
    p.add_argument("out_dir", help="output folder, e.g. tests/fixtures/charlm")

    p = sub.add_parser("check", help="nats/char of an rnnkit checkpoint on a text, in float64")
    p.add_argument("checkpoint")
    p.add_argument("text")

    p = sub.add_parser("train", help="train the same model the way rnnkit train does")
    p.add_argument("--data", required=True, help="UTF-8 training text")
    p.add_argument("--steps", type=int, required=True, help="optimizer steps")
    p.add_argument("--cell", choices=list(CELLS), default="lstm")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--embed", type=int, default=64)
    p.add_argument("--dropout", type=float, default=0.0, help="dropout between recurrent layers")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=100)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--lr-decay", type=float, default=1.0,
                   help="lr of a step = lr * lr_decay ** max(0, epochs_done - decay_after)")
    p.add_argument("--decay-after", type=int, default=2)
    p.add_argument("--grad-clip", type=float, default=5.0, help="global gradient-norm limit; 0 turns it off")
    p.add_argument("--val-frac", type=float, default=0.05, help="fraction of the text, at its end, held out")
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)

    args = parser.parse_args(argv)
    if args.command == "make-fixture":
        make_fixture(args.out_dir)
    elif args.command == "check":
        check(args.checkpoint, args.text)
    else:
        if args.steps < 1 or args.eval_every < 1 or args.batch < 1 or args.seq_len < 1:
            parser.error("--steps, --eval-every, --batch and --seq-len must be at least 1")
        if not 0.0 <= args.val_frac < 0.5:
            parser.error("--val-frac must be in [0, 0.5)")
        train(args)


if __name__ == "__main__":
    main()
