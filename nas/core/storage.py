"""What an exported table really costs on disk, in bytes.

The export (``nas.export``) stores, per table, the leading ``row_dims[r]`` values
of every row packed one after another, plus the ``row_dims`` array itself, plus
metadata (the safetensors header and ``manifest.json``).  A byte budget is turned
into a value budget with these functions, and the export checks the files it
wrote against the same numbers, so the two can never disagree.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = [
    "METADATA_RESERVE_BASE",
    "METADATA_RESERVE_PER_TABLE",
    "dims_dtype",
    "export_bytes",
    "fixed_bytes",
    "value_itemsize",
]

#: Bytes set aside for ``manifest.json`` and the safetensors header of any export.
METADATA_RESERVE_BASE = 4096
#: Extra metadata bytes set aside per table (its entries in the header and manifest).
METADATA_RESERVE_PER_TABLE = 512

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


def export_bytes(values: int, rows: Mapping[str, int], d_max: int, dtype: str = "float32", *, element_mask: bool = False) -> int:
    """Upper bound on the bytes of an export that keeps ``values`` embedding values in total."""
    return fixed_bytes(rows, d_max, element_mask=element_mask) + int(values) * value_itemsize(dtype)
