"""Pruning baselines: the kept elements are the best-scored, within the budget, masks paid for under byte budgets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from controllers.pruning import LearnableThresholds, keep_largest, masked_value_limit
from nas.pipeline.config import SearchConfig, TrainingOptions
from nas.core import Budget, BudgetError
from nas.core.accounting import fixed_bytes
from nas.pipeline.data import DataSpec
from nas.pipeline.search import run_search
from nas.artifact.serving import PackedEmbedding
from nas.testing import check_controller
from nas.testing.controllers import _TinySupernet, conformance_cases

TINY = dict(
    data=DataSpec("synthetic", extra={"n_users": 300, "n_items": 400, "mean_items_per_user": 15.0}),
    retrain_top=1, fitness_users=0, threads=1, d_max=16,
    train=TrainingOptions(epochs=4, batch_size=512, eval_every=1, patience=5),
)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_keep_largest_keeps_the_floor_then_the_best_scores_within_the_limit(data):
    rows = data.draw(st.lists(st.integers(1, 12), min_size=1, max_size=3), label="rows")
    width = data.draw(st.integers(1, 8), label="width")
    d_min = data.draw(st.integers(0, width), label="d_min")
    seed = data.draw(st.integers(0, 2**31), label="seed")
    rng = np.random.default_rng(seed)
    scores = {f"t{i}": np.round(rng.exponential(size=(n, width)), 3) * rng.integers(0, 2, size=(n, width)) for i, n in enumerate(rows)}
    floor = sum(rows) * d_min
    limit = data.draw(st.integers(floor, sum(rows) * width), label="limit")
    allocation = keep_largest(scores, limit, d_min)
    masks = allocation.element_masks
    assert allocation.cost <= limit
    for name, mask in masks.items():
        assert (mask.sum(axis=1) >= d_min).all(), "every row keeps its floor"
        assert (allocation.row_dims[name] >= max(d_min, 0)).all()
    # Beyond the floor, nothing dropped scores higher than anything kept, and nothing positive is left while room remains.
    floor_masks = keep_largest(scores, floor, d_min).element_masks
    kept = np.concatenate([scores[n][masks[n] & ~floor_masks[n]] for n in scores])
    dropped = np.concatenate([scores[n][~masks[n]] for n in scores])
    if kept.size and dropped.size:
        assert kept.min() >= dropped.max()
    if allocation.cost < limit:
        assert not (dropped > 0).any()


def test_a_byte_budget_pays_for_the_masks():
    rows = {"user": 1000, "item": 2000}
    budget = Budget.parse("100KB", rows, 64, 1)
    overhead = fixed_bytes(rows, 64, element_mask=True)
    assert masked_value_limit(budget) == (100_000 - overhead) // 4 < budget.max_values
    assert masked_value_limit(Budget.parse("0.9", rows, 64, 1)) == Budget.parse("0.9", rows, 64, 1).max_values
    with pytest.raises(BudgetError, match="element masks"):
        masked_value_limit(Budget.parse(f"{overhead + 100}B", rows, 64, 1))


def test_pep_without_warmup_conforms_and_freezes_its_mask_at_the_budget():
    check_controller(LearnableThresholds, warmup=0, ramp=0)
    _, space, _, budget = next(case for case in conformance_cases() if case[0] == "per-feature" and case[2] == "middle")
    controller = LearnableThresholds(space, budget, warmup=0, ramp=2, lr=0.2)
    supernet = _TinySupernet(space, seed=0)
    assert not controller.settled, "a validation before the mask is frozen measures a model still being pruned"
    for _ in range(60):
        supernet.train(controller, 5)
        if controller.frozen is not None:
            break
    assert controller.frozen is not None, f"thresholds never met the budget (kept share {controller.kept_share:.3f})"
    assert controller.settled
    # The frozen mask spends the budget: what the thresholds kept, then the elements nearest below them.
    assert sum(int(m.sum()) for m in controller.frozen.values()) == controller.limit
    threshold = torch.sigmoid(controller.threshold.detach())
    for name, weight in supernet.model.embedding.weights.items():
        margin = weight.detach().abs() - threshold
        kept, dropped = margin[controller.frozen[name]], margin[~controller.frozen[name]]
        assert bool((margin > 0)[~controller.frozen[name]].sum() == 0), "every element above its threshold is kept"
        if space.d_min == 0 and dropped.numel():
            assert float(kept.min()) >= float(dropped.max())
    controller.finish(supernet.model)
    controller.allocation().validate(budget)


@pytest.mark.parametrize("controller", ["magprune", "pep"])
def test_pruned_runs_export_element_masks_within_a_byte_budget(controller, tmp_path):
    metrics = run_search(SearchConfig(controller=controller, budget="60KB", **TINY), runs_root=tmp_path, progress=False).to_dict()
    export = tmp_path / metrics["run"].split("/")[-1] / "export"
    manifest = json.loads((export / "manifest.json").read_text())
    assert metrics["export"]["bytes_stored"] <= 60_000
    assert all(spec["element_mask"] for spec in manifest["tables"].values())
    packed = PackedEmbedding.load(export)
    assert packed.lookup("user", torch.tensor([0, 1, 2])).shape == (3, 16)
    for layout in ("dense", "tiered"):  # element masks served by every layout, bit for bit (one search for all)
        served = PackedEmbedding.load(export, layout=layout)
        for name in packed.tables:
            assert torch.equal(served.table(name).view(torch.int32), packed.table(name).view(torch.int32)), (layout, name)
            ids = torch.randint(0, packed.rows[name], (4, 5), generator=torch.Generator().manual_seed(0))
            assert torch.equal(served.lookup(name, ids).view(torch.int32), packed.lookup(name, ids).view(torch.int32))
