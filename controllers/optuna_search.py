"""Search with Optuna: any of its samplers over grouped decisions, through its ask-and-tell interface.

The study lives in memory, seeded, so a run is deterministic and resumes by replay
(:mod:`controllers._blackbox`).  Given ``storage`` (an Optuna storage URL such as
``sqlite:///search.db``, or ``journal:PATH`` for Optuna's journal file, which needs no
database), every told trial is also written to a study of that name, so the search shows
in Optuna's own tools (``optuna-dashboard``, ``optuna trials``); a resumed run adds only
the trials that storage does not hold yet.

With ``shared=True`` the study itself lives in the storage, as Optuna's distributed
optimisation has it: several ``embnas`` workers (give each its own ``--seed``) search one
study, and each worker's sampler learns from every worker's finished trials.  What that
gives up, against the run folder's own log:

* a worker's proposals depend on when the others finish, so a seed no longer fixes the
  run (its own log still records exactly what it measured, and its result is reproducible
  from that log: ``embnas evaluate``, ``embnas export``);
* a resumed worker does not replay its history into the study (the study already holds
  it); trials it had asked for but not told when it stopped are marked failed; a worker
  stopped between logging a round's trials and saving its state cannot resume (asked again,
  the study proposes something else, which the run refuses): start it under a new name;
* the study holds points of the controller's groups, not allocations: every worker must
  search the same data, space, budget and ``groups`` (the study refuses other distributions).
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
        storage: an Optuna storage URL (or ``journal:PATH``) to mirror the trials to, or ``None``.
        study: the study's name in ``storage``.
        shared: search the study in ``storage`` itself, together with other workers.
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
        shared: bool = False,
        groups: int = 32,
    ) -> None:
        if shared and storage is None:
            raise ConfigError("a shared Optuna study needs a storage: storage=sqlite:///search.db or storage=journal:PATH")
        if sampler not in SAMPLERS:
            raise ConfigError(f"unknown Optuna sampler {sampler!r}; use one of {', '.join(SAMPLERS)}")
        if sampler == "cmaes" and importlib.util.find_spec("cmaes") is None:
            raise ConfigError("Optuna's cmaes sampler needs the cmaes package: pip install cmaes "
                              "(or use the nevergrad controller, whose default is CMA-ES)")
        self.sampler_name, self.storage, self.study_name, self.shared = sampler, storage, study, bool(shared)
        super().__init__(space, budget, seed, groups=groups)
        # The mirror is opened now, so a storage that cannot be opened is refused before any training.
        self._mirror = self._stored_study() if storage is not None and not self.shared else None

    def _new_optimizer(self) -> Any:
        import optuna  # imported when used: it takes a second to load

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        with warnings.catch_warnings():  # QMC and GP samplers announce that they are experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = getattr(optuna.samplers, SAMPLERS[self.sampler_name])(seed=self.seed)
        if self.shared:
            return self._stored_study(sampler=sampler)
        return optuna.create_study(direction="maximize", sampler=sampler)

    def _stored_study(self, **options: Any) -> Any:
        """The study named ``study`` in ``storage``, made if missing.

        Raises:
            ConfigError: the storage cannot be opened (naming it and what Optuna said).
        """
        import optuna

        try:
            return optuna.create_study(direction="maximize", storage=_storage(self.storage), study_name=self.study_name,
                                       load_if_exists=True, **options)
        except Exception as error:  # noqa: BLE001 - Optuna and its storage backends raise many types
            raise ConfigError(f"the Optuna storage {self.storage!r} cannot be opened ({type(error).__name__}: "
                              f"{str(error)[:200]}); give an RDB URL such as sqlite:///search.db, or journal:PATH "
                              "in a folder that exists") from None

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
        if self.shared:
            trial.set_user_attr("embnas_seed", self.seed)
        return trial, self._point(trial.params)

    def _load_state(self, state: Any) -> None:
        if not self.shared:
            super()._load_state(state)
            return
        import optuna

        # The shared study already holds this worker's trials: take the history back without
        # replaying it, and fail what this worker asked for and never told.
        points = np.asarray(state["points"], dtype=np.float64).reshape(-1, self.dimensions)
        self.history_points, self.history_values = points, np.asarray(state["values"], dtype=np.float64)
        self.history_proposed = np.asarray(state["proposed"], dtype=bool)
        self.history_round = np.asarray(state["round"], dtype=np.int64)
        for trial in self._optimizer.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if trial.user_attrs.get("embnas_seed") == self.seed:
                self._optimizer.tell(trial.number, state=optuna.trial.TrialState.FAIL)

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
        if self.storage is not None and not self.shared:
            self._mirror_last()

    def _mirror_last(self) -> None:
        """Copy the study's trials that the storage lacks (after a resume: only the new ones)."""
        import optuna

        done = len(self._mirror.trials)
        for trial in self._optimizer.trials[done:]:
            if trial.state == optuna.trial.TrialState.COMPLETE:
                self._mirror.add_trial(optuna.trial.create_trial(
                    params=trial.params, distributions=trial.distributions, value=trial.value,
                    user_attrs={"embnas_seed": self.seed},
                ))


def _storage(url: str) -> Any:
    """An Optuna storage: ``journal:PATH`` is Optuna's journal file, anything else its RDB URL."""
    import optuna

    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    return url
