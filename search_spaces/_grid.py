"""Candidate-size grids and snapping values onto them, shared by the built-in spaces."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nas.core.errors import ConfigError

__all__ = ["GridSpec", "make_grid", "snap_to_grid"]

#: How a space's candidate sizes are given: ``None`` (every integer), ``"pow2"`` or explicit sizes.
GridSpec = Sequence[int] | str | None


def make_grid(spec: GridSpec, d_min: int, d_max: int) -> np.ndarray:
    """The sorted, distinct candidate sizes that ``spec`` names, inside ``[d_min, d_max]``.

    Args:
        spec: ``None`` or ``"all"`` for every integer from ``d_min`` to ``d_max``;
            ``"pow2"`` for the powers of two strictly between them plus ``d_min`` and
            ``d_max`` themselves (so the smallest and the full size stay candidates
            whatever the bounds); or an explicit list of sizes.
        d_min: smallest size a row may keep.
        d_max: largest size a row may keep.

    Raises:
        ConfigError: for an unknown name, an empty list or sizes outside the bounds.
    """
    if spec is None or (isinstance(spec, str) and spec == "all"):
        return np.arange(d_min, d_max + 1, dtype=np.int64)
    if isinstance(spec, str):
        if spec != "pow2":
            raise ConfigError(f"unknown grid {spec!r}; use 'all', 'pow2' or a list of sizes")
        powers = 2 ** np.arange(0, max(d_max, 1).bit_length() + 1, dtype=np.int64)
        return np.unique(np.concatenate([[d_min, d_max], powers[(powers > d_min) & (powers < d_max)]])).astype(np.int64)
    raw = np.asarray(list(spec))
    if raw.size == 0 or raw.ndim != 1:
        raise ConfigError(f"a grid needs at least one size, got {list(spec)!r}")
    if not np.issubdtype(raw.dtype, np.integer):
        if not np.issubdtype(raw.dtype, np.floating) or not np.all(raw == np.round(raw)):
            raise ConfigError(f"grid sizes must be whole numbers, got {raw.tolist()}")
    values = np.unique(raw.astype(np.int64))
    if values[0] < d_min or values[-1] > d_max:
        raise ConfigError(f"grid sizes must lie in [d_min={d_min}, d_max={d_max}], got {values.tolist()}")
    return values


def snap_to_grid(values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The grid value nearest each of ``values`` (the lower one on a tie), as int64."""
    values = np.asarray(values, dtype=np.float64)
    upper = np.clip(np.searchsorted(grid, values), 0, len(grid) - 1)
    lower = np.clip(upper - 1, 0, len(grid) - 1)
    take_lower = np.abs(values - grid[lower]) <= np.abs(grid[upper] - values)
    return np.where(take_lower, grid[lower], grid[upper]).astype(np.int64)
