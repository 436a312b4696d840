"""Export an allocation's tables as a packed artifact that fits the byte budget.

The export folder holds two files (read back by :mod:`nas.artifact.serving`)::

    tables.safetensors   {name}.row_dims  (smallest unsigned dtype holding d_max)
                         {name}.values    1-D: each row's kept values, row after row
                         {name}.mask      only for element-mask tables: np.packbits of the
                                          (rows, d_max) mask, flattened; values then hold
                                          only the masked-in elements, row by row
    manifest.json        format, version, tables, budget, bytes_stored, sha256 of the payload,
                         config hash, allocation fingerprint, creator

An allocation with a precision per row (:mod:`nas.core.precision`) is written in format
version 2 instead, which stores each row's size and precision in one code and the
values of each precision in a buffer of their own::

    tables.safetensors   {name}.codes        one code a row: (size - d_min) * len(precisions) + precision
                         {name}.{p}.values   the kept values of the rows at precision p, row after row:
                                             F32 / F16 as they are, int8 as I8, int4 and int2 bit-packed
                                             into U8 (two or four to a byte, lowest bits first, two's
                                             complement, the last byte padded with zeros)
                         {name}.{p}.scales   F16, one per row at an integer precision p; with shared
                                             scales (manifest "scales": "shared") one per size
                                             d_min..d_max instead, shared by the rows of that size

The values are taken from the masked model itself, so the loader serves exactly
what the model served.  The write is atomic at the folder level: everything is
written and fsynced in a sibling temporary folder, checked against the byte limit
from the files on disk, and only then swapped in for the target.

Exports are byte-for-byte reproducible: the same tables, allocation and budget give
the same files in every process.  The safetensors file is therefore written here
(:func:`_safetensors_bytes`), not by ``safetensors.save``, whose metadata is a hash map
serialised in a different order on every call.  Values that are not finite are
refused: a diverged model is never exported.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import os
import shutil
import struct
import sys
import tempfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from nas.core._atomic import _fsync_dir, current_umask
from nas.core.allocation import Allocation
from nas.core.budget import Budget
from nas.core.errors import ArtifactError, BudgetError, ConfigError
from nas.core.accounting import dims_dtype, export_byte_limit, export_bytes, value_itemsize
from nas.core.precision import PRECISIONS, encode_codes
from nas.core.quantise import RowPrecision, quantise_rows, shared_peaks
from nas.artifact.serving import (
    FORMAT, FORMAT_VERSION, MANIFEST_FILE, MAX_D_MAX, PRECISION_FORMAT_VERSION, TABLES_FILE, VALUE_DTYPES,
    manifest_digest,
)

__all__ = ["PackedTables", "ServedTables", "export_byte_limit", "export_tables", "pack_tables"]

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class PackedTables:
    """An export's files in memory, before they are written.

    Attributes:
        files: file name -> bytes (``tables.safetensors``, ``manifest.json``).
        manifest: the manifest, as written to ``manifest.json``.
        limit: the most bytes the files may take (:func:`export_byte_limit`).
    """

    files: Mapping[str, bytes]
    manifest: dict[str, Any]
    limit: int

    @property
    def nbytes(self) -> int:
        """Bytes the files take on disk."""
        return sum(len(data) for data in self.files.values())


class ServedTables(Protocol):
    """An embedding that can hand over its tables as served under an allocation (a trained model's)."""

    def served_tables(self, allocation: Allocation) -> Mapping[str, torch.Tensor]:
        """Every table, full-size, with the positions ``allocation`` drops at zero, detached."""


def export_tables(
    folder: PathLike,
    embedding: ServedTables | Mapping[str, torch.Tensor],
    allocation: Allocation,
    budget: Budget,
    *,
    config_hash: str = "",
    dtype: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the packed tables of ``allocation`` to ``folder`` and return the manifest.

    Args:
        folder: the export folder; an existing export there is replaced only once the
            new one is complete (a non-empty folder that is not an export is refused).
        embedding: the trained model's embedding, anything with a
            ``served_tables(allocation)`` method such as
            :class:`~nas.pipeline.embedding.MaskableEmbedding` (its values under
            ``allocation`` are exported), or full-size tensors ``{name: (rows, d_max)}``
            that are masked by ``allocation`` the same way.
        allocation: what to keep; validated against ``budget`` first.
        budget: the hard budget; the files written never exceed :func:`export_byte_limit`.
        config_hash: hash of the run's config and data, recorded in the manifest.
        dtype: value dtype stored (``"float32"``, ``"float16"``, ``"bfloat16"``,
            ``"float64"``); the budget's dtype when ``None``.  Serving is bit-identical
            to the model only when this is the model's own dtype.
        extra: JSON-able metadata recorded under ``"extra"`` (it counts toward the bytes).

    Returns:
        The manifest written to ``manifest.json``.

    Raises:
        BudgetError: the allocation breaks the budget (nothing is written).
        ConfigError: the tables do not match the allocation or the dtype is unknown.
        ArtifactError: the files would exceed the byte limit (a bug in the accounting)
            or the target is a folder that is not an export; nothing is left behind.
    """
    packed = pack_tables(embedding, allocation, budget, config_hash=config_hash, dtype=dtype, extra=extra)
    _write_folder(Path(folder), packed.files, packed.nbytes, packed.limit)
    return packed.manifest


def pack_tables(
    embedding: ServedTables | Mapping[str, torch.Tensor],
    allocation: Allocation,
    budget: Budget,
    *,
    config_hash: str = "",
    dtype: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> PackedTables:
    """The files of the export of ``allocation``, in memory: what :func:`export_tables` writes.

    The arguments are those of :func:`export_tables` but the folder.

    Raises:
        BudgetError: the allocation breaks the budget.
        ConfigError: the tables do not match the allocation or the dtype is unknown.
        ArtifactError: the files would exceed the byte limit (a bug in the accounting).
    """
    allocation.validate(budget)
    if budget.d_max > MAX_D_MAX:
        raise ConfigError(f"d_max={budget.d_max:,} is wider than the {MAX_D_MAX:,} the serving loader accepts; use a smaller d_max")
    if allocation.row_precisions is not None:
        if dtype not in (None, "float32"):
            raise ConfigError(f"an allocation with precisions stores each row at its own precision; dtype={dtype!r} does not apply")
        return _pack_precisions(embedding, allocation, budget, config_hash=config_hash, extra=extra)
    dtype = budget.dtype if dtype is None else dtype
    try:
        itemsize = value_itemsize(dtype)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    masks = dict(allocation.element_masks or {})
    limit = export_byte_limit(budget, dtype, element_mask=bool(masks))
    bound = export_bytes(allocation.cost, budget.rows, budget.d_max, dtype, element_mask=bool(masks))
    if bound > limit:
        if masks:
            plain = export_bytes(allocation.cost, budget.rows, budget.d_max, dtype)
            why = f"its element masks take up to {bound - plain:,} bytes that the byte budget did not reserve"
        else:
            why = f"{dtype} values take {itemsize} bytes each, more than the budget's {budget.dtype}"
        raise BudgetError(
            f"the export would take up to {bound:,} bytes, {bound - limit:,} over the limit of {limit:,} "
            f"({budget.describe()}): {why}; keep fewer values"
        )

    served = _served_tables(embedding, allocation, budget.d_max)
    tensors: dict[str, torch.Tensor] = {}
    specs: dict[str, dict[str, Any]] = {}
    columns = torch.arange(budget.d_max)
    d_type = dims_dtype(budget.d_max)
    for name, dims in allocation.row_dims.items():
        table = served[name]
        if name in masks:
            keep = torch.tensor(masks[name])
        else:
            keep = columns < torch.tensor(dims).unsqueeze(1)
        kept = table[keep]
        values = kept.to(VALUE_DTYPES[dtype]).contiguous()
        _check_finite(name, kept, values, dtype)
        tensors[f"{name}.row_dims"] = torch.from_numpy(dims.astype(d_type))
        tensors[f"{name}.values"] = values
        if name in masks:
            tensors[f"{name}.mask"] = torch.from_numpy(np.packbits(masks[name].reshape(-1)))
        specs[name] = {
            "rows": len(dims),
            "d_max": budget.d_max,
            "values_stored": int(values.numel()),
            "dims_dtype": d_type.name,
            "element_mask": name in masks,
        }
    manifest = _manifest(FORMAT_VERSION, specs, budget, allocation, limit, config_hash, dtype)
    return _finish(manifest, tensors, limit, extra)


def _pack_precisions(
    embedding: ServedTables | Mapping[str, torch.Tensor],
    allocation: Allocation,
    budget: Budget,
    *,
    config_hash: str,
    extra: Mapping[str, Any] | None,
) -> PackedTables:
    """The files of an allocation with a precision per row (format version 2, see the module notes)."""
    precisions = allocation.precisions
    limit = int(budget.amount) if budget.unit == "bits" else budget.max_bytes
    # Quantised from the raw weights, as the model's lookups quantise them: quantising the
    # served (already quantised) values again could move a scale by one fp16 step.
    raw = embedding if isinstance(embedding, Mapping) else getattr(embedding, "weights", None)
    if not hasattr(raw, "items"):
        raise ConfigError("an allocation with precisions is exported from the embedding's raw weights: pass an "
                          "embedding with a .weights mapping (a MaskableEmbedding) or the full-size tables")
    served = _served_tables(dict(raw.items()), Allocation(allocation.row_dims), budget.d_max)
    tensors: dict[str, torch.Tensor] = {}
    specs: dict[str, dict[str, Any]] = {}
    columns = torch.arange(budget.d_max)
    shared = budget.scales == "shared"
    for name, dims in allocation.row_dims.items():
        index = allocation.row_precisions[name]
        codes = encode_codes(dims, index, budget.d_min, budget.d_max, len(precisions))
        tensors[f"{name}.codes"] = torch.from_numpy(codes)
        table = served[name]
        rows_at: dict[str, dict[str, int]] = {}
        for k, precision in enumerate(precisions):
            rows = np.flatnonzero(index == k)
            if not rows.size:
                continue
            chosen = PRECISIONS[precision]
            values = table[torch.from_numpy(rows)]
            keep = columns < torch.from_numpy(dims[rows]).unsqueeze(1)
            row_precision = RowPrecision(torch.full((len(rows),), k, dtype=torch.int64), precisions)
            masked = torch.where(keep, values.to(torch.float32), 0.0)
            sizes = torch.from_numpy(dims[rows].astype(np.int64))
            # Shared scales: the peak of every row of this size at this precision, as the model's lookups take it.
            peak = (shared_peaks(masked.abs().amax(dim=-1), row_precision.levels, sizes)
                    if shared and chosen.integer else None)
            stored, scale = quantise_rows(masked, row_precision.levels, row_precision.half, peak)
            kept = stored[keep]
            _check_finite(name, values[keep], kept, "float32")
            if chosen.integer:
                tensors[f"{name}.{precision}.values"] = _pack_integers(kept, chosen.bits)
                if shared:  # one scale per size (0 for a size no row has)
                    scale = torch.zeros(budget.d_max - budget.d_min + 1).index_put_((sizes - budget.d_min,), scale)
                tensors[f"{name}.{precision}.scales"] = scale.to(torch.float16)
            else:
                tensors[f"{name}.{precision}.values"] = kept.to(torch.float16 if precision == "fp16" else torch.float32)
            rows_at[precision] = {"rows": int(rows.size), "values_stored": int(kept.numel())}
        specs[name] = {
            "rows": len(dims),
            "d_max": budget.d_max,
            "values_stored": int(dims.sum()),
            "codes_dtype": codes.dtype.name,
            "precisions": rows_at,
        }
    manifest = _manifest(PRECISION_FORMAT_VERSION, specs, budget, allocation, limit, config_hash, "float32",
                         precisions=precisions, bits=allocation.bits(budget.scales), scales=budget.scales)
    return _finish(manifest, tensors, limit, extra)


def _manifest(version: int, specs: dict[str, Any], budget: Budget, allocation: Allocation, limit: int, config_hash: str,
              dtype: str, *, precisions: tuple[str, ...] | None = None, bits: int | None = None,
              scales: str = "row") -> dict[str, Any]:
    """The manifest of either format version, in its fixed key order (its bytes are part of the export's)."""
    manifest: dict[str, Any] = {"format": FORMAT, "format_version": version, "tables": specs}
    if precisions is not None:
        manifest["precisions"] = list(precisions)
    if scales != "row":  # per-row scales read as they did before scales could be shared
        manifest["scales"] = scales
    manifest.update({"d_min": budget.d_min, "d_max": budget.d_max, "dtype": dtype,
                     "values_stored": sum(spec["values_stored"] for spec in specs.values())})
    if bits is not None:
        manifest["bits_stored"] = bits
    manifest.update({"budget": {**budget.to_dict(), "max_bytes": budget.max_bytes}, "bytes_limit": limit,
                     "config_hash": config_hash, "allocation": allocation.fingerprint(),
                     "created_by": f"embnas {_version()}"})
    return manifest


def _pack_integers(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Integers in ``[-2**(bits-1), 2**(bits-1))`` as stored: int8 as is, narrower ones bit-packed into bytes.

    Two's complement, ``8 // bits`` to a byte, the first value in the lowest bits; the
    last byte is padded with zeros.
    """
    q = values.to(torch.int8)
    if bits == 8:
        return q.contiguous()
    per_byte = 8 // bits
    mask = (1 << bits) - 1
    padded = torch.zeros(-(-q.numel() // per_byte) * per_byte, dtype=torch.int16)
    padded[: q.numel()] = q.to(torch.int16) & mask
    shifts = torch.arange(per_byte, dtype=torch.int16) * bits
    return (padded.view(-1, per_byte) << shifts).sum(dim=1).to(torch.uint8)


def _finish(manifest: dict[str, Any], tensors: Mapping[str, torch.Tensor], limit: int,
            extra: Mapping[str, Any] | None) -> PackedTables:
    """The payload and the manifest that seal each other, checked against the byte limit."""
    if extra is not None:
        manifest["extra"] = dict(extra)
    # The payload carries the digest of the manifest's content, and the manifest the payload's
    # sha256, so an edit to either file is refused by the loader.
    payload = _safetensors_bytes(tensors, {"format": FORMAT, "manifest_sha256": manifest_digest(manifest)})
    manifest["bytes_stored"] = 0
    manifest["files"] = {TABLES_FILE: {"bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}}
    manifest_text = _manifest_bytes(manifest, len(payload))
    total = len(payload) + len(manifest_text)
    if total > limit:
        raise ArtifactError(
            f"the export would take {total:,} bytes, {total - limit:,} over its limit of {limit:,}: the metadata "
            f"(safetensors header and a {len(manifest_text):,}-byte manifest) outgrew the reserve of nas.core.accounting"
            f"{' (shorten extra)' if extra else ''}; this is a bug in the byte accounting, nothing was written"
        )
    return PackedTables({TABLES_FILE: payload, MANIFEST_FILE: manifest_text}, manifest, limit)


# -- pieces ----------------------------------------------------------------------------------------
def _served_tables(embedding: ServedTables | Mapping[str, torch.Tensor], allocation: Allocation,
                   d_max: int) -> dict[str, torch.Tensor]:
    """Every table exactly as the masked model serves it under ``allocation``, on the CPU."""
    if not isinstance(embedding, Mapping):
        tables = embedding.served_tables(allocation)
    else:
        masks = allocation.element_masks or {}
        tables = {}
        with torch.no_grad():
            for name, weight in embedding.items():
                weight = weight.detach()
                if name in masks:
                    keep = torch.tensor(masks[name]).to(weight.device)
                elif name in allocation.row_dims:
                    dims = torch.tensor(allocation.row_dims[name]).to(weight.device)
                    keep = torch.arange(weight.shape[-1], device=weight.device) < dims.unsqueeze(-1)
                else:
                    continue
                # torch.where, as MaskableEmbedding: masked positions are +0.0 even for negative weights.
                tables[name] = torch.where(keep, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))
    if set(tables) != set(allocation.row_dims):
        raise ConfigError(f"the embedding has tables {sorted(tables)} but the allocation has {sorted(allocation.row_dims)}")
    out = {}
    for name, dims in allocation.row_dims.items():
        table = tables[name].detach().cpu()
        if tuple(table.shape) != (len(dims), d_max):
            raise ConfigError(f"table {name!r} is {tuple(table.shape)}, expected (rows={len(dims)}, d_max={d_max})")
        if not table.is_floating_point():
            raise ConfigError(f"table {name!r} holds {table.dtype}, not floating-point values")
        out[name] = table
    return out


def _check_finite(name: str, kept: torch.Tensor, values: torch.Tensor, dtype: str) -> None:
    """Refuse NaN and inf among the values to export (``kept``: as the model holds them; ``values``: as stored)."""
    if bool(torch.isfinite(values).all()):
        return
    bad = int((~torch.isfinite(kept)).sum())
    if bad:
        raise ArtifactError(
            f"table {name!r} holds {bad:,} non-finite values (NaN or inf) among those the allocation keeps: "
            "the model diverged; nothing was exported (retrain it, e.g. with a lower learning rate)"
        )
    over = int((~torch.isfinite(values)).sum())
    raise ConfigError(f"table {name!r}: {over:,} of its values overflow {dtype}; export them as float32")


#: torch dtype -> safetensors dtype code, for the dtypes an export holds.
_ST_CODES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.uint32: "U32", torch.uint16: "U16", torch.uint8: "U8", torch.int8: "I8",
}


def _safetensors_bytes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    """A safetensors file holding ``tensors`` and ``metadata``, the same bytes in every process.

    The layout is safetensors' own (an 8-byte little-endian header length, a JSON header
    padded with spaces to a multiple of 8 bytes, then the little-endian tensor data), with
    the tensors ordered by element size, widest first (so each one starts aligned), then by
    name, and the metadata's keys sorted.  ``safetensors.torch.load`` reads it back, and so
    does the loader of exports written by ``safetensors.save`` before.
    """
    order = sorted(tensors, key=lambda key: (-tensors[key].element_size(), key))
    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    chunks, offset = [], 0
    for key in order:
        tensor = tensors[key].detach().cpu().contiguous()
        raw = tensor.reshape(-1).view(torch.uint8).reshape(-1, tensor.element_size())
        if sys.byteorder == "big":
            raw = raw.flip(1)
        data = raw.numpy().tobytes()
        header[key] = {"dtype": _ST_CODES[tensor.dtype], "shape": list(tensor.shape),
                       "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")  # as safetensors writes names
    text += b" " * (-len(text) % 8)
    return b"".join([struct.pack("<Q", len(text)), text, *chunks])


def _manifest_bytes(manifest: dict[str, Any], payload_bytes: int) -> bytes:
    """Serialise ``manifest`` with ``bytes_stored`` equal to the payload plus the manifest itself.

    The manifest's size depends on the digits of ``bytes_stored``, so iterate to the fixed
    point (two or three rounds; the size only grows with the number).
    """
    size = 0
    for _ in range(10):
        manifest["bytes_stored"] = payload_bytes + size
        text = (json.dumps(manifest, indent=1) + "\n").encode("utf-8")
        if len(text) == size:
            return text
        size = len(text)
    raise ArtifactError("could not settle the manifest's own size (bug)")


def _version() -> str:
    try:
        return metadata.version("embnas")
    except metadata.PackageNotFoundError:
        return "unknown"


def _write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file and fsync it (a seam the tests use to fail mid-write)."""
    with open(path, "xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _write_folder(target: Path, files: Mapping[str, bytes], expected: int, limit: int,
                  replaceable: frozenset[str] = frozenset({MANIFEST_FILE, TABLES_FILE})) -> None:
    """Write ``files`` into a sibling temporary folder, check them on disk, then swap it in for ``target``.

    ``target`` may be missing, empty, or a folder holding only files named in ``replaceable``
    (an earlier export of the same kind); anything else is refused.
    """
    target = target.absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    _check_replaceable(target, replaceable)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700: a serving user must read it
        for name, data in files.items():
            _write_file(tmp / name, data)
        _fsync_dir(tmp)
        on_disk = sum(entry.stat().st_size for entry in tmp.iterdir())
        if on_disk != expected or on_disk > limit:
            raise ArtifactError(
                f"{target}: the written files take {on_disk:,} bytes (expected {expected:,}, limit {limit:,}); "
                "this is a bug in the byte accounting, the export was discarded"
            )
        _swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_replaceable(target: Path, replaceable: frozenset[str]) -> None:
    """Refuse to replace anything but a missing or empty folder or an earlier export."""
    if not target.exists() and not target.is_symlink():
        return
    if target.is_symlink() or not target.is_dir():
        raise ArtifactError(f"{target}: exists and is not a folder; refusing to replace it with an export")
    entries = {entry.name for entry in target.iterdir()}
    if not entries or entries <= replaceable:
        return
    raise ArtifactError(
        f"{target}: is a folder holding {sorted(entries)[:5]}, not an embnas export; refusing to replace it"
    )


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux ``renameat2(RENAME_EXCHANGE)``; False where unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd = -100
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _swap_in(tmp: Path, target: Path) -> None:
    """Make ``tmp`` the new ``target``; the old ``target`` (if any) survives until the new one is in place."""
    if not target.exists():
        os.rename(tmp, target)
    elif _exchange(tmp, target):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the previous export
    else:
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        os.rmdir(aside)
        os.rename(target, aside)
        try:
            os.rename(tmp, target)
        except BaseException:
            os.rename(aside, target)
            raise
        shutil.rmtree(aside, ignore_errors=True)
    _fsync_dir(target.parent)
