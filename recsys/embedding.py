"""The embedding provider: what a backbone asks of its embedding tables.

Backbones take their embedding as an argument instead of building it, so the
same model trains with a plain table or with a maskable one that applies a
searched allocation (``nas.pipeline.embedding.MaskableEmbedding``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import torch
from torch import nn

__all__ = ["EmbeddingProvider", "PlainEmbedding", "init_normal_"]


@runtime_checkable
class EmbeddingProvider(Protocol):
    """Named embedding tables of a common width ``dim``.

    Attributes:
        dim: the width of every returned vector (``d_max`` for masked tables).
        rows: number of rows of each table, by table name.
    """

    dim: int
    rows: Mapping[str, int]

    def lookup(self, table: str, ids: torch.Tensor) -> torch.Tensor:
        """Vectors of ``ids`` (int64, any shape) in ``table``: shape ``ids.shape + (dim,)``."""
        ...

    def table(self, table: str) -> torch.Tensor:
        """The whole table as the model sees it, ``(rows, dim)``; for full ranking and graph models."""
        ...


def init_normal_(weight: torch.Tensor, std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill ``weight`` in place from N(0, std^2), reproducibly when a generator is given."""
    with torch.no_grad():
        return weight.normal_(0.0, std, generator=generator)


class PlainEmbedding(nn.Module):
    """Full-size tables, one ``rows × dim`` parameter per name.

    Args:
        rows: rows of each table, e.g. ``{"user": 3000, "item": 4000}``.
        dim: embedding width.
        std: standard deviation of the normal initialisation (0.1 as in LightGCN).
        seed: seed of the initialisation, so a run is reproducible.
    """

    def __init__(self, rows: Mapping[str, int], dim: int, std: float = 0.1, seed: int = 0) -> None:
        super().__init__()
        self.dim = int(dim)
        self.rows = dict(rows)
        generator = torch.Generator().manual_seed(seed)
        self.weights = nn.ParameterDict(
            {name: nn.Parameter(init_normal_(torch.empty(n, self.dim), std, generator)) for name, n in self.rows.items()}
        )

    def lookup(self, table: str, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(ids, self.weights[table])

    def table(self, table: str) -> torch.Tensor:
        return self.weights[table]
