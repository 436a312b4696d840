"""The library API: :func:`search` and :func:`resume`, what ``embnas search`` and ``embnas resume`` call.

Everything the command line offers is a keyword here, and the data may live in
memory.  ``run_dir=None`` keeps the whole run in memory (only the shared reference cache is written); a path
gives the crash-safe run folder of the command line, which :func:`resume` continues.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from nas.core.errors import ConfigError
from nas.pipeline.backbones import backbone_task
from nas.pipeline.config import FineTuneConfig, SearchConfig, SupernetOptions, TrainingOptions
from nas.pipeline.data import DataSpec
from nas.pipeline.executors import Executor, make_executor
from nas.pipeline.recipes import training_defaults
from nas.pipeline.result import SearchResult
from nas.pipeline.search import resume_run, run_search
from nas.pipeline.tuning import Tuning, tune_training
from recsys.data import CTRData, InteractionData

__all__ = ["configure", "front", "resume", "search", "tune"]

#: Options given as dictionaries that stand for an options dataclass.
_NESTED = {"supernet": SupernetOptions, "finetune": FineTuneConfig}


def search(
    data: InteractionData | CTRData | DataSpec | str | Path | None = None,
    *,
    budget: str | float | int = SearchConfig.budget,
    model: str = SearchConfig.model,
    controller: str = SearchConfig.controller,
    space: str = SearchConfig.space,
    trials: int | None = SearchConfig.trials,
    seed: int = SearchConfig.seed,
    train: TrainingOptions | Mapping[str, Any] | None = None,
    recipe: str | None = None,
    run_dir: str | Path | None = None,
    runs_root: str | Path | None = None,
    progress: bool = True,
    reference_cache: str | Path | None = None,
    executor: str | Executor = "local",
    workers: int | None = None,
    ray_address: str | None = None,
    ddp: int = 1,
    **options: Any,
) -> SearchResult:
    """Search embedding sizes under a hard budget: train, search, retrain the best, test and export.

    Args:
        data: the data: :class:`~recsys.data.InteractionData` or :class:`~recsys.data.CTRData`
            in memory, a path (a LightGCN folder, a RecBole MovieLens folder, a CSV/TSV
            file; see :meth:`DataSpec.from_path`), a :class:`~nas.pipeline.data.DataSpec`,
            or ``None`` for the built-in synthetic data (click rows for a click model).
        budget: a sparsity (``0.9`` keeps 10 % of the values), a parameter count
            (``250000``) or bytes of the export (``"2MB"``, ``"512KiB"``).
        model: the backbone (:data:`nas.BACKBONES`).
        controller: the controller (:data:`nas.CONTROLLERS`; ``embnas controllers`` lists them).
        space: the search space (:data:`nas.SPACES`).
        trials: allocations evaluated by controllers that learn from fitness (``None``: the controller's design, else 16).
        seed: fixes the whole run (data split, initialisations, sampling, controller).
        train: training options: a :class:`~nas.pipeline.config.TrainingOptions`, or a
            mapping of the fields to change from the recipe's (``{"epochs": 20}``).
        recipe: a named recipe (:data:`nas.pipeline.recipes.RECIPES`) whose options replace the
            task defaults; a ``train`` mapping is applied on top of it.  Default: the
            backbone's own (:data:`nas.pipeline.recipes.DEFAULT_RECIPES`, LightGCN's is
            ``lightgcn-hard``), else the task defaults; ``"none"`` asks for the task defaults.
        run_dir: the run folder, made or continued (crash-safe: :func:`resume` goes on
            after a crash); ``None`` keeps the run in memory (it writes only to the reference cache).
        runs_root: with no ``run_dir``, a new run folder named by time and hash inside it
            (what ``embnas search`` does).
        progress: draw progress bars.
        reference_cache: where the plainly trained full models the results are compared with
            are cached, shared by every run (default ``$EMBNAS_CACHE``, else
            ``~/.cache/embnas``); ``reference="none"`` trains none.
        executor: where the fitness rounds and the retrains run: ``"local"`` (this process),
            ``"ray"`` (Ray tasks, ``workers`` at a time, on a local cluster or the one at
            ``ray_address``), or an :class:`~nas.pipeline.executors.Executor` (left open).
            Not part of the run's configuration: every executor gives the same result.
        workers, ray_address: the Ray executor's jobs at once and cluster.
        ddp: processes that train the supernet and each retrain data-parallel on this
            machine (``torch.distributed``: gloo on a CPU, NCCL on GPUs); the result is one
            process's up to float rounding.
        **options: any other field of :class:`~nas.pipeline.config.SearchConfig`:
            ``d_max``, ``d_min``, ``space_options``, ``controller_options``, ``ask_batch``,
            ``fitness_users``, ``supernet``, ``evaluator``, ``finetune``, ``retrain_top``,
            ``retrain``, ``device``, ``threads``, ``reference`` (``supernet`` and ``finetune`` also
            as mappings).

    Returns:
        The :class:`~nas.pipeline.result.SearchResult`: ``result.allocation``,
        ``result.metrics["test"]``, ``result.export(folder)``.

    Raises:
        ConfigError: an option that cannot work (the message says what to change).
        BudgetError: a budget below the smallest feasible one (which it names).
        DataError: malformed data (naming file and line).
    """
    config = configure(data, budget=budget, model=model, controller=controller, space=space, trials=trials, seed=seed,
                       train=train, recipe=recipe, **options)
    in_memory = data if isinstance(data, (InteractionData, CTRData)) else None
    with _executor(executor, workers, ray_address) as running:
        return run_search(config, in_memory, run_dir, runs_root=runs_root, progress=progress,
                          reference_cache=reference_cache, executor=running, ddp=ddp)


def tune(
    data: InteractionData | CTRData | DataSpec | str | Path | None = None,
    *,
    trainings: int = 12,
    ranges: Mapping[str, tuple[float, float]] | None = None,
    progress: bool = True,
    reference_cache: str | Path | None = None,
    **options: Any,
) -> Tuning:
    """Tune the backbone's learning rate and L2 on validation, for data without a measured recipe.

    The options are those of :func:`search` (model, recipe, train, seed, ...); their training
    options are the first of ``trainings`` plain full-model trainings, the rest proposed by an
    Optuna study within ``ranges`` (:func:`nas.pipeline.tuning.tune_training`).  Every training
    is cached as the reference model of its options, so calling it again reads the finished
    ones back, and ``search(..., train=result.train)`` finds its reference already trained.
    """
    config = configure(data, **options)
    in_memory = data if isinstance(data, (InteractionData, CTRData)) else None
    return tune_training(config, in_memory, trials=trainings, ranges=ranges, progress=progress,
                         reference_cache=reference_cache)


def front(
    data: InteractionData | CTRData | DataSpec | str | Path | None = None,
    *,
    budgets: Sequence[str | float | int],
    folder: str | Path | None = None,
    runs_root: str | Path | None = None,
    progress: bool = True,
    reference_cache: str | Path | None = None,
    executor: str | Executor = "local",
    workers: int | None = None,
    ray_address: str | None = None,
    ddp: int = 1,
    **options: Any,
) -> list[SearchResult]:
    """Search at every budget of ``budgets`` with one shared supernet: the quality-against-memory front.

    The options are those of :func:`search` (``budget`` aside); each budget's run is a run
    folder of its own inside ``folder`` (:mod:`nas.app.front`), written with ``front.json``
    and ``front.html`` beside them.  Returns one result per budget, in order.
    """
    from nas.app.front import run_front

    listed = [str(b) for b in budgets]
    config = configure(data, budget=listed[0], **options)
    in_memory = data if isinstance(data, (InteractionData, CTRData)) else None
    with _executor(executor, workers, ray_address) as running:
        return run_front(config, listed, in_memory, folder, runs_root=runs_root, progress=progress,
                         reference_cache=reference_cache, executor=running, ddp=ddp)


def configure(
    data: InteractionData | CTRData | DataSpec | str | Path | None = None,
    *,
    model: str = SearchConfig.model,
    seed: int = SearchConfig.seed,
    train: TrainingOptions | Mapping[str, Any] | None = None,
    recipe: str | None = None,
    **options: Any,
) -> SearchConfig:
    """The :class:`~nas.pipeline.config.SearchConfig` that :func:`search` runs with these arguments (checked).

    The arguments are those of :func:`search` but where the run lives; options left out
    take :class:`~nas.pipeline.config.SearchConfig`'s defaults.
    """
    fields = {f for f in SearchConfig.__dataclass_fields__ if f not in ("data", "train")}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ConfigError(f"unknown search options {unknown}; the options are the fields of SearchConfig: "
                          f"{', '.join(sorted(fields))}")
    nested = {k: (_NESTED[k](**v) if isinstance(v, Mapping) else v) for k, v in options.items() if k in _NESTED}
    if "budget" in options:
        nested["budget"] = str(options["budget"])
    return SearchConfig(data=_data_spec(data, model, seed), model=model, seed=seed, train=_training(train, model, recipe),
                        **{**options, **nested})


def resume(
    run_dir: str | Path,
    *,
    data: InteractionData | CTRData | None = None,
    progress: bool = True,
    reference_cache: str | Path | None = None,
    executor: str | Executor = "local",
    workers: int | None = None,
    ray_address: str | None = None,
    ddp: int = 1,
) -> SearchResult:
    """Continue a run folder where it stopped, or reload a finished one; the same result as an uninterrupted run.

    Args:
        run_dir: the run folder.
        data: the data, when the run searched data given in memory (the same data: its
            fingerprint is checked).
        progress: draw progress bars.
        reference_cache: where the full reference models are cached (as :func:`search`).
        executor, workers, ray_address, ddp: as for :func:`search`; any executor may
            continue a run, whichever one started it.

    Raises:
        ArtifactError: ``run_dir`` is not a run folder.
        ResumeError: the data changed since the run started.
    """
    with _executor(executor, workers, ray_address) as running:
        return resume_run(run_dir, data, progress=progress, reference_cache=reference_cache, executor=running, ddp=ddp)


@contextmanager
def _executor(executor: str | Executor, workers: int | None, address: str | None) -> Iterator[Executor]:
    """The executor named (made here and closed after) or given (left open for its owner)."""
    if isinstance(executor, Executor):
        if workers is not None or address is not None:
            raise ConfigError("give workers and ray_address to the executor you made, not beside it")
        yield executor
        return
    with make_executor(executor, workers=workers, address=address) as made:
        yield made


def _data_spec(data: Any, model: str, seed: int) -> DataSpec:
    if isinstance(data, DataSpec):
        return data
    if isinstance(data, (InteractionData, CTRData)):
        return DataSpec.in_memory(data)
    if data is None:
        return DataSpec("synthetic-ctr" if backbone_task(model) == "click" else "synthetic", seed=seed)
    if isinstance(data, (str, Path)):
        return DataSpec.from_path(data, seed=seed)
    raise ConfigError(f"cannot search {type(data).__name__}; give InteractionData or CTRData in memory, a path, "
                      "a DataSpec, or None for the built-in synthetic data")


def _training(train: TrainingOptions | Mapping[str, Any] | None, model: str, recipe: str | None) -> TrainingOptions:
    if isinstance(train, TrainingOptions):
        if recipe is not None:
            raise ConfigError("give a recipe or complete TrainingOptions, not both (a mapping of train options "
                              "goes on top of a recipe)")
        return train
    if train is not None and not isinstance(train, Mapping):
        raise ConfigError(f"train must be TrainingOptions or a mapping of its fields, got {type(train).__name__}")
    base = training_defaults(model, backbone_task(model), recipe)
    if train is None:
        return base
    unknown = sorted(set(train) - set(TrainingOptions.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"unknown training options {unknown}; choose from {sorted(TrainingOptions.__dataclass_fields__)}")
    return replace(base, **train)
