"""The run's top-k objective reaches every stage that trains: supernet, one-shot search, fine-tune fitness.

A controller with only the BPR entry point under the softmax: ``tests/nas/test_tasks.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from controllers import CONTROLLERS
from nas.pipeline.config import SearchConfig, TrainingOptions
from nas.core import Budget, table_specs
from nas.pipeline.embedding import MaskableEmbedding
from nas.pipeline.config import FineTuneConfig
from nas.pipeline.evaluators import FineTuneEvaluator
from nas.pipeline.config import SupernetOptions
from nas.pipeline.supernet import train_one_shot, train_supernet
from recsys.data import synthetic
from recsys.models import MF
from recsys.train import TrainConfig
from search_spaces import SPACES

D = 16
SOFTMAX = TrainConfig(epochs=2, batch_size=256, lr=5e-3, reg=1e-4, eval_every=2, patience=10, seed=0,
                      loss="softmax", temperature=1.0, negatives=128)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):  # noqa: ANN001 - the shared fixture of tests/conftest.py
    """Every test here runs on one thread."""


@pytest.fixture(scope="module")
def data():
    return synthetic(n_users=200, n_items=300, mean_items_per_user=15.0, seed=1)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How often MF's two losses are called (the spies call the real ones)."""
    counts = {"bpr_loss": 0, "softmax_loss": 0}
    for name in counts:
        real = getattr(MF, name)

        def spy(self, *args, _real=real, _name=name):  # noqa: ANN001, ANN202
            counts[_name] += 1
            return _real(self, *args)

        monkeypatch.setattr(MF, name, spy)
    return counts


def _space_budget(data):  # noqa: ANN001, ANN202
    space = SPACES.get("per-feature")(table_specs(data.rows()), data.frequencies(), 1, D)
    return space, Budget.from_sparsity(0.8, data.rows(), D)


def test_the_sandwich_supernet_trains_with_the_softmax(data, calls):
    space, budget = _space_budget(data)
    model = MF(MaskableEmbedding(data.rows(), D, seed=0))
    result = train_supernet(model, data, space, budget, SOFTMAX, SupernetOptions(mode="sandwich"), progress=False)
    assert calls["softmax_loss"] > 0 and calls["bpr_loss"] == 0
    # A softmax against 128 negatives starts near log(129) ≈ 4.9; BPR starts near log 2.
    assert result.history[0]["loss"] > 3


def test_a_one_shot_search_trains_with_the_softmax(data, calls):
    space, budget = _space_budget(data)
    model = MF(MaskableEmbedding(data.rows(), D, seed=0))
    controller = CONTROLLERS.get("darts")(space, budget, seed=0)
    train_one_shot(model, data, controller, SOFTMAX, progress=False)
    assert calls["softmax_loss"] > 0 and calls["bpr_loss"] == 0
    assert space.cost(controller.ask(1)[0]) <= budget.max_values


def test_fine_tune_fitness_trains_with_the_runs_objective(data, calls):
    space, budget = _space_budget(data)
    model = MF(MaskableEmbedding(data.rows(), D, seed=0))
    allocation = space.to_allocation(space.sample(np.random.default_rng(0), budget))
    config = FineTuneConfig(steps=5, lr=0.1, reg=1e-4)
    FineTuneEvaluator(model, data, config=config, training=TrainingOptions(loss="softmax")).fitness([allocation])
    assert (calls["softmax_loss"], calls["bpr_loss"]) == (5, 0)
    FineTuneEvaluator(model, data, config=config).fitness([allocation])
    assert calls["bpr_loss"] == 5, "without the run's options fine-tuning is BPR, as before"


def test_the_objective_is_a_training_option_of_top_k_runs_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from nas.app.cli import _config_from_args, build_parser, main

    config = _config_from_args(build_parser().parse_args(["search", "--loss", "softmax", "--temperature", "0.1",
                                                          "--negatives", "64"]))
    assert (config.train.loss, config.train.temperature, config.train.negatives) == ("softmax", 0.1, 64)
    assert config.train.to_train_config(0, None).loss == "softmax"
    assert SearchConfig.from_dict(config.to_dict()) == config
    assert main(["search", "--runs", str(tmp_path), "--model", "deepfm", "--loss", "softmax", "--quiet"]) == 2
    assert "click models train with binary cross-entropy" in capsys.readouterr().err
    assert main(["search", "--runs", str(tmp_path), "--temperature", "0", "--quiet"]) == 2
    assert "temperature must be > 0" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_info_nce_term_is_a_training_option_of_graph_runs_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from nas.app.cli import _config_from_args, build_parser, main

    plain = _config_from_args(build_parser().parse_args(["search", "--model", "lightgcn", "--recipe", "none"]))
    assert "info_nce" not in plain.to_dict()["train"], "without the term a run keeps the identity it had before it"
    config = _config_from_args(build_parser().parse_args(["search", "--model", "lightgcn", "--info-nce", "0.1",
                                                          "--info-nce-temperature", "0.3"]))
    trainer = config.train.to_train_config(0, None)
    assert (trainer.info_nce, trainer.info_nce_temperature) == (0.1, 0.3)
    assert SearchConfig.from_dict(config.to_dict()) == config and config.to_dict() != plain.to_dict()
    for model in ("mf", "deepfm"):
        assert main(["search", "--runs", str(tmp_path), "--model", model, "--info-nce", "0.1", "--quiet"]) == 2
        assert "--info-nce is a term of graph backbones" in capsys.readouterr().err
    assert main(["search", "--runs", str(tmp_path), "--model", "lightgcn", "--info-nce", "-1", "--quiet"]) == 2
    assert "info_nce must be a finite weight >= 0" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_lightgcn_supernet_trains_with_the_info_nce_term(data, monkeypatch: pytest.MonkeyPatch):
    from recsys.models import LightGCN

    seen = []
    real = LightGCN.bpr_loss

    def spy(self, *args, contrast=None):  # noqa: ANN001, ANN202
        seen.append(contrast)
        return real(self, *args, contrast=contrast)

    monkeypatch.setattr(LightGCN, "bpr_loss", spy)
    space, budget = _space_budget(data)
    model = LightGCN(MaskableEmbedding(data.rows(), D, seed=0), data.train)
    config = TrainConfig(epochs=1, batch_size=512, lr=5e-3, reg=1e-4, eval_every=1, patience=10, seed=0, info_nce=0.1)
    train_supernet(model, data, space, budget, config, SupernetOptions(mode="sandwich"), progress=False)
    assert seen and all(contrast == (0.1, 0.2) for contrast in seen)


def _parse(*flags: str) -> SearchConfig:
    """The run ``embnas search --recipe none <flags>`` configures."""
    from nas.app.cli import _config_from_args, build_parser

    return _config_from_args(build_parser().parse_args(["search", "--recipe", "none", *flags]))


def test_the_propagation_dtype_is_a_training_option_of_lightgcn_only(data, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    import torch

    from nas.app.cli import main
    from nas.pipeline.build import build_model

    plain, fast = _parse("--model", "lightgcn"), _parse("--model", "lightgcn", "--propagation", "bf16")
    assert "propagation" not in plain.to_dict()["train"], "in float32 a run keeps the identity it had before the option"
    assert fast.train.propagation == "bf16" and SearchConfig.from_dict(fast.to_dict()) == fast
    assert build_model(fast, data).propagation_dtype == torch.bfloat16
    assert build_model(plain, data).propagation_dtype is None
    assert main(["search", "--runs", str(tmp_path), "--quiet", "--model", "mf", "--propagation", "bf16"]) == 2
    assert "--propagation bf16 applies to lightgcn; mf propagates nothing" in capsys.readouterr().err
    from nas.core.errors import ConfigError

    with pytest.raises(ConfigError, match="propagation must be one of fp32, bf16"):
        TrainingOptions(propagation="fp16")
    assert list(tmp_path.iterdir()) == []


def test_the_rate_decay_is_a_training_option_of_every_task(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from nas.app.cli import main
    from nas.pipeline.tasks import task_for

    plain, decayed = _parse(), _parse("--lr-decay", "0.5")
    assert "lr_decay" not in plain.to_dict()["train"], "at a constant rate a run keeps the identity it had before the option"
    assert decayed.train.lr_decay == 0.5 and SearchConfig.from_dict(decayed.to_dict()) == decayed
    assert decayed.train.to_train_config(0, None).lr_decay == 0.5
    from recsys.data import synthetic_ctr

    click = task_for(synthetic_ctr(n_rows=200, seed=0))
    assert click.train_config(TrainingOptions(lr_decay=0.25), 0, None).lr_decay == 0.25
    assert main(["search", "--runs", str(tmp_path), "--lr-decay", "2", "--quiet"]) == 2
    assert "lr_decay must be in (0, 1]" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_hard_negatives_are_a_training_option_of_top_k_runs_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from nas.app.cli import main

    plain, hard = _parse(), _parse("--hard-negatives", "16")
    assert "hard_negatives" not in plain.to_dict()["train"], "with a uniform negative a run keeps the identity it had"
    assert hard.train.hard_negatives == 16 and SearchConfig.from_dict(hard.to_dict()) == hard
    assert hard.train.to_train_config(0, None).hard_negatives == 16
    assert main(["search", "--runs", str(tmp_path), "--quiet", "--model", "deepfm", "--hard-negatives", "4"]) == 2
    assert "--hard-negatives chooses the negative item of top-k models" in capsys.readouterr().err
    assert main(["search", "--runs", str(tmp_path), "--quiet", "--hard-negatives", "0"]) == 2
    assert "hard_negatives must be an integer >= 1" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
