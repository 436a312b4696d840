"""Load and serve an exported packed embedding: the deployable half of embnas.

This module is what a serving process ships with, so it imports only ``torch``,
``safetensors`` and the standard library: not numpy, and nothing else of embnas but
:mod:`nas.artifact.native` (its compiled gather, with ``gather.c``), which does the same.
It reads the folder written by :func:`nas.artifact.export.export_tables`::

    manifest.json          format, version, tables, budget, sizes and sha256 of the payload
    tables.safetensors     per table: {name}.row_dims, {name}.values, and {name}.mask
                           (bit-packed) for element-mask allocations

and serves exactly the vectors the masked training model served (bit for bit,
same dtype, masked positions ``+0.0``).

An export of an allocation with a precision per row (format version 2) holds one code
per row for its size and precision, and per precision a buffer of values (fp32, fp16,
int8, or int4 / int2 bit-packed two or four to a byte) with one fp16 scale per integer
row, or with shared scales one per size.  The loader keeps each precision's values as stored (int4 and int2 widened to one
byte a value) and dequantises at lookup, ``float32(q) * float32(scale)``: the very
product the model's fake quantisation computed, so those vectors are bit-identical too.

Every problem with the artifact (missing or truncated file, tampered bytes, an
edited manifest, an unknown format, hostile JSON, values that are not finite)
raises :class:`PackedArtifactError` naming the file and what is wrong, on one
line, never a raw JSON or safetensors traceback.  Only regular files are read
(a FIFO or a link to ``/dev/zero`` is refused before reading), and never more
bytes than their size on disk, which for the payload must be the size the
manifest declares and for the manifest at most :data:`MAX_MANIFEST_BYTES`.

Three in-memory layouts, chosen with ``layout`` in :meth:`PackedEmbedding.load`; all serve the
same vectors, bit for bit:

* ``"packed"`` (default) keeps the values as stored, so serving memory stays within about
  1 % of the budget: the values, each row's size in the byte the export stores it in, and
  the offset of every 16th row (4 bytes per 16 rows); a row starts at its block's offset
  plus the sizes before it in the block.  Lookups run in a compiled gather
  (:mod:`nas.artifact.native`, built on first use with the system's C compiler) that copies
  each row and zero-fills its tail in one pass, at dense speed or faster.  Where no compiler
  works, and off the CPU, they run in eager torch (a few times slower): the rows' starts
  from their blocks, a gather of the ``d_max`` values that start there (an overlapping
  strided view of the value buffer, so the gather copies whole rows like a dense
  embedding), and a bitwise AND with a precomputed prefix mask that clears what lies past
  each row's size (exact ``+0.0``).
* ``"dense"`` rebuilds the zero-padded ``rows × d_max`` table once at load and
  serves it with ``nn.functional.embedding``: dense speed, dense memory.
* ``"tiered"`` is the mixed-dimension layout of Ginart et al. (mixed-dimension embeddings,
  ISIT 2021) and of DLRM's ``md_embedding``: each table's rows are grouped by size (in a
  precision export by size and precision) into dense ``(rows_in_tier, size)`` tensors, kept
  as stored (int8 stays int8; rows of size 0 take no values), and one int32 code per row
  holds its tier and its row in that tier (a table of a single size needs none).  Memory:
  the values plus 4 bytes a row.  A lookup gathers the codes, orders the ids by tier with
  one sort, zero-fills the output (or, when many ids fall in the full-width tier, gathers
  that tier with an extra zero row for the other ids), then per tier present gathers its
  rows (``index_select``) and writes them into the output's first ``size`` columns
  (``index_copy_``), dequantising as the packed layout does, ``float32(q) * float32(scale)``.
  Element-mask tables need no fallback: their masked-out positions are stored ``+0.0``
  inside each row's size.  A lookup costs a few tensor operations per tier present, so
  the layout is slowest with many distinct sizes and small batches (measurements in
  ``docs/results.md``, section 3).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import reprlib
import stat
import struct
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load as _load_safetensors

from nas.artifact.native import BLOCK as _ROW_BLOCK
from nas.artifact.native import RowGather, row_gather, unavailable_reason

__all__ = [
    "FORMAT", "FORMAT_VERSION", "MANIFEST_FILE", "MAX_D_MAX", "MAX_MANIFEST_BYTES", "PRECISION_FORMAT_VERSION",
    "STORED_PRECISIONS", "STORED_SCALES", "TABLES_FILE", "PackedArtifactError", "PackedEmbedding", "VALUE_DTYPES", "manifest_digest",
]

#: Value of ``manifest["format"]`` for artifacts this module reads.
FORMAT = "embnas-packed-embedding"
#: The manifest version of exports without precisions.
FORMAT_VERSION = 1
#: The manifest version of exports with a precision per row.
PRECISION_FORMAT_VERSION = 2
#: Precision name -> (bits a value, integer with a per-row fp16 scale); as ``nas.core.precision``,
#: which this module may not import.
STORED_PRECISIONS: dict[str, tuple[int, bool]] = {
    "fp32": (32, False), "fp16": (16, False), "int8": (8, True), "int4": (4, True), "int2": (2, True),
}
#: Where integer rows' scales live (``manifest["scales"]``, ``"row"`` when absent); as ``nas.core.precision.SCALES``.
STORED_SCALES = ("row", "shared")
#: Name of the manifest inside an export folder.
MANIFEST_FILE = "manifest.json"
#: Name of the payload inside an export folder.
TABLES_FILE = "tables.safetensors"

_LAYOUTS = ("packed", "dense", "tiered")

#: Value dtype names of the manifest -> torch dtype (the export writes these too).
VALUE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
#: Row-size dtype names of the manifest -> torch dtype.
_DIMS_DTYPES: dict[str, torch.dtype] = {"uint8": torch.uint8, "uint16": torch.uint16, "uint32": torch.uint32}
#: Safetensors dtype codes we accept -> (torch dtype, bytes per element).
_ST_DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "F64": (torch.float64, 8),
    "U8": (torch.uint8, 1),
    "I8": (torch.int8, 1),
    "U16": (torch.uint16, 2),
    "U32": (torch.uint32, 4),
}
#: Integer dtype of the same width as a value dtype, to clear elements with a bitwise AND.
_BITS_DTYPES = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
#: Most bytes ``manifest.json`` may take: real manifests take a few kB (a few hundred bytes a table).
MAX_MANIFEST_BYTES = 8 << 20
#: Widest table (``d_max``) the loader accepts: every lookup returns ``d_max`` values an id, and
#: loading pads the value buffer by ``d_max``, so an absurd width in the manifest is refused up front.
MAX_D_MAX = 1 << 16
#: Widest table served with a precomputed ``(d_max + 1, d_max)`` prefix mask (at most a few MB); wider
#: tables compute the mask per lookup.
_PREFIX_TABLE_MAX_D = 1024
#: Deepest JSON nesting accepted in the manifest or the safetensors header (the export writes 3 or 4).
_MAX_JSON_DEPTH = 64
#: Most digits of an integer in that JSON (2**64 has 20).
_MAX_INT_DIGITS = 20
#: Flags for opening artifact files: never block (a FIFO swapped in), never become a controlling tty.
_OPEN_FLAGS = getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
#: Rows expanded at a time when an element-mask table is rebuilt at load (bounds temporary memory).
_BLOCK_ROWS = 1 << 16
#: A tiered lookup starts from a gather of the full-width tier when at least 1 / ``_BASE_SHARE`` of the
#: ids fall in it; with fewer, zero-filling the output and scattering those rows like any tier is cheaper.
_BASE_SHARE = 8


class PackedArtifactError(ValueError):
    """An export folder that is missing, truncated, tampered with or of an unknown format.

    The serving loader cannot import :class:`nas.core.errors.ArtifactError` (it must not
    depend on the rest of embnas), so it raises this ``ValueError`` instead; callers
    inside embnas that want one kind can catch both.
    """


def _fail(path: Path | str, problem: str) -> PackedArtifactError:
    """The error for ``path``, on one line whatever the problem's text (which may quote the file)."""
    return PackedArtifactError(f"{path}: {' '.join(problem.splitlines())}")


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """sha256 of the manifest's content, without the entries that describe the files themselves.

    The export stores it in the safetensors metadata, which the payload's own sha256 (in the
    manifest) covers: an edit to either file is then caught, whichever it is.
    """
    content = {k: v for k, v in manifest.items() if k not in ("files", "bytes_stored")}
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


# -- reading and checking the files --------------------------------------------------------------
def _brief(value: Any) -> str:
    """A short one-line ``repr`` of a value read from the artifact (which may be huge or deep)."""
    return _REPR.repr(value)


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlevel = 3


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return kind
    return "special file"


def _open_regular(path: Path, missing: str) -> tuple[int, int]:
    """Open ``path`` for reading if it is a regular file: ``(fd, size in bytes)``.

    A FIFO would block the reader forever and a device (``/dev/zero``) never ends, so
    anything else is refused before it is read: ``stat`` first (so a special file is
    never even opened), then the opened descriptor is checked again with ``fstat`` (so a
    file swapped in between is caught).  ``O_NONBLOCK`` keeps that open from blocking.
    """
    try:
        before = os.stat(path)
        if not stat.S_ISREG(before.st_mode):
            raise _fail(path, f"is a {_file_kind(before.st_mode)}, not a regular file; refusing to read it")
        fd = os.open(path, os.O_RDONLY | _OPEN_FLAGS)
    except FileNotFoundError:
        raise _fail(path, missing) from None
    except OSError as error:
        raise _fail(path, f"cannot be read ({error.strerror or error})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _fail(path, f"is a {_file_kind(info.st_mode)}, not a regular file; refusing to read it")
    except BaseException:
        os.close(fd)
        raise
    return fd, info.st_size


def _read_fd(fd: int, size: int, path: Path) -> bytes:
    """Exactly ``size`` bytes from ``fd`` (then closed); a file that changes size meanwhile is refused."""
    try:
        chunks, left = [], size
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 24))
            if not chunk:
                raise _fail(path, f"shrank while it was read (expected {size:,} bytes); the file is being changed")
            chunks.append(chunk)
            left -= len(chunk)
        if os.read(fd, 1):
            raise _fail(path, f"grew while it was read (expected {size:,} bytes); the file is being changed")
        return b"".join(chunks)
    except OSError as error:
        raise _fail(path, f"cannot be read ({error.strerror or error})") from None
    finally:
        os.close(fd)


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text.lstrip('-')):,} digits, more than the {_MAX_INT_DIGITS} any entry needs")
    return int(text)


def _parse_constant(text: str) -> Any:
    raise ValueError(f"{text} is not standard JSON")


def _parse_json(raw: bytes, path: Path, what: str, why: str) -> Any:
    """Parse JSON from the artifact, turning every way hostile bytes can fail into one error naming the file.

    ``what`` starts the problem (``""`` or ``"safetensors header "``) and ``why`` ends it.

    Integers are capped at 20 digits (anything larger is no size or count this format holds;
    Python's own cap on digits would raise a bare ``ValueError``), ``NaN`` and ``Infinity``
    are refused, and nesting deeper than ``_MAX_JSON_DEPTH`` is refused: it would raise
    ``RecursionError`` here or later, when the manifest's digest is computed.
    """
    try:
        value = json.loads(raw.decode("utf-8"), parse_int=_parse_int, parse_constant=_parse_constant)
    except RecursionError:
        value, depth = None, _MAX_JSON_DEPTH + 1
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError and the limits above
        raise _fail(path, f"{what}is not valid JSON ({error}){why}") from None
    else:
        depth = _json_depth(value)
    if depth > _MAX_JSON_DEPTH:
        raise _fail(path, f"{what}nests deeper than {_MAX_JSON_DEPTH} levels, which this format never does{why}")
    return value


def _json_depth(value: Any) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), computed without recursion; stops past the limit."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > _MAX_JSON_DEPTH:
            break
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _read_manifest(folder: Path) -> tuple[dict[str, Any], int]:
    """Parse ``manifest.json``; return it with its size in bytes."""
    path = folder / MANIFEST_FILE
    fd, size = _open_regular(path, "missing; this folder is not an embnas export (or the export did not finish)")
    if size > MAX_MANIFEST_BYTES:
        os.close(fd)
        raise _fail(path, f"is {size:,} bytes, more than the {MAX_MANIFEST_BYTES:,} a manifest may take; refusing to read it")
    raw = _read_fd(fd, size, path)
    manifest = _parse_json(raw, path, "", "; the file is truncated or was edited")
    if not isinstance(manifest, dict):
        raise _fail(path, "does not hold a JSON object")
    if manifest.get("format") != FORMAT:
        raise _fail(path, f"format is {_brief(manifest.get('format'))}, expected {FORMAT!r}")
    version = manifest.get("format_version")
    if version not in (FORMAT_VERSION, PRECISION_FORMAT_VERSION) or isinstance(version, bool):
        raise _fail(
            path, f"format_version is {_brief(version)}; this loader reads versions {FORMAT_VERSION} and {PRECISION_FORMAT_VERSION}"
        )
    return manifest, len(raw)


def _field(manifest: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """``manifest[key]``, checked to be of ``kind`` (bools are not ints)."""
    if key not in manifest:
        raise _fail(where, f"has no {key!r} entry")
    value = manifest[key]
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise _fail(where, f"{key!r} must be {getattr(kind, '__name__', kind)}, got {_brief(value)}")
    if not isinstance(value, kind):
        raise _fail(where, f"{key!r} must be {getattr(kind, '__name__', kind)}, got {_brief(value)}")
    return value


def _read_payload(folder: Path, manifest: Mapping[str, Any], verify: bool) -> tuple[bytes, int]:
    """Read every payload file the manifest lists, checking size (always) and sha256 (``verify``).

    The size the manifest declares must be the size of the regular file on disk, and no
    more than that is ever read.
    """
    where = str(folder / MANIFEST_FILE)
    files = _field(manifest, "files", dict, where)
    if set(files) != {TABLES_FILE}:
        raise _fail(where, f"lists files {_brief(sorted(files))}, expected exactly [{TABLES_FILE!r}]")
    total = 0
    payload = b""
    for name, entry in files.items():
        if not isinstance(entry, dict):
            raise _fail(where, f"entry of {name!r} in 'files' is not an object")
        size = _field(entry, "bytes", int, where)
        digest = _field(entry, "sha256", str, where)
        path = folder / name
        fd, on_disk = _open_regular(path, "missing (the manifest lists it)")
        if on_disk != size:
            os.close(fd)
            problem = "truncated" if on_disk < size else "longer than written"
            raise _fail(path, f"is {on_disk:,} bytes but the manifest says {_brief(size)} ({problem}; the file was changed)")
        data = _read_fd(fd, size, path)
        if verify:
            actual = hashlib.sha256(data).hexdigest()
            if actual != digest:
                raise _fail(
                    path, f"sha256 mismatch: the file hashes to {actual}, the manifest says {_brief(digest)}; refusing a tampered artifact"
                )
        total += len(data)
        payload = data
    return payload, total


def _check_safetensors(path: Path, data: bytes) -> tuple[dict[str, dict[str, Any]], str]:
    """Validate the safetensors framing ourselves, so a damaged file gives a clear message.

    Returns the header (tensor name -> dtype, shape, data_offsets) without ``__metadata__``,
    and the manifest digest the metadata records.
    """
    if len(data) < 8:
        raise _fail(path, f"is {len(data)} bytes, too short for a safetensors file (truncated)")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8:
        raise _fail(path, f"header claims {header_len:,} bytes but only {len(data) - 8:,} follow (truncated)")
    header = _parse_json(data[8 : 8 + header_len], path, "safetensors header ", " (damaged file)")
    if not isinstance(header, dict):
        raise _fail(path, "safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if not isinstance(metadata, dict) or not isinstance(metadata.get("manifest_sha256"), str):
        raise _fail(path, "carries no manifest digest in its metadata; it was not written by this export format")
    body = len(data) - 8 - header_len
    spans = []
    for name, info in header.items():
        if not isinstance(info, dict):
            raise _fail(path, f"tensor {_brief(name)} has a malformed header entry")
        code, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(code, str) or code not in _ST_DTYPES:
            raise _fail(path, f"tensor {_brief(name)} has dtype {_brief(code)}, not one this format uses")
        if not (isinstance(shape, list) and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)):
            raise _fail(path, f"tensor {_brief(name)} has a malformed shape {_brief(shape)}")
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= body
        ):
            raise _fail(path, f"tensor {_brief(name)} lies outside the file ({_brief(offsets)}, {body:,} data bytes; truncated?)")
        if offsets[1] - offsets[0] != math.prod(shape) * _ST_DTYPES[code][1]:
            raise _fail(path, f"tensor {_brief(name)} has {offsets[1] - offsets[0]:,} bytes, which does not match its shape {_brief(shape)}")
        spans.append((offsets[0], offsets[1]))
    end = 0
    for first, last in sorted(spans):
        if first != end:
            problem = "overlap" if first < end else f"leave bytes {end:,} to {first:,} unused"
            raise _fail(path, f"tensors {problem} in the data section (damaged file)")
        end = last
    if end != body:
        raise _fail(path, f"holds {body:,} data bytes but its tensors use {end:,}")
    return header, metadata["manifest_sha256"]


def _tensor(tensors: Mapping[str, torch.Tensor], key: str, dtype: torch.dtype, length: int, path: Path) -> torch.Tensor:
    if key not in tensors:
        raise _fail(path, f"has no tensor {_brief(key)}")
    tensor = tensors[key]
    if tensor.dtype != dtype:
        raise _fail(path, f"tensor {_brief(key)} is {tensor.dtype}, the manifest says {dtype}")
    if tuple(tensor.shape) != (length,):
        raise _fail(path, f"tensor {_brief(key)} has shape {tuple(tensor.shape)}, the manifest says ({length},)")
    return tensor


def _unpack_bits(packed: torch.Tensor, count: int) -> torch.Tensor:
    """Inverse of ``numpy.packbits`` (big-endian bit order) for the first ``count`` bits, as bool."""
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8)
    bits = (packed.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(-1)[:count].bool()


# -- the served tables ---------------------------------------------------------------------------
def _size_dtype(d_max: int) -> torch.dtype:
    """The smallest dtype holding a row's size in a table ``d_max`` wide."""
    return torch.uint8 if d_max < 2**8 else torch.int16 if d_max < 2**15 else torch.int32


#: Row-size dtypes the compiled gather reads (tables narrower than 2**15 values).
_GATHER_SIZE_DTYPES = (torch.uint8, torch.int16)


class _Table:
    """One table in the packed layout: values back to back, each row's size, and every 16th row's offset.

    Row ``r`` holds ``sizes[r]`` values from ``base[r // 16]`` plus the sizes of the rows before it
    in its block of 16.  The map costs the byte a row the export already pays for a row's size
    (one byte while ``d_max`` < 256, two below 2**15) and 4 bytes per 16 rows (8 past 2**31
    values), so serving memory stays within about 1 % of the budget, where an offset a row
    would add 4 bytes a row.

    Lookups run in the compiled gather of :mod:`nas.artifact.native` when ``gather`` is given:
    one pass that copies each row and zero-fills its tail.  Otherwise they run in eager torch:
    the row's start from its block (a gather of the block's 16 sizes and a masked sum), then
    a gather of ``d_max`` values from ``window``, an overlapping view of the value buffer whose
    row ``k`` is ``buffer[k : k + d_max]``, cleared past the row's size by a bitwise AND with
    ``prefix_bits[size]`` (all-ones on the first ``size`` columns, in an integer dtype of the
    values' width).
    """

    def __init__(self, values: torch.Tensor, row_dims: torch.Tensor, d_max: int, device: torch.device,
                 gather: RowGather | None = None) -> None:
        n = values.numel()
        dims = row_dims.to(torch.int64)
        rows = len(dims)
        blocks = -(-rows // _ROW_BLOCK)
        self.d_max = d_max
        self.rows = rows
        self.values = n
        self.device = device
        sizes = torch.zeros(blocks * _ROW_BLOCK, dtype=_size_dtype(d_max))
        sizes[:rows] = dims
        starts = torch.cumsum(dims, 0) - dims
        self.sizes = sizes.to(device)
        self.base = starts[::_ROW_BLOCK].to(torch.int32 if n < 2**31 else torch.int64).contiguous().to(device)
        self.gather = gather if device.type == "cpu" and sizes.dtype in _GATHER_SIZE_DTYPES else None
        if self.gather is not None:
            self.buffer = values.contiguous().clone()
            return
        buffer = torch.zeros(n + d_max, dtype=values.dtype)
        buffer[:n] = values
        self.buffer = buffer.to(device)
        self.window = self.buffer.as_strided((n + 1, d_max), (1, 1))
        self.bits_dtype = _BITS_DTYPES[values.element_size()]
        self.columns = torch.arange(d_max, dtype=torch.int32).to(device)
        before = torch.arange(_ROW_BLOCK).unsqueeze(0) < torch.arange(_ROW_BLOCK).unsqueeze(1)  # [j, k]: row k is before row j
        self.before = before.to(torch.int32).to(device)
        self.prefix_bits: torch.Tensor | None = None
        if d_max <= _PREFIX_TABLE_MAX_D:  # (d_max + 1) x d_max entries: wide tables build the mask per lookup
            prefix = self.columns.unsqueeze(0) < torch.arange(d_max + 1, dtype=torch.int32, device=device).unsqueeze(1)
            self.prefix_bits = (-prefix.to(self.bits_dtype)).contiguous()

    @property
    def dims(self) -> torch.Tensor:
        """Each row's size (int64)."""
        return self.sizes[: self.rows].to(torch.int64)

    def starts(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Where each of ``rows`` (all rows by default) starts in the value buffer (int64)."""
        dims = self.dims
        starts = torch.cumsum(dims, 0) - dims
        return starts if rows is None else starts.index_select(0, rows)

    def lookup(self, flat_ids: torch.Tensor) -> torch.Tensor:
        if self.gather is not None:
            if flat_ids.dtype != torch.int64 or not flat_ids.is_contiguous():
                flat_ids = flat_ids.to(torch.int64).contiguous()
            return self.gather(flat_ids, self.rows, self.base, self.sizes, self.buffer, self.d_max)
        dims = self.sizes[: self.rows].index_select(0, flat_ids)  # refuses out-of-range ids
        block = flat_ids // _ROW_BLOCK
        in_block = self.sizes.view(-1, _ROW_BLOCK).index_select(0, block).to(torch.int32)
        before = (in_block * self.before.index_select(0, flat_ids % _ROW_BLOCK)).sum(1, dtype=torch.int64)
        out = self.window.index_select(0, self.base.index_select(0, block) + before)
        if self.prefix_bits is not None:
            keep = self.prefix_bits.index_select(0, dims.to(torch.int64))
        else:
            keep = -(self.columns < dims.unsqueeze(1)).to(self.bits_dtype)
        out.view(self.bits_dtype).bitwise_and_(keep)
        return out

    def nbytes(self) -> int:
        parts = (self.buffer, self.sizes, self.base, getattr(self, "columns", None), getattr(self, "before", None),
                 getattr(self, "prefix_bits", None))
        return sum(t.numel() * t.element_size() for t in parts if t is not None)


class PackedEmbedding:
    """Tables loaded from an export folder, serving zero-padded ``(…, d_max)`` vectors.

    Build one with :meth:`load`.  It offers the ``EmbeddingProvider`` interface of
    ``recsys`` (``dim``, ``rows``, ``lookup``, ``table``), so a backbone can use it as is.

    Attributes:
        rows: rows of each table, by name.
        dim: the full width ``d_max`` of every returned vector.
        dtype: the value dtype the export stored.
        layout: ``"packed"``, ``"dense"`` or ``"tiered"`` (see the module docstring).
        manifest: the manifest the tables were loaded from.
    """

    def __init__(self, tables: Mapping[str, _Table | _MixedTable | _TieredTable | torch.Tensor], dim: int, dtype: torch.dtype,
                 manifest: Mapping[str, Any], layout: str) -> None:
        self._tables = dict(tables)
        self.rows: dict[str, int] = {
            name: (int(t.shape[0]) if isinstance(t, torch.Tensor) else t.rows) for name, t in self._tables.items()
        }
        self.dim = int(dim)
        self.dtype = dtype
        self.manifest = dict(manifest)
        self.layout = layout

    # -- loading -----------------------------------------------------------------------------
    @classmethod
    def load(cls, folder: str | os.PathLike[str], *, verify: bool = True, device: str | torch.device = "cpu",
             layout: str = "packed", native: bool | None = None) -> PackedEmbedding:
        """Read an export folder, refusing anything damaged, tampered with or inconsistent.

        Args:
            folder: the folder :func:`nas.artifact.export.export_tables` wrote.
            verify: check the sha256 of every payload file (sizes, framing and consistency
                are always checked; turn this off only to save the hashing time).
            device: where the tables live and lookups run.
            layout: ``"packed"`` (memory at the budget), ``"dense"`` (rebuild the full
                zero-padded table for dense-speed lookups) or ``"tiered"`` (a dense
                sub-table per row size; see the module docstring).
            native: serve the packed layout through the compiled gather of
                :mod:`nas.artifact.native` (CPU only).  ``None`` (default) uses it where it
                builds and falls back to eager torch, ``True`` requires it, ``False`` never
                uses it.  The vectors are the same either way.

        Raises:
            PackedArtifactError: naming the file and what is wrong.
            RuntimeError: ``native=True`` and the gather cannot be built (the message says why).
        """
        if layout not in _LAYOUTS:
            raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}")
        device = torch.device(device)
        if native and device.type != "cpu":
            raise ValueError(f"native=True serves tables on the CPU, not on {device}")
        gather = row_gather() if native is not False and device.type == "cpu" else None
        if native and gather is None:
            raise RuntimeError(f"native=True, but the compiled gather cannot be built: {unavailable_reason()}")
        if native is None and gather is None and layout == "packed" and device.type == "cpu":
            warnings.warn(f"serving the packed layout in eager torch, a few times slower than its compiled gather "
                          f"({unavailable_reason()}); pass native=False to silence this", stacklevel=2)
        folder = Path(folder)
        if not folder.is_dir():
            raise _fail(folder, "is not a folder (expected an embnas export folder)")
        manifest, manifest_bytes = _read_manifest(folder)
        where = str(folder / MANIFEST_FILE)
        d_max = _field(manifest, "d_max", int, where)
        d_min = _field(manifest, "d_min", int, where)
        if not 0 <= d_min <= d_max or d_max < 1:
            raise _fail(where, f"has d_min={d_min}, d_max={d_max}; need 0 <= d_min <= d_max and d_max >= 1")
        if d_max > MAX_D_MAX:
            raise _fail(where, f"has d_max={d_max:,}, wider than the {MAX_D_MAX:,} this loader serves")
        if native and layout == "packed" and _size_dtype(d_max) not in _GATHER_SIZE_DTYPES:
            raise RuntimeError(f"native=True, but the compiled gather serves rows of fewer than 32,768 values, "
                               f"and d_max is {d_max}")
        dtype_name = _field(manifest, "dtype", str, where)
        if dtype_name not in VALUE_DTYPES:
            raise _fail(where, f"value dtype {_brief(dtype_name)} is not one of {sorted(VALUE_DTYPES)}")
        value_dtype = VALUE_DTYPES[dtype_name]
        specs = _field(manifest, "tables", dict, where)
        if not specs:
            raise _fail(where, "lists no tables")
        bytes_stored = _field(manifest, "bytes_stored", int, where)

        data, payload_bytes = _read_payload(folder, manifest, verify)
        if payload_bytes + manifest_bytes != bytes_stored:
            raise _fail(
                where,
                f"says the export stores {bytes_stored:,} bytes but its files hold {payload_bytes + manifest_bytes:,} "
                "(the manifest was edited)",
            )
        path = folder / TABLES_FILE
        header, digest = _check_safetensors(path, data)
        if digest != manifest_digest(manifest):
            raise _fail(where, "does not match the digest recorded in tables.safetensors (the manifest was edited)")
        try:
            tensors = _load_safetensors(data)
        except Exception as error:  # noqa: BLE001 - the framing was checked above: a safety net for anything else
            raise _fail(path, f"cannot be decoded ({type(error).__name__}: {error})") from None

        expected_keys: set[str] = set()
        tables: dict[str, _Table | _MixedTable | torch.Tensor] = {}
        total_values = 0
        if manifest["format_version"] == PRECISION_FORMAT_VERSION:
            tables, expected_keys = _load_precisions(manifest, specs, tensors, d_min, d_max, device, path, where, gather)
            specs = {}
        for name, spec in specs.items():
            if not isinstance(spec, dict):
                raise _fail(where, f"entry of table {_brief(name)} is not an object")
            rows = _field(spec, "rows", int, where)
            stored = _field(spec, "values_stored", int, where)
            if _field(spec, "d_max", int, where) != d_max:
                raise _fail(where, f"table {_brief(name)} has d_max={spec['d_max']}, the export has {d_max}")
            dims_name = _field(spec, "dims_dtype", str, where)
            if dims_name not in _DIMS_DTYPES:
                raise _fail(where, f"table {_brief(name)} has row-size dtype {_brief(dims_name)}, not one of {sorted(_DIMS_DTYPES)}")
            has_mask = _field(spec, "element_mask", bool, where) if "element_mask" in spec else False
            if rows < 1 or stored < 0:
                raise _fail(where, f"table {_brief(name)} has rows={rows}, values_stored={stored}")
            row_dims = _tensor(tensors, f"{name}.row_dims", _DIMS_DTYPES[dims_name], rows, path).to(torch.int64)
            values = _tensor(tensors, f"{name}.values", value_dtype, stored, path)
            expected_keys |= {f"{name}.row_dims", f"{name}.values"}
            if not bool(torch.isfinite(values).all()):
                bad = int((~torch.isfinite(values)).sum())
                raise _fail(path, f"table {_brief(name)} holds {bad:,} non-finite values (NaN or inf); refusing to serve them")
            low, high = int(row_dims.min()), int(row_dims.max())
            if low < d_min or high > d_max:
                raise _fail(path, f"table {_brief(name)} has row sizes in [{low}, {high}], outside [d_min={d_min}, d_max={d_max}]")
            if has_mask:
                key = f"{name}.mask"
                expected_keys.add(key)
                packed = _tensor(tensors, key, torch.uint8, (rows * d_max + 7) // 8, path)
                values = _expand_masked(name, packed, row_dims, values, d_max, path)
            elif int(row_dims.sum()) != stored:
                raise _fail(path, f"table {_brief(name)}: row sizes add up to {int(row_dims.sum()):,} values but {stored:,} are stored")
            total_values += stored
            table = _Table(values, row_dims, d_max, device, gather)
            tables[name] = table
        if set(header) != expected_keys:
            extra = sorted(set(header) - expected_keys)
            raise _fail(path, f"holds tensors {_brief(extra)} that the manifest does not describe")
        budget = manifest.get("budget")
        if isinstance(budget, dict) and isinstance(budget.get("max_values"), int) and total_values > budget["max_values"]:
            raise _fail(where, f"stores {total_values:,} values, over the budget of {budget['max_values']:,}")

        embedding = cls(tables, d_max, value_dtype, manifest, "packed")
        if layout == "dense":
            dense = {name: embedding.table(name).contiguous() for name in tables}
            embedding = cls(dense, d_max, value_dtype, manifest, "dense")
        elif layout == "tiered":
            shared = manifest["format_version"] == PRECISION_FORMAT_VERSION and manifest.get("scales") == "shared"
            tiered = {name: _tiered(table, shared) for name, table in tables.items()}
            embedding = cls(tiered, d_max, value_dtype, manifest, "tiered")
        return embedding

    # -- serving -----------------------------------------------------------------------------
    def lookup(self, table: str, ids: torch.Tensor) -> torch.Tensor:
        """Vectors of ``ids`` (int64 or int32, any shape) in ``table``: shape ``ids.shape + (dim,)``.

        Bit-identical to ``MaskableEmbedding.lookup`` under the exported allocation
        (masked positions are ``+0.0``).  Out-of-range ids raise ``IndexError``.
        """
        stored = self._get(table)
        if isinstance(stored, torch.Tensor):
            return F.embedding(ids.to(stored.device), stored)
        if ids.dim() == 1 and ids.device == stored.device:  # the common case, without a reshape or a copy
            return stored.lookup(ids)
        flat = ids.reshape(-1).to(stored.device)
        return stored.lookup(flat).view(*ids.shape, self.dim)

    def table(self, table: str) -> torch.Tensor:
        """The whole table as served, ``(rows, dim)``, zero-padded past each row's size."""
        stored = self._get(table)
        if isinstance(stored, torch.Tensor):
            return stored
        return stored.lookup(torch.arange(stored.rows, device=stored.device))

    def row_sizes(self, table: str) -> torch.Tensor:
        """Each row's stored size in ``table`` (int64, ``(rows,)``): the values it keeps before zero padding.

        Raises:
            ValueError: in the dense layout, which does not keep the sizes (load ``"packed"`` or ``"tiered"``).
        """
        stored = self._get(table)
        if isinstance(stored, torch.Tensor):
            raise ValueError("the dense layout does not keep row sizes; load with layout='packed' or 'tiered'")
        return _row_sizes(stored)

    def memory_bytes(self) -> int:
        """Bytes the loaded tables hold in memory (values, scales, offsets, sizes, masks, tier codes)."""
        total = 0
        for stored in self._tables.values():
            total += stored.numel() * stored.element_size() if isinstance(stored, torch.Tensor) else stored.nbytes()
        return total

    @property
    def tables(self) -> tuple[str, ...]:
        """Table names, in order."""
        return tuple(self._tables)

    def _get(self, table: str) -> _Table | _MixedTable | _TieredTable | torch.Tensor:
        try:
            return self._tables[table]
        except KeyError:
            raise KeyError(f"no table {table!r}; the export has {list(self._tables)}") from None

    @property
    def native(self) -> bool:
        """Whether lookups run in the compiled gather (the packed layout on a CPU where it builds)."""
        tables = [part[0] for stored in self._tables.values() if isinstance(stored, _MixedTable)
                  for part in stored.groups if part is not None]
        tables += [stored for stored in self._tables.values() if isinstance(stored, _Table)]
        return bool(tables) and all(table.gather is not None for table in tables)

    def __repr__(self) -> str:
        return (f"PackedEmbedding(rows={self.rows}, dim={self.dim}, dtype={self.dtype}, layout={self.layout!r}, "
                f"native={self.native})")


def _expand_masked(name: str, packed: torch.Tensor, row_dims: torch.Tensor, values: torch.Tensor,
                   d_max: int, path: Path) -> torch.Tensor:
    """Place the masked-in values of an element-mask table at their prefix positions (zeros elsewhere).

    The result is the prefix-packed layout (``row_dims[r]`` values per row, masked-out
    positions ``+0.0``), which serves the element mask exactly with the prefix lookup.
    """
    rows = len(row_dims)
    total_bits = rows * d_max
    if total_bits % 8 and int(packed[-1]) & ((1 << (8 - total_bits % 8)) - 1):
        raise _fail(path, f"table {_brief(name)}: the mask has bits set past its last row")
    starts = torch.zeros(rows, dtype=torch.int64)
    if rows > 1:
        torch.cumsum(row_dims[:-1], 0, out=starts[1:])
    out = torch.zeros(int(row_dims.sum()), dtype=values.dtype)
    columns = torch.arange(d_max)
    taken = 0
    for first in range(0, rows, _BLOCK_ROWS):
        last = min(rows, first + _BLOCK_ROWS)
        bit0, bit1 = first * d_max, last * d_max
        byte0 = bit0 // 8
        chunk = packed[byte0 : (bit1 + 7) // 8]
        mask = _unpack_bits(chunk, bit1 - byte0 * 8)[bit0 - byte0 * 8 :].view(last - first, d_max)
        if bool((mask & (columns >= row_dims[first:last, None])).any()):
            raise _fail(path, f"table {_brief(name)}: the mask keeps elements past a row's size")
        position = (starts[first:last, None] + columns)[mask]
        count = position.numel()
        if taken + count > values.numel():
            raise _fail(path, f"table {_brief(name)}: the mask keeps more elements than the {values.numel():,} stored values")
        out[position] = values[taken : taken + count]
        taken += count
    if taken != values.numel():
        raise _fail(path, f"table {_brief(name)}: the mask keeps {taken:,} elements but {values.numel():,} values are stored")
    return out


# -- exports with a precision per row (format version 2) -----------------------------------------
class _MixedTable:
    """One table whose rows are stored at several precisions: a packed table per precision.

    ``group[r]`` is the precision of row ``r`` and ``local[r]`` its row in that precision's
    table; an integer precision's rows are multiplied by their scales at lookup.
    """

    def __init__(self, groups: list[tuple[_Table, torch.Tensor | None] | None], group: torch.Tensor,
                 local: torch.Tensor, d_max: int, device: torch.device) -> None:
        self.groups = groups
        self.group = group.to(device)
        self.local = local.to(device)
        self.rows = len(group)
        self.d_max = d_max
        self.device = device

    def lookup(self, flat_ids: torch.Tensor) -> torch.Tensor:
        group = self.group.index_select(0, flat_ids)
        local = self.local.index_select(0, flat_ids)
        out = torch.empty(len(flat_ids), self.d_max, dtype=torch.float32, device=self.device)
        for k, entry in enumerate(self.groups):
            if entry is None:
                continue
            table, scales = entry
            chosen = torch.nonzero(group == k).squeeze(1)
            if not chosen.numel():
                continue
            rows = local.index_select(0, chosen)
            vectors = table.lookup(rows).to(torch.float32)
            if scales is not None:
                vectors = vectors * scales.index_select(0, rows).unsqueeze(1)
            out.index_copy_(0, chosen, vectors)
        return out

    def nbytes(self) -> int:
        total = self.group.numel() * self.group.element_size() + self.local.numel() * self.local.element_size()
        for entry in self.groups:
            if entry is not None:
                total += entry[0].nbytes() + (0 if entry[1] is None else entry[1].numel() * entry[1].element_size())
        return total


# -- the tiered layout ---------------------------------------------------------------------------
class _TieredTable:
    """One table in the tiered layout: a dense ``(rows_in_tier, size)`` tensor per tier, and a code per row.

    A tier holds the rows of one size (and, in a precision export, one precision), in id
    order, as stored (int8, fp16, ...); a tier of size 0 holds an empty ``(rows, 0)``
    tensor.  ``code[r]`` packs row ``r``'s tier into its low ``tier_bits`` bits and its row
    in that tier above them, in int32 (int64 only past 2**31 combinations): one gather
    serves both, and it is the smallest per-row map that needs no per-lookup search (a
    uint8 tier plus an int32 row would cost a byte more and a second gather; ranges of
    ids per tier would take no memory but a binary search per id, which costs about as
    much as a whole dense lookup).  A table of a single tier needs no map at all: its
    row in the tier is the id.

    ``base`` is the full-width tier (``size == d_max``, values of the output dtype, no
    scales; the one of most rows if a precision export has several), if any: the rows a
    frequency-ranked allocation gives its most frequent ids.  It carries one extra zero
    row, and a lookup where many ids fall in it starts with a single dense gather from it
    (the zero row for every other id), which both writes that tier's rows and zero-fills
    the output.
    """

    def __init__(self, sizes: list[int], values: list[torch.Tensor], scales: list[torch.Tensor | None],
                 tier: torch.Tensor, local: torch.Tensor, d_max: int, dtype: torch.dtype, device: torch.device) -> None:
        self.sizes = sizes
        self.values = [v.to(device) for v in values]
        self.scales = [None if s is None else s.to(device) for s in scales]
        self.rows = len(tier)
        self.d_max = d_max
        self.dtype = dtype
        self.device = device
        self.tier_bits = max(1, (len(sizes) - 1).bit_length())
        self.tier_mask = (1 << self.tier_bits) - 1
        self.key_dtype = torch.uint8 if len(sizes) <= 256 else torch.int64
        self.code: torch.Tensor | None = None
        self.base: int | None = None
        if len(sizes) > 1:
            widest = max(len(v) for v in values)
            code_dtype = torch.int32 if self.tier_bits + max(1, (widest - 1).bit_length()) <= 31 else torch.int64
            self.code = ((local.to(torch.int64) << self.tier_bits) | tier.to(torch.int64)).to(code_dtype).to(device)
            full = [t for t, size in enumerate(sizes) if size == d_max and scales[t] is None and values[t].dtype == dtype]
            if full:
                self.base = max(full, key=lambda t: len(self.values[t]))
                self.zero_row = len(self.values[self.base])
                self.values[self.base] = torch.cat([self.values[self.base], self.values[self.base].new_zeros(1, d_max)])

    def lookup(self, flat_ids: torch.Tensor) -> torch.Tensor:
        n = flat_ids.numel()
        if self.code is None:  # one tier: the id is the row in it
            if not self.sizes[0]:
                _check_ids(flat_ids, self.rows)
                return torch.zeros(n, self.d_max, dtype=self.dtype, device=self.device)
            vectors = self._vectors(0, flat_ids)
            return vectors if self.sizes[0] == self.d_max else F.pad(vectors, (0, self.d_max - self.sizes[0]))
        code = self.code.index_select(0, flat_ids)
        tier = (code & self.tier_mask).to(self.key_dtype)
        local = code >> self.tier_bits
        counts = torch.bincount(tier, minlength=len(self.sizes)).tolist()
        base = self.base if self.base is not None and counts[self.base] * _BASE_SHARE >= n else None
        if base is not None:  # one dense gather: the base tier's rows, and the zero row for every other id
            out = self.values[base].index_select(0, torch.where(tier == base, local, self.zero_row))
        else:
            out = torch.zeros(n, self.d_max, dtype=self.dtype, device=self.device)
        present = [t for t, count in enumerate(counts) if count and t != base and self.sizes[t]]
        if not present:
            return out
        if len(present) == 1 and counts[present[0]] == n:  # every id in one tier: no partition needed
            t = present[0]
            out[:, : self.sizes[t]] = self._vectors(t, local)
            return out
        order = torch.sort(tier).indices
        positions = order.split(counts)
        rows = local.index_select(0, order).split(counts)
        for t in present:
            out[:, : self.sizes[t]].index_copy_(0, positions[t], self._vectors(t, rows[t]))
        return out

    def _vectors(self, t: int, rows: torch.Tensor) -> torch.Tensor:
        """Rows ``rows`` of tier ``t``, ``(len(rows), size)``, dequantised as the packed layout does."""
        vectors = self.values[t].index_select(0, rows)
        scales = self.scales[t]
        if scales is not None:  # float32(q) * float32(scale), the product the packed layout computes
            return vectors.to(torch.float32) * (scales if not scales.dim() else scales.index_select(0, rows).unsqueeze(1))
        return vectors if vectors.dtype == self.dtype else vectors.to(self.dtype)

    def nbytes(self) -> int:
        parts = [self.code, *self.values, *self.scales]
        return sum(t.numel() * t.element_size() for t in parts if t is not None)


def _check_ids(flat_ids: torch.Tensor, rows: int) -> None:
    """Raise ``IndexError`` as ``index_select`` would for ids outside ``[0, rows)``."""
    if flat_ids.numel() and (int(flat_ids.min()) < 0 or int(flat_ids.max()) >= rows):
        raise IndexError(f"index out of range in self (ids must be in [0, {rows}))")


def _row_sizes(table: _Table | _MixedTable | _TieredTable) -> torch.Tensor:
    """Each row's stored size (values kept, masked-out positions inside it included), int64."""
    if isinstance(table, _Table):
        return table.dims.to(torch.int64)
    if isinstance(table, _TieredTable):
        sizes = torch.tensor(table.sizes, dtype=torch.int64, device=table.device)
        if table.code is None:
            return sizes.expand(table.rows).clone()
        return sizes.index_select(0, (table.code & table.tier_mask).to(torch.int64))
    dims = torch.zeros(table.rows, dtype=torch.int64, device=table.device)
    group = table.group.to(torch.int64)
    for k, part in enumerate(table.groups):
        if part is not None:
            members = torch.nonzero(group == k).squeeze(1)
            dims[members] = part[0].dims.to(torch.int64).index_select(0, table.local.index_select(0, members))
    return dims


def _tiered(table: _Table | _MixedTable, shared: bool) -> _TieredTable:
    """The tiered layout of a table loaded in the packed layout: the same values, grouped by (precision, size).

    Element-mask tables need nothing special: their packed values already hold the masked
    positions as ``+0.0`` inside each row's size.  With ``shared`` scales every row of one
    size and precision has the same scale, so a tier keeps it once, as a 0-dim tensor.
    """
    device = table.device
    if isinstance(table, _Table):
        parts: list[tuple[_Table, torch.Tensor | None] | None] = [(table, None)]
        group = torch.zeros(table.rows, dtype=torch.int64, device=device)
        within = torch.arange(table.rows, device=device)
        dtype = table.buffer.dtype
    else:
        parts, group, within, dtype = table.groups, table.group.to(torch.int64), table.local, torch.float32
    dims = _row_sizes(table)
    width = table.d_max + 1
    keys, tier, counts = torch.unique(group * width + dims, sorted=True, return_inverse=True, return_counts=True)
    order = torch.sort(tier, stable=True).indices  # each tier's rows in id order
    firsts = torch.cumsum(counts, 0) - counts
    local = torch.empty_like(order)
    local[order] = torch.arange(table.rows, device=device) - firsts.repeat_interleave(counts)
    sizes, values, scales = [], [], []
    windows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # per precision: its padded values, where its rows start
    for key, first, count in zip(keys.tolist(), firsts.tolist(), counts.tolist()):
        part = parts[key // width]
        assert part is not None
        sub, sub_scales = part
        size = key % width
        if key // width not in windows:
            windows[key // width] = F.pad(sub.buffer[: sub.values], (0, table.d_max)), sub.starts()
        buffer, starts = windows[key // width]
        rows = within.index_select(0, order[first : first + count])  # the tier's rows in the precision's packed table
        window = buffer.as_strided((sub.values + 1, size), (1, 1))  # row k: buffer[k : k + size]
        sizes.append(size)
        values.append(window.index_select(0, starts.index_select(0, rows)))
        if sub_scales is None:
            scales.append(None)
        else:
            tier_scales = sub_scales.index_select(0, rows)
            scales.append(tier_scales[0].clone() if shared else tier_scales)
    return _TieredTable(sizes, values, scales, tier, local, table.d_max, dtype, device)


def _load_precisions(manifest: Mapping[str, Any], specs: Mapping[str, Any], tensors: Mapping[str, torch.Tensor],
                     d_min: int, d_max: int, device: torch.device, path: Path,
                     where: str, gather: RowGather | None) -> tuple[dict[str, _MixedTable], set[str]]:
    """The tables of a format-version-2 export, every code, count, value and scale checked."""
    precisions = _field(manifest, "precisions", list, where)
    if not precisions or any(not isinstance(p, str) or p not in STORED_PRECISIONS for p in precisions) \
            or len(set(precisions)) != len(precisions):
        raise _fail(where, f"lists precisions {_brief(precisions)}, not distinct names among {sorted(STORED_PRECISIONS)}")
    n_codes = (d_max - d_min + 1) * len(precisions)
    scale_mode = manifest.get("scales", "row")
    if scale_mode not in STORED_SCALES:
        raise _fail(where, f"says its scales are {_brief(scale_mode)}, not 'row' or 'shared'")
    shared = scale_mode == "shared"
    tables: dict[str, _MixedTable] = {}
    keys: set[str] = set()
    total_bits = 0
    for name, spec in specs.items():
        if not isinstance(spec, dict):
            raise _fail(where, f"entry of table {_brief(name)} is not an object")
        rows = _field(spec, "rows", int, where)
        if rows < 1 or _field(spec, "d_max", int, where) != d_max:
            raise _fail(where, f"table {_brief(name)} has rows={rows}, d_max={spec['d_max']}")
        codes_name = _field(spec, "codes_dtype", str, where)
        if codes_name not in _DIMS_DTYPES:
            raise _fail(where, f"table {_brief(name)} has code dtype {_brief(codes_name)}, not one of {sorted(_DIMS_DTYPES)}")
        codes = _tensor(tensors, f"{name}.codes", _DIMS_DTYPES[codes_name], rows, path).to(torch.int64)
        keys.add(f"{name}.codes")
        if int(codes.max()) >= n_codes:
            raise _fail(path, f"table {_brief(name)} has a row code {int(codes.max())}, past the {n_codes} codes of "
                              f"sizes {d_min}..{d_max} at {len(precisions)} precisions")
        dims, index = codes // len(precisions) + d_min, codes % len(precisions)
        listed = _field(spec, "precisions", dict, where)
        group = index.to(torch.int8 if len(precisions) < 128 else torch.int64)
        local = torch.zeros(rows, dtype=torch.int64)
        groups: list[tuple[_Table, torch.Tensor | None] | None] = []
        for k, precision in enumerate(precisions):
            members = torch.nonzero(index == k).squeeze(1)
            if not members.numel():
                if precision in listed:
                    raise _fail(where, f"table {_brief(name)} lists rows at {precision}, and no row code says so")
                groups.append(None)
                continue
            entry = listed.get(precision)
            if not isinstance(entry, dict):
                raise _fail(where, f"table {_brief(name)} has rows at {precision} that its entry does not list")
            sizes = dims.index_select(0, members)
            count = int(sizes.sum())
            if _field(entry, "rows", int, where) != members.numel() or _field(entry, "values_stored", int, where) != count:
                raise _fail(where, f"table {_brief(name)}: the counts at {precision} do not match the row codes")
            bits, integer = STORED_PRECISIONS[precision]
            values, scales = _stored_values(tensors, f"{name}.{precision}", precision, count,
                                            d_max - d_min + 1 if shared else members.numel(), path)
            if shared and scales is not None:  # one scale per size: each row takes its size's
                scales = scales.index_select(0, sizes - d_min)
            keys.add(f"{name}.{precision}.values")
            if integer:
                keys.add(f"{name}.{precision}.scales")
            local[members] = torch.arange(members.numel())
            groups.append((_Table(values, sizes, d_max, device, gather), None if scales is None else scales.to(device)))
            total_bits += count * bits + (16 * members.numel() if integer and not shared else 0)
        tables[name] = _MixedTable(groups, group, local, d_max, device)
    bits_stored = _field(manifest, "bits_stored", int, where)
    if bits_stored != total_bits:
        raise _fail(where, f"says {bits_stored:,} bits are stored but the codes make {total_bits:,}")
    budget = manifest.get("budget")
    if isinstance(budget, dict) and isinstance(budget.get("max_bits"), int) and budget.get("kind") == "bytes" \
            and total_bits > budget["max_bits"]:
        raise _fail(where, f"stores {total_bits:,} bits, over the budget of {budget['max_bits']:,}")
    return tables, keys


def _stored_values(tensors: Mapping[str, torch.Tensor], key: str, precision: str, count: int, n_scales: int,
                   path: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One precision's values as served before scaling (fp32, fp16, or int8 integers) and its ``n_scales`` scales."""
    bits, integer = STORED_PRECISIONS[precision]
    if not integer:
        values = _tensor(tensors, f"{key}.values", torch.float32 if bits == 32 else torch.float16, count, path)
        if not bool(torch.isfinite(values).all()):
            raise _fail(path, f"{_brief(key)} holds values that are not finite; refusing to serve them")
        return values, None
    levels = 2 ** (bits - 1) - 1
    if bits == 8:
        values = _tensor(tensors, f"{key}.values", torch.int8, count, path)
    else:
        per_byte = 8 // bits
        packed = _tensor(tensors, f"{key}.values", torch.uint8, -(-count // per_byte), path)
        shifts = torch.arange(per_byte, dtype=torch.uint8) * bits
        fields = ((packed.unsqueeze(1) >> shifts) & ((1 << bits) - 1)).reshape(-1).to(torch.int16)
        if bool(fields[count:].any()):
            raise _fail(path, f"{_brief(key)} has bits set in the padding after its last value")
        values = (fields[:count] - (fields[:count] >= 2 ** (bits - 1)).to(torch.int16) * (1 << bits)).to(torch.int8)
    if count and int(values.to(torch.int16).abs().max()) > levels:
        raise _fail(path, f"{_brief(key)} holds an integer beyond ±{levels}, which {precision} never stores")
    scales = _tensor(tensors, f"{key}.scales", torch.float16, n_scales, path).to(torch.float32)
    if not bool((torch.isfinite(scales) & (scales >= 0)).all()):
        raise _fail(path, f"{_brief(key)} has a scale that is negative or not finite; refusing to serve it")
    return values, scales
