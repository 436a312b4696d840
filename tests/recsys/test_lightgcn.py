"""LightGCN: propagation equals the dense definition, variants travel together, evaluation never serves stale scores."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from nas.core import Allocation
from nas.pipeline.embedding import MaskableEmbedding
from recsys.embedding import PlainEmbedding
from recsys.models import LightGCN


def graph(users=30, items=40, seed=0) -> sp.csr_matrix:
    matrix = sp.random(users, items, density=0.1, random_state=seed, format="csr")
    matrix.data[:] = 1.0
    return matrix


def dense_reference(train: sp.csr_matrix, users: np.ndarray, items: np.ndarray, layers: int) -> np.ndarray:
    n_u, n_i = train.shape
    adjacency = np.zeros((n_u + n_i, n_u + n_i))
    adjacency[:n_u, n_u:] = train.toarray()
    adjacency[n_u:, :n_u] = train.toarray().T
    degree = adjacency.sum(axis=1)
    inverse = np.where(degree > 0, 1 / np.sqrt(np.maximum(degree, 1e-12)), 0.0)
    normalized = inverse[:, None] * adjacency * inverse[None, :]
    layer = np.concatenate([users, items]).astype(np.float64)
    total = layer.copy()
    for _ in range(layers):
        layer = normalized @ layer
        total += layer
    return total / (layers + 1)


def test_propagation_equals_the_dense_definition():
    train = graph()
    embedding = PlainEmbedding({"user": 30, "item": 40}, 8, seed=0)
    model = LightGCN(embedding, train, layers=3)
    final_u, final_i = model.propagate()
    reference = dense_reference(train, embedding.weights["user"].detach().numpy(), embedding.weights["item"].detach().numpy(), 3)
    np.testing.assert_allclose(torch.cat([final_u, final_i]).detach().numpy(), reference, atol=1e-6)


def test_stacked_variants_propagate_like_each_alone():
    train = graph()
    embedding = MaskableEmbedding({"user": 30, "item": 40}, 8, seed=0)
    model = LightGCN(embedding, train)
    rng = np.random.default_rng(0)
    allocations = [Allocation({"user": rng.integers(0, 9, 30), "item": rng.integers(0, 9, 40)}) for _ in range(3)]
    users, pos, neg = torch.tensor([0, 5, 9]), torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6])
    singles = []
    for allocation in allocations:
        embedding.set_allocation(allocation)
        singles.append(model.bpr_loss(users, pos, neg, 0.0))
    from nas.pipeline.embedding import stack_row_dims

    embedding.set_variants(stack_row_dims(allocations))
    together = model.bpr_loss(users, pos, neg, 0.0)
    torch.testing.assert_close(together, torch.stack(singles).mean())


def test_evaluation_reuses_the_propagation_only_while_the_tables_are_unchanged():
    train = graph()
    embedding = MaskableEmbedding({"user": 30, "item": 40}, 8, seed=0)
    model = LightGCN(embedding, train).eval()
    users = torch.arange(5)
    full = model.all_scores(users)
    torch.testing.assert_close(model.all_scores(users), full)
    embedding.set_allocation(Allocation({"user": np.full(30, 2), "item": np.full(40, 2)}))
    masked = model.all_scores(users)
    assert not torch.allclose(masked, full), "a new allocation must not be served from the old propagation"
    with torch.no_grad():
        embedding.weights["item"].mul_(2.0)
    assert not torch.allclose(model.all_scores(users), masked), "new weights must not be served stale"


def test_gradients_reach_the_layer_zero_tables_through_the_graph():
    train = graph()
    embedding = PlainEmbedding({"user": 30, "item": 40}, 8, seed=0)
    model = LightGCN(embedding, train)
    model.bpr_loss(torch.tensor([0]), torch.tensor([1]), torch.tensor([2]), 1e-4).backward()
    # Propagation spreads the gradient beyond the three looked-up rows.
    assert int((embedding.weights["item"].grad.abs().sum(dim=1) > 0).sum()) > 2
