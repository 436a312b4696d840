"""The per-field space: one size per table (field), shared by all of its rows.

The coarsest useful space: collaborative filtering has two decisions (users and
items), CTR data a few tens (one per categorical field).  A decision costs the
table's row count per dimension, so its weight is the table's rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from nas.core.allocation import Allocation
from nas.core.space import SearchSpace
from nas.core.tables import TableSpec
from search_spaces._grid import GridSpec, make_grid, snap_to_grid
from nas.core.plugins import register_space

__all__ = ["PerFieldSpace"]


@register_space("per-field")
class PerFieldSpace(SearchSpace):
    """A size in ``grid`` for every table; all rows of a table keep that size.

    Args:
        tables: the embedding tables (fields).
        frequencies: training frequency of every row, by table.
        d_min: smallest size.
        d_max: largest size.
        grid: candidate sizes: ``None`` for every integer in ``[d_min, d_max]``,
            ``"pow2"`` for powers of two (plus ``d_min`` and ``d_max``), or a list.
    """

    def __init__(
        self,
        tables: Sequence[TableSpec],
        frequencies: Mapping[str, np.ndarray],
        d_min: int,
        d_max: int,
        grid: GridSpec = None,
    ) -> None:
        super().__init__(tables, frequencies, d_min, d_max)
        self._grid = make_grid(grid, self.d_min, self.d_max)
        self._weights = np.array([t.rows for t in self.tables], dtype=np.int64)

    @property
    def grid(self) -> np.ndarray:
        return self._grid

    @property
    def weights(self) -> np.ndarray:
        """Rows of each table: one dimension of a field's size costs one value per row."""
        return self._weights

    def to_allocation(self, decisions: np.ndarray) -> Allocation:
        values = np.asarray(decisions, dtype=np.int64)
        return Allocation({t.name: np.full(t.rows, values[i], dtype=np.int64) for i, t in enumerate(self.tables)})

    def from_allocation(self, allocation: Allocation) -> np.ndarray:
        """Each table's mean row size, snapped to the nearest grid value (exact for this space's allocations)."""
        means = np.array([allocation.row_dims[t.name].mean() for t in self.tables])
        return snap_to_grid(means, self._grid)

    def context(self) -> dict[str, np.ndarray]:
        """Per field: ``table``, ``log_frequency`` (of the mean row), ``rows``, ``log_rows``, ``mass_share``.

        ``mass_share`` is the field's share of all training interactions (0 when there are none).
        """
        sums = np.array([float(self.frequencies[t.name].sum()) for t in self.tables])
        rows = self._weights.astype(np.float64)
        total = sums.sum()
        return {
            "table": np.arange(len(self.tables), dtype=np.int64),
            "log_frequency": np.log1p(sums / rows),
            "rows": self._weights.copy(),
            "log_rows": np.log(rows),
            "mass_share": sums / total if total > 0 else np.zeros(len(self.tables)),
        }
