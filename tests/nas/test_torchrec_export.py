"""The TorchRec export: the writer's files and budget check (torch only), and TorchRec serving the packed export's vectors.

The round trips need TorchRec (``pip install "embnas[torchrec]"``, see the README); without
it they skip, and the writer's tests still run.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load as st_load

from nas.artifact.export import export_tables
from nas.artifact.serving import PackedArtifactError, PackedEmbedding
from nas.artifact.torchrec_tables import CONFIG_FILE, REMAP_FILE, STATE_FILE, TorchRecTables, export_torchrec
from nas.core.allocation import Allocation
from nas.core.accounting import precision_fixed_bytes
from nas.core.budget import Budget
from nas.core.errors import ArtifactError, BudgetError
from nas.pipeline.embedding import MaskableEmbedding

needs_torchrec = pytest.mark.skipif(
    importlib.util.find_spec("torchrec") is None,
    reason='TorchRec is not installed: pip install "embnas[torchrec]" && pip install --no-deps torchrec==1.8.0',
)


def export(folder: Path, dims: dict[str, np.ndarray], d_max: int, *, dtype: str = "float32", spare: int = 0,
           masks: dict[str, np.ndarray] | None = None, seed: int = 0) -> Path:
    """A packed export of random weights under ``dims``, with a budget of exactly its values plus ``spare``."""
    generator = torch.Generator().manual_seed(seed)
    weights = {name: torch.randn(len(sizes), d_max, generator=generator).to(getattr(torch, dtype))
               for name, sizes in dims.items()}
    allocation = Allocation(dims, masks)
    rows = {name: len(sizes) for name, sizes in dims.items()}
    export_tables(folder, weights, allocation, Budget.from_params(allocation.cost + spare, rows, d_max, d_min=0, dtype=dtype))
    return folder


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return dict(st_load(path.read_bytes()))


# -- the writer (torch only) ----------------------------------------------------------------------
def test_a_table_of_one_size_is_one_torchrec_table_and_needs_no_remap(tmp_path: Path):
    source = export(tmp_path / "packed", {"user": np.full(30, 8), "item": np.full(50, 16)}, 16)
    config = export_torchrec(source, tmp_path / "tr")
    assert config["tables"]["user"]["tiers"] == [["user", 8, 8, 30]]
    assert config["tables"]["item"]["tiers"] == [["item", 16, 16, 50]]
    state = tensors(tmp_path / "tr" / STATE_FILE)
    packed = PackedEmbedding.load(source)
    assert torch.equal(state["user.embedding_bags.user.weight"], packed.table("user")[:, :8])
    assert torch.equal(state["item.embedding_bags.item.weight"], packed.table("item"))
    assert tensors(tmp_path / "tr" / REMAP_FILE) == {}
    assert config["bytes"] == (30 * 8 + 50 * 16) * 4


def test_rows_of_several_sizes_become_tiers_in_id_order_with_a_one_byte_tier_per_row(tmp_path: Path):
    sizes = np.array([3, 0, 5, 3, 5, 5, 0, 1])
    source = export(tmp_path / "packed", {"item": sizes}, 8)
    config = export_torchrec(source, tmp_path / "tr")
    assert config["tables"]["item"]["tiers"] == [[None, 0, 0, 2], ["item__d1", 1, 1, 1], ["item__d3", 3, 3, 2],
                                                 ["item__d5", 5, 5, 3]]
    state, remap = tensors(tmp_path / "tr" / STATE_FILE), tensors(tmp_path / "tr" / REMAP_FILE)
    assert remap["item.tier"].dtype == torch.uint8 and remap["item.tier"].tolist() == [2, 0, 3, 2, 3, 3, 0, 1]
    served = PackedEmbedding.load(source).table("item")
    assert torch.equal(state["item.embedding_bags.item__d5.weight"], served[[2, 4, 5], :5])
    assert torch.equal(state["item.embedding_bags.item__d3.weight"], served[[0, 3], :3])
    # What the budget counts as values and row sizes pays for the tables and the remap.
    assert config["bytes"] == int(sizes.sum()) * 4 + len(sizes) <= config["bytes_limit"]


def test_the_export_is_byte_for_byte_reproducible_and_replaces_only_its_own_kind(tmp_path: Path):
    source = export(tmp_path / "packed", {"item": np.array([4, 2, 4, 1])}, 4)
    export_torchrec(source, tmp_path / "a")
    export_torchrec(source, tmp_path / "b")
    for name in (CONFIG_FILE, STATE_FILE, REMAP_FILE):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    export_torchrec(source, tmp_path / "a")  # an earlier TorchRec export is replaced
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ArtifactError, match="refusing to replace"):
        export_torchrec(source, tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(0, 13), min_size=1, max_size=40), align=st.sampled_from([1, 2, 4, 8]),
       spare=st.integers(0, 64))
def test_alignment_is_paid_from_the_budget_or_refused_naming_the_bytes(tmp_path_factory, sizes, align, spare):
    folder = tmp_path_factory.mktemp("e")
    if not any(sizes):
        sizes[0] = 1
    source = export(folder / "packed", {"t": np.array(sizes)}, 13, spare=spare)
    distinct = sorted(set(sizes))
    needed = sum(-(-s // align) * align * sizes.count(s) for s in distinct) * 4 + (len(sizes) if len(distinct) > 1 else 0)
    limit = min(sum(sizes) + spare, 13 * len(sizes)) * 4 + len(sizes)  # the budget holds at most every value
    if needed <= limit:
        config = export_torchrec(source, folder / "tr", align=align)
        assert config["bytes"] == needed
        for feature, size, dim, _ in config["tables"]["t"]["tiers"]:
            assert dim % align == 0 and dim - size < align
    else:
        with pytest.raises(BudgetError, match=f"need {needed:,} bytes .* over the {limit:,}.*multiples of {align}"):
            export_torchrec(source, folder / "tr", align=align)
        assert not (folder / "tr").exists()


def test_integer_rows_are_refused_when_float_tables_would_break_the_budget(tmp_path: Path):
    rows = {"item": 64}
    dims = {"item": np.full(64, 8)}
    allocation = Allocation(dims, row_precisions={"item": np.zeros(64, dtype=np.int64)}, precisions=("int8",))
    embedding = MaskableEmbedding(rows, 8, seed=0)
    embedding.set_allocation(allocation)
    fixed = precision_fixed_bytes(rows, 0, 8, ("int8",))
    budget = Budget.from_bytes(fixed + allocation.bits("row") // 8, rows, 8, 0, precisions=("int8",))
    export_tables(tmp_path / "packed", embedding, allocation, budget)
    with pytest.raises(BudgetError, match="integer rows stored dequantised"):
        export_torchrec(tmp_path / "packed", tmp_path / "tr")


def test_a_damaged_source_or_an_empty_table_set_is_refused(tmp_path: Path):
    source = export(tmp_path / "packed", {"item": np.array([2, 2])}, 4)
    (source / "tables.safetensors").write_bytes(b"\0" * 8)
    with pytest.raises(PackedArtifactError):
        export_torchrec(source, tmp_path / "tr")
    empty = export(tmp_path / "zeros", {"item": np.array([0, 0])}, 4)
    with pytest.raises(ArtifactError, match="nothing for TorchRec to serve"):
        export_torchrec(empty, tmp_path / "tr")
    with pytest.raises(ValueError, match="align"):
        export_torchrec(empty, tmp_path / "tr", align=3)


def test_the_loader_says_how_to_install_torchrec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    source = export(tmp_path / "packed", {"item": np.array([2, 1])}, 2)
    export_torchrec(source, tmp_path / "tr")
    monkeypatch.setitem(sys.modules, "torchrec", None)
    with pytest.raises(ModuleNotFoundError, match=r'pip install "embnas\[torchrec\]"'):
        TorchRecTables.load(tmp_path / "tr")


# -- TorchRec serving the same vectors ------------------------------------------------------------
@needs_torchrec
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**16), tables=st.integers(1, 3), quarter=st.integers(1, 6), align=st.sampled_from([1, 4]))
def test_torchrec_serves_exactly_the_packed_vectors(tmp_path_factory, seed, tables, quarter, align):
    d_max = 4 * quarter  # a budget of every value then has room for any rounding to multiples of 4
    rng = np.random.default_rng(seed)
    dims = {f"f{k}": rng.integers(0, d_max + 1, int(rng.integers(1, 60))) for k in range(tables)}
    if all(not sizes.any() for sizes in dims.values()):
        dims["f0"][0] = d_max
    folder = tmp_path_factory.mktemp("e")
    source = export(folder / "packed", dims, d_max, spare=10_000, seed=seed)  # room for any alignment
    export_torchrec(source, folder / "tr", align=align)
    packed = PackedEmbedding.load(source)
    served = TorchRecTables.load(folder / "tr")
    for name, sizes in dims.items():
        ids = torch.from_numpy(rng.integers(0, len(sizes), (3, 7)))
        assert torch.equal(served.lookup(name, ids), packed.lookup(name, ids))
        assert torch.equal(served.lookup(name, torch.arange(len(sizes))), packed.table(name))
        assert served.lookup(name, torch.zeros(0, dtype=torch.int64)).shape == (0, d_max)


@needs_torchrec
def test_the_collections_are_plain_torchrec_modules_fed_by_keyed_jagged_tensors(tmp_path: Path):
    from torchrec import EmbeddingBagCollection, KeyedJaggedTensor

    sizes = np.array([4, 2, 4, 0, 2])
    source = export(tmp_path / "packed", {"item": sizes, "user": np.full(3, 4)}, 4)
    export_torchrec(source, tmp_path / "tr")
    served = TorchRecTables.load(tmp_path / "tr")
    collection = served.collections["item"]
    assert isinstance(collection, EmbeddingBagCollection)
    assert sorted(config.embedding_dim for config in collection.embedding_bag_configs()) == [2, 4]
    features = served.features("item", torch.tensor([0, 3, 4]))
    assert isinstance(features, KeyedJaggedTensor) and features.keys() == ["item__d2", "item__d4"]
    pooled = collection(features).to_dict()
    packed = PackedEmbedding.load(source)
    assert torch.equal(pooled["item__d4"][0], packed.lookup("item", torch.tensor(0)))
    assert torch.equal(pooled["item__d2"][2], packed.lookup("item", torch.tensor(4))[:2])
    assert not pooled["item__d4"][1].any() and not pooled["item__d2"][1].any()  # row 3 has size 0
    with pytest.raises(IndexError):
        served.lookup("item", torch.tensor([5]))
    with pytest.raises(KeyError, match="no table"):
        served.lookup("nope", torch.tensor([0]))
    assert served.memory_bytes() == (4 * 2 + 2 * 2) * 4 + 3 * 4 * 4 + 5 * (1 + 4)


@needs_torchrec
def test_an_fp16_export_gives_fp16_tables(tmp_path: Path):
    source = export(tmp_path / "packed", {"item": np.array([3, 1, 3])}, 4, dtype="float16")
    config = export_torchrec(source, tmp_path / "tr")
    assert config["dtype"] == "float16"
    served = TorchRecTables.load(tmp_path / "tr")
    assert all(p.dtype == torch.float16 for p in served.collections.parameters())
    packed = PackedEmbedding.load(source)
    ids = torch.tensor([2, 0, 1, 1])
    assert served.lookup("item", ids).dtype == torch.float16
    assert torch.equal(served.lookup("item", ids), packed.lookup("item", ids))


@needs_torchrec
def test_a_state_dict_that_disagrees_with_the_config_is_refused(tmp_path: Path):
    source = export(tmp_path / "packed", {"item": np.array([3, 1, 3])}, 4)
    export_torchrec(source, tmp_path / "tr")
    config = json.loads((tmp_path / "tr" / CONFIG_FILE).read_text())
    config["tables"]["item"]["tiers"][0][0] = "renamed"
    (tmp_path / "tr" / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(PackedArtifactError, match="disagree"):
        TorchRecTables.load(tmp_path / "tr")
    (tmp_path / "tr" / CONFIG_FILE).write_text("{")
    with pytest.raises(PackedArtifactError, match="cannot be read"):
        TorchRecTables.load(tmp_path / "tr")
