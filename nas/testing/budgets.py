"""Budgets the conformance suites draw: bytes placed between a space's cheapest and dearest allocation."""

from __future__ import annotations

import numpy as np

from nas.core.accounting import precision_fixed_bytes
from nas.core.precision import PRECISIONS
from nas.core.space import SearchSpace

__all__ = ["precision_bytes"]


def precision_bytes(space: SearchSpace, share: float, scales: str = "row") -> int:
    """Bytes of a budget ``share`` of the way from the space's cheapest allocation to its dearest, in bits.

    For a space searching precisions: the cheapest has every decision at its smallest
    size and cheapest precision there, the dearest at its largest size and dearest
    precision; the bytes add what the export sets aside (:func:`precision_fixed_bytes`).
    A share below 0 gives an infeasible budget (never below 0 bytes).
    """
    chosen = [PRECISIONS[p] for p in space.precisions]
    weight = int(space.weights.sum())
    lowest = weight * min(int(p.row_bits(int(space.grid[0]), scales)) for p in chosen)
    highest = weight * max(int(p.row_bits(int(space.grid[-1]), scales)) for p in chosen)
    fixed = precision_fixed_bytes(space.rows(), space.d_min, space.d_max, space.precisions, scales)
    return max(0, fixed + int(np.floor(lowest + share * (highest - lowest))) // 8)
