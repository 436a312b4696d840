"""The evaluator interface: the fitness of allocations, with the data and metric configured once.

Fitness is the quality of a model under an allocation divided by the quality of the
full model on the same evaluation data [BET, eq. 12]: 1.0 loses nothing, and the
numbers of different allocations compare directly.  The base class owns the ratio
and a cache keyed by the allocation's fingerprint, so an allocation proposed twice
(controllers do that) is measured once; an evaluator only says how to measure the
raw quality of a batch of allocations.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from nas.core.allocation import Allocation

__all__ = ["Evaluator"]


class Evaluator(ABC):
    """Measures allocations; ``fitness(allocations)`` is the whole public protocol."""

    #: Short name used in logs and summaries.
    name: str = ""

    def __init__(self) -> None:
        self._cache: dict[str, float] = {}
        self._reference: float | None = None
        self.measured = 0

    @property
    def reference(self) -> float:
        """Quality of the full model (no allocation), measured once."""
        if self._reference is None:
            self._reference = float(self._reference_quality())
        return self._reference

    def fitness(self, allocations: Sequence[Allocation]) -> np.ndarray:
        """Quality of each allocation relative to the full model, ``shape (len(allocations),)``.

        Allocations seen before are answered from the cache; the rest are measured together
        (one batch), so an evaluator that can share work between them does.
        """
        keys = [allocation.fingerprint() for allocation in allocations]
        todo: dict[str, Allocation] = {}
        for key, allocation in zip(keys, allocations):
            if key not in self._cache:
                todo.setdefault(key, allocation)
        if todo:
            qualities = np.asarray(self._qualities(list(todo.values())), dtype=np.float64)
            reference = max(self.reference, 1e-12)
            for key, quality in zip(todo, qualities):
                self._cache[key] = float(quality) / reference
            self.measured += len(todo)
        return np.asarray([self._cache[key] for key in keys], dtype=np.float64)

    @abstractmethod
    def _qualities(self, allocations: Sequence[Allocation]) -> Sequence[float]:
        """The raw quality of each (distinct, uncached) allocation."""

    @abstractmethod
    def _reference_quality(self) -> float:
        """The raw quality of the full model."""
