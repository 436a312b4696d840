"""The per-feature space: one size for every row (every user, item or feature value).

The finest space there is, and the one BET searches: a decision per row, so
controllers must handle it through context (frequency) or a parametric family
(millions of rows are common).  Decisions are held as one int array over the
concatenated tables, in table order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from nas.core.allocation import Allocation
from nas.core.space import SearchSpace
from nas.core.tables import TableSpec
from search_spaces.registry import register_space

__all__ = ["PerFeatureSpace"]


@register_space("per-feature")
class PerFeatureSpace(SearchSpace):
    """A size in ``grid`` for every row of every table.

    Args:
        tables: the embedding tables.
        frequencies: training frequency of every row, by table.
        d_min: smallest size.
        d_max: largest size.
        grid: candidate sizes; default every integer in ``[d_min, d_max]``.
    """

    def __init__(
        self,
        tables: Sequence[TableSpec],
        frequencies: Mapping[str, np.ndarray],
        d_min: int,
        d_max: int,
        grid: Sequence[int] | None = None,
    ) -> None:
        super().__init__(tables, frequencies, d_min, d_max)
        values = np.arange(self.d_min, self.d_max + 1) if grid is None else np.unique(np.asarray(grid, dtype=np.int64))
        if values.size == 0 or values[0] < self.d_min or values[-1] > self.d_max:
            raise ValueError(f"the grid must be non-empty and inside [{self.d_min}, {self.d_max}], got {list(values)}")
        self._grid = values.astype(np.int64)
        self._weights = np.ones(sum(t.rows for t in self.tables), dtype=np.int64)
        self._offsets = np.cumsum([0] + [t.rows for t in self.tables])

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
        return np.concatenate([allocation.row_dims[t.name] for t in self.tables]).astype(np.int64)

    def context(self) -> dict[str, np.ndarray]:
        table = np.repeat(np.arange(len(self.tables)), [t.rows for t in self.tables])
        frequency = np.concatenate([self.frequencies[t.name] for t in self.tables])
        return {"table": table, "log_frequency": np.log1p(frequency.astype(np.float64))}
