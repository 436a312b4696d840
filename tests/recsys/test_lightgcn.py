"""LightGCN: propagation equals the dense definition, variants travel together, evaluation never serves stale scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nas.core import Allocation
from nas.pipeline.embedding import MaskableEmbedding, stack_precisions, stack_row_dims
from recsys.embedding import PlainEmbedding, served_width
from recsys.models import LightGCN
from recsys.models._graph import GraphBlocks, spmm
from recsys.models._losses import info_nce


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


def test_the_sparse_product_and_its_gradient_equal_the_dense_ones():
    # Rows and columns without edges included: user 0 and item 0 have none.
    train = graph(seed=3).tolil()
    train[0, :] = 0
    train[:, 0] = 0
    blocks = GraphBlocks(train.tocsr())
    dense_block = blocks.user_item.to_torch_csr().to_dense().double()
    items = torch.randn(40, 5, dtype=torch.float64, requires_grad=True)
    product = spmm(blocks.user_item, blocks.item_user, items)
    torch.testing.assert_close(product, dense_block @ items.detach())
    weights = torch.randn(30, 5, dtype=torch.float64)
    (product * weights).sum().backward()
    torch.testing.assert_close(items.grad, dense_block.T @ weights)
    assert torch.equal(product[0], torch.zeros(5, dtype=torch.float64))


def test_a_graph_without_edges_propagates_to_zeros():
    blocks = GraphBlocks(sp.csr_matrix((3, 4), dtype=np.float32))
    users, items = blocks.round(torch.ones(3, 2), torch.ones(4, 2))
    assert torch.equal(users, torch.zeros(3, 2)) and torch.equal(items, torch.zeros(4, 2))


def test_info_nce_against_a_hand_computed_case():
    # Rows 0 and 1 are orthogonal unit vectors, row 2 is row 0 scaled; ids repeat row 0.
    vectors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    tau = 0.5
    # Row 0 and row 2 point the same way: each sees logits 2 (itself), 0 (row 1), 2 (the other).
    same = math.log(2 * math.exp(2.0) + 1.0) - 2.0
    other = math.log(math.exp(2.0) + 2.0) - 2.0  # row 1: itself 2, the other two 0
    expected = (2 * same + other) / 3
    value = info_nce(vectors, torch.tensor([0, 1, 2, 0]), tau)
    assert math.isclose(value.item(), expected, rel_tol=1e-6)
    stacked = info_nce(torch.stack([vectors, vectors[[1, 0, 2]]]), torch.tensor([0, 1, 2]), tau)
    assert math.isclose(stacked.item(), expected, rel_tol=1e-6), "stacked variants are averaged"


def test_the_contrast_term_adds_info_nce_on_the_final_vectors_of_the_batch():
    train = graph()
    embedding = PlainEmbedding({"user": 30, "item": 40}, 8, seed=0)
    model = LightGCN(embedding, train)
    users, pos, neg = torch.tensor([0, 5, 5]), torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6])
    final_u, final_i = model.propagate()
    term = 0.1 * (info_nce(final_u, users, 0.2) + info_nce(final_i, pos, 0.2))
    for plain, with_term in (
        (model.bpr_loss(users, pos, neg, 1e-4), model.bpr_loss(users, pos, neg, 1e-4, contrast=(0.1, 0.2))),
        (model.softmax_loss(users, pos, neg, 1e-4, 2.0),
         model.softmax_loss(users, pos, neg, 1e-4, 2.0, contrast=(0.1, 0.2))),
    ):
        torch.testing.assert_close(with_term, plain + term)


def test_the_contrast_term_reads_only_the_first_rows_of_a_large_batch(monkeypatch: pytest.MonkeyPatch):
    import recsys.models._graph as graph_module

    monkeypatch.setattr(graph_module, "CONTRAST_ROWS", 2)
    model = LightGCN(PlainEmbedding({"user": 30, "item": 40}, 8, seed=0), graph())
    users, pos, neg = torch.tensor([0, 5, 7, 9]), torch.tensor([1, 2, 3, 8]), torch.tensor([4, 5, 6, 0])
    final_u, final_i = model.propagate()
    term = 0.1 * (info_nce(final_u, users[:2], 0.2) + info_nce(final_i, pos[:2], 0.2))
    torch.testing.assert_close(model.bpr_loss(users, pos, neg, 1e-4, contrast=(0.1, 0.2)),
                               model.bpr_loss(users, pos, neg, 1e-4) + term)


def test_a_backbone_without_the_term_is_refused_with_what_to_change():
    from recsys.models import MF
    from recsys.train import top_k_loss

    model = MF(PlainEmbedding({"user": 30, "item": 40}, 8, seed=0))
    batch = torch.tensor([0, 1]), torch.tensor([1, 2]), torch.tensor([3, 4])
    for loss in ("bpr", "softmax"):
        with pytest.raises(TypeError, match="MF has no InfoNCE term .* info_nce=0"):
            top_k_loss(loss, negatives=2, info_nce=0.1)(model, *batch, 1e-4)


def test_a_bfloat16_propagation_stays_near_the_float32_one_and_trains_float32_tables():
    train = graph()
    exact = LightGCN(PlainEmbedding({"user": 30, "item": 40}, 8, seed=0), train)
    fast = LightGCN(PlainEmbedding({"user": 30, "item": 40}, 8, seed=0), train, propagation_dtype=torch.bfloat16)
    for (a, b) in zip(exact.propagate(), fast.propagate()):
        assert b.dtype == torch.float32
        torch.testing.assert_close(b, a, rtol=2e-2, atol=2e-3)  # bfloat16 keeps 8 bits of mantissa
    users, pos, neg = torch.tensor([0, 5, 7]), torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6])
    fast.train()
    fast.bpr_loss(users, pos, neg, 1e-4, contrast=(0.1, 0.2)).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 and p.grad.abs().sum() > 0 for p in fast.parameters())
    with pytest.raises(ValueError, match="floating-point"):
        LightGCN(PlainEmbedding({"user": 30, "item": 40}, 8, seed=0), train, propagation_dtype=torch.int8)


class _FullWidth(MaskableEmbedding):
    """The same tables, never narrowed: the reference for the narrowed propagation."""

    served_width = property(lambda self: self.dim)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_a_narrow_allocation_propagates_only_its_leading_columns_with_the_same_loss_gradient_and_ranking(data):
    rows, dim = {"user": 30, "item": 40}, 8
    sizes = st.integers(0, data.draw(st.integers(1, dim), label="widest"))
    dims = {name: np.array(data.draw(st.lists(sizes, min_size=n, max_size=n), label=name)) for name, n in rows.items()}
    quantised = data.draw(st.booleans(), label="quantised")  # a zero stays zero at every precision
    allocation = Allocation(dims, row_precisions={name: np.arange(n) % 4 for name, n in rows.items()},
                            precisions=("fp32", "fp16", "int8", "int4")) if quantised else Allocation(dims)
    losses, grads, scores = [], [], []
    for provider in (MaskableEmbedding, _FullWidth):
        embedding = provider(rows, dim, seed=0)
        embedding.set_allocation(allocation)
        model = LightGCN(embedding, graph())
        negatives = torch.tensor([[4, 7, 8], [5, 0, 1], [6, 9, 2]])  # the hardest of three candidates
        loss = model.bpr_loss(torch.tensor([0, 5, 9]), torch.tensor([1, 2, 3]), negatives, 1e-3, contrast=(0.1, 0.2))
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([embedding.weights["user"].grad, embedding.weights["item"].grad]))
        scores.append(model.eval().all_scores(torch.arange(30)))
    widest = max(int(d.max()) for d in allocation.row_dims.values())
    assert MaskableEmbedding(rows, dim).served_width == dim
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(scores[0], scores[1], rtol=1e-5, atol=1e-7)
    embedding = MaskableEmbedding(rows, dim, seed=0)
    embedding.set_allocation(allocation)
    assert embedding.served_width == widest


def test_the_served_width_covers_every_variant_and_falls_back_to_full_where_any_column_may_be_filled():
    rows, dim = {"user": 3, "item": 4}, 8
    embedding = MaskableEmbedding(rows, dim)
    small = Allocation({"user": np.array([1, 2, 1]), "item": np.array([3, 0, 1, 2])})
    wide = Allocation({"user": np.array([5, 2, 1]), "item": np.array([1, 0, 1, 2])})
    embedding.set_variants(stack_row_dims([small, wide]))
    assert embedding.served_width == 5
    embedding.set_variants({"user": stack_row_dims([small])["user"]})  # the items are served in full
    assert embedding.served_width == dim
    embedding.set_allocation(small)
    assert embedding.served_width == 3
    embedding.set_soft_mask(lambda table, ids: torch.ones(()))
    assert embedding.served_width == dim
    assert served_width(PlainEmbedding(rows, dim)) == dim


def test_stacked_quantised_variants_narrowed_give_the_full_width_loss_and_gradient():
    rows, dim = {"user": 30, "item": 40}, 8
    rng = np.random.default_rng(1)
    allocations = [Allocation({name: rng.integers(0, 6, n) for name, n in rows.items()},
                              row_precisions={name: rng.integers(0, 4, n) for name, n in rows.items()},
                              precisions=("fp32", "fp16", "int8", "int4")) for _ in range(3)]
    results, widths = [], []
    for provider in (MaskableEmbedding, _FullWidth):
        embedding = provider(rows, dim, seed=0)
        embedding.set_variants(stack_row_dims(allocations))
        embedding.set_variant_precisions(stack_precisions(allocations), allocations[0].precisions)
        loss = LightGCN(embedding, graph()).bpr_loss(torch.tensor([0, 5, 9]), torch.tensor([1, 2, 3]),
                                                     torch.tensor([[4, 7], [5, 0], [6, 9]]), 1e-3)
        loss.backward()
        results.append((loss.detach(), embedding.weights["user"].grad, embedding.weights["item"].grad))
        widths.append(embedding.served_width)
    assert widths == [max(int(d.max()) for a in allocations for d in a.row_dims.values()), dim]
    for narrow, full in zip(*results):
        torch.testing.assert_close(narrow, full, rtol=1e-5, atol=1e-7)
