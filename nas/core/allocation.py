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

__all__ = ["Allocation"]


@dataclass(frozen=True, eq=False)
class Allocation:
    """Per table, the number of leading embedding dimensions each row keeps.

    A row ``r`` of table ``t`` uses ``embedding[t][r, :row_dims[t][r]]`` and zeros after
    it, so no mask matrix is ever needed.  Methods that keep arbitrary elements rather
    than a prefix add ``element_masks``: a boolean ``(rows, d_max)`` array per table whose
    kept elements all lie inside the prefix; the cost then counts the kept elements.

    Attributes:
        row_dims: table name -> int64 array of row sizes.
        element_masks: optional table name -> bool array ``(rows, d_max)``.
    """

    row_dims: Mapping[str, np.ndarray]
    element_masks: Mapping[str, np.ndarray] | None = None
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

    @property
    def tables(self) -> tuple[str, ...]:
        """Table names, in order."""
        return tuple(self.row_dims)

    @property
    def cost(self) -> int:
        """Embedding values kept over all tables (exact; computed once)."""
        return self._cost

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
        budget.check_cost(self.cost)

    def fingerprint(self) -> str:
        """Short sha256 of the sizes (and masks), to key caches and events."""
        digest = hashlib.sha256()
        for name, dims in self.row_dims.items():
            digest.update(name.encode() + b"\0")
            digest.update(dims.tobytes())
            if self.element_masks and name in self.element_masks:
                digest.update(np.packbits(self.element_masks[name]).tobytes())
        return digest.hexdigest()[:16]

    def kept_per_row(self, table: str) -> np.ndarray:
        """Values each row of ``table`` keeps: its size, or its mask's count under element masks."""
        masks = self.element_masks or {}
        return masks[table].sum(axis=1).astype(np.int64) if table in masks else self.row_dims[table]

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per table: mean, min and max values kept per row, their total, and whether elements are masked."""
        out = {}
        for name in self.row_dims:
            kept = self.kept_per_row(name)
            out[name] = {"mean": float(kept.mean()), "min": int(kept.min()), "max": int(kept.max()),
                         "values": int(kept.sum()), "masked": bool(self.element_masks and name in self.element_masks)}
        return out

    # -- files: npz with allow_pickle=False, never pickle ----------------------------------------
    def save(self, path: str | Path) -> None:
        """Write to ``path`` (an ``.npz``), atomically."""
        with atomic_write(path, "wb") as handle:
            handle.write(self.to_bytes())

    def to_bytes(self) -> bytes:
        """The ``.npz`` file's bytes: row sizes, and bit-packed element masks with their width."""
        arrays = {f"row_dims/{name}": dims for name, dims in self.row_dims.items()}
        for name, mask in (self.element_masks or {}).items():
            arrays[f"element_mask/{name}"] = np.packbits(mask, axis=1)
            arrays[f"element_mask_width/{name}"] = np.asarray([mask.shape[1]], dtype=np.int64)
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
            return cls(dims, masks or None)
        except (KeyError, ValueError, IndexError) as error:
            raise ArtifactError(f"{path}: inconsistent allocation file ({error})") from None
