"""Projection of any decision vector onto the hard budget.

Every search space whose cost is linear in its decisions (each decision ``i``
takes a value ``v`` from a shared grid and costs ``weights[i] * v`` embedding
values) uses this one routine, so the budget is enforced in exactly one place.

The projection keeps the *shape* the controller proposed and spends the budget:
it finds the scale ``λ`` at which ``clip(λ·x, grid[0], grid[-1])`` costs the
budget, rounds down to the grid, then raises the decisions with the largest
rounding residue one grid step at a time while the budget allows.  Scaling keeps
proportions (and therefore frequency order), rounding down keeps the result
feasible, and the top-up brings the cost to the budget whenever the grid allows.
An input that is already on the grid, feasible and spends at least ``fill`` of
the budget is returned unchanged, which makes the projection idempotent.
"""

from __future__ import annotations

import numpy as np

from nas.core.errors import BudgetError

__all__ = ["DEFAULT_FILL", "check_decisions", "project_linear"]

#: Share of the budget a projected allocation spends whenever the grid allows it.
DEFAULT_FILL = 0.99

_BISECTION_STEPS = 64


def check_decisions(decisions: np.ndarray, n: int) -> np.ndarray:
    """Validate a controller's raw decisions: 1-D, ``n`` long, finite and non-negative.

    Raises:
        ValueError: naming the first bad entry, so a controller's bug is easy to find.
    """
    x = np.asarray(decisions, dtype=np.float64)
    if x.shape != (n,):
        raise ValueError(f"expected {n} decisions, got an array of shape {x.shape}")
    bad = ~np.isfinite(x)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"decision {i} is {x[i]}; decisions must be finite sizes (got {int(bad.sum())} non-finite)")
    negative = x < 0
    if negative.any():
        i = int(np.flatnonzero(negative)[0])
        raise ValueError(f"decision {i} is {x[i]:g}; decisions must be non-negative sizes")
    return x


def project_linear(
    decisions: np.ndarray,
    weights: np.ndarray,
    grid: np.ndarray,
    capacity: int,
    *,
    fill: float = DEFAULT_FILL,
) -> np.ndarray:
    """Map ``decisions`` to grid values whose cost ``Σ weights·value`` is at most ``capacity``.

    Args:
        decisions: desired values, one per decision variable (any non-negative floats).
        weights: embedding values one unit of each decision costs (int, ≥ 1).
        grid: sorted, distinct candidate values shared by all decisions.
        capacity: the most embedding values that may be kept.
        fill: an input already spending this share of ``capacity`` (and feasible, on the
            grid) is returned as is; otherwise the output spends as much as the grid allows.

    Returns:
        int64 values from ``grid``, one per decision.

    Raises:
        BudgetError: when even every decision at ``grid[0]`` costs more than ``capacity``.
        ValueError: for NaN, infinite or negative decisions.
    """
    weights = np.asarray(weights, dtype=np.int64)
    grid = np.asarray(grid, dtype=np.int64)
    x = check_decisions(decisions, len(weights))
    lowest, highest = int(grid[0]), int(grid[-1])
    minimum = int(weights.sum()) * lowest
    if minimum > capacity:
        raise BudgetError(f"the budget of {capacity:,} values is below the minimum of {minimum:,} (every decision at {lowest})")
    maximum = int(weights.sum()) * highest
    if maximum <= capacity:
        return np.full(len(x), highest, dtype=np.int64)

    on_grid = np.isin(x, grid)
    if on_grid.all():
        cost = int(weights @ x.astype(np.int64))
        if fill * capacity <= cost <= capacity:
            return x.astype(np.int64)

    if x.max() <= 0:
        x = np.ones_like(x)
    scale = _scale_for(x, weights, lowest, highest, capacity)
    target = np.clip(scale * x, lowest, highest)
    index = np.searchsorted(grid, target, side="right") - 1
    values = grid[index]
    _top_up(values, index, target - values, weights, grid, capacity - int(weights @ values), x)
    return values


def _scale_for(x: np.ndarray, weights: np.ndarray, lowest: int, highest: int, capacity: int) -> float:
    """Largest ``λ`` (to bisection precision) with ``Σ w·clip(λx, lowest, highest) ≤ capacity``."""
    w = weights.astype(np.float64)
    low, high = 0.0, highest / x[x > 0].min()
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (low + high)
        if w @ np.clip(mid * x, lowest, highest) <= capacity:
            low = mid
        else:
            high = mid
    return low


def _top_up(
    values: np.ndarray,
    index: np.ndarray,
    residue: np.ndarray,
    weights: np.ndarray,
    grid: np.ndarray,
    gap: int,
    preference: np.ndarray,
) -> None:
    """Raise decisions one grid step at a time, largest residue first, while ``gap`` allows (in place).

    Ties in residue go to the larger preferred value, then the lower index, so the
    result is deterministic and a larger proposal never ends below a smaller one.
    """
    last = len(grid) - 1
    while gap > 0:
        movable = np.flatnonzero(index < last)
        if movable.size == 0:
            return
        step_cost = weights[movable] * (grid[index[movable] + 1] - grid[index[movable]])
        affordable = step_cost <= gap
        movable, step_cost = movable[affordable], step_cost[affordable]
        if movable.size == 0:
            return
        order = np.lexsort((movable, -preference[movable], -residue[movable]))
        spent = np.cumsum(step_cost[order])
        chosen = order[spent <= gap]
        if chosen.size == 0:
            # The cheapest-ranked steps do not fit together; take the first that fits alone.
            chosen = order[:1]
        picked = movable[chosen]
        gap -= int(step_cost[chosen].sum())
        index[picked] += 1
        values[picked] = grid[index[picked]]
        residue[picked] = 0.0
