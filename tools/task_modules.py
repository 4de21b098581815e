#!/usr/bin/env python3
"""PyTorch modules of rnnkit's classify, tag and seq2seq checkpoints.

rnnkit's task trainers (``rnnkit classify train``, ``rnnkit tag train``, ``rnnkit
seq2seq train``) save their models as the state dicts of the modules below, in one
safetensors file each (``train.*`` tensors and metadata hold the training state;
this module ignores them).

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

``Seq2seq`` (metadata ``rnnkit.task`` = ``seq2seq``)
    An encoder–decoder with attention. Tensors ``src_embed.weight`` [Vs, E],
    ``tgt_embed.weight`` [Vt, E], ``encoder.*`` (L layers, uni- or bidirectional,
    H / D units per direction so that its outputs are H wide), ``decoder.*`` (the
    same cell, L layers, unidirectional, H units, input E + H with attention, E
    without), the attention's tensors (``general``: ``attn.weight`` [H, H];
    ``additive``: ``attn.query.weight`` [H, H], ``attn.query.bias`` [H],
    ``attn.key.weight`` [H, H], ``attn.v.weight`` [1, H]; ``dot`` and ``none``:
    none), ``combine.weight`` [H, 2H] and ``combine.bias`` [H] (not with ``none``),
    ``out.weight`` [Vt, H], ``out.bias`` [Vt]. Metadata ``rnnkit.cell`` (encoder and
    decoder), ``rnnkit.attention`` (``none``, ``dot``, ``general``, ``additive``),
    ``rnnkit.source_vocab``, ``rnnkit.target_vocab`` (JSON lists; target id 0 is
    ``</s>``, id 1 ``<s>``; the source has no special tokens),
    ``rnnkit.source_tokens``, ``rnnkit.target_tokens`` (``chars``: every character
    is a token; ``space``: tokens separated by spaces). Time-major:
    ``forward(src [S, B], src_len [B], tgt_in [T, B])`` encodes each source over its
    own length (packed sequences), starts decoder layer l from the concatenated
    final states [forward, backward] of encoder layer l, and decodes with teacher
    forcing; at each step the top decoder output q attends over the valid source
    steps (scores ``q·e``, ``q·attn(e)`` or ``v·tanh(query(q) + key(e))``, softmax),
    ``h̃ = tanh(combine([context, q]))`` is dropped out, scored by ``out`` and fed
    back concatenated with the next input embedding (without attention, q itself is
    dropped out and scored). Returns the logits [T, B, Vt] and the attention weights
    [T, B, S]. ``loss`` is the mean cross-entropy over the real target tokens
    (``</s>`` included); ``greedy`` decodes by argmax as inference does, at most
    2·len + 10 output tokens; ``beam`` is rnnkit's length-normalised beam search of one
    source.

All three compute in inference mode (``model.eval()``) exactly what rnnkit
computes; in training mode they apply dropout where rnnkit does (between
recurrent layers and before the classifier's head; on the tagger's sentence
network input and output, plus word dropout; on the seq2seq decoder's attentional
vector, which is also what is fed back).

Usage::

    import task_modules as tm
    model = tm.load("runs/classify/best.safetensors")     # SequenceClassifier, Tagger or Seq2seq
    model.eval()
    logits = model(values, lengths)                        # classifier
    logits = model(*model.encode([["The", "cat", "sat"]]))  # tagger
    src, src_len, tgt_in, tgt_out, tgt_len = model.batch([("cat", "K AE T")])  # seq2seq
    hyps = model.greedy(src, src_len)                      # lists of target ids
    model.save("model.safetensors")                        # readable by rnnkit

Only torch is needed (``from safetensors.torch import ...`` for files); see
tools/README.md for the environment.
"""

from __future__ import annotations

import json
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
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
META_ATTENTION = "rnnkit.attention"
META_SOURCE_VOCAB = "rnnkit.source_vocab"
META_TARGET_VOCAB = "rnnkit.target_vocab"
META_SOURCE_TOKENS = "rnnkit.source_tokens"
META_TARGET_TOKENS = "rnnkit.target_tokens"

POOLS = ("last", "mean", "max")
UNK = "<unk>"
MAX_WORD_CHARS = 24
ATTENTIONS = ("none", "dot", "general", "additive")
TOKENIZATIONS = ("chars", "space")
EOS, BOS = 0, 1  # seq2seq target ids of ``</s>`` and ``<s>``
EOS_TOKEN, BOS_TOKEN = "</s>", "<s>"


def recurrent(cell: str, input_size: int, hidden_size: int, num_layers: int,
              bidirectional: bool, dropout: float = 0.0, batch_first: bool = True) -> nn.Module:
    """The torch module of a recurrent stack with rnnkit's tensor names (batch-first unless
    ``batch_first`` is False)."""
    if cell not in CELLS:
        raise ValueError(f"cell {cell!r} has no torch module; expected one of {', '.join(CELLS)}")
    module, nonlinearity = CELLS[cell]
    kwargs = {"nonlinearity": nonlinearity} if nonlinearity else {}
    return module(input_size, hidden_size, num_layers, batch_first=batch_first,
                  bidirectional=bidirectional, dropout=dropout if num_layers > 1 else 0.0, **kwargs)


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


# ---------------------------------------------------------------------------
# seq2seq
# ---------------------------------------------------------------------------


def split_tokens(line: str, tokens: str) -> List[str]:
    """The tokens of a line: each character (``chars``) or the pieces between spaces
    (``space``; runs of spaces separate like one)."""
    if tokens == "chars":
        return list(line)
    if tokens == "space":
        return [t for t in line.split(" ") if t]
    raise ValueError(f"tokens {tokens!r}: expected one of {', '.join(TOKENIZATIONS)}")


def seq2seq_batch(sources: Sequence[Sequence[int]], targets: Sequence[Sequence[int]]):
    """Id lists → time-major int64 tensors (src [S, B], src_len [B], tgt_in [T, B],
    tgt_out [T, B], tgt_len [B]): tgt_in is ``<s>`` then the target, tgt_out the target
    then ``</s>``, tgt_len = target length + 1; padding holds id 0 everywhere."""
    batch = len(sources)
    if batch == 0 or len(targets) != batch or any(len(s) == 0 for s in sources):
        raise ValueError("a batch needs as many targets as sources, and no empty source")
    src_len = torch.tensor([len(s) for s in sources], dtype=torch.int64)
    tgt_len = torch.tensor([len(t) + 1 for t in targets], dtype=torch.int64)
    src = torch.zeros(int(src_len.max()), batch, dtype=torch.int64)
    tgt_in = torch.zeros(int(tgt_len.max()), batch, dtype=torch.int64)
    tgt_out = torch.zeros_like(tgt_in)
    for b, (s, t) in enumerate(zip(sources, targets)):
        src[:len(s), b] = torch.tensor(list(s), dtype=torch.int64)
        tgt_in[:len(t) + 1, b] = torch.tensor([BOS] + list(t), dtype=torch.int64)
        tgt_out[:len(t) + 1, b] = torch.tensor(list(t) + [EOS], dtype=torch.int64)
    return src, src_len, tgt_in, tgt_out, tgt_len


def sequence_loss(logits: torch.Tensor, tgt_out: torch.Tensor, tgt_len: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits [T, B, V] over the steps t < tgt_len[b] only."""
    steps, batch, vocab = logits.shape
    ce = nn.functional.cross_entropy(logits.reshape(-1, vocab), tgt_out.reshape(-1),
                                     reduction="none").view(steps, batch)
    valid = torch.arange(steps, device=logits.device)[:, None] < tgt_len.to(logits.device)[None, :]
    return ce.masked_select(valid).sum() / valid.sum()


class AdditiveAttention(nn.Module):
    """``v·tanh(query(q) + key(e))`` (tensors ``attn.query.*``, ``attn.key.weight``, ``attn.v.weight``)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size, bias=False)
        self.v = nn.Linear(hidden_size, 1, bias=False)


class Seq2seq(nn.Module):
    """Encoder (uni- or bidirectional) → decoder with attention and input feeding (rnnkit seq2seq)."""

    def __init__(self, cell: str, attention: str, source_vocab: Sequence[str], target_vocab: Sequence[str],
                 embed: int, hidden: int, layers: int, bidirectional: bool, dropout: float = 0.0,
                 source_tokens: str = "chars", target_tokens: str = "chars"):
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"attention {attention!r}: expected one of {', '.join(ATTENTIONS)}")
        for tokens in (source_tokens, target_tokens):
            if tokens not in TOKENIZATIONS:
                raise ValueError(f"tokens {tokens!r}: expected one of {', '.join(TOKENIZATIONS)}")
        self.source_vocab, self.target_vocab = list(source_vocab), list(target_vocab)
        if self.target_vocab[:2] != [EOS_TOKEN, BOS_TOKEN]:
            raise ValueError(f"the target vocabulary must start with {EOS_TOKEN!r}, {BOS_TOKEN!r}")
        if not self.source_vocab:
            raise ValueError("the source vocabulary is empty")
        self.directions = 2 if bidirectional else 1
        if hidden % self.directions:
            raise ValueError(f"hidden {hidden} must be even: a bidirectional encoder has hidden / 2 "
                             "units per direction")
        self.cell, self.attention = cell, attention
        self.source_tokens, self.target_tokens = source_tokens, target_tokens
        self.hidden, self.layers = hidden, layers
        self.source_ids = {t: i for i, t in enumerate(self.source_vocab)}
        self.target_ids = {t: i for i, t in enumerate(self.target_vocab)}
        self.src_embed = nn.Embedding(len(self.source_vocab), embed)
        self.tgt_embed = nn.Embedding(len(self.target_vocab), embed)
        self.encoder = recurrent(cell, embed, hidden // self.directions, layers, bidirectional, dropout,
                                 batch_first=False)
        feeding = hidden if attention != "none" else 0
        self.decoder = recurrent(cell, embed + feeding, hidden, layers, False, dropout, batch_first=False)
        if attention == "general":
            self.attn = nn.Linear(hidden, hidden, bias=False)
        elif attention == "additive":
            self.attn = AdditiveAttention(hidden)
        else:
            self.attn = None
        self.combine = nn.Linear(2 * hidden, hidden) if attention != "none" else None
        self.out = nn.Linear(hidden, len(self.target_vocab))
        self.drop = nn.Dropout(dropout)

    # -- text ---------------------------------------------------------------

    def batch(self, pairs: Sequence[Tuple[str, str]]):
        """(source line, target line) pairs → the tensors of ``seq2seq_batch``; unknown
        tokens are an error (the source vocabulary has no ``<unk>``)."""
        sources, targets = [], []
        for src, tgt in pairs:
            try:
                sources.append([self.source_ids[t] for t in split_tokens(src, self.source_tokens)])
                targets.append([self.target_ids[t] for t in split_tokens(tgt, self.target_tokens)])
            except KeyError as e:
                raise ValueError(f"token {e.args[0]!r} of {src!r} → {tgt!r} is not in the vocabulary")
        return seq2seq_batch(sources, targets)

    def detokenize(self, ids: Sequence[int]) -> str:
        """Target ids → a line (tokens joined by nothing or by one space)."""
        return ("" if self.target_tokens == "chars" else " ").join(self.target_vocab[i] for i in ids)

    # -- the network --------------------------------------------------------

    def encode(self, src: torch.Tensor, src_len: torch.Tensor):
        """src [S, B] → the encoder outputs [S, B, H] (zero past each source's end) and the
        decoder's initial state: layer l starts from [forward, backward] final states of
        encoder layer l, each source's own (packed sequences)."""
        packed = pack_padded_sequence(self.src_embed(src), src_len.cpu(), enforce_sorted=False)
        y, state = self.encoder(packed)
        y, _ = pad_packed_sequence(y, total_length=src.shape[0])

        def bridge(s: torch.Tensor) -> torch.Tensor:  # [L·D, B, H/D] → [L, B, H]
            layers_dirs, batch, width = s.shape
            return s.view(layers_dirs // self.directions, self.directions, batch, width) \
                .permute(0, 2, 1, 3).reshape(layers_dirs // self.directions, batch, self.directions * width)

        state = tuple(bridge(s) for s in state) if isinstance(state, tuple) else bridge(state)
        return y, state

    def memory(self, enc_out: torch.Tensor, src_len: torch.Tensor):
        """What every decoder step attends to: values [B, S, H], keys [B, S, H] (the values
        projected once per source step where the attention has a key side) and the mask
        [B, S] of the steps past each source's end."""
        values = enc_out.transpose(0, 1)
        if self.attention == "general":
            keys = self.attn(values)
        elif self.attention == "additive":
            keys = self.attn.key(values)
        else:
            keys = values
        steps = values.shape[1]
        mask = torch.arange(steps, device=values.device)[None, :] >= src_len.to(values.device)[:, None]
        return values, keys, mask

    def step(self, tokens: torch.Tensor, feed: torch.Tensor, state, memory):
        """One decoder step for tokens [B]: (logits [B, Vt], the vector to feed next [B, H],
        the new state, attention weights [B, S])."""
        values, keys, mask = memory
        x = self.tgt_embed(tokens)
        if self.attention != "none":
            x = torch.cat([x, feed], dim=-1)
        y, state = self.decoder(x.unsqueeze(0), state)
        q = y[0]
        if self.attention == "none":
            o = self.drop(q)
            return self.out(o), o, state, values.new_zeros(mask.shape)
        if self.attention == "additive":
            scores = self.attn.v(torch.tanh(self.attn.query(q).unsqueeze(1) + keys)).squeeze(2)
        else:
            scores = torch.bmm(keys, q.unsqueeze(2)).squeeze(2)
        alpha = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)
        context = torch.bmm(alpha.unsqueeze(1), values).squeeze(1)
        o = self.drop(torch.tanh(self.combine(torch.cat([context, q], dim=-1))))
        return self.out(o), o, state, alpha

    def forward(self, src: torch.Tensor, src_len: torch.Tensor, tgt_in: torch.Tensor):
        """Teacher forcing: src [S, B], src_len [B] (1..=S), tgt_in [T, B] → logits
        [T, B, Vt] and attention weights [T, B, S] (zeros without attention). Every step
        runs for every sequence; the loss ignores the padded ones."""
        enc_out, state = self.encode(src, src_len)
        memory = self.memory(enc_out, src_len)
        feed = enc_out.new_zeros(src.shape[1], self.hidden)
        logits, alphas = [], []
        for t in range(tgt_in.shape[0]):
            step_logits, feed, state, alpha = self.step(tgt_in[t], feed, state, memory)
            logits.append(step_logits)
            alphas.append(alpha)
        return torch.stack(logits), torch.stack(alphas)

    def loss(self, src: torch.Tensor, src_len: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor,
             tgt_len: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the real target tokens (``</s>`` included)."""
        return sequence_loss(self(src, src_len, tgt_in)[0], tgt_out, tgt_len)

    def max_len(self, src_len: torch.Tensor) -> List[int]:
        """Most output tokens of each source in inference (``</s>`` not counted): 2·len + 10."""
        return [2 * int(n) + 10 for n in src_len]

    @torch.no_grad()
    def greedy(self, src: torch.Tensor, src_len: torch.Tensor) -> List[List[int]]:
        """Argmax decoding in inference mode (no dropout) from ``<s>``: each sequence stops
        at its ``</s>`` (left out of the result) or after ``max_len`` steps. Sequences are
        independent, so the batch decodes together until the last one stops."""
        was_training = self.training
        self.eval()
        try:
            enc_out, state = self.encode(src, src_len)
            memory = self.memory(enc_out, src_len)
            batch = src.shape[1]
            feed = enc_out.new_zeros(batch, self.hidden)
            tokens = torch.full((batch,), BOS, dtype=torch.int64, device=src.device)
            limits = self.max_len(src_len)
            out: List[List[int]] = [[] for _ in range(batch)]
            done = [False] * batch
            for t in range(max(limits)):
                logits, feed, state, _ = self.step(tokens, feed, state, memory)
                tokens = logits.argmax(dim=-1)  # the first maximum on ties
                for b, token in enumerate(tokens.tolist()):
                    if done[b]:
                        continue
                    if token == EOS:
                        done[b] = True
                    else:
                        out[b].append(token)
                        done[b] = t + 1 >= limits[b]
                if all(done):
                    break
            return out
        finally:
            self.train(was_training)

    @torch.no_grad()
    def beam(self, src: torch.Tensor, src_len: torch.Tensor, k: int = 5,
             length_penalty: float = 1.0) -> List[int]:
        """Beam search of one source (src [S, 1]) in inference mode, the live hypotheses as
        one batch (rnnkit's ``Seq2seq::beam``). Each step ranks every continuation of every
        live hypothesis by its summed log-probability and keeps the best K (ties: the
        earlier hypothesis, then the smaller id); those that end in ``</s>`` are finished,
        scored log p / len^α with len counting the ``</s>``, the others live on. The search
        stops when K hypotheses have finished, none is live, or the live ones reach
        ``max_len`` tokens; when none has finished, the live ones are scored (len without
        ``</s>``). Returns the best one's ids (the first on ties), ``</s>`` left out."""
        was_training = self.training
        self.eval()
        try:
            enc_out, state = self.encode(src, src_len)
            values, keys, mask = self.memory(enc_out, src_len)
            limit = self.max_len(src_len)[0]
            live: List[List[int]] = [[]]
            log_p = enc_out.new_zeros(1)
            feed = enc_out.new_zeros(1, self.hidden)
            tokens = torch.full((1,), BOS, dtype=torch.int64, device=src.device)
            finished: List[Tuple[float, List[int]]] = []
            for _ in range(limit + 1):
                n = len(live)
                memory = (values.expand(n, -1, -1), keys.expand(n, -1, -1), mask.expand(n, -1))
                logits, feed, state, _ = self.step(tokens, feed, state, memory)
                total = (log_p[:, None] + torch.log_softmax(logits, dim=-1)).reshape(-1)
                # A stable sort keeps equal scores in (hypothesis, id) order.
                best = torch.sort(total, descending=True, stable=True).indices[:k].tolist()
                vocab = logits.shape[-1]
                parents, next_live = [], []
                for i in best:
                    h, token = divmod(i, vocab)
                    if token == EOS:
                        finished.append((total[i].item() / (len(live[h]) + 1) ** length_penalty, live[h]))
                    else:
                        parents.append(h)
                        next_live.append(live[h] + [token])
                kept = [i for i in best if i % vocab != EOS]
                live, log_p = next_live, total[torch.tensor(kept, dtype=torch.int64, device=src.device)]
                if len(finished) >= k or not live or len(live[0]) >= limit:
                    break
                rows = torch.tensor(parents, dtype=torch.int64, device=src.device)
                feed = feed[rows]
                state = tuple(s[:, rows] for s in state) if isinstance(state, tuple) else state[:, rows]
                tokens = torch.tensor([hyp[-1] for hyp in live], dtype=torch.int64, device=src.device)
            if not finished:
                finished = [(lp / max(len(hyp), 1) ** length_penalty, hyp)
                            for lp, hyp in zip(log_p.tolist(), live)]
            return max(finished, key=lambda f: f[0])[1]
        finally:
            self.train(was_training)

    # -- checkpoints --------------------------------------------------------

    def metadata(self) -> Dict[str, str]:
        return {META_TASK: "seq2seq", META_CELL: self.cell, META_ATTENTION: self.attention,
                META_SOURCE_VOCAB: to_json(self.source_vocab), META_TARGET_VOCAB: to_json(self.target_vocab),
                META_SOURCE_TOKENS: self.source_tokens, META_TARGET_TOKENS: self.target_tokens}

    def save(self, path: str) -> None:
        """Writes a checkpoint that ``rnnkit seq2seq eval/predict`` reads."""
        write(path, self, self.metadata())

    @classmethod
    def load(cls, path: str) -> "Seq2seq":
        """Builds the module from a checkpoint (sizes and layers from the shapes and names);
        strict load."""
        meta, tensors = read_checkpoint(path, "seq2seq")
        source_vocab = json_list(path, meta, META_SOURCE_VOCAB)
        target_vocab = json_list(path, meta, META_TARGET_VOCAB)
        layers, bidirectional = layers_of(tensors, "encoder.")
        decoder_layers, decoder_bi = layers_of(tensors, "decoder.")
        if decoder_layers != layers or decoder_bi:
            raise ValueError(f"{path}: the decoder must be unidirectional with the encoder's {layers} "
                             f"layers, found {decoder_layers}{' bidirectional' if decoder_bi else ''}")
        hidden = tensors["decoder.weight_hh_l0"].shape[1]
        embed = tensors["src_embed.weight"].shape[1]
        model = cls(meta[META_CELL], meta.get(META_ATTENTION, ""), source_vocab, target_vocab, embed, hidden,
                    layers, bidirectional, source_tokens=meta.get(META_SOURCE_TOKENS, ""),
                    target_tokens=meta.get(META_TARGET_TOKENS, ""))
        model.load_state_dict(tensors, strict=True)
        return model


# ---------------------------------------------------------------------------
# ctc
# ---------------------------------------------------------------------------

META_STACK = "rnnkit.stack"


def stack_frames(values: torch.Tensor, lengths: torch.Tensor, stack: int):
    """values [B, T, F] → [B, ⌈T/k⌉, k·F]: frames t·k … t·k + k − 1 side by side, a partial
    last group padded with zeros (rnnkit's ``CtcModel::batch``); lengths ⌈len/k⌉."""
    b, t, f = values.shape
    pad = (-t) % stack
    x = torch.cat([values, values.new_zeros(b, pad, f)], dim=1) if pad else values
    steps = (lengths + stack - 1) // stack
    return x.reshape(b, (t + pad) // stack, stack * f), steps


class CtcRecognizer(nn.Module):
    """Frames stacked k at a time → recurrent stack over valid steps → linear → log-softmax
    over the blank (class 0) and the labels (rnnkit ctc)."""

    def __init__(self, cell: str, bands: int, hidden_size: int, labels: Sequence[str],
                 num_layers: int = 2, bidirectional: bool = True, stack: int = 3,
                 dropout: float = 0.0):
        super().__init__()
        self.cell = cell
        self.labels = list(labels)
        self.stack = stack
        self.directions = 2 if bidirectional else 1
        self.rnn = recurrent(cell, stack * bands, hidden_size, num_layers, bidirectional, dropout)
        self.head = nn.Linear(self.directions * hidden_size, len(self.labels) + 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, values: torch.Tensor, lengths: torch.Tensor):
        """values [B, T, F] (zero past each end), lengths [B] → (log-probs [T', B, L+1]
        time-major as ``F.ctc_loss`` takes them, output lengths [B])."""
        x, steps = stack_frames(values, lengths, self.stack)
        y, _ = run_packed(self.rnn, x, steps)
        return F.log_softmax(self.head(self.drop(y)), dim=-1).transpose(0, 1), steps

    def loss(self, values, lengths, targets: Sequence[Sequence[int]]) -> torch.Tensor:
        """torch's mean CTC loss (blank 0, zero_infinity) of label ids (1-based) per utterance."""
        log_probs, steps = self(values, lengths)
        flat = torch.tensor([c for t in targets for c in t], dtype=torch.long)
        target_lengths = torch.tensor([len(t) for t in targets], dtype=torch.long)
        return F.ctc_loss(log_probs, flat, steps, target_lengths, blank=0, reduction="mean",
                          zero_infinity=True)

    def metadata(self) -> Dict[str, str]:
        return {META_TASK: "ctc", META_CELL: self.cell, META_LABELS: to_json(self.labels),
                META_STACK: str(self.stack)}

    def save(self, path: str) -> None:
        """Writes a checkpoint that ``rnnkit ctc eval/transcribe`` reads (add the feature
        settings, ``rnnkit.features``, for audio)."""
        write(path, self, self.metadata())

    @classmethod
    def load(cls, path: str) -> "CtcRecognizer":
        """Builds the module from a checkpoint (sizes from the shapes); strict load."""
        meta, tensors = read_checkpoint(path, "ctc")
        labels = json_list(path, meta, META_LABELS)
        stack = int(meta[META_STACK])
        num_layers, bidirectional = layers_of(tensors, "rnn.")
        hidden_size = tensors["rnn.weight_hh_l0"].shape[1]
        bands = tensors["rnn.weight_ih_l0"].shape[1] // stack
        model = cls(meta[META_CELL], bands, hidden_size, labels, num_layers, bidirectional, stack)
        model.load_state_dict(tensors, strict=True)
        return model


def load(path: str) -> nn.Module:
    """The ``SequenceClassifier``, ``Tagger``, ``Seq2seq`` or ``CtcRecognizer`` of an rnnkit checkpoint, by
    ``rnnkit.task``."""
    with safe_open(path, framework="pt") as f:
        task = (f.metadata() or {}).get(META_TASK)
    if task == "classify":
        return SequenceClassifier.load(path)
    if task == "tag":
        return Tagger.load(path)
    if task == "seq2seq":
        return Seq2seq.load(path)
    if task == "ctc":
        return CtcRecognizer.load(path)
    raise ValueError(f"{path}: metadata `{META_TASK}` is {task!r}; this module reads classify, tag, "
                     "seq2seq and ctc")
