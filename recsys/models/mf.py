"""Matrix factorisation (BPR-MF): the score of (user, item) is the dot product of their vectors."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from recsys.embedding import EmbeddingProvider
from recsys.models._losses import bpr, hardest, l2_penalty, sampled_softmax

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
            users, pos: int64 ids of shape ``(batch,)``; ``pos`` are observed items of ``users``.
            neg: sampled unobserved items, ``(batch,)``, or ``(batch, M)`` candidates of which
                each triple keeps the one it scores highest (:func:`~recsys.models._losses.hardest`).
            reg: weight of the L2 term (1e-4 in LightGCN).
        """
        u = self.embedding.lookup("user", users)
        if neg.dim() == 2:
            with torch.no_grad():
                candidates = self.embedding.lookup("item", neg.reshape(-1)).unflatten(-2, tuple(neg.shape))
                neg = hardest((candidates @ u.unsqueeze(-1)).squeeze(-1), neg)
        # One gather for positives and negatives: fewer kernel calls per step.
        items = self.embedding.lookup("item", torch.cat([pos, neg]))
        p, n = items.split(len(pos), dim=-2)  # dim -2: also right for stacked variants (A, 2·batch, dim)
        return bpr((u * (p - n)).sum(dim=-1)) + l2_penalty(reg, len(users), u, items)

    def softmax_loss(
        self, users: torch.Tensor, pos: torch.Tensor, negatives: torch.Tensor, reg: float, temperature: float
    ) -> torch.Tensor:
        """Sampled softmax of each positive against negatives shared by the batch; L2 as :meth:`bpr_loss`.

        Every user of the batch is scored against every one of ``negatives`` in one
        product; see :func:`recsys.models._losses.sampled_softmax`.  The L2 term covers
        the vectors looked up: the users, their positives and the shared negatives.

        Args:
            users, pos: int64 ids of shape ``(batch,)``.
            negatives: int64 item ids ``(k,)`` shared by every row (drawn uniformly).
            reg: weight of the L2 term, per triple.
            temperature: τ > 0.
        """
        u = self.embedding.lookup("user", users)
        items = self.embedding.lookup("item", torch.cat([pos, negatives]))
        p, n = items.split([len(pos), len(negatives)], dim=-2)
        scores = u @ n.transpose(-2, -1)  # (…, batch, k)
        return sampled_softmax((u * p).sum(dim=-1), scores, pos, negatives, temperature) + l2_penalty(reg, len(users), u, items)

    def prefix_bpr_loss(
        self,
        users: torch.Tensor,
        pos: torch.Tensor,
        neg: torch.Tensor,
        reg: float,
        sizes: Callable[[str, torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """Mean of :meth:`bpr_loss` over ``A`` prefix-masked variants of the tables, without building them.

        Variant ``a`` keeps the leading ``sizes(table, ids)[a, k]`` values of row ``ids[k]``.
        A dot product of two prefix-masked vectors is a prefix sum of the unmasked
        product, up to the smaller of the two sizes, and a masked squared norm is a
        prefix sum of squares; so one cumulative sum per term serves every variant,
        and ``A`` variants cost about one plain step instead of ``A``.  The provider must
        serve unmasked vectors.  Used by supernet training.

        Args:
            users, pos, neg: int64 ids of shape ``(batch,)``.
            reg: L2 weight of each variant's loss, as in :meth:`bpr_loss`.
            sizes: maps a table name and ids ``(batch,)`` to int64 sizes ``(A, batch)`` in ``[0, dim]``.
        """
        u = self.embedding.lookup("user", users)
        items = self.embedding.lookup("item", torch.cat([pos, neg]))
        p, n = items.split(len(pos))
        size_u, size_p, size_n = sizes("user", users), sizes("item", pos), sizes("item", neg)
        x = _prefix_sums(u * p, torch.minimum(size_u, size_p)) - _prefix_sums(u * n, torch.minimum(size_u, size_n))
        loss = bpr(x)
        if reg:
            norms = _prefix_sums(u * u, size_u) + _prefix_sums(p * p, size_p) + _prefix_sums(n * n, size_n)
            loss = loss + reg * 0.5 * norms.sum() / x.numel()
        return loss

    def all_scores(self, users: torch.Tensor) -> torch.Tensor:
        """Scores of ``users`` against every item, ``(len(users), n_items)``, for full ranking."""
        # transpose(-2, -1), not .T: a masked embedding serving several variants returns
        # stacked (A, rows, dim) tables, and the scores are then (A, len(users), n_items).
        return self.embedding.lookup("user", users) @ self.embedding.table("item").transpose(-2, -1)


def _prefix_sums(values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``out[a, b] = values[b, :lengths[a, b]].sum()`` for ``values (batch, dim)``, ``lengths (A, batch)``."""
    batch, dim = values.shape
    sums = nn.functional.pad(values.cumsum(dim=1), (1, 0)).reshape(-1)  # a leading 0 for length 0
    return sums[torch.arange(batch, device=values.device) * (dim + 1) + lengths]
