"""Hand an export to TorchRec: one ``EmbeddingBagConfig`` per table of one size, and the id remap.

TorchRec serves a table at one ``embedding_dim``.  An allocation that gives a whole table
one size (the per-field space) maps onto it directly: one TorchRec table per embnas
table.  An allocation whose rows differ in size (per-feature, block) is split into
*tiers*, the mixed-dimension layout of :mod:`nas.artifact.serving`: one TorchRec table
per distinct row size, holding that size's rows in id order, plus a tier per row.  A row's
place in its tier is the number of earlier ids in the same tier, so the remap stores only
the tier (one byte a row, the byte the budget already pays for a row's size) and the
loader rebuilds the rest with one stable sort.

The folder :func:`export_torchrec` writes, readable without embnas::

    torchrec.json               format, version, align, source (the packed export's identity),
                                per table: rows, d_max and its tiers
                                ([feature name, stored size, embedding_dim, num_embeddings]),
                                bytes (values and remap) against the budget's bytes_limit
    state_dict.safetensors      one ``EmbeddingBagCollection`` per embnas table, as the state dict of
                                a ``ModuleDict`` of them: ``{table}.embedding_bags.{feature}.weight``,
                                float32 (float16 for an fp16 export)
    remap.safetensors           ``{table}.tier`` (uint8, or uint16 past 256 tiers) for tables of several tiers

Every TorchRec table is named after its feature: ``{table}`` for a table of one size,
``{table}__d{size}`` for a tier.  Rows of size 0 get no TorchRec table (they serve zeros).

**Dimensions divisible by 4.**  TorchRec's unsharded modules and this loader take any
``embedding_dim``; FBGEMM's fused kernels (sharded, GPU) want multiples of 4.  With
``align=4`` every tier's dimension is rounded up with zero columns, and the rounding is
paid from the budget: the export refuses, naming the bytes it would need, when the
rounded tables do not fit.  The same check refuses integer precisions (TorchRec's float
tables would hold them dequantised, at 4 bytes a value) and element masks (their zeros
would be stored) whenever the result is over the budget.  The check counts what the
budget counts as values and row sizes (the tables and the remap, against
``bytes_limit`` less the metadata the budget reserves); the JSON and safetensors headers
are not budgeted, since they name every tier and so grow with the number of sizes.

The writer needs only torch and safetensors; :class:`TorchRecTables` needs TorchRec
(``pip install "embnas[torchrec]"``; see the README for the versions that match torch).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load as _load_safetensors

from nas.core.accounting import METADATA_RESERVE_BASE, METADATA_RESERVE_PER_BUFFER, METADATA_RESERVE_PER_TABLE
from nas.core.errors import ArtifactError, BudgetError
from nas.artifact.export import _safetensors_bytes, _write_folder
from nas.artifact.serving import PackedArtifactError, PackedEmbedding

__all__ = ["ALIGNMENTS", "FORMAT", "TorchRecTables", "export_torchrec", "tier_feature"]

#: Value of ``torchrec.json``'s ``format``.
FORMAT = "embnas-torchrec"
FORMAT_VERSION = 1
CONFIG_FILE = "torchrec.json"
STATE_FILE = "state_dict.safetensors"
REMAP_FILE = "remap.safetensors"
FILES = frozenset({CONFIG_FILE, STATE_FILE, REMAP_FILE})
#: Multiples a TorchRec table's dimension may be rounded up to (1: the stored size as is).
ALIGNMENTS = (1, 2, 4, 8)
_FLOAT_DTYPES = {torch.float32: "float32", torch.float16: "float16"}

PathLike = str | os.PathLike[str]


def tier_feature(table: str, size: int, tiers: int) -> str:
    """The TorchRec table and feature name of ``table``'s rows of ``size`` (``table`` itself when it has one tier)."""
    return table if tiers == 1 else f"{table}__d{size}"


def export_torchrec(source: PathLike, out: PathLike, *, align: int = 1) -> dict[str, Any]:
    """Convert the packed export in ``source`` into TorchRec tables in ``out``; returns the written config.

    The vectors are taken from :class:`~nas.artifact.serving.PackedEmbedding` (the source is
    verified first), so TorchRec serves exactly what the packed export serves.  The write is
    atomic: ``out`` is replaced only once every file is on disk.

    Args:
        source: a folder written by :func:`nas.artifact.export.export_tables`.
        out: the TorchRec folder (a missing or empty folder, or an earlier TorchRec export).
        align: round every dimension up to a multiple of this (1, 2, 4 or 8), padding with zeros.

    Raises:
        BudgetError: when the tables and remap do not fit the source's budget (alignment,
            dequantised integer rows or element masks), naming the bytes needed.
        PackedArtifactError: when ``source`` is not a sound export.
    """
    if align not in ALIGNMENTS:
        raise ValueError(f"align must be one of {ALIGNMENTS}, got {align!r}")
    packed = PackedEmbedding.load(source)
    if packed.dtype not in _FLOAT_DTYPES:
        raise ArtifactError(f"{source}: TorchRec tables hold float32 or float16 values, the export stores {packed.dtype}")
    weights: dict[str, torch.Tensor] = {}
    remaps: dict[str, torch.Tensor] = {}
    tables: dict[str, Any] = {}
    for name in packed.tables:
        served = packed.table(name)
        sizes = packed.row_sizes(name)
        distinct, tier = torch.unique(sizes, sorted=True, return_inverse=True)
        entries = []
        for t, size in enumerate(distinct.tolist()):
            members = torch.nonzero(tier == t).squeeze(1)  # in id order
            feature = tier_feature(name, size, len(distinct))
            dim = -(-size // align) * align
            entries.append([feature if size else None, size, dim, len(members)])
            if size:
                kept = served.index_select(0, members)[:, :size]
                weights[f"{name}.embedding_bags.{feature}.weight"] = F.pad(kept, (0, dim - size)).contiguous()
        if len(distinct) > 1:
            remaps[f"{name}.tier"] = tier.to(torch.uint8 if len(distinct) <= 256 else torch.uint16)
        tables[name] = {"rows": packed.rows[name], "d_max": packed.dim, "tiers": entries}
    if not weights:
        raise ArtifactError(f"{source}: every row has size 0; there is nothing for TorchRec to serve")

    stored = sum(t.numel() * t.element_size() for t in (*weights.values(), *remaps.values()))
    limit = _value_limit(packed.manifest)
    if limit is not None and stored > limit:
        raise BudgetError(
            f"the TorchRec tables need {stored:,} bytes of values and remap, over the "
            f"{limit:,} the budget leaves for them{_why_over(packed, align)}; serve the packed export "
            "with PackedEmbedding instead" + (", or export with align=1" if align > 1 else "")
        )
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "align": align,
        "dtype": _FLOAT_DTYPES[next(iter(weights.values())).dtype],
        "source": {key: packed.manifest.get(key) for key in ("allocation", "config_hash", "bytes_stored", "bytes_limit")},
        "tables": tables,
        "bytes": stored,
        "bytes_limit": limit,
    }
    files = {
        CONFIG_FILE: (json.dumps(config, separators=(",", ":")) + "\n").encode("utf-8"),
        STATE_FILE: _safetensors_bytes(weights, {"format": FORMAT}),
        REMAP_FILE: _safetensors_bytes(remaps, {"format": FORMAT}),
    }
    total = sum(len(data) for data in files.values())
    _write_folder(Path(out), files, total, total, replaceable=FILES)
    return config


def _value_limit(manifest: Mapping[str, Any]) -> int | None:
    """Bytes the budget leaves for values and row sizes: its byte limit less the metadata it reserves.

    The reserve is the one :mod:`nas.core.accounting` sets aside: a base, a share per table and,
    with precisions, a share per table and precision.
    """
    limit = manifest.get("bytes_limit")
    if not isinstance(limit, int):
        return None
    per_table = METADATA_RESERVE_PER_TABLE + METADATA_RESERVE_PER_BUFFER * len(manifest.get("precisions") or ())
    return limit - METADATA_RESERVE_BASE - per_table * len(manifest.get("tables", {}))


def _why_over(packed: PackedEmbedding, align: int) -> str:
    reasons = []
    if align > 1:
        reasons.append(f"dimensions rounded up to multiples of {align}")
    if packed.manifest.get("format_version", 1) > 1:
        reasons.append("integer rows stored dequantised, as float32")
    if any(spec.get("element_mask") for spec in packed.manifest.get("tables", {}).values() if isinstance(spec, dict)):
        reasons.append("element masks stored as zeros")
    return f" ({', '.join(reasons)})" if reasons else ""


class TorchRecTables(torch.nn.Module):
    """TorchRec embedding-bag collections built from a :func:`export_torchrec` folder, and the remap.

    ``collections[table]`` is the TorchRec module of an embnas table (one TorchRec table
    per tier), for a model of your own; :meth:`features` turns ids of that table into the
    ``KeyedJaggedTensor`` it takes, and :meth:`lookup` serves ``(…, d_max)`` vectors as
    :class:`PackedEmbedding` does.

    Attributes:
        collections: embnas table -> ``torchrec.EmbeddingBagCollection`` (a ``ModuleDict``).
        rows: rows of each embnas table.
        dim: ``d_max``, the width :meth:`lookup` returns.
        dtype: the tables' dtype (float32, or float16 for an fp16 export), which :meth:`lookup` returns.
        config: ``torchrec.json`` as read.
    """

    def __init__(self, collections: torch.nn.ModuleDict, config: Mapping[str, Any], remaps: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.collections = collections
        self.config = dict(config)
        self.rows = {name: int(spec["rows"]) for name, spec in config["tables"].items()}
        self.dim = max(int(spec["d_max"]) for spec in config["tables"].values())
        self.dtype = torch.float16 if config["dtype"] == "float16" else torch.float32
        self._tiers = {name: [tuple(entry) for entry in spec["tiers"]] for name, spec in config["tables"].items()}
        self._tier: dict[str, torch.Tensor] = {}
        self._local: dict[str, torch.Tensor] = {}
        for key, tier in remaps.items():
            name = key.removesuffix(".tier")
            tier = tier.to(torch.int64)
            counts = torch.bincount(tier, minlength=len(self._tiers[name]))
            order = torch.sort(tier, stable=True).indices
            local = torch.empty_like(order)
            local[order] = torch.arange(len(tier)) - (torch.cumsum(counts, 0) - counts).repeat_interleave(counts)
            self._tier[name] = tier.to(torch.uint8 if len(counts) <= 256 else torch.int32)
            self._local[name] = local.to(torch.int32)

    @classmethod
    def load(cls, folder: PathLike, *, device: str | torch.device = "cpu") -> TorchRecTables:
        """Build the ``EmbeddingBagCollection`` of every table in ``folder`` and load their weights.

        Raises:
            ModuleNotFoundError: TorchRec is not installed (``pip install "embnas[torchrec]"``).
            PackedArtifactError: a file is missing, of another format, or disagrees with the config.
        """
        try:
            from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
            from torchrec.modules.embedding_configs import DataType, PoolingType
        except ImportError as error:
            raise ModuleNotFoundError(
                f"TorchRec is needed to serve {folder} ({error}); install it with: pip install \"embnas[torchrec]\" "
                "(see the README for the versions matching your torch)"
            ) from None
        folder = Path(folder)
        config = _read_config(folder)
        data_type = DataType.FP16 if config["dtype"] == "float16" else DataType.FP32
        collections = torch.nn.ModuleDict({
            name: EmbeddingBagCollection(tables=[
                EmbeddingBagConfig(name=feature, feature_names=[feature], embedding_dim=dim, num_embeddings=count,
                                   pooling=PoolingType.SUM, data_type=data_type)
                for feature, _, dim, count in spec["tiers"] if feature is not None
            ], device=torch.device("meta"))
            for name, spec in config["tables"].items()
        })
        state = _read_tensors(folder / STATE_FILE)
        remaps = _read_tensors(folder / REMAP_FILE)
        expected = set(collections.state_dict())
        if set(state) != expected:
            raise PackedArtifactError(
                f"{folder / STATE_FILE}: its tensors {sorted(set(state) ^ expected)[:4]} disagree with {CONFIG_FILE}")
        collections.load_state_dict(state, assign=True)
        collections.to(device)
        for name, spec in config["tables"].items():
            tier = remaps.get(f"{name}.tier")
            if len(spec["tiers"]) > 1 and (tier is None or len(tier) != spec["rows"] or int(tier.max()) >= len(spec["tiers"])):
                raise PackedArtifactError(f"{folder / REMAP_FILE}: the tiers of table {name!r} are missing or inconsistent")
        return cls(collections, config, remaps)

    def features(self, table: str, ids: torch.Tensor) -> Any:
        """The ``KeyedJaggedTensor`` for ``collections[table]`` that looks ``ids`` up: one bag a position, in its tier's feature.

        Every tier's feature gets ``len(ids)`` bags, of one id where the id is in that
        tier and empty elsewhere, so the collection's output for position ``i`` is zero
        in every tier but its own.
        """
        from torchrec import KeyedJaggedTensor

        tiers = self._table_tiers(table)
        ids = ids.reshape(-1).to(torch.int64)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.rows[table]):
            raise IndexError(f"index out of range in self (ids must be in [0, {self.rows[table]}))")
        served = [(t, feature) for t, (feature, *_rest) in enumerate(tiers) if feature is not None]
        if table not in self._tier:  # one tier: the id is the row
            return KeyedJaggedTensor.from_lengths_sync(
                keys=[served[0][1]], values=ids, lengths=torch.ones_like(ids, dtype=torch.int32))
        tier = self._tier[table].index_select(0, ids).to(torch.int64)
        local = self._local[table].index_select(0, ids).to(torch.int64)
        member = torch.stack([tier == t for t, _ in served])  # (tiers served, len(ids))
        values = torch.cat([local[row] for row in member])
        return KeyedJaggedTensor.from_lengths_sync(keys=[f for _, f in served], values=values,
                                                   lengths=member.reshape(-1).to(torch.int32))

    def lookup(self, table: str, ids: torch.Tensor) -> torch.Tensor:
        """Vectors of ``ids`` (any shape) in ``table``: ``ids.shape + (d_max,)``, zero past each row's size."""
        flat = ids.reshape(-1)
        out = torch.zeros(flat.numel(), self.dim, dtype=self.dtype)
        if flat.numel() and self._has_features(table):
            pooled = self.collections[table](self.features(table, flat)).to_dict()
            tier = self._tier.get(table)
            for t, (feature, size, *_rest) in enumerate(self._table_tiers(table)):
                if feature is None:
                    continue
                rows = slice(None) if tier is None else torch.nonzero(tier.index_select(0, flat) == t).squeeze(1)
                out[rows, :size] = pooled[feature][rows, :size].to(self.dtype)  # fp16 tables pool to float32 exactly
        return out.view(*ids.shape, self.dim)

    forward = lookup

    def memory_bytes(self) -> int:
        """Bytes the TorchRec tables and the remap hold in memory."""
        tensors = [*self.collections.state_dict().values(), *self._tier.values(), *self._local.values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def _table_tiers(self, table: str) -> list[tuple[Any, ...]]:
        try:
            return self._tiers[table]
        except KeyError:
            raise KeyError(f"no table {table!r}; the export has {list(self._tiers)}") from None

    def _has_features(self, table: str) -> bool:
        return any(feature is not None for feature, *_rest in self._table_tiers(table))


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PackedArtifactError(f"{path}: missing; is {folder} a TorchRec export (embnas export --format torchrec)?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PackedArtifactError(f"{path}: cannot be read ({error})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise PackedArtifactError(f"{path}: is not an {FORMAT} config")
    if config.get("format_version") != FORMAT_VERSION:
        raise PackedArtifactError(f"{path}: format version {config.get('format_version')!r}, this loader reads {FORMAT_VERSION}")
    return config


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return dict(_load_safetensors(path.read_bytes()))
    except FileNotFoundError:
        raise PackedArtifactError(f"{path}: missing") from None
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
        raise PackedArtifactError(f"{path}: cannot be decoded ({type(error).__name__}: {error})") from None
