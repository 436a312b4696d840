"""Every built-in space passes the shared conformance suite, and every baseline controller works on every space."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from controllers import CONTROLLERS
from nas.core import Budget
from nas.core.projection import check_decisions
from nas.testing import BUILTIN_OPTIONS, check_search_space, fill_rule_violation, layouts, synthetic_fields
from search_spaces import SPACES, PerFieldSpace

SPACE_NAMES = ("per-feature", "per-field", "block")

#: Each example checks three budgets, each with two or three raw vectors, plain and monotone, and as
#: many byte budgets with a drawn list of precisions.
EXAMPLES = 400


@pytest.mark.parametrize("name", SPACE_NAMES)
def test_builtin_space_conforms(name):
    check_search_space(SPACES.get(name), options=BUILTIN_OPTIONS[name], max_examples=EXAMPLES)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.sampled_from(SPACE_NAMES), st.sampled_from(["equal", "random", "frequency"]), st.floats(0.0, 1.2))
def test_baseline_controllers_stay_within_budget_on_every_space(data, name, controller, share):
    layout = data.draw(layouts(max_fields=4, max_rows=80), label="layout")
    options = data.draw(BUILTIN_OPTIONS[name](layout), label="options")
    space = SPACES.get(name)(layout.tables, layout.frequencies, layout.d_min, layout.d_max, **options)
    low, high = space.minimum_cost(), space.maximum_cost()
    budget = Budget.from_params(int(low + share * (high - low)), space.rows(), space.d_max, space.d_min)
    proposals = CONTROLLERS.get(controller)(space, budget, seed=data.draw(st.integers(0, 2**16), label="seed")).ask(2)
    assert proposals.shape == (2, space.n_decisions)
    for decisions in proposals:
        allocation = space.to_allocation(decisions)
        allocation.validate(budget)
        assert fill_rule_violation(space, decisions, budget) is None


def test_frequency_controller_gives_frequent_groups_more_room_in_the_block_space():
    fields = synthetic_fields([2000, 300], exponent=1.2, seed=2)
    space = SPACES.get("block")(fields.tables, fields.frequencies, 1, 64, groups=8, blocks=8)
    budget = Budget.from_sparsity(0.8, fields.rows, 64)
    decisions = CONTROLLERS.get("frequency")(space, budget).ask(1)[0]
    table = space.context()["table"]
    for t in range(len(space.tables)):
        assert np.all(np.diff(decisions[table == t]) <= 0)  # groups run from the most frequent
    assert space.cost(decisions) <= budget.max_values


class _Overspending(PerFieldSpace):
    """A broken third-party space: its projection ignores the budget."""

    def project(self, decisions, budget, *, fill=0.99, monotone=False):  # noqa: ANN001, ANN201
        self.check_budget(budget)
        check_decisions(decisions, self.n_decisions)
        return np.full(self.n_decisions, self.grid[-1], dtype=np.int64)


def test_the_suite_catches_a_space_that_breaks_the_budget():
    quick = {"phases": [Phase.generate], "database": None}
    with pytest.raises(AssertionError, match="over the budget|exceeds the budget"):
        check_search_space(_Overspending, max_examples=50, hypothesis_settings=quick, precisions=False)


def test_synthetic_fields_are_reproducible_power_laws():
    first = synthetic_fields([1000, 50, 3], exponent=[1.3, 0.7, 1.0], interactions=20_000, seed=7)
    again = synthetic_fields([1000, 50, 3], exponent=[1.3, 0.7, 1.0], interactions=20_000, seed=7)
    assert first.rows == {"f0": 1000, "f1": 50, "f2": 3} and first.total_rows == 1053
    for name, counts in first.frequencies.items():
        assert np.array_equal(counts, again.frequencies[name]) and counts.sum() == 20_000
    top = np.sort(first.frequencies["f0"])[::-1]
    assert top[0] > 20 * max(top[500], 1)  # a long tail: the head row dwarfs the median row
