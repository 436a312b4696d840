"""The hard memory budget every allocation must meet.

A budget is held as the largest number of embedding values that may be kept
over all tables (``max_values``), whatever unit the user gave it in: a sparsity,
a parameter count, or bytes of the exported artifact.  Every row keeps at least
``d_min`` and at most ``d_max`` values, so a budget below ``rows × d_min`` cannot
be met; it is refused when it is built, with the minimum in the user's unit.

When precision is searched (``precisions``) under a byte budget, a value no longer has
one price: the budget is then held in bits (``max_bits``), and a row of ``d`` values at
precision ``p`` costs ``d * bits(p)`` plus its scale, unless scales are shared by the
rows of one size (``scales="shared"``; :mod:`nas.core.precision`).
:meth:`Budget.row_cost` gives every precision's price in the budget's own :attr:`unit`,
so a space prices any (size, precision) candidate without knowing which unit it is.
Sparsity and parameter budgets keep counting values, whatever their precision.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

import numpy as np

from nas.core.errors import BudgetError, ConfigError
from nas.core.accounting import export_bytes, fixed_bytes, precision_fixed_bytes, value_itemsize
from nas.core.precision import PRECISIONS, check_scales, parse_precisions

__all__ = ["Budget"]

_KINDS = ("sparsity", "params", "bytes")
#: Suffixes of a byte budget and their bytes, longest first (``kb`` before ``b``).
_BYTE_UNITS = {"kib": 1024, "mib": 1024**2, "gib": 1024**3, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "b": 1}


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
        precisions: the precisions rows may be stored at, widest first (empty: every value
            at ``dtype``, precision not searched).
        max_bits: with precisions under a byte budget, the most bits the rows' values and
            scales may take (the hard limit; :attr:`max_values` then bounds the values
            at the narrowest precision).  Unused otherwise.
        scales: where integer rows' scales live, ``"row"`` or ``"shared"``
            (:data:`~nas.core.precision.SCALES`); shared scales are paid once per table,
            precision and size instead of once per row.  Only with precisions.
    """

    max_values: int
    rows: Mapping[str, int]
    d_min: int = 1
    d_max: int = 64
    kind: str = "params"
    amount: int | float = 0.0
    dtype: str = "float32"
    precisions: tuple[str, ...] = ()
    max_bits: int = 0
    scales: str = "row"
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
        if self.precisions:
            try:
                object.__setattr__(self, "precisions", parse_precisions(self.precisions))
            except ConfigError as error:
                raise BudgetError(str(error)) from None
        object.__setattr__(self, "max_bits", int(self.max_bits))
        try:
            check_scales(self.scales)
        except ConfigError as error:
            raise BudgetError(str(error)) from None
        if self.scales != "row" and not self.precisions:
            raise BudgetError(f"scales={self.scales!r} shares the scales of integer precisions; it needs precisions")
        if self.unit == "bits" and self.max_bits < self.min_cost:
            raise BudgetError(
                f"budget {self.describe()} is infeasible: every row at d_min={self.d_min} and its cheapest precision "
                f"({self.cheapest_precision}) already needs {self.min_cost:,} bits; the smallest feasible budget is "
                f"{self.minimum_in_unit()}"
            )
        if self.max_values < self.min_values:
            raise BudgetError(
                f"budget {self.describe()} is infeasible: every row at d_min={self.d_min} already needs "
                f"{self.min_values:,} values; the smallest feasible budget is {self.minimum_in_unit()}"
            )

    def __hash__(self) -> int:
        return hash((self.max_values, self._frozen_rows, self.d_min, self.d_max, self.kind, self.amount, self.dtype,
                     self.precisions, self.max_bits, self.scales))

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_sparsity(cls, sparsity: float, rows: Mapping[str, int], d_max: int, d_min: int = 1, dtype: str = "float32",
                      precisions: Sequence[str] = (), scales: str = "row") -> Budget:
        """Keep at most ``(1 - sparsity)`` of the full ``total_rows × d_max`` values (0.9 keeps 10 %)."""
        if not (isinstance(sparsity, (int, float)) and 0.0 <= sparsity < 1.0) or math.isnan(sparsity):
            raise BudgetError(f"sparsity must be in [0, 1), got {sparsity!r}")
        full = sum(int(n) for n in rows.values()) * d_max
        # Exact decimal arithmetic: in floating point 1 - 0.9 = 0.0999..., which loses a
        # whole value once the table holds millions of them.
        max_values = math.floor(full * (1 - Fraction(repr(float(sparsity)))))
        return cls(max_values, rows, d_min, d_max, "sparsity", float(sparsity), dtype, tuple(precisions), scales=scales)

    @classmethod
    def from_params(cls, params: int, rows: Mapping[str, int], d_max: int, d_min: int = 1, dtype: str = "float32",
                    precisions: Sequence[str] = (), scales: str = "row") -> Budget:
        """Keep at most ``params`` embedding values over all tables."""
        if isinstance(params, float) and params.is_integer():
            params = int(params)
        if not isinstance(params, int) or params < 0:
            raise BudgetError(f"a parameter budget must be a non-negative integer, got {params!r}")
        return cls(params, rows, d_min, d_max, "params", params, dtype, tuple(precisions), scales=scales)

    @classmethod
    def from_bytes(cls, nbytes: int, rows: Mapping[str, int], d_max: int, d_min: int = 1, dtype: str = "float32",
                   precisions: Sequence[str] = (), scales: str = "row") -> Budget:
        """Keep at most what fits in an export of ``nbytes`` bytes, metadata and row codes included.

        With ``precisions`` the limit is held in bits (:attr:`max_bits`): what the bytes
        leave for values and scales once the row codes, padding and metadata are set aside.
        """
        if not isinstance(nbytes, int) or nbytes < 0:
            raise BudgetError(f"a byte budget must be a non-negative integer, got {nbytes!r}")
        if precisions:
            try:
                chosen = parse_precisions(precisions)
                check_scales(scales)
            except ConfigError as error:
                raise BudgetError(str(error)) from None
            spare = nbytes - precision_fixed_bytes(rows, d_min, d_max, chosen, scales)
            max_bits = max(spare, -1) * 8
            narrowest = min(PRECISIONS[name].bits for name in chosen)
            return cls(max(max_bits, -1) // narrowest, rows, d_min, d_max, "bytes", nbytes, dtype, chosen, max_bits,
                       scales)
        spare = nbytes - fixed_bytes(rows, d_max)
        max_values = max(spare, -value_itemsize(dtype)) // value_itemsize(dtype)
        return cls(int(max_values), rows, d_min, d_max, "bytes", nbytes, dtype, scales=scales)

    @staticmethod
    def counts_bytes(text: str) -> bool:
        """Whether the budget text ``text`` is a byte budget (``2MB``, ``512KiB``, ``900000B``), without parsing it."""
        return isinstance(text, str) and text.strip().lower().endswith(tuple(_BYTE_UNITS))

    @classmethod
    def parse(cls, text: str, rows: Mapping[str, int], d_max: int, d_min: int = 1, dtype: str = "float32",
              precisions: Sequence[str] = (), scales: str = "row") -> Budget:
        """Read a budget from the command line: ``0.9`` (sparsity), ``250000`` (parameters), ``2MB``/``512KiB``/``1000000B`` (bytes).

        Counts are read exactly, never through a float: ``1000000000000000000000000000000``
        is that many parameters, ``1.5MB`` is 1,500,000 bytes (a fraction of a byte is
        rounded down).
        """
        if not isinstance(text, str):
            raise BudgetError(f"a budget is text such as 0.9, 250000 or 2MB, got {type(text).__name__}")
        raw = text.strip()
        lowered = raw.lower()
        for suffix, scale in _BYTE_UNITS.items():
            if lowered.endswith(suffix):
                try:
                    number = Decimal(lowered[: -len(suffix)].strip())
                except (InvalidOperation, ValueError):
                    number = Decimal("nan")
                if not number.is_finite():
                    raise BudgetError(f"cannot read the byte budget {text!r}; write e.g. 2MB or 512KiB")
                return cls.from_bytes(math.floor(Fraction(number) * scale), rows, d_max, d_min, dtype, precisions, scales)
        try:
            count = int(raw)
        except ValueError:
            pass
        else:
            if count >= 1:
                return cls.from_params(count, rows, d_max, d_min, dtype, precisions, scales)
        try:
            number = float(raw)
        except ValueError:
            raise BudgetError(
                f"cannot read the budget {text!r}; give a sparsity in [0, 1) like 0.9, a parameter count like 250000, or bytes like 2MB"
            ) from None
        if not math.isfinite(number):
            raise BudgetError(f"the budget must be a finite number, got {text!r}")
        if number < 1.0:
            return cls.from_sparsity(number, rows, d_max, d_min, dtype, precisions, scales)
        if not number.is_integer() or "." in raw or "e" in raw.lower():
            raise BudgetError(
                f"cannot read the budget {text!r}: a sparsity is below 1 (like 0.9), a parameter count is a whole number (like 250000)"
            )
        return cls.from_params(int(number), rows, d_max, d_min, dtype, precisions, scales)

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
    def unit(self) -> str:
        """What the budget counts: ``"bits"`` for a byte budget with searched precision, ``"values"`` otherwise."""
        return "bits" if self.precisions and self.kind == "bytes" else "values"

    def row_cost(self, precision: str | None = None) -> tuple[int, int]:
        """The price of a row at ``precision`` in the budget's :attr:`unit`: per value kept, and per row.

        A row of ``d`` values costs ``per_value * d + per_row``: ``(1, 0)`` when the budget
        counts values; ``(bits, scale bits)`` when it counts bits (no scale bits when scales are shared).
        """
        if self.unit == "values":
            return 1, 0
        if precision not in self.precisions:
            raise BudgetError(f"precision {precision!r} is not one of the budget's {', '.join(self.precisions)}")
        chosen = PRECISIONS[precision]
        return chosen.bits, int(chosen.row_bits(0, self.scales))

    def prices(self) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`row_cost` of every precision, in :attr:`precisions` order: ``(per_value, per_row)`` int64 arrays.

        One entry, ``(1, 0)``, without precisions; so a precision index prices a row in
        either unit as ``per_value[k] * d + per_row[k]``.
        """
        prices = [self.row_cost(p) for p in self.precisions] or [(1, 0)]
        return np.array([a for a, _ in prices], dtype=np.int64), np.array([b for _, b in prices], dtype=np.int64)

    @property
    def max_cost(self) -> int:
        """The hard limit in the budget's :attr:`unit`."""
        return self.max_bits if self.unit == "bits" else self.max_values

    @property
    def min_cost(self) -> int:
        """Cost of every row at ``d_min`` and its cheapest precision: no feasible allocation costs less."""
        if self.unit == "values":
            return self.min_values
        per_value, per_row = self.row_cost(self.cheapest_precision)
        return self.total_rows * (per_value * self.d_min + per_row)

    @property
    def cheapest_precision(self) -> str | None:
        """The precision of the cheapest row at ``d_min`` (the narrower on a tie); ``None`` without precisions."""
        if not self.precisions:
            return None
        return min(reversed(self.precisions), key=lambda p: PRECISIONS[p].row_bits(self.d_min, self.scales))

    @property
    def usable_values(self) -> int:
        """The most values an allocation can actually keep: the budget, or the full tables if smaller."""
        return min(self.max_values, self.full_values)

    @property
    def max_bytes(self) -> int:
        """Bytes an export that spends the whole budget may take."""
        if not self.precisions:
            return export_bytes(self.usable_values, self.rows, self.d_max, self.dtype)
        fixed = precision_fixed_bytes(self.rows, self.d_min, self.d_max, self.precisions, self.scales)
        if self.unit == "bits":
            return fixed + self.max_bits // 8
        chosen = [PRECISIONS[name] for name in self.precisions]
        widest = (max(p.bits for p in chosen) * self.usable_values
                  + self.total_rows * max(int(p.row_bits(0, self.scales)) for p in chosen))
        return fixed + -(-widest // 8)

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
        if self.kind == "bytes" and self.unit == "bits":
            fixed = precision_fixed_bytes(self.rows, self.d_min, self.d_max, self.precisions, self.scales)
            return f"{fixed + -(-self.min_cost // 8):,} bytes"
        if self.kind == "bytes":
            return f"{export_bytes(self.min_values, self.rows, self.d_max, self.dtype):,} bytes"
        return f"{self.min_values:,} parameters"

    # -- checks and serialisation ------------------------------------------------------------------
    def check_cost(self, cost: int) -> None:
        """Raise :class:`BudgetError` naming the overshoot when ``cost`` (in the budget's :attr:`unit`) exceeds it."""
        if cost > self.max_cost:
            verb = "takes" if self.unit == "bits" else "keeps"
            raise BudgetError(
                f"allocation {verb} {cost:,} {self.unit}, {cost - self.max_cost:,} over the budget "
                f"of {self.max_cost:,} ({self.describe()})"
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description that :meth:`from_dict` restores exactly."""
        data = asdict(self)
        data.pop("_frozen_rows")
        data["rows"] = dict(self.rows)
        data["precisions"] = list(self.precisions)
        if not self.precisions:  # a budget without searched precision reads as it always did
            del data["precisions"], data["max_bits"]
        if self.scales == "row":  # and one with per-row scales as it did before scales could be shared
            del data["scales"]
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
                   kind, amount, str(data.get("dtype", "float32")), tuple(data.get("precisions", ())),
                   int(data.get("max_bits", 0)), str(data.get("scales", "row")))
