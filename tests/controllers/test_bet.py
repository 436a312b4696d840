"""BET: the budgeted sampler, the DeepSets predictor, Algorithm 1's schedule, state and determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from controllers import BET, CONTROLLERS
from controllers.bet import strategy_of
from controllers.bet_sampler import (
    BETA_MAX,
    FAMILIES,
    BudgetedSampler,
    _log_inverse_cdf,
)
from controllers.fitness_predictor import DeepSetsPredictor
from nas.core import Budget, ConfigError, table_specs
from nas.core.projection import is_monotone
from nas.pipeline.runs import Run
from nas.testing import BUILTIN_OPTIONS, fill_rule_violation, layouts, synthetic_fields
from search_spaces import SPACES, PerFeatureSpace

SPACE_NAMES = ("per-feature", "per-field", "block")

#: β_max per test case: the floor (β → 0), the paper's values, and far beyond them.
EXTREMES = {"floor": 1e-12, "paper": None, "huge": 1e4}


def small_space(rows=(300, 500), d_max=32, seed=0) -> PerFeatureSpace:
    fields = synthetic_fields(list(rows), exponent=1.1, seed=seed)
    return PerFeatureSpace(fields.tables, fields.frequencies, 1, d_max)


# -- sampler -----------------------------------------------------------------------------------------
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.sampled_from(SPACE_NAMES), st.sampled_from(FAMILIES), st.sampled_from(sorted(EXTREMES)),
       st.floats(0.0, 1.2), st.one_of(st.none(), st.floats(0.0, 1.0)))
def test_sampled_actions_never_exceed_the_budget_and_spend_it(data, name, family, extreme, share, user_share):
    layout = data.draw(layouts(max_fields=3, max_rows=200), label="layout")
    options = data.draw(BUILTIN_OPTIONS[name](layout), label="options")
    space = SPACES.get(name)(layout.tables, layout.frequencies, layout.d_min, layout.d_max, **options)
    low, high = space.minimum_cost(), space.maximum_cost()
    budget = Budget.from_params(int(low + share * (high - low)), space.rows(), space.d_max, space.d_min)
    beta_max = None if EXTREMES[extreme] is None else {family: EXTREMES[extreme]}
    sampler = BudgetedSampler(
        space, budget, families=(family,), beta_max=beta_max, user_share=user_share if len(space.tables) == 2 else None
    )
    actions = sampler.sample(np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed")), 3)
    assert np.allclose(actions.share.sum(axis=1), 1.0)
    order = space.frequency_order()
    for decisions in actions.decisions:
        space.to_allocation(decisions).validate(budget)  # within the budget and [d_min, d_max]
        assert fill_rule_violation(space, decisions, budget, monotone=True) is None  # >= 99 % whenever the grid allows
        assert is_monotone(decisions, order), "a more frequent decision never gets less than a rarer one"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("beta", [0.05, 0.5, 3.0, 20.0])
def test_each_family_draws_from_its_scipy_distribution(family, beta):
    """The inverse CDFs written in log space agree with scipy's distributions (section 3.2's families)."""
    reference = {
        "power_law": stats.powerlaw(beta),
        "truncated_exponential": stats.truncexpon(beta),
        "truncated_normal": stats.truncnorm(0.0, beta),
        "log_normal": stats.lognorm(beta),
    }[family]
    u = np.linspace(0.01, 0.99, 99)
    expected = reference.ppf(u)
    got = np.exp(_log_inverse_cdf(family, u, np.array(beta)))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-300)


def test_the_most_frequent_rows_get_the_largest_sizes_and_shares_follow_w():
    space = small_space()
    budget = Budget.from_sparsity(0.8, space.rows(), 32, 1)
    # Log-normal with a tiny β: near-equal shares inside a table, so the split shows the user share.
    sampler = BudgetedSampler(space, budget, user_share=0.25, families=("log_normal",), beta_max={"log_normal": 1e-9})
    actions = sampler.sample(np.random.default_rng(0), 4)
    users = actions.decisions[:, :300].sum(axis=1)
    assert np.allclose(users / actions.decisions.sum(axis=1), 0.25, atol=0.02)
    skewed = BudgetedSampler(space, budget, families=("power_law",), beta_max={"power_law": 0.5}).sample(np.random.default_rng(1), 4)
    frequency = space.frequencies[space.tables[1].name]
    for decisions in skewed.decisions:
        items = decisions[300:]
        assert items[np.argmax(frequency)] == items.max()
        assert items[frequency == frequency.min()].min() == items.min()


def test_the_sampler_is_reproducible_and_rejects_bad_options():
    space = small_space()
    budget = Budget.from_sparsity(0.9, space.rows(), 32, 1)
    sampler = BudgetedSampler(space, budget)
    first, second = (sampler.sample(np.random.default_rng(7), 5) for _ in range(2))
    np.testing.assert_array_equal(first.decisions, second.decisions)
    assert set(first.family.ravel()) <= set(range(len(FAMILIES)))
    assert (first.beta <= np.array([BETA_MAX[f] for f in FAMILIES])[first.family]).all()
    with pytest.raises(ConfigError, match="families"):
        BudgetedSampler(space, budget, families=("cauchy",))
    fields = synthetic_fields([50, 60, 70], exponent=1.1, seed=0)
    three = PerFeatureSpace(fields.tables, fields.frequencies, 1, 16)
    with pytest.raises(ConfigError, match="two tables"):
        BudgetedSampler(three, Budget.from_sparsity(0.5, three.rows(), 16, 1), user_share=0.5)


# -- predictor ---------------------------------------------------------------------------------------
def test_the_deepsets_predictor_is_permutation_invariant_and_handles_empty_sets():
    rng = np.random.default_rng(0)
    n, grid = 400, np.arange(1, 17)
    table = np.repeat([0, 1], n // 2)
    frequency = rng.integers(0, 50, n).astype(float)
    torch.manual_seed(0)
    predictor = DeepSetsPredictor(table, frequency, np.ones(n), grid)
    sizes = torch.as_tensor(rng.integers(0, len(grid), size=(6, n)))
    permutation = rng.permutation(n)
    torch.manual_seed(0)
    permuted = DeepSetsPredictor(table[permutation], frequency[permutation], np.ones(n), grid)
    with torch.no_grad():
        expected = predictor(sizes)
        torch.testing.assert_close(permuted(sizes[:, permutation]), expected)
        # Swapping the sizes of two members with the same table and frequency changes nothing.
        same = np.flatnonzero((table == 0) & (frequency == frequency[0]))
        assert len(same) >= 2
        swapped = sizes.clone()
        swapped[:, [same[0], same[1]]] = sizes[:, [same[1], same[0]]]
        torch.testing.assert_close(predictor(swapped), expected)
        # Every member at one size: fifteen empty sets, a finite prediction.
        assert torch.isfinite(predictor(torch.zeros(1, n, dtype=torch.int64))).all()
        # Scoring actions in chunks or one by one gives the same numbers.
        one_by_one = torch.cat([predictor(sizes[i : i + 1]) for i in range(len(sizes))])
        torch.testing.assert_close(one_by_one, expected)


def test_the_predictor_learns_a_synthetic_fitness_through_tell(one_thread):
    """Fitness = share of the budget given to the most frequent fifth of the rows; learnt to rank correlation >= 0.9."""
    space = small_space()
    budget = Budget.from_sparsity(0.9, space.rows(), 32, 1)
    frequency = np.concatenate([space.frequencies[t.name] for t in space.tables])
    top = frequency >= np.quantile(frequency, 0.8)

    def fitness(decisions: np.ndarray) -> np.ndarray:
        return decisions[:, top].sum(axis=1) / decisions.sum(axis=1)

    # A small step size: 1,600 single-action updates (the search's default is tuned for its ~100).
    controller = BET(space, budget, seed=0, candidates=10, lr=1e-3)
    train = controller.sampler.sample(np.random.default_rng(1), 100).decisions
    held_out = controller.sampler.sample(np.random.default_rng(2), 200).decisions
    before = stats.spearmanr(controller.predict(held_out), fitness(held_out))[0]
    for _ in range(8):
        for i in range(len(train)):
            controller.tell(train[i : i + 1], fitness(train[i : i + 1]))
    after = stats.spearmanr(controller.predict(held_out), fitness(held_out))[0]
    assert after >= 0.9, f"rank correlation {after:.3f} (before training {before:.3f})"
    assert after > before


# -- Algorithm 1 -------------------------------------------------------------------------------------
def test_the_strategy_schedule_follows_algorithm_1():
    assert [strategy_of(t) for t in range(1, 11)] == [
        "greedy", "greedy", "random", "nearest", "greedy", "greedy", "greedy", "random", "nearest", "greedy"
    ]


def test_each_strategy_picks_what_it_says(one_thread):
    space = small_space()
    budget = Budget.from_sparsity(0.9, space.rows(), 32, 1)
    controller = BET(space, budget, seed=3, candidates=12)
    rng = np.random.default_rng(0)
    for iteration in range(1, 11):
        state = controller.rng.bit_generator.state
        picked = controller.ask(1)
        note = controller.notes()[0]
        assert note["iteration"] == iteration and note["strategy"] == strategy_of(iteration)
        # Re-draw the same candidates and check the pick against the strategy's rule.
        replay = np.random.default_rng()
        replay.bit_generator.state = state
        candidates = controller.sampler.sample(replay, 12).decisions
        index = int(np.flatnonzero((candidates == picked[0]).all(axis=1))[0])
        if note["strategy"] == "greedy":
            assert index == int(np.argmax(controller.predict(candidates)))
        elif note["strategy"] == "nearest":
            with torch.no_grad():
                embed = controller.predictor.embed
                best = controller.population[int(np.argmax(controller.population_fitness))].astype(np.int64)
                distance = torch.cdist(embed(controller._indices(candidates)), embed(torch.as_tensor(best)[None]))
            assert index == int(torch.argmin(distance))
        controller.tell(picked, rng.uniform(0.5, 1.0, size=1))
    assert len(controller.population) == 10 and len(controller.losses) == 20  # N = 2 updates per iteration


def test_random_selection_only_never_uses_a_predictor():
    space = small_space()
    controller = BET(space, Budget.from_sparsity(0.9, space.rows(), 32, 1), seed=0, candidates=5, predictor="none")
    for _ in range(5):
        picked = controller.ask(1)
        assert controller.notes()[0]["strategy"] == "random"
        controller.tell(picked, [0.5])
    with pytest.raises(ConfigError, match="no predictor"):
        controller.predict(picked)


@pytest.mark.parametrize("predictor", ["deepsets", "sizes", "none"])
def test_state_round_trips_through_a_run_file_and_continues_identically(tmp_path, predictor, one_thread):
    space = small_space()
    budget = Budget.from_sparsity(0.9, space.rows(), 32, 1)
    rng = np.random.default_rng(0)

    def step(controller: BET) -> np.ndarray:
        picked = controller.ask(2)
        controller.tell(picked, rng.uniform(0.5, 1.0, size=2))
        return picked

    original = BET(space, budget, seed=5, candidates=8, predictor=predictor)
    for _ in range(4):
        step(original)
    run = Run.create(tmp_path, {"test": 1}, "r")
    run.save_state("controller.safetensors", original.state_dict())
    restored = BET(space, budget, seed=5, candidates=8, predictor=predictor)
    restored.load_state_dict(run.load_state("controller.safetensors"))
    state = rng.bit_generator.state
    continued = [step(original) for _ in range(3)]
    rng.bit_generator.state = state
    resumed = [step(restored) for _ in range(3)]
    for a, b in zip(continued, resumed):
        np.testing.assert_array_equal(a, b)
    if predictor != "none":
        np.testing.assert_array_equal(original.predict(continued[-1]), restored.predict(continued[-1]))


def test_the_same_seed_gives_the_same_search_and_another_seed_another():
    space = small_space()
    budget = Budget.from_sparsity(0.9, space.rows(), 32, 1)

    def search(seed: int) -> list[np.ndarray]:
        controller, out = BET(space, budget, seed=seed, candidates=6), []
        for t in range(6):
            picked = controller.ask(1)
            controller.tell(picked, [float(picked[0, :50].sum()) / 1000 + t])
            out.append(picked)
        return out

    first, again, other = search(1), search(1), search(2)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


@pytest.mark.parametrize("name", ["per-field", "block"])
def test_bet_searches_the_per_field_and_block_spaces(name):
    fields = synthetic_fields([400, 600], exponent=1.1, seed=1)
    space = SPACES.get(name)(fields.tables, fields.frequencies, 1, 32, **({"groups": 6, "blocks": 4} if name == "block" else {}))
    budget = Budget.from_sparsity(0.85, space.rows(), 32, 1)
    controller = CONTROLLERS.get("bet")(space, budget, seed=0, candidates=16)
    for t in range(6):
        picked = controller.ask(2)
        for decisions in picked:
            space.to_allocation(decisions).validate(budget)
        controller.tell(picked, [0.5 + 0.01 * t, 0.6])
    assert np.isfinite(controller.predict(picked)).all()


def test_bad_options_are_config_errors():
    space = small_space()
    budget = Budget.from_sparsity(0.9, space.rows(), 32, 1)
    with pytest.raises(ConfigError, match="predictor"):
        BET(space, budget, predictor="oracle")
    with pytest.raises(ConfigError, match="candidates"):
        BET(space, budget, candidates=0)
    with pytest.raises(ConfigError, match="at most its 3 candidates"):
        BET(space, budget, candidates=3).ask(4)


def test_a_paper_sized_space_samples_and_scores_100_actions(one_thread):
    """Gowalla's shape (29,858 users, 40,981 items): 100 actions drawn, projected and scored in one call."""
    fields = synthetic_fields([29_858, 40_981], exponent=1.1, seed=0)
    space = PerFeatureSpace(fields.tables, fields.frequencies, 1, 64)
    budget = Budget.from_sparsity(0.95, space.rows(), 64, 1)
    controller = BET(space, budget, seed=0)
    picked = controller.ask(1)
    assert picked.shape == (1, 70_839) and space.cost(picked[0]) <= budget.max_values
    assert table_specs(space.rows())[0].rows == 29_858


def test_anchors_evaluate_the_rule_based_allocations_first_then_algorithm_1_starts():
    space = small_space()
    budget = Budget.from_sparsity(0.9, space.rows(), 32, 1)
    controller = BET(space, budget, seed=0, candidates=6, anchors=True)
    first = controller.ask(1)
    assert controller.notes()[0]["strategy"] == "anchor" and controller.notes()[0]["anchor"] == "equal"
    assert np.ptp(first[0]) <= 1, "equal sizes, up to the one-step top-up"
    controller.tell(first, [0.5])
    second = controller.ask(3)  # the frequency rule, then iteration 1's two greedy picks
    assert [n["strategy"] for n in controller.notes()] == ["anchor", "greedy", "greedy"]
    assert [n["iteration"] for n in controller.notes()] == [0, 1, 1]
    frequency = np.concatenate([space.frequencies[t.name] for t in space.tables])
    assert second[0][np.argmax(frequency)] == second[0].max()
    controller.tell(second, [0.6, 0.4, 0.3])
    assert controller.iteration == 1 and controller.anchored == 2 and len(controller.population) == 4
    controller.ask(1)
    assert controller.notes()[0]["iteration"] == 2 and controller.notes()[0]["strategy"] == "greedy"
    restored = BET(space, budget, seed=0, candidates=6, anchors=True)
    restored.load_state_dict(controller.state_dict())
    assert restored.anchored == 2 and restored.iteration == 1


def test_with_precisions_bet_draws_one_per_table_anchors_every_precision_and_stays_within_the_bits():
    from nas.testing import synthetic_fields
    from search_spaces import PerFeatureSpace

    fields = synthetic_fields({"user": 200, "item": 300}, exponent=1.1, seed=0)
    precisions = ("fp32", "fp16", "int8", "int4")
    space = PerFeatureSpace(fields.tables, fields.frequencies, 1, 32).with_precisions(precisions)
    budget = Budget.parse("12KB", space.rows(), 32, 1, precisions=precisions)
    bet = CONTROLLERS.get("bet")(space, budget, seed=0, candidates=20, anchors=True)
    assert list(bet.anchors) == [f"{rule}@{p}" for p in precisions for rule in ("equal", "frequency")]
    table = space.context()["table"]
    for _ in range(10):
        decisions = bet.ask(1)
        sizes, precision = space.split(decisions[0])
        assert space.cost_in(decisions[0], budget) <= budget.max_bits
        note = bet.notes()[0]
        if note["strategy"] != "anchor":
            drawn = [precisions.index(p) for p in note["precision"]]
            # the projection may move the rarest rows to the cheapest precision; the rest keep the draw
            kept = precision == np.asarray(drawn)[table]
            assert kept.mean() > 0.5
        bet.tell(decisions, [float(sizes.mean())])
