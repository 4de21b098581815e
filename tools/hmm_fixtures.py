#!/usr/bin/env python3
"""hmmlearn 0.3.3 reference for rnnkit's hidden Markov models (`crates/rnnkit/src/hmm/`).

Writes ``tests/fixtures/hmm/categorical.safetensors`` and
``tests/fixtures/hmm/gaussian.safetensors``; ``crates/rnnkit/tests/hmm.rs`` reads them.

Each file holds one model with seeded random parameters (numpy ``default_rng(seed)``),
three observation sequences concatenated along time (``lengths`` I64 gives their
lengths), and what hmmlearn computes for each sequence: ``loglik`` (``score``),
``viterbi_path`` (I64, concatenated) and ``viterbi_score`` (``decode(algorithm="viterbi")``),
``posteriors`` (``predict_proba``, ``[ΣT, K]``); and the parameters after one
Baum–Welch iteration over all three sequences (``fit`` with ``n_iter=1``,
``init_params=""``, the start parameters assigned by hand), with ``em_loglik``, the
total log-likelihood before that update.

hmmlearn's priors are set so that its M-step is plain maximum likelihood, as rnnkit's:
``startprob_prior = transmat_prior = emissionprob_prior = 1`` (Dirichlet α = 1, the
defaults), and for ``GaussianHMM`` ``means_prior = 0``, ``means_weight = 0``,
``covars_prior = 0``, ``covars_weight = 1`` (its default ``covars_prior`` is 0.01,
which would add 0.01 to every variance numerator). ``min_covar`` only matters in
hmmlearn's own initialisation, which is not used.

Run from the repository root: ``~/torch/bin/python tools/hmm_fixtures.py``. All values
are float64; metadata is sorted, so a rerun reproduces the files byte for byte.
"""

import json
import os
import struct

import hmmlearn
import numpy as np
from hmmlearn import hmm
from safetensors.numpy import save

OUT = os.path.join("tests", "fixtures", "hmm")
LENGTHS = [7, 5, 9]


def dirichlet(rng, shape):
    x = rng.uniform(0.2, 1.0, size=shape)
    return x / x.sum(axis=-1, keepdims=True)


def per_sequence(model, x, lengths):
    out = {"loglik": [], "viterbi_path": [], "viterbi_score": [], "posteriors": []}
    start = 0
    for n in lengths:
        xs = x[start : start + n]
        start += n
        out["loglik"].append(model.score(xs))
        score, path = model.decode(xs, algorithm="viterbi")
        out["viterbi_score"].append(score)
        out["viterbi_path"].append(path)
        out["posteriors"].append(model.predict_proba(xs))
    return {
        "loglik": np.array(out["loglik"], dtype=np.float64),
        "viterbi_path": np.concatenate(out["viterbi_path"]).astype(np.int64),
        "viterbi_score": np.array(out["viterbi_score"], dtype=np.float64),
        "posteriors": np.concatenate(out["posteriors"]).astype(np.float64),
    }


def categorical():
    rng = np.random.default_rng(11)
    k, m = 3, 4
    start, trans, emit = dirichlet(rng, k), dirichlet(rng, (k, k)), dirichlet(rng, (k, m))
    obs = rng.integers(0, m, size=sum(LENGTHS)).reshape(-1, 1)

    def model():
        h = hmm.CategoricalHMM(n_components=k, n_features=m, init_params="", n_iter=1, tol=0.0)
        h.startprob_, h.transmat_, h.emissionprob_ = start.copy(), trans.copy(), emit.copy()
        return h

    tensors = {
        "start": start, "transition": trans, "emission": emit,
        "obs": obs[:, 0].astype(np.int64), "lengths": np.array(LENGTHS, dtype=np.int64),
    }
    tensors.update(per_sequence(model(), obs, LENGTHS))
    h = model()
    h.fit(obs, LENGTHS)
    tensors["em_loglik"] = np.array([h.monitor_.history[0]])
    tensors["em_start"], tensors["em_transition"] = h.startprob_, h.transmat_
    tensors["em_emission"] = h.emissionprob_
    return tensors


def gaussian():
    rng = np.random.default_rng(12)
    k, d = 3, 2
    start, trans = dirichlet(rng, k), dirichlet(rng, (k, k))
    means = rng.normal(0.0, 2.0, size=(k, d))
    covars = rng.uniform(0.5, 2.0, size=(k, d))
    obs = rng.normal(0.0, 2.0, size=(sum(LENGTHS), d))

    def model():
        h = hmm.GaussianHMM(
            n_components=k, covariance_type="diag", init_params="", n_iter=1, tol=0.0,
            means_prior=0.0, means_weight=0.0, covars_prior=0.0, covars_weight=1.0,
        )
        h.startprob_, h.transmat_ = start.copy(), trans.copy()
        h.means_, h.covars_ = means.copy(), covars.copy()
        return h

    tensors = {
        "start": start, "transition": trans, "means": means, "vars": covars,
        "obs": obs, "lengths": np.array(LENGTHS, dtype=np.int64),
    }
    tensors.update(per_sequence(model(), obs, LENGTHS))
    h = model()
    h.fit(obs, LENGTHS)
    tensors["em_loglik"] = np.array([h.monitor_.history[0]])
    tensors["em_start"], tensors["em_transition"] = h.startprob_, h.transmat_
    tensors["em_means"], tensors["em_vars"] = h.means_, h._covars_
    return tensors


def canonical(tensors, metadata):
    """Serialized safetensors with the ``__metadata__`` entries sorted: safetensors
    writes them in hash order, which varies from run to run (the header keeps its
    length, so no offset changes)."""
    blob = save(tensors, metadata=metadata)
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    new = json.dumps(header, separators=(",", ":")).encode("utf-8")
    assert len(new) <= n, (len(new), n)
    return blob[:8] + new.ljust(n, b" ") + blob[8 + n :]


def main():
    os.makedirs(OUT, exist_ok=True)
    meta = {"generator": "tools/hmm_fixtures.py", "hmmlearn_version": hmmlearn.__version__}
    for name, make in [("categorical", categorical), ("gaussian", gaussian)]:
        tensors = {n: np.ascontiguousarray(v) for n, v in make().items()}
        tensors = {n: v.astype(np.float64) if v.dtype.kind == "f" else v for n, v in tensors.items()}
        path = os.path.join(OUT, f"{name}.safetensors")
        with open(path, "wb") as f:
            f.write(canonical(tensors, meta))
        print(f"wrote {path}: {len(tensors)} tensors")


if __name__ == "__main__":
    main()
