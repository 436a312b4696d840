"""The one-shot DARTS / gumbel-softmax controller: relaxed masks, the budget held by dual ascent, the knapsack choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from controllers import CONTROLLERS, DifferentiableSizes
from controllers.darts import _tilt
from nas.pipeline.config import SearchConfig
from nas.core import Budget, ConfigError
from nas.pipeline.data import load_data
from nas.pipeline.build import build_model, build_search
from nas.pipeline.supernet import train_one_shot
from nas.testing import synthetic_fields
from search_spaces import PerFeatureSpace


def small_space(d_max=16):
    fields = synthetic_fields({"user": 60, "item": 90}, exponent=1.1, seed=0)
    space = PerFeatureSpace(fields.tables, fields.frequencies, 1, d_max)
    return space, Budget.parse("0.75", space.rows(), d_max, 1)


def test_registered_as_one_shot():
    cls = CONTROLLERS.get("darts")
    assert cls is DifferentiableSizes and not cls.multi_trial


def test_the_initial_distribution_spends_the_budget_in_expectation():
    grid = np.arange(1, 65)
    for mean in (2.0, 6.4, 20.0, 60.0):
        probabilities = np.exp(_tilt(grid, mean))
        probabilities /= probabilities.sum()
        assert probabilities @ grid == pytest.approx(mean, rel=1e-3)


def test_soft_mask_is_the_expected_prefix_mask():
    space, budget = small_space()
    controller = DifferentiableSizes(space, budget, relaxation="softmax", warmup=0)
    controller.on_epoch_start(1)
    ids = torch.tensor([0, 5, 59])
    mask = controller._mask("user", ids)
    probabilities = torch.softmax(controller.logits(controller.rows["user"][ids]), dim=-1)
    grid = torch.as_tensor(space.grid)
    for j in range(space.d_max):  # column j is kept with the probability that the size exceeds j
        expected = (probabilities * (grid > j)).sum(dim=-1)
        torch.testing.assert_close(mask[:, j], expected)
    assert bool((mask[:, 1:] <= mask[:, :-1] + 1e-6).all()), "a prefix mask never grows along the columns"


def test_dual_ascent_holds_the_expected_cost_at_the_budget():
    config = SearchConfig(controller="darts", controller_options={"warmup": 1}, seed=0)
    data = load_data(config.data)
    budget, _, controller = build_search(config, data)
    model = build_model(config, data)
    train_config = config.train.to_train_config(0, 1)
    from dataclasses import replace

    train_one_shot(model, data, controller, replace(train_config, epochs=6), progress=False)
    assert controller.expected_cost / budget.max_values == pytest.approx(1.0, abs=0.05)
    decisions = controller.ask(1)[0]
    assert controller.space.cost(decisions) <= budget.max_values


def test_the_choice_follows_the_learned_scores_within_the_budget():
    space, budget = small_space()
    controller = DifferentiableSizes(space, budget)
    log_frequency = space.context()["log_frequency"]
    target = np.where(log_frequency >= np.quantile(log_frequency, 0.8), 8, 1)
    with torch.no_grad():  # make the network's output prefer the target sizes
        controller.free.copy_(torch.where(torch.as_tensor(space.grid)[None, :] == torch.as_tensor(target)[:, None], 10.0, 0.0))
    chosen = controller.choose()
    assert space.cost(chosen) <= budget.max_values
    assert space.cost(target) <= budget.max_values
    np.testing.assert_array_equal(chosen, target)


def test_bad_options_are_config_errors():
    space, budget = small_space()
    with pytest.raises(ConfigError, match="relaxation"):
        DifferentiableSizes(space, budget, relaxation="hard")
    with pytest.raises(ConfigError, match="tau"):
        DifferentiableSizes(space, budget, tau=0.01, tau_min=0.1)
