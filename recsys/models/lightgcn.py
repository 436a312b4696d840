"""LightGCN [LightGCN]: item and user vectors averaged over K rounds of graph propagation.

The layer-0 vectors are the provider's tables, so a masked provider masks *before*
propagation ([BET]'s and [LERSBench]'s convention: the budget counts the stored table).
Propagation is linear, so a column that is zero in every layer-0 row stays zero in every
round: when the provider serves every row a prefix of at most ``w`` values
(:func:`~recsys.embedding.served_width`), the rounds start from the leading ``w`` columns
alone (:func:`~recsys.embedding.table_prefix`) and the final vectors are ``w`` wide (a dot
product over the dropped columns is zero), which makes a 95 %-sparse allocation's training
step several times cheaper (docs/results.md §9.8).
Each round multiplies by the symmetrically normalised user-item adjacency, held as two
CSR blocks (:class:`~recsys.models._graph.GraphBlocks`).  The final vectors are the mean
of rounds 0..K.

Training propagates once per batch, as LightGCN does (every weight reaches every
score); the backward pass multiplies by the blocks already transposed
(:func:`~recsys.models._graph.spmm`), which spares the transpose (a sort of all edges)
that torch's own sparse product does on every backward pass.  The L2 term is on the
layer-0 vectors of the batch, with ``reg`` per triple as in :class:`~recsys.models.MF`.
Out of training mode the result is kept with the layer-0 tables it came from and reused
while they are unchanged (compared exactly, which costs far less than a propagation),
so ranking all users costs one propagation, and a new allocation or new weights are
never served stale.

A provider serving several masked variants at once (a supernet's sandwich step) returns
stacked ``(A, rows, dim)`` tables; the variants are propagated together as one
``(rows, A·dim)`` matrix.
"""

from __future__ import annotations

import scipy.sparse as sp
import torch

from recsys.embedding import EmbeddingProvider, served_width, table_prefix
from recsys.models._graph import GraphCF

__all__ = ["LightGCN"]


class LightGCN(GraphCF):
    """LightGCN over the ``"user"`` and ``"item"`` tables of a provider.

    Args:
        embedding: provides ``"user"`` and ``"item"`` tables (the layer-0 vectors).
        train: the ``(n_users, n_items)`` training interactions (the graph).
        layers: propagation rounds K (3 in [LightGCN]).
        propagation_dtype: the dtype the rounds multiply in (``None``: the tables' own).
            ``torch.bfloat16`` halves the bytes each sparse product reads; the layer-0 tables,
            their gradients and the mean over rounds stay in the tables' dtype.  On CPU it
            saved 2-13 % of an epoch at level quality (docs/results.md §9.5).
    """

    def __init__(self, embedding: EmbeddingProvider, train: sp.csr_matrix, layers: int = 3,
                 propagation_dtype: torch.dtype | None = None) -> None:
        super().__init__(embedding, train, layers)
        if propagation_dtype is not None and not propagation_dtype.is_floating_point:
            raise ValueError(f"propagation_dtype must be a floating-point dtype, got {propagation_dtype}")
        self.propagation_dtype = propagation_dtype

    def _layer0(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer-0 tables, cut to the columns any row is served (zero columns stay zero when propagated)."""
        width = served_width(self.embedding)
        return table_prefix(self.embedding, "user", width), table_prefix(self.embedding, "item", width)

    def _final(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Final vectors of every row: the mean of ``users``/``items`` and their K propagations."""
        stacked = users.dim() == 3
        if stacked:  # (A, rows, dim) -> (rows, A * dim): the variants travel together
            variants = users.shape[0]
            users = users.permute(1, 0, 2).reshape(users.shape[1], -1)
            items = items.permute(1, 0, 2).reshape(items.shape[1], -1)
        total_u, total_i = users, items
        if self.propagation_dtype is not None:
            users, items = users.to(self.propagation_dtype), items.to(self.propagation_dtype)
        for _ in range(self.layers):
            users, items = self.graph.round(users, items)
            total_u, total_i = total_u + users.to(total_u.dtype), total_i + items.to(total_i.dtype)
        scale = 1.0 / (self.layers + 1)
        final_u, final_i = total_u * scale, total_i * scale
        if stacked:
            final_u = final_u.reshape(final_u.shape[0], variants, -1).permute(1, 0, 2)
            final_i = final_i.reshape(final_i.shape[0], variants, -1).permute(1, 0, 2)
        return final_u, final_i
