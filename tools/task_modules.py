#!/usr/bin/env python3
"""PyTorch modules of rnnkit's classify and tag checkpoints.

``rnnkit classify train`` and ``rnnkit tag train`` save their models as the state
dicts of the modules below, in one safetensors file each (``train.*`` tensors and
metadata hold the training state; this module ignores them).

``SequenceClassifier`` (metadata ``rnnkit.task`` = ``classify``)
    Tensors ``rnn.*`` (``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` names, batch-first, uni-
    or bidirectional, any number of layers), ``head.weight`` [K, D·H],
    ``head.bias`` [K] and the buffers ``norm.mean`` [C], ``norm.std`` [C]. Metadata
    ``rnnkit.cell``, ``rnnkit.labels`` (JSON list, index = class id) and
    ``rnnkit.pool`` (``last``, ``mean`` or ``max``; ``last`` when absent).
    ``forward(values [B, T, C], lengths [B])`` standardises every step
    ``(x − mean) / std``, runs the recurrent stack over each series' own valid
    steps (packed sequences), pools over those steps only and returns the logits
    [B, K]. Pooling ``last`` takes the forward direction's output at step len − 1
    and, when bidirectional, the reverse direction's output at step 0 (each
    direction's final state); ``mean`` and ``max`` run over steps 0..len − 1.

``Tagger`` (metadata ``rnnkit.task`` = ``tag``)
    Tensors ``word_embed.weight`` [Vw, Ew], ``char_embed.weight`` [Vc, Ec],
    ``char_rnn.*`` (one bidirectional layer), ``rnn.*`` (bidirectional, stacked),
    ``head.weight`` [K, 2H], ``head.bias`` [K]; the character network and its
    embedding are absent when ``char_hidden`` is 0. Metadata ``rnnkit.cell``,
    ``rnnkit.words``, ``rnnkit.chars`` (JSON lists; id 0 of both is ``<unk>``),
    ``rnnkit.tags``, ``rnnkit.column`` and ``rnnkit.config`` (JSON TaggerConfig:
    ``cell``, ``word_embed``, ``char_embed``, ``char_hidden``, ``hidden_size``,
    ``num_layers``, ``dropout``, ``word_dropout``, ``min_freq``, ``column``).
    ``Tagger.encode(sentences)`` turns lists of word forms into ids the way rnnkit
    does: the word id of the lowercased form (``<unk>`` when unknown); the
    character ids of the form as written, at most 24 characters (the first 12 and
    the last 12 of longer words), unknown characters ``<unk>``. ``forward`` embeds
    the words, appends the character network's final states (forward direction
    after the word's last character, reverse direction after its first), runs the
    sentence network over each sentence's words and scores the tags: logits
    [B, T, K] (positions past a sentence's end hold ``head.bias``, the head applied
    to the zero padding).

Both modules compute in inference mode (``model.eval()``) exactly what rnnkit
computes; in training mode they apply dropout where rnnkit does (between
recurrent layers and before the classifier's head; on the tagger's sentence
network input and output, plus word dropout).

Usage::

    import task_modules as tm
    model = tm.load("runs/classify/best.safetensors")     # SequenceClassifier or Tagger
    model.eval()
    logits = model(values, lengths)                        # classifier
    logits = model(*model.encode([["The", "cat", "sat"]]))  # tagger
    model.save("model.safetensors")                        # readable by rnnkit

Only torch is needed (``from safetensors.torch import ...`` for files); see
tools/README.md for the environment.
"""

from __future__ import annotations

import json
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn
from safetensors import safe_open
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from charlm_torch import CELLS, TRAIN_PREFIX, canonical_safetensors

META_TASK = "rnnkit.task"
META_CELL = "rnnkit.cell"
META_LABELS = "rnnkit.labels"
META_POOL = "rnnkit.pool"
META_WORDS = "rnnkit.words"
META_CHARS = "rnnkit.chars"
META_TAGS = "rnnkit.tags"
META_COLUMN = "rnnkit.column"
META_CONFIG = "rnnkit.config"

POOLS = ("last", "mean", "max")
UNK = "<unk>"
MAX_WORD_CHARS = 24


def recurrent(cell: str, input_size: int, hidden_size: int, num_layers: int,
              bidirectional: bool, dropout: float = 0.0) -> nn.Module:
    """The torch module of a recurrent stack with rnnkit's tensor names (batch-first)."""
    if cell not in CELLS:
        raise ValueError(f"cell {cell!r} has no torch module; expected one of {', '.join(CELLS)}")
    module, nonlinearity = CELLS[cell]
    kwargs = {"nonlinearity": nonlinearity} if nonlinearity else {}
    return module(input_size, hidden_size, num_layers, batch_first=True, bidirectional=bidirectional,
                  dropout=dropout if num_layers > 1 else 0.0, **kwargs)


def run_packed(rnn: nn.Module, x: torch.Tensor, lengths: torch.Tensor):
    """Runs ``rnn`` over x [B, T, I] where sequence b has ``lengths[b]`` valid steps (any
    order): outputs [B, T, D·H] (zero past each end) and h_n [L·D, B, H] in batch order."""
    packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    y, state = rnn(packed)
    y, _ = pad_packed_sequence(y, batch_first=True, total_length=x.shape[1])
    h_n = state[0] if isinstance(state, tuple) else state
    return y, h_n


def pool_over_time(y: torch.Tensor, lengths: torch.Tensor, pool: str, directions: int) -> torch.Tensor:
    """y [B, T, W] → [B, W] over each sequence's valid steps (rnnkit's ``layer::Pool``)."""
    batch, steps, width = y.shape
    valid = (torch.arange(steps, device=y.device)[None, :] < lengths.to(y.device)[:, None]).unsqueeze(-1)
    if pool == "last":
        fwd = width // directions
        last = y[torch.arange(batch, device=y.device), lengths.to(y.device) - 1]
        return torch.cat([last[:, :fwd], y[:, 0, fwd:]], dim=-1)
    if pool == "mean":
        return (y * valid).sum(dim=1) / lengths.to(y)[:, None]
    if pool == "max":
        return y.masked_fill(~valid, float("-inf")).amax(dim=1)
    raise ValueError(f"pool {pool!r}: expected one of {', '.join(POOLS)}")


def read_checkpoint(path: str, task: str) -> Tuple[Dict[str, str], Dict[str, torch.Tensor]]:
    """Metadata and model tensors (``train.*`` left out) of an rnnkit checkpoint of ``task``."""
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys() if not k.startswith(TRAIN_PREFIX)}
    if meta.get(META_TASK) != task:
        raise ValueError(f"{path}: metadata `{META_TASK}` is {meta.get(META_TASK)!r}, expected {task!r}")
    cell = meta.get(META_CELL)
    if cell not in CELLS:
        raise ValueError(f"{path}: cell {cell!r} has no torch module (supported: {', '.join(CELLS)})")
    return meta, tensors


def json_list(path: str, meta: Dict[str, str], key: str) -> List[str]:
    if key not in meta:
        raise ValueError(f"{path}: metadata `{key}` is missing")
    items = json.loads(meta[key])
    if not (isinstance(items, list) and all(isinstance(s, str) for s in items)):
        raise ValueError(f"{path}: metadata `{key}` is not a JSON list of strings")
    return items


def layers_of(tensors: Dict[str, torch.Tensor], prefix: str) -> Tuple[int, bool]:
    """(num_layers, bidirectional) of the recurrent stack stored under ``prefix``."""
    layers = sum(1 for k in tensors if k.startswith(prefix + "weight_ih_l") and not k.endswith("_reverse"))
    return layers, prefix + "weight_ih_l0_reverse" in tensors


def write(path: str, module: nn.Module, metadata: Dict[str, str]) -> None:
    """Saves the state dict (float32, contiguous) with ``metadata``, reproducibly."""
    sd = {k: v.detach().float().contiguous() for k, v in module.state_dict().items()}
    with open(path, "wb") as f:
        f.write(canonical_safetensors(sd, metadata))


def to_json(items) -> str:
    return json.dumps(items, ensure_ascii=False, separators=(",", ":"))


# ---------------------------------------------------------------------------
# classify
# ---------------------------------------------------------------------------


class Standardizer(nn.Module):
    """Per-channel ``(x − mean) / std`` with the statistics as buffers (``norm.mean``, ``norm.std``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class SequenceClassifier(nn.Module):
    """Standardise → recurrent stack over valid steps → pool → linear (rnnkit classify)."""

    def __init__(self, cell: str, channels: int, hidden_size: int, labels: Sequence[str],
                 num_layers: int = 1, bidirectional: bool = True, pool: str = "max",
                 dropout: float = 0.0):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool {pool!r}: expected one of {', '.join(POOLS)}")
        self.cell = cell
        self.pool = pool
        self.labels = list(labels)
        self.directions = 2 if bidirectional else 1
        self.rnn = recurrent(cell, channels, hidden_size, num_layers, bidirectional, dropout)
        self.head = nn.Linear(self.directions * hidden_size, len(self.labels))
        self.norm = Standardizer(channels)
        self.drop = nn.Dropout(dropout)

    def forward(self, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """values [B, T, C] (anything past a series' end), lengths [B] (1..=T) → logits [B, K]."""
        y, _ = run_packed(self.rnn, self.norm(values), lengths)
        return self.head(self.drop(pool_over_time(y, lengths, self.pool, self.directions)))

    def metadata(self) -> Dict[str, str]:
        return {META_TASK: "classify", META_CELL: self.cell, META_LABELS: to_json(self.labels),
                META_POOL: self.pool}

    def save(self, path: str) -> None:
        """Writes a checkpoint that ``rnnkit classify eval/predict`` reads."""
        write(path, self, self.metadata())

    @classmethod
    def load(cls, path: str) -> "SequenceClassifier":
        """Builds the module from a checkpoint (sizes from the shapes); strict load."""
        meta, tensors = read_checkpoint(path, "classify")
        labels = json_list(path, meta, META_LABELS)
        num_layers, bidirectional = layers_of(tensors, "rnn.")
        hidden_size = tensors["rnn.weight_hh_l0"].shape[1]
        channels = tensors["rnn.weight_ih_l0"].shape[1]
        model = cls(meta[META_CELL], channels, hidden_size, labels, num_layers, bidirectional,
                    meta.get(META_POOL, "last"))
        model.load_state_dict(tensors, strict=True)
        return model


# ---------------------------------------------------------------------------
# tag
# ---------------------------------------------------------------------------


def clip_chars(form: str) -> str:
    """The characters the character network reads: all, or the first and last 12 of
    a word longer than 24 (code points, as Rust's ``chars()``)."""
    if len(form) <= MAX_WORD_CHARS:
        return form
    half = MAX_WORD_CHARS // 2
    return form[:half] + form[-half:]


class Tagger(nn.Module):
    """Word embedding ‖ character BiRNN final states → BiRNN → linear (rnnkit tag)."""

    def __init__(self, config: Dict, words: Sequence[str], chars: Sequence[str], tags: Sequence[str]):
        super().__init__()
        self.config = dict(config)
        self.words, self.chars, self.tags = list(words), list(chars), list(tags)
        if not (self.words and self.chars and self.words[0] == UNK and self.chars[0] == UNK):
            raise ValueError(f"the word and character lists must start with {UNK!r}")
        self.word_ids = {w: i for i, w in enumerate(self.words)}
        self.char_ids = {c: i for i, c in enumerate(self.chars)}
        cell = config["cell"]
        ew, hc = config["word_embed"], config["char_hidden"]
        self.word_embed = nn.Embedding(len(self.words), ew)
        if hc > 0:
            ec = max(config["char_embed"], 1)
            self.char_embed = nn.Embedding(len(self.chars), ec)
            self.char_rnn = recurrent(cell, ec, hc, 1, True)
        else:
            self.char_embed = None
            self.char_rnn = None
        self.rnn = recurrent(cell, ew + 2 * hc, config["hidden_size"], config["num_layers"], True,
                             config["dropout"])
        self.head = nn.Linear(2 * config["hidden_size"], len(self.tags))
        self.drop = nn.Dropout(config["dropout"])

    def encode(self, sentences: Sequence[Sequence[str]]):
        """Word forms → (word_ids [B, T], lengths [B], char_ids [B, T, Lc], char_lengths [B, T]),
        int64, zero at padding; Lc the longest clipped word (at least 1)."""
        batch = len(sentences)
        steps = max((len(s) for s in sentences), default=0)
        clipped = [[[self.char_ids.get(c, 0) for c in clip_chars(w)] for w in s] for s in sentences]
        char_steps = max([len(c) for s in clipped for c in s] + [1])
        word_ids = torch.zeros(batch, steps, dtype=torch.int64)
        char_ids = torch.zeros(batch, steps, char_steps, dtype=torch.int64)
        char_lengths = torch.zeros(batch, steps, dtype=torch.int64)
        for b, s in enumerate(sentences):
            for t, form in enumerate(s):
                word_ids[b, t] = self.word_ids.get(form.lower(), 0)
                ids = clipped[b][t]
                char_ids[b, t, :len(ids)] = torch.tensor(ids, dtype=torch.int64)
                char_lengths[b, t] = max(len(ids), 1)
        lengths = torch.tensor([len(s) for s in sentences], dtype=torch.int64)
        return word_ids, lengths, char_ids, char_lengths

    def forward(self, word_ids: torch.Tensor, lengths: torch.Tensor, char_ids: torch.Tensor,
                char_lengths: torch.Tensor) -> torch.Tensor:
        """The tensors of ``encode`` → tag logits [B, T, K]."""
        steps = word_ids.shape[1]
        valid = torch.arange(steps)[None, :] < lengths[:, None]  # [B, T]
        if self.training and self.config["word_dropout"] > 0:
            drop = torch.rand(word_ids.shape) < self.config["word_dropout"]
            word_ids = word_ids.masked_fill(drop & (word_ids != 0), 0)
        parts = [self.word_embed(word_ids)]
        if self.char_rnn is not None:
            # Every word of every sentence through the character network, one sequence each.
            _, h_n = run_packed(self.char_rnn, self.char_embed(char_ids[valid]), char_lengths[valid])
            feats = torch.zeros(*word_ids.shape, 2 * h_n.shape[-1], dtype=h_n.dtype)
            feats[valid] = torch.cat([h_n[0], h_n[1]], dim=-1)
            parts.append(feats)
        x = torch.cat(parts, dim=-1) * valid.unsqueeze(-1)
        y, _ = run_packed(self.rnn, self.drop(x), lengths)
        return self.head(self.drop(y))

    def metadata(self) -> Dict[str, str]:
        return {META_TASK: "tag", META_CELL: self.config["cell"], META_WORDS: to_json(self.words),
                META_CHARS: to_json(self.chars), META_TAGS: to_json(self.tags),
                META_COLUMN: self.config["column"], META_CONFIG: to_json(self.config)}

    def save(self, path: str) -> None:
        """Writes a checkpoint that ``rnnkit tag eval/predict`` reads."""
        write(path, self, self.metadata())

    @classmethod
    def load(cls, path: str) -> "Tagger":
        """Builds the module from a checkpoint's metadata; strict load (shapes checked)."""
        meta, tensors = read_checkpoint(path, "tag")
        if META_CONFIG not in meta:
            raise ValueError(f"{path}: metadata `{META_CONFIG}` is missing")
        config = json.loads(meta[META_CONFIG])
        model = cls(config, *(json_list(path, meta, k) for k in (META_WORDS, META_CHARS, META_TAGS)))
        model.load_state_dict(tensors, strict=True)
        return model


def load(path: str) -> nn.Module:
    """The ``SequenceClassifier`` or ``Tagger`` of an rnnkit checkpoint, by ``rnnkit.task``."""
    with safe_open(path, framework="pt") as f:
        task = (f.metadata() or {}).get(META_TASK)
    if task == "classify":
        return SequenceClassifier.load(path)
    if task == "tag":
        return Tagger.load(path)
    raise ValueError(f"{path}: metadata `{META_TASK}` is {task!r}; this module reads classify and tag")
