"""Byte accounting: what an exported table really costs on disk, in bytes.

The export (``nas.artifact.export``) stores, per table, the leading ``row_dims[r]`` values
of every row packed one after another, plus the ``row_dims`` array itself, plus
metadata (the safetensors header and ``manifest.json``).  When precision is searched it
stores, per table and precision, the values of the rows at that precision (bit-packed
below a byte) and the integer rows' scales, and one code per row for size and precision
(:mod:`nas.core.precision`): a row costs a whole number of *bits*, and everything else is
fixed by the tables (:func:`precision_fixed_bytes`).  Every byte figure of embnas
comes from this module: the budget turns bytes into values with it
(:meth:`~nas.core.budget.Budget.from_bytes`), the export checks the files it wrote
against :func:`export_byte_limit`, and element-mask controllers size their masks by
:func:`masked_value_limit`, so none of them can disagree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from nas.core.errors import BudgetError
from nas.core.precision import PRECISIONS, SCALE_BITS, code_dtype

if TYPE_CHECKING:
    from nas.core.budget import Budget

__all__ = [
    "METADATA_RESERVE_BASE",
    "METADATA_RESERVE_PER_BUFFER",
    "METADATA_RESERVE_PER_TABLE",
    "dims_dtype",
    "export_byte_limit",
    "export_bytes",
    "fixed_bytes",
    "masked_value_limit",
    "precision_fixed_bytes",
    "value_itemsize",
]

#: Bytes set aside for ``manifest.json`` and the safetensors header of any export.
METADATA_RESERVE_BASE = 4096
#: Extra metadata bytes set aside per table (its entries in the header and manifest).
METADATA_RESERVE_PER_TABLE = 512
#: Extra bytes set aside per table and precision when precision is searched: the header
#: entries of its value and scale buffers, and the byte its bit-packed values may pad to.
METADATA_RESERVE_PER_BUFFER = 192

_VALUE_DTYPES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


def value_itemsize(dtype: str) -> int:
    """Bytes per stored embedding value for a dtype name such as ``"float32"``."""
    try:
        return _VALUE_DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown value dtype {dtype!r}; choose one of {sorted(_VALUE_DTYPES)}") from None


def dims_dtype(d_max: int) -> np.dtype:
    """The smallest unsigned integer dtype that holds every row size up to ``d_max``."""
    for candidate in (np.uint8, np.uint16, np.uint32):
        if d_max <= np.iinfo(candidate).max:
            return np.dtype(candidate)
    raise ValueError(f"d_max={d_max} is too large to export")


def fixed_bytes(rows: Mapping[str, int], d_max: int, *, element_mask: bool = False) -> int:
    """Bytes an export needs before any embedding value: row sizes, optional bit masks, metadata."""
    itemsize = dims_dtype(d_max).itemsize
    total = METADATA_RESERVE_BASE
    for n in rows.values():
        total += METADATA_RESERVE_PER_TABLE + int(n) * itemsize
        if element_mask:
            total += (int(n) * d_max + 7) // 8
    return total


def precision_fixed_bytes(rows: Mapping[str, int], d_min: int, d_max: int, precisions: Sequence[str],
                          scales: str = "row") -> int:
    """Bytes an export with searched precision needs before any value or per-row scale.

    Row codes, padding and metadata; with ``scales="shared"`` also the shared scales,
    one fp16 per table, integer precision and size (all of them, used or not).
    """
    itemsize = code_dtype(d_min, d_max, len(precisions)).itemsize
    shared = (sum(PRECISIONS[p].integer for p in precisions) * (d_max - d_min + 1) * SCALE_BITS // 8
              if scales == "shared" else 0)
    total = METADATA_RESERVE_BASE
    for n in rows.values():
        total += METADATA_RESERVE_PER_TABLE + len(precisions) * METADATA_RESERVE_PER_BUFFER + int(n) * itemsize + shared
    return total


def export_bytes(values: int, rows: Mapping[str, int], d_max: int, dtype: str = "float32", *, element_mask: bool = False) -> int:
    """Upper bound on the bytes of an export that keeps ``values`` embedding values in total."""
    return fixed_bytes(rows, d_max, element_mask=element_mask) + int(values) * value_itemsize(dtype)


def export_byte_limit(budget: Budget, dtype: str | None = None, *, element_mask: bool = False) -> int:
    """The most bytes an export under ``budget`` may take on disk.

    Without element masks and in the budget's own dtype this is ``budget.max_bytes``.
    Element masks add their bit-packed masks (``rows × d_max / 8`` bytes per table),
    which a value budget pays on top; a byte budget never goes above the bytes the
    user gave.

    Args:
        budget: the hard budget.
        dtype: value dtype of the export (the budget's when ``None``).
        element_mask: whether the export stores element masks.
    """
    dtype = budget.dtype if dtype is None else dtype
    limit = export_bytes(budget.usable_values, budget.rows, budget.d_max, dtype, element_mask=element_mask)
    if budget.kind == "bytes":
        limit = min(limit, int(budget.amount))
    return limit


def masked_value_limit(budget: Budget) -> int:
    """Most values an element-masked export may keep: a byte budget also pays for the bit masks.

    Raises:
        BudgetError: when the masks and every row's ``d_min`` values do not fit the bytes.
    """
    limit = budget.usable_values
    least = sum(budget.rows.values()) * budget.d_min
    if budget.kind == "bytes":
        overhead = fixed_bytes(budget.rows, budget.d_max, element_mask=True)
        limit = min(limit, (int(budget.amount) - overhead) // value_itemsize(budget.dtype))
        if limit < least:
            raise BudgetError(
                f"{budget.describe()} cannot hold element masks: they need at least "
                f"{overhead + least * value_itemsize(budget.dtype):,} bytes (masks and {budget.d_min} value(s) per row)"
            )
    return limit
