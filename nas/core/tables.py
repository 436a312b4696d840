"""Plain descriptions of embedding tables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["TableSpec", "table_specs"]


@dataclass(frozen=True)
class TableSpec:
    """One embedding table: its name (``"user"``, ``"item"``, a CTR field) and row count."""

    name: str
    rows: int

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a table needs a non-empty name")
        if self.rows < 1:
            raise ValueError(f"table {self.name!r} has {self.rows} rows; a table needs at least one")


def table_specs(rows: Mapping[str, int]) -> tuple[TableSpec, ...]:
    """``{"user": 10, "item": 20}`` -> ``(TableSpec("user", 10), TableSpec("item", 20))``, in the mapping's order."""
    return tuple(TableSpec(name, int(n)) for name, n in rows.items())
