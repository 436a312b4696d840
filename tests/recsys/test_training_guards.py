"""The training loop stops a diverging training before its state is scored, kept or checkpointed (seconds, CPU)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recsys._loop import CHECK_EVERY, check_loop_options
from recsys.data import InteractionData, synthetic, synthetic_ctr
from recsys.embedding import PlainEmbedding
from recsys.errors import DataError, TrainingDiverged
from recsys.models import FM, MF
from recsys.train import TrainConfig, TrainHooks, top_k_loss, train_bpr
from recsys.train_ctr import CTRTrainConfig, train_ctr

DATA = synthetic(n_users=80, n_items=60, mean_items_per_user=6.0, seed=0)
PAIRS = DATA.train.nnz  # one BPR triple per train pair and epoch
NO_VALID = InteractionData("no-valid", DATA.n_users, DATA.n_items, DATA.train,
                           sp.csr_matrix(DATA.valid.shape, dtype=np.float32), DATA.test, "keep")


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs on one thread."""


def _mf() -> MF:
    return MF(PlainEmbedding(DATA.rows(), 8, std=0.1, seed=0))


def _all_finite(value: Any) -> bool:
    """Whether every tensor and float anywhere in a saved training state is finite."""
    if torch.is_tensor(value):
        return not value.is_floating_point() or bool(torch.isfinite(value).all())
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_all_finite(v) for k, v in value.items() if k != "best_value" or v != -np.inf)
    if isinstance(value, (list, tuple)):
        return all(_all_finite(v) for v in value)
    return True


class Saved:
    """An ``on_epoch_end`` hook that records the epoch of every state and whether all of it was finite."""

    def __init__(self) -> None:
        self.epochs: list[int] = []
        self.finite: list[bool] = []

    def __call__(self, state: dict[str, Any]) -> None:
        self.epochs.append(state["epoch"])
        self.finite.append(_all_finite(state))


def test_lr_too_high_stops_training_with_training_diverged_naming_the_epoch():
    saved = Saved()
    config = TrainConfig(epochs=4, batch_size=64, lr=1e30, reg=1e-4, eval_every=1, patience=10)
    with pytest.raises(TrainingDiverged, match=r"epoch 1, step \d+: the loss became nan") as caught:
        train_bpr(_mf(), DATA, config, progress=False, hooks=TrainHooks(on_epoch_end=saved))
    message = str(caught.value)
    assert "learning rate (lr=1e+30) is likely too high" in message and "regularisation" in message
    assert "last checkpoint written before it is kept" in message
    assert caught.value.epoch == 1 and caught.value.what == ["loss"] and caught.value.best_epoch is None
    assert saved.epochs == []  # the diverged epoch never reached the checkpoint hook
    assert isinstance(caught.value, ArithmeticError) and not isinstance(caught.value, DataError)


def test_nan_loss_in_a_later_epoch_keeps_the_last_good_checkpoint_and_restores_the_best_state():
    epoch = {"now": 0}
    plain = top_k_loss("bpr")

    def loss(model, users, pos, neg, reg):
        value = plain(model, users, pos, neg, reg)
        return value * float("nan") if epoch["now"] >= 3 else value

    saved = Saved()
    hooks = TrainHooks(loss=loss, on_epoch_start=lambda e: epoch.update(now=e), on_epoch_end=saved)
    model = _mf()
    config = TrainConfig(epochs=6, batch_size=64, lr=0.05, reg=1e-4, eval_every=1, patience=10)
    with pytest.raises(TrainingDiverged, match=r"epoch 3, step 1: the loss became nan") as caught:
        train_bpr(model, DATA, config, progress=False, hooks=hooks)
    assert caught.value.epoch == 3 and caught.value.step == 1
    assert saved.epochs == [1, 2] and all(saved.finite)
    assert caught.value.best_epoch in (1, 2) and "the model holds its best state" in str(caught.value)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())  # the best state, restored


def test_the_first_non_finite_step_is_named_and_the_epoch_stops_within_check_every_steps():
    calls = {"n": 0}
    plain = top_k_loss("bpr")

    def loss(model, users, pos, neg, reg):
        calls["n"] += 1
        value = plain(model, users, pos, neg, reg)
        return value + float("inf") if calls["n"] == 10 else value

    config = TrainConfig(epochs=1, batch_size=2, lr=0.01, reg=1e-4)
    assert PAIRS // 2 > CHECK_EVERY  # the epoch is longer than one check interval
    with pytest.raises(TrainingDiverged, match=r"epoch 1, step 10: the loss became inf"):
        train_bpr(_mf(), DATA, config, progress=False, hooks=TrainHooks(loss=loss))
    assert calls["n"] == CHECK_EVERY  # stopped at the first check, not at the end of the epoch


def test_non_finite_gradient_under_a_finite_loss_is_caught_before_the_checkpoint():
    epoch = {"now": 0}
    plain = top_k_loss("bpr")

    def loss(model, users, pos, neg, reg):
        value = plain(model, users, pos, neg, reg)
        if epoch["now"] == 2:  # d sqrt(x)/dx at 0 is inf, times 0 is nan; the loss itself stays finite
            weight = model.embedding.weights["user"][0, 0]
            value = value + 0.0 * torch.sqrt(weight - weight.detach())
        return value

    saved = Saved()
    hooks = TrainHooks(loss=loss, on_epoch_start=lambda e: epoch.update(now=e), on_epoch_end=saved)
    config = TrainConfig(epochs=4, batch_size=PAIRS, lr=0.01, reg=1e-4)  # one step per epoch
    with pytest.raises(TrainingDiverged, match=r"epoch 2: non-finite values in embedding\.weights\.user "
                                               r"\(parameter, gradient, optimiser state\)") as caught:
        train_bpr(_mf(), NO_VALID, config, progress=False, hooks=hooks)
    assert caught.value.step is None and saved.epochs == [1] and all(saved.finite)


def test_the_click_trainer_is_guarded_by_the_same_loop():
    data = synthetic_ctr(1500, seed=0)
    saved = Saved()
    config = CTRTrainConfig(epochs=3, batch_size=128, lr=1e30, seed=0)
    with pytest.raises(TrainingDiverged, match="epoch 1"):
        train_ctr(FM(PlainEmbedding(data.rows(), 4, seed=0), data.fields), data, config,
                  TrainHooks(on_epoch_end=saved), progress=False)
    assert saved.epochs == []


@pytest.mark.parametrize("option", ["lr", "reg"])
@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_non_finite_lr_and_reg_are_refused_by_every_trainer_config(option, value):
    options = {"lr": 0.01, "reg": 1e-4, option: value}
    with pytest.raises(ValueError, match=f"{option} must be >=? 0 and finite"):
        check_loop_options(1, 1, options["lr"], options["reg"], 1, 1, None)
    with pytest.raises(ValueError, match=f"{option} must be >=? 0 and finite"):
        TrainConfig(epochs=1, batch_size=8, **options)
    with pytest.raises(ValueError, match=f"{option} must be >=? 0 and finite"):
        CTRTrainConfig(**options)


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 0.0])
def test_a_softmax_temperature_that_is_not_finite_and_positive_is_refused(value):
    with pytest.raises(ValueError, match="temperature must be > 0 and finite"):
        TrainConfig(epochs=1, batch_size=8, lr=0.01, reg=0.0, loss="softmax", negatives=4, temperature=value)


def test_fine_tuning_that_diverges_raises_instead_of_scoring_noise():
    from nas.core import Budget, table_specs
    from nas.pipeline.config import FineTuneConfig
    from nas.pipeline.embedding import MaskableEmbedding
    from nas.pipeline.evaluators import FineTuneEvaluator
    from search_spaces import SPACES

    data = DATA
    model = MF(MaskableEmbedding(data.rows(), 8, seed=0))
    space = SPACES.get("per-feature")(table_specs(data.rows()), data.frequencies(), 1, 8)
    allocation = space.to_allocation(space.sample(np.random.default_rng(0), Budget.from_sparsity(0.5, data.rows(), 8)))
    evaluator = FineTuneEvaluator(model, data, config=FineTuneConfig(steps=5, lr=1e30, batch_size=64))
    with pytest.raises(TrainingDiverged, match=r"fine-tuning allocation .* diverged: the (loss|weights) became non-finite"):
        evaluator.fitness([allocation])
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())  # the pre-trained weights are back
