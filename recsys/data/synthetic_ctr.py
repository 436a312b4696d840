"""A small synthetic click dataset with long-tailed fields and a signal a factorisation machine can learn.

The click counterpart of :func:`recsys.data.synthetic`, for tests and quick runs
without a download:

* every row holds one value per field, drawn with Zipf-like popularity (the value of
  popularity rank ``r`` has weight ``r ** -alpha``, ranks in random order over the
  values), so frequencies differ within every field as in real click logs;
* every value has a hidden vector (``latent`` wide) and a hidden bias; a row's click
  logit is ``offset + Σ_f bias[x_f] + scale · Σ_{f<g} <v[x_f], v[x_g]>``, the form of a
  factorisation machine, and the label is drawn from ``sigmoid(logit)``.

FM, DeepFM and DCN-v2 therefore reach a validation AUC well above 0.5 in a couple of
epochs, while a model whose tables lose their leading dimensions does measurably worse.
Ids follow :class:`~recsys.data.CTRData`'s convention: numbered by decreasing train
frequency, and the last id of every field is its (here unused) OOV row.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from recsys.data.ctr import CTRData
from recsys.data.split import check_fractions

__all__ = ["SYNTHETIC_CTR_FIELDS", "synthetic_ctr"]

SYNTHETIC_CTR_FIELDS: dict[str, int] = {"user": 300, "item": 400, "genre": 24, "age": 7}
"""Default fields and their numbers of values (the OOV row comes on top)."""


def synthetic_ctr(
    n_rows: int = 6000,
    fields: Mapping[str, int] | None = None,
    *,
    latent: int = 4,
    alpha: float = 1.1,
    scale: float = 1.5,
    seed: int = 0,
    split: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> CTRData:
    """Generate a click dataset named ``"synthetic-ctr"``.

    Args:
        n_rows: rows over all splits.
        fields: values per field, ``{name: count}``; default :data:`SYNTHETIC_CTR_FIELDS`.
        latent: width of the hidden vectors behind the clicks.
        alpha: Zipf exponent of every field's popularity (larger: more skewed).
        scale: weight of the pairwise term against the biases (larger: more to learn
            from the vectors, which is what an embedding-size search trades).
        seed: seed of everything random, the split included.
        split: ``(train, valid, test)`` fractions, drawn per row.

    Raises:
        ValueError: a size or exponent out of range.
    """
    fractions = check_fractions(split)
    fields = dict(SYNTHETIC_CTR_FIELDS if fields is None else fields)
    if n_rows < 1 or not fields or min(fields.values()) < 1 or latent < 1 or not alpha > 0:
        raise ValueError(f"need n_rows, latent >= 1, alpha > 0 and at least one value per field; got "
                         f"n_rows={n_rows}, fields={fields}, latent={latent}, alpha={alpha}")
    rng = np.random.default_rng(seed)
    names = list(fields)
    raw = np.empty((n_rows, len(names)), dtype=np.int64)
    logits = np.zeros(n_rows)
    vectors = []
    for f, name in enumerate(names):
        n = int(fields[name])
        popularity = (1.0 + rng.permutation(n)) ** -float(alpha)
        raw[:, f] = rng.choice(n, size=n_rows, p=popularity / popularity.sum())
        logits += rng.normal(0.0, 0.5, n)[raw[:, f]]
        vectors.append(rng.normal(0.0, 1.0 / np.sqrt(latent), (n, latent))[raw[:, f]])
    stacked = np.stack(vectors, axis=1)  # (rows, fields, latent)
    pairwise = 0.5 * (np.square(stacked.sum(axis=1)) - np.square(stacked).sum(axis=1)).sum(axis=1)
    logits += scale * pairwise
    logits -= np.median(logits)  # about half the rows click
    labels = (rng.random(n_rows) < 1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    part = np.searchsorted(np.cumsum(fractions)[:-1], rng.random(n_rows), side="right")

    # Ids by decreasing train frequency (ties by value), the OOV row last.
    ids = np.empty_like(raw)
    for f, name in enumerate(names):
        counts = np.bincount(raw[part == 0, f], minlength=int(fields[name]))
        order = np.argsort(-counts, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        ids[:, f] = rank[raw[:, f]]
    splits = [(ids[part == p], labels[part == p]) for p in range(3)]
    return CTRData.from_arrays(
        "synthetic-ctr", names, [int(fields[n]) + 1 for n in names], *splits,
        notes=(f"synthetic clicks: FM-shaped logits over {latent}-wide hidden vectors (scale {scale:g}), "
               f"Zipf popularity alpha={alpha:g} per field, {n_rows} rows, seed {seed}",),
    )
