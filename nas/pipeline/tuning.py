"""Tune a backbone's learning rate and L2 on validation: a recipe for data nobody measured one on.

A recipe (:mod:`nas.pipeline.recipes`) is measured on the shared datasets; on other data its
learning rate and L2 may be far from their best, and every compressed model is then compared
with a weak full model.  :func:`tune_training` runs an Optuna study (TPE, seeded by the run's
seed) over the two, around the run's own options: each trial trains the plain full model
with early stopping and scores its best validation metric; the test split is read only for
the winner.  The run's own options are the first trial, so tuning never returns options that
validate worse than the ones it started from.

Each trial's model is the run's reference model for those options (:func:`full_reference`),
trained into the reference cache.  So a study killed half-way and started again reads the
finished trials back (the seeded sampler proposes them again, in the same order) and goes on
with the one it was training, from its last checkpoint; and a search run afterwards with the
winning options finds its reference already trained.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from nas.core.errors import ConfigError
from nas.pipeline.config import SearchConfig, TrainingOptions
from nas.pipeline.build import Data
from nas.pipeline.data import load_data
from nas.pipeline.reference import Reference, full_reference
from nas.pipeline.search import open_run
from nas.pipeline.tasks import task_for

__all__ = ["DEFAULT_RANGES", "Trial", "Tuning", "format_options", "tune_training"]

#: How far each tuned option may move from the run's own value: (down, up) factors, on a log scale.
DEFAULT_RANGES: dict[str, tuple[float, float]] = {"lr": (10.0, 10.0), "reg": (100.0, 100.0)}
#: The range of an L2 weight of 0 (no L2 to scale around).
_ZERO_REG = (1e-7, 1e-3)


@dataclass(frozen=True)
class Trial:
    """One trained full model of the study.

    Attributes:
        options: the tuned options it trained with (``lr``, ``reg``).
        valid: its best validation metrics.
        seconds: its training time (when it was trained, by whichever process).
        cached: whether it came from the reference cache rather than being trained now.
    """

    options: Mapping[str, float]
    valid: Mapping[str, float]
    seconds: float
    cached: bool


@dataclass(frozen=True)
class Tuning:
    """What a study found.

    Attributes:
        metric: the validation metric maximised.
        trials: every trial, in the order they ran (the first is the run's own options).
        best: the index of the best trial in ``trials``.
        train: the run's training options with the best trial's values.
        test: the test metrics of the best trial's model (the only test read).
        seconds: this call's wall time (cached trials cost only their reading).
    """

    metric: str
    trials: tuple[Trial, ...]
    best: int
    train: TrainingOptions
    test: Mapping[str, float]
    seconds: float

    @property
    def trained_seconds(self) -> float:
        """What the study's trainings cost, wherever and whenever they ran: its whole price."""
        return sum(trial.seconds for trial in self.trials)

    def table(self) -> str:
        """The trials as a text table, the best one marked ``*``."""
        names = list(self.trials[0].options)
        headers = ["trial", *names, f"valid {self.metric}", "seconds"]
        widths = [max(10, len(header)) for header in headers]
        lines = ["  ".join(f"{header:>{width}}" for header, width in zip(headers, widths))]
        for index, trial in enumerate(self.trials):
            cells = [str(index), *(f"{trial.options[name]:.3g}" for name in names),
                     f"{trial.valid[self.metric]:.4f}", f"{trial.seconds:.1f}"]
            mark = " *" if index == self.best else (" (cached)" if trial.cached else "")
            lines.append("  ".join(f"{cell:>{width}}" for cell, width in zip(cells, widths)) + mark)
        return "\n".join(lines)


def tune_training(
    config: SearchConfig,
    data: Data | None = None,
    *,
    trials: int = 12,
    ranges: Mapping[str, tuple[float, float]] | None = None,
    progress: bool = True,
    reference_cache: str | Path | None = None,
) -> Tuning:
    """Tune ``config``'s learning rate and L2 on validation, by training its plain full model ``trials`` times.

    Args:
        config: the run whose backbone, data, recipe and seed are tuned for; its training
            options are the first trial and the centre of the ranges.
        data: the data, when given in memory (else ``config.data`` is loaded).
        trials: full trainings, the first included (at least 1).
        ranges: per tuned option (``lr``, ``reg``), how far it may move down and up from the
            run's value, as factors (:data:`DEFAULT_RANGES`).
        progress: draw the trainings' progress bars.
        reference_cache: where the trained models are cached (:func:`full_reference`).

    Raises:
        ConfigError: fewer than one trial, an option that cannot be tuned, or data without a
            validation split (there would be nothing to tune on).
    """
    import optuna

    if trials < 1:
        raise ConfigError(f"tuning needs at least one trial, got {trials}")
    ranges = dict(DEFAULT_RANGES if ranges is None else ranges)
    unknown = sorted(set(ranges) - set(DEFAULT_RANGES))
    if unknown or not ranges:
        raise ConfigError(f"tuning adjusts {' and '.join(DEFAULT_RANGES)}; cannot tune {unknown or 'nothing'}")
    for name, (down, up) in ranges.items():
        if not (down >= 1 and up >= 1 and math.isfinite(down * up)):
            raise ConfigError(f"the range of {name} is a pair of factors >= 1 (down, up), got {(down, up)}")
    started = time.perf_counter()
    base = config.train
    assert base is not None  # a configured run always has its training options
    bounds = {name: _bounds(getattr(base, name), factors, name) for name, factors in ranges.items()}
    data = load_data(config.data) if data is None else data  # once, not once per training
    task = task_for(data, base)
    if not task.has_validation:
        raise ConfigError("tuning scores each training on validation, and this dataset has no validation split")
    metric = task.headline[0][0]  # what early stopping selects on: Recall@20, or AUC for clicks

    done: list[Trial] = []
    references: list[Reference] = []

    def objective(trial: optuna.Trial) -> float:
        values = {name: trial.suggest_float(name, low, high, log=True) for name, (low, high) in bounds.items()}
        ctx = open_run(replace(config, train=replace(base, **values)), data, progress=progress,
                       reference_cache=reference_cache)
        try:
            reference = full_reference(ctx, ctx.reference_cache)
        finally:
            ctx.run.close()
        done.append(Trial(values, dict(reference.metrics["valid"]), reference.seconds, not reference.trained_here))
        references.append(reference)
        if progress:
            options = ", ".join(f"{name} {value:.3g}" for name, value in values.items())
            spent = "cached" if done[-1].cached else f"{reference.seconds:.0f} s"
            print(f"tuning: training {len(done)} of {trials} ({options}): valid {metric} "
                  f"{reference.metrics['valid'][metric]:.4f} ({spent})", file=sys.stderr, flush=True)
        return float(reference.metrics["valid"][metric])

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=config.seed))
    study.enqueue_trial({name: min(max(getattr(base, name), low), high) for name, (low, high) in bounds.items()})
    study.optimize(objective, n_trials=trials, catch=())
    best = max(range(len(done)), key=lambda i: (done[i].valid[metric], -i))
    return Tuning(metric, tuple(done), best, replace(base, **done[best].options),
                  dict(references[best].metrics["test"]), time.perf_counter() - started)


def _bounds(value: float, factors: tuple[float, float], name: str) -> tuple[float, float]:
    """The log-scale interval of ``name`` around ``value``: ``value / down .. value * up``."""
    if value <= 0:
        if name != "reg":
            raise ConfigError(f"cannot tune {name} from {value}: it must be > 0")
        return _ZERO_REG
    down, up = factors
    return value / down, value * up


def format_options(train: TrainingOptions, names: Sequence[str]) -> str:
    """The command-line flags that set ``names`` to ``train``'s values (``--lr 0.0031 --reg 0.00021``)."""
    return " ".join(f"--{name.replace('_', '-')} {getattr(train, name):.3g}" for name in names)
