"""Spaces searching precision beside size: what the conformance suite does not pin down by itself."""

from __future__ import annotations

import numpy as np
import pytest

from nas.core import Budget
from nas.core.accounting import precision_fixed_bytes
from nas.core.errors import ConfigError
from nas.testing import synthetic_fields
from search_spaces import SPACES

PRECISIONS = ("fp32", "fp16", "int8", "int4")


@pytest.fixture()
def fields():
    return synthetic_fields([400, 250], exponent=1.1, interactions=20_000, seed=3)


def byte_budget(fields, share: float) -> Budget:
    """A byte budget of ``share`` of the fp32 tables (d_max 16), precisions searched."""
    nbytes = precision_fixed_bytes(fields.rows, 1, 16, PRECISIONS) + int(share * fields.total_rows * 16 * 4)
    return Budget.from_bytes(nbytes, fields.rows, 16, 1, precisions=PRECISIONS)


def test_where_the_chosen_precisions_cannot_fit_the_rarest_rows_move_to_the_cheapest(fields):
    space = SPACES.get("per-feature")(fields.tables, fields.frequencies, 1, 16).with_precisions(PRECISIONS)
    budget = byte_budget(fields, 0.04)  # 20 bits a row: fp32 everywhere cannot fit at size 1
    asked = space.join(np.full(space.n_decisions, 16), np.zeros(space.n_decisions))
    sizes, precision = space.split(space.project(asked, budget))
    frequency = space.context()["log_frequency"]
    moved = precision != 0
    assert moved.any() and not moved.all()
    assert set(precision[moved].tolist()) == {PRECISIONS.index("fp16")}  # 16 bits a row at size 1, int4's scale makes 20
    assert frequency[moved].max() <= frequency[~moved].min()  # only rarer rows than every row kept at fp32
    assert space.cost_in(space.join(sizes, precision), budget) <= budget.max_bits


def test_a_value_budget_leaves_the_precisions_as_asked_and_the_sizes_as_without_them(fields):
    plain = SPACES.get("block")(fields.tables, fields.frequencies, 1, 16, groups=6, blocks=4)
    searched = SPACES.get("block")(fields.tables, fields.frequencies, 1, 16, groups=6, blocks=4).with_precisions(PRECISIONS)
    budget = Budget.from_sparsity(0.8, fields.rows, 16, 1, precisions=PRECISIONS)
    rng = np.random.default_rng(0)
    sizes, precision = rng.uniform(0, 20, plain.n_decisions), rng.integers(0, 4, plain.n_decisions)
    projected = searched.project(searched.join(sizes, precision), budget)
    expected = plain.project(sizes, Budget.from_sparsity(0.8, fields.rows, 16, 1))
    assert np.array_equal(searched.split(projected)[0], expected)
    assert np.array_equal(searched.split(projected)[1], precision)


def test_narrower_precisions_buy_more_dimensions_at_the_same_bytes(fields):
    space = SPACES.get("per-field")(fields.tables, fields.frequencies, 1, 16).with_precisions(PRECISIONS)
    budget = byte_budget(fields, 0.25)
    means = []
    for k in range(len(PRECISIONS)):
        asked = space.join(np.full(space.n_decisions, 16), np.full(space.n_decisions, k))
        means.append(space.allocation(space.project(asked, budget)).summary()["f0"]["mean"])
    assert means == sorted(means) and means[0] < means[-1]  # fp32 < fp16 < int8 < int4 in dimensions a row


def test_a_budget_and_a_space_with_other_precisions_are_refused(fields):
    space = SPACES.get("per-field")(fields.tables, fields.frequencies, 1, 16).with_precisions(["fp32", "int8"])
    with pytest.raises(ConfigError, match=r"precisions \(fp32, fp16, int8, int4\) are not the space's \(fp32, int8\)"):
        space.project(np.zeros(space.vector_length), byte_budget(fields, 0.5))
    with pytest.raises(ConfigError, match=r"precisions \(none\) are not the space's"):
        space.project(np.zeros(space.vector_length), Budget.from_sparsity(0.5, fields.rows, 16, 1))
    with pytest.raises(ValueError, match="has 4 values, got shape"):
        space.project(np.zeros(2), Budget.from_sparsity(0.5, fields.rows, 16, 1, precisions=["int8", "fp32"]))
