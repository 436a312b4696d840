"""The per-feature space: one size for every row (every user, item or feature value).

The finest space there is, and the one BET searches: a decision per row, so
controllers must handle it through context (frequency) or a parametric family
(millions of rows are common).  Decisions are held as one int array over the
concatenated tables, in table order; every operation is a whole-array numpy
operation, so sampling and projecting a million rows take a fraction of a second.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from nas.core.allocation import Allocation
from nas.core.projection import FrequencyOrder
from nas.core.space import SearchSpace
from nas.core.tables import TableSpec
from search_spaces._grid import GridSpec, make_grid, snap_to_grid
from nas.core.plugins import register_space

__all__ = ["PerFeatureSpace"]


@register_space("per-feature")
class PerFeatureSpace(SearchSpace):
    """A size in ``grid`` for every row of every table.

    Args:
        tables: the embedding tables.
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
        self._weights = np.ones(sum(t.rows for t in self.tables), dtype=np.int64)
        self._offsets = np.cumsum([0] + [t.rows for t in self.tables])
        self._context: dict[str, np.ndarray] | None = None

    @property
    def grid(self) -> np.ndarray:
        return self._grid

    @property
    def weights(self) -> np.ndarray:
        return self._weights

    def to_allocation(self, decisions: np.ndarray) -> Allocation:
        values = np.asarray(decisions, dtype=np.int64)
        return Allocation(
            {t.name: values[self._offsets[i] : self._offsets[i + 1]] for i, t in enumerate(self.tables)}
        )

    def from_allocation(self, allocation: Allocation) -> np.ndarray:
        """Every row's size, snapped to the nearest grid value (exact for sizes on the grid)."""
        sizes = np.concatenate([allocation.row_dims[t.name] for t in self.tables])
        return snap_to_grid(sizes, self._grid)

    def context(self) -> dict[str, np.ndarray]:
        """``table`` and ``log_frequency`` per row (computed once; the arrays are read-only)."""
        if self._context is None:
            table = np.repeat(np.arange(len(self.tables)), [t.rows for t in self.tables])
            frequency = np.concatenate([self.frequencies[t.name] for t in self.tables])
            self._context = {"table": table, "log_frequency": np.log1p(frequency.astype(np.float64))}
            for array in self._context.values():
                array.setflags(write=False)
        return dict(self._context)

    def frequency_order(self) -> FrequencyOrder:
        """Rows ranked by their exact integer frequency within each table (cached)."""
        if getattr(self, "_frequency_order", None) is None:
            frequency = np.concatenate([self.frequencies[t.name] for t in self.tables])
            self._frequency_order = FrequencyOrder.from_frequencies(self.context()["table"], frequency)
        return self._frequency_order
