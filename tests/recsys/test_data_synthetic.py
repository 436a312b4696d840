"""synthetic(): deterministic, fast, long-tailed, and learnable by matrix factorisation."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import scipy.sparse.linalg as sla

from recsys.data import InteractionData, synthetic

sd = sys.modules["recsys.data.synthetic"]  # the module: the attribute `recsys.data.synthetic` is the function


def _recall_at_20(scores: np.ndarray, data: InteractionData) -> float:
    """Mean Recall@20 on test over users with test pairs, train items excluded."""
    scores = scores.copy()
    train = data.train.tocoo()
    scores[train.row, train.col] = -np.inf
    top = np.argpartition(-scores, 20, axis=1)[:, :20]
    hits = np.asarray(data.test[np.arange(data.n_users)[:, None], top].sum(axis=1)).ravel()
    n_test = np.diff(data.test.indptr)
    has = n_test > 0
    return float((hits[has] / np.minimum(n_test[has], 20)).mean())


def test_default_is_deterministic_and_sized() -> None:
    a = synthetic()
    b = synthetic()
    assert a.name == "synthetic" and a.rows() == {"user": 3000, "item": 4000}
    assert a.fingerprint() == b.fingerprint() != synthetic(seed=1).fingerprint()
    pairs = a.train.nnz + a.valid.nnz + a.test.nnz
    assert 0.9 * 30 * 3000 < pairs <= 30 * 3000 * 1.1
    assert (a.user_frequency >= 1).all()  # the split keeps a train pair per user
    assert a.valid.nnz > 0.08 * pairs and a.test.nnz > 0.08 * pairs


def test_frequencies_are_long_tailed() -> None:
    d = synthetic()
    items = np.sort(d.item_frequency)[::-1]
    users = np.sort(d.user_frequency)[::-1]
    # as skewed as Gowalla, where the top 10% of items hold 39% of train pairs and of users 39%
    assert items[: len(items) // 10].sum() > 0.4 * items.sum()
    assert users[: len(users) // 10].sum() > 0.35 * users.sum()
    assert users[0] > 50 * np.median(users)


def test_matrix_factorisation_beats_popularity() -> None:
    d = synthetic()
    popularity = _recall_at_20(np.tile(d.item_frequency.astype(float), (d.n_users, 1)), d)
    u, s, vt = sla.svds(d.train.astype(np.float64), k=sd.CLUSTERS, random_state=0)
    factorised = _recall_at_20((u * s) @ vt, d)
    assert factorised > 2 * popularity, (factorised, popularity)


def test_other_sizes_and_bad_arguments() -> None:
    d = synthetic(n_users=50, n_items=30, mean_items_per_user=5, alpha=2.0, seed=3, split=(1.0, 0.0, 0.0))
    assert d.rows() == {"user": 50, "item": 30} and d.valid.nnz == d.test.nnz == 0
    for kwargs in ({"n_items": 1}, {"mean_items_per_user": 0.5}, {"n_items": 10, "mean_items_per_user": 6},
                   {"alpha": 0.0}, {"split": (0.5, 0.5)}):
        with pytest.raises(ValueError):
            synthetic(**kwargs)  # type: ignore[arg-type]
