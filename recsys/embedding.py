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

__all__ = ["EmbeddingProvider", "PlainEmbedding", "init_normal_", "served_width", "table_prefix"]


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


def served_width(provider: EmbeddingProvider) -> int:
    """How many leading columns of ``provider``'s tables may hold a non-zero value, at most ``dim``.

    A provider that serves every row a prefix of its vector (a masked allocation) may say
    so with a ``served_width`` attribute; every column past it is zero in every table, so
    a backbone whose cost grows with the width and which keeps zero columns zero (LightGCN's
    propagation) can compute on the leading columns alone.  Providers without the
    attribute are served at full width.
    """
    return max(1, min(int(getattr(provider, "served_width", provider.dim)), int(provider.dim)))


def table_prefix(provider: EmbeddingProvider, table: str, width: int) -> torch.Tensor:
    """The leading ``width`` columns of ``provider.table(table)``, ``(rows, width)``.

    A provider with a ``table_prefix`` method computes them alone (masking, quantising
    and backpropagating through ``width`` columns instead of ``dim``); others are sliced.
    """
    prefix = getattr(provider, "table_prefix", None)
    if prefix is not None and width < provider.dim:
        return prefix(table, width)
    whole = provider.table(table)
    return whole if width >= whole.shape[-1] else whole[..., :width]


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
