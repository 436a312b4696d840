"""Several workers searching one Optuna study through its storage (the ``shared`` option)."""

from __future__ import annotations

import pytest

from nas import CONTROLLERS
from nas.core.budget import Budget
from nas.core.errors import ConfigError
from nas.testing.data import synthetic_fields
from search_spaces.per_feature import PerFeatureSpace

optuna = pytest.importorskip("optuna")


@pytest.fixture
def setting():
    fields = synthetic_fields({"user": 60, "item": 90}, exponent=1.1, seed=0)
    space = PerFeatureSpace(fields.tables, fields.frequencies, 1, 16)
    return space, Budget.parse("0.8", space.rows(), 16, 1)


def drive(controller, trials):
    for _ in range(trials):
        decisions = controller.ask(1)
        assert controller.space.cost(decisions[0]) <= controller.budget.max_values
        controller.tell(decisions, [float(decisions[0].mean())])


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_two_workers_search_one_study(setting, tmp_path, kind):
    space, budget = setting
    storage = f"journal:{tmp_path / 'study.log'}" if kind == "journal" else f"sqlite:///{tmp_path / 'study.db'}"
    first = CONTROLLERS.get("optuna")(space, budget, seed=0, storage=storage, study="s", shared=True)
    drive(first, 3)
    second = CONTROLLERS.get("optuna")(space, budget, seed=1, storage=storage, study="s", shared=True)
    assert len(second._optimizer.trials) == 3  # the second worker's sampler sees the first's trials
    drive(second, 2)
    drive(first, 1)
    stored = optuna.load_study(study_name="s", storage=first._optimizer._storage).trials
    assert [t.state for t in stored] == [optuna.trial.TrialState.COMPLETE] * 6
    assert [t.user_attrs["embnas_seed"] for t in stored] == [0, 0, 0, 1, 1, 0]
    assert sorted(t.value for t in stored) == pytest.approx(sorted([*first.history_values, *second.history_values]))


def test_a_resumed_worker_adds_nothing_twice_and_fails_what_it_never_told(setting, tmp_path):
    space, budget = setting
    storage = f"journal:{tmp_path / 'study.log'}"
    worker = CONTROLLERS.get("optuna")(space, budget, seed=0, storage=storage, study="s", shared=True)
    drive(worker, 3)
    saved = worker.state_dict()
    worker.ask(1)  # asked, then the worker died before telling
    resumed = CONTROLLERS.get("optuna")(space, budget, seed=0, storage=storage, study="s", shared=True)
    resumed.load_state_dict(saved)
    assert list(resumed.history_values) == list(worker.history_values)
    drive(resumed, 1)
    states = [t.state for t in optuna.load_study(study_name="s", storage=resumed._optimizer._storage).trials]
    assert states == [optuna.trial.TrialState.COMPLETE] * 3 + [optuna.trial.TrialState.FAIL,
                                                              optuna.trial.TrialState.COMPLETE]


def test_a_shared_study_needs_a_storage(setting):
    space, budget = setting
    with pytest.raises(ConfigError, match="needs a storage"):
        CONTROLLERS.get("optuna")(space, budget, seed=0, shared=True)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("storage", ["journal:/nonexistent/folder/study.log", "bogus://nowhere"])
def test_a_storage_that_cannot_be_opened_is_refused_when_the_controller_is_made(setting, storage, shared):
    space, budget = setting
    with pytest.raises(ConfigError, match="cannot be opened"):
        CONTROLLERS.get("optuna")(space, budget, seed=0, storage=storage, study="s", shared=shared)
