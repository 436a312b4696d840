"""Tasks: the click task's sandwich loss, fitness and fine-tuning agree with their one-at-a-time definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nas.pipeline.backbones import BACKBONES, backbone_task, models_of_task
from nas.core import Budget, ConfigError
from nas.core.controller import OneShotController
from nas.core.tables import table_specs
from nas.pipeline.embedding import MaskableEmbedding, stack_row_dims
from nas.pipeline.config import FineTuneConfig
from nas.pipeline.evaluators import FineTuneEvaluator, SupernetEvaluator
from nas.pipeline.tasks import ClickTask, TopKTask, task_for
from recsys.data import CTRData, synthetic, synthetic_ctr
from recsys.models import MF
from recsys.train_ctr import evaluate_ctr
from search_spaces import PerFeatureSpace


@pytest.fixture(scope="module")
def clicks() -> CTRData:
    return synthetic_ctr(n_rows=1200, fields={"user": 60, "item": 80, "genre": 8, "flag": 2}, seed=3)


def _model(data: CTRData, name: str = "deepfm") -> torch.nn.Module:
    torch.manual_seed(0)
    return BACKBONES.get(name)(MaskableEmbedding(data.rows(), 8, std=0.1, seed=0), data)


def _allocations(data: CTRData, count: int, seed: int = 0) -> list:
    space = PerFeatureSpace(table_specs(data.rows()), data.frequencies(), 0, 8)
    budget = Budget.parse("0.6", data.rows(), 8, 0)
    rng = np.random.default_rng(seed)
    return [space.to_allocation(space.sample(rng, budget)) for _ in range(count)]


def test_backbones_know_their_task_and_tasks_know_their_data(clicks):
    assert models_of_task("click") == ["dcnv2", "deepfm", "fm"]
    assert {"mf", "lightgcn", "neumf", "ngcf"} <= set(models_of_task("top-k"))
    assert backbone_task("deepfm") == "click" and backbone_task("mf") == "top-k"
    assert isinstance(task_for(clicks), ClickTask)
    assert isinstance(task_for(synthetic(n_users=30, n_items=40, mean_items_per_user=4.0)), TopKTask)
    with pytest.raises(ConfigError, match="no task learns from"):
        task_for({"user": 3})


@pytest.mark.parametrize("name", ["fm", "deepfm", "dcnv2"])
def test_the_click_sandwich_is_the_mean_of_its_variants_losses(clicks, name):
    """ctr_loss already averages over stacked variants: reg keeps its per-example weight (it is not divided)."""
    model, task = _model(clicks, name), ClickTask(clicks)
    allocations = _allocations(clicks, 3)
    x, y = torch.from_numpy(clicks.x["train"][:200].copy()), torch.from_numpy(clicks.y["train"][:200].copy())
    stacked = task.variants_loss(model, stack_row_dims(allocations), (x, y), 0.1)
    each = []
    for allocation in allocations:
        model.embedding.set_allocation(allocation)
        each.append(model.ctr_loss(x, y, 0.1))
    model.embedding.set_allocation(None)
    torch.testing.assert_close(stacked, torch.stack(each).mean())
    assert model.embedding.allocation is None and not model.embedding._variants


def test_click_fitness_is_the_auc_ratio_alone_or_stacked(clicks):
    model = _model(clicks)
    allocations = _allocations(clicks, 4, seed=1)
    one = SupernetEvaluator(model, clicks, batch=1).fitness(allocations)
    many = SupernetEvaluator(model, clicks, batch=3).fitness(allocations)
    np.testing.assert_allclose(one, many, rtol=1e-6)
    full = evaluate_ctr(model, clicks, "valid")["auc"]
    model.embedding.set_allocation(allocations[0])
    assert one[0] == pytest.approx(evaluate_ctr(model, clicks, "valid")["auc"] / full)
    model.embedding.set_allocation(None)


def test_click_fine_tuning_does_not_depend_on_the_order(clicks):
    model = _model(clicks, "fm")
    allocations = _allocations(clicks, 2, seed=2)
    config = FineTuneConfig(steps=5, batch_size=128, lr=0.05)
    forward = FineTuneEvaluator(model, clicks, config=config).fitness(allocations)
    backward = FineTuneEvaluator(model, clicks, config=config).fitness(allocations[::-1])[::-1]
    np.testing.assert_allclose(forward, backward)
    epochs = FineTuneEvaluator(model, clicks, config=FineTuneConfig(epochs=1, batch_size=256)).fitness(allocations)
    assert np.isfinite(epochs).all()


def test_click_validation_with_one_class_cannot_measure_fitness(clicks):
    y = {s: clicks.y[s] for s in ("train", "valid", "test")}
    y["valid"] = np.ones_like(y["valid"])
    one_class = CTRData(clicks.name, clicks.fields, clicks.cardinalities, clicks.x, y)
    assert not ClickTask(one_class).has_validation
    with pytest.raises(ConfigError, match="only one class"):
        SupernetEvaluator(_model(one_class), one_class)


class BprOnly(OneShotController):
    """A one-shot controller written for BPR only: it implements ``supernet_loss``, not ``relaxed_loss``."""

    name = "bpr-only"

    def supernet_loss(self, model, users, pos, neg, reg):  # noqa: ANN001, ANN201
        return model.bpr_loss(users, pos, neg, reg)

    def choose(self):  # noqa: ANN201
        return np.full(self.space.n_decisions, self.space.grid[0])


def test_a_one_shot_controller_written_for_bpr_only_says_so_on_click_data(clicks):
    class Nothing(OneShotController):
        name = "nothing"

        def choose(self):  # noqa: ANN201
            return np.zeros(0)

    space = PerFeatureSpace(table_specs(clicks.rows()), clicks.frequencies(), 0, 8)
    budget = Budget.parse("0.6", clicks.rows(), 8, 0)
    loss = ClickTask(clicks).one_shot_loss(BprOnly(space, budget))
    x, y = torch.from_numpy(clicks.x["train"][:8].copy()), torch.from_numpy(clicks.y["train"][:8].copy())
    with pytest.raises(ConfigError, match="implement relaxed_loss"):
        loss(_model(clicks, "fm"), x, y, 0.0)
    with pytest.raises(TypeError, match="must implement relaxed_loss"):
        Nothing(space, budget)


def test_a_one_shot_controller_written_for_bpr_only_says_so_under_the_softmax():
    data = synthetic(n_users=40, n_items=60, mean_items_per_user=5.0, seed=1)
    space = PerFeatureSpace(table_specs(data.rows()), data.frequencies(), 1, 8)
    budget = Budget.from_sparsity(0.8, data.rows(), 8)
    loss = TopKTask(data, "softmax").one_shot_loss(BprOnly(space, budget))
    model = MF(MaskableEmbedding(data.rows(), 8, seed=0))
    with pytest.raises(ConfigError, match="implement relaxed_loss"):
        loss(model, torch.tensor([0]), torch.tensor([1]), torch.tensor([2]), 0.0)
    assert TopKTask(data).one_shot_loss(BprOnly(space, budget)).__name__ == "supernet_loss"
