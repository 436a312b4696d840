"""Evolutionary search with nevergrad: any of its optimisers, chosen by name, over grouped decisions.

nevergrad brings tested implementations of CMA-ES, differential evolution, (1+1)
strategies and their portfolios; the controller only translates between its points in
``[0, 1]^groups`` and the space's decisions (:mod:`controllers._blackbox`).  nevergrad
minimises, so it is told the negated fitness.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from controllers._blackbox import GroupedBlackBox
from nas.core.plugins import register_controller
from nas.core.budget import Budget
from nas.core.errors import ConfigError
from nas.core.space import SearchSpace

__all__ = ["Evolutionary"]


@register_controller("nevergrad")
class Evolutionary(GroupedBlackBox):
    """A nevergrad optimiser (CMA-ES by default) over sizes per group of decisions.

    Args:
        space, budget, seed: as for every controller.
        optimizer: a name from ``nevergrad.optimizers.registry`` (``"CMA"``, ``"TwoPointsDE"``,
            ``"DiagonalCMA"``, ``"Portfolio"``, ``"NGOpt"``, ...).
        trials: the evaluations the optimiser plans for (some adapt their population to it).
        workers: most candidates asked at once (``--ask-batch``).
        groups: most groups of decisions searched.
    """

    def __init__(
        self,
        space: SearchSpace,
        budget: Budget,
        seed: int = 0,
        *,
        optimizer: str = "CMA",
        trials: int = 50,
        workers: int = 1,
        groups: int = 32,
    ) -> None:
        import nevergrad as ng  # imported when used: it takes a second to load

        if optimizer not in ng.optimizers.registry:
            close = [n for n in ng.optimizers.registry if n.lower().startswith(optimizer.lower()[:3])][:8]
            raise ConfigError(f"nevergrad has no optimizer {optimizer!r}; close names: {', '.join(close) or 'none'}")
        if trials < 1 or workers < 1:
            raise ConfigError(f"nevergrad needs trials >= 1 and workers >= 1, got {trials}, {workers}")
        self.optimizer_name, self.trials, self.workers = optimizer, int(trials), int(workers)
        self.max_ask = self.workers
        super().__init__(space, budget, seed, groups=groups)

    def _new_optimizer(self) -> Any:
        import nevergrad as ng

        parametrization = ng.p.Array(shape=(self.dimensions,), lower=0.0, upper=1.0)
        parametrization.random_state = np.random.RandomState(self.seed)
        return ng.optimizers.registry[self.optimizer_name](
            parametrization=parametrization, budget=self.trials, num_workers=self.workers
        )

    def _ask(self, n: int) -> np.ndarray:
        if n > self.workers:
            raise ConfigError(f"the nevergrad controller was built for {self.workers} candidates at once, asked for {n}; "
                              f"pass --controller-option workers={n}")
        return super()._ask(n)

    def _propose(self) -> tuple[Any, np.ndarray]:
        with _quiet_cma():
            candidate = self._optimizer.ask()
        return candidate, np.asarray(candidate.value, dtype=np.float64).copy()

    def _learn(self, handle: Any, point: np.ndarray, fitness: float) -> None:
        with _quiet_cma():
            if handle is None:
                handle = self._optimizer.parametrization.spawn_child(new_value=np.asarray(point, dtype=np.float64))
            self._optimizer.tell(handle, -fitness)


@contextmanager
def _quiet_cma() -> Iterator[None]:
    """Silence pycma's notes about injected solutions (nevergrad hands it one candidate at a time)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="cma")
        yield
