"""Projection of any decision vector onto the hard budget.

Every search space whose cost is linear in its decisions (each decision ``i``
takes a value ``v`` from a shared grid and costs ``weights[i] * v`` embedding
values) uses this one routine, so the budget is enforced in exactly one place.

The projection keeps the *shape* the controller proposed and spends the budget:

1. it finds, exactly, the scale ``λ`` at which ``Σ w·clip(λ·x, grid[0], grid[-1])``
   equals the budget (the cost is piecewise linear in ``λ``; its breakpoints are
   narrowed by median pivots, so the work is linear in the number of decisions);
2. it rounds every scaled value down to the grid, which keeps the result feasible;
3. it raises decisions one grid step at a time, largest rounding residue first
   (ties: larger proposal, then lower rank), while the budget allows.

Scaling keeps proportions, rounding down keeps feasibility, and the top-up brings
the cost to the budget whenever the grid allows.  An input that is already on the
grid, feasible and spends at least ``fill`` of the budget is returned unchanged,
which makes the projection idempotent.

**The fill rule** (what "whenever the grid allows" means, and what the tests check):
when every decision at the top of the grid fits, the output is all top values;
otherwise the output costs at most the budget, and either it spends at least
``fill`` of the budget, or no single decision below the top of the grid can be
raised one grid step within the remaining budget (with a frequency order: without
a more frequent decision of its table holding the same value, which would make the
raise break the order).  That last clause is the honest statement for coarse grids
and heavy decisions, where the best answer may leave a gap.

**Frequency order** (``order=``): within each table, a decision of a more frequent
level never ends with a smaller value than one of a rarer level (equal frequencies
are free).  The proposal is first made monotone along the order (the mean of its
running minimum from the frequent end and its running maximum from the rare end, so
an already ordered proposal is kept as is), scaling and rounding down keep the
order, and the top-up only raises a decision when every more frequent decision of
its table holding the same value can be raised too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nas.core.errors import BudgetError

__all__ = ["DEFAULT_FILL", "FrequencyOrder", "check_decisions", "is_monotone", "project_linear"]

#: Share of the budget a projected allocation spends whenever the grid allows it.
DEFAULT_FILL = 0.99

#: Below this many candidates one full sort is cheaper than the partition passes.
_SORT_BELOW = 4096

#: Size of the strided sample that brackets the scale of large inputs.
_SAMPLE = 8192


@dataclass(frozen=True, eq=False)
class FrequencyOrder:
    """Which decisions must keep at least as many dimensions as which others.

    Decisions are ranked within their table by frequency, most frequent first;
    equal frequencies share a *level* and are not ordered among themselves.  Build
    one with :meth:`from_frequencies`; spaces cache theirs.

    Attributes:
        table: table index of every decision (int64).
        level: level of every decision (int64), numbered table by table from the most
            frequent, so within a table a lower level means more frequent.
        rank: position of every decision in :attr:`order` (its tie-break in the top-up).
        order: decisions sorted by table, level, then index.
        starts: position in :attr:`order` where each level begins.
        level_table: table of each level.
        table_starts: first level of each table (and the number of levels at the end).
    """

    table: np.ndarray
    level: np.ndarray
    rank: np.ndarray
    order: np.ndarray
    starts: np.ndarray
    level_table: np.ndarray
    table_starts: np.ndarray

    @classmethod
    def from_frequencies(cls, table: np.ndarray, frequency: np.ndarray) -> FrequencyOrder:
        """The order of decisions with the given table index and frequency (any real key, higher = more frequent)."""
        table = np.asarray(table, dtype=np.int64)
        frequency = np.asarray(frequency)
        if table.ndim != 1 or frequency.shape != table.shape:
            raise ValueError(f"table {table.shape} and frequency {frequency.shape} must be 1-D and of one length")
        n = len(table)
        order = np.lexsort((np.arange(n), -frequency, table))
        sorted_table, sorted_frequency = table[order], frequency[order]
        new_level = np.ones(n, dtype=bool)
        new_level[1:] = (sorted_table[1:] != sorted_table[:-1]) | (sorted_frequency[1:] != sorted_frequency[:-1])
        starts = np.flatnonzero(new_level)
        level = np.empty(n, dtype=np.int64)
        level[order] = np.cumsum(new_level) - 1
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n)
        level_table = sorted_table[starts]
        new_table = np.ones(len(starts), dtype=bool)
        new_table[1:] = level_table[1:] != level_table[:-1]
        table_starts = np.append(np.flatnonzero(new_table), len(starts))
        return cls(table, level, rank, order, starts, level_table, table_starts)

    @property
    def n_levels(self) -> int:
        """Number of (table, frequency) levels."""
        return len(self.starts)

    @property
    def n_tables(self) -> int:
        """One more than the largest table index (the size of per-table lookups)."""
        return int(self.table.max()) + 1 if len(self.table) else 0

    def level_extremes(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Smallest and largest of ``values`` within each level."""
        ordered = np.asarray(values)[self.order]
        return np.minimum.reduceat(ordered, self.starts), np.maximum.reduceat(ordered, self.starts)

    def bounds(self, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per level: the smallest ``low`` of any more frequent level and the largest ``high`` of any rarer one.

        ``low`` / ``high`` are per-level extremes (:meth:`level_extremes`); the bounds are
        ``inf`` / ``-inf`` where the table has no such level.  Values respect the order
        exactly when every level's largest value is at most its first bound.
        """
        above = np.full(len(low), np.inf)
        below = np.full(len(high), -np.inf)
        # A loop over tables (tens at most), not rows: each table is one accumulate.
        for start, stop in zip(self.table_starts[:-1], self.table_starts[1:]):
            if stop - start > 1:
                above[start + 1 : stop] = np.minimum.accumulate(low[start : stop - 1])
                below[start : stop - 1] = np.maximum.accumulate(high[start + 1 : stop][::-1])[::-1]
        return above, below


def is_monotone(values: np.ndarray, order: FrequencyOrder) -> bool:
    """Whether no decision of a rarer level holds more than a decision of a more frequent level of its table."""
    if len(order.starts) == 0:
        return True
    low, high = order.level_extremes(np.asarray(values, dtype=np.float64))
    above, _ = order.bounds(low, high)
    return bool(np.all(high <= above))


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
    order: FrequencyOrder | None = None,
) -> np.ndarray:
    """Map ``decisions`` to grid values whose cost ``Σ weights·value`` is at most ``capacity``.

    Exact and deterministic: the same inputs give the same output on every machine
    that follows IEEE arithmetic, and the result obeys the fill rule of this module.

    Args:
        decisions: desired values, one per decision variable (any non-negative floats).
        weights: embedding values one unit of each decision costs (int, ≥ 1).
        grid: sorted, distinct candidate values shared by all decisions.
        capacity: the most embedding values that may be kept.
        fill: an input already spending this share of ``capacity`` (and feasible, on the
            grid, and in order when ``order`` is given) is returned as is; otherwise the
            output spends as much as the grid allows.
        order: when given, the output respects this frequency order (see the module notes).

    Returns:
        int64 values from ``grid``, one per decision.

    Raises:
        BudgetError: when even every decision at ``grid[0]`` costs more than ``capacity``.
        ValueError: for NaN, infinite or negative decisions, naming the first one.
    """
    weights = np.asarray(weights, dtype=np.int64)
    grid = np.asarray(grid, dtype=np.int64)
    if not 0.0 <= fill <= 1.0:
        raise ValueError(f"fill must be a share in [0, 1], got {fill}")
    x = check_decisions(decisions, len(weights))
    if len(weights) and int(weights.min()) < 1:
        raise ValueError(f"decision {int(np.argmin(weights))} has weight {int(weights.min())}; every weight must be at least 1")
    if order is not None and order.table.shape != x.shape:
        raise ValueError(f"the frequency order covers {len(order.table)} decisions, not {len(x)}")
    lowest, highest = int(grid[0]), int(grid[-1])
    total_weight = int(weights.sum())
    if total_weight * lowest > capacity:
        raise BudgetError(
            f"the budget of {capacity:,} values is below the minimum of {total_weight * lowest:,} (every decision at {lowest})"
        )
    if total_weight * highest <= capacity:
        return np.full(len(x), highest, dtype=np.int64)

    if x.min() >= lowest and x.max() <= highest and np.array_equal(x, np.floor(x)):
        values = x.astype(np.int64)
        cost = int(weights @ values)  # before the grid lookup: a random proposal rarely fits, and this is cheaper
        if fill * capacity <= cost <= capacity and _on_grid(x, grid) and (order is None or is_monotone(values, order)):
            return values

    peak = x.max()
    x = np.ones_like(x) if peak <= 0 else x / peak
    if order is not None:
        x = _monotone_shape(x, order)
    scale = _solve_scale(x, weights, lowest, highest, capacity)
    index, target = _round_down(x, scale, weights, grid, capacity)
    gap = capacity - int(weights @ grid[index])
    _top_up(index, target, weights, grid, gap, x, None if order is None else order.rank, order)
    return grid[index]


def _on_grid(x: np.ndarray, grid: np.ndarray) -> bool:
    """Whether every value of ``x`` (whole numbers within the grid's range) is a grid value."""
    return bool(np.array_equal(grid[_floor_index(x, grid)], x))


def _monotone_shape(x: np.ndarray, order: FrequencyOrder) -> np.ndarray:
    """``x`` made monotone along the frequency order: mean of the capped-from-above and raised-from-below versions.

    Capping each level at the smallest value of the more frequent levels, and raising
    it to the largest of the rarer ones, both give ordered vectors that keep every
    value a level already allows; their mean leans neither way and keeps ordered input.
    """
    low, high = order.level_extremes(x)
    above, below = order.bounds(low, high)
    if np.all(high <= above):
        return x
    level = order.level
    return 0.5 * (np.minimum(x, above[level]) + np.maximum(x, below[level]))


def _solve_scale(x: np.ndarray, weights: np.ndarray, lowest: int, highest: int, capacity: int) -> float:
    """Largest ``λ`` with ``Σ w·clip(λx, lowest, highest) ≤ capacity``; ``inf`` when every ``λ`` fits.

    The cost ``C(λ)`` is continuous, non-decreasing and linear between the breakpoints
    ``lowest/x`` and ``highest/x``.  For large inputs a strided sample first gives an
    estimate and a tight bracket ``[a, b]`` with ``C(a) ≤ capacity < C(b)`` (a few
    whole-array passes); :func:`_narrow` then solves exactly inside it.  ``x`` is
    scaled so its largest value is 1; a value so small that ``highest/x`` overflows is
    treated as zero (it would need a scale beyond floating point to leave ``lowest``).
    """
    w = weights.astype(np.float64)
    live = x * np.finfo(np.float64).max > highest
    constant = float(w[~live].sum()) * lowest
    if not live.all():
        x, w = x[live], w[live]
    spare = capacity - constant
    if float(w.sum()) * highest <= spare:
        return np.inf
    a, b = 0.0, np.inf
    if len(x) > 4 * _SAMPLE:
        a, b = _bracket(x, w, lowest, highest, spare)
    return _narrow(x, w, lowest, highest, spare, a, b)


def _bracket(x: np.ndarray, w: np.ndarray, lowest: int, highest: int, capacity: float) -> tuple[float, float]:
    """``[a, b]`` with ``C(a) ≤ capacity < C(b)``, tight around the solution of a strided sample."""
    stride = len(x) // _SAMPLE
    sample_x, sample_w = x[::stride], w[::stride]
    guess = _narrow(sample_x, sample_w, lowest, highest, capacity * float(sample_w.sum()) / float(w.sum()), 0.0, np.inf)
    a, b = 0.0, np.inf
    if not 0.0 < guess < np.inf:
        return a, b
    spread = 1e-3
    scaled = np.empty_like(x)  # one buffer for every trial point (no fresh memory per pass)
    for _ in range(5):
        for point in (guess / (1.0 + spread), guess * (1.0 + spread)):
            if a < point < b:
                np.multiply(x, point, out=scaled)
                if float(w @ np.clip(scaled, lowest, highest, out=scaled)) <= capacity:
                    a = point
                else:
                    b = point
        if a > 0.0 and b < np.inf and b <= guess * (1.0 + spread) and a >= guess / (1.0 + spread):
            break
        spread *= 16.0
    return a, b


def _narrow(x: np.ndarray, w: np.ndarray, lowest: int, highest: int, capacity: float, a: float, b: float) -> float:
    """Solve ``C(λ) = capacity`` exactly, given ``C(a) ≤ capacity < C(b)``.

    Each pass folds every decision whose breakpoints are all outside ``(a, b)`` into a
    constant (stuck at ``lowest`` or ``highest``) or a slope (linear over the bracket),
    drops it, and moves an end of the bracket to the median breakpoint still inside, so
    the breakpoints left halve every pass.  On the last piece ``C`` is linear and is
    solved directly.
    """
    constant, slope = 0.0, 0.0
    lower, upper = lowest / x, highest / x
    while x.size:
        # Classify by the breakpoints themselves, so a pivot that is a row's breakpoint classifies that row exactly.
        at_top, at_bottom = upper <= a, lower >= b
        linear = (lower <= a) & (upper >= b)
        constant += float(w[at_top].sum()) * highest + float(w[at_bottom].sum()) * lowest
        slope += float(w[linear] @ x[linear])
        active = ~(at_top | at_bottom | linear)
        x, w, lower, upper = x[active], w[active], lower[active], upper[active]
        if not x.size:
            break
        points = np.concatenate([lower[(lower > a) & (lower < b)], upper[(upper > a) & (upper < b)]])
        middle = len(points) // 2
        pivot = float(np.partition(points, middle)[middle])
        if constant + slope * pivot + float(w @ np.clip(pivot * x, lowest, highest)) <= capacity:
            a = pivot
        else:
            b = pivot
    if slope <= 0.0:
        return a
    return min(max(a + (capacity - constant - slope * a) / slope, a), b)


def _floor_index(values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Index of the largest grid value ``≤ values`` (values within ``[grid[0], grid[-1]]``).

    Grid values are integers, so rounding down to the grid equals rounding ``floor(v)``
    down to it: a lookup table over the integer range replaces a binary search per value.
    """
    lowest, highest = int(grid[0]), int(grid[-1])
    if highest - lowest > 4 * len(values) + 1024:
        return np.searchsorted(grid, values, side="right") - 1
    table = np.searchsorted(grid, np.arange(lowest, highest + 1), side="right") - 1
    return table[np.floor(values).astype(np.int64) - lowest]


def _round_down(
    x: np.ndarray, scale: float, weights: np.ndarray, grid: np.ndarray, capacity: int
) -> tuple[np.ndarray, np.ndarray]:
    """Grid indices of ``clip(scale·x)`` rounded down, and the clipped targets.

    In exact arithmetic the rounded cost is within the capacity; should floating point
    land a target on the wrong side of a grid value, the scale is shrunk a little and
    the rounding redone (deterministically), and all-lowest is the last resort.
    """
    lowest, highest = float(grid[0]), float(grid[-1])
    for attempt in range(12):
        if np.isinf(scale):
            target = np.where(x > 0, highest, lowest)
        else:
            target = np.clip(scale * x, lowest, highest)
        index = _floor_index(target, grid)
        if int(weights @ grid[index]) <= capacity:
            return index, target
        scale = (1.0 - 1e-12 * 16.0**attempt) * (scale if np.isfinite(scale) else np.finfo(np.float64).max)
    return np.zeros(len(x), dtype=np.int64), np.full(len(x), lowest)


def _top_up(
    index: np.ndarray,
    target: np.ndarray,
    weights: np.ndarray,
    grid: np.ndarray,
    gap: int,
    preference: np.ndarray,
    rank: np.ndarray | None,
    order: FrequencyOrder | None,
) -> None:
    """Raise decisions one grid step at a time while ``gap`` allows (``index`` in place).

    Each round ranks the affordable decisions by residue ``target - value`` (largest
    first), then preference (larger first), then ``rank`` (lower first; ``None``: the
    decision's position), and raises
    the longest prefix of that ranking whose steps fit in the gap; rounds repeat until
    no decision can be raised.  Only the best ``gap // cheapest step`` candidates can
    be in the prefix, so they are found by partitions (linear time) and only they are
    sorted, and not even they when their steps all cost the same.  The result equals
    that of sorting every candidate, so it is exact and deterministic.
    """
    last = len(grid) - 1
    step_of = np.append(np.diff(grid), 0)
    # Equal weights on an evenly spaced grid (the per-feature space): every step costs the same,
    # so the round needs no array of step costs.
    even = last > 0 and bool(np.all(step_of[:-1] == step_of[0])) and int(weights.min()) == int(weights.max())
    while gap > 0 and last > 0:
        if even:
            unit = int(weights[0]) * int(step_of[0])
            if unit > gap:
                return
            candidates = np.flatnonzero(index < last)  # all affordable: nothing is stuck, so nothing blocked
            if candidates.size == 0:
                return
            k = min(candidates.size, gap // unit)
            if k == candidates.size:
                chosen = candidates
            else:
                residue = target[candidates] - grid[index[candidates]]
                chosen = candidates[_best(residue, preference[candidates], None if rank is None else rank[candidates], k)]
            index[chosen] += 1
            gap -= unit * len(chosen)
            continue
        step = weights * step_of[index]
        movable = index < last
        affordable = movable & (step <= gap)
        if order is not None:
            affordable &= ~_blocked(index, movable & ~affordable, order, len(grid))
        candidates = np.flatnonzero(affordable)
        if candidates.size == 0:
            return
        cost = step[candidates]
        k = min(candidates.size, gap // int(cost.min()))
        if k == candidates.size and int(cost.sum()) <= gap:
            chosen = candidates
        else:
            residue = target[candidates] - grid[index[candidates]]
            ranks = None if rank is None else rank[candidates]  # None: ascending, as candidates are
            best = _best(residue, preference[candidates], ranks, k)
            uniform = np.all(cost[best] == cost[best[0]]) and int(cost[best[0]]) * len(best) <= gap
            if not uniform:
                tie_break = candidates[best] if ranks is None else ranks[best]
                best = best[np.lexsort((tie_break, -preference[candidates][best], -residue[best]))]
                best = best[np.cumsum(cost[best]) <= gap]
            chosen = candidates[best]
        index[chosen] += 1
        gap -= int(step[chosen].sum())


def _blocked(index: np.ndarray, stuck: np.ndarray, order: FrequencyOrder, n_grid: int) -> np.ndarray:
    """Decisions that may not rise because a more frequent one of their table, at the same value, cannot."""
    if not stuck.any():
        return np.zeros(len(index), dtype=bool)
    key = order.table * n_grid + index
    first_stuck = np.full(order.n_tables * n_grid, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first_stuck, key[stuck], order.level[stuck])
    return order.level > first_stuck[key]


def _best(residue: np.ndarray, preference: np.ndarray, rank: np.ndarray | None, k: int) -> np.ndarray:
    """Positions of the ``k`` best entries by (residue desc, preference desc, rank asc); ranks are distinct.

    ``rank=None`` means the entries' own order (position ascending).  Three partitions
    instead of a sort: the k-th largest residue splits the entries into sure winners and
    a tie, the tie is split by preference the same way, and the last tie by rank (by
    position: its first entries, with no partition at all).
    """
    m = len(residue)
    if k >= m:
        return np.arange(m)
    if m <= _SORT_BELOW:
        return np.lexsort((np.arange(m) if rank is None else rank, -preference, -residue))[:k]
    chosen = []
    pool = None  # every entry, without an index array of them all
    keys = (residue, preference) if rank is None else (residue, preference, -rank.astype(np.float64))
    for key in keys:
        values = key if pool is None else key[pool]
        cut = float(np.partition(values, len(values) - k)[len(values) - k])  # the k-th largest
        winners, tie = np.flatnonzero(values > cut), np.flatnonzero(values == cut)
        if pool is not None:
            winners, tie = pool[winners], pool[tie]
        chosen.append(winners)
        k -= len(winners)
        pool = tie
        if k == 0 or len(pool) == k:
            break
    # Left: a tie of more than k entries (by position, the first k of them: pool is ascending) or exactly k.
    chosen.append(pool[:k] if len(pool) == k or rank is None else pool[:0])
    return np.concatenate(chosen)
