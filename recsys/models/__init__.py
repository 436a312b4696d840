"""Recommender backbones: each takes an :class:`~recsys.embedding.EmbeddingProvider`.

A backbone is anything that satisfies the small :class:`Backbone` protocol, so
the BPR trainer (:func:`recsys.train.train_bpr`) and the full-ranking
evaluation work unchanged for MF, NeuMF, LightGCN and NGCF. A top-k backbone that
also offers ``softmax_loss(users, pos, negatives, reg, temperature)`` (all four do) trains
with the sampled softmax too (``loss="softmax"``, :func:`recsys.train.top_k_loss`).
Click models (FM, DeepFM, DCN-v2) satisfy the :class:`CTRBackbone` protocol instead.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from recsys.embedding import EmbeddingProvider

__all__ = ["MF", "NGCF", "Backbone", "LightGCN", "NeuMF", "CTRBackbone", "DCNv2", "DeepFM", "FM"]


@runtime_checkable
class Backbone(Protocol):
    """What the BPR trainer and the evaluator ask of a top-k backbone.

    Attributes:
        embedding: the provider of the ``"user"`` and ``"item"`` tables; the
            backbone reads its vectors only through it, so a maskable provider
            applies an allocation without the backbone knowing.
    """

    embedding: EmbeddingProvider

    def bpr_loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, reg: float) -> torch.Tensor:
        """Scalar BPR loss of a batch of (user, positive, negative) int64 id triples."""
        ...

    def all_scores(self, users: torch.Tensor) -> torch.Tensor:
        """Scores of ``users`` (int64, shape ``(b,)``) against every item: a fresh ``(b, n_items)`` tensor."""
        ...


from recsys.models.ctr import FM, CTRBackbone, DCNv2, DeepFM  # noqa: E402  (click models, one table per field)
from recsys.models.lightgcn import LightGCN  # noqa: E402  (the protocol is defined first)
from recsys.models.mf import MF  # noqa: E402
from recsys.models.neumf import NeuMF  # noqa: E402
from recsys.models.ngcf import NGCF  # noqa: E402
