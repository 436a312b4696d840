"""Each built-in space on toy cases where the right answer is known."""

from __future__ import annotations


import numpy as np
import pytest

from nas.core import Budget, BudgetError, ConfigError, table_specs
from nas.testing import synthetic_fields
from search_spaces import SPACES, BlockSpace, PerFeatureSpace, PerFieldSpace
from search_spaces.block import group_boundaries

# Ten rows; by frequency (ties by row id): rows 1, 3 (9), 7 (7), 0 (5), 9 (4), 5, 6 (3), 8 (2), 2 (1), 4 (0).
TOY = np.array([5, 9, 1, 9, 0, 3, 3, 7, 2, 4])
TOY_SORTED = [1, 3, 7, 0, 9, 5, 6, 8, 2, 4]


def toy_block(**options) -> BlockSpace:
    return BlockSpace(table_specs({"t": 10}), {"t": TOY}, 1, 8, **options)


def test_registry_names_the_three_spaces_and_builds_them_with_defaults():
    assert {"per-feature", "per-field", "block"} <= set(SPACES.names())
    fields = synthetic_fields([30, 7], seed=1)
    for name in ("per-feature", "per-field", "block"):
        space = SPACES.get(name)(fields.tables, fields.frequencies, 1, 64)
        assert space.name == name and space.n_decisions >= 1 and name in space.describe()


# -- per-field ------------------------------------------------------------------------------------
def test_per_field_weights_are_rows_and_every_row_shares_its_field_size():
    fields = synthetic_fields({"user": 100, "item": 300, "city": 5}, seed=3)
    space = PerFieldSpace(fields.tables, fields.frequencies, 1, 64)
    assert space.weights.tolist() == [100, 300, 5]
    allocation = space.to_allocation(np.array([7, 6, 64]))
    assert [d.tolist() for d in allocation.row_dims.values()] == [[7] * 100, [6] * 300, [64] * 5]
    assert allocation.cost == 700 + 1800 + 320 == space.cost(np.array([7, 6, 64]))
    context = space.context()
    assert context["table"].tolist() == [0, 1, 2] and context["rows"].tolist() == [100, 300, 5]
    assert context["mass_share"] == pytest.approx(np.full(3, 1 / 3))  # every interaction touches every field
    assert context["log_frequency"][2] == pytest.approx(np.log1p(fields.frequencies["city"].mean()))


def test_per_field_cf_budget_leaves_only_the_gap_no_field_can_fill():
    rows = {"user": 100, "item": 300}
    space = PerFieldSpace(table_specs(rows), {}, 1, 64)
    budget = Budget.from_params(2560, rows, 64)
    # λ = 6.4 for both; floors cost 2400; user rises (100 ≤ 160), item cannot (300 > 60).
    assert space.project(np.ones(2), budget).tolist() == [7, 6]


def test_pow2_and_explicit_grids():
    tables = table_specs({"a": 4})
    assert PerFieldSpace(tables, {}, 3, 40, grid="pow2").grid.tolist() == [3, 4, 8, 16, 32, 40]
    assert PerFieldSpace(tables, {}, 0, 64, grid="pow2").grid.tolist() == [0, 1, 2, 4, 8, 16, 32, 64]
    assert PerFeatureSpace(tables, {}, 5, 5, grid="pow2").grid.tolist() == [5]
    assert PerFieldSpace(tables, {}, 1, 16, grid=[16, 4, 4, 2]).grid.tolist() == [2, 4, 16]
    assert PerFieldSpace(tables, {}, 2, 5).grid.tolist() == [2, 3, 4, 5]
    with pytest.raises(ConfigError, match=r"inside|lie in \[d_min=2, d_max=8\]"):
        PerFieldSpace(tables, {}, 2, 8, grid=[1, 4])
    with pytest.raises(ConfigError, match="unknown grid 'pow3'"):
        PerFeatureSpace(tables, {}, 1, 8, grid="pow3")
    with pytest.raises(ConfigError, match="at least one size"):
        PerFeatureSpace(tables, {}, 1, 8, grid=[])


def test_from_allocation_snaps_to_the_nearest_grid_value():
    space = PerFieldSpace(table_specs({"a": 2, "b": 2}), {}, 1, 16, grid="pow2")
    allocation = space.to_allocation(np.array([4, 16]))
    assert space.from_allocation(allocation).tolist() == [4, 16]
    mixed = PerFeatureSpace(table_specs({"a": 4}), {}, 1, 16, grid="pow2")
    assert mixed.from_allocation(mixed.to_allocation(np.array([3, 5, 6, 12]))).tolist() == [2, 4, 4, 8]


# -- block G×B --------------------------------------------------------------------------------------
def test_block_grouping_by_count_on_a_toy_table():
    space = toy_block(groups=3, blocks=4)
    assert space.sorted_rows()["t"].tolist() == TOY_SORTED
    assert space.boundaries()["t"].tolist() == [0, 4, 7, 10]
    groups = space.row_groups()["t"]
    assert [sorted(np.flatnonzero(groups == g).tolist()) for g in range(3)] == [[0, 1, 3, 7], [5, 6, 9], [2, 4, 8]]
    context = space.context()
    assert context["group_rows"].tolist() == [4, 3, 3] == space.weights.tolist()
    assert context["frequency_max"].tolist() == [9, 4, 2] and context["frequency_min"].tolist() == [5, 3, 0]
    assert context["mass_share"] == pytest.approx([30 / 43, 10 / 43, 3 / 43])
    assert context["log_frequency"] == pytest.approx(np.log1p([7.5, 10 / 3, 1.0]))
    assert context["group"].tolist() == [0, 1, 2] and context["table"].tolist() == [0, 0, 0]


def test_block_grouping_by_mass_on_a_toy_table():
    space = toy_block(groups=3, blocks=4, grouping="mass")
    # Cumulative interactions along the order: 9, 18, 25, 30, ... of 43; shares of 43/3 end groups at 2 and 4 rows.
    assert space.boundaries()["t"].tolist() == [0, 2, 4, 10]
    assert space.context()["mass_share"] == pytest.approx([18 / 43, 12 / 43, 13 / 43])


def test_mass_groups_are_never_empty_even_when_one_row_holds_several_shares():
    assert group_boundaries(np.array([100, 1, 1, 1, 1]), 3, "mass").tolist() == [0, 1, 2, 5]
    assert group_boundaries(np.array([40, 1, 1, 1]), 4, "mass").tolist() == [0, 1, 2, 3, 4]
    assert group_boundaries(np.zeros(5, dtype=np.int64), 2, "mass").tolist() == [0, 3, 5]  # no interactions: by count
    assert group_boundaries(np.array([6, 3, 2, 1]), 2, "mass").tolist() == [0, 1, 4]


def test_block_with_more_groups_than_rows_uses_one_group_per_row():
    space = BlockSpace(table_specs({"small": 2, "big": 50}), {}, 1, 8, groups=5, blocks=2)
    assert space.n_decisions == 2 + 5
    assert space.boundaries()["small"].tolist() == [0, 1, 2]
    assert (space.weights >= 1).all() and space.weights.sum() == 52


def test_block_grid_is_the_d_min_floor_then_whole_blocks():
    assert toy_block(blocks=4).grid.tolist() == [1, 2, 4, 6, 8]
    assert BlockSpace(table_specs({"t": 3}), {}, 3, 16, blocks=4).grid.tolist() == [3, 4, 8, 12, 16]
    assert BlockSpace(table_specs({"t": 3}), {}, 4, 16, blocks=4).grid.tolist() == [4, 8, 12, 16]
    assert BlockSpace(table_specs({"t": 3}), {}, 0, 16, blocks=4).grid.tolist() == [0, 4, 8, 12, 16]
    assert BlockSpace(table_specs({"t": 3}), {}, 1, 16, blocks=1).grid.tolist() == [1, 16]
    space = BlockSpace(table_specs({"t": 10}), {}, 3, 16, blocks=4)
    assert space.blocks_kept(np.array([3, 4, 16])).tolist() == [0, 1, 4]
    # A budget of a little more than rows × d_min is feasible: the tail keeps the floor.
    values = space.project(np.ones(space.n_decisions), Budget.from_params(35, {"t": 10}, 16, 3))
    assert space.cost(values) <= 35 and set(values.tolist()) <= {3, 4}
    with pytest.raises(BudgetError, match="30"):
        Budget.from_params(29, {"t": 10}, 16, 3)


def test_block_needs_d_max_divisible_by_b_and_picks_a_divisor_by_default():
    with pytest.raises(ConfigError, match=r"choose blocks among \[1, 2, 3, 4, 6, 12\]"):
        BlockSpace(table_specs({"t": 3}), {}, 1, 12, blocks=5)
    with pytest.raises(ConfigError, match="unknown grouping"):
        BlockSpace(table_specs({"t": 3}), {}, 1, 12, grouping="size")
    with pytest.raises(ConfigError, match="groups must be a positive integer"):
        BlockSpace(table_specs({"t": 3}), {}, 1, 12, groups=0)
    assert [BlockSpace(table_specs({"t": 3}), {}, 1, d).blocks for d in (64, 12, 10, 7)] == [8, 6, 5, 7]


def test_block_allocation_round_trip_and_cost():
    space = toy_block(groups=3, blocks=4)
    decisions = np.array([8, 4, 2])
    allocation = space.to_allocation(decisions)
    assert allocation.row_dims["t"][TOY_SORTED].tolist() == [8] * 4 + [4] * 3 + [2] * 3
    assert allocation.cost == 32 + 12 + 6 == space.cost(decisions)
    assert space.from_allocation(allocation).tolist() == decisions.tolist()


def test_block_groups_of_one_frequency_are_not_ordered_among_themselves():
    space = BlockSpace(table_specs({"t": 8}), {}, 1, 8, groups=4, blocks=8)  # no interactions: one level
    budget = Budget.from_params(36, {"t": 8}, 8)
    raw = np.array([1.0, 4.0, 1.0, 4.0])
    assert np.array_equal(space.project(raw, budget, monotone=True), space.project(raw, budget))
    assert space.frequency_order().n_levels == 1
    # With frequencies the same proposal is put in order: the most frequent group is the widest.
    toy = toy_block(groups=4, blocks=8)
    ordered = toy.project(raw, Budget.from_params(45, {"t": 10}, 8), monotone=True)
    assert np.all(np.diff(ordered) <= 0)


# -- per-feature -------------------------------------------------------------------------------------
def test_per_feature_monotone_keeps_frequent_rows_at_least_as_wide():
    fields = synthetic_fields([500, 80], exponent=[1.2, 0.8], seed=5)
    space = PerFeatureSpace(fields.tables, fields.frequencies, 1, 32)
    budget = Budget.from_sparsity(0.8, fields.rows, 32)
    values = space.project(np.random.default_rng(0).uniform(0, 32, space.n_decisions), budget, monotone=True)
    for name, dims in space.to_allocation(values).row_dims.items():
        frequency = fields.frequencies[name]
        rarer_wider = (frequency[:, None] > frequency[None, :]) & (dims[:, None] < dims[None, :])
        assert not rarer_wider.any()
    assert space.cost(values) >= 0.99 * budget.max_values


def test_per_feature_samples_and_projects_a_million_rows():
    """Correctness at scale; the time it takes is measured in benchmarks/bench_spaces.py."""
    fields = synthetic_fields({"user": 400_000, "item": 600_000}, exponent=[0.9, 1.1], interactions=5_000_000, seed=0)
    space = PerFeatureSpace(fields.tables, fields.frequencies, 1, 64)
    budget = Budget.from_sparsity(0.9, fields.rows, 64)
    rng = np.random.default_rng(0)
    raw = rng.uniform(0, 64, space.n_decisions)
    sampled = space.sample(rng, budget)
    assert space.cost(sampled) == budget.max_values
    values = space.project(raw, budget)
    assert space.cost(values) == budget.max_values  # a unit grid fills the budget exactly
