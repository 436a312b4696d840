"""Export and serving: parity with the masked model, the byte budget, tampering, atomicity, imports."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

import nas.artifact.export as export_module
import nas.artifact.serving as serving_module
from nas.core.allocation import Allocation
from nas.core.budget import Budget
from nas.core.errors import ArtifactError, BudgetError, ConfigError
from nas.core.accounting import export_bytes
from nas.pipeline.embedding import MaskableEmbedding
from nas.artifact.export import export_byte_limit, export_tables
from nas.artifact.serving import (
    MANIFEST_FILE, MAX_D_MAX, MAX_MANIFEST_BYTES, TABLES_FILE, PackedArtifactError, PackedEmbedding, manifest_digest,
)
from nas.testing.serving import serving_ways

_BITS = {2: torch.int16, 4: torch.int32, 8: torch.int64}
#: Every way to serve an export (load keyword arguments): each parity test runs on all.
WAYS = serving_ways()
LAYOUTS = tuple(WAYS)


def bits(tensor: torch.Tensor) -> torch.Tensor:
    """The raw bits, so -0.0 and +0.0 (and NaN payloads) compare as different."""
    return tensor.contiguous().view(_BITS[tensor.element_size()])


def assert_bit_identical(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(bits(a), bits(b))


def make_embedding(rows: dict[str, int], d_max: int, seed: int, dropped_by: Allocation | None = None) -> MaskableEmbedding:
    """A maskable embedding whose weights include negatives and -0.0.

    With ``dropped_by``, also -inf and NaN, in positions that allocation drops (served as +0.0);
    the export refuses non-finite values it would keep (test_export_refuses_non_finite_values).
    """
    embedding = MaskableEmbedding(rows, d_max, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, weight in embedding.weights.items():
            pick = torch.rand(weight.shape, generator=generator)
            weight[pick < 0.1] = -0.0
            if dropped_by is None:
                continue
            masks = dropped_by.element_masks or {}
            keep = (torch.from_numpy(masks[name]) if name in masks
                    else torch.arange(d_max) < torch.from_numpy(dropped_by.row_dims[name]).unsqueeze(1))
            weight[(pick >= 0.1) & (pick < 0.12) & ~keep] = float("-inf")
            weight[(pick >= 0.12) & (pick < 0.14) & ~keep] = float("nan")
    return embedding


def random_allocation(rows: dict[str, int], d_min: int, d_max: int, rng: np.random.Generator,
                      masks: bool) -> Allocation:
    dims = {name: rng.integers(d_min, d_max + 1, n) for name, n in rows.items()}
    if not masks:
        return Allocation(dims)
    element = {
        name: (rng.random((n, d_max)) < rng.random()) & (np.arange(d_max) < dims[name][:, None])
        for name, n in rows.items()
    }
    return Allocation(dims, element)


def folder_bytes(folder: Path) -> int:
    return sum(entry.stat().st_size for entry in folder.iterdir())


def leftovers(parent: Path) -> list[str]:
    return sorted(entry.name for entry in parent.iterdir() if entry.name.startswith("."))


# -- parity --------------------------------------------------------------------------------------
@st.composite
def cases(draw):
    d_max = draw(st.integers(1, 12))
    d_min = draw(st.integers(0, d_max))
    rows = {f"t{i}": draw(st.integers(1, 40)) for i in range(draw(st.integers(1, 3)))}
    return rows, d_min, d_max, draw(st.integers(0, 2**31 - 1)), draw(st.booleans()), draw(st.integers(0, 5))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_loaded_lookup_is_bit_identical_to_the_masked_model(case):
    rows, d_min, d_max, seed, with_masks, slack = case
    rng = np.random.default_rng(seed)
    allocation = random_allocation(rows, d_min, d_max, rng, with_masks)
    budget_values = max(allocation.cost, sum(rows.values()) * d_min) + slack
    budget = Budget.from_params(budget_values, rows, d_max, d_min)
    embedding = make_embedding(rows, d_max, seed % 1000, dropped_by=allocation)
    with tempfile.TemporaryDirectory() as tmp:
        export_tables(Path(tmp) / "export", embedding, allocation, budget)
        served = {layout: PackedEmbedding.load(Path(tmp) / "export", **WAYS[layout], verify=layout == "packed")
                  for layout in LAYOUTS}
    embedding.set_allocation(allocation)
    for layout, loaded in served.items():
        assert loaded.rows == rows and loaded.dim == d_max and loaded.layout == WAYS[layout]["layout"]
        for name, n in rows.items():
            ids = torch.from_numpy(rng.integers(0, n, (3, 7)))
            expected = embedding.lookup(name, ids).detach()
            assert_bit_identical(loaded.lookup(name, ids), expected)
            assert_bit_identical(loaded.lookup(name, ids.to(torch.int32)), expected)
            assert_bit_identical(loaded.table(name), embedding.table(name).detach())


def test_parity_for_tensors_float16_and_wide_rows(tmp_path):
    """Given tensors (not a module), a half-precision export, and d_max > 255 (uint16 row sizes)."""
    rng = np.random.default_rng(1)
    rows = {"user": 30, "item": 20}
    for d_max, dtype, torch_dtype in ((300, "float32", torch.float32), (9, "float16", torch.float16)):
        weights = {name: torch.randn(n, d_max).to(torch_dtype) for name, n in rows.items()}
        allocation = random_allocation(rows, 0, d_max, rng, masks=False)
        budget = Budget.from_params(allocation.cost, rows, d_max, d_min=0, dtype=dtype)
        manifest = export_tables(tmp_path / dtype, weights, allocation, budget)
        assert manifest["tables"]["user"]["dims_dtype"] == ("uint16" if d_max > 255 else "uint8")
        model = MaskableEmbedding(rows, d_max).to(torch_dtype)
        with torch.no_grad():
            for name, weight in weights.items():
                model.weights[name].copy_(weight)
        model.set_allocation(allocation)
        for layout in LAYOUTS:
            loaded = PackedEmbedding.load(tmp_path / dtype, **WAYS[layout])
            for name in rows:
                assert_bit_identical(loaded.table(name), model.table(name).detach())


@pytest.mark.parametrize("layout", LAYOUTS)
def test_export_uses_the_given_allocation_and_restores_the_models(layout, tmp_path):
    rows = {"user": 50}
    rng = np.random.default_rng(2)
    embedding = make_embedding(rows, 8, 3)
    other, wanted = random_allocation(rows, 1, 8, rng, False), random_allocation(rows, 1, 8, rng, True)
    embedding.set_allocation(other)
    export_tables(tmp_path / "e", embedding, wanted, Budget.from_params(400, rows, 8))
    assert embedding.allocation is other
    embedding.set_allocation(wanted)
    assert_bit_identical(PackedEmbedding.load(tmp_path / "e", **WAYS[layout]).table("user"), embedding.table("user").detach())


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("backbone", ["mf", "lightgcn", "neumf", "ngcf"])
def test_a_backbone_on_the_loaded_export_scores_exactly_as_the_masked_model(backbone, layout, tmp_path):
    """The served vectors feed every backbone unchanged: the same weights rank bit for bit alike."""
    from nas.pipeline.backbones import BACKBONES
    from recsys.data import synthetic

    data = synthetic(n_users=40, n_items=60, mean_items_per_user=6.0, seed=0)
    rows = data.rows()
    allocation = random_allocation(rows, 1, 8, np.random.default_rng(3), masks=False)
    embedding = MaskableEmbedding(rows, 8, seed=1)
    model = BACKBONES.get(backbone)(embedding, data).eval()
    export_tables(tmp_path / "e", embedding, allocation, Budget.from_params(allocation.cost, rows, 8, d_min=1))
    served = BACKBONES.get(backbone)(PackedEmbedding.load(tmp_path / "e", **WAYS[layout]), data).eval()
    served.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("embedding.")})
    embedding.set_allocation(allocation)
    users = torch.arange(rows["user"])
    with torch.no_grad():
        assert_bit_identical(served.all_scores(users), model.all_scores(users))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("backbone", ["fm", "deepfm", "dcnv2"])
def test_a_click_backbone_on_the_loaded_export_predicts_exactly_as_the_masked_model(backbone, layout, tmp_path):
    """One table per field is exported; the dense weights (first-order scalars, MLP, cross layers) travel with the model."""
    from nas.pipeline.backbones import BACKBONES
    from recsys.data import synthetic_ctr

    data = synthetic_ctr(n_rows=400, fields={"user": 40, "item": 60, "genre": 6, "flag": 2}, seed=0)
    rows = data.rows()
    allocation = random_allocation(rows, 0, 8, np.random.default_rng(4), masks=False)
    budget = Budget.from_params(allocation.cost, rows, 8, d_min=0)
    embedding = MaskableEmbedding(rows, 8, std=0.01, seed=1)
    model = BACKBONES.get(backbone)(embedding, data).eval()
    with torch.no_grad():  # trained-looking dense weights, so the parity covers them
        for name, parameter in model.named_parameters():
            if not name.startswith("embedding."):
                parameter.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(len(name)))
    manifest = export_tables(tmp_path / "e", embedding, allocation, budget)
    assert set(manifest["tables"]) == set(data.fields) and manifest["bytes_stored"] <= budget.max_bytes
    served = BACKBONES.get(backbone)(PackedEmbedding.load(tmp_path / "e", **WAYS[layout]), data).eval()
    dense = {k: v for k, v in model.state_dict().items() if not k.startswith("embedding.")}
    assert any(k.startswith("linear") for k in dense) == (backbone != "dcnv2")
    served.load_state_dict(dense)
    embedding.set_allocation(allocation)
    x = torch.from_numpy(np.concatenate([data.x[s] for s in ("train", "valid", "test")]))
    with torch.no_grad():
        for name in data.fields:
            ids = torch.arange(rows[name])
            assert_bit_identical(served.embedding.lookup(name, ids), embedding.lookup(name, ids).detach())
        assert_bit_identical(served.logits(x), model.logits(x))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_empty_tables_and_bad_ids(layout, tmp_path):
    rows = {"a": 5, "b": 4}
    allocation = Allocation({"a": np.zeros(5, dtype=np.int64), "b": np.array([0, 3, 0, 1])})
    export_tables(tmp_path / "e", make_embedding(rows, 4, 0), allocation, Budget.from_params(4, rows, 4, d_min=0))
    packed = PackedEmbedding.load(tmp_path / "e", **WAYS[layout])
    assert_bit_identical(packed.table("a"), torch.zeros(5, 4))
    assert packed.lookup("b", torch.zeros(0, dtype=torch.int64)).shape == (0, 4)
    for name, n in rows.items():  # "a" has no values at all: its ids are still checked
        for bad in (torch.tensor([n]), torch.tensor([-1]), torch.tensor([[0], [n]], dtype=torch.int32)):
            with pytest.raises(IndexError):
                packed.lookup(name, bad)
    with pytest.raises(KeyError, match="no table 'c'"):
        packed.lookup("c", torch.tensor([0]))


# -- the budget, from the files alone -------------------------------------------------------------
def _budget_from_files(folder: Path) -> tuple[dict, int]:
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    return manifest, folder_bytes(folder)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from(["bytes", "params", "sparsity"]), st.booleans())
def test_files_on_disk_meet_the_budget(seed, kind, with_masks):
    rng = np.random.default_rng(seed)
    rows = {f"f{i}": int(rng.integers(1, 300)) for i in range(int(rng.integers(1, 4)))}
    d_max = int(rng.integers(1, 33))
    allocation = random_allocation(rows, 0, d_max, rng, with_masks)
    if kind == "bytes":
        # The smallest byte budget that holds the allocation (element masks paid on top), plus a little.
        needed = export_bytes(allocation.cost, rows, d_max, element_mask=with_masks)
        budget = Budget.from_bytes(needed + int(rng.integers(0, 8)), rows, d_max, d_min=0)
    elif kind == "params":
        budget = Budget.from_params(allocation.cost + int(rng.integers(0, 5)), rows, d_max, d_min=0)
    else:
        full = sum(rows.values()) * d_max
        budget = Budget.from_sparsity(max(0.0, 1.0 - allocation.cost / full - 1e-6), rows, d_max, d_min=0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "export"
        export_tables(folder, make_embedding(rows, d_max, 0), allocation, budget)
        manifest, on_disk = _budget_from_files(folder)
    stored = sum(spec["values_stored"] for spec in manifest["tables"].values())
    recorded = dict(manifest["budget"])
    max_bytes = recorded.pop("max_bytes")
    assert Budget.from_dict(recorded) == budget
    assert stored == allocation.cost <= recorded["max_values"]
    assert on_disk == manifest["bytes_stored"] <= manifest["bytes_limit"]
    if kind == "bytes":
        assert on_disk <= int(recorded["amount"])
    if not with_masks:
        assert on_disk <= max_bytes


def test_a_byte_budget_spent_to_the_last_value(tmp_path):
    rows = {"user": 1000, "item": 3000}
    budget = Budget.from_bytes(100_000, rows, 16)
    dims = {name: np.full(n, 1) for name, n in rows.items()}
    spare = budget.max_values - 4000
    dims["item"][: spare // 15] = 16
    dims["item"][spare // 15] += spare % 15
    allocation = Allocation(dims)
    assert allocation.cost == budget.max_values
    export_tables(tmp_path / "e", make_embedding(rows, 16, 0), allocation, budget)
    manifest, on_disk = _budget_from_files(tmp_path / "e")
    assert on_disk <= budget.max_bytes <= 100_000
    assert manifest["bytes_stored"] == on_disk


def test_over_budget_is_refused_and_leaves_nothing(tmp_path):
    rows = {"user": 20}
    budget = Budget.from_params(40, rows, 8)
    too_big = Allocation({"user": np.full(20, 3)})
    with pytest.raises(BudgetError, match="20 over the budget"):
        export_tables(tmp_path / "e", make_embedding(rows, 8, 0), too_big, budget)
    assert list(tmp_path.iterdir()) == []
    # Element masks under a byte budget that did not reserve them: refused before writing.
    byte_budget = Budget.from_bytes(4096 + 512 + 20 + 40 * 4, rows, 8)
    masked = Allocation({"user": np.full(20, 2)}, {"user": np.arange(8) < np.full((20, 1), 2)})
    with pytest.raises(BudgetError, match="element masks"):
        export_tables(tmp_path / "e", make_embedding(rows, 8, 0), masked, byte_budget)
    assert list(tmp_path.iterdir()) == []


# -- tampering ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pristine") / "export"
    rows = {"user": 40, "item": 60}
    rng = np.random.default_rng(5)
    allocation = random_allocation(rows, 1, 8, rng, masks=False)
    export_tables(folder, make_embedding(rows, 8, 1), allocation, Budget.from_sparsity(0.2, rows, 8))
    return folder


def _rewrite_manifest(folder: Path, change, *, reseal: bool = True) -> None:
    """Edit the manifest; with ``reseal`` also fix ``bytes_stored`` so only deeper checks can object."""
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    change(manifest)
    payload = sum(entry["bytes"] for entry in manifest.get("files", {}).values())
    for _ in range(3):
        text = json.dumps(manifest, indent=1) + "\n"
        if reseal:
            manifest["bytes_stored"] = payload + len(text.encode())
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n")


def _reseal(folder: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Rewrite the payload *and* a matching manifest: only the deep consistency checks can object."""
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    payload = st_save(tensors, metadata={"manifest_sha256": manifest_digest(manifest)})
    (folder / TABLES_FILE).write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    _rewrite_manifest(folder, lambda m: m["files"].update({TABLES_FILE: {"bytes": len(payload), "sha256": digest}}))


def test_the_pristine_export_loads(export):
    assert PackedEmbedding.load(export).rows == {"user": 40, "item": 60}


def test_flipped_byte_is_refused(export):
    data = bytearray((export / TABLES_FILE).read_bytes())
    data[-3] ^= 0x10
    (export / TABLES_FILE).write_bytes(bytes(data))
    with pytest.raises(PackedArtifactError, match=r"tables\.safetensors: sha256 mismatch"):
        PackedEmbedding.load(export)


@pytest.mark.parametrize("verify", [True, False])
def test_truncated_payload_is_refused(export, verify):
    data = (export / TABLES_FILE).read_bytes()
    (export / TABLES_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(PackedArtifactError, match="truncated"):
        PackedEmbedding.load(export, verify=verify)


@pytest.mark.parametrize("cut", [4, 100, -20])
def test_truncated_payload_with_a_matching_manifest_gives_a_clear_error(export, cut):
    """Even when the manifest was edited to match, a cut file never reaches safetensors' own errors."""
    data = (export / TABLES_FILE).read_bytes()[:cut]
    (export / TABLES_FILE).write_bytes(data)
    _rewrite_manifest(export, lambda m: m["files"][TABLES_FILE].update(bytes=len(data)))
    with pytest.raises(PackedArtifactError, match=r"tables\.safetensors: .*(truncated|outside the file|header)"):
        PackedEmbedding.load(export, verify=False)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m["tables"]["user"].update(rows=41), "the manifest was edited"),
        (lambda m: m.update(format_version=3), "format_version is 3"),
        (lambda m: m.update(format_version=2), "the manifest was edited"),
        (lambda m: m.update(format="something-else"), "format is 'something-else'"),
        (lambda m: m["tables"]["item"].update(values_stored=m["tables"]["item"]["values_stored"] + 1), "the manifest was edited"),
        (lambda m: m.update(dtype="int8"), "value dtype 'int8'"),
        (lambda m: m["tables"].pop("item"), "the manifest was edited"),
        (lambda m: m.update(d_min=0), "the manifest was edited"),
        (lambda m: m["budget"].update(max_values=m["budget"]["max_values"] + 1), "the manifest was edited"),
        (lambda m: m.update(config_hash="tampered"), "the manifest was edited"),
        (lambda m: m.pop("files"), "no 'files' entry"),
    ],
)
def test_edited_manifest_is_refused(export, change, message):
    _rewrite_manifest(export, change)
    with pytest.raises(PackedArtifactError, match=message):
        PackedEmbedding.load(export)


def test_manifest_edit_that_changes_its_size_is_refused(export):
    _rewrite_manifest(export, lambda m: m.update(config_hash="x" * 10), reseal=False)
    with pytest.raises(PackedArtifactError, match="the manifest was edited"):
        PackedEmbedding.load(export)


def test_broken_manifest_json_is_refused(export):
    text = (export / MANIFEST_FILE).read_text()
    (export / MANIFEST_FILE).write_text(text[: len(text) // 2])
    with pytest.raises(PackedArtifactError, match=r"manifest\.json: is not valid JSON"):
        PackedEmbedding.load(export)


@pytest.mark.parametrize("name", [TABLES_FILE, MANIFEST_FILE])
def test_missing_file_is_refused(export, name):
    (export / name).unlink()
    with pytest.raises(PackedArtifactError, match=f"{name}: missing"):
        PackedEmbedding.load(export)
    with pytest.raises(PackedArtifactError, match="is not a folder"):
        PackedEmbedding.load(export / "nowhere")


def test_resealed_inconsistent_tables_are_refused(export):
    tensors = st_load((export / TABLES_FILE).read_bytes())
    dims = tensors["user.row_dims"].clone()
    dims[0] += 1
    _reseal(export, {**tensors, "user.row_dims": dims})
    with pytest.raises(PackedArtifactError, match="row sizes add up to"):
        PackedEmbedding.load(export)
    dims[0] = 9  # past d_max = 8
    _reseal(export, {**tensors, "user.row_dims": dims})
    with pytest.raises(PackedArtifactError, match=r"outside \[d_min=1, d_max=8\]"):
        PackedEmbedding.load(export)


# -- atomicity ------------------------------------------------------------------------------------
def test_failed_write_keeps_the_previous_export(tmp_path, monkeypatch):
    rows = {"user": 30}
    budget = Budget.from_params(200, rows, 8)
    first, second = Allocation({"user": np.full(30, 2)}), Allocation({"user": np.full(30, 5)})
    embedding = make_embedding(rows, 8, 0)
    export_tables(tmp_path / "e", embedding, first, budget)
    before = {name: (tmp_path / "e" / name).read_bytes() for name in (TABLES_FILE, MANIFEST_FILE)}
    real = export_module._write_file

    def failing(path, data):
        if path.name == MANIFEST_FILE:
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(export_module, "_write_file", failing)
    with pytest.raises(OSError, match="No space left"):
        export_tables(tmp_path / "e", embedding, second, budget)
    assert {name: (tmp_path / "e" / name).read_bytes() for name in before} == before
    assert leftovers(tmp_path) == []
    monkeypatch.setattr(export_module, "_write_file", real)
    export_tables(tmp_path / "e", embedding, second, budget)
    assert leftovers(tmp_path) == []
    assert PackedEmbedding.load(tmp_path / "e").manifest["allocation"] == second.fingerprint()


def test_post_write_size_check_discards_the_export(tmp_path, monkeypatch):
    """If the files on disk exceed the limit (an accounting bug), the export is discarded."""
    rows = {"user": 30}
    budget = Budget.from_params(200, rows, 8)
    embedding, allocation = make_embedding(rows, 8, 0), Allocation({"user": np.full(30, 2)})
    real = export_module._write_file
    monkeypatch.setattr(export_module, "_write_file", lambda path, data: real(path, data + b" " * 100_000))
    with pytest.raises(ArtifactError, match="bug in the byte accounting"):
        export_tables(tmp_path / "e", embedding, allocation, budget)
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_replace_a_folder_that_is_not_an_export(tmp_path):
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "notes.txt").write_text("mine")
    rows = {"user": 3}
    with pytest.raises(ArtifactError, match="not an embnas export"):
        export_tables(tmp_path / "e", make_embedding(rows, 4, 0), Allocation({"user": np.ones(3, dtype=int)}),
                      Budget.from_params(3, rows, 4))
    assert (tmp_path / "e" / "notes.txt").read_text() == "mine"


def test_byte_limit_matches_the_budget():
    rows = {"a": 1000}
    budget = Budget.from_bytes(10_000, rows, 8)
    assert export_byte_limit(budget) == budget.max_bytes <= 10_000
    assert export_byte_limit(budget, element_mask=True) == 10_000


# -- the serving module stays deployable ----------------------------------------------------------
def test_serving_imports_only_torch_safetensors_and_the_standard_library():
    """The serving loader is serving.py with native.py (and its gather.c) beside it, and nothing else of embnas."""
    allowed = {"torch", "safetensors", "__future__"} | set(sys.stdlib_module_names)
    for module in ("serving.py", "native.py"):
        source = Path(export_module.__file__).with_name(module).read_text()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert all(name.split(".")[0] in allowed or name == "nas.artifact.native" for name in names), (module, names)
    probe = (
        "import sys, torch, safetensors, safetensors.torch\n"
        "before = set(sys.modules)\n"
        "import nas.artifact.serving\n"
        "new = sorted(set(sys.modules) - before)\n"
        "print('\\n'.join(new))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": str(Path(export_module.__file__).parents[2])})
    new = [line for line in result.stdout.split() if line]
    # Of the project, only the package roots come with it, and the registry hook of the
    # composition root (``nas/__init__``): modules that themselves import only the standard library.
    skeleton = ("nas", "nas.core", "nas.core._lazy", "nas.core.registry", "nas.core.errors", "recsys", "recsys.errors", "nas.artifact",
                "nas.artifact.serving", "nas.artifact.native")
    unexpected = [m for m in new if m not in skeleton and m.split(".")[0] not in sys.stdlib_module_names]
    assert unexpected == [], unexpected


def test_replacing_without_an_atomic_exchange(tmp_path, monkeypatch):
    """Where renameat2(RENAME_EXCHANGE) is missing, the old export is moved aside, then removed."""
    rows = {"user": 10}
    budget = Budget.from_params(80, rows, 8)
    embedding = make_embedding(rows, 8, 0)
    first, second = Allocation({"user": np.full(10, 2)}), Allocation({"user": np.full(10, 7)})
    export_tables(tmp_path / "e", embedding, first, budget)
    monkeypatch.setattr(export_module, "_exchange", lambda a, b: False)
    export_tables(tmp_path / "e", embedding, second, budget)
    assert leftovers(tmp_path) == []
    assert PackedEmbedding.load(tmp_path / "e").manifest["allocation"] == second.fingerprint()


def test_benchmark_script_runs():
    script = Path(export_module.__file__).parents[2] / "benchmarks" / "bench_lookup.py"
    result = subprocess.run(
        [sys.executable, str(script), "--rows", "500", "--dim", "8", "--sparsity", "0.5", "--batch", "64", "--repeat", "2", "--threads", "1"],
        capture_output=True, text=True, check=True,
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert [sizes["sizes"] for sizes in report["sizes"]] == ["freq", "mult4", "pow2"]
    for sizes in report["sizes"]:
        assert sizes["bytes_stored"] <= sizes["budget_max_bytes"]
        assert sizes["serving_memory_tiered"] < sizes["serving_memory_dense"]
    assert {row["ids"] for row in report["lookup"]} == {"uniform", "zipf"}
    assert all(row[f"ratio_{layout}"] > 0 for row in report["lookup"] for layout in ("packed", "tiered", "dense"))


# -- reported cases: hostile manifests and files, reproducible bytes, non-finite values ----------
def _write_manifest_text(folder: Path, text: str) -> None:
    (folder / MANIFEST_FILE).write_text(text)


def test_deeply_nested_manifest_is_refused_naming_the_file(export):
    """Case 1: 100,000 nested brackets raised RecursionError from json."""
    _write_manifest_text(export, "[" * 100_000 + "]" * 100_000)
    with pytest.raises(PackedArtifactError, match=r"manifest\.json: nests deeper than 64 levels"):
        PackedEmbedding.load(export)
    # Deep, but not deep enough to exhaust the parser: refused before the digest recurses into it.
    manifest = {"format": "embnas-packed-embedding", "format_version": 1, "extra": [[[[]]]]}
    text = json.dumps(manifest).replace("[[[[]]]]", "[" * 900 + "]" * 900)
    _write_manifest_text(export, text)
    with pytest.raises(PackedArtifactError, match=r"manifest\.json: nests deeper than 64 levels"):
        PackedEmbedding.load(export)


def test_deeply_nested_safetensors_header_is_refused_naming_the_file(export):
    header = ("[" * 100_000 + "]" * 100_000).encode()
    payload = struct.pack("<Q", len(header)) + header
    (export / TABLES_FILE).write_bytes(payload)
    _rewrite_manifest(export, lambda m: m["files"][TABLES_FILE].update(bytes=len(payload)))
    with pytest.raises(PackedArtifactError, match=r"tables\.safetensors: safetensors header nests deeper"):
        PackedEmbedding.load(export, verify=False)


@pytest.mark.parametrize("token", ["1" + "0" * 5000, "-" + "9" * 4400, "123456789012345678901"])
def test_manifest_with_a_5000_digit_integer_is_refused_naming_the_file(export, token):
    """Case 1: Python's digit limit raised a bare ValueError naming no file."""
    text = (export / MANIFEST_FILE).read_text()
    _write_manifest_text(export, text.replace('"format_version": 1', f'"format_version": {token}'))
    with pytest.raises(PackedArtifactError, match=r"manifest\.json: is not valid JSON \(an integer of \d[\d,]* digits"):
        PackedEmbedding.load(export)


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_manifest_with_non_standard_json_constants_is_refused(export, token):
    text = (export / MANIFEST_FILE).read_text()
    _write_manifest_text(export, text.replace('"d_min": 1', f'"d_min": {token}'))
    with pytest.raises(PackedArtifactError, match=rf"manifest\.json: is not valid JSON \({token} is not standard JSON"):
        PackedEmbedding.load(export)


def test_manifest_errors_stay_on_one_short_line(export):
    _rewrite_manifest(export, lambda m: m.update(format="x\n" * 100_000))
    with pytest.raises(PackedArtifactError) as caught:
        PackedEmbedding.load(export)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400 and message.startswith(f"{export / MANIFEST_FILE}: format is")


def _load_in_thread(folder: Path) -> BaseException | None:
    """Load ``folder`` in a daemon thread; the join's generous timeout only keeps a regression from hanging the suite."""
    outcome: list[BaseException | None] = []

    def load() -> None:
        try:
            PackedEmbedding.load(folder)
            outcome.append(None)
        except BaseException as error:  # noqa: BLE001 - handed to the test
            outcome.append(error)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(120)
    assert outcome, "PackedEmbedding.load blocked"
    return outcome[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("name", [TABLES_FILE, MANIFEST_FILE])
def test_fifo_artifact_file_is_refused_without_blocking(export, name):
    """Case 2: a FIFO in place of either file blocked the loader forever."""
    (export / name).unlink()
    os.mkfifo(export / name)
    error = _load_in_thread(export)
    assert isinstance(error, PackedArtifactError)
    assert str(error) == f"{export / name}: is a FIFO, not a regular file; refusing to read it"


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
@pytest.mark.parametrize("name", [TABLES_FILE, MANIFEST_FILE])
def test_symlink_to_dev_zero_is_refused_without_reading(export, name):
    """Case 2: a link to /dev/zero was read until MemoryError."""
    (export / name).unlink()
    (export / name).symlink_to("/dev/zero")
    error = _load_in_thread(export)
    assert isinstance(error, PackedArtifactError)
    assert str(error) == f"{export / name}: is a character device, not a regular file; refusing to read it"


@pytest.mark.parametrize("name", [TABLES_FILE, MANIFEST_FILE])
def test_folder_in_place_of_an_artifact_file_is_refused(export, name):
    (export / name).unlink()
    (export / name).mkdir()
    with pytest.raises(PackedArtifactError, match=rf"{name}: is a folder, not a regular file"):
        PackedEmbedding.load(export)


def test_oversized_manifest_is_refused_without_reading(export):
    """A manifest past MAX_MANIFEST_BYTES (a sparse file: nothing is written) is refused from its size."""
    with open(export / MANIFEST_FILE, "r+b") as handle:
        handle.truncate(MAX_MANIFEST_BYTES + 1)
    with pytest.raises(PackedArtifactError, match=rf"manifest\.json: is {MAX_MANIFEST_BYTES + 1:,} bytes, more than the"):
        PackedEmbedding.load(export)


@pytest.mark.parametrize("declared", [2**63, -1, 0])
def test_payload_size_is_bounded_by_the_file_on_disk(export, declared):
    """The manifest's size for the payload must be the file's: an enormous one is never used as a read size."""
    _rewrite_manifest(export, lambda m: m["files"][TABLES_FILE].update(bytes=declared))
    with pytest.raises(PackedArtifactError, match=r"tables\.safetensors: is [\d,]+ bytes but the manifest says"):
        PackedEmbedding.load(export)


def test_file_that_grows_while_read_is_refused(export):
    """The size checked is the open descriptor's; bytes appended after that check are caught, not read."""
    path = export / TABLES_FILE
    fd, size = serving_module._open_regular(path, "missing")
    with open(path, "ab") as handle:
        handle.write(b"more")
    with pytest.raises(PackedArtifactError, match=r"tables\.safetensors: grew while it was read"):
        serving_module._read_fd(fd, size, path)


_EXPORT_SCRIPT = """
import sys
import numpy as np
import torch
from nas.artifact.export import export_tables
from nas.core.allocation import Allocation
from nas.core.budget import Budget

rows = {f"table{i}": 20 + i for i in range(8)}
rng = np.random.default_rng(0)
dims = {name: rng.integers(0, 9, n) for name, n in rows.items()}
masks = {"table3": (rng.random((23, 8)) < 0.5) & (np.arange(8) < dims["table3"][:, None])}
weights = {name: torch.from_numpy(rng.standard_normal((n, 8)).astype(np.float32)) for name, n in rows.items()}
allocation = Allocation(dims, masks)
budget = Budget.from_params(allocation.cost, rows, 8, d_min=0)
export_tables(sys.argv[1], weights, allocation, budget, config_hash="c", extra={"z": 1, "a": {"y": 2, "b": 3}})
"""


def test_exports_are_byte_for_byte_reproducible_across_processes(tmp_path):
    """Case 3: safetensors' metadata (a Rust HashMap) came out in a different order on every export."""
    folders, processes = [tmp_path / "e1", tmp_path / "e2"], []
    for seed, folder in zip(("1", "2"), folders):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(Path(export_module.__file__).parents[2])}
        processes.append(subprocess.Popen([sys.executable, "-c", _EXPORT_SCRIPT, str(folder)], env=env))
    assert [process.wait() for process in processes] == [0, 0]
    for name in (TABLES_FILE, MANIFEST_FILE):
        contents = {(folder / name).read_bytes() for folder in folders}
        assert len(contents) == 1, name
    payload = (folders[0] / TABLES_FILE).read_bytes()
    (length,) = struct.unpack("<Q", payload[:8])
    assert list(json.loads(payload[8 : 8 + length])["__metadata__"]) == ["format", "manifest_sha256"]
    PackedEmbedding.load(folders[0])


def test_repeated_exports_in_one_process_are_identical(pristine, tmp_path):
    rows = {"user": 40, "item": 60}
    allocation = random_allocation(rows, 1, 8, np.random.default_rng(5), masks=True)
    budget = Budget.from_params(allocation.cost, rows, 8, d_min=1)
    embedding = make_embedding(rows, 8, 1)
    for name in ("a", "b", "c"):
        export_tables(tmp_path / name, embedding, allocation, budget)
    for name in (TABLES_FILE, MANIFEST_FILE):
        assert len({(tmp_path / folder / name).read_bytes() for folder in "abc"}) == 1


def test_the_written_payload_is_standard_safetensors(export):
    """The hand-written payload reads back with safetensors itself, tensors and metadata alike."""
    from safetensors import safe_open

    manifest = json.loads((export / MANIFEST_FILE).read_text())
    with safe_open(str(export / TABLES_FILE), "pt") as handle:
        assert handle.metadata() == {"format": manifest["format"], "manifest_sha256": manifest_digest(manifest)}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    assert tensors.keys() == st_load((export / TABLES_FILE).read_bytes()).keys() == {
        f"{name}.{part}" for name in ("user", "item") for part in ("row_dims", "values")
    }


def test_exports_written_by_safetensors_save_still_load(export):
    """Older exports (written by safetensors.save, metadata in any order) load exactly as before."""
    before = PackedEmbedding.load(export)
    _reseal(export, st_load((export / TABLES_FILE).read_bytes()))
    after = PackedEmbedding.load(export)
    for name in before.tables:
        assert_bit_identical(after.table(name), before.table(name))


def _tiny_interactions(path: Path) -> Path:
    rng = np.random.default_rng(0)
    lines = ["user_id,item_id"] + [f"{u},{i}" for u in range(60) for i in rng.choice(80, 8, replace=False)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_embnas_export_of_a_run_is_byte_for_byte_reproducible(tmp_path, capsys):
    """Case 3, end to end: `embnas export RUN` twice gives the same bytes (and those of the search's own export)."""
    from nas.app.cli import main

    data = _tiny_interactions(tmp_path / "interactions.csv")
    assert main(["search", "--runs", str(tmp_path), "--name", "r", "--epochs", "1", "--eval-every", "1", "--quiet",
                 "--fitness-users", "300", "--data", str(data), "--d-max", "8", "--budget", "0.5"]) == 0
    run = tmp_path / "r"
    assert main(["export", str(run), "--out", str(tmp_path / "again")]) == 0
    assert main(["export", str(run)]) == 0  # replaces the search's own export
    capsys.readouterr()
    for name in (TABLES_FILE, MANIFEST_FILE):
        assert (tmp_path / "again" / name).read_bytes() == (run / "export" / name).read_bytes(), name


def test_export_refuses_non_finite_values(tmp_path):
    """Case 4: NaN or inf among the kept values means the model diverged; nothing is written."""
    rows = {"user": 6, "item": 4}
    allocation = Allocation({"user": np.full(6, 3), "item": np.full(4, 2)})
    budget = Budget.from_params(allocation.cost, rows, 4)
    for bad in (float("nan"), float("inf"), float("-inf")):
        weights = {name: torch.randn(n, 4) for name, n in rows.items()}
        weights["item"][2, 1] = bad
        with pytest.raises(ArtifactError, match=r"table 'item' holds 1 non-finite values .*the model diverged"):
            export_tables(tmp_path / "e", weights, allocation, budget)
        assert list(tmp_path.iterdir()) == []
    # In a dropped position it is never exported: the served value is +0.0.
    weights["item"][2, 1], weights["item"][2, 3] = 0.0, float("nan")
    export_tables(tmp_path / "e", weights, allocation, budget)
    for layout in LAYOUTS:
        assert bool(torch.isfinite(PackedEmbedding.load(tmp_path / "e", **WAYS[layout]).table("item")).all())


def test_export_refuses_values_that_overflow_the_stored_dtype(tmp_path):
    rows = {"user": 3}
    weights = {"user": torch.ones(3, 4)}
    weights["user"][1, 0] = 1e6  # finite in float32, inf in float16
    allocation = Allocation({"user": np.full(3, 2)})
    with pytest.raises(ConfigError, match=r"table 'user': 1 of its values overflow float16; export them as float32"):
        export_tables(tmp_path / "e", weights, allocation, Budget.from_params(6, rows, 4, dtype="float16"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_load_refuses_non_finite_values(export, bad):
    """Case 4: an artifact holding non-finite values (resealed, so no other check objects) is refused."""
    tensors = st_load((export / TABLES_FILE).read_bytes())
    values = tensors["item.values"].clone()
    values[3] = bad
    _reseal(export, {**tensors, "item.values": values})
    with pytest.raises(PackedArtifactError, match=r"tables\.safetensors: table 'item' holds 1 non-finite values"):
        PackedEmbedding.load(export)


def test_implausibly_wide_tables_are_refused(export, tmp_path):
    """A manifest's d_max sizes buffers at load: past MAX_D_MAX it is refused (and never exported)."""
    _rewrite_manifest(export, lambda m: m.update(d_max=MAX_D_MAX + 1))
    _reseal(export, st_load((export / TABLES_FILE).read_bytes()))
    with pytest.raises(PackedArtifactError, match=rf"manifest\.json: has d_max={MAX_D_MAX + 1:,}, wider than"):
        PackedEmbedding.load(export)
    rows = {"user": 2}
    with pytest.raises(ConfigError, match="wider than"):
        export_tables(tmp_path / "wide", {"user": torch.ones(2, MAX_D_MAX + 1)}, Allocation({"user": np.ones(2, dtype=int)}),
                      Budget.from_params(2, rows, MAX_D_MAX + 1))


@pytest.mark.parametrize("layout", ["packed", "tiered"])
def test_wide_tables_serve_without_a_prefix_table(layout, tmp_path):
    """Past 1,024 columns the prefix mask is computed per lookup (bounded memory), still bit for bit."""
    rows = {"user": 5}
    d_max = 1500
    weights = {"user": torch.randn(5, d_max)}
    allocation = Allocation({"user": np.array([0, 1, 1024, 1499, 1500])})
    export_tables(tmp_path / "e", weights, allocation, Budget.from_params(allocation.cost, rows, d_max, d_min=0))
    packed = PackedEmbedding.load(tmp_path / "e", **WAYS[layout])
    expected = torch.where(torch.arange(d_max) < torch.from_numpy(allocation.row_dims["user"]).unsqueeze(1), weights["user"], 0.0)
    assert_bit_identical(packed.table("user"), expected)
    assert packed.memory_bytes() < 5 * d_max * 4 + 64 * 1024
