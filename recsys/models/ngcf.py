"""NGCF [NGCF]: graph propagation with feature transforms and a bi-interaction term.

Layer ``l + 1`` of every node is

    ``E_{l+1} = LeakyReLU(Â E_l W1 + b1 + ((Â E_l) ⊙ E_l) W2 + b2)``

with ``Â = D^-1/2 (A + I) D^-1/2`` the user-item adjacency with a self loop on every node,
degrees counting the loop (NGCF's normalisation).  Its two off-diagonal blocks come from
:class:`~recsys.models._graph.GraphBlocks` (``self_loops=True``); its diagonal is the self
term, added here: node ``v`` keeps ``E_v / deg(v)`` of itself.  The final vector of a node
is the concatenation of ``E_0`` (the provider's row) and the L2-normalised outputs of
layers ``1..L``, so it is ``(L + 1) · d`` wide; a score is the dot product of two of them.

Defaults follow NGCF's own settings, which [BET] keeps ("the same settings as
reported in their original works"): 3 layers, LeakyReLU slope 0.2, message dropout 0.1
on every layer's output in training only, node dropout off.  Node dropout, when set,
drops a node's outgoing messages (self loop included) for the whole step, rescaling the
kept ones by ``1 / (1 - rate)``.

The layer-0 vectors are the provider's tables, so a masked provider masks *before*
propagation ([BET] and [LERSBench]: the budget counts the stored table).  The L2 term is on
the batch's layer-0 vectors, ``reg`` per triple as in :class:`~recsys.models.MF`; ``W1``,
``W2`` and the biases carry none.  Out of training mode the propagation is kept with the
layer-0 tables and the layer weights it came from and reused while they are exactly equal
(far cheaper to compare than to propagate), so ranking all users costs one propagation
and neither a new allocation nor new weights are served stale.

A provider serving ``A`` masked variants returns stacked ``(A, rows, dim)`` tables; they
are propagated together (see :meth:`NGCF._final`).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from recsys.embedding import EmbeddingProvider
from recsys.models._graph import GraphCF

__all__ = ["NGCF"]

_SLOPE = 0.2
"""LeakyReLU's negative slope in NGCF."""


class NGCF(GraphCF):
    """NGCF over the ``"user"`` and ``"item"`` tables of a provider.

    Args:
        embedding: provides ``"user"`` and ``"item"`` tables (the layer-0 vectors), width ``d``.
        train: the ``(n_users, n_items)`` training interactions (the graph).
        layers: propagation layers L (3 in [NGCF]).
        message_dropout: dropout rate on every layer's output, training mode only (0.1).
        node_dropout: rate of nodes whose outgoing messages are dropped per step, training
            mode only (0: off, NGCF's default).
        seed: seeds the Xavier initialisation of ``W1`` and ``W2`` (biases start at zero).

    Raises:
        TypeError: when ``embedding`` is not an :class:`EmbeddingProvider`.
        ValueError: when the graph does not match the tables, or an option is out of range.
    """

    def __init__(
        self,
        embedding: EmbeddingProvider,
        train: sp.spmatrix,
        layers: int = 3,
        message_dropout: float = 0.1,
        node_dropout: float = 0.0,
        seed: int = 0,
    ) -> None:
        for name, rate in (("message_dropout", message_dropout), ("node_dropout", node_dropout)):
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {rate}")
        super().__init__(embedding, train, layers, self_loops=True)
        self.message_dropout = float(message_dropout)
        self.node_dropout = float(node_dropout)
        # The diagonal of Â: 1 / degree, the degree counting the self loop (as GraphBlocks counts it).
        matrix = sp.csr_matrix(train, dtype=np.float32)
        matrix.data[:] = 1.0
        for name, axis in (("self_user", 1), ("self_item", 0)):
            degree = np.asarray(matrix.sum(axis=axis), dtype=np.float32).ravel() + 1.0
            self.register_buffer(name, torch.from_numpy(1.0 / degree).unsqueeze(1), persistent=False)
        dim = int(embedding.dim)
        self.transform = nn.ModuleList(nn.Linear(dim, dim) for _ in range(self.layers))  # W1, b1
        self.interaction = nn.ModuleList(nn.Linear(dim, dim) for _ in range(self.layers))  # W2, b2
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for layer in (*self.transform, *self.interaction):
                bound = (6.0 / (2 * dim)) ** 0.5
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.zero_()

    def _cache_extras(self) -> tuple[torch.Tensor, ...]:
        """``W1``, ``W2`` and their biases: new layer weights must not be served a stale propagation."""
        return tuple(p.detach() for p in (*self.transform.parameters(), *self.interaction.parameters()))

    def _final(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Final vectors of every row from the layer-0 tables ``users`` and ``items``.

        Stacked variants ``(A, rows, d)`` need no loop over ``A``.  ``Â`` acts on every
        column alone, so the variants travel through the sparse product side by side as one
        ``(rows, A·d)`` matrix, as in LightGCN.  ``W1`` and ``W2`` mix the ``d`` columns of
        one variant but never columns of two variants, so they are applied to the
        ``(A, rows, d)`` view as one batched product.  The self term, the bi-interaction,
        the activation, the dropouts and the normalisation are per element or per
        ``d``-vector.  (A table that is not stacked while the other is, is broadcast.)
        """
        stacked = users.dim() == 3 or items.dim() == 3
        if stacked:
            variants = users.shape[0] if users.dim() == 3 else items.shape[0]
            users = users.expand(variants, *users.shape[-2:])
            items = items.expand(variants, *items.shape[-2:])
        else:
            users, items = users.unsqueeze(0), items.unsqueeze(0)
        outputs_u, outputs_i = [users], [items]
        for transform, interaction in zip(self.transform, self.interaction):
            side_u, side_i = self._neighbourhood(users, items)
            users = self._layer(transform, interaction, side_u, users)
            items = self._layer(transform, interaction, side_i, items)
            outputs_u.append(nn.functional.normalize(users, dim=-1))
            outputs_i.append(nn.functional.normalize(items, dim=-1))
        final_u, final_i = torch.cat(outputs_u, dim=-1), torch.cat(outputs_i, dim=-1)
        return (final_u, final_i) if stacked else (final_u[0], final_i[0])

    def _neighbourhood(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``Â E`` for the users and the items of ``(A, rows, d)`` layers: neighbours plus the self term."""
        if self.training and self.node_dropout:
            keep = 1.0 - self.node_dropout
            users = users * (torch.rand(users.shape[-2], 1, device=users.device) < keep) / keep
            items = items * (torch.rand(items.shape[-2], 1, device=items.device) < keep) / keep
        variants, dim = users.shape[0], users.shape[-1]
        flat_u = users.permute(1, 0, 2).reshape(users.shape[1], -1)  # (rows, A·d)
        flat_i = items.permute(1, 0, 2).reshape(items.shape[1], -1)
        from_items, from_users = self.graph.round(flat_u, flat_i)
        side_u = from_items.reshape(-1, variants, dim).permute(1, 0, 2) + users * self.self_user
        side_i = from_users.reshape(-1, variants, dim).permute(1, 0, 2) + items * self.self_item
        return side_u, side_i

    def _layer(self, transform: nn.Linear, interaction: nn.Linear, side: torch.Tensor, ego: torch.Tensor) -> torch.Tensor:
        """One NGCF layer of one side, with message dropout in training mode."""
        out = nn.functional.leaky_relu(transform(side) + interaction(side * ego), _SLOPE)
        return nn.functional.dropout(out, self.message_dropout, self.training)
