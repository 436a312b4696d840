"""Small vectorised array helpers shared by the loaders."""

from __future__ import annotations

import numpy as np

__all__ = ["first_repeat", "pair_keys"]

_INT64_MAX = int(np.iinfo(np.int64).max)


def pair_keys(first: np.ndarray, second: np.ndarray) -> np.ndarray | None:
    """One int64 key per row, ``first * (max(second) + 1) + second``, or ``None`` if it could overflow.

    Both columns must be non-negative. Equal keys mean equal rows, and the keys
    sort like the rows, so one ``np.sort`` replaces a much slower ``lexsort``.
    """
    if first.size == 0:
        return np.zeros(0, dtype=np.int64)
    width = int(second.max()) + 1
    if (int(first.max()) + 1) * width > _INT64_MAX:
        return None
    return first.astype(np.int64) * width + second


def first_repeat(*columns: np.ndarray) -> int | None:
    """Position of the earliest row equal to an earlier row, or ``None`` when all rows differ.

    Rows are the zipped ``columns`` (equal-length arrays of non-negative
    integers). The common answer, "no repeat", costs one ``np.sort`` of a
    combined key; only when a repeat exists does a stable sort locate the
    earliest second occurrence, so a loader can report its line.
    """
    n = columns[0].size
    if n < 2:
        return None
    key = columns[0].astype(np.int64) if len(columns) == 1 else None
    if len(columns) == 2:
        key = pair_keys(columns[0], columns[1])
    if key is not None:
        ordered = np.sort(key)
        if not (ordered[1:] == ordered[:-1]).any():
            return None
        order = np.argsort(key, kind="stable")  # equal rows stay in reading order
        same = key[order][1:] == key[order][:-1]
    else:
        order = np.lexsort(columns[::-1])
        same = np.ones(n - 1, dtype=bool)
        for col in columns:
            ordered = col[order]
            same &= ordered[1:] == ordered[:-1]
    repeats = order[1:][same]
    return int(repeats.min()) if repeats.size else None
