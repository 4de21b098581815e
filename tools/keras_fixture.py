#!/usr/bin/env python3
"""Keras reference fixtures for ``rnnkit import --keras``.

Builds small character language models in Keras 3 (TensorFlow backend) the way
the notes build theirs, Embedding → recurrent stack → Dense, gives every weight
a seeded uniform value (biases included, so that a misplaced bias or gate shows),
and writes into OUT_DIR (default tests/fixtures/keras):

* ``text.txt``: the text whose sorted distinct characters are the vocabulary
  (what ``rnnkit import --vocab-text`` and ``rnnkit train`` build);
* ``<case>.weights.h5``: ``model.save_weights`` (Keras 3's layout:
  ``layers/<class>[_N]/[cell/]vars/<i>``);
* ``<case>.json``: the case's sizes and, from the same weights, Keras' logits for
  ``input`` fed from the zero state in one call (batch 1, state carried from step
  to step) in float64 (``logits``, a float64 copy of the model) and float32
  (``logits_f32``, the model itself), and the greedy continuation of ``prime``
  (``greedy_output`` = prime + ``greedy_length`` argmax characters, float64),
  chosen so that the two largest logits of every choice differ by at least
  ``greedy_min_logit_gap`` ≥ 1e-3 and float32 rounding cannot change an argmax.

Cases: ``lstm`` (the notes' shape: Embedding → stateful LSTM × 2 → Dense, with a
Dropout between, custom layer names that sort against the model's order and an
optimizer in the file), ``lstm_legacy.h5`` (the same weights in the Keras 2
``save_weights("x.h5")`` layout, ``layer_names`` / ``weight_names``, as Keras 3's
legacy writer stores it) and ``lstm_keras2.h5`` (the same, with fixed-length name
strings and ``:0`` names as Keras 2 itself wrote them), ``gru``
(``reset_after=True``, 2 layers), ``gru_reset_before`` (``reset_after=False``),
``simple_rnn`` (tanh, with Embedding) and ``simple_rnn_relu_onehot`` (ReLU, no
Embedding: one-hot inputs, as Keras' old text-generation example). Files that
must be refused: ``unsupported_bidirectional.weights.h5`` and
``unsupported_conv1d.weights.h5``.

Run from the repository root (a virtual environment outside the repository):

    python3 -m venv ~/keras && ~/keras/bin/pip install tensorflow-cpu keras h5py numpy
    ~/keras/bin/python tools/keras_fixture.py tests/fixtures/keras
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import h5py  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras.src.legacy.saving import legacy_h5_format  # noqa: E402

TEXT = "to be, or not to be: that is the question.\n"
VOCAB = sorted(set(TEXT))
EMBED = 8
HIDDEN = 16
INPUT = "to be, or not"
PRIME = "that is"
GREEDY_LENGTH = 30
MIN_GAP = 1e-3
WEIGHT_BOUND = 0.6
MAX_TRIES = 500


def build(case, dtype):
    """The case's Keras model (batch 1) in `dtype`."""
    v = len(VOCAB)
    L = keras.layers
    kw = {"dtype": dtype}
    if case == "lstm":
        # Names chosen to sort against the model's order: the file must be read
        # by structure, not by name.
        layers = [
            keras.Input(batch_shape=(1, None), dtype="int32"),
            L.Embedding(v, EMBED, name="z_embedding", **kw),
            L.LSTM(HIDDEN, return_sequences=True, stateful=True, name="b_lstm", **kw),
            L.Dropout(0.2, name="a_dropout", **kw),
            L.LSTM(HIDDEN, return_sequences=True, stateful=True, name="a_lstm", **kw),
            L.Dense(v, name="0_dense", **kw),
        ]
    elif case == "gru":
        layers = [
            keras.Input(batch_shape=(1, None), dtype="int32"),
            L.Embedding(v, EMBED, **kw),
            L.GRU(HIDDEN, return_sequences=True, **kw),
            L.GRU(HIDDEN, return_sequences=True, **kw),
            L.Dense(v, **kw),
        ]
    elif case == "gru_reset_before":
        layers = [
            keras.Input(batch_shape=(1, None), dtype="int32"),
            L.Embedding(v, EMBED, **kw),
            L.GRU(HIDDEN, return_sequences=True, reset_after=False, **kw),
            L.Dense(v, **kw),
        ]
    elif case == "simple_rnn":
        layers = [
            keras.Input(batch_shape=(1, None), dtype="int32"),
            L.Embedding(v, EMBED, **kw),
            L.SimpleRNN(HIDDEN, return_sequences=True, **kw),
            L.Dense(v, **kw),
        ]
    elif case == "simple_rnn_relu_onehot":
        layers = [
            keras.Input(batch_shape=(1, None, v), dtype=dtype),
            L.SimpleRNN(HIDDEN, activation="relu", return_sequences=True, **kw),
            L.SimpleRNN(HIDDEN, activation="relu", return_sequences=True, **kw),
            L.Dense(v, **kw),
        ]
    elif case == "unsupported_bidirectional":
        layers = [
            keras.Input(batch_shape=(1, None), dtype="int32"),
            L.Embedding(v, EMBED, **kw),
            L.Bidirectional(L.LSTM(HIDDEN, return_sequences=True, **kw)),
            L.Dense(v, **kw),
        ]
    elif case == "unsupported_conv1d":
        layers = [
            keras.Input(batch_shape=(1, None), dtype="int32"),
            L.Embedding(v, EMBED, **kw),
            L.Conv1D(EMBED, 3, padding="causal", **kw),
            L.LSTM(HIDDEN, return_sequences=True, **kw),
            L.Dense(v, **kw),
        ]
    else:
        raise ValueError(case)
    return keras.Sequential(layers)


def one_hot(case, ids):
    """The model's input for token `ids` (batch 1)."""
    ids = np.asarray([ids], dtype="int32")
    if case.endswith("onehot"):
        return np.eye(len(VOCAB))[ids]
    return ids


def logits_of(model, case, ids):
    """Logits [T, V] for `ids` fed from the zero state in one call."""
    for layer in model.layers:
        if getattr(layer, "stateful", False):
            layer.reset_states()
    x = one_hot(case, ids)
    if not case.endswith("onehot"):
        x = x.astype("int32")
    else:
        x = x.astype(model.layers[0].dtype)
    return np.asarray(model(x, training=False))[0]


def greedy(model, case, prime_ids):
    """`GREEDY_LENGTH` argmax ids after `prime_ids`, and the smallest top-2 logit gap."""
    ids = list(prime_ids)
    gap = np.inf
    for _ in range(GREEDY_LENGTH):
        last = logits_of(model, case, ids)[-1]
        top = np.sort(last)[-2:]
        gap = min(gap, float(top[1] - top[0]))
        ids.append(int(np.argmax(last)))
    return ids[len(prime_ids):], gap


def seeded_weights(model, seed):
    """Every weight uniform(-B, B), rounded to float32."""
    rng = np.random.default_rng(seed)
    return [
        rng.uniform(-WEIGHT_BOUND, WEIGHT_BOUND, w.shape).astype(np.float32)
        for w in model.get_weights()
    ]


def write_keras2(model, path):
    """The layout of Keras 2's `save_weights("x.h5")` (tf.keras up to 2.15), written
    with h5py as Keras 2 wrote it: fixed-length byte-string name lists, datasets at
    `<layer>/<layer>/<cell>/<variable>:0`, an empty float array for a layer without
    weights."""
    with h5py.File(path, "w") as f:
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.15.0"
        f.attrs["layer_names"] = np.array([l.name.encode() for l in model.layers])
        for layer in model.layers:
            g = f.create_group(layer.name)
            names = []
            for w in layer.weights:
                parts = w.path.split("/")
                if parts[0] == model.name:
                    parts = parts[1:]
                name = "/".join(parts) + ":0"
                g.create_dataset(name, data=w.numpy())
                names.append(name.encode())
            g.attrs["weight_names"] = np.array(names)


def make_case(case, out_dir, first_seed):
    ids = [VOCAB.index(c) for c in INPUT]
    prime = [VOCAB.index(c) for c in PRIME]
    m32 = build(case, "float32")
    m64 = build(case, "float64")
    for seed in range(first_seed, first_seed + MAX_TRIES):
        weights = seeded_weights(m32, seed)
        m64.set_weights([w.astype(np.float64) for w in weights])
        cont, gap = greedy(m64, case, prime)
        if gap >= MIN_GAP and len(set(cont)) > 2:
            break
    else:
        raise RuntimeError(f"{case}: no seed gives a safe greedy continuation")
    m32.set_weights(weights)
    if case == "lstm":
        # As after training: the file then holds the optimizer's variables too.
        m32.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        m32.optimizer.build(m32.trainable_variables)
    m32.save_weights(os.path.join(out_dir, f"{case}.weights.h5"))
    if case == "lstm":
        # The Keras 2 layout of the same weights (`save_weights("x.h5")`).
        with h5py.File(os.path.join(out_dir, "lstm_legacy.h5"), "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, m32)
        write_keras2(m32, os.path.join(out_dir, "lstm_keras2.h5"))
    rnn = [l for l in m32.layers if isinstance(l, keras.layers.RNN)]
    ref = {
        "case": case,
        "generator": "tools/keras_fixture.py",
        "keras_version": keras.__version__,
        "backend": keras.backend.backend(),
        "seed": seed,
        "weight_bound": WEIGHT_BOUND,
        "vocab": VOCAB,
        "embed": 0 if case.endswith("onehot") else EMBED,
        "hidden": HIDDEN,
        "layers": len(rnn),
        "input": INPUT,
        "logits": logits_of(m64, case, ids).tolist(),
        "logits_f32": logits_of(m32, case, ids).astype(np.float64).tolist(),
        "prime": PRIME,
        "greedy_length": GREEDY_LENGTH,
        "greedy_output": PRIME + "".join(VOCAB[i] for i in cont),
        "greedy_min_logit_gap": gap,
    }
    with open(os.path.join(out_dir, f"{case}.json"), "w") as f:
        json.dump(ref, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"{case}: seed {seed}, greedy gap {gap:.3g}")


def make_refused(case, out_dir):
    model = build(case, "float32")
    model.set_weights(seeded_weights(model, 0))
    model.save_weights(os.path.join(out_dir, f"{case}.weights.h5"))
    print(f"{case}: written")


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/keras"
    os.makedirs(out_dir, exist_ok=True)
    keras.utils.set_random_seed(0)
    with open(os.path.join(out_dir, "text.txt"), "w") as f:
        f.write(TEXT)
    cases = ["lstm", "gru", "gru_reset_before", "simple_rnn", "simple_rnn_relu_onehot"]
    for k, case in enumerate(cases):
        make_case(case, out_dir, 1000 * (k + 1))
    for case in ["unsupported_bidirectional", "unsupported_conv1d"]:
        make_refused(case, out_dir)


if __name__ == "__main__":
    main()
