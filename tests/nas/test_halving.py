"""The successive-halving schedule of the retrain stage."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nas.pipeline.search import HALVING_RATE, halving_rungs


def test_five_candidates_train_a_ninth_then_a_third_then_one_to_the_end():
    assert HALVING_RATE == 3
    assert halving_rungs(5, 40) == [(5, 5), (14, 2), (40, 1)]
    assert halving_rungs(5, 200, horizon=75) == [(9, 5), (25, 2), (200, 1)]
    assert halving_rungs(1, 40) == [(40, 1)]
    assert halving_rungs(3, 10) == [(4, 3), (10, 1)]


@given(st.integers(1, 200), st.integers(1, 500), st.integers(1, 600), st.integers(2, 5))
def test_rungs_shrink_the_field_lengthen_training_and_end_with_one_full_training(n, epochs, horizon, rate):
    rungs = halving_rungs(n, epochs, horizon=horizon, rate=rate)
    counts = [count for _, count in rungs]
    lengths = [length for length, _ in rungs]
    assert counts[0] == n and counts[-1] == 1 and lengths[-1] == epochs
    assert all(a > b for a, b in zip(counts, counts[1:])), "every rung keeps fewer candidates"
    assert all(a <= b for a, b in zip(lengths, lengths[1:])), "and trains them at least as long"
    assert all(1 <= length <= epochs for length in lengths)


def test_bad_schedules_are_refused():
    with pytest.raises(ValueError, match="halving needs"):
        halving_rungs(0, 10)
    with pytest.raises(ValueError, match="halving needs"):
        halving_rungs(3, 10, rate=1)
