"""Exports with a precision per row: bit-for-bit parity, bytes within the budget from the files alone, tampering refused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from nas.artifact.export import export_tables
from nas.artifact.serving import (
    MANIFEST_FILE, STORED_PRECISIONS, STORED_SCALES, TABLES_FILE, PackedArtifactError, PackedEmbedding, manifest_digest,
)
from nas.core.accounting import precision_fixed_bytes
from nas.core.allocation import Allocation
from nas.core.budget import Budget
from nas.core.precision import PRECISIONS, SCALES
from nas.pipeline.embedding import MaskableEmbedding
from nas.testing.serving import serving_ways

ALL = tuple(PRECISIONS)
#: Every way to serve an export (load keyword arguments): each parity test runs on all.
WAYS = serving_ways()
LAYOUTS = tuple(WAYS)


def random_case(seed: int, precisions: tuple[str, ...], d_min: int = 0, d_max: int = 16, scales: str = "row"):
    rng = np.random.default_rng(seed)
    rows = {f"f{i}": int(rng.integers(1, 400)) for i in range(int(rng.integers(1, 4)))}
    dims = {name: rng.integers(d_min, d_max + 1, n) for name, n in rows.items()}
    index = {name: rng.integers(0, len(precisions), n) for name, n in rows.items()}
    allocation = Allocation(dims, row_precisions=index, precisions=precisions)
    embedding = MaskableEmbedding(rows, d_max, std=float(rng.choice([0.01, 0.1, 3.0])), seed=seed, scales=scales)
    embedding.set_allocation(allocation)
    return rows, allocation, embedding


def tight_byte_budget(rows, allocation, precisions, d_min: int = 0, d_max: int = 16, spare: int = 0,
                      scales: str = "row") -> Budget:
    """The smallest byte budget that holds ``allocation`` (plus ``spare`` bytes)."""
    fixed = precision_fixed_bytes(rows, d_min, d_max, precisions, scales)
    return Budget.from_bytes(fixed + -(-allocation.bits(scales) // 8) + spare, rows, d_max, d_min,
                             precisions=precisions, scales=scales)


def folder_bytes(folder: Path) -> int:
    return sum(entry.stat().st_size for entry in folder.iterdir())


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), precisions=st.lists(st.sampled_from(ALL), min_size=1, max_size=5, unique=True),
       spare=st.integers(0, 16), scales=st.sampled_from(SCALES))
def test_the_loader_serves_the_fake_quantised_model_bit_for_bit_within_the_bytes(tmp_path_factory, seed, precisions, spare,
                                                                                 scales):
    precisions = tuple(precisions)
    rows, allocation, embedding = random_case(seed, precisions, scales=scales)
    budget = tight_byte_budget(rows, allocation, precisions, spare=spare, scales=scales)
    folder = tmp_path_factory.mktemp("e") / "export"
    manifest = export_tables(folder, embedding, allocation, budget)
    assert folder_bytes(folder) == manifest["bytes_stored"] <= int(budget.amount)  # from the files alone
    for layout in LAYOUTS:
        loaded = PackedEmbedding.load(folder, **WAYS[layout])
        for name, n in rows.items():
            expected = embedding.table(name).detach()
            assert torch.equal(loaded.table(name).view(torch.int32), expected.view(torch.int32))
            ids = torch.randint(0, n, (5, 3), generator=torch.Generator().manual_seed(seed))
            assert torch.equal(loaded.lookup(name, ids).view(torch.int32), expected[ids].view(torch.int32))


def test_integers_are_packed_to_their_bits(tmp_path):
    rows = {"user": 64}
    for precision in ("int8", "int4", "int2"):
        allocation = Allocation({"user": np.full(64, 15)}, row_precisions={"user": np.zeros(64, np.int64)},
                                precisions=(precision,))
        embedding = MaskableEmbedding(rows, 16, seed=0)
        budget = tight_byte_budget(rows, allocation, (precision,))
        export_tables(tmp_path / precision, embedding, allocation, budget)
        tensors = st_load((tmp_path / precision / TABLES_FILE).read_bytes())
        bits = STORED_PRECISIONS[precision][0]
        assert tensors[f"user.{precision}.values"].numel() == -(-64 * 15 * bits // 8)  # the last byte padded
        assert tensors[f"user.{precision}.scales"].dtype == torch.float16
        assert tensors["user.codes"].dtype == torch.uint8


def test_shared_scales_store_one_scale_a_size_and_no_row_pays_for_one(tmp_path):
    rows = {"user": 300}
    rng = np.random.default_rng(0)
    dims = rng.integers(1, 9, 300)
    allocation = Allocation({"user": dims}, row_precisions={"user": np.zeros(300, np.int64)}, precisions=("int4",))
    embedding = MaskableEmbedding(rows, 8, seed=0, scales="shared")
    embedding.set_allocation(allocation)
    budget = tight_byte_budget(rows, allocation, ("int4",), d_min=1, d_max=8, scales="shared")
    manifest = export_tables(tmp_path / "e", embedding, allocation, budget)
    assert manifest["scales"] == "shared" and manifest["bits_stored"] == int(dims.sum()) * 4
    tensors = st_load((tmp_path / "e" / TABLES_FILE).read_bytes())
    assert tensors["user.int4.scales"].shape == (8,)
    # A size's scale covers the largest value of its rows: rows of one size share it.
    served = embedding.table("user").detach()
    weights = embedding.weights["user"].detach()
    for size in (1, 4, 8):
        members = np.flatnonzero(dims == size)
        peak = float(weights[members, :size].abs().max())
        scale = float(tensors["user.int4.scales"][size - 1])
        assert peak / 7 <= scale < peak / 7 * 1.001  # fp16 rounded up
        assert torch.equal(served[members, :size] / scale, (served[members, :size] / scale).round())
    for layout in LAYOUTS:
        assert torch.equal(PackedEmbedding.load(tmp_path / "e", **WAYS[layout]).table("user").view(torch.int32),
                           served.view(torch.int32))


def test_the_loader_knows_the_precisions_of_the_core():
    assert STORED_PRECISIONS == {name: (p.bits, p.integer) for name, p in PRECISIONS.items()}
    assert STORED_SCALES == SCALES


def test_an_export_without_precisions_keeps_format_version_1(tmp_path):
    rows = {"user": 30}
    embedding = MaskableEmbedding(rows, 8, seed=0)
    manifest = export_tables(tmp_path / "e", embedding, Allocation({"user": np.full(30, 4)}), Budget.from_sparsity(0.5, rows, 8))
    assert manifest["format_version"] == 1 and "precisions" not in manifest
    assert set(st_load((tmp_path / "e" / TABLES_FILE).read_bytes())) == {"user.row_dims", "user.values"}


# -- tampering ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pristine") / "export"
    rows, allocation, embedding = random_case(11, ALL, d_min=1)
    export_tables(folder, embedding, allocation, tight_byte_budget(rows, allocation, ALL, d_min=1, spare=64))
    return folder


def _reseal(folder: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Rewrite the payload and a matching manifest, so only the loader's deeper checks can object."""
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    payload = st_save(tensors, metadata={"manifest_sha256": manifest_digest(manifest)})
    (folder / TABLES_FILE).write_bytes(payload)
    manifest["files"] = {TABLES_FILE: {"bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}}
    for _ in range(3):
        manifest["bytes_stored"] = len(payload) + len((json.dumps(manifest, indent=1) + "\n").encode())
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n")


def _first_table(tensors: dict[str, torch.Tensor]) -> str:
    return sorted(key.split(".")[0] for key in tensors)[0]


def test_a_tampered_scale_or_code_is_refused_by_its_digest(export):
    tensors = st_load((export / TABLES_FILE).read_bytes())
    name = _first_table(tensors)
    scales = tensors[f"{name}.int8.scales"].clone()
    scales[0] = scales[0] * 2
    raw = (export / TABLES_FILE).read_bytes()
    (export / TABLES_FILE).write_bytes(raw.replace(tensors[f"{name}.int8.scales"].numpy().tobytes(), scales.numpy().tobytes()))
    with pytest.raises(PackedArtifactError, match="sha256 mismatch"):
        PackedEmbedding.load(export)


@pytest.mark.parametrize("change, message", [
    (lambda t, n: {f"{n}.codes": torch.full_like(t[f"{n}.codes"], 255)}, "past the"),
    (lambda t, n: {f"{n}.int8.scales": -t[f"{n}.int8.scales"].abs() - 1}, "negative or not finite"),
    (lambda t, n: {f"{n}.int8.scales": torch.full_like(t[f"{n}.int8.scales"], float("inf"))}, "negative or not finite"),
    (lambda t, n: {f"{n}.int8.values": torch.full_like(t[f"{n}.int8.values"], -128)}, "beyond ±127"),
    (lambda t, n: {f"{n}.int2.values": torch.full_like(t[f"{n}.int2.values"], 0b10101010)}, "beyond ±1|padding"),
    (lambda t, n: {f"{n}.fp16.values": torch.full_like(t[f"{n}.fp16.values"], float("nan"))}, "not finite"),
])
def test_resealed_inconsistent_precision_tables_are_refused(export, change, message):
    tensors = st_load((export / TABLES_FILE).read_bytes())
    name = _first_table(tensors)
    _reseal(export, {**tensors, **change(tensors, name)})
    with pytest.raises(PackedArtifactError, match=message):
        PackedEmbedding.load(export)


@pytest.fixture()
def shared_export(tmp_path):
    rows, allocation, embedding = random_case(12, ALL, d_min=1, scales="shared")
    export_tables(tmp_path / "export", embedding, allocation,
                  tight_byte_budget(rows, allocation, ALL, d_min=1, spare=64, scales="shared"))
    return tmp_path / "export"


def test_shared_scales_resealed_per_row_or_with_an_unknown_mode_are_refused(shared_export):
    tensors = st_load((shared_export / TABLES_FILE).read_bytes())
    name = _first_table(tensors)
    rows = int((tensors[f"{name}.codes"].to(torch.int64) % len(ALL) == ALL.index("int8")).sum())
    _reseal(shared_export, {**tensors, f"{name}.int8.scales": torch.ones(rows + 17, dtype=torch.float16)})
    with pytest.raises(PackedArtifactError, match="int8.scales"):
        PackedEmbedding.load(shared_export)
    manifest = json.loads((shared_export / MANIFEST_FILE).read_text())
    manifest["scales"] = "column"
    (shared_export / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n")
    _reseal(shared_export, tensors)
    with pytest.raises(PackedArtifactError, match="scales are 'column'"):
        PackedEmbedding.load(shared_export)


def test_bits_over_the_budget_are_refused_from_the_manifest(export):
    manifest = json.loads((export / MANIFEST_FILE).read_text())
    manifest["budget"]["max_bits"] = manifest["bits_stored"] - 1
    tensors = st_load((export / TABLES_FILE).read_bytes())
    (export / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n")
    _reseal(export, tensors)
    with pytest.raises(PackedArtifactError, match="over the budget"):
        PackedEmbedding.load(export)
