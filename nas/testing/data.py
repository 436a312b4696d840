"""Synthetic multi-field data: fields of different cardinalities with power-law frequencies.

Search spaces must work beyond collaborative filtering's two tables: CTR data has
tens of categorical fields, each with its own cardinality and its own long tail.
This generator gives such layouts, reproducibly from a seed, so spaces and
controllers can be tested (and benchmarked) on them without any dataset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from nas.core.tables import TableSpec, table_specs

__all__ = ["SyntheticFields", "power_law_counts", "synthetic_fields"]


@dataclass(frozen=True)
class SyntheticFields:
    """Tables and the training frequency of each of their rows.

    Attributes:
        rows: rows (cardinality) of each field, in field order.
        frequencies: int64 training frequency of every row, by field.
        interactions: training interactions; each touches one row of every field,
            as a CTR sample holds one value per field and a CF pair one user and one item.
    """

    rows: dict[str, int]
    frequencies: dict[str, np.ndarray] = field(repr=False)
    interactions: int = 0

    @property
    def tables(self) -> tuple[TableSpec, ...]:
        """The fields as table specs, in order."""
        return table_specs(self.rows)

    @property
    def total_rows(self) -> int:
        """Rows over all fields."""
        return sum(self.rows.values())


def power_law_counts(rows: int, exponent: float, interactions: int, rng: np.random.Generator) -> np.ndarray:
    """Counts of ``interactions`` draws over ``rows`` values with popularity ``∝ (rank + 1) ** -exponent``.

    Ranks are a random permutation of the row ids, so row id says nothing about
    frequency (as in real id spaces); the tail gets zeros when draws are few.
    """
    popularity = (np.arange(rows, dtype=np.float64) + 1.0) ** -float(exponent)
    popularity = popularity[rng.permutation(rows)]
    return rng.multinomial(int(interactions), popularity / popularity.sum()).astype(np.int64)


def synthetic_fields(
    cardinalities: Sequence[int] | Mapping[str, int],
    *,
    exponent: float | Sequence[float] = 1.1,
    interactions: int | None = None,
    seed: int = 0,
) -> SyntheticFields:
    """Fields of the given cardinalities whose frequencies follow power laws.

    Args:
        cardinalities: rows per field, as a list (fields named ``f0, f1, ...``) or a mapping.
        exponent: power-law exponent, one for all fields or one per field (larger = more skewed).
        interactions: training interactions shared by all fields; default four per row of
            the largest field.
        seed: fixes every draw.

    Returns:
        The layout; the same arguments always give the same frequencies.
    """
    rows = dict(cardinalities) if isinstance(cardinalities, Mapping) else {f"f{i}": int(n) for i, n in enumerate(cardinalities)}
    if not rows or min(rows.values()) < 1:
        raise ValueError(f"need at least one field and at least one row per field, got {rows}")
    if np.ndim(exponent) == 0:
        exponents = [float(exponent)] * len(rows)  # type: ignore[arg-type]
    else:
        exponents = [float(e) for e in exponent]
    if len(exponents) != len(rows):
        raise ValueError(f"got {len(exponents)} exponents for {len(rows)} fields")
    total = 4 * max(rows.values()) if interactions is None else int(interactions)
    if total < 0:
        raise ValueError(f"interactions must be non-negative, got {interactions}")
    rng = np.random.default_rng(seed)
    frequencies = {name: power_law_counts(n, e, total, rng) for (name, n), e in zip(rows.items(), exponents)}
    return SyntheticFields({k: int(v) for k, v in rows.items()}, frequencies, total)
