"""The bipartite user-item graph of graph backbones (LightGCN, NGCF), held for fast propagation on CPU.

The symmetrically normalised adjacency ``Â = D^-1/2 A D^-1/2`` of the bipartite graph
has two non-zero blocks, ``R̂ = D_u^-1/2 R D_i^-1/2`` (users × items) and its transpose.
:class:`GraphBlocks` keeps both in CSR form, so a propagation round is two sparse-dense
products over the 2·|train| edges and never touches a dense ``(n_users + n_items)²``
matrix.

How a product is computed: a CSR row times a dense matrix is a weighted sum of the dense
rows its columns name, which is exactly what ``embedding_bag(mode="sum",
per_sample_weights=...)`` computes, one bag per row.  Its kernel is the one recommenders
use for pooled lookups, and on CPU it makes a training epoch 1.6-2.2x faster than torch's
``csr @ dense`` does (docs/results.md §9.1).  Why both blocks: the gradient of ``R̂ @ X`` is ``R̂ᵀ @ grad``, and
autograd would build ``R̂ᵀ`` (a sort of all edges) on every backward pass; :func:`spmm`
multiplies by a block and backpropagates by the block already transposed.

:class:`GraphCF` is what LightGCN and NGCF share once their final vectors are known:
the losses (BPR, sampled softmax), ranking and the evaluation cache.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from recsys.embedding import EmbeddingProvider
from recsys.models._losses import bpr, candidate_scores, hardest, info_nce, l2_penalty, sampled_softmax

__all__ = ["CONTRAST_ROWS", "CSRBlock", "Contrast", "GraphBlocks", "GraphCF", "normalized_blocks", "spmm"]

#: ``(weight, temperature)`` of the InfoNCE term a graph backbone adds to its loss (:func:`~recsys.models._losses.info_nce`).
Contrast = tuple[float, float]
#: The InfoNCE term reads at most this many of a batch's triples: it compares every row with
#: every other, so its cost grows with the square of the batch, and at 8,192 triples it would
#: cost 17-21x the rest of a step (docs/results.md §9.1).  Batches are drawn in random order,
#: so the first rows are a uniform sample of the batch.
CONTRAST_ROWS = 2048


def normalized_blocks(train: sp.spmatrix, self_loops: bool = False) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """``D_u^-1/2 R D_i^-1/2`` and its transpose (scipy CSR, float32, sorted indices).

    ``R`` is the binary ``(n_users, n_items)`` training matrix; rows or columns without any
    interaction stay zero (no division by zero).  With ``self_loops`` the degrees count
    each node's own loop (``Â = D^-1/2 (A + I) D^-1/2``, NGCF's normalisation), and the
    diagonal itself is left to the caller (it is the identity scaled by ``1/degree``).
    """
    matrix = sp.csr_matrix(train, dtype=np.float32)
    matrix.data[:] = 1.0
    loop = 1.0 if self_loops else 0.0
    user_degree = np.asarray(matrix.sum(axis=1)).ravel() + loop
    item_degree = np.asarray(matrix.sum(axis=0)).ravel() + loop
    scale_u = np.divide(1.0, np.sqrt(user_degree), out=np.zeros_like(user_degree), where=user_degree > 0)
    scale_i = np.divide(1.0, np.sqrt(item_degree), out=np.zeros_like(item_degree), where=item_degree > 0)
    normalized = sp.csr_matrix(sp.diags(scale_u.astype(np.float32)) @ matrix @ sp.diags(scale_i.astype(np.float32)))
    transposed = sp.csr_matrix(normalized.T)
    normalized.sort_indices()
    transposed.sort_indices()
    return normalized, transposed


class CSRBlock(nn.Module):
    """A CSR matrix as the three tensors ``embedding_bag`` reads: column ids, row starts and values.

    They are non-persistent buffers: they follow the model to its device but are not part
    of its ``state_dict`` (they are rebuilt from the training data, never saved).
    """

    def __init__(self, matrix: sp.csr_matrix) -> None:
        super().__init__()
        self.shape = matrix.shape
        self.register_buffer("columns", torch.from_numpy(matrix.indices.astype(np.int64)), persistent=False)
        self.register_buffer("starts", torch.from_numpy(matrix.indptr[:-1].astype(np.int64)), persistent=False)
        self.register_buffer("values", torch.from_numpy(matrix.data.astype(np.float32)), persistent=False)

    def times(self, dense: torch.Tensor) -> torch.Tensor:
        """``matrix @ dense`` (not differentiable; :func:`spmm` is), in ``dense``'s dtype."""
        values = self.values if dense.dtype == self.values.dtype else self.values.to(dense.dtype)
        # embedding_bag's ids may not index an empty table; a block without columns maps to zeros.
        if dense.shape[0] == 0 or self.columns.numel() == 0:
            return dense.new_zeros(self.shape[0], dense.shape[1])
        return nn.functional.embedding_bag(self.columns, dense.contiguous(), self.starts, mode="sum",
                                           per_sample_weights=values)

    def to_torch_csr(self) -> torch.Tensor:
        """The block as a torch CSR tensor (for tests and for callers that want torch's own sparse ops)."""
        rows = torch.cat([self.starts, self.starts.new_tensor([self.columns.numel()])])
        with warnings.catch_warnings():  # torch announces that CSR support is in beta
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(rows, self.columns, self.values, size=self.shape, check_invariants=False)


class _SparseTimesDense(torch.autograd.Function):
    """``matrix @ dense`` whose gradient is ``transposed @ grad`` (no transpose computed per step)."""

    @staticmethod
    def forward(ctx, matrix: CSRBlock, transposed: CSRBlock, dense: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.transposed = transposed
        return matrix.times(dense)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, None, torch.Tensor]:  # type: ignore[override]
        return None, None, ctx.transposed.times(grad)


def spmm(matrix: CSRBlock, transposed: CSRBlock, dense: torch.Tensor) -> torch.Tensor:
    """``matrix @ dense`` for a CSR ``matrix`` whose transpose ``transposed`` is given, differentiable in ``dense``."""
    if dense.requires_grad and torch.is_grad_enabled():
        return _SparseTimesDense.apply(matrix, transposed, dense)
    return matrix.times(dense)


class GraphBlocks(nn.Module):
    """The two normalised blocks of a bipartite graph (:class:`CSRBlock`), moved with the model by ``.to(device)``.

    Args:
        train: the binary ``(n_users, n_items)`` training interactions.
        self_loops: count a self loop in every node's degree (NGCF).
    """

    def __init__(self, train: sp.spmatrix, self_loops: bool = False) -> None:
        super().__init__()
        user_item, item_user = normalized_blocks(train, self_loops)
        self.shape = user_item.shape
        self.user_item, self.item_user = CSRBlock(user_item), CSRBlock(item_user)

    def round(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One propagation round: (``R̂ @ items``, ``R̂ᵀ @ users``) for ``(rows, features)`` inputs."""
        return spmm(self.user_item, self.item_user, items), spmm(self.item_user, self.user_item, users)


class GraphCF(nn.Module):
    """What graph backbones share once their final vectors are known: BPR, ranking and a cache.

    A subclass computes the final user and item vectors from the layer-0 tables
    (:meth:`_final`); the score of a pair is their dot product.  Training propagates on
    every batch (every weight reaches every score); out of training mode the result is
    kept with the layer-0 tables (and :meth:`_cache_extras`, the subclass's own weights
    that shape the propagation) it came from, and reused while they are exactly equal,
    which costs far less than a propagation: ranking all users costs one, and a new
    allocation or new weights are never served stale.  The L2 term of the loss is on the
    batch's layer-0 vectors, ``reg`` per triple as in :class:`~recsys.models.MF`.
    """

    embedding: EmbeddingProvider

    def __init__(self, embedding: EmbeddingProvider, train: sp.spmatrix, layers: int, self_loops: bool = False) -> None:
        """Check the tables against the graph and hold both; ``self_loops`` as for :class:`GraphBlocks`."""
        super().__init__()
        if not isinstance(embedding, EmbeddingProvider):
            raise TypeError(f"{type(self).__name__} needs an EmbeddingProvider, got {type(embedding).__name__}")
        rows = dict(embedding.rows)
        if train.shape != (rows.get("user"), rows.get("item")):
            raise ValueError(f"the graph is {train.shape} but the tables are user {rows.get('user')} x item {rows.get('item')}")
        if layers < 0:
            raise ValueError(f"layers must be >= 0, got {layers}")
        self.embedding = embedding
        self.layers = int(layers)
        self.graph = GraphBlocks(train, self_loops=self_loops)
        self._cache: tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, torch.Tensor]] | None = None

    @property
    def n_items(self) -> int:
        """Number of items, the width of :meth:`all_scores`."""
        return int(self.embedding.rows["item"])

    def _final(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Final vectors of every row from the layer-0 tables (``(A, rows, d)`` for stacked variants)."""
        raise NotImplementedError

    def _layer0(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The user and item tables the propagation starts from (the provider's, in full by default)."""
        return self.embedding.table("user"), self.embedding.table("item")

    def _cache_extras(self) -> tuple[torch.Tensor, ...]:
        """Tensors besides the layer-0 tables on which the propagation depends (default: none)."""
        return ()

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final user and item vectors, from the cache out of training mode when nothing changed."""
        users, items = self._layer0()
        if not self.training and self._cache is not None:
            key, result = self._cache
            current = (users, items, *self._cache_extras())
            if len(key) == len(current) and all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(key, current)):
                return result
        final_u, final_i = self._final(users, items)
        # Only an evaluation keeps what it propagated from: training never reuses it.
        self._cache = None if self.training else (
            tuple(t.detach().clone() for t in (users, items, *self._cache_extras())), (final_u.detach(), final_i.detach())
        )
        return final_u, final_i

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores of aligned (user, item) id pairs (int64, same shape): a float tensor of that shape."""
        final_u, final_i = self.propagate()
        return (final_u[..., users, :] * final_i[..., items, :]).sum(dim=-1)

    def bpr_loss(
        self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, reg: float, *, contrast: Contrast | None = None
    ) -> torch.Tensor:
        """BPR loss on the final vectors; L2 on the batch's layer-0 vectors (``reg`` per triple).

        ``contrast`` adds ``weight ·`` :func:`~recsys.models._losses.info_nce` at its temperature
        on the final vectors of the batch's users and of its positives (of its first
        :data:`CONTRAST_ROWS` triples).  ``neg`` may be ``(batch, M)`` candidates, of which
        each triple keeps the one its final vectors score highest (:func:`~recsys.models._losses.hardest`).
        """
        final_u, final_i = self._final(*self._layer0())
        u = final_u[..., users, :]
        if neg.dim() == 2:
            with torch.no_grad():
                neg = hardest(candidate_scores(u, final_i, neg), neg)
        p, n = final_i[..., pos, :], final_i[..., neg, :]
        return (bpr((u * (p - n)).sum(dim=-1)) + self._l2(reg, users, torch.cat([pos, neg]))
                + self._contrast(contrast, final_u, final_i, users, pos))

    def softmax_loss(
        self, users: torch.Tensor, pos: torch.Tensor, negatives: torch.Tensor, reg: float, temperature: float,
        *, contrast: Contrast | None = None,
    ) -> torch.Tensor:
        """Sampled softmax of each positive against negatives shared by the batch (final vectors); L2 on layer 0.

        ``contrast`` as for :meth:`bpr_loss`.
        """
        final_u, final_i = self._final(*self._layer0())
        u, p, n = final_u[..., users, :], final_i[..., pos, :], final_i[..., negatives, :]
        scores = u @ n.transpose(-2, -1)
        return (sampled_softmax((u * p).sum(dim=-1), scores, pos, negatives, temperature)
                + self._l2(reg, users, torch.cat([pos, negatives])) + self._contrast(contrast, final_u, final_i, users, pos))

    @staticmethod
    def _contrast(
        contrast: Contrast | None, final_u: torch.Tensor, final_i: torch.Tensor, users: torch.Tensor, items: torch.Tensor
    ) -> torch.Tensor | float:
        if contrast is None or not contrast[0]:
            return 0.0
        weight, temperature = contrast
        users, items = users[:CONTRAST_ROWS], items[:CONTRAST_ROWS]
        return weight * (info_nce(final_u, users, temperature) + info_nce(final_i, items, temperature))

    def _l2(self, reg: float, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor | float:
        """The L2 term on the batch's layer-0 vectors, summed over stacked variants (the caller shares ``reg`` out)."""
        if not reg:
            return 0.0
        return l2_penalty(reg, len(users), self.embedding.lookup("user", users), self.embedding.lookup("item", items))

    def all_scores(self, users: torch.Tensor) -> torch.Tensor:
        """Scores of ``users`` against every item, ``(len(users), n_items)`` (stacked for variants)."""
        final_u, final_i = self.propagate()
        return final_u[..., users, :] @ final_i.transpose(-2, -1)
