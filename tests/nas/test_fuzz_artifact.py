"""Fuzzing the serving loader: hostile bytes in an export folder give a served table or a PackedArtifactError.

Four targets, each mutating a small valid export (three tables, one of them element-masked)
and loading it with :meth:`PackedEmbedding.load`:

* ``manifest_bytes``: bit flips, truncation, insertion, deletion and overwrites of ``manifest.json``;
* ``payload_bytes``: the same on ``tables.safetensors``, loaded with and without the sha256
  check, and sometimes with a manifest resealed to the new bytes (so the framing checks see them);
* ``manifest_structure``: the parsed manifest with entries set to hostile values (deep nesting,
  huge or negative numbers, wrong types, dtypes, shapes, sizes), deleted or added, or raw JSON
  tokens spliced in (a 5,000-digit integer, 100,000 nested brackets, ``NaN``), optionally
  resealed (the payload's digest and the file entries made to match);
* ``safetensors_header``: the parsed safetensors header with dtypes, shapes, offsets, metadata
  and the header length changed, tensors dropped or added, the data cut or extended, or
  values poked to NaN or inf, optionally resealed.

Every target runs on each in-memory layout (``packed``, ``dense``, ``tiered``): they share every check,
so a case is refused alike by all, and a loaded one must serve the packed original's vectors in each.

The oracle: the load either raises :class:`PackedArtifactError`, on one line, naming a file of the
folder, or returns tables; where nothing was resealed and the sha256 was checked, those tables must
be bit-identical to the original ones (the mutation was a no-op), otherwise (the fuzzer forged a
consistent artifact) they must be well-formed and finite.  Any other exception fails the test.

The default profile runs a few hundred cases in all; ``-m slow`` runs the ``slow`` profile with
10,000 cases per target.  Both are deterministic (``derandomize=True``) and each prints its count.
"""

from __future__ import annotations

import copy
import hashlib
import json
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nas.artifact.export import export_tables
from nas.artifact.serving import MANIFEST_FILE, TABLES_FILE, PackedArtifactError, PackedEmbedding, manifest_digest
from nas.core.allocation import Allocation
from nas.core.budget import Budget
from nas.testing.serving import serving_ways

PROFILES = {"default": 120, "slow": 10_000}
#: Every way to serve an export (load keyword arguments): each parity test runs on all.
WAYS = serving_ways()
LAYOUTS = tuple(WAYS)
PROFILE_PARAMS = ["default", pytest.param("slow", marks=pytest.mark.slow)]


def fuzz_settings(profile: str) -> settings:
    return settings(
        max_examples=PROFILES[profile],
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


# -- the original export --------------------------------------------------------------------------
class Original:
    """A small valid export: its bytes, parsed pieces and served tables."""

    def __init__(self, folder: Path) -> None:
        rows, d_max = {"user": 7, "item": 5, "tag": 3}, 6
        rng = np.random.default_rng(0)
        dims = {name: rng.integers(0, d_max + 1, n) for name, n in rows.items()}
        masks = {"tag": (rng.random((3, d_max)) < 0.6) & (np.arange(d_max) < dims["tag"][:, None])}
        allocation = Allocation(dims, masks)
        weights = {name: torch.randn(n, d_max, generator=torch.Generator().manual_seed(len(name))) for name, n in rows.items()}
        budget = Budget.from_params(allocation.cost + 3, rows, d_max, d_min=0)
        export_tables(folder, weights, allocation, budget, config_hash="fuzz")
        self.manifest_bytes = (folder / MANIFEST_FILE).read_bytes()
        self.payload = (folder / TABLES_FILE).read_bytes()
        self.manifest = json.loads(self.manifest_bytes)
        (length,) = struct.unpack("<Q", self.payload[:8])
        self.header = json.loads(self.payload[8 : 8 + length])
        self.body = self.payload[8 + length :]
        self.loaded = PackedEmbedding.load(folder)
        self.tables = {name: self.loaded.table(name).clone() for name in self.loaded.tables}


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Original:
    return Original(tmp_path_factory.mktemp("fuzz") / "original")


@pytest.fixture(scope="module")
def case_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz") / "case"
    folder.mkdir()
    return folder


# -- the oracle -----------------------------------------------------------------------------------
def check_load(folder: Path, original: Original, *, verify: bool, forged: bool, layout: str = "packed") -> str:
    """Load ``folder`` in ``layout``; return ``"refused"`` or ``"loaded"``, failing on anything but the contract."""
    try:
        loaded = PackedEmbedding.load(folder, verify=verify, **WAYS[layout])
    except PackedArtifactError as error:
        message = str(error)
        assert "\n" not in message and "\r" not in message, message
        named = [str(folder / MANIFEST_FILE) + ": ", str(folder / TABLES_FILE) + ": ", str(folder) + ": "]
        assert any(message.startswith(prefix) for prefix in named), message
        return "refused"
    assert loaded.layout == WAYS[layout]["layout"]
    if not forged:  # the original bytes' digests held: this must be the original artifact
        assert loaded.tables == original.loaded.tables and loaded.dim == original.loaded.dim
        assert loaded.dtype == original.loaded.dtype and loaded.rows == original.loaded.rows
        for name, table in original.tables.items():
            assert torch.equal(loaded.table(name).view(torch.int32), table.view(torch.int32)), name
        return "loaded"
    packed = loaded if layout == "packed" else PackedEmbedding.load(folder, verify=verify)
    for name in loaded.tables:  # a consistent artifact the fuzzer forged: it must still serve sanely
        table = loaded.table(name)
        assert table.shape == (loaded.rows[name], loaded.dim) and table.dtype == loaded.dtype
        assert bool(torch.isfinite(table).all()), name
        assert torch.equal(loaded.lookup(name, torch.tensor([loaded.rows[name] - 1])), table[-1:])
        # and every layout serves the packed layout's bits
        assert torch.equal(packed.table(name).contiguous().view(torch.uint8), table.contiguous().view(torch.uint8)), name
    return "loaded"


def write_case(folder: Path, manifest: bytes, payload: bytes) -> None:
    (folder / MANIFEST_FILE).write_bytes(manifest)
    (folder / TABLES_FILE).write_bytes(payload)


def report(target: str, outcomes: list[str], started: float, capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print(f"\nfuzz {target}: {len(outcomes):,} cases ({outcomes.count('refused'):,} refused, "
              f"{outcomes.count('loaded'):,} loaded) in {time.perf_counter() - started:.1f} s")
    assert outcomes


# -- mutations ------------------------------------------------------------------------------------
INTERESTING_BYTES = [b"\x00", b"\xff", b"{", b"}", b"[", b"]", b'"', b"\\", b",", b":", b"-", b"9" * 30, b"\xc3", b"\xed\xa0\x80",
                     b"NaN", b"1e999", b"\x80\x00\x00\x00\x00\x00\x00\x00"]


def mutate_bytes(draw: st.DrawFn, data: bytes) -> bytes:
    """Up to four byte-level edits of ``data``: flips, truncation, insertion, deletion, overwrites."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "overwrite"]))
        pos = draw(st.one_of(st.integers(0, len(buf)), st.integers(0, min(len(buf), 16))))
        if op == "flip" and buf:
            buf[min(pos, len(buf) - 1)] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del buf[pos:]
        elif op == "insert":
            buf[pos:pos] = draw(st.one_of(st.sampled_from(INTERESTING_BYTES), st.binary(min_size=1, max_size=16)))
        elif op == "delete":
            del buf[pos : pos + draw(st.integers(1, 16))]
        else:
            chunk = draw(st.one_of(st.sampled_from(INTERESTING_BYTES), st.binary(min_size=1, max_size=8)))
            buf[pos : pos + len(chunk)] = chunk
    return bytes(buf)


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    return mutate_bytes(draw, data)


def build_payload(header: Any, body: bytes, length_delta: int = 0) -> bytes:
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", max(0, len(text) + length_delta) % 2**64) + text + body


def seal(manifest: dict[str, Any], payload: bytes, *, files: bool = True, stored: bool = True) -> bytes:
    """The manifest's bytes, with its file entry and ``bytes_stored`` made to match ``payload``."""
    if files:
        manifest["files"] = {TABLES_FILE: {"bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}}
    text = b""
    for _ in range(6):
        if stored:
            manifest["bytes_stored"] = len(payload) + len(text)
        text = (json.dumps(manifest, indent=1) + "\n").encode()
    return text


def nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


HOSTILE_VALUES = st.one_of(
    st.sampled_from([None, True, False, 0, -1, 1, 2**31, 2**63, 2**64, -(2**63), 10**20, 0.5, -0.0, 1e308, "", "float32",
                     "bfloat16", "uint8", "uint64", "F32", "x" * 300, [], {}, [1], [[1]], {"bytes": -1}, {"sha256": 1}]),
    st.integers(-3, 20),
    st.sampled_from([255, 256, 65535, 65536, 65537, 2**32]),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.lists(st.integers(-5, 2**40), max_size=4),
    st.integers(1, 80).map(nested),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
).map(copy.deepcopy)  # the sampled lists and dicts are edited later: never share them between cases
#: Raw JSON spliced in where json.dumps cannot write it.
RAW_TOKENS = ["1" + "0" * 5000, "-" + "9" * 4400, "[" * 100_000 + "]" * 100_000, '{"a":' * 50_000 + "0" + "}" * 50_000,
              "NaN", "Infinity", "-Infinity", "1e999999", '"\\ud800"', "123456789012345678901", "00", "1.", "[1,]"]
PLACEHOLDER = "\u2063FUZZ\u2063"


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into nested dicts and lists, the root ``()`` last (hypothesis favours the first choices)."""
    found = []
    if isinstance(value, dict):
        for key, child in value.items():
            found += paths(child, prefix + (key,))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += paths(child, prefix + (index,))
    return found + [prefix]


def set_path(root: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    parent = root
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return root


def delete_path(root: Any, path: tuple) -> Any:
    if not path:
        return root
    parent = root
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    return root


def mutate_structure(draw: st.DrawFn, value: Any) -> tuple[Any, set[str], str | None]:
    """Edit parsed JSON ``value`` in place (or replace it); return it, the top-level keys touched, and a raw token."""
    touched: set[str] = set()
    raw = None
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(paths(value)))
        op = draw(st.sampled_from(["set", "set", "set", "delete", "add", "raw"]))
        if where and isinstance(where[0], str):
            touched.add(where[0])
        elif not where:
            touched.add("*")
        if op == "set":
            value = set_path(value, where, draw(HOSTILE_VALUES))
        elif op == "delete":
            value = delete_path(value, where)
        elif op == "add":
            target = value
            for key in where:
                target = target[key]
            if isinstance(target, dict):
                target[draw(st.sampled_from(["__metadata__", "extra", "element_mask", "x", "files", "d_max"]))] = draw(HOSTILE_VALUES)
            elif isinstance(target, list):
                target.append(draw(HOSTILE_VALUES))
        elif raw is None:
            raw = draw(st.sampled_from(RAW_TOKENS))
            value = set_path(value, where, PLACEHOLDER)
    return value, touched, raw


@st.composite
def structure_mutation(draw: st.DrawFn, text: bytes) -> tuple[Any, set[str], str | None]:
    return mutate_structure(draw, json.loads(text))


def dumps_with_raw(value: Any, raw: str | None, **options: Any) -> bytes:
    text = json.dumps(value, **options)
    if raw is not None:
        text = text.replace(json.dumps(PLACEHOLDER), raw)
    return (text + ("\n" if options.get("indent") else "")).encode()


# -- the targets ----------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("profile", PROFILE_PARAMS)
def test_fuzz_manifest_bytes(profile, layout, original, case_folder, capsys):
    outcomes: list[str] = []

    @fuzz_settings(profile)
    @given(st.data())
    def run(data: st.DataObject) -> None:
        manifest = data.draw(mutated(original.manifest_bytes))
        write_case(case_folder, manifest, original.payload)
        outcomes.append(check_load(case_folder, original, verify=True, forged=False, layout=layout))

    started = time.perf_counter()
    run()
    report(f"manifest_bytes ({layout})", outcomes, started, capsys)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("profile", PROFILE_PARAMS)
def test_fuzz_payload_bytes(profile, layout, original, case_folder, capsys):
    outcomes: list[str] = []

    @fuzz_settings(profile)
    @given(st.data())
    def run(data: st.DataObject) -> None:
        payload = data.draw(mutated(original.payload))
        verify, reseal = data.draw(st.booleans()), data.draw(st.booleans())
        manifest = seal(json.loads(original.manifest_bytes), payload) if reseal else original.manifest_bytes
        write_case(case_folder, manifest, payload)
        outcomes.append(check_load(case_folder, original, verify=verify, forged=reseal or not verify, layout=layout))

    started = time.perf_counter()
    run()
    report(f"payload_bytes ({layout})", outcomes, started, capsys)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("profile", PROFILE_PARAMS)
def test_fuzz_manifest_structure(profile, layout, original, case_folder, capsys):
    outcomes: list[str] = []

    @fuzz_settings(profile)
    @given(st.data())
    def run(data: st.DataObject) -> None:
        manifest, touched, raw = data.draw(structure_mutation(original.manifest_bytes))
        reseal = data.draw(st.booleans()) and isinstance(manifest, dict) and raw is None
        payload = original.payload
        if reseal:  # the payload records the new manifest's digest; the manifest, the new payload's size and hash
            header = json.loads(json.dumps(original.header))
            header["__metadata__"]["manifest_sha256"] = manifest_digest(manifest)
            payload = build_payload(header, original.body)
            text = seal(manifest, payload, files="files" not in touched, stored="bytes_stored" not in touched)
        else:
            text = dumps_with_raw(manifest, raw, indent=data.draw(st.sampled_from([1, None])))
        write_case(case_folder, text, payload)
        outcomes.append(check_load(case_folder, original, verify=True, forged=reseal, layout=layout))

    started = time.perf_counter()
    run()
    report(f"manifest_structure ({layout})", outcomes, started, capsys)


@st.composite
def header_mutation(draw: st.DrawFn, original: Original) -> bytes:
    """A payload with a structurally edited safetensors header (and maybe its data)."""
    header = json.loads(json.dumps(original.header))
    body = bytearray(original.body)
    length_delta = 0
    names = [name for name in header if name != "__metadata__"]
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["dtype", "shape", "offsets", "offsets", "drop", "copy", "metadata", "body", "length", "poke",
                                   "structure"]))
        name = draw(st.sampled_from(names))
        entry = header.get(name)
        if op == "dtype" and isinstance(entry, dict):
            entry["dtype"] = draw(st.one_of(st.sampled_from(["F32", "F16", "BF16", "F64", "U8", "U16", "U32", "I32", "I64", "BOOL",
                                                             "F8_E4M3", "f32", ""]), HOSTILE_VALUES))
        elif op == "shape" and isinstance(entry, dict):
            entry["shape"] = draw(st.one_of(st.lists(st.integers(-2, 2**64), max_size=3),
                                            st.lists(st.integers(0, 40), min_size=1, max_size=2), HOSTILE_VALUES))
        elif op == "offsets" and isinstance(entry, dict):
            start, end = entry["data_offsets"] if isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2 else (0, 0)
            delta = draw(st.integers(-9, 9))
            entry["data_offsets"] = draw(st.sampled_from([
                [start + delta, end + delta], [start, end + delta], [start + delta, end], [end, start],
                [0, len(body)], [start, 2**64], [-1, end], [start], [start, end, end], None,
            ]))
        elif op == "drop":
            header.pop(name, None)
        elif op == "copy" and isinstance(entry, dict):
            header[draw(st.sampled_from(["user.mask", "item.values", "x", "__manifest_sha256__", name + "2"]))] = dict(entry)
        elif op == "metadata":
            header["__metadata__"] = draw(st.one_of(st.just({}), st.just({"manifest_sha256": 1}), HOSTILE_VALUES,
                                                    st.just({**original.header["__metadata__"], "extra": "x"})))
        elif op == "body":
            cut = draw(st.integers(-8, 8))
            body = body[:cut] if cut < 0 else body + bytes(cut)
        elif op == "length":
            length_delta = draw(st.sampled_from([-8, -1, 1, 8, 2**40, -(2**40)]))
        elif op == "poke" and entry == original.header.get(name) and name.endswith(".values"):
            start, end = entry["data_offsets"]
            if end > start and len(body) >= end:
                at = start + 4 * draw(st.integers(0, (end - start) // 4 - 1))
                body[at : at + 4] = struct.pack("<f", draw(st.sampled_from([float("nan"), float("inf"), float("-inf"), 1.0])))
        elif op == "structure":
            header, _, raw = mutate_structure(draw, header)
            text = dumps_with_raw(header, raw, separators=(",", ":"))
            return struct.pack("<Q", len(text)) + text + bytes(body)
    return build_payload(header, bytes(body), length_delta)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("profile", PROFILE_PARAMS)
def test_fuzz_safetensors_header(profile, layout, original, case_folder, capsys):
    outcomes: list[str] = []

    @fuzz_settings(profile)
    @given(st.data())
    def run(data: st.DataObject) -> None:
        payload = data.draw(header_mutation(original))
        verify, reseal = data.draw(st.booleans()), data.draw(st.sampled_from([True, True, True, False]))
        manifest = seal(json.loads(original.manifest_bytes), payload) if reseal else original.manifest_bytes
        write_case(case_folder, manifest, payload)
        outcomes.append(check_load(case_folder, original, verify=verify, forged=reseal or not verify, layout=layout))

    started = time.perf_counter()
    run()
    report(f"safetensors_header ({layout})", outcomes, started, capsys)
