"""The hard budget, property-tested: no allocation from any path exceeds it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controllers import CONTROLLERS
from nas.core import Allocation, Budget, BudgetError, table_specs
from nas.core.projection import project_linear
from nas.core.accounting import export_bytes
from search_spaces import PerFeatureSpace

FAST = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def layouts(draw: st.DrawFn) -> tuple[dict[str, int], dict[str, np.ndarray], int, int]:
    """Tables (1-4, 1-300 rows), power-law-ish frequencies with zeros, and d_min <= d_max."""
    n_tables = draw(st.integers(1, 4))
    rows = {f"t{i}": draw(st.integers(1, 300)) for i in range(n_tables)}
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    frequencies = {name: (rng.zipf(1.7, n) - 1).astype(np.int64) for name, n in rows.items()}
    d_max = draw(st.integers(1, 96))
    d_min = draw(st.integers(0, d_max))
    return rows, frequencies, d_min, d_max


def budget_between(rows: dict[str, int], d_min: int, d_max: int, share: float) -> Budget:
    """A feasible parameter budget ``share`` of the way from the minimum to the full tables (and beyond)."""
    total = sum(rows.values())
    low, high = total * d_min, total * d_max
    return Budget.from_params(int(low + share * (high - low)), rows, d_max, d_min)


@FAST
@given(layouts(), st.floats(0.0, 1.2), st.sampled_from(["equal", "random", "frequency"]), st.integers(0, 2**16))
def test_every_controller_proposal_is_within_budget_and_bounds(layout, share, controller, seed):
    rows, frequencies, d_min, d_max = layout
    budget = budget_between(rows, d_min, d_max, share)
    space = PerFeatureSpace(table_specs(rows), frequencies, d_min, d_max)
    proposals = CONTROLLERS.get(controller)(space, budget, seed=seed).ask(2)
    for decisions in proposals:
        allocation = space.to_allocation(decisions)
        allocation.validate(budget)  # raises on any overshoot or bound violation
        assert allocation.cost <= budget.max_values
        # Spends the budget whenever that is possible at all.
        assert allocation.cost >= min(0.99 * budget.max_values, budget.full_values)


@FAST
@given(layouts(), st.floats(0.0, 1.2), st.integers(0, 2**16), st.sampled_from(["uniform", "huge", "zeros", "tiny"]))
def test_project_is_feasible_idempotent_and_fills(layout, share, seed, kind):
    rows, frequencies, d_min, d_max = layout
    budget = budget_between(rows, d_min, d_max, share)
    space = PerFeatureSpace(table_specs(rows), frequencies, d_min, d_max)
    rng = np.random.default_rng(seed)
    n = space.n_decisions
    raw = {
        "uniform": rng.uniform(0, 2 * d_max, n),
        "huge": rng.uniform(0, 1e9, n),
        "zeros": np.zeros(n),
        "tiny": rng.uniform(0, 1e-6, n),
    }[kind]
    projected = space.project(raw, budget)
    assert projected.dtype == np.int64
    assert np.isin(projected, space.grid).all()
    assert space.cost(projected) <= budget.max_values
    assert space.cost(projected) >= min(0.99 * budget.max_values, budget.full_values)
    assert np.array_equal(space.project(projected, budget), projected)


@FAST
@given(
    st.lists(st.integers(1, 50), min_size=1, max_size=40),
    st.lists(st.integers(0, 64), min_size=1, max_size=12, unique=True),
    st.floats(0, 1),
    st.integers(0, 2**16),
)
def test_linear_projection_with_weights_and_sparse_grids(weights, grid, share, seed):
    """Coarse grids and weighted decisions (the shape of block and per-field spaces) stay feasible."""
    weights = np.asarray(weights, dtype=np.int64)
    grid = np.sort(np.asarray(grid, dtype=np.int64))
    low, high = int(weights.sum() * grid[0]), int(weights.sum() * grid[-1])
    capacity = int(low + share * (high - low))
    raw = np.random.default_rng(seed).uniform(0, 80, len(weights))
    values = project_linear(raw, weights, grid, capacity)
    assert np.isin(values, grid).all()
    assert int(weights @ values) <= capacity
    # No single decision could still be raised one grid step: the top-up is maximal.
    index = np.searchsorted(grid, values)
    raisable = index < len(grid) - 1
    step = np.where(raisable, weights * (grid[np.minimum(index + 1, len(grid) - 1)] - values), np.inf)
    assert (step > capacity - int(weights @ values)).all()


@FAST
@given(layouts(), st.floats(0.0, 0.999))
def test_infeasible_budgets_fail_at_construction_naming_the_minimum(layout, shortfall):
    rows, _, d_min, d_max = layout
    total = sum(rows.values())
    minimum = total * d_min
    if minimum == 0:
        return
    too_small = int(minimum * shortfall)
    with pytest.raises(BudgetError, match=f"{minimum:,}"):
        Budget.from_params(too_small, rows, d_max, d_min)
    # The same holds in bytes: the message names the smallest feasible byte count.
    smallest = export_bytes(minimum, rows, d_max)
    with pytest.raises(BudgetError, match=f"{smallest:,} bytes"):
        Budget.from_bytes(smallest - 1, rows, d_max, d_min)
    Budget.from_bytes(smallest, rows, d_max, d_min)  # exactly the minimum is feasible


@FAST
@given(layouts(), st.floats(0.0, 0.9999))
def test_sparsity_budgets_keep_at_most_the_stated_share(layout, sparsity):
    rows, _, d_min, d_max = layout
    total = sum(rows.values())
    try:
        budget = Budget.from_sparsity(sparsity, rows, d_max, d_min)
    except BudgetError as error:
        assert (1 - sparsity) * total * d_max < total * d_min + 1e-6
        assert "smallest feasible budget is sparsity" in str(error)
        return
    assert budget.max_values <= (1 - sparsity) * total * d_max + 1e-6
    assert budget.max_values >= budget.min_values


def test_sparsity_budget_worked_example():
    budget = Budget.from_sparsity(0.9, {"user": 100, "item": 200}, d_max=64)
    assert budget.max_values == 1920  # 10 % of 300 × 64
    with pytest.raises(BudgetError, match=r"sparsity 0\.984375 \(300 values\)"):
        Budget.from_sparsity(0.99, {"user": 100, "item": 200}, d_max=64)


def test_budget_round_trips_through_json_and_parses_units():
    rows = {"user": 1000, "item": 2000}
    for text, kind in [("0.8", "sparsity"), ("50000", "params"), ("200KiB", "bytes"), ("1MB", "bytes")]:
        budget = Budget.parse(text, rows, 64)
        assert budget.kind == kind
        assert Budget.from_dict(budget.to_dict()) == budget
    with pytest.raises(BudgetError, match="cannot read the budget"):
        Budget.parse("lots", rows, 64)


def test_allocation_validation_names_the_overshoot():
    rows = {"user": 3, "item": 2}
    budget = Budget.from_params(10, rows, 8)
    with pytest.raises(BudgetError, match="2 over the budget"):
        Allocation({"user": np.array([3, 3, 2]), "item": np.array([2, 2])}).validate(budget)
    with pytest.raises(BudgetError, match="outside"):
        Allocation({"user": np.array([0, 3, 2]), "item": np.array([2, 2])}).validate(budget)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -1.0])
def test_project_rejects_nan_infinite_and_negative_decisions(bad):
    rows = {"user": 4, "item": 4}
    space = PerFeatureSpace(table_specs(rows), {}, 1, 8)
    decisions = np.full(8, 3.0)
    decisions[5] = bad
    with pytest.raises(ValueError, match="decision 5"):
        space.project(decisions, Budget.from_params(30, rows, 8))


@FAST
@given(layouts(), st.floats(0.0, 1.0))
def test_frequency_rule_never_gives_a_rarer_row_more_dimensions(layout, share):
    rows, frequencies, d_min, d_max = layout
    budget = budget_between(rows, d_min, d_max, share)
    space = PerFeatureSpace(table_specs(rows), frequencies, d_min, d_max)
    allocation = space.to_allocation(CONTROLLERS.get("frequency")(space, budget).ask(1)[0])
    for name, dims in allocation.row_dims.items():
        # Sorted by frequency (ties by size), sizes must never fall.
        order = np.lexsort((dims, frequencies[name]))
        assert (np.diff(dims[order]) >= 0).all()


@settings(max_examples=200, deadline=None)
@given(layouts(), st.floats(0.0, 1.0), st.integers(0, 2**16))
def test_same_seed_gives_the_same_allocation(layout, share, seed):
    rows, frequencies, d_min, d_max = layout
    budget = budget_between(rows, d_min, d_max, share)
    space = PerFeatureSpace(table_specs(rows), frequencies, d_min, d_max)
    first = CONTROLLERS.get("random")(space, budget, seed=seed).ask(3)
    second = CONTROLLERS.get("random")(space, budget, seed=seed).ask(3)
    assert np.array_equal(first, second)


@pytest.mark.parametrize("rows", [1, 7, 1_000_000, 70_839, 123_456_789])
@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.9, 0.95, 0.3])
def test_sparsity_is_exact_on_large_tables(rows, sparsity):
    """1 - 0.9 in floating point is 0.0999...; the budget must not lose a value to it."""
    from fractions import Fraction

    budget = Budget.from_sparsity(sparsity, {"t": rows}, 64, d_min=0)
    assert budget.max_values == int(rows * 64 * (1 - Fraction(str(sparsity))))


def test_budget_text_that_is_neither_a_sparsity_nor_a_count_is_refused():
    rows = {"user": 10, "item": 10}
    for text in ("1.0", "2.5", "1e5", "inf", "nan", "infMB"):
        with pytest.raises(BudgetError):
            Budget.parse(text, rows, 8)
    assert Budget.parse("0.9999999", rows, 64, d_min=0).describe() == "sparsity 0.9999999"


def test_tell_refuses_decisions_off_the_grid_or_over_the_budget():
    rows = {"user": 4, "item": 4}
    space = PerFeatureSpace(table_specs(rows), {}, 1, 8, grid=[1, 2, 4, 8])
    budget = Budget.from_params(20, rows, 8)
    controller = CONTROLLERS.get("random")(space, budget, seed=0)
    good = controller.ask(1)
    controller.tell(good, [0.5])
    with pytest.raises(ValueError, match="grid values"):
        controller.tell(np.full((1, 8), 3), [0.6])
    with pytest.raises(BudgetError, match="over the budget"):
        controller.tell(np.full((1, 8), 4), [0.7])
    assert np.array_equal(controller.recommend(), good[0])


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 10**40))
def test_parameter_counts_parse_exactly_however_large(n):
    """A count never passes through a float: 10**30 stays 10**30, not 1000000000000000019884624838656."""
    import json

    rows = {"user": 10, "item": 20}
    budget = Budget.parse(str(n), rows, 8, d_min=0)
    assert budget.kind == "params" and budget.max_values == n and budget.amount == n and type(budget.amount) is int
    assert budget.describe() == f"{n:,} parameters"
    assert budget.usable_values == min(n, budget.full_values)  # a huge count just buys the full tables
    again = Budget.from_dict(json.loads(json.dumps(budget.to_dict())))
    assert again == budget and again.amount == n and again.max_values == n


@settings(max_examples=300, deadline=None)
@given(st.integers(10**4, 10**30), st.text("0123456789", max_size=6),
       st.sampled_from(["B", "KB", "MB", "GB", "KiB", "MiB", "GiB", "kb", "mib"]))
def test_byte_counts_with_units_parse_exactly(whole, fraction, unit):
    """``2MB`` is 2 * 10**6 bytes and ``1.5MB`` 1,500,000, exactly; a fraction of a byte is rounded down."""
    import json
    import math
    from fractions import Fraction

    from nas.core.accounting import fixed_bytes

    rows = {"user": 10, "item": 20}
    scale = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}[unit.lower()]
    number = f"{whole}.{fraction}" if fraction else str(whole)
    expected = math.floor(Fraction(number) * scale)
    budget = Budget.parse(number + unit, rows, 8, d_min=0)
    assert budget.kind == "bytes" and budget.amount == expected and type(budget.amount) is int
    assert budget.max_values == (expected - fixed_bytes(rows, 8)) // 4
    assert budget.describe() == f"{expected:,} bytes"
    assert Budget.from_dict(json.loads(json.dumps(budget.to_dict()))) == budget


def test_byte_units_worked_examples_and_zero():
    rows = {"user": 1000, "item": 2000}
    assert Budget.parse("2MB", rows, 64).amount == 2_000_000
    assert Budget.parse("1.5MB", rows, 64).amount == 1_500_000
    assert Budget.parse("0.5MiB", rows, 64).amount == 2**19
    assert Budget.parse("1000000000000000000000000000000", rows, 64).describe() == \
        "1,000,000,000,000,000,000,000,000,000,000 parameters"
    zero = Budget.parse("0", rows, 64)  # below 1: a sparsity, keeping everything
    assert zero.kind == "sparsity" and zero.max_values == zero.full_values
    for text in ("1/2MB", "1e400xMB", "-1MB", "0x10"):
        with pytest.raises(BudgetError):
            Budget.parse(text, rows, 64)


def test_budget_dicts_written_with_float_counts_still_read():
    """metrics.json and checkpoints written before counts were exact hold ``"amount": 1000000.0``."""
    rows = {"user": 100, "item": 200}
    old = {"max_values": 5000, "rows": rows, "d_min": 1, "d_max": 64, "kind": "params", "amount": 5000.0, "dtype": "float32"}
    budget = Budget.from_dict(old)
    assert budget == Budget.from_params(5000, rows, 64) and type(budget.amount) is int
    assert budget.describe() == "5,000 parameters"
    old_bytes = {**old, "max_values": (100_000 - 4096 - 1024 - 300) // 4, "kind": "bytes", "amount": 100000.0}
    assert Budget.from_dict(old_bytes) == Budget.parse("100KB", rows, 64) and Budget.from_dict(old_bytes).amount == 100_000
    old_sparsity = Budget.from_dict({**old, "max_values": 1920, "kind": "sparsity", "amount": 0.9})
    assert old_sparsity == Budget.from_sparsity(0.9, rows, 64) and old_sparsity.describe() == "sparsity 0.9"
