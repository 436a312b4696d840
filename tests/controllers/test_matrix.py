"""Every registered controller × every built-in space × budgets near the minimum, middle and full.

The conformance suite (:mod:`nas.testing.controllers`) checks feasibility of every
proposal, determinism under a seed and an exact resume from a saved state; here it runs
on each built-in controller, and the learning controllers are checked to learn.
"""

from __future__ import annotations

import pytest

from controllers import CONTROLLERS
from nas.core import Budget
from nas.testing import check_controller, conformance_cases, synthetic_fields, synthetic_fitness
from search_spaces import PerFeatureSpace


@pytest.mark.parametrize("name", CONTROLLERS.names())
def test_controller_conforms(name):
    check_controller(CONTROLLERS.get(name))


def test_the_matrix_covers_every_space_and_budget_level():
    expected = {(s, b) for s in ("per-feature", "per-field", "block") for b in ("near-minimum", "middle", "near-full")}
    assert {(space, level) for space, _, level, _ in conformance_cases()} == expected
    searched = conformance_cases(precisions=("fp32", "fp16", "int8", "int4"))
    assert {(space, level) for space, _, level, _ in searched} == expected
    assert all(budget.unit == "bits" and space.precisions == budget.precisions for _, space, _, budget in searched)


def test_the_controllers_that_search_precisions():
    searching = {name for name in CONTROLLERS.names() if CONTROLLERS.get(name).searches_precision}
    assert searching >= {"equal", "frequency", "random", "shape", "nevergrad", "optuna", "rl", "bet", "darts"}
    assert not searching & {"magprune", "pep"}  # they keep arbitrary elements, which are not quantised


def best_after(name: str, trials: int, seed: int, **options) -> float:
    fields = synthetic_fields({"user": 300, "item": 500}, exponent=1.1, seed=0)
    space = PerFeatureSpace(fields.tables, fields.frequencies, 1, 32)
    budget = Budget.parse("0.8", space.rows(), 32, 1)
    fitness = synthetic_fitness(space)
    controller = CONTROLLERS.get(name)(space, budget, seed=seed, **options)
    for _ in range(trials):
        decisions = controller.ask(1)
        controller.tell(decisions, [fitness(decisions[0])])
    return controller.best_fitness


@pytest.mark.parametrize(("name", "margin"), [("rl", 0.05), ("nevergrad", 0.2), ("optuna", 0.2)])
def test_learning_controllers_beat_random_search_on_a_known_fitness(name, margin):
    """Fitness rewards sizes that grow with frequency; 40 trials of learning beat 40 random ones, seed by seed.

    The policy gradient learns per decision from one number per trial, so it gains least
    in 40 trials (random search: about 0.09; rl 0.25-0.32; nevergrad and optuna 0.4-0.6).
    """
    for seed in (0, 1):
        learned, random = best_after(name, 40, seed), best_after("random", 40, seed)
        assert learned > random + margin, f"{name} seed {seed}: best {learned:.3f}, random search {random:.3f}"


def test_optuna_mirrors_its_trials_to_a_storage_once(tmp_path):
    import optuna

    fields = synthetic_fields({"user": 60, "item": 90}, exponent=1.1, seed=0)
    space = PerFeatureSpace(fields.tables, fields.frequencies, 1, 16)
    budget = Budget.parse("0.8", space.rows(), 16, 1)
    fitness = synthetic_fitness(space)
    storage = f"sqlite:///{tmp_path / 'search.db'}"

    def drive(controller, trials):
        for _ in range(trials):
            decisions = controller.ask(1)
            controller.tell(decisions, [fitness(decisions[0])])

    first = CONTROLLERS.get("optuna")(space, budget, seed=0, storage=storage, study="s")
    drive(first, 3)
    resumed = CONTROLLERS.get("optuna")(space, budget, seed=0, storage=storage, study="s")
    resumed.load_state_dict(first.state_dict())  # replays three trials; the storage already has them
    drive(resumed, 2)
    stored = optuna.load_study(study_name="s", storage=storage).trials
    assert [t.value for t in stored] == pytest.approx(list(resumed.history_values))
    assert len(stored) == 5


@pytest.mark.parametrize("model", ["mf", "lightgcn", "neumf", "ngcf"])
@pytest.mark.parametrize("space", ["per-feature", "per-field", "block"])
@pytest.mark.parametrize("name", CONTROLLERS.names())
def test_every_controller_completes_a_small_search_on_every_space(name, space, model, tmp_path):
    from nas.pipeline.config import SearchConfig, TrainingOptions
    from nas.pipeline.data import DataSpec
    from nas.pipeline.search import run_search

    config = SearchConfig(
        data=DataSpec("synthetic", extra={"n_users": 200, "n_items": 300, "mean_items_per_user": 10.0}),
        model=model, controller=name, space=space, budget="0.8", d_max=16, trials=3, retrain_top=2, fitness_users=0,
        threads=1, space_options={"groups": 4, "blocks": 4} if space == "block" else {},
        train=TrainingOptions(epochs=1, batch_size=1024, eval_every=1, patience=5),
    )
    metrics = run_search(config, runs_root=tmp_path, progress=False).to_dict()
    assert metrics["allocation"]["values"] <= metrics["budget"]["max_values"]
    assert metrics["export"]["bytes_stored"] > 0 and metrics["trials"] >= 1


@pytest.mark.parametrize("model", ["mf", "lightgcn", "neumf"])
@pytest.mark.parametrize("name", CONTROLLERS.names())
def test_every_controller_completes_a_small_search_trained_with_the_softmax(name, model, tmp_path):
    """The sampled softmax reaches every stage that trains (supernet, one-shot search, fine-tunes, retrains)."""
    from nas.pipeline.config import SearchConfig, TrainingOptions
    from nas.pipeline.data import DataSpec
    from nas.pipeline.search import run_search

    config = SearchConfig(
        data=DataSpec("synthetic", extra={"n_users": 200, "n_items": 300, "mean_items_per_user": 10.0}),
        model=model, controller=name, budget="0.8", d_max=16, trials=3, retrain_top=2, fitness_users=0, threads=1,
        evaluator="finetune" if name == "bet" else "supernet",
        train=TrainingOptions(epochs=1, batch_size=1024, eval_every=1, patience=5, loss="softmax", negatives=64),
    )
    metrics = run_search(config, runs_root=tmp_path, progress=False).to_dict()
    assert metrics["allocation"]["values"] <= metrics["budget"]["max_values"]
    assert metrics["allocated"]["test"]["recall@20"] >= 0 and metrics["trials"] >= 1


#: Tiny click data: two long-tailed id fields, a small one and a field with fewer rows than the block space's groups.
TINY_CLICKS = {"n_rows": 1500, "fields": {"user": 120, "item": 160, "genre": 12, "flag": 2}}


@pytest.mark.parametrize("model", ["fm", "deepfm", "dcnv2"])
@pytest.mark.parametrize("space", ["per-feature", "per-field", "block"])
@pytest.mark.parametrize("name", CONTROLLERS.names())
def test_every_controller_completes_a_small_click_search_on_every_space(name, space, model, tmp_path):
    from nas.pipeline.config import SearchConfig, TrainingOptions
    from nas.pipeline.data import DataSpec
    from nas.pipeline.search import run_search

    config = SearchConfig(
        data=DataSpec("synthetic-ctr", extra=TINY_CLICKS), model=model, controller=name, space=space, budget="0.8",
        d_max=8, trials=3, retrain_top=2, threads=1, space_options={"groups": 4, "blocks": 4} if space == "block" else {},
        controller_options={"warmup": 0} if name in ("darts", "pep") else {},
        train=TrainingOptions(epochs=1, batch_size=512, lr=1e-2, reg=1e-5, eval_every=1, patience=2),
    )
    metrics = run_search(config, runs_root=tmp_path, progress=False).to_dict()
    assert metrics["task"] == "click"
    assert metrics["allocation"]["values"] <= metrics["budget"]["max_values"]
    assert metrics["export"]["bytes_stored"] <= metrics["budget"]["max_bytes"] and metrics["trials"] >= 1
    assert 0.0 <= metrics["allocated"]["test"]["auc"] <= 1.0 and metrics["allocated"]["test"]["logloss"] > 0


def test_a_batch_larger_than_the_controller_proposes_fails_before_training():
    from nas.pipeline.config import SearchConfig
    from nas.core import ConfigError
    from nas.pipeline.data import load_data
    from nas.pipeline.build import build_search

    config = SearchConfig(controller="nevergrad", ask_batch=4)
    with pytest.raises(ConfigError, match="at most 1 candidates at once.*workers"):
        build_search(config, load_data(config.data))
    build_search(SearchConfig(controller="nevergrad", ask_batch=4, controller_options={"workers": 4}), load_data(config.data))


def test_a_controller_that_reads_frequencies_refuses_a_space_without_them():
    from nas.core import ConfigError

    fields = synthetic_fields({"user": 20, "item": 30}, exponent=1.1, seed=0)

    class Contextless(PerFeatureSpace):
        def context(self):
            return {"table": super().context()["table"]}

    space = Contextless(fields.tables, fields.frequencies, 1, 8)
    budget = Budget.parse("0.5", space.rows(), 8, 1)
    with pytest.raises(ConfigError, match="log_frequency"):
        CONTROLLERS.get("frequency")(space, budget)
    CONTROLLERS.get("equal")(space, budget)  # needs no context


@pytest.mark.parametrize("model", ["lightgcn", "neumf", "ngcf"])
@pytest.mark.parametrize("name", ["bet", "darts", "pep"])
def test_backbones_run_with_sandwich_one_shot_and_pruning_controllers(name, model, tmp_path):
    """Graph propagation and NeuMF's tower see the masks (stacked variants, soft masks, element masks) through the provider."""
    from nas.pipeline.config import SearchConfig, TrainingOptions
    from nas.pipeline.data import DataSpec
    from nas.pipeline.search import run_search

    config = SearchConfig(
        data=DataSpec("synthetic", extra={"n_users": 200, "n_items": 300, "mean_items_per_user": 10.0}),
        model=model, controller=name, budget="0.8", d_max=16, trials=3, retrain_top=1, fitness_users=0, threads=1,
        controller_options={"warmup": 0} if name in ("darts", "pep") else {},
        train=TrainingOptions(epochs=2, batch_size=1024, eval_every=1, patience=5),
    )
    metrics = run_search(config, runs_root=tmp_path, progress=False).to_dict()
    assert metrics["allocation"]["values"] <= metrics["budget"]["max_values"]
    assert metrics["allocated"]["test"]["recall@20"] > 0
