"""Three honest baselines every searched allocation should beat.

* ``equal``: every decision the same size, the budget spread evenly;
* ``random``: random feasible allocations, the best by fitness kept;
* ``frequency``: sizes grow with log-frequency, the classic hand rule.
"""

from __future__ import annotations

import numpy as np

from nas.core.plugins import register_controller
from nas.core.controller import Controller

__all__ = ["EqualSizes", "FrequencyRule", "RandomSearch"]


@register_controller("equal")
class EqualSizes(Controller):
    """The same size for every decision: what a fixed-width table gives under the budget."""

    needs_fitness = False

    def _ask(self, n: int) -> np.ndarray:
        return np.ones((n, self.space.n_decisions))


@register_controller("random")
class RandomSearch(Controller):
    """Uniformly random grid values per decision, projected to the budget; keeps the fittest."""

    def _ask(self, n: int) -> np.ndarray:
        grid = self.space.grid
        return grid[self.rng.integers(0, len(grid), size=(n, self.space.n_decisions))].astype(np.float64)


@register_controller("frequency")
class FrequencyRule(Controller):
    """Sizes proportional to ``log(1 + frequency)``, scaled to spend the budget.

    Rows never seen in training get the smallest size; the most frequent rows the
    largest the budget allows.
    """

    needs_context = True
    needs_fitness = False

    def _ask(self, n: int) -> np.ndarray:
        log_frequency = self.space.context()["log_frequency"]
        return np.tile(log_frequency, (n, 1))
