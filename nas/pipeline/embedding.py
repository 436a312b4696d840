"""The maskable embedding: full-size tables that serve any allocation at lookup.

It holds the full ``rows × d_max`` weights (so one set of weights serves every
allocation, as a supernet needs) and keeps only the leading ``row_dims[r]``
values of row ``r`` when it is looked up.  A prefix needs no mask matrix: the
column index is compared with the row's size, for the looked-up rows only.
Masked positions are exact ``+0.0`` (``torch.where``, not a multiplication that
would give ``-0.0`` for negative weights), so the exported packed table serves
bit-identical vectors.

An allocation with a precision per row (:mod:`nas.core.precision`) is served as its
export stores it: every looked-up row is masked, then quantised to its precision
(:func:`nas.core.quantise.fake_quantise`, straight-through gradients), so a model
trained under it learns the values it will ship with.

Several allocations can also be served *at once* (:meth:`MaskableEmbedding.set_variants`):
a lookup then returns one masked copy of the vectors per allocation, stacked in a
leading dimension.  The rows are gathered once and only the cheap comparison is
repeated, which is what lets a supernet train the largest, the smallest and a few
random allocations in one step, and an evaluator score many allocations in one pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from nas.core.allocation import Allocation
from nas.core.precision import check_scales
from nas.core.quantise import RowPrecision, fake_quantise, shared_peaks
from recsys.embedding import PlainEmbedding

__all__ = ["MaskableEmbedding", "Relaxation", "SoftMask", "stack_precisions", "stack_row_dims"]

#: ``scale(table, ids)``: a multiplier per looked-up element, ``(*ids.shape, dim)``; ``ids`` is ``None`` for the whole table.
SoftMask = Callable[[str, "torch.Tensor | None"], torch.Tensor]
#: ``relax(table, ids, vectors)``: the vectors served in place of the looked-up ones (same shape).
Relaxation = Callable[[str, "torch.Tensor | None", torch.Tensor], torch.Tensor]


def stack_row_dims(allocations: Sequence[Allocation], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The ``row_dims`` of prefix allocations stacked per table: ``{table: (len(allocations), rows)}``.

    Stored as int16 (sizes never exceed 32,767), a quarter of the memory of int64.
    """
    if not allocations:
        raise ValueError("stack at least one allocation")
    if any(a.element_masks for a in allocations):
        raise ValueError("only prefix allocations (row_dims) can be stacked; element masks are served one at a time")
    names = list(allocations[0].row_dims)
    return {
        name: torch.from_numpy(np.stack([a.row_dims[name] for a in allocations]).astype(np.int16)).to(device)
        for name in names
    }


def stack_precisions(allocations: Sequence[Allocation], device: torch.device | str = "cpu") -> dict[str, torch.Tensor] | None:
    """The rows' precision indices of allocations stacked per table, ``{table: (A, rows)}``; ``None`` without precisions.

    Every allocation must index the same precision names (those of the first), as the
    allocations of one space do.
    """
    if not allocations or allocations[0].row_precisions is None:
        if any(a.row_precisions is not None for a in allocations):
            raise ValueError("stack allocations that all have precisions, or none")
        return None
    names = allocations[0].precisions
    if any(a.precisions != names or a.row_precisions is None for a in allocations):
        raise ValueError(f"every stacked allocation must index the precisions {names}")
    return {
        name: torch.from_numpy(np.stack([a.row_precisions[name] for a in allocations]).astype(np.int64)).to(device)
        for name in allocations[0].row_dims
    }


class MaskableEmbedding(PlainEmbedding):
    """A :class:`~recsys.embedding.PlainEmbedding` that applies an :class:`Allocation`.

    Without an allocation it behaves exactly like the plain tables (the full model).

    Args:
        rows: rows of each table.
        dim: the full width ``d_max``.
        std: standard deviation of the normal initialisation.
        seed: initialisation seed (the same seed gives the same weights as the plain tables).
        scales: where integer rows' scales live when rows are quantised (``"row"`` or
            ``"shared"``, :data:`~nas.core.precision.SCALES`): as the export will store them.
    """

    def __init__(self, rows: Mapping[str, int], dim: int, std: float = 0.1, seed: int = 0, scales: str = "row") -> None:
        super().__init__(rows, dim, std=std, seed=seed)
        self.scales = check_scales(scales)
        self.register_buffer("columns", torch.arange(self.dim), persistent=False)
        self._row_dims: dict[str, torch.Tensor] = {}
        self._masks: dict[str, torch.Tensor] = {}
        self._precision: dict[str, RowPrecision] = {}
        self._variants: dict[str, torch.Tensor] = {}
        self._variant_precision: dict[str, RowPrecision] = {}
        self._scale: SoftMask | None = None
        self._relax: Relaxation | None = None
        self._width: int | None = None
        self.allocation: Allocation | None = None

    def set_allocation(self, allocation: Allocation | None) -> None:
        """Apply ``allocation`` to every later lookup; ``None`` restores the full tables."""
        self.allocation = allocation
        self._row_dims, self._masks, self._variants, self._precision = {}, {}, {}, {}
        self._width = None
        if allocation is None:
            return
        if allocation.rows() != self.rows:
            raise ValueError(f"allocation tables {allocation.rows()} do not match the embedding's {self.rows}")
        device = self.columns.device
        for name, dims in allocation.row_dims.items():
            if int(dims.max()) > self.dim:
                raise ValueError(f"table {name!r} asks for {int(dims.max())} dimensions but the embedding has {self.dim}")
            self._row_dims[name] = torch.tensor(dims, dtype=torch.int64, device=device)
        for name, mask in (allocation.element_masks or {}).items():
            self._masks[name] = torch.tensor(mask, dtype=torch.bool, device=device)
        for name, index in (allocation.row_precisions or {}).items():
            self._precision[name] = RowPrecision(torch.tensor(index, dtype=torch.int64, device=device), allocation.precisions)

    def set_variants(self, row_dims: Mapping[str, torch.Tensor] | None) -> None:
        """Serve ``A`` prefix allocations at once (``None`` restores the full tables).

        Until the next call, :meth:`lookup` returns ``(A, *ids.shape, dim)`` and
        :meth:`table` ``(A, rows, dim)``: variant ``a`` keeps the leading
        ``row_dims[table][a, r]`` values of row ``r``.  A table missing from
        ``row_dims`` is served in full (broadcast over the variants).

        Args:
            row_dims: ``{table: (A, rows)}`` integer tensors, e.g. from :func:`stack_row_dims`.
        """
        self.set_allocation(None)
        if row_dims is None:
            return
        counts = {int(d.shape[0]) for d in row_dims.values()}
        if len(counts) != 1:
            raise ValueError(f"every table needs the same number of variants, got {sorted(counts)}")
        for name, dims in row_dims.items():
            if name not in self.rows or dims.dim() != 2 or dims.shape[1] != self.rows[name]:
                raise ValueError(f"variants of table {name!r} must have shape (A, {self.rows.get(name)}), got {tuple(dims.shape)}")
            self._variants[name] = dims.to(self.columns.device)
        self._width = None

    def set_variant_precisions(self, index: Mapping[str, torch.Tensor] | None, precisions: Sequence[str] = ()) -> None:
        """Quantise the served variants row by row: ``index[table][a, r]`` is variant ``a``'s precision of row ``r``.

        Kept until called with ``None`` (it survives :meth:`set_variants`, so a loss that
        sets the variants itself still serves them quantised).

        Args:
            index: ``{table: (A, rows)}`` indices into ``precisions``, e.g. from :func:`stack_precisions`.
            precisions: the precision names.
        """
        self._variant_precision = {} if index is None else {
            name: RowPrecision(rows.to(self.columns.device), precisions) for name, rows in index.items()
        }

    @property
    def quantises_variants(self) -> bool:
        """Whether served variants are quantised (:meth:`set_variant_precisions`)."""
        return bool(self._variant_precision)

    @property
    def served_width(self) -> int:
        """The most values any served row keeps (:func:`recsys.embedding.served_width`): columns past it are zero.

        Soft masks, relaxations and element masks may fill any column, so they are served at
        full width, as is a table that the served variants leave out.
        """
        if self._scale is not None or self._relax is not None or self._masks:
            return self.dim
        if self._width is None:
            sizes = self._variants if self._variants else self._row_dims
            covered = set(sizes) == set(self.rows)
            self._width = max(int(d.max()) if d.numel() else 0 for d in sizes.values()) if covered and sizes else self.dim
        return self._width

    def set_soft_mask(self, scale: SoftMask | None) -> None:
        """Multiply every looked-up vector by ``scale(table, ids)`` (``None`` stops it).

        ``scale`` returns a ``(*ids.shape, dim)`` tensor (``ids`` is ``None`` for a whole
        table); it carries gradients, which is how a one-shot controller relaxes the choice
        of sizes into a differentiable mixture during supernet training.  Applies on top of
        the allocation, if any.
        """
        self._scale = scale

    def _keep(self, table: str, ids: torch.Tensor | None, width: int | None = None) -> torch.Tensor | None:
        """Boolean keep-mask for the rows ``ids`` (all rows when ``None``) and the leading ``width`` columns
        (all when ``None``), or ``None`` for a full table."""
        columns = self.columns if width is None else self.columns[:width]
        if table in self._variants:
            dims = self._variants[table]
            if ids is not None:
                dims = _rows(dims, ids)
            return columns < dims.unsqueeze(-1)
        if table in self._masks:
            mask = self._masks[table]
            mask = mask if ids is None else mask[ids]
            return mask if width is None else mask[..., :width]
        dims = self._row_dims.get(table)
        if dims is None:
            return None
        if ids is not None:
            dims = dims[ids]
        return columns < dims.unsqueeze(-1)

    def set_relaxation(self, relax: Relaxation | None) -> None:
        """Serve ``relax(table, ids, vectors)`` in place of the looked-up vectors (``None`` stops it).

        The general form of :meth:`set_soft_mask`, for a relaxation that is not a
        multiplier: a one-shot controller mixing precisions serves a mixture of the
        vectors quantised at each.  Applies after the allocation and quantisation, if any.
        """
        self._relax = relax

    def _quantised(self, table: str, ids: torch.Tensor | None, vectors: torch.Tensor) -> torch.Tensor:
        if table in self._variants and table in self._variant_precision:
            precision, dims = self._variant_precision[table], self._variants[table]
        elif table in self._precision:
            precision, dims = self._precision[table], self._row_dims[table]
        else:
            return vectors
        levels, half = precision.levels, precision.half
        # A shared scale covers every row of the table with the row's size and precision,
        # looked up or not: its peak comes from the whole table (only integer rows have one).
        shared = self.scales == "shared" and bool((levels > 0).any())
        peak = shared_peaks(self._row_peaks(table, dims), levels, dims) if shared else None
        if ids is not None:
            levels, half = _rows(levels, ids), _rows(half, ids)
            peak = None if peak is None else _rows(peak, ids)
        return fake_quantise(vectors, levels, half, peak)

    def _row_peaks(self, table: str, dims: torch.Tensor) -> torch.Tensor:
        """Each row's largest ``|value|`` among its leading ``dims`` (``(rows,)`` or ``(A, rows)``), detached.

        One allocation masks the table's magnitudes past each row's size and takes the
        maximum (about 2.5 times faster than a running maximum on CPU); variants share one
        running maximum along the row, which serves every size without a masked copy each.
        """
        magnitude = self.weights[table].detach().abs()
        if dims.dim() == 1:
            return magnitude.masked_fill_(self.columns >= dims.unsqueeze(1), 0.0).amax(dim=-1)
        running = nn.functional.pad(magnitude.cummax(dim=-1).values, (1, 0))
        columns = dims.to(torch.int64).reshape(-1, running.shape[0]).T  # (rows, variants): a gather along each row
        return running.gather(1, columns).T.reshape(dims.shape)

    def lookup(self, table: str, ids: torch.Tensor) -> torch.Tensor:
        vectors = nn.functional.embedding(ids, self.weights[table])
        keep = self._keep(table, ids)
        vectors = vectors if keep is None else torch.where(keep, vectors, torch.zeros((), dtype=vectors.dtype))
        vectors = self._quantised(table, ids, vectors)
        if self._relax is not None:
            vectors = self._relax(table, ids, vectors)
        return vectors if self._scale is None else vectors * self._scale(table, ids)

    def table(self, table: str) -> torch.Tensor:
        return self._served_table(table, None)

    def table_prefix(self, table: str, width: int) -> torch.Tensor:
        """The leading ``width`` columns of :meth:`table`, ``(rows, width)``, computed on those columns alone.

        Past :attr:`served_width` every column is zero, so a backbone that reads no more
        (:func:`recsys.embedding.table_prefix`) neither masks nor backpropagates through the rest.
        """
        if width >= self.dim:
            return self.table(table)
        if self._scale is not None or self._relax is not None:
            return self.table(table)[..., :width]
        return self._served_table(table, width)

    def _served_table(self, table: str, width: int | None) -> torch.Tensor:
        weight = self.weights[table] if width is None else self.weights[table][:, :width]
        keep = self._keep(table, None, width)
        weight = weight if keep is None else torch.where(keep, weight, torch.zeros((), dtype=weight.dtype))
        weight = self._quantised(table, None, weight)
        if self._relax is not None:
            weight = self._relax(table, None, weight)
        return weight if self._scale is None else weight * self._scale(table, None)

    def masked_tables(self) -> dict[str, torch.Tensor]:
        """Every table as served under the current allocation, detached (what an export stores)."""
        with torch.no_grad():
            return {name: self.table(name).detach().clone() for name in self.rows}

    def served_tables(self, allocation: Allocation) -> dict[str, torch.Tensor]:
        """Every table as served under ``allocation``, detached; the current allocation is left as it was."""
        previous = self.allocation
        same = previous is not None and previous.fingerprint() == allocation.fingerprint()
        if not same:
            self.set_allocation(allocation)
        try:
            return self.masked_tables()
        finally:
            if not same:
                self.set_allocation(previous)


def _rows(per_row: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``per_row[..., ids]`` for per-row values ``(..., rows)``, by ``index_select`` (several times faster on CPU)."""
    return per_row.index_select(-1, ids.reshape(-1)).reshape(*per_row.shape[:-1], *ids.shape)
