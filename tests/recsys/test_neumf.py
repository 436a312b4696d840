"""NeuMF: the dense definition, masks on the shared tables, stacked variants, chunked full ranking, learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from nas.core import Allocation
from nas.pipeline.embedding import MaskableEmbedding, stack_row_dims
from recsys.data import synthetic
from recsys.embedding import PlainEmbedding
from recsys.models import Backbone, NeuMF
from recsys.train import TrainConfig, evaluate, train_bpr

ROWS = {"user": 30, "item": 40}
DIM = 8


@pytest.fixture(autouse=True)
def _one_thread(one_thread):  # noqa: ANN001 - the shared fixture of tests/conftest.py
    """Every test here runs on one thread."""


def model_on(embedding, seed: int = 0) -> NeuMF:
    """NeuMF in evaluation mode whose output layer also weighs the tower (it starts at zero)."""
    model = NeuMF(embedding, seed=seed).eval()
    with torch.no_grad():
        model.output.weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(seed))
        model.output.bias.fill_(0.3)
        for layer in model.tower:
            layer.bias.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(seed + 1))
    return model


def dense_scores(model: NeuMF, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """``s(u, i)`` of every row of ``users`` against every row of ``items``, in float64 numpy."""
    weights = [(layer.weight.detach().double().numpy(), layer.bias.detach().double().numpy()) for layer in model.tower]
    h = model.output.weight.detach().double().numpy()[0]
    bias = float(model.output.bias.detach())
    scores = np.zeros((len(users), len(items)))
    for a, u in enumerate(users.astype(np.float64)):
        for b, i in enumerate(items.astype(np.float64)):
            hidden = np.concatenate([u, i])
            for weight, layer_bias in weights:
                hidden = np.maximum(weight @ hidden + layer_bias, 0.0)
            scores[a, b] = h @ np.concatenate([u * i, hidden]) + bias
    return scores


def test_scores_and_loss_equal_the_dense_definition():
    embedding = PlainEmbedding(ROWS, DIM, seed=0)
    model = model_on(embedding)
    assert isinstance(model, Backbone) and model.widths == (16, 8, 4)
    model.grid_values = 50  # forces many item chunks
    users = torch.tensor([0, 3, 7, 29])
    user_table, item_table = embedding.weights["user"].detach().numpy(), embedding.weights["item"].detach().numpy()
    reference = dense_scores(model, user_table[users.numpy()], item_table)
    np.testing.assert_allclose(model.all_scores(users).detach().numpy(), reference, atol=1e-5)
    u, p, n = torch.tensor([0, 1, 2, 2]), torch.tensor([4, 5, 6, 7]), torch.tensor([7, 8, 9, 0])
    pair_scores = np.array([
        dense_scores(model, user_table[[a]], item_table[[b, c]])[0] for a, b, c in zip(u.numpy(), p.numpy(), n.numpy())
    ])
    x = pair_scores[:, 0] - pair_scores[:, 1]
    norms = sum(float(embedding.lookup(t, ids).detach().square().sum()) for t, ids in (("user", u), ("item", p), ("item", n)))
    want = np.log1p(np.exp(-x)).mean() + 0.01 * 0.5 * norms / 4
    assert float(model.bpr_loss(u, p, n, reg=0.01).detach()) == pytest.approx(want, abs=1e-5)


def test_untrained_model_scores_as_mf():
    """The GMF half of the output starts at ones and the tower's at zero: the same ranking as BPR-MF."""
    embedding = PlainEmbedding(ROWS, DIM, seed=0)
    model = NeuMF(embedding)
    users = torch.arange(5)
    torch.testing.assert_close(model.all_scores(users), embedding.lookup("user", users) @ embedding.table("item").T)


def test_all_scores_equal_pair_scores_and_stay_within_the_grid_budget():
    model = model_on(PlainEmbedding(ROWS, DIM, seed=1))
    users = torch.tensor([2, 5, 11])
    pairs = model.score(users[:, None].expand(-1, ROWS["item"]), torch.arange(ROWS["item"]).expand(3, -1))
    whole = model.all_scores(users)
    torch.testing.assert_close(whole, pairs, atol=1e-5, rtol=1e-5)
    seen = []
    tower = model._tower
    model._tower = lambda first: seen.append(first.numel()) or tower(first)
    model.grid_values = 3 * 8 * 7  # seven items per chunk for 3 users and a first layer 8 wide
    torch.testing.assert_close(model.all_scores(users), whole, atol=1e-6, rtol=1e-6)
    assert len(seen) == 6 and max(seen) <= model.grid_values


def test_masks_apply_to_the_table_both_branches_read():
    masked = MaskableEmbedding(ROWS, DIM, seed=2)
    rng = np.random.default_rng(0)
    allocation = Allocation({name: rng.integers(0, DIM + 1, n) for name, n in ROWS.items()})
    masked.set_allocation(allocation)
    model = model_on(masked)
    zeroed = PlainEmbedding(ROWS, DIM, seed=5)
    reference = NeuMF(zeroed).eval()
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        for name, dims in allocation.row_dims.items():
            zeroed.weights[name][torch.arange(DIM) >= torch.tensor(dims)[:, None]] = 0.0
    users = torch.arange(ROWS["user"])
    torch.testing.assert_close(model.all_scores(users), reference.all_scores(users))
    u, p, n = torch.tensor([0, 1, 2]), torch.tensor([4, 5, 6]), torch.tensor([7, 8, 9])
    torch.testing.assert_close(model.bpr_loss(u, p, n, 0.01), reference.bpr_loss(u, p, n, 0.01))


@pytest.mark.parametrize("tables", [("user", "item"), ("item",)])
def test_stacked_variants_equal_each_variant_alone(tables):
    embedding = MaskableEmbedding(ROWS, DIM, seed=3)
    model = model_on(embedding)
    rng = np.random.default_rng(1)
    allocations = [
        Allocation({name: rng.integers(0, DIM + 1, n) if name in tables else np.full(n, DIM) for name, n in ROWS.items()})
        for _ in range(3)
    ]
    users, pos, neg = torch.tensor([0, 5, 9, 9]), torch.tensor([1, 2, 3, 4]), torch.tensor([4, 5, 6, 0])
    ranked = torch.arange(6)
    # The L2 term sums over the stacked vectors: the caller shares reg out, as the supernet does
    # (it stacks every table; a table served unstacked is counted once).
    reg = 0.01 if len(tables) == 2 else 0.0
    singles, scores = [], []
    for allocation in allocations:
        embedding.set_allocation(allocation)
        singles.append(model.bpr_loss(users, pos, neg, reg))
        scores.append(model.all_scores(ranked))
    stacked = stack_row_dims(allocations)
    embedding.set_variants({name: stacked[name] for name in tables})
    torch.testing.assert_close(model.bpr_loss(users, pos, neg, reg / 3), torch.stack(singles).mean())
    torch.testing.assert_close(model.all_scores(ranked), torch.stack(scores), atol=1e-6, rtol=1e-5)


def test_bpr_training_beats_random_ranking_clearly():
    data = synthetic(n_users=300, n_items=400, mean_items_per_user=15.0, seed=0)
    model = NeuMF(PlainEmbedding(data.rows(), 16, seed=0))
    config = TrainConfig(epochs=20, batch_size=256, lr=0.01, reg=1e-4, eval_every=100, patience=100, seed=0)
    train_bpr(model, data, config, progress=False)  # 13 steps an epoch: 260 steps
    recall = evaluate(model, data, "test", ks=(20,))["recall@20"]
    assert recall > 5 * random_recall(data, 20), recall


def random_recall(data, k: int) -> float:
    """Expected Recall@k of a random ranking: k of each user's unexcluded items are drawn."""
    users = np.flatnonzero(np.diff(data.test.indptr))
    candidates = data.n_items - np.diff(data.train.indptr)[users]
    return float(np.mean(np.minimum(k, candidates) / candidates))


def test_state_dict_round_trip():
    data = synthetic(n_users=60, n_items=80, mean_items_per_user=8.0, seed=1)
    model = NeuMF(PlainEmbedding(data.rows(), 8, seed=0), dropout=0.2)
    train_bpr(model, data, TrainConfig(epochs=1, batch_size=64, lr=0.01, reg=1e-4, seed=0), progress=False)
    restored = NeuMF(PlainEmbedding(data.rows(), 8, seed=9), dropout=0.2, seed=9)
    restored.load_state_dict(st_load(st_save(dict(model.state_dict()))), strict=True)
    users = torch.arange(10)
    torch.testing.assert_close(restored.eval().all_scores(users), model.eval().all_scores(users), rtol=0, atol=0)


def test_dropout_only_in_training_and_bad_options_are_refused():
    model = NeuMF(PlainEmbedding(ROWS, DIM, seed=0), dropout=0.5)
    with torch.no_grad():
        model.output.weight.fill_(1.0)
    users, pos, neg = torch.arange(8), torch.arange(8), torch.arange(8, 16)
    torch.manual_seed(0)
    assert model.bpr_loss(users, pos, neg, 0.0) != model.bpr_loss(users, pos, neg, 0.0)
    model.eval()
    assert model.bpr_loss(users, pos, neg, 0.0) == model.bpr_loss(users, pos, neg, 0.0)
    with pytest.raises(ValueError, match="mlp_layers"):
        NeuMF(PlainEmbedding(ROWS, DIM), mlp_layers=0)
    with pytest.raises(ValueError, match="dropout"):
        NeuMF(PlainEmbedding(ROWS, DIM), dropout=1.0)
    with pytest.raises(ValueError, match="item"):
        NeuMF(PlainEmbedding({"user": 3}, DIM))
    with pytest.raises(TypeError, match="EmbeddingProvider"):
        NeuMF(object())  # type: ignore[arg-type]
