"""split_per_user: per-user fractions, a train pair for every user, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.data import split_per_user


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 20), min_size=1, max_size=300),
    st.sampled_from([(0.8, 0.1, 0.1), (0.6, 0.2, 0.2), (1.0, 0.0, 0.0), (0.5, 0.0, 0.5), (0.1, 0.45, 0.45)]),
    st.integers(0, 2**16),
)
def test_every_user_keeps_a_train_pair_and_counts_follow_fractions(
    users: list[int], split: tuple[float, float, float], seed: int
) -> None:
    users_arr = np.array(users)
    part = split_per_user(users_arr, split, np.random.default_rng(seed))
    assert part.dtype == np.int8 and part.shape == users_arr.shape and set(np.unique(part)) <= {0, 1, 2}
    assert np.array_equal(part, split_per_user(users_arr, split, np.random.default_rng(seed)))
    for u in np.unique(users_arr):
        mine = part[users_arr == u]
        c = mine.size
        n_train = max(1, int(np.floor(c * split[0] + 0.5 + 1e-9)))
        assert np.count_nonzero(mine == 0) == min(n_train, c)
        assert abs(np.count_nonzero(mine == 2) - c * split[2]) <= 1 + 1e-9


def test_split_is_random_within_users() -> None:
    users = np.repeat(np.arange(2), 1000)
    a = split_per_user(users, (0.8, 0.1, 0.1), np.random.default_rng(0))
    b = split_per_user(users, (0.8, 0.1, 0.1), np.random.default_rng(1))
    assert not np.array_equal(a, b)
    assert np.bincount(a, minlength=3).tolist() == [1600, 200, 200]
    assert 0.6 < a[:1000][:500].tolist().count(0) / 400 < 1.4  # no positional bias: train pairs spread evenly


@pytest.mark.parametrize(
    "split", [(0.8, 0.1), (0.5, 0.5, 0.5), (0.0, 0.5, 0.5), (1.2, -0.1, -0.1), (float("nan"), 0.5, 0.5)]
)
def test_bad_fractions(split: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="split"):
        split_per_user(np.arange(3), split, np.random.default_rng(0))  # type: ignore[arg-type]
