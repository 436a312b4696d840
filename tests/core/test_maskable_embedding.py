"""The maskable embedding serves any allocation exactly, and trains only what it keeps."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nas.core import Allocation
from nas.pipeline.embedding import MaskableEmbedding
from recsys.embedding import PlainEmbedding


def test_without_allocation_it_is_the_plain_embedding():
    rows = {"user": 7, "item": 5}
    plain, maskable = PlainEmbedding(rows, 8, seed=3), MaskableEmbedding(rows, 8, seed=3)
    ids = torch.tensor([0, 4, 4, 2])
    assert torch.equal(plain.lookup("item", ids), maskable.lookup("item", ids))
    assert torch.equal(plain.table("user"), maskable.table("user"))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40), st.integers(1, 16), st.integers(0, 2**16))
def test_lookup_keeps_exactly_the_leading_row_dims(rows, dim, seed):
    rng = np.random.default_rng(seed)
    dims = rng.integers(0, dim + 1, rows)
    embedding = MaskableEmbedding({"item": rows}, dim, seed=seed)
    embedding.set_allocation(Allocation({"item": dims}))
    ids = torch.as_tensor(rng.integers(0, rows, 50))
    vectors = embedding.lookup("item", ids)
    full = embedding.weights["item"].detach()[ids]
    keep = torch.arange(dim)[None, :] < torch.as_tensor(dims)[ids][:, None]
    assert torch.equal(vectors[keep], full[keep])
    # Dropped positions are +0.0 exactly (sign bit clear), never -0.0.
    assert (vectors[~keep].view(torch.int32) == 0).all()
    assert torch.equal(embedding.table("item")[ids], vectors)


def test_gradients_reach_only_kept_values():
    embedding = MaskableEmbedding({"user": 3}, 4, seed=0)
    embedding.set_allocation(Allocation({"user": np.array([1, 4, 0])}))
    embedding.lookup("user", torch.tensor([0, 1, 2])).sum().backward()
    grad = embedding.weights["user"].grad
    expected = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=grad.dtype)
    assert torch.equal(grad, expected)


def test_element_masks_are_applied_inside_the_prefix():
    mask = np.array([[True, False, True, False], [False, False, False, False]])
    allocation = Allocation({"item": np.array([3, 0])}, {"item": mask})
    assert allocation.cost == 2
    embedding = MaskableEmbedding({"item": 2}, 4, seed=1)
    embedding.set_allocation(allocation)
    vectors = embedding.lookup("item", torch.tensor([0, 1]))
    assert torch.equal(vectors != 0, torch.as_tensor(mask))
