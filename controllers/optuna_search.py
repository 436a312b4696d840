"""Search with Optuna: any of its samplers over grouped decisions, through its ask-and-tell interface.

The study lives in memory, seeded, so a run is deterministic and resumes by replay
(:mod:`controllers._blackbox`).  Given ``storage`` (an Optuna storage URL such as
``sqlite:///search.db``), every told trial is also written to a study of that name,
so the search shows in Optuna's own tools (``optuna-dashboard``, ``optuna trials``); a
resumed run adds only the trials that storage does not hold yet.
"""

from __future__ import annotations

import importlib.util
import warnings
from typing import Any

import numpy as np

from controllers._blackbox import GroupedBlackBox
from nas.core.plugins import register_controller
from nas.core.budget import Budget
from nas.core.errors import ConfigError
from nas.core.space import SearchSpace

__all__ = ["SAMPLERS", "OptunaSearch"]

#: Optuna samplers by name (classes of ``optuna.samplers``); each is built with the controller's seed.
SAMPLERS = {"tpe": "TPESampler", "cmaes": "CmaEsSampler", "random": "RandomSampler", "qmc": "QMCSampler", "gp": "GPSampler"}


@register_controller("optuna")
class OptunaSearch(GroupedBlackBox):
    """An Optuna sampler (TPE by default) choosing a grid size per group of decisions.

    Args:
        space, budget, seed: as for every controller.
        sampler: ``"tpe"``, ``"cmaes"``, ``"random"``, ``"qmc"`` or ``"gp"``.
        storage: an Optuna storage URL to mirror the trials to, or ``None``.
        study: the mirrored study's name.
        groups: most groups of decisions searched.
    """

    def __init__(
        self,
        space: SearchSpace,
        budget: Budget,
        seed: int = 0,
        *,
        sampler: str = "tpe",
        storage: str | None = None,
        study: str = "embnas",
        groups: int = 32,
    ) -> None:
        if sampler not in SAMPLERS:
            raise ConfigError(f"unknown Optuna sampler {sampler!r}; use one of {', '.join(SAMPLERS)}")
        if sampler == "cmaes" and importlib.util.find_spec("cmaes") is None:
            raise ConfigError("Optuna's cmaes sampler needs the cmaes package: pip install cmaes "
                              "(or use the nevergrad controller, whose default is CMA-ES)")
        self.sampler_name, self.storage, self.study_name = sampler, storage, study
        super().__init__(space, budget, seed, groups=groups)
        self._mirror = None

    def _new_optimizer(self) -> Any:
        import optuna  # imported when used: it takes a second to load

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        with warnings.catch_warnings():  # QMC and GP samplers announce that they are experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = getattr(optuna.samplers, SAMPLERS[self.sampler_name])(seed=self.seed)
        return optuna.create_study(direction="maximize", sampler=sampler)

    def _distributions(self) -> dict[str, Any]:
        """``g<i>``: the grid index of group ``i``'s size; with precisions ``p<i>``: its precision."""
        import optuna

        high = len(self.space.grid) - 1
        sizes = {f"g{i}": optuna.distributions.IntDistribution(0, high) for i in range(self.groups.n_groups)}
        last = len(self.space.precisions) - 1
        return {**sizes, **{f"p{i}": optuna.distributions.IntDistribution(0, last)
                            for i in range(self.groups.n_groups if self.space.precisions else 0)}}

    def _point(self, params: dict[str, Any]) -> np.ndarray:
        high, last = max(len(self.space.grid) - 1, 1), max(len(self.space.precisions) - 1, 1)
        sizes = [params[f"g{i}"] / high for i in range(self.groups.n_groups)]
        precisions = [params[f"p{i}"] / last for i in range(self.groups.n_groups if self.space.precisions else 0)]
        return np.array(sizes + precisions, dtype=np.float64)

    def _propose(self) -> tuple[Any, np.ndarray]:
        trial = self._optimizer.ask(self._distributions())
        return trial, self._point(trial.params)

    def _learn(self, handle: Any, point: np.ndarray, fitness: float) -> None:
        import optuna

        if handle is None:
            high, last, n = len(self.space.grid) - 1, len(self.space.precisions) - 1, self.groups.n_groups
            params = {f"g{i}": int(round(v * high)) for i, v in enumerate(point[:n])}
            params.update({f"p{i}": int(round(v * last)) for i, v in enumerate(point[n:])})
            self._optimizer.add_trial(
                optuna.trial.create_trial(params=params, distributions=self._distributions(), value=fitness)
            )
        else:
            self._optimizer.tell(handle, fitness)
        if self.storage is not None:
            self._mirror_last()

    def _mirror_last(self) -> None:
        """Copy the study's trials that the storage lacks (after a resume: only the new ones)."""
        import optuna

        if self._mirror is None:
            self._mirror = optuna.create_study(storage=self.storage, study_name=self.study_name, direction="maximize",
                                               load_if_exists=True)
        done = len(self._mirror.trials)
        for trial in self._optimizer.trials[done:]:
            if trial.state == optuna.trial.TrialState.COMPLETE:
                self._mirror.add_trial(optuna.trial.create_trial(
                    params=trial.params, distributions=trial.distributions, value=trial.value,
                    user_attrs={"embnas_seed": self.seed},
                ))
