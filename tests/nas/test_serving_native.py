"""The packed layout's compact row map and its compiled gather.

The parity tests of the exports run on every way of serving (``nas.testing.serving``),
the compiled gather among them; these cover what is particular to it: that it builds where
a compiler exists, its two offset widths, out-of-range ids, the fallbacks and refusals of
``native=``, and the memory the compact map takes.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nas.artifact import native
from nas.artifact import serving
from nas.artifact.export import export_tables
from nas.artifact.serving import PackedEmbedding
from nas.core.allocation import Allocation
from nas.core.budget import Budget

HAS_COMPILER = any(shutil.which(name) for name in ("cc", "gcc", "clang"))
needs_gather = pytest.mark.skipif(native.row_gather() is None,
                                  reason=f"the compiled gather does not build here: {native.unavailable_reason()}")


def export(folder, dims: np.ndarray, d_max: int, dtype: str = "float32", seed: int = 0) -> torch.Tensor:
    """Export random weights under ``dims``; return the table the masked model serves."""
    weight = torch.randn(len(dims), d_max, generator=torch.Generator().manual_seed(seed)).to(getattr(torch, dtype))
    allocation = Allocation({"item": dims})
    export_tables(folder, {"item": weight}, allocation,
                  Budget.from_params(allocation.cost, {"item": len(dims)}, d_max, d_min=0, dtype=dtype))
    keep = torch.arange(d_max) < torch.from_numpy(np.asarray(dims)).unsqueeze(1)
    return torch.where(keep, weight, torch.zeros((), dtype=weight.dtype))


def packed_table(embedding: PackedEmbedding) -> serving._Table:
    table = embedding._tables["item"]
    assert isinstance(table, serving._Table)
    return table


@pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler on this machine (cc, gcc or clang)")
def test_the_gather_builds_where_a_compiler_exists():
    assert native.row_gather() is not None, native.unavailable_reason()


@needs_gather
@settings(max_examples=40, deadline=None)
@given(wide=st.booleans(), d_extra=st.integers(0, 3), data=st.data(),
       elem=st.sampled_from([torch.float32, torch.float16, torch.int8, torch.float64]),
       base_dtype=st.sampled_from([torch.int32, torch.int64]))
def test_the_gather_copies_each_row_and_zero_fills_its_tail(wide, d_extra, data, elem, base_dtype):
    """Any row sizes (across blocks of 16; one or two bytes), element widths, both offset widths: the rows a loop would copy."""
    sizes = data.draw(st.lists(st.integers(0, 600 if wide else 255), min_size=1, max_size=70))
    d_max = max(sizes) + d_extra or 1
    rows = len(sizes)
    padded = torch.zeros(-(-rows // native.BLOCK) * native.BLOCK, dtype=torch.int16 if wide else torch.uint8)
    padded[:rows] = torch.tensor(sizes)
    starts = torch.cumsum(padded.to(torch.int64), 0) - padded.to(torch.int64)
    values = torch.randint(-100, 100, (int(padded.sum()),)).to(elem)
    ids = torch.tensor(data.draw(st.lists(st.integers(0, rows - 1), max_size=50)), dtype=torch.int64)
    out = native.row_gather()(ids, rows, starts[:: native.BLOCK].to(base_dtype).contiguous(), padded, values, d_max)
    expected = torch.zeros(len(ids), d_max, dtype=elem)
    for position, row in enumerate(ids.tolist()):
        expected[position, : sizes[row]] = values[int(starts[row]) : int(starts[row]) + sizes[row]]
    assert torch.equal(out, expected)


@pytest.mark.parametrize("native_option", [False, pytest.param(True, marks=needs_gather)])
@pytest.mark.parametrize("bad", [-1, 37, 10**12])
def test_out_of_range_ids_raise_index_error(tmp_path, native_option, bad):
    export(tmp_path / "e", np.arange(37) % 9, 8)
    loaded = PackedEmbedding.load(tmp_path / "e", native=native_option)
    assert loaded.native is native_option
    with pytest.raises(IndexError):
        loaded.lookup("item", torch.tensor([0, bad, 1]))


@needs_gather
def test_int32_ids_and_any_shape_serve_the_same_vectors_compiled(tmp_path):
    expected = export(tmp_path / "e", np.arange(50) % 13, 12)
    loaded = PackedEmbedding.load(tmp_path / "e", native=True)
    ids = torch.tensor([[3, 49], [0, 17]], dtype=torch.int32)
    assert torch.equal(loaded.lookup("item", ids), expected[ids.long()])
    assert torch.equal(loaded.table("item"), expected)


def test_native_true_names_why_it_cannot_build(tmp_path, monkeypatch):
    export(tmp_path / "e", np.full(20, 3), 4)
    monkeypatch.setattr(serving, "row_gather", lambda: None)
    monkeypatch.setattr(serving, "unavailable_reason", lambda: "no C compiler found (install one, such as gcc, or name it in CC)")
    with pytest.raises(RuntimeError, match="no C compiler found"):
        PackedEmbedding.load(tmp_path / "e", native=True)
    with pytest.warns(UserWarning, match="in eager torch, a few times slower .*no C compiler found"):
        fallback = PackedEmbedding.load(tmp_path / "e")  # the default falls back to eager torch, and says so
    assert not fallback.native and fallback.lookup("item", torch.tensor([0])).shape == (1, 4)


def test_native_true_is_refused_off_the_cpu(tmp_path):
    export(tmp_path / "e", np.full(20, 3), 4)
    with pytest.raises(ValueError, match="on the CPU"):
        PackedEmbedding.load(tmp_path / "e", native=True, device="meta")


def test_a_compiler_that_fails_is_a_one_line_reason(monkeypatch, tmp_path):
    """A CC that is not a compiler makes the build fail with a reason, not a traceback."""
    fake = tmp_path / "not-a-compiler"
    fake.write_text("#!/bin/sh\necho 'broken toolchain' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    with pytest.raises(native._BuildError, match="broken toolchain"):
        native._compile()
    monkeypatch.setenv("CC", str(tmp_path / "missing-cc"))
    with pytest.raises(native._BuildError, match="no C compiler found"):
        native._compile()


@pytest.mark.parametrize("native_option", [False, pytest.param(True, marks=needs_gather)])
def test_the_compact_map_takes_a_byte_a_row_and_4_bytes_per_16_rows(tmp_path, native_option):
    """Serving memory: the values, a size byte a row (rows rounded up to 16), an int32 offset per 16 rows,
    and in eager torch a fixed amount more (padding of one row, the prefix masks), whatever the row count."""
    rows, d_max = 1000, 16
    dims = np.arange(rows) % (d_max + 1)
    export(tmp_path / "e", dims, d_max)
    loaded = PackedEmbedding.load(tmp_path / "e", native=native_option)
    compact = int(dims.sum()) * 4 + -(-rows // 16) * 16 + -(-rows // 16) * 4
    fixed = 0 if native_option else d_max * 4 + 16 * 16 * 4 + d_max * 4 + (d_max + 1) * d_max * 4
    assert loaded.memory_bytes() == compact + fixed
    assert packed_table(loaded).base.dtype == torch.int32


def test_the_benchmark_table_serves_within_2_percent_of_its_budget(tmp_path):
    """The bench_lookup case (90 % sparsity, d = 64, fp32): the budget pays a byte a row beside the values;
    the compact map adds 4 bytes per 16 rows, under 1 %."""
    rows, d_max = 100_000, 64
    budget = Budget.from_sparsity(0.9, {"item": rows}, d_max, 1)
    dims = np.full(rows, budget.max_values // rows)
    weight = torch.randn(rows, d_max)
    export_tables(tmp_path / "e", {"item": weight}, Allocation({"item": dims}), budget)
    for native_option in (False, None):
        loaded = PackedEmbedding.load(tmp_path / "e", native=native_option)
        assert loaded.memory_bytes() <= budget.max_bytes * 1.02


@pytest.mark.parametrize("native_option", [False, pytest.param(True, marks=needs_gather)])
def test_wide_tables_keep_two_bytes_a_row_for_their_sizes(tmp_path, native_option):
    """Past 255 values a row the sizes take two bytes, which both paths read."""
    dims = np.random.default_rng(0).integers(0, 301, 40)
    expected = export(tmp_path / "e", dims, 300)
    loaded = PackedEmbedding.load(tmp_path / "e", native=native_option)
    assert loaded.native is native_option and packed_table(loaded).sizes.dtype == torch.int16
    assert torch.equal(loaded.table("item"), expected)
    assert torch.equal(loaded.lookup("item", torch.tensor([39, 0, 17, 17])), expected[[39, 0, 17, 17]])


def test_the_widest_tables_serve_in_eager_torch(tmp_path):
    """From 32,768 values a row the sizes take four bytes, which only the eager path reads; native=True says so."""
    expected = export(tmp_path / "e", np.array([40_000, 0, 3]), 40_000)
    loaded = PackedEmbedding.load(tmp_path / "e")
    assert not loaded.native and torch.equal(loaded.table("item"), expected)
    if native.row_gather() is not None:
        with pytest.raises(RuntimeError, match="fewer than 32,768 values"):
            PackedEmbedding.load(tmp_path / "e", native=True)
