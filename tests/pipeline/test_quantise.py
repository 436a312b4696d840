"""Rows at their precision: what the model trains through is what the export stores, exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nas.core.allocation import Allocation
from nas.core.precision import PRECISIONS
from nas.pipeline.embedding import MaskableEmbedding, stack_precisions, stack_row_dims
from nas.core.quantise import FP16_MAX, RowPrecision, _fp16_at_least, fake_quantise, quantise_rows

NAMES = list(PRECISIONS)


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), width=st.integers(1, 24), magnitude=st.sampled_from([1e-9, 1e-3, 0.1, 1.0, 1e3, 1e6]))
def test_each_precision_stores_what_it_promises(seed, width, magnitude):
    rng = np.random.default_rng(seed)
    n = 40
    values = torch.from_numpy((rng.standard_normal((n, width)) * magnitude).astype(np.float32))
    dims = torch.from_numpy(rng.integers(0, width + 1, n))
    values = torch.where(torch.arange(width) < dims[:, None], values, 0.0)  # zero past each row's size
    index = torch.from_numpy(rng.integers(0, len(NAMES), n))
    precision = RowPrecision(index, NAMES)
    stored, scale = quantise_rows(values, precision.levels, precision.half)
    served = fake_quantise(values, precision.levels, precision.half)
    for row in range(n):
        chosen = PRECISIONS[NAMES[int(index[row])]]
        kept = slice(0, int(dims[row]))
        assert torch.all(served[row, int(dims[row]):] == 0)
        if chosen.integer:
            q = stored[row]
            assert torch.equal(q, torch.round(q)) and q.abs().max() <= chosen.levels
            assert float(scale[row]) == float(scale[row].to(torch.float16))  # exact in fp16
            assert torch.equal(served[row], q * scale[row])
            error = (served[row, kept] - values[row, kept]).abs()
            if float(values[row].abs().max()) <= FP16_MAX * chosen.levels:
                assert torch.all(error <= scale[row] * 0.5), "within half a step: the scale is rounded up, nothing is clipped"
            else:  # beyond what an fp16 scale can reach: clipped to the largest stored magnitude
                assert float(scale[row]) == FP16_MAX and float(served[row].abs().max()) == FP16_MAX * chosen.levels
        elif chosen.name == "fp16":
            assert torch.equal(served[row], values[row].clamp(-FP16_MAX, FP16_MAX).half().float())
        else:
            assert torch.equal(served[row], values[row])
    zeros = served == 0
    assert not torch.signbit(served[zeros]).any(), "a stored zero is +0.0, as the loader rebuilds it"
    assert torch.isfinite(served).all()


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), variants=st.integers(1, 3), shared=st.booleans())
def test_a_row_is_quantised_the_same_alone_or_in_any_batch(seed, variants, shared):
    """Each precision's rows are quantised apart from the others: a row's bits depend on its values,
    precision and peak only, whatever the batch's shape and mix of precisions."""
    rng = np.random.default_rng(seed)
    values = torch.from_numpy((rng.standard_normal((variants, 30, 8)) * 10.0 ** rng.integers(-4, 5)).astype(np.float32))
    values[torch.from_numpy(rng.random(values.shape) < 0.2)] = -0.0
    precision = RowPrecision(torch.from_numpy(rng.integers(0, len(NAMES), (variants, 30))), NAMES)
    peak = values.abs().amax(-1) * 1.5 if shared else None
    for dequantise in (False, True):
        batch = (fake_quantise(values, precision.levels, precision.half, peak) if dequantise
                 else quantise_rows(values, precision.levels, precision.half, peak)[0])
        for v in range(variants):
            for row in range(30):
                alone = [values[v, row : row + 1], precision.levels[v, row : row + 1], precision.half[v, row : row + 1],
                         None if peak is None else peak[v, row : row + 1]]
                single = fake_quantise(*alone) if dequantise else quantise_rows(*alone)[0]
                assert torch.equal(single.view(torch.int32), batch[v, row : row + 1].view(torch.int32))


def test_gradients_pass_straight_through_the_rounding():
    values = torch.randn(6, 5, requires_grad=True)
    levels, half = torch.tensor([0.0, 0.0, 127.0, 7.0, 1.0, 1.0]), torch.tensor([False, True] + [False] * 4)
    weights = torch.randn(6, 5)
    (fake_quantise(values, levels, half) * weights).sum().backward()
    assert torch.equal(values.grad, weights)


def test_the_maskable_embedding_serves_each_row_at_its_precision():
    embedding = MaskableEmbedding({"user": 5, "item": 4}, 8, seed=1)
    allocation = Allocation(
        {"user": np.array([8, 6, 3, 1, 0]), "item": np.array([8, 8, 2, 5])},
        row_precisions={"user": np.array([0, 1, 2, 3, 4]), "item": np.array([4, 3, 2, 1])},
        precisions=tuple(NAMES),
    )
    embedding.set_allocation(allocation)
    table = embedding.table("user")
    ids = torch.tensor([[4, 0], [2, 2]])
    assert torch.equal(embedding.lookup("user", ids), table[ids])
    raw = embedding.weights["user"].detach()
    assert torch.equal(table[0], raw[0]) and torch.equal(table[1, :6], raw[1, :6].half().float())
    assert not table[4].detach().any()  # a row of size 0
    item = embedding.table("item")
    assert len(torch.unique(item[0].abs())) <= 2  # int2: -scale, 0, +scale
    embedding.set_allocation(Allocation(allocation.row_dims))
    assert torch.equal(embedding.table("user")[1, :6], raw[1, :6])  # without precisions: the plain masked row


def test_a_shared_scale_comes_from_every_row_of_its_size_and_precision_not_the_batch():
    embedding = MaskableEmbedding({"user": 6}, 4, seed=3, scales="shared")
    allocation = Allocation({"user": np.array([4, 4, 2, 4, 2, 1])}, row_precisions={"user": np.array([3, 3, 3, 2, 3, 0])},
                            precisions=tuple(NAMES))
    embedding.set_allocation(allocation)
    raw = embedding.weights["user"].detach()
    table = embedding.table("user").detach()
    scale = float(_fp16_at_least(raw[:2].abs().max() / 7))  # rows 0 and 1: size 4 at int4
    assert torch.equal(table[:2] / scale, (table[:2] / scale).round()) and float(table[:2].abs().max()) == 7 * scale
    assert torch.equal(embedding.lookup("user", torch.tensor([1])), table[1:2])  # looked up alone: the same scale
    assert torch.equal(table[5, :1], raw[5, :1])  # fp32 rows keep their values


@pytest.mark.parametrize("scales", ["row", "shared"])
def test_stacked_variants_are_served_at_their_own_precisions(scales):
    rows = {"user": 6, "item": 5}
    rng = np.random.default_rng(4)
    allocations = [
        Allocation({n: rng.integers(0, 9, r) for n, r in rows.items()},
                   row_precisions={n: rng.integers(0, len(NAMES), r) for n, r in rows.items()}, precisions=tuple(NAMES))
        for _ in range(3)
    ]
    embedding = MaskableEmbedding(rows, 8, seed=2, scales=scales)
    ids = torch.tensor([[0, 5], [3, 3]])
    single = []
    for allocation in allocations:
        embedding.set_allocation(allocation)
        single.append((embedding.lookup("user", ids).detach(), embedding.table("item").detach()))
    embedding.set_variants(stack_row_dims(allocations))
    embedding.set_variant_precisions(stack_precisions(allocations), NAMES)
    assert embedding.quantises_variants
    looked, tables = embedding.lookup("user", ids).detach(), embedding.table("item").detach()
    for a, (vectors, table) in enumerate(single):
        assert torch.equal(looked[a], vectors) and torch.equal(tables[a], table)
    embedding.set_variant_precisions(None)
    assert not embedding.quantises_variants
