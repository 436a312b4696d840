"""The block G×B space: rows grouped by frequency, columns cut into blocks.

Within each table the rows are sorted by training frequency (most frequent first,
ties by row id) and cut into ``G`` groups; the ``d_max`` columns are cut into ``B``
blocks of ``d_max / B`` columns.  One decision per group says how many leading
blocks its rows keep, so the search has ``G`` decisions per table whatever the row
count, and frequent rows can be given more room than the long tail.

Decisions are expressed in **dimensions** (multiples of the block width), like
every other space, so controllers and projections need no translation; the grid is
``d_min`` followed by ``block_width · k`` for every whole number of blocks above
``d_min`` up to ``B``.  A group thus keeps whole leading blocks, or only the ``d_min``
floor every row is owed: with ``d_min = 1`` and B = 4 on 64 columns the candidates are
1, 16, 32, 48, 64, and the long tail can sit at one dimension under tight budgets
instead of making every budget below a whole block per row infeasible.

A table with fewer rows than ``G`` gets one group per row (``min(G, rows)`` groups):
a group is never empty, so every decision has a cost and a frequency.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from nas.core.allocation import Allocation
from nas.core.errors import ConfigError
from nas.core.projection import FrequencyOrder
from nas.core.space import SearchSpace
from nas.core.tables import TableSpec
from search_spaces._grid import snap_to_grid
from nas.core.plugins import register_space

__all__ = ["GROUPINGS", "BlockSpace", "group_boundaries"]

#: How rows are cut into groups: equal row counts, or equal shares of the interactions.
GROUPINGS = ("count", "mass")

#: Most blocks the default picks (the largest divisor of ``d_max`` not above it).
_DEFAULT_MAX_BLOCKS = 8


def group_boundaries(sorted_frequencies: np.ndarray, groups: int, grouping: str = "count") -> np.ndarray:
    """Where each group starts in frequency-sorted rows, and the row count at the end.

    Args:
        sorted_frequencies: frequencies of one table's rows, most frequent first.
        groups: number of groups, at most the number of rows.
        grouping: ``"count"`` gives groups of equal size (within one row); ``"mass"``
            ends group ``k`` at the first row where the rows before it hold at least
            ``(k+1)/G`` of the table's interactions (a table without interactions is cut
            by count).  A group that would be empty (one row holding several shares) is
            given the next row, so every group keeps at least one row.

    Returns:
        int64 array of ``groups + 1`` positions, from 0 to the row count, strictly increasing.
    """
    rows = len(sorted_frequencies)
    if not 1 <= groups <= rows:
        raise ValueError(f"need 1 <= groups <= rows, got {groups} groups for {rows} rows")
    k = np.arange(1, groups, dtype=np.int64)
    total = int(np.sum(sorted_frequencies, dtype=np.int64))
    if grouping == "mass" and total > 0:
        cumulative = np.concatenate([[0], np.cumsum(sorted_frequencies, dtype=np.int64)])
        if total * groups < 2**62:
            raw = np.searchsorted(cumulative * groups, k * total, side="left")
        else:  # too large for exact int64 products; floating shares are as good at that scale
            raw = np.searchsorted(cumulative / total, k / groups, side="left")
    elif grouping in GROUPINGS:
        raw = -(-k * rows // groups)
    else:
        raise ConfigError(f"unknown grouping {grouping!r}; use one of {GROUPINGS}")
    # Boundary k must lie in [k, rows - groups + k] and rise strictly: shift by k, make it non-decreasing, clip.
    inner = np.clip(np.maximum.accumulate(raw.astype(np.int64) - k), 0, rows - groups) + k
    return np.concatenate([[0], inner, [rows]]).astype(np.int64)


def _default_blocks(d_max: int) -> int:
    """The largest divisor of ``d_max`` that is at most 8 (8 for the usual powers of two)."""
    return max(b for b in range(1, _DEFAULT_MAX_BLOCKS + 1) if d_max % b == 0)


@register_space("block")
class BlockSpace(SearchSpace):
    """``G`` frequency groups per table × ``B`` column blocks; a decision per group.

    Args:
        tables: the embedding tables.
        frequencies: training frequency of every row, by table.
        d_min: fewest dimensions a row may keep (a group keeps this floor or whole blocks, see the module notes).
        d_max: most dimensions a row may keep; must be a multiple of ``blocks``.
        groups: ``G``, frequency groups per table (a table with fewer rows gets one per row).
        blocks: ``B``, column blocks; default the largest divisor of ``d_max`` up to 8.
        grouping: ``"count"`` (equal row counts) or ``"mass"`` (equal shares of interactions).

    Raises:
        ConfigError: for ``groups < 1``, ``blocks < 1``, ``d_max`` not divisible by ``blocks``
            or an unknown grouping.
    """

    def __init__(
        self,
        tables: Sequence[TableSpec],
        frequencies: Mapping[str, np.ndarray],
        d_min: int,
        d_max: int,
        groups: int = 8,
        blocks: int | None = None,
        grouping: str = "count",
    ) -> None:
        super().__init__(tables, frequencies, d_min, d_max)
        blocks = _default_blocks(self.d_max) if blocks is None else blocks
        if int(groups) != groups or groups < 1:
            raise ConfigError(f"groups must be a positive integer, got {groups!r}")
        if int(blocks) != blocks or blocks < 1:
            raise ConfigError(f"blocks must be a positive integer, got {blocks!r}")
        if self.d_max % blocks:
            divisors = [b for b in range(1, self.d_max + 1) if self.d_max % b == 0]
            raise ConfigError(
                f"d_max={self.d_max} cannot be cut into {blocks} equal blocks; choose blocks among {divisors}"
            )
        if grouping not in GROUPINGS:
            raise ConfigError(f"unknown grouping {grouping!r}; use one of {GROUPINGS}")
        self.groups, self.blocks, self.grouping = int(groups), int(blocks), grouping
        self.block_width = self.d_max // self.blocks
        whole_blocks = self.block_width * np.arange(0, self.blocks + 1, dtype=np.int64)
        self._grid = np.unique(np.concatenate([[self.d_min], whole_blocks[whole_blocks > self.d_min]]))
        self._build_layout()

    def _build_layout(self) -> None:
        """Sort each table's rows by frequency, cut the groups and gather their statistics."""
        sorted_rows, boundaries, row_groups = {}, {}, {}
        stats: dict[str, list[np.ndarray]] = {k: [] for k in ("table", "group", "rows", "sum", "min", "max", "share")}
        offset = 0
        for index, table in enumerate(self.tables):  # a loop over tables; rows are handled as arrays
            frequency = self.frequencies[table.name]
            order = np.argsort(-frequency, kind="stable")  # most frequent first, ties by row id
            ordered = frequency[order]
            n_groups = min(self.groups, table.rows)
            bounds = group_boundaries(ordered, n_groups, self.grouping)
            sizes = np.diff(bounds)
            sums = np.add.reduceat(ordered, bounds[:-1]).astype(np.int64)
            total = int(ordered.sum())
            groups = np.empty(table.rows, dtype=np.int64)
            groups[order] = offset + np.repeat(np.arange(n_groups), sizes)
            for array in (order, bounds, groups):
                array.setflags(write=False)
            sorted_rows[table.name], boundaries[table.name], row_groups[table.name] = order, bounds, groups
            stats["table"].append(np.full(n_groups, index, dtype=np.int64))
            stats["group"].append(np.arange(n_groups, dtype=np.int64))
            stats["rows"].append(sizes)
            stats["sum"].append(sums)
            stats["max"].append(ordered[bounds[:-1]])
            stats["min"].append(ordered[bounds[1:] - 1])
            stats["share"].append(sums / total if total > 0 else np.zeros(n_groups))
            offset += n_groups
        self._sorted_rows, self._boundaries, self._row_groups = sorted_rows, boundaries, row_groups
        self._stats = {k: np.concatenate(v) for k, v in stats.items()}
        self._weights = self._stats["rows"].astype(np.int64)

    # -- the interface -------------------------------------------------------------------------------
    @property
    def grid(self) -> np.ndarray:
        """Candidate sizes in dimensions: ``d_min``, then every whole number of blocks above it up to ``d_max``."""
        return self._grid

    @property
    def weights(self) -> np.ndarray:
        """Rows of each group: one dimension of a group's size costs one value per row."""
        return self._weights

    def to_allocation(self, decisions: np.ndarray) -> Allocation:
        values = np.asarray(decisions, dtype=np.int64)
        return Allocation({t.name: values[self._row_groups[t.name]] for t in self.tables})

    def from_allocation(self, allocation: Allocation) -> np.ndarray:
        """Each group's mean row size, snapped to the nearest grid value (exact for this space's allocations)."""
        means = []
        for table in self.tables:
            dims = allocation.row_dims[table.name][self._sorted_rows[table.name]]
            bounds = self._boundaries[table.name]
            means.append(np.add.reduceat(dims, bounds[:-1]) / np.diff(bounds))
        return snap_to_grid(np.concatenate(means), self._grid)

    def context(self) -> dict[str, np.ndarray]:
        """Per group: where it is, how big, how frequent.

        Keys: ``table`` (table index), ``group`` (0 = most frequent group of its table),
        ``log_frequency`` (``log1p`` of the group's mean row frequency), ``group_rows``,
        ``frequency_min`` / ``frequency_max`` (the range of its rows' frequencies) and
        ``mass_share`` (its share of the table's interactions; 0 for a table without any).
        """
        s = self._stats
        return {
            "table": s["table"].copy(),
            "group": s["group"].copy(),
            "log_frequency": np.log1p(s["sum"] / s["rows"]),
            "group_rows": s["rows"].copy(),
            "frequency_min": s["min"].copy(),
            "frequency_max": s["max"].copy(),
            "mass_share": s["share"].copy(),
        }

    def frequency_order(self) -> FrequencyOrder:
        """Groups in their table's order; neighbours tie only when all their rows share one frequency."""
        if getattr(self, "_frequency_order", None) is None:
            s = self._stats
            new_level = np.ones(len(s["table"]), dtype=bool)
            new_level[1:] = (s["table"][1:] != s["table"][:-1]) | (s["max"][:-1] != s["min"][1:])
            level = np.cumsum(new_level)
            self._frequency_order = FrequencyOrder.from_frequencies(s["table"], -level)
        return self._frequency_order

    # -- the layout, for plots and reports --------------------------------------------------------
    def boundaries(self) -> dict[str, np.ndarray]:
        """Per table, the ``G' + 1`` positions in :meth:`sorted_rows` where its groups start (and the row count)."""
        return dict(self._boundaries)

    def sorted_rows(self) -> dict[str, np.ndarray]:
        """Per table, its row ids from the most to the least frequent (ties by row id)."""
        return dict(self._sorted_rows)

    def row_groups(self) -> dict[str, np.ndarray]:
        """Per table, the decision index (group) of every row."""
        return dict(self._row_groups)

    def blocks_kept(self, decisions: np.ndarray) -> np.ndarray:
        """How many leading blocks each group keeps under ``decisions`` (sizes in dimensions)."""
        return np.asarray(decisions, dtype=np.int64) // self.block_width

    def describe(self) -> str:
        return f"{self.name} G={self.groups}×B={self.blocks} by {self.grouping} ({self.n_decisions:,} decisions)"
