"""BPRSampler: coverage, valid negatives, determinism, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.data import BPRSampler, pairs_to_csr


def _epoch(sampler: BPRSampler, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    batches = list(sampler.epoch(batch_size))
    for users, pos, neg in batches:
        assert users.dtype == pos.dtype == neg.dtype == torch.int64
        assert len(users) == len(pos) == len(neg) <= batch_size
    if not batches:
        return (np.zeros(0, np.int64),) * 3  # type: ignore[return-value]
    return tuple(torch.cat([b[k] for b in batches]).numpy() for k in range(3))  # type: ignore[return-value]


def check_epoch(train: sp.csr_matrix, users: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> None:
    """Every train pair exactly once; every negative a non-train item of its user."""
    n_items = train.shape[1]
    rows = np.repeat(np.arange(train.shape[0]), np.diff(train.indptr))
    train_keys = rows * n_items + train.indices
    assert np.array_equal(np.sort(users * n_items + pos), train_keys)
    assert ((neg >= 0) & (neg < n_items)).all()
    assert not np.isin(users * n_items + neg, train_keys).any()


@st.composite
def train_matrices(draw: st.DrawFn) -> sp.csr_matrix:
    n_users = draw(st.integers(1, 8))
    n_items = draw(st.integers(2, 12))
    dense = np.array(draw(st.lists(st.booleans(), min_size=n_users * n_items, max_size=n_users * n_items)))
    dense = dense.reshape(n_users, n_items)
    dense[dense.all(axis=1), 0] = False  # a user with every item has no negative
    if draw(st.booleans()):  # a user with all items but one
        dense[0] = True
        dense[0, draw(st.integers(0, n_items - 1))] = False
    u, i = np.nonzero(dense)
    return pairs_to_csr(u, i, (n_users, n_items))


@settings(max_examples=60, deadline=None)
@given(train_matrices(), st.integers(1, 7), st.integers(0, 2**16))
def test_epochs_cover_pairs_with_valid_negatives(train: sp.csr_matrix, batch_size: int, seed: int) -> None:
    sampler = BPRSampler(train, seed=seed)
    first, second = _epoch(sampler, batch_size), _epoch(sampler, batch_size)
    for users, pos, neg in (first, second):
        check_epoch(train, users, pos, neg)
    again = BPRSampler(train, seed=seed)
    assert all(np.array_equal(a, b) for a, b in zip(first, _epoch(again, batch_size)))


def test_negatives_are_uniform_over_the_complement() -> None:
    n_items = 10
    train = pairs_to_csr(np.zeros(8, np.int64), np.array([0, 1, 2, 4, 5, 6, 8, 9]), (1, n_items))
    sampler = BPRSampler(train, seed=0)
    negatives = np.concatenate([_epoch(sampler, 8)[2] for _ in range(1500)])  # 12,000 draws from {3, 7}
    assert set(np.unique(negatives).tolist()) == {3, 7}
    assert abs((negatives == 3).mean() - 0.5) < 0.03
    # the exact complement draw behind the rejection rounds is uniform too
    wide = pairs_to_csr(np.array([0, 0, 1, 1, 1]), np.array([1, 3, 0, 1, 2]), (2, 5))
    draws = BPRSampler(wide, seed=1)._complement_draw(np.repeat([0, 1], 6000))
    assert set(draws[:6000].tolist()) == {0, 2, 4} and set(draws[6000:].tolist()) == {3, 4}
    counts = np.bincount(draws[:6000], minlength=5)[[0, 2, 4]]
    assert np.abs(counts / 6000 - 1 / 3).max() < 0.03


def test_same_seed_same_batches_other_seed_other_batches() -> None:
    rng = np.random.default_rng(0)
    dense = rng.random((50, 40)) < 0.2
    train = pairs_to_csr(*np.nonzero(dense), (50, 40))
    a, b, c = (_epoch(BPRSampler(train, seed=s), 32) for s in (5, 5, 6))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("stop_after", [0, 3, 7])
def test_resume_from_json_state_continues_identically(stop_after: int) -> None:
    rng = np.random.default_rng(1)
    train = pairs_to_csr(*np.nonzero(rng.random((30, 25)) < 0.3), (30, 25))
    reference = BPRSampler(train, seed=9)
    expected = [list(reference.epoch(16)) for _ in range(3)]

    interrupted = BPRSampler(train, seed=9)
    list(interrupted.epoch(16))
    it = interrupted.epoch(16)
    for _ in range(stop_after):  # part of the second epoch, then checkpoint
        next(it)
    state = json.loads(json.dumps(interrupted.state_dict()))
    resumed = BPRSampler(train, seed=123)
    resumed.load_state_dict(state)
    rest = list(resumed.epoch(16)) + list(resumed.epoch(16))
    for got, want in zip(rest, expected[1][stop_after:] + expected[2], strict=True):
        assert all(torch.equal(g, w) for g, w in zip(got, want))


def test_state_between_epochs_and_abandoned_epoch() -> None:
    train = pairs_to_csr(np.array([0, 0, 1]), np.array([0, 2, 1]), (2, 3))
    s = BPRSampler(train, seed=0)
    list(s.epoch(2))
    assert s.state_dict()["cursor"] == 0
    it = s.epoch(1)
    first = next(it)
    assert s.state_dict()["cursor"] == 1
    rest = list(s.epoch(1))  # an abandoned epoch is finished first, as after a resume
    assert len(rest) == 2 and s.state_dict()["cursor"] == 0
    users = torch.cat([first[0]] + [b[0] for b in rest]).tolist()
    assert sorted(users) == [0, 0, 1]


def test_rejects_users_without_negatives_and_bad_batch() -> None:
    full = pairs_to_csr(np.array([0, 0, 1]), np.array([0, 1, 0]), (2, 2))
    with pytest.raises(ValueError, match="user 0 has a train pair with every item"):
        BPRSampler(full)
    sampler = BPRSampler(pairs_to_csr(np.array([0]), np.array([0]), (1, 2)))
    with pytest.raises(ValueError, match="batch_size"):
        next(sampler.epoch(0))
    empty = BPRSampler(sp.csr_matrix((3, 4), dtype=np.float32))
    assert empty.n_pairs == 0 and list(empty.epoch(8)) == []


@settings(max_examples=60, deadline=None)
@given(train_matrices(), st.integers(1, 7), st.integers(0, 2**16))
def test_user_sampling_draws_train_positives_and_valid_negatives(train: sp.csr_matrix, batch_size: int, seed: int) -> None:
    sampler = BPRSampler(train, seed=seed, by="user")
    users, pos, neg = _epoch(sampler, batch_size)
    assert len(users) == train.nnz
    n_items = train.shape[1]
    rows = np.repeat(np.arange(train.shape[0]), np.diff(train.indptr))
    train_keys = rows * n_items + train.indices
    assert np.isin(users * n_items + pos, train_keys).all()
    assert not np.isin(users * n_items + neg, train_keys).any()
    again = _epoch(BPRSampler(train, seed=seed, by="user"), batch_size)
    assert np.array_equal(users, again[0]) and np.array_equal(neg, again[2])


def test_user_sampling_weighs_users_equally_whatever_their_activity() -> None:
    # user 0 has 50 items, users 1..50 one item each: by pair, user 0 gets half the triples.
    users = np.concatenate([np.zeros(50, np.int64), np.arange(1, 51)])
    items = np.concatenate([np.arange(50), np.zeros(50, np.int64)])
    train = pairs_to_csr(users, items, (51, 60))
    drawn = np.concatenate([_epoch(BPRSampler(train, seed=s, by="user"), 64)[0] for s in range(40)])
    share_of_heavy_user = np.mean(drawn == 0)
    assert abs(share_of_heavy_user - 1 / 51) < 0.01
    assert np.mean(_epoch(BPRSampler(train, seed=0, by="pair"), 64)[0] == 0) == 0.5
    with pytest.raises(ValueError, match="by must be one of"):
        BPRSampler(train, by="item")


@settings(max_examples=60, deadline=None)
@given(train_matrices(), st.integers(0, 2**16))
def test_train_pair_lookup_is_exact_behind_its_filter(train: sp.csr_matrix, seed: int) -> None:
    """Every (user, item) query, train pair or not, answered as a set lookup would."""
    sampler = BPRSampler(train, seed=seed)
    n_users, n_items = train.shape
    users, items = np.divmod(np.arange(n_users * n_items, dtype=np.int64), n_items)
    expected = np.asarray(train.todense(), dtype=bool).ravel()
    assert np.array_equal(sampler._is_train(users, items), expected)


def test_a_filter_smaller_than_the_pairs_still_answers_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the filter capped far below 16 slots a pair, most draws reach the binary search; none is answered wrong."""
    from recsys.data import sampler as module

    monkeypatch.setattr(module, "FILTER_MAX_SLOTS", 8)
    train = sp.random(40, 50, density=0.3, random_state=1, format="csr")
    train.data[:] = 1
    capped = BPRSampler(train, seed=0)
    assert capped._filter.size == 8
    users, items = np.divmod(np.arange(40 * 50, dtype=np.int64), 50)
    assert np.array_equal(capped._is_train(users, items), np.asarray(train.todense(), dtype=bool).ravel())
