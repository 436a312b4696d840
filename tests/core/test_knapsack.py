"""The multiple-choice knapsack behind one-shot choices: exact when small, near-optimal when large, never over."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nas.core import BudgetError
from nas.core.knapsack import solve_knapsack


@st.composite
def instances(draw):
    n = draw(st.integers(1, 4))
    grid = np.array(sorted(draw(st.sets(st.integers(0, 9), min_size=1, max_size=4))), dtype=np.int64)
    weights = np.array(draw(st.lists(st.integers(1, 7), min_size=n, max_size=n)), dtype=np.int64)
    scores = np.array(draw(st.lists(st.floats(-5, 5), min_size=n * len(grid), max_size=n * len(grid)))).reshape(n, -1)
    low, high = int(weights.sum() * grid[0]), int(weights.sum() * grid[-1])
    capacity = draw(st.integers(low, high))
    return scores, weights, grid, capacity


def brute_force(scores, weights, grid, capacity) -> float:
    best = -np.inf
    for picks in itertools.product(range(len(grid)), repeat=len(weights)):
        picks = np.array(picks)
        if weights @ grid[picks] <= capacity:
            best = max(best, scores[np.arange(len(weights)), picks].sum())
    return best


@settings(max_examples=400, deadline=None)
@given(instances())
def test_exact_programme_finds_the_optimum_and_relaxation_stays_close(instance):
    scores, weights, grid, capacity = instance
    optimum = brute_force(*instance)
    rows = np.arange(len(weights))
    exact = solve_knapsack(scores, weights, grid, capacity, exact=True)
    assert weights @ grid[exact] <= capacity
    assert scores[rows, exact].sum() == pytest.approx(optimum, abs=1e-9)
    relaxed = solve_knapsack(scores, weights, grid, capacity, exact=False)
    assert weights @ grid[relaxed] <= capacity
    # Lagrangian + greedy: at most one decision's score range below the optimum.
    assert scores[rows, relaxed].sum() >= optimum - (scores.max(axis=1) - scores.min(axis=1)).max() - 1e-9


def test_a_budget_below_the_smallest_sizes_names_the_minimum():
    with pytest.raises(BudgetError, match="costs 30"):
        solve_knapsack(np.zeros((3, 2)), np.array([5, 5, 5]), np.array([2, 4]), 29)


def test_large_instances_use_the_relaxation_and_spend_the_budget():
    rng = np.random.default_rng(0)
    n, grid = 50_000, np.arange(1, 65)
    # Scores favour large sizes, more so for the first rows: the budget binds.
    scores = -np.abs(grid[None, :] - rng.integers(1, 65, size=(n, 1))).astype(np.float64)
    capacity = n * 8
    picks = solve_knapsack(scores, np.ones(n, dtype=np.int64), grid, capacity)
    spent = int(grid[picks].sum())
    assert capacity - 64 <= spent <= capacity
