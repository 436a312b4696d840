"""The rules' own precision: the one at which equal sizes keep the most dimensions, the widest of those."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controllers.baselines import fullest_precision
from nas.core.budget import Budget
from nas.core.errors import BudgetError
from nas.core.precision import DEFAULT_PRECISIONS, PRECISIONS

GOWALLA = {"user": 29858, "item": 40981}  # float32 tables of 18,134,784 bytes at d_max 64


@pytest.mark.parametrize("share, chosen", [
    (0.5, "int8"),   # a row of 1,015 bits: fp32 31, fp16 63, int8 and int4 64 dimensions
    (0.2, "int4"),   # 401 bits: int8 48, int4 64
    (0.05, "int4"),  # 94 bits: fp32 2, int8 9, int4 19
])
def test_under_a_byte_budget_the_rules_take_the_fullest_then_widest_precision(share, chosen):
    budget = Budget.from_bytes(int(18134784 * share), GOWALLA, 64, 1, precisions=DEFAULT_PRECISIONS)
    assert fullest_precision(DEFAULT_PRECISIONS, budget) == chosen


def test_a_budget_of_values_prices_every_precision_alike_so_the_widest_wins():
    budget = Budget.from_sparsity(0.9, GOWALLA, 64, 1, precisions=DEFAULT_PRECISIONS)
    assert fullest_precision(DEFAULT_PRECISIONS, budget) == "fp32"
    assert fullest_precision(("int8", "int4"), budget) == "int8"


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(list(PRECISIONS)), min_size=1, max_size=5, unique=True),
    st.integers(1, 3000), st.integers(1, 3000), st.integers(1, 96), st.integers(0, 4), st.integers(1, 400_000),
)
def test_no_precision_keeps_more_dimensions_and_none_wider_keeps_as_many(names, users, items, d_max, d_min, nbytes):
    precisions = tuple(name for name in PRECISIONS if name in names)
    d_min = min(d_min, d_max)
    try:
        budget = Budget.from_bytes(nbytes, {"user": users, "item": items}, d_max, d_min, precisions=precisions)
    except BudgetError:
        return
    rows = users + items

    def dims(name: str) -> int:
        per_value, per_row = budget.row_cost(name)
        return min(d_max, (budget.max_cost - rows * per_row) // (rows * per_value))

    chosen = fullest_precision(precisions, budget)
    assert all(dims(chosen) >= dims(other) for other in precisions)
    wider = precisions[: precisions.index(chosen)]
    assert all(dims(other) < dims(chosen) for other in wider)
