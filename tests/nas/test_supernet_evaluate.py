"""Stacked variants, the sandwich supernet, the evaluators and the resumable trial loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from controllers import CONTROLLERS
from nas.core import Allocation, Budget, ResumeError, table_specs
from nas.pipeline.embedding import MaskableEmbedding, stack_row_dims
from nas.pipeline.config import FineTuneConfig
from nas.pipeline.evaluators import FineTuneEvaluator, SupernetEvaluator
from nas.pipeline.runs import Run
from nas.pipeline.config import SupernetOptions
from nas.pipeline.supernet import SandwichLoss, train_supernet
from nas.pipeline.trials import ranked_candidates, run_trials
from recsys.data import synthetic
from recsys.models import MF
from recsys.train import TrainConfig, train_bpr
from search_spaces import SPACES

D = 16


@pytest.fixture(autouse=True)
def _one_thread(one_thread):  # noqa: ANN001 - the shared fixture of tests/conftest.py
    """Every test here runs on one thread."""


@pytest.fixture(scope="module")
def data():
    return synthetic(n_users=300, n_items=400, mean_items_per_user=20.0, seed=1)


def _space(data):
    return SPACES.get("per-feature")(table_specs(data.rows()), data.frequencies(), 1, D)


def _budget(data, sparsity=0.8):
    return Budget.from_sparsity(sparsity, data.rows(), D)


def _allocations(data, n, seed=0, sparsity=0.8):
    space, budget = _space(data), _budget(data, sparsity)
    rng = np.random.default_rng(seed)
    return [space.to_allocation(space.sample(rng, budget)) for _ in range(n)]


CONFIG = TrainConfig(epochs=6, batch_size=256, lr=5e-3, reg=1e-4, eval_every=2, patience=10, seed=0)


@pytest.fixture(scope="module")
def trained(data):
    model = MF(MaskableEmbedding(data.rows(), D, seed=0))
    train_bpr(model, data, CONFIG, progress=False)
    return model


def test_stacked_variants_serve_each_allocation_exactly(data):
    embedding = MaskableEmbedding(data.rows(), D, seed=3)
    allocations = _allocations(data, 3)
    ids = torch.arange(0, 300, 7)
    embedding.set_variants(stack_row_dims(allocations))
    stacked_lookup, stacked_table = embedding.lookup("user", ids), embedding.table("item")
    assert stacked_lookup.shape == (3, len(ids), D)
    for a, allocation in enumerate(allocations):
        embedding.set_allocation(allocation)
        assert torch.equal(stacked_lookup[a], embedding.lookup("user", ids))
        assert torch.equal(stacked_table[a], embedding.table("item"))


def test_stacked_loss_is_the_mean_of_the_variants_losses(data):
    model = MF(MaskableEmbedding(data.rows(), D, seed=3))
    allocations = _allocations(data, 4)
    users, pos, neg = torch.arange(50), torch.arange(50), torch.arange(50, 100)
    model.embedding.set_variants(stack_row_dims(allocations))
    stacked = model.bpr_loss(users, pos, neg, 0.1 / len(allocations))
    each = []
    for allocation in allocations:
        model.embedding.set_allocation(allocation)
        each.append(model.bpr_loss(users, pos, neg, 0.1))
    assert stacked.item() == pytest.approx(torch.stack(each).mean().item(), rel=1e-6)


def test_sandwich_pool_depends_on_seed_and_epoch_only(data):
    def pool(seed, epoch):
        loss = SandwichLoss(_space(data), _budget(data), SupernetOptions(pool=4), seed)
        loss.on_epoch_start(epoch)
        return loss._stack["user"].clone()

    assert torch.equal(pool(0, 2), pool(0, 2))
    assert not torch.equal(pool(0, 2), pool(0, 3))
    stack = pool(0, 1)
    assert (stack[0] == D).all() and (stack[1] == 1).all(), "the largest and the smallest come first"


def test_sandwich_supernet_serves_small_allocations_better_than_plain_training(data):
    """The point of the sandwich: masked allocations keep much more of the full model's quality."""
    allocations = _allocations(data, 4, sparsity=0.9)
    fitness = {}
    for mode in ("full", "sandwich"):
        model = MF(MaskableEmbedding(data.rows(), D, seed=0))
        train_supernet(model, data, _space(data), _budget(data, 0.9), CONFIG, SupernetOptions(mode=mode), progress=False)
        fitness[mode] = SupernetEvaluator(model, data).fitness(allocations)
    assert (fitness["sandwich"] > fitness["full"]).all(), fitness


def test_supernet_evaluator_full_allocation_is_one_and_answers_from_cache(data, trained):
    evaluator = SupernetEvaluator(trained, data)
    full = Allocation({name: np.full(rows, D, dtype=np.int64) for name, rows in data.rows().items()})
    allocations = _allocations(data, 3)
    values = evaluator.fitness([full, *allocations, allocations[0]])
    assert values[0] == pytest.approx(1.0)
    assert values[1] == values[4]
    assert evaluator.measured == 4
    evaluator.fitness(allocations)
    assert evaluator.measured == 4, "measured allocations come from the cache"
    assert trained.embedding.allocation is None, "the model is left as it was"


def test_batched_pass_gives_the_unbatched_fitness(data, trained):
    allocations = _allocations(data, 5, seed=4)
    one = SupernetEvaluator(trained, data, batch=1).fitness(allocations)
    many = SupernetEvaluator(trained, data, batch=3).fitness(allocations)
    np.testing.assert_allclose(many, one, rtol=1e-5)


def test_finetune_evaluator_restores_weights_and_ignores_order(data, trained):
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    allocations = _allocations(data, 2, seed=5)
    config = FineTuneConfig(steps=20, lr=0.5, reg=1e-4)
    forward = FineTuneEvaluator(trained, data, config=config).fitness(allocations)
    backward = FineTuneEvaluator(trained, data, config=config).fitness(allocations[::-1])[::-1]
    np.testing.assert_array_equal(forward, backward)
    for key, value in trained.state_dict().items():
        assert torch.equal(value, before[key]), key
    masked = SupernetEvaluator(trained, data).fitness(allocations)
    assert not np.allclose(forward, masked), "fine-tuning changes the weights before ranking"


def test_trial_loop_logs_candidates_and_refuses_a_different_controller_on_resume(tmp_path, data, trained):
    space, budget = _space(data), _budget(data)
    run = Run.create(tmp_path, {"test": 1}, name="r")
    evaluator = SupernetEvaluator(trained, data)
    run_trials(run, CONTROLLERS.get("random")(space, budget, seed=0), space, budget, evaluator, 5, 2, progress=False)
    trials = list(run.events("trial"))
    assert [(e["round"], e["index"]) for e in trials] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)]
    ranked = ranked_candidates(run)
    assert [c.fitness for c in ranked] == sorted((e["fitness"] for e in trials), reverse=True)
    assert ranked[0].load(run).fingerprint() == ranked[0].fingerprint
    # The same search asked of another seed proposes other allocations: the log does not fit it.
    run.path("checkpoints", "controller.safetensors").unlink()
    with pytest.raises(ResumeError, match="not deterministic"):
        run_trials(run, CONTROLLERS.get("random")(space, budget, seed=1), space, budget, evaluator, 5, 2, progress=False)


def test_prefix_sum_loss_equals_the_stacked_variants_loss_and_gradients(data):
    """MF's shortcut for many prefix variants gives the stacked path's loss and gradients."""
    allocations = _allocations(data, 4, seed=6)
    stack = stack_row_dims(allocations)
    users, pos, neg = torch.arange(0, 200, 3), torch.arange(0, 134, 2), torch.arange(100, 167)
    results = []
    for shortcut in (False, True):
        model = MF(MaskableEmbedding(data.rows(), D, seed=3))
        if shortcut:
            loss = model.prefix_bpr_loss(users, pos, neg, 0.1, lambda table, ids: stack[table][:, ids].long())
        else:
            model.embedding.set_variants(stack)
            loss = model.bpr_loss(users, pos, neg, 0.1 / len(allocations))
        loss.backward()
        results.append((loss.item(), {k: p.grad.clone() for k, p in model.named_parameters()}))
    (stacked, stacked_grads), (prefix, prefix_grads) = results
    assert prefix == pytest.approx(stacked, rel=1e-5)
    for key in stacked_grads:
        torch.testing.assert_close(prefix_grads[key], stacked_grads[key], rtol=1e-4, atol=1e-7)


def test_the_sandwich_can_train_on_the_controllers_own_proposals():
    from controllers import BET
    from nas.testing import synthetic_fields
    from search_spaces import PerFeatureSpace

    fields = synthetic_fields({"user": 60, "item": 90}, exponent=1.1, seed=0)
    space = PerFeatureSpace(fields.tables, fields.frequencies, 1, 16)
    budget = Budget.parse("0.8", space.rows(), 16, 1)
    bet = BET(space, budget, seed=3)
    loss = SandwichLoss(space, budget, SupernetOptions(pool=4, proposals="controller"), seed=7, proposals=bet.supernet_proposals)
    loss.on_epoch_start(2)
    expected = bet.sampler.sample(np.random.default_rng([7, 2]), 4).decisions
    # The pool after the largest and the smallest allocation is BET's draws from the epoch's generator.
    np.testing.assert_array_equal(loss._stack["user"][2:].numpy(), expected[:, :60])
    np.testing.assert_array_equal(loss._stack["item"][2:].numpy(), expected[:, 60:])


def test_a_controller_without_proposals_refuses_to_feed_the_supernet_before_training():
    from nas.pipeline.config import SearchConfig
    from nas.core import ConfigError
    from nas.pipeline.data import load_data
    from nas.pipeline.build import build_search

    config = SearchConfig(controller="rl", supernet=SupernetOptions(proposals="controller"))
    with pytest.raises(ConfigError, match="no proposal distribution"):
        build_search(config, load_data(config.data))


def test_a_run_recorded_before_an_option_existed_resumes(tmp_path):
    from nas.pipeline.config import SearchConfig
    from nas.pipeline.runs import Run

    current = SearchConfig().to_dict()
    older = {**current, "supernet": {k: v for k, v in current["supernet"].items() if k not in ("proposals", "epochs")}}
    Run.create(tmp_path, older, name="r")
    Run.create(tmp_path, current, name="r", upgrade=SearchConfig.upgrade)  # no ResumeError


def test_a_top_k_run_recorded_before_click_data_resumes(tmp_path):
    """Its data section lacks the click options and its d_max and training are written out: it loads unchanged."""
    from nas.pipeline.config import SearchConfig
    from nas.pipeline.runs import Run

    current = SearchConfig().to_dict()
    click_options = ("label_col", "categorical", "numeric", "label_threshold", "oov_threshold")
    older = {**current, "data": {k: v for k, v in current["data"].items() if k not in click_options}}
    assert SearchConfig.from_dict(older) == SearchConfig() and older["d_max"] == 64 and older["train"]["epochs"] == 40
    Run.create(tmp_path, older, name="r")
    Run.create(tmp_path, current, name="r", upgrade=SearchConfig.upgrade)  # no ResumeError
