"""The best discrete allocation under a hard budget, given a score for every (decision, size) pair.

A one-shot controller ends with a score ``s[i, k]`` for giving decision ``i`` the grid
value ``grid[k]``; the allocation it deploys maximises ``Σ_i s[i, k_i]`` subject to
``Σ_i weights[i] · grid[k_i] <= capacity``: a multiple-choice knapsack.

* Small instances (the per-field and block spaces, tests) are solved **exactly** by
  dynamic programming over the capacity, divided by the greatest common divisor of
  all costs.
* Large ones (a per-feature space has a decision per row) by **Lagrangian
  relaxation**: each decision independently maximises ``s[i, k] - λ · cost[i, k]``,
  ``λ`` found by bisection as the smallest price that meets the capacity; then the
  capacity left is spent greedily on the upgrades towards the choice at the next lower
  price, best score gained per value first.  The result is within the budget by
  construction and at most one decision's score range below the optimum (the
  relaxation's optimum has at most one fractional decision).
"""

from __future__ import annotations

import math
from functools import reduce

import numpy as np

from nas.core.errors import BudgetError

__all__ = ["EXACT_CELLS", "solve_knapsack"]

#: Largest dynamic-programming table (decisions × capacity units) solved exactly.
EXACT_CELLS = 20_000_000


def solve_knapsack(scores: np.ndarray, weights: np.ndarray, grid: np.ndarray, capacity: int, *,
                   exact: bool | None = None) -> np.ndarray:
    """Grid indices ``k_i`` maximising the total score within ``capacity``.

    Args:
        scores: ``(n_decisions, len(grid))`` finite scores.
        weights: cost of one unit of each decision (positive integers).
        grid: the candidate values, sorted ascending (non-negative integers).
        capacity: the most ``Σ weights[i] · grid[k_i]`` may be.
        exact: force the dynamic programme (``True``) or the relaxation (``False``);
            ``None`` picks the programme when its table has at most :data:`EXACT_CELLS` cells.

    Raises:
        BudgetError: when even the smallest value everywhere costs more than ``capacity``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.int64)
    grid = np.asarray(grid, dtype=np.int64)
    if scores.shape != (len(weights), len(grid)) or not np.isfinite(scores).all():
        raise ValueError(f"scores must be finite with shape {(len(weights), len(grid))}, got {scores.shape}")
    costs = np.multiply.outer(weights, grid)
    least = int(costs[:, 0].sum())
    if least > capacity:
        raise BudgetError(f"the smallest value for every decision costs {least:,}, above the capacity {int(capacity):,}")
    if int(costs[:, -1].sum()) <= capacity:
        return np.argmax(scores, axis=1)
    unit = reduce(math.gcd, np.unique(costs).tolist(), 0) or 1
    units = int(capacity) // unit
    if exact is None:
        exact = len(weights) * (units + 1) <= EXACT_CELLS
    if exact:
        return _dynamic_programme(scores, costs // unit, units)
    return _lagrangian(scores, costs, int(capacity))


def _dynamic_programme(scores: np.ndarray, costs: np.ndarray, capacity: int) -> np.ndarray:
    """Exact: ``best[c]`` is the top score of the decisions so far within cost ``c``."""
    n, options = scores.shape
    best = np.zeros(capacity + 1)
    choice = np.zeros((n, capacity + 1), dtype=np.int16 if options < 2**15 else np.int32)
    for i in range(n):
        new = np.full(capacity + 1, -np.inf)
        for k in range(options):
            cost = int(costs[i, k])
            if cost > capacity:
                continue
            candidate = np.full(capacity + 1, -np.inf)
            candidate[cost:] = best[: capacity + 1 - cost] + scores[i, k]
            better = candidate > new
            new[better] = candidate[better]
            choice[i, better] = k
        best = new
    picks = np.empty(n, dtype=np.int64)
    left = capacity
    for i in range(n - 1, -1, -1):
        picks[i] = choice[i, left]
        left -= int(costs[i, picks[i]])
    return picks


def _choose(scores: np.ndarray, costs: np.ndarray, price: float) -> np.ndarray:
    """Each decision's best option at ``price`` per value; ties go to the cheaper option."""
    value = scores - price * costs
    # argmax returns the first maximum, and options are sorted by cost: ties pick the cheaper.
    return np.argmax(value, axis=1)


def _lagrangian(scores: np.ndarray, costs: np.ndarray, capacity: int) -> np.ndarray:
    rows = np.arange(len(scores))

    def spent(picks: np.ndarray) -> int:
        return int(costs[rows, picks].sum())

    low = 0.0  # infeasible price (the capacity is exceeded there)
    spread = float(scores.max() - scores.min())
    steps = np.diff(costs, axis=1)
    high = spread / max(float(steps[steps > 0].min()) if (steps > 0).any() else 1.0, 1.0) + 1.0
    while spent(_choose(scores, costs, high)) > capacity:  # pragma: no cover - high is feasible by construction
        high *= 2
    for _ in range(100):
        middle = (low + high) / 2
        if middle in (low, high):
            break
        if spent(_choose(scores, costs, middle)) > capacity:
            low = middle
        else:
            high = middle
    picks = _choose(scores, costs, high)
    wanted = _choose(scores, costs, low)
    # Spend what is left on the moves towards the cheaper price's choice, best gain per value first.
    gain = scores[rows, wanted] - scores[rows, picks]
    extra = costs[rows, wanted] - costs[rows, picks]
    movable = np.flatnonzero((extra > 0) & (gain > 0))
    left = capacity - spent(picks)
    for i in movable[np.argsort(-gain[movable] / extra[movable], kind="stable")]:
        if extra[i] <= left:
            picks[i] = wanted[i]
            left -= int(extra[i])
    return picks
