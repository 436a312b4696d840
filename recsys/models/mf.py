"""Matrix factorisation (BPR-MF): the score of (user, item) is the dot product of their vectors."""

from __future__ import annotations

import torch
from torch import nn

from recsys.embedding import EmbeddingProvider

__all__ = ["MF"]

_TABLES = ("user", "item")


class MF(nn.Module):
    """Dot-product model over the ``"user"`` and ``"item"`` tables of a provider.

    The model owns no weights: it takes the embedding provider instead of
    building one, so a plain table or a masked one (an allocation under search)
    trains with the same code. When the provider is an ``nn.Module`` its
    parameters become the model's.

    Args:
        embedding: provides ``"user"`` and ``"item"`` tables of width ``dim``.

    Raises:
        TypeError: when ``embedding`` is not an :class:`EmbeddingProvider`.
        ValueError: when it lacks the ``"user"`` or ``"item"`` table.
    """

    def __init__(self, embedding: EmbeddingProvider) -> None:
        super().__init__()
        if not isinstance(embedding, EmbeddingProvider):
            raise TypeError(f"MF needs an EmbeddingProvider (dim, rows, lookup, table), got {type(embedding).__name__}")
        missing = [name for name in _TABLES if name not in embedding.rows]
        if missing:
            raise ValueError(f"MF needs tables {_TABLES}; the embedding lacks {missing} (has {sorted(embedding.rows)})")
        self.embedding = embedding

    @property
    def n_items(self) -> int:
        """Number of items, the width of :meth:`all_scores`."""
        return int(self.embedding.rows["item"])

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores of aligned (user, item) id pairs (int64, same shape): a float tensor of that shape."""
        return (self.embedding.lookup("user", users) * self.embedding.lookup("item", items)).sum(dim=-1)

    def bpr_loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, reg: float) -> torch.Tensor:
        """BPR loss of a batch, with L2 on the looked-up vectors (LightGCN's convention).

        ``mean(-log σ(s(u, i) - s(u, j))) + reg · (‖e_u‖² + ‖e_i‖² + ‖e_j‖²) / 2 / batch``,
        where the squared norms are summed over the batch; so ``reg`` is per
        triple and does not change with the batch size.

        Args:
            users, pos, neg: int64 ids of shape ``(batch,)``; ``pos`` are observed
                items of ``users``, ``neg`` sampled unobserved ones.
            reg: weight of the L2 term (1e-4 in LightGCN).
        """
        u = self.embedding.lookup("user", users)
        # One gather for positives and negatives: fewer kernel calls per step.
        items = self.embedding.lookup("item", torch.cat([pos, neg]))
        p, n = items.split(len(pos), dim=-2)  # dim -2: also right for stacked variants (A, 2·batch, dim)
        loss = nn.functional.softplus(-(u * (p - n)).sum(dim=-1)).mean()  # softplus(-x) = -log σ(x)
        if reg:
            loss = loss + reg * 0.5 * (u.square().sum() + items.square().sum()) / len(users)
        return loss

    def all_scores(self, users: torch.Tensor) -> torch.Tensor:
        """Scores of ``users`` against every item, ``(len(users), n_items)``, for full ranking."""
        # transpose(-2, -1), not .T: a masked embedding serving several variants returns
        # stacked (A, rows, dim) tables, and the scores are then (A, len(users), n_items).
        return self.embedding.lookup("user", users) @ self.embedding.table("item").transpose(-2, -1)
