"""The search-space interface every controller talks to.

A search space turns a small vector of *decisions* into an :class:`Allocation`
and back.  Each decision ``i`` takes a value from a shared, sorted ``grid`` of
candidate sizes and costs ``weights[i] * value`` embedding values, so a
controller can price any candidate exactly without knowing the space.  The
:meth:`SearchSpace.project` method is the single place where the hard budget is
enforced; :meth:`SearchSpace.sample` only returns projected decisions.

Asked with ``monotone=True``, :meth:`SearchSpace.project` also keeps the
frequency order of :meth:`SearchSpace.frequency_order`: within a table a more
frequent decision never ends with fewer dimensions than a rarer one.

**Precision.**  A space told to search precisions (:meth:`SearchSpace.with_precisions`)
gives every decision a precision beside its size: a decision *vector* is then the
sizes followed by one precision index per decision (into :attr:`SearchSpace.precisions`),
``2 × n_decisions`` long (:meth:`SearchSpace.split`, :meth:`SearchSpace.join`).  A space
maps sizes to rows as before; the rows of a decision share its precision, which the
base class adds (:meth:`SearchSpace.allocation`), so no space needs code for it.  Under
a budget in bits a decision's candidate ``(v, p)`` costs ``weights[i] * (a_p * v + b_p)``
(:meth:`~nas.core.budget.Budget.row_cost`): still linear in the sizes once the
precisions are fixed, which is how the projection keeps enforcing the budget in one place.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np

from nas.core.allocation import Allocation
from nas.core.budget import Budget
from nas.core.errors import BudgetError, ConfigError
from nas.core.precision import parse_precisions
from nas.core.projection import DEFAULT_FILL, FrequencyOrder, project_linear
from nas.core.tables import TableSpec

__all__ = ["SearchSpace"]


class SearchSpace(ABC):
    """Decision variables, their candidate values and costs, context, sampling and projection.

    Subclasses define how decisions map to row sizes (:meth:`to_allocation`), the
    reverse (:meth:`from_allocation`), the per-decision ``weights`` and the
    ``context`` that conditioning controllers read.

    Args:
        tables: the embedding tables.
        frequencies: training frequency of every row, by table (int arrays).
        d_min: fewest dimensions a row may keep.
        d_max: most dimensions a row may keep.
    """

    #: Registry name of the space, e.g. ``"per-feature"``.
    name: ClassVar[str] = ""
    #: Precisions searched beside the sizes, widest first (:meth:`with_precisions`); empty: sizes only.
    precisions: tuple[str, ...] = ()

    def __init__(self, tables: Sequence[TableSpec], frequencies: Mapping[str, np.ndarray], d_min: int, d_max: int) -> None:
        if not tables:
            raise ConfigError("a search space needs at least one table")
        if not 0 <= d_min <= d_max or d_max < 1:
            raise ConfigError(f"need 0 <= d_min <= d_max and d_max >= 1, got d_min={d_min}, d_max={d_max}")
        self.tables = tuple(tables)
        self.d_min = int(d_min)
        self.d_max = int(d_max)
        self.frequencies: dict[str, np.ndarray] = {}
        for table in self.tables:
            freq = np.asarray(frequencies.get(table.name, np.zeros(table.rows)), dtype=np.int64)
            if freq.shape != (table.rows,):
                raise ConfigError(f"table {table.name!r} has {table.rows} rows but {freq.shape} frequencies")
            if freq.size and int(freq.min()) < 0:
                raise ConfigError(f"table {table.name!r} has a negative frequency at row {int(np.argmin(freq))}")
            self.frequencies[table.name] = freq

    # -- what each space defines ---------------------------------------------------------------------
    @property
    @abstractmethod
    def grid(self) -> np.ndarray:
        """Sorted candidate values shared by every decision (int64)."""

    @property
    @abstractmethod
    def weights(self) -> np.ndarray:
        """Embedding values that one unit of each decision costs (int64, one per decision)."""

    @abstractmethod
    def to_allocation(self, decisions: np.ndarray) -> Allocation:
        """The allocation that ``decisions`` (grid values) stand for."""

    @abstractmethod
    def from_allocation(self, allocation: Allocation) -> np.ndarray:
        """Decisions that best describe ``allocation`` (exact when it came from this space)."""

    @abstractmethod
    def context(self) -> dict[str, np.ndarray]:
        """Per-decision features for controllers that condition on them.

        Always holds ``"table"`` (index into :attr:`tables`) and ``"log_frequency"``
        (``log1p`` of the decision's training frequency), each one value per decision;
        spaces may add more.
        """

    def frequency_order(self) -> FrequencyOrder:
        """Which decisions must keep at least the size of which others under ``monotone=True``.

        The default ranks decisions within their table by ``context()["log_frequency"]``;
        spaces with exact integer frequencies override it so near-equal counts never merge.
        Computed once and cached: the order only depends on the training frequencies.
        """
        cached: FrequencyOrder | None = getattr(self, "_frequency_order", None)
        if cached is None:
            context = self.context()
            cached = FrequencyOrder.from_frequencies(context["table"], context["log_frequency"])
            self._frequency_order = cached
        return cached

    def row_decisions(self) -> dict[str, np.ndarray]:
        """The decision whose value sets each row's size, by table (cached).

        One-shot controllers relax sizes row by row and need this map.  The default reads
        it off :meth:`to_allocation` (one call per bit of the decision index), so a space
        whose rows each take one decision's value needs no code for it; a space where a
        row's size mixes several decisions has no such map, and this raises.

        Raises:
            ConfigError: when a row's size is not the value of exactly one decision.
        """
        cached: dict[str, np.ndarray] | None = getattr(self, "_row_decisions", None)
        if cached is not None:
            return cached
        low, high = int(self.grid[0]), int(self.grid[-1])
        if low == high:  # one candidate size cannot tell decisions apart: probe with two sizes off the grid
            low, high = 0, 1
        index = np.arange(self.n_decisions)
        rows = {name: np.zeros(count, dtype=np.int64) for name, count in self.rows().items()}
        if self.n_decisions > 1:
            for bit in range(max(int(self.n_decisions - 1).bit_length(), 0)):
                values = np.where((index >> bit) & 1, high, low)
                for name, dims in self.to_allocation(values).row_dims.items():
                    rows[name] |= (dims == high).astype(np.int64) << bit
            check = self.grid[np.random.default_rng(0).integers(0, len(self.grid), self.n_decisions)]
            allocation = self.to_allocation(check)
            for name, decision in rows.items():
                if decision.size and (decision.max() >= self.n_decisions
                                      or not np.array_equal(allocation.row_dims[name], check[decision])):
                    raise ConfigError(f"the {self.name} space sets row sizes from several decisions; "
                                      "it has no row-to-decision map (override row_decisions)")
        for array in rows.values():
            array.setflags(write=False)
        self._row_decisions = rows
        return rows

    # -- shared behaviour ----------------------------------------------------------------------------
    @property
    def n_decisions(self) -> int:
        """Number of decision variables."""
        return len(self.weights)

    def rows(self) -> dict[str, int]:
        """Rows of every table."""
        return {t.name: t.rows for t in self.tables}

    # -- precision -----------------------------------------------------------------------------------
    def with_precisions(self, precisions: Sequence[str]) -> SearchSpace:
        """Search a precision for every decision beside its size (``()``: sizes only); returns the space.

        Raises:
            ConfigError: an unknown precision, or a space whose rows take their size from
                several decisions (a row's precision would then be undefined).
        """
        chosen = parse_precisions(precisions) if len(precisions) else ()
        if chosen:
            self.row_decisions()  # raises for a space without a row-to-decision map
        self.precisions = chosen
        return self

    @property
    def vector_length(self) -> int:
        """Length of a decision vector: the sizes, and with precisions one precision index per decision."""
        return self.n_decisions * (2 if self.precisions else 1)

    def split(self, vector: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """A decision vector's sizes and precision indices (``None`` without precisions); not copied.

        Also splits a batch of vectors, ``(..., vector_length)``, along its last axis.
        """
        vector = np.asarray(vector)
        if vector.ndim == 0 or vector.shape[-1] != self.vector_length:
            raise ValueError(f"a decision vector of the {self.name} space has {self.vector_length} values, got shape {vector.shape}")
        n = self.n_decisions
        return (vector[..., :n], vector[..., n:]) if self.precisions else (vector, None)

    def join(self, sizes: np.ndarray, precision: np.ndarray | None) -> np.ndarray:
        """The decision vector (or ``(..., n_decisions)`` batch) of ``sizes`` and precision indices.

        ``precision`` is ignored without precisions.  Real-valued sizes (a controller's raw
        proposal) stay real-valued.
        """
        sizes = np.asarray(sizes)
        if not self.precisions:
            return sizes
        return np.concatenate([sizes, np.asarray(precision)], axis=-1)

    def allocation(self, vector: np.ndarray) -> Allocation:
        """The allocation a decision vector stands for: :meth:`to_allocation`, with each row's precision."""
        sizes, precision = self.split(vector)
        plain = self.to_allocation(sizes)
        if precision is None:
            return plain
        rows = self.row_decisions()
        index = np.asarray(precision, dtype=np.int64)
        return Allocation(plain.row_dims, row_precisions={name: index[rows[name]] for name in plain.row_dims},
                          precisions=self.precisions)

    def decisions(self, allocation: Allocation) -> np.ndarray:
        """The decision vector that best describes ``allocation`` (:meth:`from_allocation`, and precisions).

        A decision takes the precision of its first row (all its rows share it when the
        allocation came from this space); a row at a precision the space does not search
        raises ``ValueError``.
        """
        sizes = self.from_allocation(allocation)
        if not self.precisions:
            return sizes
        if allocation.row_precisions is None:
            raise ValueError(f"the space searches precisions {', '.join(self.precisions)}; the allocation has none")
        precision = np.zeros(self.n_decisions, dtype=np.int64)
        for name, decision in self.row_decisions().items():
            names = np.asarray(allocation.precisions)[allocation.row_precisions[name]]
            unknown = sorted(set(names.tolist()) - set(self.precisions))
            if unknown:
                raise ValueError(f"table {name!r} has rows at {', '.join(unknown)}, which the space does not search")
            first = np.unique(decision, return_index=True)
            precision[first[0]] = [self.precisions.index(str(p)) for p in names[first[1]]]
        return self.join(sizes, precision)

    def cost_in(self, vector: np.ndarray, budget: Budget) -> int:
        """Exact cost of a decision vector in the unit ``budget`` counts (values, or bits)."""
        sizes, precision = self.split(vector)
        sizes = np.asarray(sizes, dtype=np.int64)
        if precision is None:
            return int(self.weights @ sizes)
        per_value, per_row = budget.prices()
        index = np.asarray(precision, dtype=np.int64)
        return int(self.weights @ (per_value[index] * sizes + per_row[index]))

    def candidate_prices(self, budget: Budget) -> np.ndarray:
        """Cost of every (size, precision) candidate per unit of a decision's weight, in the budget's unit.

        Shape ``(len(grid), len(precisions))`` (one precision column without precisions).
        """
        per_value, per_row = budget.prices()
        return self.grid[:, None] * per_value[None, :] + per_row[None, :]

    def candidate_costs_in(self, index: int | np.ndarray, budget: Budget) -> np.ndarray:
        """Cost of every (size, precision) candidate of decision(s) ``index`` in the budget's unit.

        Shape ``(..., len(grid), len(precisions))`` (one precision column without precisions).
        """
        return np.asarray(self.weights[index], dtype=np.int64)[..., None, None] * self.candidate_prices(budget)

    def cost(self, decisions: np.ndarray) -> int:
        """Exact number of embedding values that ``decisions`` keep."""
        return int(self.weights @ np.asarray(decisions, dtype=np.int64))

    def candidate_costs(self, index: int | np.ndarray) -> np.ndarray:
        """Cost of every grid value for decision(s) ``index``: shape ``(..., len(grid))``."""
        return np.multiply.outer(self.weights[index], self.grid)

    def minimum_cost(self) -> int:
        """Cost with every decision at its smallest candidate."""
        return int(self.weights.sum()) * int(self.grid[0])

    def maximum_cost(self) -> int:
        """Cost with every decision at its largest candidate: a budget this large keeps everything."""
        return int(self.weights.sum()) * int(self.grid[-1])

    def minimum_cost_in(self, budget: Budget) -> int:
        """Cost in the budget's unit with every decision at its smallest size and cheapest precision there."""
        return int(self.weights.sum()) * int(self.candidate_prices(budget)[0].min())

    def check_budget(self, budget: Budget) -> None:
        """Raise unless ``budget`` describes this space's tables and bounds and can be met in it."""
        if tuple(budget.precisions) != self.precisions:
            raise ConfigError(
                f"the budget's precisions ({', '.join(budget.precisions) or 'none'}) are not the space's "
                f"({', '.join(self.precisions) or 'none'}); build both with the same precisions"
            )
        if dict(budget.rows) != self.rows():
            raise ConfigError(f"the budget's tables {dict(budget.rows)} are not the space's tables {self.rows()}")
        if (budget.d_min, budget.d_max) != (self.d_min, self.d_max):
            raise ConfigError(
                f"the budget's bounds [d_min={budget.d_min}, d_max={budget.d_max}] differ from the space's "
                f"[{self.d_min}, {self.d_max}]; build both from the same d_min and d_max"
            )
        if self.minimum_cost_in(budget) > budget.max_cost:
            cheapest = " and its cheapest precision" if budget.unit == "bits" else ""
            raise BudgetError(
                f"{budget.describe()} allows {budget.max_cost:,} {budget.unit} but the {self.name} space needs at least "
                f"{self.minimum_cost_in(budget):,} (every decision at its smallest size {int(self.grid[0])}{cheapest})"
            )

    def project(
        self, decisions: np.ndarray, budget: Budget, *, fill: float = DEFAULT_FILL, monotone: bool = False
    ) -> np.ndarray:
        """The feasible decisions nearest in shape to ``decisions``, spending the budget.

        Any non-negative values are accepted (off the grid, beyond ``d_max``, all zero).
        Idempotent: projecting a projected vector returns it unchanged.  The output meets
        the fill rule of :mod:`nas.core.projection`: all top values when they fit, else at
        least ``fill`` of the budget unless no single decision can be raised one grid step
        within what is left.

        Args:
            decisions: one desired value per decision.
            budget: the hard budget (same tables and bounds as the space).
            fill: share of the budget an on-grid input must spend to be returned unchanged.
            monotone: keep the frequency order (:meth:`frequency_order`): within a table a
                more frequent decision never gets fewer dimensions than a rarer one.

        Raises:
            BudgetError: when the budget is below the space's minimum (the message names it).
            ValueError: for NaN, infinite, negative or wrongly shaped decisions (naming the index).
        """
        self.check_budget(budget)
        order = self.frequency_order() if monotone else None
        if not self.precisions:
            return project_linear(decisions, self.weights, self.grid, budget.max_values, fill=fill, order=order)
        sizes, precision = self.split(np.asarray(decisions, dtype=np.float64))
        index = np.asarray(precision, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(index) | (index < 0) | (index >= len(self.precisions)) | (index != np.floor(index))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"the precision of decision {i} is {index[i]:g}; it must be an index into the "
                             f"{len(self.precisions)} precisions ({', '.join(self.precisions)})")
        index = index.astype(np.int64)
        if budget.unit == "values":
            return self.join(project_linear(sizes, self.weights, self.grid, budget.max_values, fill=fill, order=order), index)
        index = self._fit_precisions(index, budget)
        per_value, per_row = budget.prices()
        capacity = budget.max_bits - int(self.weights @ per_row[index])
        projected = project_linear(sizes, self.weights * per_value[index], self.grid, capacity, fill=fill, order=order)
        return self.join(projected, index)

    def _fit_precisions(self, index: np.ndarray, budget: Budget) -> np.ndarray:
        """Precisions under which every decision at its smallest size fits the budget.

        Where the proposal's do not fit, the rarest decisions move to the cheapest
        precision at the smallest size, as few as it takes, so the frequent rows keep
        what the controller chose for them.
        """
        at_smallest = self.candidate_prices(budget)[0]
        excess = int(self.weights @ at_smallest[index]) - budget.max_bits
        if excess <= 0:
            return index
        cheapest = int(np.argmin(at_smallest))
        saving = self.weights * (at_smallest[index] - at_smallest[cheapest])
        rarest_first = np.argsort(self.context()["log_frequency"], kind="stable")
        enough = int(np.searchsorted(np.cumsum(saving[rarest_first]), excess)) + 1
        fitted = index.copy()
        fitted[rarest_first[:enough]] = cheapest
        return fitted

    def sample(self, rng: np.random.Generator, budget: Budget, *, monotone: bool = False) -> np.ndarray:
        """A random feasible decision vector: uniform grid values (and precisions), projected to the budget.

        The same generator state gives the same vector.
        """
        raw = self.grid[rng.integers(0, len(self.grid), size=self.n_decisions)]
        if self.precisions:
            raw = self.join(raw, rng.integers(0, len(self.precisions), size=self.n_decisions))
        return self.project(raw, budget, monotone=monotone)

    def describe(self) -> str:
        """One line for summaries: the space and its number of decisions."""
        return f"{self.name} ({self.n_decisions:,} decisions)"
