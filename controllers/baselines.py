"""Three honest baselines every searched allocation should beat.

* ``equal``: every decision the same size, the budget spread evenly;
* ``random``: random feasible allocations, the best by fitness kept;
* ``frequency``: sizes grow with log-frequency, the classic hand rule.

Searching precisions too (``--precisions``), the rules store every row at one precision
(option ``precision``) and spend the budget on sizes at that precision; ``random`` draws a
precision per decision as it draws a size.  Left to them, the rules take the precision at
which equal sizes keep the most dimensions, the widest of those: float32 when the budget
counts values (every precision costs the same), and under a byte budget the narrowest
precision until rows reach ``d_max``, then the widest that still does (at 5 % of Last.fm's
float32 bytes int4 keeps 19 dimensions a row to float32's 3, and scores 43 % higher:
docs/results.md, section 15.3).
"""

from __future__ import annotations

import numpy as np

from nas.core.budget import Budget
from nas.core.controller import Controller
from nas.core.errors import ConfigError
from nas.core.plugins import register_controller
from nas.core.space import SearchSpace

__all__ = ["EqualSizes", "FrequencyRule", "RandomSearch", "fullest_precision"]


class _OnePrecision(Controller):
    """A rule that stores every row at one precision when the space searches precisions.

    Args:
        precision: the precision of every row, one of the space's (default:
            :func:`fullest_precision`); only with precisions.
    """

    searches_precision = True

    def __init__(self, space: SearchSpace, budget: Budget, seed: int = 0, precision: str | None = None) -> None:
        super().__init__(space, budget, seed)
        if precision is not None and precision not in space.precisions:
            among = f"one of the searched {', '.join(space.precisions)}" if space.precisions else "used with --precisions"
            raise ConfigError(f"the {self.name} controller's precision {precision!r} must be {among}")
        self.precision = (precision or fullest_precision(space.precisions, budget)) if space.precisions else None

    def _rows(self, sizes: np.ndarray) -> np.ndarray:
        """``(n, n_decisions)`` sizes as whole decision vectors, every decision at the rule's precision."""
        index = self.space.precisions.index(self.precision) if self.precision is not None else 0
        return self.space.join(sizes, np.full_like(sizes, index))


def fullest_precision(precisions: tuple[str, ...], budget: Budget) -> str:
    """The precision at which every row at one size keeps the most dimensions (at most ``d_max``); the widest on a tie.

    Under a budget that counts values every precision costs the same, so this is the
    widest; under a byte budget it is the narrowest until a row reaches ``d_max``, then
    the widest precision that still gives every row ``d_max``.

    Args:
        precisions: the candidates, widest first (a space's precisions).
        budget: the budget the rows share.
    """
    rows = budget.total_rows
    best, best_dims = precisions[0], -1
    for name in precisions:
        per_value, per_row = budget.row_cost(name)
        dims = min(budget.d_max, (budget.max_cost - rows * per_row) // (rows * per_value))
        if dims > best_dims:
            best, best_dims = name, dims
    return best


@register_controller("equal")
class EqualSizes(_OnePrecision):
    """The same size for every decision: what a fixed-width table gives under the budget."""

    needs_fitness = False

    def _ask(self, n: int) -> np.ndarray:
        return self._rows(np.ones((n, self.space.n_decisions)))


@register_controller("random")
class RandomSearch(Controller):
    """Uniformly random grid values per decision, projected to the budget; keeps the fittest."""

    searches_precision = True

    def _ask(self, n: int) -> np.ndarray:
        grid = self.space.grid
        sizes = grid[self.rng.integers(0, len(grid), size=(n, self.space.n_decisions))].astype(np.float64)
        if not self.space.precisions:  # no draw of precisions: the sizes' draws stay what they always were
            return sizes
        return self.space.join(sizes, self.rng.integers(0, len(self.space.precisions), size=sizes.shape))


@register_controller("frequency")
class FrequencyRule(_OnePrecision):
    """Sizes proportional to ``log(1 + frequency)``, scaled to spend the budget.

    Rows never seen in training get the smallest size; the most frequent rows the
    largest the budget allows.
    """

    needs_context = True
    needs_fitness = False

    def _ask(self, n: int) -> np.ndarray:
        log_frequency = self.space.context()["log_frequency"]
        return self._rows(np.tile(log_frequency, (n, 1)))
