"""Full-ranking metrics against a brute-force pure-Python reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse import csr_matrix

from recsys.metrics import fitness_quality, ranking_metrics, ranking_metrics_many


def _reference(scores: np.ndarray, truth: csr_matrix, excludes: list[csr_matrix], ks, users=None) -> dict[str, float]:
    """Per-user loops: rank non-excluded items by (score desc, id asc), count hits."""
    n_users, n_items = scores.shape
    sums = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg")}
    count = 0
    for u in range(n_users):
        if users is not None and u not in set(int(x) for x in users):
            continue
        gt = set(truth[u].indices.tolist())
        if not gt:
            continue
        count += 1
        banned = set()
        for ex in excludes:
            banned |= set(ex[u].indices.tolist())
        ranked = sorted((i for i in range(n_items) if i not in banned), key=lambda i: (-scores[u, i], i))
        for k in ks:
            top = ranked[:k]
            hits = [1.0 if i in gt else 0.0 for i in top]
            dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
            idcg = sum(1.0 / math.log2(r + 2) for r in range(min(k, len(gt))))
            sums[f"recall@{k}"] += sum(hits) / len(gt)
            sums[f"ndcg@{k}"] += dcg / idcg
    out = {key: (v / count if count else 0.0) for key, v in sums.items()}
    out["users"] = float(count)
    return out


def _random_csr(rng: np.random.Generator, shape: tuple[int, int], density: float) -> csr_matrix:
    return csr_matrix((rng.random(shape) < density).astype(np.float32))


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n_users=st.integers(1, 12),
    n_items=st.integers(1, 15),
    levels=st.sampled_from([2, 3, 1000]),
    ks=st.lists(st.integers(1, 20), min_size=1, max_size=3, unique=True),
    chunk=st.integers(1, 5),
    two_excludes=st.booleans(),
    restrict=st.booleans(),
)
def test_matches_brute_force(seed, n_users, n_items, levels, ks, chunk, two_excludes, restrict):
    """Random sizes, heavy ties (few score levels), overlapping truth/exclude, k > n_items."""
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, levels, size=(n_users, n_items)).astype(np.float32)
    truth = _random_csr(rng, (n_users, n_items), 0.3)  # overlaps exclude on purpose
    excludes = [_random_csr(rng, (n_users, n_items), 0.3) for _ in range(2 if two_excludes else 1)]
    users = rng.choice(n_users, size=max(1, n_users // 2), replace=False) if restrict else None
    table = torch.from_numpy(scores)
    got = ranking_metrics(lambda u: table[u].clone(), truth, excludes, ks, users=users, chunk_size=chunk)
    want = _reference(scores, truth, excludes, ks, users)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-9), key


def test_no_exclude_and_single_matrix():
    rng = np.random.default_rng(1)
    scores = rng.random((6, 9)).astype(np.float32)
    truth = _random_csr(rng, (6, 9), 0.4)
    table = torch.from_numpy(scores)
    assert ranking_metrics(lambda u: table[u].clone(), truth, None, (3,)) == pytest.approx(_reference(scores, truth, [], (3,)))


def test_ties_broken_by_lower_item_id():
    """All scores equal: the top-2 are items 0 and 1, whatever topk does internally."""
    truth = csr_matrix(np.array([[1, 0, 1, 0], [0, 1, 0, 1]], dtype=np.float32))
    got = ranking_metrics(lambda u: torch.zeros(len(u), 4), truth, None, (1, 2))
    assert got["recall@2"] == pytest.approx(0.5)  # user 0 hits item 0, user 1 hits item 1
    assert got["recall@1"] == pytest.approx(0.25)  # user 0 hits 1 of 2 (item 0 is first), user 1 none
    assert got["ndcg@1"] == pytest.approx(0.5)


def test_users_without_truth_are_skipped_and_empty_is_zero():
    truth = csr_matrix((3, 5), dtype=np.float32)
    got = ranking_metrics(lambda u: torch.rand(len(u), 5), truth, None, (2,))
    assert got == {"recall@2": 0.0, "ndcg@2": 0.0, "users": 0.0}


def test_perfect_and_excluded_truth():
    """A perfect scorer reaches 1, except where the only truth item is excluded."""
    truth = csr_matrix(np.array([[0, 1, 0], [0, 0, 1]], dtype=np.float32))
    exclude = csr_matrix(np.array([[0, 0, 0], [0, 0, 1]], dtype=np.float32))
    table = torch.from_numpy(truth.toarray())
    got = ranking_metrics(lambda u: table[u].clone(), truth, exclude, (1, 5))
    assert got["recall@1"] == pytest.approx(0.5) and got["ndcg@5"] == pytest.approx(0.5)


def test_fitness_quality():
    m = {f"{name}@{k}": v for k, v in ((5, 0.1), (10, 0.2), (20, 0.3)) for name in ("recall", "ndcg")}
    assert fitness_quality(m) == pytest.approx(0.2)
    with pytest.raises(KeyError, match="recall@5"):
        fitness_quality({"ndcg@5": 1.0})


def test_rejects_bad_arguments():
    truth = csr_matrix(np.eye(3, dtype=np.float32))
    with pytest.raises(ValueError, match="ks"):
        ranking_metrics(lambda u: torch.zeros(len(u), 3), truth, None, (0,))
    with pytest.raises(ValueError, match="shape"):
        ranking_metrics(lambda u: torch.zeros(len(u), 2), truth, None, (1,))
    with pytest.raises(ValueError, match="exclude"):
        ranking_metrics(lambda u: torch.zeros(len(u), 3), truth, csr_matrix((2, 3)), (1,))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n_models=st.integers(1, 4), chunk=st.integers(1, 5), levels=st.sampled_from([2, 1000]))
def test_many_models_at_once_equal_one_at_a_time(seed, n_models, chunk, levels):
    """The shared pass gives each model exactly what its own pass gives (ties and exclusions included)."""
    rng = np.random.default_rng(seed)
    n_users, n_items = 9, 13
    scores = torch.from_numpy(rng.integers(0, levels, size=(n_models, n_users, n_items)).astype(np.float32))
    truth = _random_csr(rng, (n_users, n_items), 0.3)
    excludes = [_random_csr(rng, (n_users, n_items), 0.3)]
    together = ranking_metrics_many(lambda u: scores[:, u].clone(), n_models, truth, excludes, (1, 5, 20), chunk_size=chunk)
    for model in range(n_models):
        alone = ranking_metrics(lambda u, m=model: scores[m, u].clone(), truth, excludes, (1, 5, 20), chunk_size=chunk)
        assert together[model] == pytest.approx(alone, abs=1e-12)
