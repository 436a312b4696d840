"""Tuning the learning rate and L2 on validation: the run's options first, the best on validation, cached trainings."""

from __future__ import annotations

from pathlib import Path

import pytest

import nas
from nas.app.cli import main
from nas.core.errors import ConfigError
from nas.pipeline.tuning import DEFAULT_RANGES

DATA = nas.DataSpec("synthetic", extra={"n_users": 200, "n_items": 300})
FAST = {"train": {"epochs": 2, "eval_every": 1, "lr": 5e-3, "reg": 1e-4}, "progress": False}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):  # noqa: ANN001 - the shared fixture of tests/conftest.py
    """Every test here runs on one thread."""


def test_the_runs_options_come_first_and_the_best_on_validation_wins(tmp_path: Path):
    tuning = nas.tune(DATA, trainings=4, reference_cache=tmp_path, **FAST)
    assert len(tuning.trials) == 4 and tuning.metric == "recall@20"
    assert dict(tuning.trials[0].options) == {"lr": 5e-3, "reg": 1e-4}
    for trial in tuning.trials:
        for name, (down, up) in DEFAULT_RANGES.items():
            centre = FAST["train"][name]
            assert centre / down <= trial.options[name] <= centre * up
    scores = [trial.valid["recall@20"] for trial in tuning.trials]
    assert scores[tuning.best] == max(scores) and tuning.best == scores.index(max(scores))
    assert (tuning.train.lr, tuning.train.reg) == (tuning.trials[tuning.best].options["lr"],
                                                   tuning.trials[tuning.best].options["reg"])
    assert tuning.train.epochs == 2, "only the tuned options change"
    assert set(tuning.test) >= {"recall@20", "ndcg@20"} and not any(trial.cached for trial in tuning.trials)
    assert tuning.trained_seconds == pytest.approx(sum(trial.seconds for trial in tuning.trials))


def test_a_second_study_reads_every_training_back_and_a_search_finds_its_reference(tmp_path: Path):
    first = nas.tune(DATA, trainings=3, reference_cache=tmp_path, **FAST)
    again = nas.tune(DATA, trainings=3, reference_cache=tmp_path, **FAST)
    assert all(trial.cached for trial in again.trials)
    assert [(t.options, t.valid) for t in again.trials] == [(t.options, t.valid) for t in first.trials]
    assert len(list((tmp_path / "references").iterdir())) == 3
    result = nas.search(DATA, controller="equal", train=first.train, reference_cache=tmp_path, progress=False,
                        run_dir=tmp_path / "run")
    assert "reference" not in result.timings, "the best trial's model is the search's reference"
    assert result.full_metrics["test"] == first.test


def test_an_l2_of_zero_is_tuned_on_a_fixed_range(tmp_path: Path):
    options = {**FAST, "train": {**FAST["train"], "reg": 0.0}}
    tuning = nas.tune(DATA, trainings=2, ranges={"reg": (100.0, 100.0)}, reference_cache=tmp_path, **options)
    assert tuning.trials[0].options == {"reg": 1e-7}, "0 is outside a log range: its lowest end stands in for it"
    assert all(1e-7 <= t.options["reg"] <= 1e-3 for t in tuning.trials)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"trainings": 0}, "at least one trial"),
    ({"ranges": {"batch_size": (2.0, 2.0)}}, "cannot tune"),
    ({"ranges": {}}, "cannot tune"),
    ({"ranges": {"lr": (0.5, 2.0)}}, "pair of factors >= 1"),
])
def test_options_that_cannot_be_tuned_are_refused_before_any_training(tmp_path: Path, kwargs: dict, message: str):
    with pytest.raises(ConfigError, match=message):
        nas.tune(DATA, reference_cache=tmp_path, **{**FAST, **kwargs})
    assert not (tmp_path / "references").exists()


def test_data_without_validation_is_refused(tmp_path: Path):
    from recsys.data import synthetic

    data = synthetic(n_users=100, n_items=150, seed=0, split=(0.9, 0.0, 0.1))
    with pytest.raises(ConfigError, match="no validation split"):
        nas.tune(data, trainings=2, reference_cache=tmp_path, **FAST)
    assert not (tmp_path / "references").exists(), "refused before any training"


def test_an_interrupted_command_says_how_to_go_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]):
    import nas.pipeline.tuning

    def interrupted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise KeyboardInterrupt

    monkeypatch.setattr(nas.pipeline.tuning, "tune_training", interrupted)
    assert main(["tune", "--quiet", "--reference-cache", str(tmp_path)]) == 130
    assert "run the same command again" in capsys.readouterr().err


def test_the_command_prints_the_trials_the_best_flags_and_the_cost(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["tune", "--trainings", "2", "--epochs", "1", "--eval-every", "1", "--quiet",
                 "--reference-cache", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "valid recall@20" in out and " *" in out
    assert "best: --lr " in out and "--reg " in out and "cost: 2 trainings of the full model" in out
    assert main(["tune", "--trainings", "0", "--quiet", "--reference-cache", str(tmp_path)]) == 2
    assert "at least one trial" in capsys.readouterr().err


def test_each_training_is_announced_when_it_ends(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    nas.tune(DATA, trainings=2, reference_cache=tmp_path, **{**FAST, "progress": True})
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tuning:")]
    assert [line.split(" (")[0] for line in lines] == ["tuning: training 1 of 2", "tuning: training 2 of 2"]
    assert "lr 0.005, reg 0.0001" in lines[0] and "valid recall@20" in lines[0]
