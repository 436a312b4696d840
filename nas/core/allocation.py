"""What gets deployed: how many leading dimensions each row of each table keeps."""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nas.core._atomic import atomic_write
from nas.core.budget import Budget
from nas.core.errors import ArtifactError, BudgetError
from nas.core.precision import PRECISIONS

__all__ = ["Allocation"]


@dataclass(frozen=True, eq=False)
class Allocation:
    """Per table, the number of leading embedding dimensions each row keeps.

    A row ``r`` of table ``t`` uses ``embedding[t][r, :row_dims[t][r]]`` and zeros after
    it, so no mask matrix is ever needed.  Methods that keep arbitrary elements rather
    than a prefix add ``element_masks``: a boolean ``(rows, d_max)`` array per table whose
    kept elements all lie inside the prefix; the cost then counts the kept elements.

    When precision is searched, every row also has a precision: ``row_precisions``
    holds, per table, each row's index into ``precisions`` (names of
    :data:`nas.core.precision.PRECISIONS`, widest first).

    Attributes:
        row_dims: table name -> int64 array of row sizes.
        element_masks: optional table name -> bool array ``(rows, d_max)``.
        row_precisions: optional table name -> uint8 array of precision indices.
        precisions: the precision names ``row_precisions`` indexes (empty without them).
    """

    row_dims: Mapping[str, np.ndarray]
    element_masks: Mapping[str, np.ndarray] | None = None
    row_precisions: Mapping[str, np.ndarray] | None = None
    precisions: tuple[str, ...] = ()
    _cost: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        dims = {}
        for name, values in self.row_dims.items():
            array = np.asarray(values)
            if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
                raise ValueError(f"row_dims of table {name!r} must be a 1-D integer array, got {array.dtype} {array.shape}")
            array = array.astype(np.int64, copy=True)
            array.setflags(write=False)
            dims[str(name)] = array
        object.__setattr__(self, "row_dims", dims)
        if self.element_masks is not None:
            masks = {}
            for name, mask in self.element_masks.items():
                mask = np.asarray(mask, dtype=bool).copy()
                if name not in dims or mask.ndim != 2 or mask.shape[0] != len(dims[name]):
                    raise ValueError(f"element mask of table {name!r} must be (rows, d_max) for a table in row_dims")
                width = np.arange(mask.shape[1])[None, :]
                if np.any(mask & (width >= dims[name][:, None])):
                    raise ValueError(f"element mask of table {name!r} keeps elements beyond the row's row_dims")
                mask.setflags(write=False)
                masks[str(name)] = mask
            object.__setattr__(self, "element_masks", masks)
            cost = sum(int(m.sum()) for m in masks.values()) + sum(
                int(d.sum()) for n, d in dims.items() if n not in masks
            )
        else:
            cost = sum(int(d.sum()) for d in dims.values())
        object.__setattr__(self, "_cost", cost)
        self._check_precisions(dims)

    def _check_precisions(self, dims: Mapping[str, np.ndarray]) -> None:
        if self.row_precisions is None:
            if self.precisions:
                raise ValueError("precisions are named but no row_precisions say which row has which")
            return
        if not self.precisions:
            raise ValueError("row_precisions need the precision names they index (precisions=...)")
        if self.element_masks is not None:
            raise ValueError("element masks keep arbitrary values; they are not searched with precision")
        object.__setattr__(self, "precisions", tuple(str(name) for name in self.precisions))
        unknown = [name for name in self.precisions if name not in PRECISIONS]
        if unknown:
            raise ValueError(f"unknown precisions {unknown}; choose from {', '.join(PRECISIONS)}")
        if len(set(self.precisions)) != len(self.precisions):
            raise ValueError(f"precisions {self.precisions} name one precision twice")
        chosen = {}
        for name, index in self.row_precisions.items():
            index = np.asarray(index)
            if name not in dims or index.shape != dims[name].shape or not np.issubdtype(index.dtype, np.integer):
                raise ValueError(f"row_precisions of table {name!r} must be an integer array of one index per row")
            if index.size and (int(index.min()) < 0 or int(index.max()) >= len(self.precisions)):
                raise ValueError(f"row_precisions of table {name!r} must index the {len(self.precisions)} precisions")
            index = index.astype(np.uint8, copy=True)
            index.setflags(write=False)
            chosen[str(name)] = index
        if set(chosen) != set(dims):
            raise ValueError(f"row_precisions must cover every table, got {sorted(chosen)} for {sorted(dims)}")
        object.__setattr__(self, "row_precisions", {name: chosen[name] for name in dims})

    @property
    def tables(self) -> tuple[str, ...]:
        """Table names, in order."""
        return tuple(self.row_dims)

    @property
    def cost(self) -> int:
        """Embedding values kept over all tables (exact; computed once)."""
        return self._cost

    def bits(self, scales: str = "row") -> int:
        """Bits the rows' values and own scales take at their precisions (exact; see :mod:`nas.core.precision`).

        With ``scales="shared"`` no row has a scale of its own (the shared ones are fixed bytes).

        Raises:
            ValueError: for an allocation without precisions.
        """
        if self.row_precisions is None:
            raise ValueError("an allocation without precisions is counted in values, not bits")
        total = 0
        for name, dims in self.row_dims.items():
            index = self.row_precisions[name]
            for k, precision in enumerate(self.precisions):
                chosen = index == k
                total += int(PRECISIONS[precision].row_bits(dims[chosen], scales).sum())
        return total

    def cost_in(self, budget: Budget) -> int:
        """The cost in the unit ``budget`` counts (:attr:`Budget.unit`): values, or bits."""
        if budget.unit == "values":
            return self.cost
        if self.row_precisions is None:
            raise BudgetError(f"{budget.describe()} counts the bits of rows at precisions {', '.join(budget.precisions)}, "
                              "and this allocation has none")
        stray = sorted(set(self.precisions) - set(budget.precisions))
        if stray:
            raise BudgetError(f"the allocation stores rows at {', '.join(stray)}, not among the budget's "
                              f"precisions {', '.join(budget.precisions)}")
        return self.bits(budget.scales)

    def rows(self) -> dict[str, int]:
        """Row count of every table."""
        return {name: len(d) for name, d in self.row_dims.items()}

    def validate(self, budget: Budget) -> None:
        """Raise :class:`BudgetError` unless every row is in ``[d_min, d_max]`` and the cost meets ``budget``.

        Args:
            budget: the hard budget, whose tables must be exactly this allocation's tables.
        """
        if self.rows() != dict(budget.rows):
            raise BudgetError(f"allocation tables {self.rows()} do not match the budget's tables {dict(budget.rows)}")
        for name, dims in self.row_dims.items():
            low, high = int(dims.min()), int(dims.max())
            if low < budget.d_min or high > budget.d_max:
                raise BudgetError(
                    f"table {name!r} has row sizes in [{low}, {high}], outside [d_min={budget.d_min}, d_max={budget.d_max}]"
                )
        budget.check_cost(self.cost_in(budget))

    def fingerprint(self) -> str:
        """Short sha256 of the sizes (and masks), to key caches and events."""
        digest = hashlib.sha256()
        for name, dims in self.row_dims.items():
            digest.update(name.encode() + b"\0")
            digest.update(dims.tobytes())
            if self.element_masks and name in self.element_masks:
                digest.update(np.packbits(self.element_masks[name]).tobytes())
            if self.row_precisions is not None:  # without precisions the digest is what it always was
                digest.update(",".join(self.precisions).encode() + b"\0" + self.row_precisions[name].tobytes())
        return digest.hexdigest()[:16]

    def kept_per_row(self, table: str) -> np.ndarray:
        """Values each row of ``table`` keeps: its size, or its mask's count under element masks."""
        masks = self.element_masks or {}
        return masks[table].sum(axis=1).astype(np.int64) if table in masks else self.row_dims[table]

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per table: mean, min and max values kept per row, their total, and whether elements are masked.

        With precisions, also the rows at each precision (``"rows_at"``: name -> count).
        """
        out = {}
        for name in self.row_dims:
            kept = self.kept_per_row(name)
            out[name] = {"mean": float(kept.mean()), "min": int(kept.min()), "max": int(kept.max()),
                         "values": int(kept.sum()), "masked": bool(self.element_masks and name in self.element_masks)}
            if self.row_precisions is not None:
                counts = np.bincount(self.row_precisions[name], minlength=len(self.precisions))
                out[name]["rows_at"] = {p: int(c) for p, c in zip(self.precisions, counts)}
        return out

    # -- files: npz with allow_pickle=False, never pickle ----------------------------------------
    def save(self, path: str | Path) -> None:
        """Write to ``path`` (an ``.npz``), atomically."""
        with atomic_write(path, "wb") as handle:
            handle.write(self.to_bytes())

    def to_bytes(self) -> bytes:
        """The ``.npz`` file's bytes: row sizes, and bit-packed element masks with their width.

        Sizes and precision indices are stored in the smallest unsigned dtype that holds
        them (a byte a row for ``d_max`` < 256), and read back as int64.
        """
        arrays = {f"row_dims/{name}": _compact(dims) for name, dims in self.row_dims.items()}
        for name, mask in (self.element_masks or {}).items():
            arrays[f"element_mask/{name}"] = np.packbits(mask, axis=1)
            arrays[f"element_mask_width/{name}"] = np.asarray([mask.shape[1]], dtype=np.int64)
        if self.row_precisions is not None:
            arrays["precisions"] = np.asarray(self.precisions, dtype="<U8")
            arrays.update({f"row_precision/{name}": _compact(index) for name, index in self.row_precisions.items()})
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def load(cls, path: str | Path) -> Allocation:
        """Read an allocation written by :meth:`save`; refuses anything that would need unpickling."""
        try:
            data = Path(path).read_bytes()
        except OSError as error:
            raise ArtifactError(f"{path}: cannot read the allocation ({error})") from None
        return cls.from_bytes(data, source=str(path))

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "allocation") -> Allocation:
        """Inverse of :meth:`to_bytes` (``source`` names the file in errors); never unpickles."""
        path = source
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                files = {key: npz[key] for key in npz.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            raise ArtifactError(f"{path}: cannot read the allocation ({error})") from None
        dims = {key.split("/", 1)[1]: value for key, value in files.items() if key.startswith("row_dims/")}
        if not dims:
            raise ArtifactError(f"{path}: no row_dims in the allocation file")
        try:
            masks = {}
            for key, value in files.items():
                if key.startswith("element_mask/"):
                    name = key.split("/", 1)[1]
                    width = int(files[f"element_mask_width/{name}"][0])
                    masks[name] = np.unpackbits(value, axis=1)[:, :width].astype(bool)
            precisions = {key.split("/", 1)[1]: value for key, value in files.items() if key.startswith("row_precision/")}
            names = tuple(str(n) for n in files["precisions"]) if "precisions" in files else ()
            return cls(dims, masks or None, precisions or None, names)
        except (KeyError, ValueError, IndexError) as error:
            raise ArtifactError(f"{path}: inconsistent allocation file ({error})") from None


def _compact(values: np.ndarray) -> np.ndarray:
    """``values`` (non-negative integers) in the smallest unsigned dtype that holds them."""
    if values.size and int(values.min()) < 0:
        return values
    top = int(values.max()) if values.size else 0
    for dtype in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dtype).max:
            return values.astype(dtype)
    return values
