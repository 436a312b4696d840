"""The search-space conformance suite: what every space must guarantee, checked by hypothesis.

A third-party space runs it from its own tests::

    from nas.testing import check_search_space
    from my_pkg import MySpace

    def test_my_space_conforms():
        check_search_space(MySpace)

``check_search_space`` draws thousands of cases, each a multi-field layout
(:mod:`nas.testing.data`), bounds ``d_min``/``d_max``, the space's own options,
budgets from infeasible to more than enough, and raw decision vectors (uniform,
huge, tiny, all zero, on and off the grid), and checks:

* **structure**: a sorted int grid inside ``[d_min, d_max]``, positive int weights,
  context with ``table`` and ``log_frequency`` (one finite value per decision);
* **costs**: ``cost == to_allocation(...).cost``, and ``candidate_costs`` agrees with both;
* **round trip**: ``from_allocation(to_allocation(d)) == d`` for grid values ``d``;
* **projection**, plain and ``monotone=True``: on the grid, within the budget and the
  bounds, idempotent, the fill rule (:func:`fill_rule_violation`), and with
  ``monotone`` no rarer row of a table keeping more dimensions than a more frequent one;
* **sampling**: feasible, and the same seed gives the same decisions;
* **precision** (:func:`check_precisions`): the same space searching a drawn list of
  precisions under byte budgets (scales per row or shared): sizes and precisions projected within the bits, the
  space's cost equal to the allocation's, the fill rule at the chosen precisions,
  idempotence, the order, and a bad precision index named;
* **errors**: an infeasible budget raises :class:`BudgetError` naming the minimum,
  NaN / infinite / negative decisions a ``ValueError`` naming the index.

The individual checks are public too, to be called on one space and budget.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nas.core.allocation import Allocation
from nas.core.budget import Budget
from nas.core.errors import BudgetError
from nas.core.precision import PRECISIONS, SCALES
from nas.core.projection import DEFAULT_FILL
from nas.core.space import SearchSpace
from nas.core.tables import TableSpec
from nas.testing.budgets import precision_bytes
from nas.testing.data import SyntheticFields, synthetic_fields

__all__ = [
    "BUILTIN_OPTIONS",
    "Layout",
    "SpaceFactory",
    "block_options",
    "check_allocation_round_trip",
    "check_errors",
    "check_precision_projection",
    "check_precisions",
    "check_projection",
    "check_search_space",
    "check_structure",
    "fill_rule_violation",
    "grid_options",
    "layouts",
    "row_order_violation",
]

#: Builds a space like the registry does: ``factory(tables, frequencies, d_min, d_max, **options)``.
SpaceFactory = Callable[..., SearchSpace]

#: The raw decision vectors every projection is tried on.
RAW_KINDS = ("uniform", "huge", "tiny", "zeros", "on_grid", "integers", "one_hot")


@dataclass(frozen=True)
class Layout:
    """Tables with frequencies and the row-size bounds: the inputs of a space."""

    fields: SyntheticFields
    d_min: int
    d_max: int

    @property
    def tables(self) -> tuple[TableSpec, ...]:
        return self.fields.tables

    @property
    def frequencies(self) -> dict[str, np.ndarray]:
        return self.fields.frequencies

    @property
    def rows(self) -> dict[str, int]:
        return self.fields.rows


@st.composite
def layouts(draw: st.DrawFn, max_fields: int = 6, max_rows: int = 120, max_dim: int = 64) -> Layout:
    """Multi-field layouts: 1..``max_fields`` fields of 1..``max_rows`` rows, power-law frequencies.

    Small cases (one row, one field, ``d_min == d_max``, no interactions at all) come up
    often, as they are where off-by-one mistakes live.
    """
    n_fields = draw(st.integers(1, max_fields))
    cardinalities = draw(st.lists(st.one_of(st.integers(1, 3), st.integers(1, max_rows)), min_size=n_fields, max_size=n_fields))
    exponents = draw(st.lists(st.floats(0.3, 2.5), min_size=n_fields, max_size=n_fields))
    interactions = draw(st.one_of(st.just(0), st.integers(1, 20), st.integers(0, 8 * max(cardinalities))))
    fields = synthetic_fields(cardinalities, exponent=exponents, interactions=interactions, seed=draw(st.integers(0, 2**32 - 1)))
    d_max = draw(st.one_of(st.sampled_from([1, 2, 4, 6, 8, 12, 16, 64]), st.integers(1, max_dim)))
    d_min = draw(st.one_of(st.just(d_max), st.just(0), st.just(min(1, d_max)), st.integers(0, d_max)))
    return Layout(fields, d_min, d_max)


def grid_options(layout: Layout) -> st.SearchStrategy[dict[str, Any]]:
    """Options of spaces with a size grid: every size, powers of two, or an explicit list."""
    explicit = st.lists(st.integers(layout.d_min, layout.d_max), min_size=1, max_size=6, unique=True)
    return st.fixed_dictionaries({"grid": st.one_of(st.none(), st.just("pow2"), explicit)})


def block_options(layout: Layout) -> st.SearchStrategy[dict[str, Any]]:
    """Options of the block space: ``B`` among the divisors of ``d_max`` (1 included), any ``G``, both groupings."""
    divisors = [b for b in range(1, layout.d_max + 1) if layout.d_max % b == 0]
    most_rows = max(layout.rows.values())
    return st.fixed_dictionaries({
        "blocks": st.sampled_from(divisors),
        "groups": st.one_of(st.integers(1, 4), st.integers(1, most_rows + 3)),
        "grouping": st.sampled_from(["count", "mass"]),
    })


#: Option strategies of the built-in spaces, by registry name.
BUILTIN_OPTIONS: dict[str, Callable[[Layout], st.SearchStrategy[dict[str, Any]]]] = {
    "per-feature": grid_options,
    "per-field": grid_options,
    "block": block_options,
}


# -- individual checks ---------------------------------------------------------------------------
def check_structure(space: SearchSpace) -> None:
    """Grid, weights, context and candidate costs have the promised types, shapes and values."""
    grid, weights = np.asarray(space.grid), np.asarray(space.weights)
    assert grid.ndim == 1 and grid.size >= 1 and np.issubdtype(grid.dtype, np.integer), f"bad grid {grid!r}"
    assert np.all(np.diff(grid) > 0), f"grid not sorted and distinct: {grid.tolist()}"
    assert space.d_min <= grid[0] and grid[-1] <= space.d_max, f"grid {grid.tolist()} outside [{space.d_min}, {space.d_max}]"
    n = space.n_decisions
    assert weights.shape == (n,) and np.issubdtype(weights.dtype, np.integer), f"bad weights {weights.dtype} {weights.shape}"
    assert n >= 1 and int(weights.min()) >= 1, "every decision must cost at least one value per dimension"
    context = space.context()
    for key in ("table", "log_frequency"):
        assert key in context, f"context lacks {key!r}; it has {sorted(context)}"
    for key, value in context.items():
        value = np.asarray(value)
        assert value.shape == (n,), f"context[{key!r}] has shape {value.shape}, expected ({n},)"
        assert np.all(np.isfinite(value.astype(np.float64))), f"context[{key!r}] is not finite"
    table = np.asarray(context["table"])
    assert np.issubdtype(table.dtype, np.integer) and table.min() >= 0 and table.max() < len(space.tables)
    costs = space.candidate_costs(np.arange(n))
    assert costs.shape == (n, len(grid)), f"candidate_costs has shape {costs.shape}, expected {(n, len(grid))}"
    assert np.array_equal(space.candidate_costs(0), costs[0])
    assert space.minimum_cost() == int(costs[:, 0].sum()) and space.maximum_cost() == int(costs[:, -1].sum())
    order = space.frequency_order()
    assert np.array_equal(order.table, table), "the frequency order must rank decisions within their own tables"


def check_allocation_round_trip(space: SearchSpace, decisions: np.ndarray) -> Allocation:
    """``to_allocation`` / ``from_allocation`` invert each other and the costs agree; returns the allocation."""
    decisions = np.asarray(decisions, dtype=np.int64)
    allocation = space.to_allocation(decisions)
    assert allocation.rows() == space.rows(), f"allocation tables {allocation.rows()} are not the space's {space.rows()}"
    assert allocation.cost == space.cost(decisions), f"allocation cost {allocation.cost} != space cost {space.cost(decisions)}"
    back = space.from_allocation(allocation)
    assert np.array_equal(back, decisions), "from_allocation(to_allocation(d)) != d"
    for name, dims in allocation.row_dims.items():
        assert dims.size == 0 or (dims.min() >= space.d_min and dims.max() <= space.d_max), f"table {name!r} out of bounds"
    return allocation


def check_candidate_costs(space: SearchSpace, decisions: np.ndarray, index: int) -> None:
    """Changing decision ``index`` to each grid value changes the cost (and the allocation's) as candidate_costs says."""
    decisions = np.asarray(decisions, dtype=np.int64)
    costs = space.candidate_costs(index)
    current = int(np.searchsorted(space.grid, decisions[index]))
    for j, value in enumerate(space.grid):
        changed = decisions.copy()
        changed[index] = value
        delta = space.cost(changed) - space.cost(decisions)
        assert delta == int(costs[j] - costs[current]), f"candidate_costs({index}) disagrees with cost at value {value}"
        assert space.to_allocation(changed).cost == space.cost(changed)


def row_order_violation(space: SearchSpace, allocation: Allocation) -> str | None:
    """Where a rarer row of a table keeps more dimensions than a more frequent one, or ``None``."""
    for table in space.tables:
        dims = allocation.row_dims[table.name]
        frequency = space.frequencies[table.name]
        order = np.argsort(-frequency, kind="stable")
        ordered_frequency, ordered_dims = frequency[order], dims[order]
        starts = np.flatnonzero(np.r_[True, ordered_frequency[1:] != ordered_frequency[:-1]])
        low, high = np.minimum.reduceat(ordered_dims, starts), np.maximum.reduceat(ordered_dims, starts)
        floor = np.minimum.accumulate(low)[:-1]  # smallest size among all more frequent levels
        bad = np.flatnonzero(high[1:] > floor)
        if bad.size:
            level = int(bad[0]) + 1
            return (
                f"table {table.name!r}: a row of frequency {ordered_frequency[starts[level]]} keeps {high[level]} "
                f"dimensions but a more frequent row keeps only {floor[level - 1]}"
            )
    return None


def fill_rule_violation(
    space: SearchSpace, values: np.ndarray, budget: Budget, *, monotone: bool = False, fill: float = DEFAULT_FILL
) -> str | None:
    """Why ``values`` break the fill rule, or ``None``.

    The rule: when every decision at the top of the grid fits in the budget, the
    output is all top values; otherwise it costs at most the budget and either spends
    at least ``fill`` of it, or no decision below the top can be raised one grid step
    within the budget left (with ``monotone``, raising a decision while a more
    frequent decision of its table holds the same value would break the order, so
    such a decision does not count).

    With precisions, ``values`` is a whole decision vector, and the rule holds for its
    sizes at its precisions: each size step costs its precision's price, and the
    budget left for the sizes is what the integer rows' scales leave.
    """
    values = np.asarray(values, dtype=np.int64)
    sizes, precision = space.split(values) if space.precisions else (values, None)
    weights, capacity = space.weights, budget.max_values
    if precision is not None and budget.unit == "bits":
        per_value, per_row = budget.prices()
        weights, capacity = weights * per_value[precision], budget.max_bits - int(space.weights @ per_row[precision])
    return _fill_violation(space, sizes, weights, capacity, monotone=monotone, fill=fill)


def _fill_violation(
    space: SearchSpace, values: np.ndarray, weights: np.ndarray, capacity: int, *, monotone: bool, fill: float
) -> str | None:
    grid = space.grid
    cost = int(weights @ values)
    if int(weights.sum()) * int(grid[-1]) <= capacity:
        return None if np.all(values == grid[-1]) else "every decision at the top of the grid fits, but not all are there"
    if cost > capacity:
        return f"cost {cost:,} exceeds the budget of {capacity:,}"
    if cost >= fill * capacity:
        return None
    index = np.searchsorted(grid, values)
    raisable = index < len(grid) - 1
    step = np.where(raisable, weights * (grid[np.minimum(index + 1, len(grid) - 1)] - values), 0)
    fits = raisable & (step <= capacity - cost)
    if monotone:
        order = space.frequency_order()
        key = order.table * len(grid) + index
        first = np.full(order.n_tables * len(grid), np.iinfo(np.int64).max)
        np.minimum.at(first, key, order.level)
        fits &= order.level <= first[key]
    if fits.any():
        i = int(np.flatnonzero(fits)[0])
        return (
            f"spends {cost:,} of {capacity:,} ({cost / capacity:.2%} < {fill:.0%}) although decision {i} "
            f"could still rise from {values[i]} for {int(step[i]):,}"
        )
    return None


def check_projection(space: SearchSpace, raw: np.ndarray, budget: Budget, *, monotone: bool = False) -> np.ndarray:
    """Project ``raw`` and check the result: grid, budget, bounds, fill rule, idempotence, order; returns it."""
    projected = space.project(raw, budget, monotone=monotone)
    assert isinstance(projected, np.ndarray) and projected.dtype == np.int64, f"project must return int64, got {projected!r}"
    assert projected.shape == (space.n_decisions,)
    assert np.isin(projected, space.grid).all(), "projected values must be grid values"
    cost = space.cost(projected)
    assert cost <= budget.max_values, f"the projection costs {cost:,}, which exceeds the budget of {budget.max_values:,}"
    allocation = space.to_allocation(projected)
    allocation.validate(budget)  # bounds and budget again, at row level
    problem = fill_rule_violation(space, projected, budget, monotone=monotone)
    assert problem is None, problem
    again = space.project(projected, budget, monotone=monotone)
    assert np.array_equal(again, projected), "project is not idempotent"
    if monotone:
        problem = row_order_violation(space, allocation)
        assert problem is None, problem
    return projected


def check_precision_projection(space: SearchSpace, raw: np.ndarray, budget: Budget, *, monotone: bool = False) -> np.ndarray:
    """Project a raw (sizes, precisions) vector of a space with precisions and check the result; returns it.

    Sizes on the grid and precisions among the space's; the cost in the budget's unit equal
    to the allocation's (``bits()`` under a byte budget) and within the budget; the fill rule
    for the sizes at the chosen precisions; idempotence; the round trip through the
    allocation; with ``monotone``, the frequency order of the sizes.
    """
    projected = space.project(raw, budget, monotone=monotone)
    assert isinstance(projected, np.ndarray) and projected.dtype == np.int64, f"project must return int64, got {projected!r}"
    assert projected.shape == (space.vector_length,)
    sizes, precision = space.split(projected)
    assert np.isin(sizes, space.grid).all(), "projected sizes must be grid values"
    assert precision.min() >= 0 and precision.max() < len(space.precisions), "projected precisions must index the space's"
    cost = space.cost_in(projected, budget)
    assert cost <= budget.max_cost, f"the projection costs {cost:,} {budget.unit}, which exceeds the budget of {budget.max_cost:,}"
    allocation = space.allocation(projected)
    assert allocation.precisions == space.precisions
    assert cost == (allocation.bits(budget.scales) if budget.unit == "bits" else allocation.cost), \
        "the space's cost is not the allocation's"
    allocation.validate(budget)
    assert np.array_equal(space.decisions(allocation), projected), "decisions(allocation(v)) != v"
    problem = fill_rule_violation(space, projected, budget, monotone=monotone)
    assert problem is None, problem
    assert np.array_equal(space.project(projected, budget, monotone=monotone), projected), "project is not idempotent"
    if monotone:
        problem = row_order_violation(space, allocation)
        assert problem is None, problem
    return projected


def check_precisions(space: SearchSpace, share: float, rng: np.random.Generator, kinds: Sequence[str],
                     scales: str = "row") -> None:
    """A byte budget at ``share`` between the space's cheapest and dearest allocation, and raw vectors projected onto it.

    ``scales``: where the budget's integer rows keep their scales (per row, or shared).

    Below the cheapest, the budget or the space refuses it naming the minimum; otherwise
    every raw kind (with random, out-of-range-free precisions) is projected plain and
    monotone, a sample is checked, and a bad precision index is a ``ValueError`` naming
    its decision.
    """
    rows, chosen = space.rows(), space.precisions
    try:
        budget = Budget.from_bytes(precision_bytes(space, share, scales), rows, space.d_max, space.d_min,
                                   precisions=chosen, scales=scales)
    except BudgetError as error:
        assert "smallest feasible budget is" in str(error), f"the error must name the minimum: {error}"
        return
    if budget.max_bits < space.minimum_cost_in(budget):
        try:
            space.project(np.zeros(space.vector_length), budget)
        except BudgetError as error:
            assert f"{space.minimum_cost_in(budget):,}" in str(error), f"the error must name the minimum: {error}"
            return
        raise AssertionError("a byte budget below the space's minimum was accepted")
    for kind in kinds:
        raw = space.join(raw_decisions(kind, space, rng), rng.integers(0, len(chosen), space.n_decisions))
        check_precision_projection(space, raw, budget)
        check_precision_projection(space, raw, budget, monotone=True)
    sample_seed = int(rng.integers(0, 2**32))
    first = space.sample(np.random.default_rng(sample_seed), budget)
    assert np.array_equal(first, space.sample(np.random.default_rng(sample_seed), budget)), "sample is not deterministic"
    check_precision_projection(space, first, budget)
    raw = space.join(np.full(space.n_decisions, float(space.grid[-1])), np.zeros(space.n_decisions))
    i = int(rng.integers(0, space.n_decisions))
    raw[space.n_decisions + i] = len(chosen)
    try:
        space.project(raw, budget)
    except ValueError as error:
        assert f"precision of decision {i}" in str(error), f"the error for a bad precision must name decision {i}: {error}"
    else:
        raise AssertionError("project accepted a precision index past the last precision")


def check_errors(space: SearchSpace, budget: Budget, rng: np.random.Generator) -> None:
    """NaN, infinite and negative decisions raise a ValueError naming their index."""
    n = space.n_decisions
    for bad in (np.nan, np.inf, -1.0):
        raw = np.full(n, float(space.grid[-1]))
        i = int(rng.integers(0, n))
        raw[i] = bad
        try:
            space.project(raw, budget)
        except ValueError as error:
            assert f"decision {i}" in str(error), f"the error for a {bad} decision must name index {i}: {error}"
        else:
            raise AssertionError(f"project accepted a {bad} decision")


def check_infeasible(space: SearchSpace, capacity: int) -> None:
    """A budget below the space's minimum is refused with a BudgetError naming the minimum."""
    rows = space.rows()
    floor = sum(rows.values()) * space.d_min
    try:
        budget = Budget.from_params(capacity, rows, space.d_max, space.d_min)
    except BudgetError as error:
        assert capacity < floor and f"{floor:,}" in str(error), f"the error must name the minimum {floor:,}: {error}"
        return
    for call in (lambda: space.check_budget(budget), lambda: space.project(np.zeros(space.n_decisions), budget),
                 lambda: space.sample(np.random.default_rng(0), budget)):
        try:
            call()
        except BudgetError as error:
            assert f"{space.minimum_cost():,}" in str(error), f"the error must name the minimum {space.minimum_cost():,}: {error}"
        else:
            raise AssertionError(f"a budget of {capacity:,} below the minimum {space.minimum_cost():,} was accepted")


def raw_decisions(kind: str, space: SearchSpace, rng: np.random.Generator) -> np.ndarray:
    """A raw decision vector of one of :data:`RAW_KINDS`."""
    n, grid = space.n_decisions, space.grid
    if kind == "uniform":
        return rng.uniform(0, 2 * space.d_max + 1, n)
    if kind == "huge":
        return rng.uniform(0, 1e12, n)
    if kind == "tiny":
        return rng.uniform(0, 1e-9, n)
    if kind == "zeros":
        return np.zeros(n)
    if kind == "on_grid":
        return grid[rng.integers(0, len(grid), n)].astype(np.float64)
    if kind == "integers":
        return rng.integers(0, space.d_max + 3, n).astype(np.float64)
    if kind == "one_hot":
        raw = np.zeros(n)
        raw[rng.integers(0, n)] = 1.0
        return raw
    raise ValueError(f"unknown raw kind {kind!r}")


# -- the suite -------------------------------------------------------------------------------------
def check_search_space(
    factory: SpaceFactory,
    *,
    options: Callable[[Layout], st.SearchStrategy[dict[str, Any]]] | None = None,
    max_examples: int = 300,
    budgets_per_example: int = 3,
    max_fields: int = 6,
    max_rows: int = 120,
    hypothesis_settings: Mapping[str, Any] | None = None,
    precisions: bool = True,
) -> None:
    """Run the conformance suite on the spaces ``factory`` builds; raises on the first failure.

    Args:
        factory: builds a space: ``factory(tables, frequencies, d_min, d_max, **options)``
            (a space class is one).
        options: draws the factory's keyword options for a layout (none by default).
        max_examples: hypothesis examples; each checks ``budgets_per_example`` budgets,
            each with several raw vectors, plain and monotone.
        budgets_per_example: budgets tried per drawn space.
        max_fields: most fields a layout has.
        max_rows: most rows a field has.
        hypothesis_settings: extra :func:`hypothesis.settings` arguments (``derandomize``...).
        precisions: also search precisions under byte budgets (:func:`check_precisions`)
            in every example, with a drawn list of precisions.
    """
    config = {
        "max_examples": max_examples,
        "deadline": None,
        "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
        **dict(hypothesis_settings or {}),
    }
    shares = st.one_of(st.floats(-0.2, 1.2), st.sampled_from([0.0, 1.0, 0.5, -0.01, 0.999]))

    @settings(**config)
    @given(data=st.data())
    def conforms(data: st.DataObject) -> None:
        layout = data.draw(layouts(max_fields=max_fields, max_rows=max_rows), label="layout")
        options_drawn = data.draw(options(layout), label="options") if options is not None else {}
        space = factory(layout.tables, layout.frequencies, layout.d_min, layout.d_max, **options_drawn)
        seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
        rng = np.random.default_rng(seed)
        check_structure(space)
        on_grid = space.grid[rng.integers(0, len(space.grid), space.n_decisions)]
        check_allocation_round_trip(space, on_grid)
        check_candidate_costs(space, on_grid, int(rng.integers(0, space.n_decisions)))
        lowest, highest = space.minimum_cost(), space.maximum_cost()
        for share in data.draw(st.lists(shares, min_size=budgets_per_example, max_size=budgets_per_example), label="shares"):
            capacity = max(0, int(np.floor(lowest + share * (highest - lowest))))
            if share >= 0.999 and data.draw(st.booleans(), label="exact top"):
                capacity = max(0, highest - (share < 1.0))
            if capacity < lowest:
                check_infeasible(space, capacity)
                continue
            budget = Budget.from_params(capacity, space.rows(), space.d_max, space.d_min)
            for kind in data.draw(st.lists(st.sampled_from(RAW_KINDS), min_size=2, max_size=3, unique=True), label="raw"):
                raw = raw_decisions(kind, space, rng)
                check_projection(space, raw, budget)
                check_projection(space, raw, budget, monotone=True)
            sample_seed = int(rng.integers(0, 2**32))
            first = space.sample(np.random.default_rng(sample_seed), budget)
            assert np.array_equal(first, space.sample(np.random.default_rng(sample_seed), budget)), "sample is not deterministic"
            assert space.cost(first) <= capacity
            check_allocation_round_trip(space, first)
            check_errors(space, budget, rng)
        if precisions:
            chosen = data.draw(st.lists(st.sampled_from(list(PRECISIONS)), min_size=1, max_size=5, unique=True),
                               label="precisions")
            space = factory(layout.tables, layout.frequencies, layout.d_min, layout.d_max, **options_drawn)
            space.with_precisions(chosen)
            for share in data.draw(st.lists(shares, min_size=budgets_per_example, max_size=budgets_per_example),
                                   label="byte shares"):
                kinds = data.draw(st.lists(st.sampled_from(RAW_KINDS), min_size=2, max_size=3, unique=True), label="raw")
                check_precisions(space, share, rng, kinds, data.draw(st.sampled_from(SCALES), label="scales"))

    conforms()
