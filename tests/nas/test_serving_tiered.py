"""The tiered serving layout: the packed layout's bits for every table shape and id batch, and its memory.

The parity tests of the exports (test_export.py, test_export_precision.py, test_fuzz_artifact.py,
test_pruning.py) run on every layout; these cover what only tiers have: many or one distinct
size, rows of size 0, one-row tables, the full-width tier a lookup starts from, and the
memory the layout reports.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nas.artifact import serving
from nas.artifact.export import export_tables
from nas.artifact.serving import PackedEmbedding
from nas.testing.serving import serving_ways
from nas.core.allocation import Allocation
from nas.core.budget import Budget
from nas.core.precision import PRECISIONS
from nas.pipeline.embedding import MaskableEmbedding

#: Every way to serve an export (load keyword arguments): each parity test runs on all.
WAYS = serving_ways()
LAYOUTS = tuple(WAYS)
_BITS = {2: torch.int16, 4: torch.int32, 8: torch.int64}
_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def bits(tensor: torch.Tensor) -> torch.Tensor:
    """The raw bits, so -0.0 and +0.0 compare as different."""
    return tensor.contiguous().view(_BITS[tensor.element_size()])


def assert_bit_identical(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(bits(a), bits(b))


def export(folder: Path, dims: dict[str, np.ndarray], d_max: int, *, seed: int = 0, dtype: str = "float32",
           masks: dict[str, np.ndarray] | None = None) -> dict[str, torch.Tensor]:
    """Export random weights (with -0.0 among them) under ``dims``; return what each table serves."""
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for name, sizes in dims.items():
        weight = torch.randn(len(sizes), d_max, generator=generator)
        weight[torch.rand(weight.shape, generator=generator) < 0.1] = -0.0
        weights[name] = weight.to(_DTYPES[dtype])
    allocation = Allocation(dims, masks)
    rows = {name: len(sizes) for name, sizes in dims.items()}
    export_tables(folder, weights, allocation, Budget.from_params(allocation.cost, rows, d_max, d_min=0, dtype=dtype))
    served = {}
    for name, weight in weights.items():
        keep = (torch.from_numpy(masks[name]) if masks and name in masks
                else torch.arange(d_max) < torch.from_numpy(np.array(dims[name])).unsqueeze(1))
        served[name] = torch.where(keep, weight, torch.zeros((), dtype=weight.dtype))
    return served


def load_all(folder: Path) -> dict[str, PackedEmbedding]:
    return {layout: PackedEmbedding.load(folder, **WAYS[layout]) for layout in LAYOUTS}


def assert_layouts_serve(loaded: dict[str, PackedEmbedding], expected: dict[str, torch.Tensor], ids: torch.Tensor,
                         name: str) -> None:
    for layout, table in loaded.items():
        result = table.lookup(name, ids)
        assert result.shape == (*ids.shape, table.dim), layout
        assert_bit_identical(result, expected[name][ids.to(torch.int64)])


def tiered_table(loaded: PackedEmbedding, name: str) -> serving._TieredTable:
    table = loaded._tables[name]
    assert isinstance(table, serving._TieredTable)
    return table


# -- table shapes ---------------------------------------------------------------------------------
def test_many_distinct_sizes_one_tier_each(tmp_path):
    d_max = 40
    rng = np.random.default_rng(0)
    sizes = np.concatenate([np.arange(d_max + 1), rng.integers(0, d_max + 1, 300)])  # every size, 0 to d_max
    expected = export(tmp_path / "e", {"item": rng.permutation(sizes)}, d_max)
    loaded = load_all(tmp_path / "e")
    assert tiered_table(loaded["tiered"], "item").sizes == list(range(d_max + 1))
    generator = torch.Generator().manual_seed(1)
    for shape in [(1,), (17,), (5, 7), (2, 3, 4), (4096,)]:
        ids = torch.randint(0, len(sizes), shape, generator=generator)
        assert_layouts_serve(loaded, expected, ids, "item")
        assert_layouts_serve(loaded, expected, ids.to(torch.int32), "item")
    for layout, table in loaded.items():
        assert_bit_identical(table.table("item"), expected["item"]), layout


@pytest.mark.parametrize("size", [0, 1, 5, 8])
def test_a_single_size_needs_no_map(size, tmp_path):
    """One tier: the id is the row in it, so no code is stored; bad ids still raise IndexError."""
    rows, d_max = 50, 8
    expected = export(tmp_path / "e", {"item": np.full(rows, size)}, d_max)
    loaded = load_all(tmp_path / "e")
    tiered = tiered_table(loaded["tiered"], "item")
    assert tiered.code is None and tiered.sizes == [size]
    assert loaded["tiered"].memory_bytes() == rows * size * 4
    ids = torch.randint(0, rows, (6, 9), generator=torch.Generator().manual_seed(0))
    assert_layouts_serve(loaded, expected, ids, "item")
    for bad in (torch.tensor([rows]), torch.tensor([-1]), torch.tensor([0, rows], dtype=torch.int32)):
        with pytest.raises(IndexError):
            loaded["tiered"].lookup("item", bad)


def test_rows_of_size_zero_take_no_memory(tmp_path):
    rows, d_max = 60, 6
    sizes = np.where(np.arange(rows) % 3 == 0, 0, np.where(np.arange(rows) % 3 == 1, 2, 5))
    expected = export(tmp_path / "e", {"item": sizes}, d_max)
    loaded = load_all(tmp_path / "e")
    tiered = tiered_table(loaded["tiered"], "item")
    assert tiered.sizes == [0, 2, 5] and tiered.values[0].numel() == 0
    assert loaded["tiered"].memory_bytes() == int(sizes.sum()) * 4 + rows * 4  # values, then an int32 code a row
    ids = torch.arange(rows).repeat(3)
    assert_layouts_serve(loaded, expected, ids, "item")
    assert_layouts_serve(loaded, expected, torch.arange(0, rows, 3), "item")  # only zero rows


@pytest.mark.parametrize("size", [0, 3, 7])
def test_a_table_of_one_row(size, tmp_path):
    d_max = 7
    expected = export(tmp_path / "e", {"one": np.array([size]), "other": np.array([1, 7, 0])}, d_max)
    loaded = load_all(tmp_path / "e")
    for ids in (torch.tensor(0), torch.zeros(9, dtype=torch.int64), torch.zeros(2, 3, dtype=torch.int32)):
        assert_layouts_serve(loaded, expected, ids, "one")
    for table in loaded.values():
        with pytest.raises(IndexError):
            table.lookup("one", torch.tensor([1]))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_empty_batches_and_odd_id_shapes(layout, tmp_path):
    expected = export(tmp_path / "e", {"item": np.array([0, 3, 5, 5, 1, 5, 2])}, 5)
    loaded = {layout: PackedEmbedding.load(tmp_path / "e", **WAYS[layout])}
    for ids in (torch.zeros(0, dtype=torch.int64), torch.zeros(2, 0, dtype=torch.int32), torch.tensor(4),
                torch.arange(7).view(7, 1, 1), torch.arange(14).view(2, 7).t() % 7):  # the last one not contiguous
        assert_layouts_serve(loaded, expected, ids, "item")
    with pytest.raises(KeyError, match="no table 'user'"):
        loaded[layout].lookup("user", torch.tensor([0]))


def test_repeated_ids_and_the_full_width_tier(tmp_path):
    """A lookup starts from the full-width tier when enough ids fall in it; either way, the same bits."""
    d_max, rows = 8, 400
    sizes = np.tile([8, 2, 5, 8, 0, 2, 1, 8], rows // 8)
    expected = export(tmp_path / "e", {"item": sizes}, d_max)
    loaded = load_all(tmp_path / "e")
    tiered = tiered_table(loaded["tiered"], "item")
    assert tiered.base is not None and tiered.sizes[tiered.base] == d_max
    full, narrow = torch.from_numpy(np.flatnonzero(sizes == 8)), torch.from_numpy(np.flatnonzero(sizes == 5))
    zero = torch.from_numpy(np.flatnonzero(sizes == 0))
    generator = torch.Generator().manual_seed(0)
    batches = [
        torch.full((100,), int(full[3])),  # one id, repeated, in the full-width tier only
        torch.full((100,), int(narrow[0])),  # one id, repeated, in one narrow tier only
        full[torch.randint(0, len(full), (50,), generator=generator)],
        torch.cat([full[:1], narrow]),  # below the share that starts from the full-width tier
        torch.cat([full[:40], narrow[:5], zero[:3]]),  # above it
        torch.cat([zero, zero]),
        torch.randint(0, rows, (1000,), generator=generator),
    ]
    for ids in batches:
        assert_layouts_serve(loaded, expected, ids, "item")
        assert_layouts_serve(loaded, expected, ids[torch.randperm(len(ids), generator=generator)], "item")
    # one extra zero row in the full-width tier, nothing else beyond the values and the codes
    assert loaded["tiered"].memory_bytes() == int(sizes.sum()) * 4 + rows * 4 + d_max * 4


def test_element_masks_are_served_from_tiers(tmp_path):
    """Masked-out positions inside a row's size are stored as +0.0, so no packed fallback is needed."""
    rng = np.random.default_rng(3)
    rows, d_max = 120, 10
    sizes = rng.integers(0, d_max + 1, rows)
    masks = (rng.random((rows, d_max)) < 0.6) & (np.arange(d_max) < sizes[:, None])
    expected = export(tmp_path / "e", {"user": sizes}, d_max, masks={"user": masks})
    loaded = load_all(tmp_path / "e")
    assert isinstance(loaded["tiered"]._tables["user"], serving._TieredTable)
    assert_layouts_serve(loaded, expected, torch.randint(0, rows, (300,), generator=torch.Generator().manual_seed(0)), "user")


@st.composite
def tables(draw):
    d_max = draw(st.integers(1, 20))
    d_min = draw(st.integers(0, d_max))
    rows = {f"t{i}": draw(st.integers(1, 60)) for i in range(draw(st.integers(1, 3)))}
    distinct = draw(st.integers(1, d_max - d_min + 1))  # how many distinct sizes: one tier to every size
    return rows, d_min, d_max, distinct, draw(st.booleans()), draw(st.sampled_from(sorted(_DTYPES))), draw(st.integers(0, 2**31 - 1))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(tables(), st.data())
def test_every_layout_serves_the_same_bits(tmp_path_factory, case, data):
    rows, d_min, d_max, distinct, with_masks, dtype, seed = case
    rng = np.random.default_rng(seed)
    choices = rng.choice(np.arange(d_min, d_max + 1), distinct, replace=False)
    dims = {name: rng.choice(choices, n) for name, n in rows.items()}
    masks = ({name: (rng.random((n, d_max)) < rng.random()) & (np.arange(d_max) < dims[name][:, None])
              for name, n in rows.items()} if with_masks else None)
    folder = tmp_path_factory.mktemp("e") / "export"
    expected = export(folder, dims, d_max, seed=seed % 1000, dtype=dtype, masks=masks)
    loaded = load_all(folder)
    for name, n in rows.items():
        ids = torch.tensor(data.draw(st.lists(st.integers(0, n - 1), max_size=40)), dtype=torch.int64)
        shape = data.draw(st.sampled_from([(-1,), (1, -1), (-1, 1)]))
        assert_layouts_serve(loaded, expected, ids.view(*shape), name)
        for layout, table in loaded.items():
            assert_bit_identical(table.table(name), expected[name]), layout


# -- precisions -----------------------------------------------------------------------------------
@pytest.mark.parametrize("scales", ["row", "shared"])
def test_precision_tiers_keep_the_stored_integers_and_one_scale_a_tier_when_shared(scales, tmp_path):
    """Tiers by (size, precision) hold int8 as int8; shared scales are one fp32 a tier, row scales one a row."""
    rows, d_max = 500, 8
    precisions = tuple(PRECISIONS)
    rng = np.random.default_rng(5)
    dims = rng.integers(0, d_max + 1, rows)
    index = rng.integers(0, len(precisions), rows)
    allocation = Allocation({"item": dims}, row_precisions={"item": index}, precisions=precisions)
    embedding = MaskableEmbedding({"item": rows}, d_max, std=0.1, seed=0, scales=scales)
    embedding.set_allocation(allocation)
    budget = Budget.from_params(allocation.cost, {"item": rows}, d_max, d_min=0, precisions=precisions, scales=scales)
    export_tables(tmp_path / "e", embedding, allocation, budget)
    loaded = load_all(tmp_path / "e")
    expected = {"item": embedding.table("item").detach()}
    assert_layouts_serve(loaded, expected, torch.randint(0, rows, (700,), generator=torch.Generator().manual_seed(0)), "item")
    assert_layouts_serve(loaded, expected, torch.arange(rows), "item")
    tiered = tiered_table(loaded["tiered"], "item")
    value_bytes = {name: (4 if name == "fp32" else 2 if name == "fp16" else 1) for name in precisions}
    want = rows * 4  # the codes
    for size, k in {(int(d), int(p)) for d, p in zip(dims, index)}:
        members = int(((dims == size) & (index == k)).sum())
        want += members * size * value_bytes[precisions[k]]
        if PRECISIONS[precisions[k]].integer:
            want += 4 if scales == "shared" else members * 4
        if tiered.base is not None and tiered.sizes[tiered.base] == size == d_max and precisions[k] == "fp32":
            want += d_max * 4
    assert loaded["tiered"].memory_bytes() == want
    assert all(s is None or s.dim() == (1 if scales == "row" else 0) for s in tiered.scales)


def test_an_unknown_layout_is_refused(tmp_path):
    export(tmp_path / "e", {"item": np.array([1, 2])}, 2)
    with pytest.raises(ValueError, match="'packed', 'dense', 'tiered'"):
        PackedEmbedding.load(tmp_path / "e", layout="md")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tiers_on_a_cuda_device(tmp_path):
    rng = np.random.default_rng(0)
    expected = export(tmp_path / "e", {"item": rng.integers(0, 9, 1000)}, 8)
    cpu = PackedEmbedding.load(tmp_path / "e", layout="tiered")
    gpu = PackedEmbedding.load(tmp_path / "e", layout="tiered", device="cuda")
    ids = torch.randint(0, 1000, (4096,))
    assert_bit_identical(gpu.lookup("item", ids).cpu(), cpu.lookup("item", ids))
    assert_bit_identical(gpu.lookup("item", ids.cuda()).cpu(), expected["item"][ids])
