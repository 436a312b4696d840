"""Precisions a row's values may be stored at, and what each one costs.

A precision is searched beside a row's size when the user asks for it (``--precisions``).
Floating precisions store each kept value as it is (``fp32``) or rounded to half
precision (``fp16``).  Integer precisions store each value as a signed integer of
``bits`` bits, symmetric around zero (``-q..q`` with ``q = 2**(bits-1) - 1``, so a
masked ``0.0`` stays exact), and an ``fp16`` scale::

    scale = fp16(max |x| / q)        value = clamp(round(x / scale), -q, q) * scale

Where the scale lives is the budget's choice (:data:`SCALES`): ``"row"`` (the default), one
scale per row, the max over the row's own values; ``"shared"``, one scale per table,
precision and size, the max over every row of that size at that precision.  Shared scales
cost no bits per row, which is what lets a budget of 1 % of the float32 bytes (2.56 bytes a
row at ``d_max = 64``) hold values at all; per-row scales follow each row's own range.

``int2`` therefore has the three levels ``-scale, 0, +scale``.  The scale is rounded to
``fp16`` before the values are divided by it, so the values the model trains with
(fake quantisation) are exactly the ones the export stores and the loader rebuilds.

**Layout and cost.**  The export stores, per table and precision, the kept values of
the rows at that precision one after another (``int4`` two to a byte, low nibble first;
``int2`` four to a byte, lowest bits first), padded to a whole byte once per buffer, and
the integer rows' scales; per row it stores one *code* saying its size and precision
(:func:`code_dtype`).  So a row of ``d`` values costs exactly ``d * bits`` bits plus, with
per-row scales, :data:`SCALE_BITS` for an integer precision, and everything else (codes,
shared scales, padding, metadata) depends only on the tables, which is what keeps the cost linear in the sizes
and the budget exact (:mod:`nas.core.accounting`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nas.core.errors import ConfigError

__all__ = [
    "DEFAULT_PRECISIONS", "PRECISIONS", "SCALES", "SCALE_BITS", "Precision", "check_scales", "code_dtype",
    "decode_codes", "encode_codes", "parse_precisions",
]

#: Bits of one scale of an integer precision (one ``fp16``).
SCALE_BITS = 16
#: Where integer rows' scales live: one per row, or one per table, precision and size.
SCALES = ("row", "shared")


@dataclass(frozen=True)
class Precision:
    """How a row's values are stored.

    Attributes:
        name: ``"fp32"``, ``"fp16"``, ``"int8"``, ``"int4"`` or ``"int2"``.
        bits: bits per stored value.
        integer: whether values are integers with a per-row scale.
    """

    name: str
    bits: int
    integer: bool

    @property
    def levels(self) -> int:
        """The largest integer magnitude ``q`` an integer precision stores (``2**(bits-1) - 1``)."""
        if not self.integer:
            raise ValueError(f"{self.name} is not an integer precision")
        return 2 ** (self.bits - 1) - 1

    def row_bits(self, dims: int | np.ndarray, scales: str = "row") -> int | np.ndarray:
        """Bits a row of ``dims`` values costs at this precision: its values, and its own scale with ``scales="row"``."""
        return dims * self.bits + (SCALE_BITS if self.integer and scales == "row" else 0)


#: Every precision embnas can store, widest first.
PRECISIONS: dict[str, Precision] = {
    p.name: p
    for p in (
        Precision("fp32", 32, False),
        Precision("fp16", 16, False),
        Precision("int8", 8, True),
        Precision("int4", 4, True),
        Precision("int2", 2, True),
    )
}

#: What ``--precisions`` searches when given without a list.
DEFAULT_PRECISIONS = ("fp32", "fp16", "int8", "int4")


def parse_precisions(precisions: str | Sequence[str]) -> tuple[str, ...]:
    """The precisions to search, widest first, checked: ``"fp32,int8"`` or ``["int8", "fp32"]``.

    Raises:
        ConfigError: an empty list, or a name that is not a precision (naming the ones there are).
    """
    names = precisions.split(",") if isinstance(precisions, str) else list(precisions)
    cleaned = [str(name).strip().lower() for name in names if str(name).strip()]
    if not cleaned:
        raise ConfigError(f"give at least one precision, e.g. --precisions {','.join(DEFAULT_PRECISIONS)}")
    unknown = [name for name in cleaned if name not in PRECISIONS]
    if unknown:
        raise ConfigError(f"unknown precision{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                          f"choose from {', '.join(PRECISIONS)}")
    return tuple(name for name in PRECISIONS if name in cleaned)


def check_scales(scales: str) -> str:
    """``scales`` if it names where scales live (:data:`SCALES`), else a :class:`ConfigError` naming the choices."""
    if scales not in SCALES:
        raise ConfigError(f"unknown scales {scales!r}; choose {' or '.join(map(repr, SCALES))} "
                          "(one scale per row, or one per table, precision and size)")
    return scales


def code_dtype(d_min: int, d_max: int, n_precisions: int) -> np.dtype:
    """The smallest unsigned dtype of a row code: ``(size - d_min) * n_precisions + precision``.

    With ``d_min = 1``, ``d_max = 64`` and four precisions every code fits one byte, as a
    row size alone does.
    """
    largest = (d_max - d_min + 1) * n_precisions - 1
    for candidate in (np.uint8, np.uint16, np.uint32):
        if largest <= np.iinfo(candidate).max:
            return np.dtype(candidate)
    raise ValueError(f"{d_max - d_min + 1} sizes × {n_precisions} precisions are too many codes to export")


def encode_codes(dims: np.ndarray, precision: np.ndarray, d_min: int, d_max: int, n_precisions: int) -> np.ndarray:
    """Row codes of rows with sizes ``dims`` and precision indices ``precision``."""
    dims, precision = np.asarray(dims, dtype=np.int64), np.asarray(precision, dtype=np.int64)
    return ((dims - d_min) * n_precisions + precision).astype(code_dtype(d_min, d_max, n_precisions))


def decode_codes(codes: np.ndarray, d_min: int, n_precisions: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`encode_codes`: row sizes and precision indices (int64)."""
    codes = np.asarray(codes, dtype=np.int64)
    return codes // n_precisions + d_min, codes % n_precisions
