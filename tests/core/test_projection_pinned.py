"""The projection's output, pinned: an allocation once drawn stays the same allocation.

A sandwich supernet trains on ``space.sample``, which projects, and every recorded result
depends on those draws; a change to the projection that alters a single value silently
changes them all.  These cases (ties by the million, a frequency order, uneven weights and
grids, inputs large enough for the partition paths) are pinned by the sha256 of the output.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from nas.core.projection import FrequencyOrder, project_linear

#: (name, rows, seed, proposal, weights, grid, ordered).
CASES = [
    ("grid-sample", 60_000, 0, "grid", "ones", "full", False),
    ("grid-sample-ordered", 60_000, 1, "grid", "ones", "full", True),
    ("uniform", 60_000, 2, "uniform", "ones", "full", False),
    ("few-values", 60_000, 3, "few", "ones", "even2", True),
    ("uneven-weights", 20_000, 4, "uniform", "uneven", "full", True),
    ("uneven-grid", 20_000, 5, "grid", "uneven", "pow2", False),
    ("small", 300, 6, "uniform", "ones", "full", True),
]

GRIDS = {"full": np.arange(1, 65), "even2": np.arange(2, 65, 2), "pow2": np.array([1, 2, 4, 8, 16, 32, 64])}


def inputs(case: tuple, order_class: type = FrequencyOrder) -> tuple:
    """The proposal, weights, grid, capacity and frequency order of a case."""
    _, n, seed, proposal, weights, grid, ordered = case
    rng = np.random.default_rng(seed)
    grid = GRIDS[grid]
    x = {"grid": lambda: grid[rng.integers(0, len(grid), n)].astype(np.float64),
         "uniform": lambda: rng.uniform(0, 70, n),
         "few": lambda: rng.integers(0, 5, n).astype(np.float64)}[proposal]()
    w = np.ones(n, dtype=np.int64) if weights == "ones" else rng.integers(1, 9, n)
    capacity = int(int(w.sum()) * (grid[0] + 0.1 * (grid[-1] - grid[0])))
    order = None
    if ordered:
        order = order_class.from_frequencies((rng.random(n) < 0.4).astype(np.int64), rng.integers(0, 50, n))
    return x, w, grid, capacity, order


#: The first 16 hex digits of each output's sha256 (int64 bytes).
PINNED = {
    "grid-sample": "06a79b39651cd7fd",
    "grid-sample-ordered": "0b31d5290eafef93",
    "uniform": "6ae65aed91fdc461",
    "few-values": "48163a637746618c",
    "uneven-weights": "90946a81145a0e1e",
    "uneven-grid": "32be6bd1174ff478",
    "small": "8c1ed902f5534d0a",
}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_the_projection_of_a_pinned_case_is_unchanged(case: tuple):
    x, weights, grid, capacity, order = inputs(case)
    out = project_linear(x, weights, grid, capacity, order=order)
    assert hashlib.sha256(np.ascontiguousarray(out, dtype=np.int64).tobytes()).hexdigest()[:16] == PINNED[case[0]]
