"""The shape search: both rules are its first proposals, the fitter is retrained beside its pick, it climbs towards the fittest shape, it resumes exactly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controllers import CONTROLLERS
from nas.core import Budget
from nas.core.errors import ConfigError
from nas.testing import synthetic_fields
from search_spaces import PerFeatureSpace


def _space_and_budget(sparsity: str = "0.8"):
    fields = synthetic_fields({"user": 300, "item": 500}, exponent=1.1, seed=0)
    space = PerFeatureSpace(fields.tables, fields.frequencies, 1, 32)
    return space, Budget.parse(sparsity, space.rows(), 32, 1)


def _with_precisions():
    """A per-feature space searching the default precisions under a 20 KB budget, and the precisions."""
    fields = synthetic_fields({"user": 300, "item": 500}, exponent=1.1, seed=0)
    precisions = ("fp32", "fp16", "int8", "int4")
    space = PerFeatureSpace(fields.tables, fields.frequencies, 1, 32).with_precisions(precisions)
    return space, Budget.parse("20KB", space.rows(), 32, 1, precisions=precisions), precisions


def _shape(space, budget, **options):
    return CONTROLLERS.get("shape")(space, budget, seed=0, **options)


def test_its_first_two_proposals_are_equal_sizes_and_the_frequency_rule():
    space, budget = _space_and_budget()
    rules = [CONTROLLERS.get(name)(space, budget, seed=0).ask(1)[0] for name in ("equal", "frequency")]
    shape = _shape(space, budget)
    first = shape.ask(2)
    np.testing.assert_array_equal(first[0], rules[0])
    np.testing.assert_array_equal(first[1], rules[1])
    assert shape.notes() == [{"alpha": 0.0, "tilt": 0.0}, {"alpha": 1.0, "tilt": 0.0}]


def test_a_steeper_alpha_gives_the_frequent_rows_more():
    space, budget = _space_and_budget("0.9")
    shape = _shape(space, budget)
    frequency = space.context()["log_frequency"]
    head, tail = frequency >= np.quantile(frequency, 0.99), frequency <= np.quantile(frequency, 0.5)
    sizes = {alpha: space.project(shape.direction(alpha, 0.0), budget) for alpha in (1.0, 3.0)}
    assert sizes[3.0][head].mean() > sizes[1.0][head].mean()
    assert sizes[3.0][tail].mean() <= sizes[1.0][tail].mean()


def test_a_positive_tilt_moves_budget_to_the_table_of_more_frequent_rows():
    space, budget = _space_and_budget()
    shape = _shape(space, budget)
    table, frequency = space.context()["table"], space.context()["log_frequency"]
    richer = int(np.argmax([frequency[table == t].mean() for t in (0, 1)]))
    spent = {tilt: space.project(shape.direction(1.0, tilt), budget) for tilt in (-1.0, 1.0)}
    assert spent[1.0][table == richer].sum() > spent[-1.0][table == richer].sum()


def test_after_the_design_it_refines_around_the_fittest_shape():
    """Fitness peaks at alpha 2.3, tilt 0: the design finds 2, the refinement moves closer."""
    space, budget = _space_and_budget()
    shape = _shape(space, budget, alphas=(0.0, 1.0, 2.0, 3.0), tilts=(0.0,))
    for _ in range(14):
        shape.ask(1)
        alpha, tilt = shape.notes()[0]["alpha"], shape.notes()[0]["tilt"]
        shape.tell(shape._last_asked, [-abs(alpha - 2.3) - abs(tilt)])
    best = max(shape.evaluated, key=lambda e: e[3])
    assert [e[:2] for e in shape.evaluated[:4]] == [(0.0, 0.0), (1.0, 0.0), (2.0, 0.0), (3.0, 0.0)]
    assert abs(best[0] - 2.3) < 0.2 and best[1] == 0.0


def test_with_precisions_it_measures_the_rule_at_each_then_shapes_the_fittest_precision():
    space, budget, precisions = _with_precisions()
    shape = _shape(space, budget)
    fitness = {"fp32": 0.1, "fp16": 0.3, "int8": 0.5, "int4": 0.4}  # int8 the fittest
    for _ in range(6):
        decisions = shape.ask(1)
        assert decisions.shape == (1, 2 * space.n_decisions)
        assert space.cost_in(decisions[0], budget) <= budget.max_bits
        note = shape.notes()[0]
        shape.tell(decisions, [fitness[note["precision"]] + 0.01 * note["alpha"]])
    told = [(a, t, precisions[k]) for a, t, k, _ in shape.evaluated]
    assert told[:4] == [(1.0, 0.0, p) for p in precisions]
    assert told[4:6] == [(0.0, 0.0, "int8"), (0.5, 0.0, "int8")]  # the design (1, 0) at int8 was measured already


def test_a_restored_state_proposes_what_the_original_would():
    space, budget = _space_and_budget()
    original = _shape(space, budget, alphas=(0.0, 1.0), tilts=(0.0,))
    for fitness in (0.1, 0.3, 0.2):
        decisions = original.ask(1)
        original.tell(decisions, [fitness])
    restored = _shape(space, budget, alphas=(0.0, 1.0), tilts=(0.0,))
    restored.load_state_dict(original.state_dict())
    np.testing.assert_array_equal(restored.ask(1), original.ask(1))
    assert restored.notes() == original.notes()


@pytest.mark.parametrize("options, match", [
    ({"alphas": ()}, "alphas must be a non-empty list"),
    ({"alphas": (-1.0,)}, "alphas must be non-negative"),
    ({"alphas": "abc"}, "alphas must be a non-empty list of finite numbers"),
    ({"tilts": (1.0, "x")}, "tilts must be a non-empty list of finite numbers"),
    ({"tilts": (float("nan"),)}, "tilts must be a non-empty list of finite numbers"),
])
def test_a_design_that_cannot_work_is_one_configuration_error(options, match):
    space, budget = _space_and_budget()
    with pytest.raises(ConfigError, match=match):
        _shape(space, budget, **options)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(alpha=st.floats(0.0, 8.0), tilt=st.floats(-4.0, 4.0), retained=st.floats(0.02, 1.0))
def test_every_shape_stays_within_the_budget(alpha, tilt, retained):
    """Whatever its alpha, tilt and the budget, a shape's proposal is on the grid and within the budget."""
    space, _ = _space_and_budget()
    full = sum(t.rows for t in space.tables) * 32
    budget = Budget.parse(str(max(int(full * retained), space.minimum_cost())), space.rows(), 32, 1)
    shape = _shape(space, budget, alphas=(alpha,), tilts=(tilt,))
    decisions = shape.ask(1)[0]
    assert np.isin(decisions, space.grid).all()
    assert space.cost(decisions) <= budget.max_values


def test_its_fallback_is_the_fitter_rule_at_its_fittest_precision():
    space, budget, precisions = _with_precisions()
    shape = _shape(space, budget)
    assert shape.fallbacks().shape == (0, space.vector_length), "nothing measured, nothing to fall back on"
    fitness = {"fp32": 0.1, "fp16": 0.3, "int8": 0.5, "int4": 0.4}
    for _ in range(8):
        decisions = shape.ask(1)
        note = shape.notes()[0]
        bonus = {(0.0, 0.0): 0.2, (1.0, 0.0): 0.0}.get((note["alpha"], note["tilt"]), 0.3)  # a shape the fittest
        shape.tell(decisions, [fitness[note["precision"]] + bonus])
    equal_int8 = space.project(shape.direction(0.0, 0.0, 2), budget)
    np.testing.assert_array_equal(shape.fallbacks(), equal_int8[None, :])


@pytest.mark.parametrize("retrain", ["halving", "finetune"])
def test_the_fitter_rule_is_retrained_to_the_end_beside_the_fittest_shapes(tmp_path, retrain):
    import nas

    data = nas.DataSpec("synthetic", extra={"n_users": 300, "n_items": 400})
    result = nas.search(data, controller="shape", trials=6, retrain_top=4, retrain=retrain, budget=0.9,
                        run_dir=tmp_path / "run", reference_cache=tmp_path / "cache",
                        train={"epochs": 3, "eval_every": 1}, progress=False)
    trials = [e for e in _events(tmp_path / "run") if e["event"] == "trial"]
    rules = [t for t in trials if (t["note"]["alpha"], t["note"]["tilt"]) in ((0.0, 0.0), (1.0, 0.0))]
    fitter = max(rules, key=lambda t: (t["fitness"], -t["trial"]))["fingerprint"]
    [searched] = [e for e in _events(tmp_path / "run") if e["event"] == "searched"]
    assert searched["fallbacks"] == [fitter] and fitter in searched["top"]
    finals = [r.fingerprint for r in result.retrained if r.final]
    # Here the rule is not the search's pick: both are trained to the end (3 epochs), the rule despite its short rung.
    assert len(finals) == 2 and fitter in finals
    assert all(r.epochs == 3 for r in result.retrained if r.final)
    assert result.allocation.fingerprint() == max((r for r in result.retrained if r.final),
                                                  key=lambda r: r.valid_quality).fingerprint
    again = nas.resume(tmp_path / "run", progress=False)  # a finished run retrains nothing and answers the same
    assert again.allocation.fingerprint() == result.allocation.fingerprint()
    assert [r.fingerprint for r in again.retrained] == [r.fingerprint for r in result.retrained]


def _events(folder):
    import json

    return [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]


def test_the_design_keeps_its_first_eighteen_shapes_and_then_tilts_to_two():
    """The tilt of 2 comes after the 18 shapes of the design before it, so a run of 18 trials asks what it asked then."""
    space, budget = _space_and_budget()
    shape = _shape(space, budget)
    before = [(a, t) for t in (0.0, -1.0, 1.0) for a in (0.0, 1.0, 0.5, 1.5, 2.0, 3.0)]
    assert shape.design[:18] == before
    assert shape.design[18:] == [(a, 2.0) for a in (0.0, 1.0, 0.5, 1.5, 2.0, 3.0)]


def test_a_run_left_to_it_evaluates_the_design_once_and_retrains_the_fittest_beside_the_rule():
    from nas.pipeline.config import DEFAULT_RETRAIN_TOP, DEFAULT_TRIALS, SearchConfig

    shape = SearchConfig(controller="shape")
    assert (shape.trials, shape.retrain_top) == (24, 1)
    assert SearchConfig(controller="shape", budget="20KB").trials == 24 + 4  # the rule at each precision first
    assert SearchConfig(controller="shape", precisions=("fp32",)).trials == 24  # fp32 alone: sizes only
    assert (SearchConfig(controller="shape", trials=18, retrain_top=5).trials,
            SearchConfig(controller="shape", trials=18, retrain_top=5).retrain_top) == (18, 5)  # given: kept
    for name in ("bet", "frequency", "darts"):
        config = SearchConfig(controller=name)
        assert (config.trials, config.retrain_top) == (DEFAULT_TRIALS, DEFAULT_RETRAIN_TOP)
    assert SearchConfig.from_dict(shape.to_dict()) == shape and shape.to_dict()["trials"] == 24
