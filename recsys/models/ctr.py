"""CTR backbones over one embedding table per field: FM, DeepFM and DCN-v2.

Each model takes an :class:`~recsys.embedding.EmbeddingProvider` with one table
per field (named after the field, as :meth:`recsys.data.CTRData.rows` gives
them) and the field order of the id matrices. An ``(b, n_fields)`` batch of ids
is looked up field by field into ``(b, n_fields, dim)`` vectors. A provider
serving ``A`` masked variants at once returns ``(A, b, dim)`` per field (a
table it serves in full stays ``(b, dim)`` and is broadcast), and the models
then return ``(A, b)`` logits: every layer below acts on the last dimension.

**First-order term.** FM and DeepFM add ``w0 + Σ_f w_f[x_f]``, one scalar per row
of every field, kept as plain parameters of the model, *not* in the provider:
the search sizes vectors of a common width ``dim`` (a row keeps its leading
``k`` values), and a scalar cannot be cut that way; keeping the bias whole costs
``1/dim`` of the table and lets a row whose vector is cut to nothing still say
how often its value clicks. [LERSBench]'s code likewise keeps this term outside
the compressed embedding (a separate one-wide table), and the sparsity it
reports counts the embedding table only (section 5.2).

Settings follow [LERSBench, Table 4]: ``d = 16``; DeepFM's MLP 400-400-400;
DCN's MLP 512-512 after ``L = 3`` cross layers, stacked (cross network, then
the deep network on its output, as in [LERSBench]'s DCN code). [LERSBench]'s DCN is
DCN-Mix (low-rank experts, ``r = 64``, ``K = 4``); ours is DCN-v2 with
full-rank cross matrices, the form [DCN-v2, eq. 1] defines. Dropout after every
hidden layer (searched in [0, 1] in [LERSBench]). Short names: docs/references.md.
No batch normalisation: its batch statistics would mix the masked variants a
supernet trains in one batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from recsys.embedding import EmbeddingProvider

__all__ = ["DCN_STRUCTURES", "FM", "CTRBackbone", "DCNv2", "DeepFM"]

DCN_STRUCTURES = ("stacked", "parallel")
"""How DCN-v2 combines its cross and deep networks ([DCN-v2, Figure 2])."""


@runtime_checkable
class CTRBackbone(Protocol):
    """What the CTR trainer and evaluator ask of a click model.

    Attributes:
        embedding: the provider of the field tables; the model reads its vectors
            only through it, so a maskable provider applies an allocation
            without the model knowing.
    """

    embedding: EmbeddingProvider

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Click logits of an ``(b, n_fields)`` int64 id batch: ``(b,)``, or ``(A, b)`` for stacked variants."""
        ...

    def ctr_loss(self, x: torch.Tensor, y: torch.Tensor, reg: float) -> torch.Tensor:
        """Scalar loss of a batch: binary cross-entropy with logits plus ``reg``-weighted L2 on the looked-up vectors."""
        ...


def _hidden_layers(width: int, hidden: Sequence[int], dropout: float) -> tuple[nn.Sequential, int]:
    """Linear-ReLU-Dropout blocks of sizes ``hidden``, and the width they end with."""
    layers: list[nn.Module] = []
    for size in hidden:
        layers += [nn.Linear(width, int(size)), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = int(size)
    return nn.Sequential(*layers), width


class _FieldModel(nn.Module):
    """Shared parts: field lookups, the first-order term, the loss."""

    def __init__(self, embedding: EmbeddingProvider, fields: Sequence[str], *, first_order: bool, dropout: float) -> None:
        super().__init__()
        kind = type(self).__name__
        if not isinstance(embedding, EmbeddingProvider):
            raise TypeError(f"{kind} needs an EmbeddingProvider (dim, rows, lookup, table), got {type(embedding).__name__}")
        fields = tuple(str(f) for f in fields)
        if not fields:
            raise ValueError(f"{kind} needs at least one field")
        missing = [f for f in fields if f not in embedding.rows]
        if missing:
            raise ValueError(
                f"{kind} needs one table per field; the embedding lacks {missing} (has {sorted(embedding.rows)})"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.embedding = embedding
        self.fields = fields
        self.dropout = float(dropout)
        self.linear: nn.Parameter | None = None
        if first_order:
            rows = torch.tensor([int(embedding.rows[f]) for f in fields], dtype=torch.int64)
            self.linear = nn.Parameter(torch.zeros(int(rows.sum())))
            self.bias = nn.Parameter(torch.zeros(()))
            # Where each field's scalars start in ``linear``; derived from the tables, so not saved.
            self.register_buffer("offsets", torch.cumsum(rows, 0) - rows, persistent=False)

    @property
    def dim(self) -> int:
        """Width of every field's vector."""
        return int(self.embedding.dim)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Vectors of an id batch ``(b, n_fields)``: ``(b, n_fields, dim)``, or ``(A, b, n_fields, dim)`` for variants."""
        if x.dim() != 2 or x.shape[1] != len(self.fields):
            raise ValueError(f"ids must have shape (batch, {len(self.fields)}), got {tuple(x.shape)}")
        vectors = [self.embedding.lookup(name, x[:, k]) for k, name in enumerate(self.fields)]
        if len({v.shape for v in vectors}) > 1:  # some tables serve variants, others are full: broadcast
            vectors = list(torch.broadcast_tensors(*vectors))
        return torch.stack(vectors, dim=-2)

    def first_order(self, x: torch.Tensor) -> torch.Tensor:
        """``w0 + Σ_f w_f[x_f]`` per row, ``(b,)``; zeros when the model has no first-order term."""
        if self.linear is None:
            return torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
        return self.linear[x + self.offsets].sum(dim=-1) + self.bias

    def _scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, looked-up vectors)`` of a batch."""
        raise NotImplementedError

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Click logits of ``x`` (int64 ``(b, n_fields)``): ``(b,)``, or ``(A, b)`` when the provider serves ``A`` variants."""
        return self._scores(x)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x)

    def ctr_loss(self, x: torch.Tensor, y: torch.Tensor, reg: float) -> torch.Tensor:
        """Mean binary cross-entropy with logits, plus L2 on the looked-up vectors.

        ``mean BCE(logit, y) + reg · Σ ‖e‖² / 2 / n``, the squared norms summed over the
        batch's fields and rows and ``n`` the number of logits, so ``reg`` weighs one
        example and does not change with the batch size; for ``A`` stacked variants
        both terms are means over variants too. The first-order scalars and the
        network weights are not regularised here (give the optimiser a weight decay).

        Args:
            x: int64 ids ``(b, n_fields)``.
            y: 0/1 labels ``(b,)`` (any float or integer dtype).
            reg: weight of the L2 term ([LERSBench] searches λ in [1e-5, 1e-2]).
        """
        logits, vectors = self._scores(x)
        target = y.to(logits.dtype).expand_as(logits)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, target)
        if reg:
            loss = loss + reg * 0.5 * vectors.square().sum() / logits.numel()
        return loss


def _pairwise(vectors: torch.Tensor) -> torch.Tensor:
    """FM's second-order term ``Σ_{i<j} <e_i, e_j>`` by ``((Σ e)² − Σ e²) / 2``, over the field axis (-2)."""
    total = vectors.sum(dim=-2)
    return 0.5 * (total.square() - vectors.square().sum(dim=-2)).sum(dim=-1)


class FM(_FieldModel):
    """Factorisation machine: ``w0 + Σ w_f[x_f] + Σ_{i<j} <e_i, e_j>`` [FM].

    Args:
        embedding: one table per field.
        fields: the field (= table) of each id column, e.g. ``data.fields``.
    """

    def __init__(self, embedding: EmbeddingProvider, fields: Sequence[str]) -> None:
        super().__init__(embedding, fields, first_order=True, dropout=0.0)

    def _scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vectors = self.embed(x)
        return self.first_order(x) + _pairwise(vectors), vectors


class DeepFM(_FieldModel):
    """FM plus an MLP on the concatenated field vectors, sharing the embedding [DeepFM].

    Args:
        embedding: one table per field.
        fields: the field (= table) of each id column.
        hidden: MLP sizes ([LERSBench, Table 4]: 400, 400, 400).
        dropout: after every hidden layer.
    """

    def __init__(
        self,
        embedding: EmbeddingProvider,
        fields: Sequence[str],
        hidden: Sequence[int] = (400, 400, 400),
        dropout: float = 0.0,
    ) -> None:
        super().__init__(embedding, fields, first_order=True, dropout=dropout)
        self.deep, width = _hidden_layers(len(self.fields) * self.dim, hidden, dropout)
        self.out = nn.Linear(width, 1)

    def _scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vectors = self.embed(x)
        deep = self.out(self.deep(vectors.flatten(-2))).squeeze(-1)
        return self.first_order(x) + _pairwise(vectors) + deep, vectors


class DCNv2(_FieldModel):
    """Deep & Cross Network v2: full-rank cross layers and an MLP [DCN-v2].

    A cross layer maps ``x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l`` with ``W_l`` a full
    ``D × D`` matrix, ``D = n_fields · dim`` and ``x_0`` the concatenated vectors.
    ``"stacked"`` feeds ``x_L`` to the MLP and the MLP's output to the logit
    ([LERSBench]'s DCN); ``"parallel"`` runs the MLP on ``x_0`` and reads the logit off
    ``[x_L, MLP(x_0)]``.

    Args:
        embedding: one table per field.
        fields: the field (= table) of each id column.
        cross_layers: ``L`` ([LERSBench, Table 4]: 3).
        hidden: MLP sizes ([LERSBench, Table 4]: 512, 512).
        dropout: after every hidden layer.
        structure: ``"stacked"`` or ``"parallel"``.
        first_order: add FM's per-row scalars; off by default, as in [DCN-v2] and
            [LERSBench]'s code, since the first cross layer already holds linear terms.
    """

    def __init__(
        self,
        embedding: EmbeddingProvider,
        fields: Sequence[str],
        cross_layers: int = 3,
        hidden: Sequence[int] = (512, 512),
        dropout: float = 0.0,
        structure: str = "stacked",
        first_order: bool = False,
    ) -> None:
        super().__init__(embedding, fields, first_order=first_order, dropout=dropout)
        if structure not in DCN_STRUCTURES:
            raise ValueError(f"structure must be one of {DCN_STRUCTURES}, got {structure!r}")
        if cross_layers < 0:
            raise ValueError(f"cross_layers must be >= 0, got {cross_layers}")
        self.structure = structure
        width = len(self.fields) * self.dim
        self.cross = nn.ModuleList(nn.Linear(width, width) for _ in range(int(cross_layers)))
        self.deep, deep_width = _hidden_layers(width, hidden, dropout)
        self.out = nn.Linear(deep_width if structure == "stacked" else width + deep_width, 1)

    def _scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vectors = self.embed(x)
        x0 = vectors.flatten(-2)
        crossed = x0
        for layer in self.cross:
            crossed = x0 * layer(crossed) + crossed
        if self.structure == "stacked":
            top = self.deep(crossed)
        else:
            top = torch.cat([crossed, self.deep(x0)], dim=-1)
        return self.out(top).squeeze(-1) + self.first_order(x), vectors
