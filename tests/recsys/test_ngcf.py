"""NGCF: the dense definition (self loops, bi-interaction), masks before propagation, stacked variants, caching, learning."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from nas.core import Allocation
from nas.pipeline.embedding import MaskableEmbedding, stack_row_dims
from recsys.data import synthetic
from recsys.embedding import PlainEmbedding
from recsys.models import NGCF, Backbone
from recsys.train import TrainConfig, evaluate, train_bpr

ROWS = {"user": 30, "item": 40}
DIM = 8


@pytest.fixture(autouse=True)
def _one_thread(one_thread):  # noqa: ANN001 - the shared fixture of tests/conftest.py
    """Every test here runs on one thread."""


def graph(users=30, items=40, seed=0) -> sp.csr_matrix:
    matrix = sp.random(users, items, density=0.1, random_state=seed, format="csr")
    matrix.data[:] = 1.0
    return matrix


def model_on(embedding, train: sp.csr_matrix, layers: int = 3, seed: int = 0) -> NGCF:
    """NGCF in evaluation mode (no dropout) with non-zero biases, so the reference checks them too."""
    model = NGCF(embedding, train, layers=layers, seed=seed).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in (*model.transform, *model.interaction):
            layer.bias.normal_(0.0, 0.1, generator=generator)
    return model


def dense_reference(model: NGCF, train: sp.csr_matrix, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Final vectors of every node, ``(n_users + n_items, (L + 1)·d)``, from a dense ``Â`` in float64."""
    n_u, n_i = train.shape
    adjacency = np.eye(n_u + n_i)
    adjacency[:n_u, n_u:] = train.toarray()
    adjacency[n_u:, :n_u] = train.toarray().T
    inverse = 1 / np.sqrt(adjacency.sum(axis=1))
    normalized = inverse[:, None] * adjacency * inverse[None, :]
    layer = np.concatenate([users, items]).astype(np.float64)
    outputs = [layer]
    for transform, interaction in zip(model.transform, model.interaction):
        w1, b1 = transform.weight.detach().double().numpy(), transform.bias.detach().double().numpy()
        w2, b2 = interaction.weight.detach().double().numpy(), interaction.bias.detach().double().numpy()
        side = normalized @ layer
        pre = side @ w1.T + b1 + (side * layer) @ w2.T + b2
        layer = np.where(pre > 0, pre, 0.2 * pre)
        outputs.append(layer / np.maximum(np.linalg.norm(layer, axis=1, keepdims=True), 1e-12))
    return np.concatenate(outputs, axis=1)


def test_scores_and_loss_equal_the_dense_definition():
    train = graph()
    embedding = PlainEmbedding(ROWS, DIM, seed=0)
    model = model_on(embedding, train)
    assert isinstance(model, Backbone)
    reference = dense_reference(model, train, embedding.weights["user"].detach().numpy(),
                                embedding.weights["item"].detach().numpy())
    final_u, final_i = model.propagate()
    assert final_u.shape == (30, 4 * DIM)
    np.testing.assert_allclose(torch.cat([final_u, final_i]).detach().numpy(), reference, atol=1e-5)
    ref_u, ref_i = reference[:30], reference[30:]
    users = torch.tensor([0, 3, 29])
    np.testing.assert_allclose(model.all_scores(users).detach().numpy(), ref_u[users.numpy()] @ ref_i.T, atol=1e-5)
    u, p, n = torch.tensor([0, 1, 2, 2]), torch.tensor([4, 5, 6, 7]), torch.tensor([7, 8, 9, 0])
    x = (ref_u[u.numpy()] * (ref_i[p.numpy()] - ref_i[n.numpy()])).sum(axis=1)
    with torch.no_grad():
        norms = sum(float(embedding.lookup(t, ids).square().sum()) for t, ids in (("user", u), ("item", p), ("item", n)))
        loss = float(model.bpr_loss(u, p, n, reg=0.01))
    assert loss == pytest.approx(np.log1p(np.exp(-x)).mean() + 0.01 * 0.5 * norms / 4, abs=1e-5)


def test_all_scores_equal_pair_scores():
    model = model_on(PlainEmbedding(ROWS, DIM, seed=1), graph(seed=1))
    users = torch.tensor([2, 5, 11])
    pairs = model.score(users[:, None].expand(-1, ROWS["item"]), torch.arange(ROWS["item"]).expand(3, -1))
    torch.testing.assert_close(model.all_scores(users), pairs, atol=1e-5, rtol=1e-5)


def test_masks_apply_before_propagation():
    train = graph()
    masked = MaskableEmbedding(ROWS, DIM, seed=2)
    rng = np.random.default_rng(0)
    allocation = Allocation({name: rng.integers(0, DIM + 1, n) for name, n in ROWS.items()})
    masked.set_allocation(allocation)
    model = model_on(masked, train)
    zeroed = PlainEmbedding(ROWS, DIM, seed=5)
    reference = NGCF(zeroed, train).eval()
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
    model = model_on(embedding, graph())
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
    torch.testing.assert_close(model.all_scores(ranked), torch.stack(scores), atol=1e-5, rtol=1e-5)


def test_evaluation_reuses_the_propagation_only_while_tables_and_weights_are_unchanged():
    embedding = MaskableEmbedding(ROWS, DIM, seed=0)
    model = NGCF(embedding, graph()).eval()
    users = torch.arange(5)
    full = model.all_scores(users)
    cached = model._cache
    torch.testing.assert_close(model.all_scores(users), full)
    assert model._cache is cached, "an unchanged model must not propagate again"
    embedding.set_allocation(Allocation({"user": np.full(30, 2), "item": np.full(40, 2)}))
    masked = model.all_scores(users)
    assert not torch.allclose(masked, full), "a new allocation must not be served from the old propagation"
    with torch.no_grad():
        model.transform[1].weight.mul_(-1.0)
    assert not torch.allclose(model.all_scores(users), masked), "new layer weights must not be served stale"


def test_dropout_only_in_training_and_gradients_reach_everything():
    train = graph()
    embedding = PlainEmbedding(ROWS, DIM, seed=0)
    model = NGCF(embedding, train, message_dropout=0.3, node_dropout=0.2)
    users, pos, neg = torch.arange(8), torch.arange(8), torch.arange(8, 16)
    torch.manual_seed(0)
    first = model.bpr_loss(users, pos, neg, 1e-4)
    assert first != model.bpr_loss(users, pos, neg, 1e-4)
    first.backward()
    assert int((embedding.weights["item"].grad.abs().sum(dim=1) > 0).sum()) > 16  # spread by the graph
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.interaction.parameters())
    model.eval()
    assert model.bpr_loss(users, pos, neg, 1e-4) == model.bpr_loss(users, pos, neg, 1e-4)


def test_bpr_training_beats_random_ranking_clearly():
    data = synthetic(n_users=300, n_items=400, mean_items_per_user=15.0, seed=0)
    model = NGCF(PlainEmbedding(data.rows(), 16, seed=0), data.train)
    config = TrainConfig(epochs=20, batch_size=256, lr=0.01, reg=1e-4, eval_every=100, patience=100, seed=0)
    train_bpr(model, data, config, progress=False)  # 13 steps an epoch: 260 steps
    recall = evaluate(model, data, "test", ks=(20,))["recall@20"]
    users = np.flatnonzero(np.diff(data.test.indptr))
    candidates = data.n_items - np.diff(data.train.indptr)[users]
    random = float(np.mean(np.minimum(20, candidates) / candidates))  # expected Recall@20 of a random ranking
    assert recall > 5 * random, (recall, random)


def test_state_dict_round_trip():
    data = synthetic(n_users=60, n_items=80, mean_items_per_user=8.0, seed=1)
    model = NGCF(PlainEmbedding(data.rows(), 8, seed=0), data.train)
    train_bpr(model, data, TrainConfig(epochs=1, batch_size=64, lr=0.01, reg=1e-4, seed=0), progress=False)
    restored = NGCF(PlainEmbedding(data.rows(), 8, seed=9), data.train, seed=9)
    state = st_load(st_save(dict(model.state_dict())))
    assert not any(key.startswith("graph.") or key.startswith("self_") for key in state), "the graph is rebuilt, not saved"
    restored.load_state_dict(state, strict=True)
    users = torch.arange(10)
    torch.testing.assert_close(restored.eval().all_scores(users), model.eval().all_scores(users), rtol=0, atol=0)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="graph"):
        NGCF(PlainEmbedding(ROWS, DIM), graph(users=31))
    with pytest.raises(ValueError, match="message_dropout"):
        NGCF(PlainEmbedding(ROWS, DIM), graph(), message_dropout=1.0)
    with pytest.raises(ValueError, match="node_dropout"):
        NGCF(PlainEmbedding(ROWS, DIM), graph(), node_dropout=-0.1)
    with pytest.raises(TypeError, match="EmbeddingProvider"):
        NGCF(object(), graph())  # type: ignore[arg-type]
