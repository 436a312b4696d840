"""Fitness of allocations, measured on a trained model with the allocation's masks applied.

The fitness of an allocation is the quality of the masked model divided by the
quality of the full model on the same validation users (BET, eq. 12), where
quality is the mean over k in {5, 10, 20} of (Recall@k + NDCG@k) / 2 (eq. 13).
A value of 1.0 means the allocation loses nothing against the full tables.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nas.core.allocation import Allocation
from nas.core.errors import ConfigError
from nas.embedding import MaskableEmbedding
from recsys.data import InteractionData
from recsys.metrics import FITNESS_KS, fitness_quality
from recsys.models import Backbone
from recsys.train import evaluate

__all__ = ["MaskedModelEvaluator"]


class MaskedModelEvaluator:
    """Scores allocations by masking one trained model: no retraining, a few seconds each.

    Args:
        model: a trained backbone whose embedding is a :class:`MaskableEmbedding`.
        data: the interactions; fitness uses the validation split.
        users: a fixed subset of validation users (faster, for the search phase), or ``None`` for all.
    """

    def __init__(self, model: Backbone, data: InteractionData, users: np.ndarray | None = None) -> None:
        if not isinstance(model.embedding, MaskableEmbedding):
            raise ConfigError("fitness needs a model built on a MaskableEmbedding")
        if data.valid.nnz == 0:
            raise ConfigError(
                "fitness is measured on validation data, and this dataset has none; "
                "give a validation split (--valid) or use a controller that needs no fitness (equal, frequency)"
            )
        self.model = model
        self.data = data
        self.users = users
        self._cache: dict[str, float] = {}
        self.reference = self._quality(None)

    def _quality(self, allocation: Allocation | None) -> float:
        embedding = self.model.embedding
        previous = embedding.allocation
        embedding.set_allocation(allocation)
        try:
            return fitness_quality(evaluate(self.model, self.data, "valid", FITNESS_KS, users=self.users))
        finally:
            embedding.set_allocation(previous)

    def fitness(self, allocations: Sequence[Allocation]) -> np.ndarray:
        """Quality of each allocation relative to the full model (cached by allocation fingerprint)."""
        values = []
        for allocation in allocations:
            key = allocation.fingerprint()
            if key not in self._cache:
                self._cache[key] = self._quality(allocation) / max(self.reference, 1e-12)
            values.append(self._cache[key])
        return np.asarray(values, dtype=np.float64)
