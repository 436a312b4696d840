"""NeuMF [NeuMF]: a generalised matrix factorisation and an MLP over the pair, fused by one linear layer.

The score of (user ``u``, item ``i``) is

    ``s(u, i) = hᵀ [u ⊙ i ; MLP([u ; i])] + b``

where the MLP is a tower that halves its width at every layer with ReLU (``2d → d → d/2``
for two layers, [LERSBench]'s ``64, 32, 16`` at ``d = 32``; NCF's own tower), and ``h``
weighs the GMF product and the tower's output.

**One table per side, read by both branches.**  The original NeuMF gives the GMF and the
MLP branch separate embeddings.  Here both read the provider's ``"user"`` and ``"item"``
tables, so an allocation sizes exactly one vector per row and the budget counts what is
stored: with two tables per side, one decision would have to size two vectors (or the
search would face four tables whose sizes are tied), and the parameter count would be
twice what the allocation says.  A masked provider thus masks what both branches see.

Training is BPR (or a sampled softmax against at most 256 shared negatives,
:meth:`NeuMF.softmax_loss`) with the L2 term on the batch's layer-0 vectors, ``reg`` per triple as in
:class:`~recsys.models.MF`; the tower and output weights carry no L2 (Adam trains them).
A provider serving ``A`` masked variants returns stacked ``(A, rows, dim)`` tables; every
operation broadcasts over that leading axis, and the loss is the mean over variants and
triples with the L2 term summed over the variants (the caller shares ``reg`` out between
them, as for MF).

Full ranking scores the user × item grid; the MLP's first layer is split into a user part
and an item part (``W [u ; i] = W_u u + W_i i``), each computed once, and the rest of the
tower runs over item chunks small enough that a chunk of the grid stays within
:attr:`NeuMF.grid_values` values (Gowalla's 40,981 items never build a
``(users, items, width)`` tensor at once).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from recsys.embedding import EmbeddingProvider
from recsys.models._losses import bpr, hardest, l2_penalty, sampled_softmax

__all__ = ["NeuMF"]

_TABLES = ("user", "item")


class NeuMF(nn.Module):
    """NeuMF over the ``"user"`` and ``"item"`` tables of a provider (shared by both branches).

    Args:
        embedding: provides ``"user"`` and ``"item"`` tables of width ``dim`` (``d``).
        mlp_layers: linear layers of the tower; layer ``k`` maps ``2d / 2^k`` to
            ``2d / 2^(k+1)`` values (at least one), so 2 layers give ``2d → d → d/2``.
        dropout: dropout after every ReLU of the tower, in training mode only (0: none,
            as NCF; [LERSBench] tunes it in ``[0, 1]``).
        seed: seeds the initialisation of the tower and output weights, so building the
            model twice gives the same weights.

    The tower is Xavier-initialised with zero biases.  The GMF half of ``h`` starts at
    ones and the tower's half at zero, so the untrained model scores exactly as BPR-MF
    on the same tables and the tower's contribution is learnt from there (NeuMF itself
    starts from pre-trained branches for the same reason: a random ``h`` makes the
    first steps rank noise).

    Raises:
        TypeError: when ``embedding`` is not an :class:`EmbeddingProvider`.
        ValueError: when it lacks a table, or ``mlp_layers`` / ``dropout`` is out of range.
    """

    #: Most values (floats) of one item chunk of the user × item grid in :meth:`all_scores`.
    grid_values: int = 2**24
    #: Most negatives of :meth:`softmax_loss`: the tower scores every (user, negative) pair of the batch.
    softmax_candidates: int = 256

    def __init__(self, embedding: EmbeddingProvider, mlp_layers: int = 2, dropout: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        if not isinstance(embedding, EmbeddingProvider):
            raise TypeError(f"NeuMF needs an EmbeddingProvider (dim, rows, lookup, table), got {type(embedding).__name__}")
        missing = [name for name in _TABLES if name not in embedding.rows]
        if missing:
            raise ValueError(f"NeuMF needs tables {_TABLES}; the embedding lacks {missing} (has {sorted(embedding.rows)})")
        if mlp_layers < 1:
            raise ValueError(f"mlp_layers must be >= 1, got {mlp_layers}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.embedding = embedding
        dim = int(embedding.dim)
        widths = [max(1, (2 * dim) >> k) for k in range(mlp_layers + 1)]
        self.dim, self.widths, self.dropout = dim, tuple(widths), float(dropout)
        self.tower = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.output = nn.Linear(dim + widths[-1], 1)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for layer in self.tower:
                bound = (6.0 / (layer.in_features + layer.out_features)) ** 0.5
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.zero_()
            self.output.weight.zero_()
            self.output.weight[0, :dim] = 1.0
            self.output.bias.zero_()

    @property
    def n_items(self) -> int:
        """Number of items, the width of :meth:`all_scores`."""
        return int(self.embedding.rows["item"])

    # -- the pieces of a score ------------------------------------------------------------------
    def _user_part(self, u: torch.Tensor) -> torch.Tensor:
        """The user's share of the first tower layer, bias included: ``W_u u + b``."""
        first = self.tower[0]
        return nn.functional.linear(u, first.weight[:, : self.dim], first.bias)

    def _item_part(self, i: torch.Tensor) -> torch.Tensor:
        """The item's share of the first tower layer: ``W_i i``."""
        return i @ self.tower[0].weight[:, self.dim :].T

    def _tower(self, first: torch.Tensor) -> torch.Tensor:
        """The tower's output ``(…, w_L)`` from its first layer's pre-activation ``(…, w1)``."""
        hidden = first
        for k, layer in enumerate(self.tower):
            if k:
                hidden = layer(hidden)
            hidden = nn.functional.dropout(hidden.relu(), self.dropout, self.training)
        return hidden

    def _fuse(self, gmf: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """``hᵀ [gmf ; hidden] + b`` for GMF products ``(…, d)`` and tower outputs ``(…, w_L)``."""
        weight = self.output.weight[0]
        return gmf @ weight[: self.dim] + hidden @ weight[self.dim :] + self.output.bias[0]

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores of aligned (user, item) id pairs (int64, same shape): a float tensor of that shape."""
        u, i = self.embedding.lookup("user", users), self.embedding.lookup("item", items)
        return self._fuse(u * i, self._tower(self._user_part(u) + self._item_part(i)))

    def bpr_loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, reg: float) -> torch.Tensor:
        """BPR loss of a batch, with L2 on the looked-up vectors as :meth:`MF.bpr_loss <recsys.models.MF.bpr_loss>`.

        ``mean(-log σ(s(u, i) - s(u, j))) + reg · (‖e_u‖² + ‖e_i‖² + ‖e_j‖²) / 2 / batch``.

        Args:
            users, pos: int64 ids of shape ``(batch,)``.
            neg: ``(batch,)``, or ``(batch, M)`` candidates of which each triple keeps the one
                it scores highest (:func:`~recsys.models._losses.hardest`).
            reg: weight of the L2 term, per triple.
        """
        if neg.dim() == 2:
            with torch.no_grad():
                neg = hardest(self.score(users.unsqueeze(1).expand_as(neg), neg), neg)
        u = self.embedding.lookup("user", users)
        items = self.embedding.lookup("item", torch.cat([pos, neg]))
        p, n = items.split(len(pos), dim=-2)  # dim -2: also right for stacked variants (A, 2·batch, dim)
        user_part = self._user_part(u)
        x = (self._fuse(u * p, self._tower(user_part + self._item_part(p)))
             - self._fuse(u * n, self._tower(user_part + self._item_part(n))))
        return bpr(x) + l2_penalty(reg, len(users), u, items)

    def softmax_loss(
        self, users: torch.Tensor, pos: torch.Tensor, negatives: torch.Tensor, reg: float, temperature: float
    ) -> torch.Tensor:
        """Sampled softmax of each positive against negatives shared by the batch; L2 as :meth:`bpr_loss`.

        The tower runs for every (user, negative) pair, so at most :attr:`softmax_candidates`
        of ``negatives`` are used.
        """
        negatives = negatives[: self.softmax_candidates]
        u = self.embedding.lookup("user", users)
        items = self.embedding.lookup("item", torch.cat([pos, negatives]))
        p, n = items.split([len(pos), len(negatives)], dim=-2)
        positive = self._fuse(u * p, self._tower(self._user_part(u) + self._item_part(p)))
        return sampled_softmax(positive, self._grid(u, n), pos, negatives, temperature) + l2_penalty(reg, len(users), u, items)

    def all_scores(self, users: torch.Tensor) -> torch.Tensor:
        """Scores of ``users`` against every item, ``(len(users), n_items)`` (``(A, …)`` for stacked variants)."""
        return self._grid(self.embedding.lookup("user", users), self.embedding.table("item"))

    def _grid(self, u: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores ``(…, b, n)`` of user vectors ``(…, b, d)`` against item vectors ``(…, n, d)``, in item chunks."""
        weight = self.output.weight[0]
        # The GMF branch over the whole grid is one product, as MF's scores (transpose(-2, -1): stacked variants).
        gmf = (u * weight[: self.dim]) @ items.transpose(-2, -1) + self.output.bias[0]  # (…, b, n)
        user_part = self._user_part(u).unsqueeze(-2)  # (…, b, 1, w1)
        item_part = self._item_part(items).unsqueeze(-3)  # (…, 1, n, w1)
        rows = math.prod(torch.broadcast_shapes(user_part.shape[:-2], item_part.shape[:-2]))  # users × variants
        chunk = max(1, self.grid_values // max(1, rows * max(self.widths[1:])))
        tower = [
            self._tower(user_part + item_part[..., start : start + chunk, :]) @ weight[self.dim :]
            for start in range(0, items.shape[-2], chunk)
        ]
        return gmf + torch.cat(tower, dim=-1)
