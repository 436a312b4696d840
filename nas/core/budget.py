"""The hard memory budget every allocation must meet.

A budget is held as the largest number of embedding values that may be kept
over all tables (``max_values``), whatever unit the user gave it in: a sparsity,
a parameter count, or bytes of the exported artifact.  Every row keeps at least
``d_min`` and at most ``d_max`` values, so a budget below ``rows × d_min`` cannot
be met; it is refused when it is built, with the minimum in the user's unit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

from nas.core.errors import BudgetError
from nas.core.accounting import export_bytes, fixed_bytes, value_itemsize

__all__ = ["Budget"]

_KINDS = ("sparsity", "params", "bytes")


@dataclass(frozen=True)
class Budget:
    """The most embedding values that may be kept, and the bounds on each row.

    Build one with :meth:`from_sparsity`, :meth:`from_params` or :meth:`from_bytes`.

    Attributes:
        max_values: most embedding values kept over all tables (the hard limit).
        rows: rows of each table, by name; the budget is shared by all of them.
        d_min: fewest leading dimensions a row may keep.
        d_max: most leading dimensions a row may keep (the full width).
        kind: the unit the user gave: ``"sparsity"``, ``"params"`` or ``"bytes"``.
        amount: the number the user gave in that unit: a float sparsity (0.9), or an exact
            integer count of parameters or bytes (1_000_000, 2**20, or 10**30: a count is
            never rounded through a float).
        dtype: value dtype of the export, used by byte budgets.
    """

    max_values: int
    rows: Mapping[str, int]
    d_min: int = 1
    d_max: int = 64
    kind: str = "params"
    amount: int | float = 0.0
    dtype: str = "float32"
    _frozen_rows: tuple[tuple[str, int], ...] = field(default=(), init=False, repr=False, compare=True)

    def __post_init__(self) -> None:
        rows = {str(k): int(v) for k, v in self.rows.items()}
        object.__setattr__(self, "rows", rows)
        object.__setattr__(self, "_frozen_rows", tuple(rows.items()))
        if not rows:
            raise BudgetError("a budget needs at least one table")
        if any(n < 1 for n in rows.values()):
            raise BudgetError(f"every table needs at least one row, got {rows}")
        if not 0 <= self.d_min <= self.d_max or self.d_max < 1:
            raise BudgetError(f"need 0 <= d_min <= d_max and d_max >= 1, got d_min={self.d_min}, d_max={self.d_max}")
        if self.kind not in _KINDS:
            raise BudgetError(f"unknown budget kind {self.kind!r}; choose one of {_KINDS}")
        object.__setattr__(self, "max_values", int(self.max_values))
        if self.kind != "sparsity" and isinstance(self.amount, float) and self.amount.is_integer():
            # A count is an integer; budgets written before counts were kept exact hold it as a float.
            object.__setattr__(self, "amount", int(self.amount))
        try:
            value_itemsize(self.dtype)
        except ValueError as error:
            raise BudgetError(str(error)) from None
        if self.max_values < self.min_values:
            raise BudgetError(
                f"budget {self.describe()} is infeasible: every row at d_min={self.d_min} already needs "
                f"{self.min_values:,} values; the smallest feasible budget is {self.minimum_in_unit()}"
            )

    def __hash__(self) -> int:
        return hash((self.max_values, self._frozen_rows, self.d_min, self.d_max, self.kind, self.amount, self.dtype))

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_sparsity(cls, sparsity: float, rows: Mapping[str, int], d_max: int, d_min: int = 1, dtype: str = "float32") -> Budget:
        """Keep at most ``(1 - sparsity)`` of the full ``total_rows × d_max`` values (0.9 keeps 10 %)."""
        if not (isinstance(sparsity, (int, float)) and 0.0 <= sparsity < 1.0) or math.isnan(sparsity):
            raise BudgetError(f"sparsity must be in [0, 1), got {sparsity!r}")
        full = sum(int(n) for n in rows.values()) * d_max
        # Exact decimal arithmetic: in floating point 1 - 0.9 = 0.0999..., which loses a
        # whole value once the table holds millions of them.
        max_values = math.floor(full * (1 - Fraction(repr(float(sparsity)))))
        return cls(max_values, rows, d_min, d_max, "sparsity", float(sparsity), dtype)

    @classmethod
    def from_params(cls, params: int, rows: Mapping[str, int], d_max: int, d_min: int = 1, dtype: str = "float32") -> Budget:
        """Keep at most ``params`` embedding values over all tables."""
        if isinstance(params, float) and params.is_integer():
            params = int(params)
        if not isinstance(params, int) or params < 0:
            raise BudgetError(f"a parameter budget must be a non-negative integer, got {params!r}")
        return cls(params, rows, d_min, d_max, "params", params, dtype)

    @classmethod
    def from_bytes(cls, nbytes: int, rows: Mapping[str, int], d_max: int, d_min: int = 1, dtype: str = "float32") -> Budget:
        """Keep at most what fits in an export of ``nbytes`` bytes, metadata and row sizes included."""
        if not isinstance(nbytes, int) or nbytes < 0:
            raise BudgetError(f"a byte budget must be a non-negative integer, got {nbytes!r}")
        spare = nbytes - fixed_bytes(rows, d_max)
        max_values = max(spare, -value_itemsize(dtype)) // value_itemsize(dtype)
        return cls(int(max_values), rows, d_min, d_max, "bytes", nbytes, dtype)

    @classmethod
    def parse(cls, text: str, rows: Mapping[str, int], d_max: int, d_min: int = 1, dtype: str = "float32") -> Budget:
        """Read a budget from the command line: ``0.9`` (sparsity), ``250000`` (parameters), ``2MB``/``512KiB``/``1000000B`` (bytes).

        Counts are read exactly, never through a float: ``1000000000000000000000000000000``
        is that many parameters, ``1.5MB`` is 1,500,000 bytes (a fraction of a byte is
        rounded down).
        """
        if not isinstance(text, str):
            raise BudgetError(f"a budget is text such as 0.9, 250000 or 2MB, got {type(text).__name__}")
        raw = text.strip()
        units = {"kib": 1024, "mib": 1024**2, "gib": 1024**3, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "b": 1}
        lowered = raw.lower()
        for suffix, scale in units.items():
            if lowered.endswith(suffix):
                try:
                    number = Decimal(lowered[: -len(suffix)].strip())
                except (InvalidOperation, ValueError):
                    number = Decimal("nan")
                if not number.is_finite():
                    raise BudgetError(f"cannot read the byte budget {text!r}; write e.g. 2MB or 512KiB")
                return cls.from_bytes(math.floor(Fraction(number) * scale), rows, d_max, d_min, dtype)
        try:
            count = int(raw)
        except ValueError:
            pass
        else:
            if count >= 1:
                return cls.from_params(count, rows, d_max, d_min, dtype)
        try:
            number = float(raw)
        except ValueError:
            raise BudgetError(
                f"cannot read the budget {text!r}; give a sparsity in [0, 1) like 0.9, a parameter count like 250000, or bytes like 2MB"
            ) from None
        if not math.isfinite(number):
            raise BudgetError(f"the budget must be a finite number, got {text!r}")
        if number < 1.0:
            return cls.from_sparsity(number, rows, d_max, d_min, dtype)
        if not number.is_integer() or "." in raw or "e" in raw.lower():
            raise BudgetError(
                f"cannot read the budget {text!r}: a sparsity is below 1 (like 0.9), a parameter count is a whole number (like 250000)"
            )
        return cls.from_params(int(number), rows, d_max, d_min, dtype)

    # -- derived quantities -----------------------------------------------------------------------
    @property
    def total_rows(self) -> int:
        """Rows over all tables."""
        return sum(self.rows.values())

    @property
    def min_values(self) -> int:
        """Values kept when every row keeps ``d_min``: no feasible allocation costs less."""
        return self.total_rows * self.d_min

    @property
    def full_values(self) -> int:
        """Values of the uncompressed tables, every row at ``d_max``."""
        return self.total_rows * self.d_max

    @property
    def usable_values(self) -> int:
        """The most values an allocation can actually keep: the budget, or the full tables if smaller."""
        return min(self.max_values, self.full_values)

    @property
    def max_bytes(self) -> int:
        """Bytes an export that spends the whole budget may take."""
        return export_bytes(self.usable_values, self.rows, self.d_max, self.dtype)

    def retain_ratio(self, values: int) -> float:
        """Share of the full tables' values that ``values`` keeps (1 - sparsity)."""
        return values / self.full_values

    def describe(self) -> str:
        """The budget as the user gave it, e.g. ``sparsity 0.9`` or ``1,000,000 bytes``."""
        if self.kind == "sparsity":
            return f"sparsity {self.amount!r}"
        if self.kind == "bytes":
            return f"{int(self.amount):,} bytes"
        return f"{int(self.amount):,} parameters"

    def minimum_in_unit(self) -> str:
        """The least demanding feasible budget, in the unit the user chose."""
        if self.kind == "sparsity":
            highest = 1.0 - self.min_values / self.full_values
            return f"sparsity {math.floor(highest * 1e6) / 1e6:g} ({self.min_values:,} values)"
        if self.kind == "bytes":
            return f"{export_bytes(self.min_values, self.rows, self.d_max, self.dtype):,} bytes"
        return f"{self.min_values:,} parameters"

    # -- checks and serialisation ------------------------------------------------------------------
    def check_cost(self, values: int) -> None:
        """Raise :class:`BudgetError` naming the overshoot when ``values`` exceeds the budget."""
        if values > self.max_values:
            raise BudgetError(
                f"allocation keeps {values:,} values, {values - self.max_values:,} over the budget "
                f"of {self.max_values:,} ({self.describe()})"
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description that :meth:`from_dict` restores exactly."""
        data = asdict(self)
        data.pop("_frozen_rows")
        data["rows"] = dict(self.rows)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Budget:
        """Rebuild a budget written by :meth:`to_dict` (re-checking its feasibility).

        Budgets written before counts were kept exact (``"amount": 1000000.0``) read back
        with the integer count.
        """
        kind, amount = str(data["kind"]), data["amount"]
        amount = float(amount) if kind == "sparsity" or not isinstance(amount, int) else int(amount)
        return cls(int(data["max_values"]), dict(data["rows"]), int(data["d_min"]), int(data["d_max"]),
                   kind, amount, str(data.get("dtype", "float32")))
