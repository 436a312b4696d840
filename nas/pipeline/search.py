"""The main job: train the supernet, search allocations under the budget, retrain the best, evaluate, export.

The same stages serve every task (:mod:`nas.pipeline.tasks`): top-k backbones on interaction
data, click backbones on click data; what differs between them (training, metrics,
fitness) is the task's.  Each stage leaves its result in the run folder (``nas.pipeline.runs``)
before the next starts, and long stages checkpoint as they go, so a run killed at any
moment continues with ``embnas resume <run>`` and ends exactly as the uninterrupted run
would have:

1. *supernet*: one set of full-size weights trained so that any allocation can be
   scored by masking (``nas.pipeline.supernet``); its training state is saved every epoch;
2. *search*: the controller proposes, an evaluator measures fitness (``nas.pipeline.evaluators``),
   every candidate is logged, the controller's state is saved each round (``nas.pipeline.trials``);
3. *retrain*: the ``retrain_top`` fittest allocations are retrained from scratch with
   early stopping, each to the end, by successive halving (``retrain="halving"``), or only
   the best after a short fine-tune of each from the supernet (``retrain="finetune"``); the
   best on validation is the run's answer;
4. *test and export*: test metrics, the packed export and ``metrics.json`` (the
   :class:`~nas.pipeline.result.SearchResult`, serialised).

:func:`open_run` checks everything that can be checked before any training and builds
the :class:`RunContext` every stage shares; one-shot and multi-trial controllers are
told apart by their capability flags alone.  A run kept in memory (no run folder) goes
through the same stages with a :class:`~nas.pipeline.runs.MemoryRun`.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tqdm.auto import tqdm

from nas.artifact.export import export_tables, pack_tables
from nas.core.allocation import Allocation
from nas.core.budget import Budget
from nas.core.errors import ArtifactError, ConfigError
from nas.pipeline.build import Data, Model, build_budget, build_evaluator, build_search, load_checkpoint
from nas.pipeline.config import SearchConfig, SupernetOptions, check_memory
from nas.pipeline.data import load_data
from nas.pipeline.data_parallel import SupernetTraining, train_data_parallel
from nas.pipeline.executors import Executor, LocalExecutor, TrainJob
from nas.pipeline.replay import read_config
from nas.pipeline.reference import Reference, cache_folder, full_reference
from nas.pipeline.result import Retrained, SearchResult
from nas.pipeline.runs import MemoryRun, Run
from nas.pipeline.stages import RunContext, train_stage
from nas.pipeline.supernet import train_one_shot
from nas.pipeline.tasks import Task, task_for
from nas.pipeline.trials import Candidate, ranked_candidates, record_one_shot_choice, run_trials, save_controller_state
from recsys.train import TrainHooks, TrainResult

__all__ = [
    "FINETUNE_SHARE",
    "HALVING_RATE",
    "RunContext",
    "finetune_epochs",
    "halving_rungs",
    "open_run",
    "resume_run",
    "run_search",
]

#: Successive halving keeps the best ``1/HALVING_RATE`` of the candidates at each rung.
HALVING_RATE = 3

#: ``retrain="finetune"`` fine-tunes each candidate for ``1/FINETUNE_SHARE`` of the training horizon.
FINETUNE_SHARE = 25

#: Spaces with at most this many decisions have them listed in metrics.json and the summary.
_LISTED_DECISIONS = 64

T = TypeVar("T")


def open_run(
    config: SearchConfig,
    data: Data | None = None,
    run_dir: str | Path | None = None,
    *,
    runs_root: str | Path | None = None,
    progress: bool = True,
    reference_cache: str | Path | None = None,
    shared_supernet: str | Path | None = None,
    executor: Executor | None = None,
    ddp: int = 1,
) -> RunContext:
    """Check everything that can be checked before training, then open the run.

    Args:
        config: the run's configuration.
        data: the data in memory; ``None`` loads what ``config.data`` describes.
        run_dir: the run folder, made or continued (the same configuration and data only).
        runs_root: with no ``run_dir``, make a new folder here named by time and hash.
            With neither, the run lives in memory (it writes only to the reference cache).
        progress: draw progress bars.
        reference_cache: where the plainly trained full reference models are cached
            (default :func:`nas.pipeline.reference.default_cache`).
        shared_supernet: a folder holding the sandwich supernet shared by several runs
            (:func:`shared_supernet`); ``None``: the run trains its own.
        executor: where the fitness rounds and the retrains run (:mod:`nas.pipeline.executors`;
            ``None``: in this process).  Not part of the configuration: any executor gives
            the same result, and a run may resume on another.
        ddp: processes that train the supernet and each retrain data-parallel
            (:mod:`nas.pipeline.data_parallel`); 1: this process alone.  Not part of the
            configuration either: the result is one process's up to float rounding.

    Raises:
        ConfigError: a part of the configuration cannot work with this data.
        BudgetError: the budget is infeasible (naming the smallest feasible one).
        ResumeError: ``run_dir`` was made by another configuration or other data.
    """
    config.check_device()
    executor = executor or LocalExecutor()
    _check_ddp(ddp, executor)
    data = load_data(config.data) if data is None else data
    data.check_trainable()  # untrainable data (no negative item, no train row) fails before a run folder exists
    task = task_for(data, config.train)
    budget, space, controller = build_search(config, task)
    if ddp > 1 and not controller.multi_trial:
        raise ConfigError(f"the {config.controller} controller learns its architecture weights inside the supernet's "
                          "steps, which --ddp does not split; use --ddp 1 with it")
    supernet_budgets(config, task)  # an infeasible one is refused now, naming the smallest feasible budget
    check_memory(config, budget.rows)  # a width that cannot fit is refused before the first epoch
    if config.reference == "full":
        cache_folder(reference_cache)  # a cache that cannot be written is refused before a run folder exists
    if controller.needs_fitness and not task.has_validation:
        raise ConfigError(
            f"the {config.controller} controller learns from validation fitness, and this dataset has no validation split"
            f"{' with both labels' if task.name == 'click' else ''}; add one (valid.txt) or use --controller equal or frequency"
        )
    # The run is tied to its configuration and to the data's content: a folder made from
    # other files refuses to continue. It is made only once data and budget are known good.
    record = {**config.to_dict(), "data_fingerprint": data.fingerprint()}
    if run_dir is not None:
        folder = Path(run_dir)
        run = Run.create(folder.parent, record, folder.name, upgrade=SearchConfig.upgrade)
    elif runs_root is not None:
        run = Run.create(runs_root, record, upgrade=SearchConfig.upgrade)
    else:
        run = MemoryRun(record)
    try:
        run.log_event("start", data=data.summary(), budget=budget.to_dict())
    except BaseException:
        run.close()  # the folder's lock: nothing will write it
        raise
    return RunContext(config, task, budget, space, controller, run,
                      task.train_config(config.train, config.seed, config.threads), progress,
                      None if reference_cache is None else Path(reference_cache),
                      None if shared_supernet is None else Path(shared_supernet), executor, ddp)


def _check_ddp(ddp: int, executor: Executor) -> None:
    """Refuse a data-parallel run that cannot work, before the data is loaded (the controller is checked once built)."""
    if ddp < 1:
        raise ConfigError(f"--ddp must be at least 1, got {ddp}")
    if ddp > 1 and executor.name != "local":
        raise ConfigError(f"--ddp {ddp} splits each training over this machine's processes, the {executor.name} "
                          "executor spreads trainings over a cluster; choose one of them")


def resume_run(
    folder: str | Path, data: Data | None = None, *, progress: bool = True, reference_cache: str | Path | None = None,
    executor: Executor | None = None,
    ddp: int = 1,
) -> SearchResult:
    """Continue a run folder from where it stopped (or reload a finished one).

    Args:
        folder: the run folder.
        data: the data, when the run searched data given in memory (the same data:
            its fingerprint is checked).

    Raises:
        ArtifactError: when ``folder`` is not a run folder.
        ResumeError: when the data changed since the run started.
        RunLockedError: when another process is writing the folder.
    """
    run = Run(folder)
    if not run.has("config.json"):
        raise ArtifactError(f"{folder} is not a run folder (no config.json); give a folder made by `embnas search`")
    run.check_unlocked()  # refused before the data is loaded; open_run takes the lock itself
    return run_search(read_config(run), data, run.folder, progress=progress, reference_cache=reference_cache,
                      executor=executor, ddp=ddp)


def run_search(
    config: SearchConfig,
    data: Data | None = None,
    run_dir: str | Path | None = None,
    *,
    runs_root: str | Path | None = None,
    progress: bool = True,
    reference_cache: str | Path | None = None,
    shared_supernet: str | Path | None = None,
    executor: Executor | None = None,
    ddp: int = 1,
) -> SearchResult:
    """Run the whole job (see :func:`open_run` for the arguments) and return its result.

    In a run folder, stages already finished (same configuration) are not redone, an
    unfinished stage continues from its last checkpoint, and the result is also written
    to ``metrics.json``.  The run folder is locked against other writers until it returns.
    """
    started = time.perf_counter()
    ctx = open_run(config, data, run_dir, runs_root=runs_root, progress=progress, reference_cache=reference_cache,
                   shared_supernet=shared_supernet, executor=executor, ddp=ddp)
    try:
        return _run_stages(ctx, started)
    finally:
        ctx.run.close()


def _run_stages(ctx: RunContext, started: float) -> SearchResult:
    """The stages of :func:`run_search`, on the opened run."""
    config, task, run = ctx.config, ctx.task, ctx.run
    timing: dict[str, float] = {}

    reference = None
    if config.reference == "full":
        tic = time.perf_counter()
        reference = full_reference(ctx, ctx.reference_cache)
        if reference.trained_here:
            timing["reference"] = time.perf_counter() - tic

    tic = time.perf_counter()
    supernet, supernet_stats, kind = _train_supernet(ctx, reference)
    # Reported as the reference without one, beside it otherwise; a plain full-size first stage
    # with a reference is not reported (when it is the reference, its metrics are known already).
    reported = reference is None or kind != "full"
    supernet_metrics = ({"valid": supernet_stats["valid"] or {}, "test": task.evaluate(supernet, "test")}
                        if reported else None)
    timing["supernet"] = time.perf_counter() - tic

    tic = time.perf_counter()
    candidates = _search(ctx, supernet)
    fallbacks = _logged_fallbacks(ctx.run)
    timing["search"] = time.perf_counter() - tic

    tic = time.perf_counter()
    # Intermediate rungs of successive halving are sized by how long the supernet took to peak.
    horizon = max(int(supernet_stats.get("best_epoch") or config.train.epochs), 1)
    retrained = _retrain(ctx, candidates, horizon, supernet, fallbacks)
    # The best on validation among those trained to the end (the search's order breaks ties
    # and stands in without validation).
    winner = _by_validation([r for r in retrained if r.final])[0]
    allocation, model = winner.allocation, winner.model
    timing["retrain"] = time.perf_counter() - tic

    run.save_allocation("allocation.npz", allocation)
    run.save_tensors("allocated.safetensors", dict(model.state_dict()))  # type: ignore[attr-defined]
    allocated_test = task.evaluate(model, "test")
    export_bytes = _export(ctx, model, allocation)
    timing["total"] = time.perf_counter() - started
    space = ctx.space
    result = SearchResult(
        allocation=allocation,
        budget=ctx.budget,
        metrics={"valid": winner.stats["valid"] or {}, "test": allocated_test},
        full_metrics=supernet_metrics if reference is None else reference.metrics,
        reference=kind if reference is None else "full",
        fitness=winner.candidate.fitness,
        timings=timing,
        run_dir=None if run.in_memory else run.folder,
        task=task.name,
        model=config.model,
        controller=config.controller,
        space=space.describe(),
        data=ctx.data.summary(),
        evaluator=config.evaluator if task.has_validation else None,
        fitness_driven=ctx.controller.needs_fitness,
        retrain=config.retrain,
        retrained=tuple(Retrained(r.candidate.fingerprint, r.candidate.fitness, r.quality, r.seconds, r.epochs, r.final)
                        for r in retrained),
        trials=sum(1 for _ in run.events("trial")),
        decisions=(tuple(int(v) for v in space.decisions(allocation))
                   if space.n_decisions <= _LISTED_DECISIONS else None),
        export_bytes=export_bytes,
        config_hash=run.config_hash,
        full_train_seconds=supernet_stats["seconds"] if reference is None else reference.seconds,
        allocated_train_seconds=winner.seconds,
        # The supernet beside the reference, under its own name (unless it is the reference itself).
        supernet=kind if reference is not None and reported else None,
        supernet_metrics=supernet_metrics if reference is not None else None,
        reference_dir=None if reference is None else reference.folder,
        trained_model=model,
    )
    run.write_json("metrics.json", result.to_dict())
    run.log_event("done", seconds=result.seconds)
    return result


@dataclass
class _Retrained:
    """One retrained candidate: how far it got and how good it was on validation."""

    candidate: Candidate
    allocation: Allocation
    model: Model
    stats: dict[str, Any]
    quality: float
    seconds: float
    epochs: int
    final: bool


def _by_validation(items: Sequence[T], quality: Callable[[T], float] = lambda r: r.quality) -> list[T]:  # type: ignore[attr-defined]
    """``items`` best first by validation ``quality``; a NaN counts as the worst and ties keep the given order."""
    return sorted(items, key=lambda item: -np.nan_to_num(quality(item), nan=-np.inf))


def _train_supernet(ctx: RunContext, reference: Reference | None) -> tuple[Model, dict[str, Any], str]:
    """The first stage: the supernet (or the one-shot search, or a rule's full-size model).

    A plain full-size training as long as the reference's is the reference itself: its
    weights come from the cache instead of a second training.

    Returns the trained model, its training's stats and what it is (``"sandwich"``,
    ``"full"`` or ``"one-shot"``).
    """
    config, controller = ctx.config, ctx.controller
    supernet = ctx.new_model()
    # A controller whose proposal ignores fitness needs no supernet: plain training gives the reference.
    options = (config.supernet.resolved(controller.preferred_supernet) if controller.needs_fitness
               else SupernetOptions(mode="full"))
    if reference is not None and controller.multi_trial and options.mode == "full" and config.supernet.epochs is None:
        reference.load_into(supernet)
        return supernet, reference.stats, "full"
    train_config = ctx.train_config if config.supernet.epochs is None else replace(ctx.train_config, epochs=config.supernet.epochs)
    if not controller.multi_trial:
        reference = "one-shot"
        train = partial(_train_one_shot, ctx, train_config)
    else:
        reference = options.mode
        proposals = controller.supernet_proposals if options.proposals == "controller" else None  # type: ignore[union-attr]

        training = SupernetTraining(train_config, options, supernet_budgets(config, ctx.task) or ctx.budget, ctx.space,
                                    proposals)

        def train(model: Model, hooks: TrainHooks) -> TrainResult:
            return train_data_parallel(ctx.ddp, config, ctx.task, model, hooks, training, ctx.progress)
        if ctx.shared_supernet is not None and options.mode == "sandwich" and proposals is None:
            return supernet, shared_supernet(ctx, ctx.shared_supernet, supernet, train), reference
    stats = train_stage(ctx, "supernet", None, supernet, train)
    return supernet, stats, reference


def supernet_budgets(config: SearchConfig, task: Task) -> list[Budget]:
    """The budgets of ``config.supernet.budgets`` on the task's tables (empty: the run's own budget alone)."""
    return [build_budget(replace(config, budget=budget), task) for budget in config.supernet.budgets]


#: The shared supernet's result in its folder: the training's stats.
_SHARED = "supernet.json"


def shared_supernet(ctx: RunContext, folder: Path, model: Model,
                    train: Callable[[Model, TrainHooks], TrainResult]) -> dict[str, Any]:
    """Load the supernet trained in ``folder`` into ``model``, training it there first if no run has.

    ``folder`` is a run folder of its own (atomic files, digests checked on every read, a
    killed training continued from its checkpoint, one process training it while the
    others wait), tied to everything that shapes the supernet: the run's configuration
    but its budget.  Runs that differ in more than the budget are refused.
    """
    key = {**ctx.config.to_dict(), "budget": None, "data_fingerprint": ctx.data.fingerprint()}

    def waiting(pid: int | None) -> None:
        if ctx.progress:
            print(f"waiting for process {pid}, which is training the shared supernet ({folder})", file=sys.stderr, flush=True)

    with Run.create(folder.parent, key, folder.name, wait=waiting) as entry:
        if not entry.has(_SHARED):
            stats = train_stage(replace(ctx, run=entry), "supernet", None, model, train)
            entry.write_json(_SHARED, stats)
            return stats
        load_checkpoint(model, entry, "supernet.safetensors")
        return entry.read_json(_SHARED)


def _train_one_shot(ctx: RunContext, train_config: Any, model: Model, hooks: TrainHooks) -> TrainResult:
    """The supernet trained with the controller; its state is left where the search loop restores it from."""
    result = train_one_shot(model, ctx.task, ctx.controller, train_config, hooks=hooks, progress=ctx.progress)  # type: ignore[arg-type]
    save_controller_state(ctx.run, ctx.controller, rounds=0)  # type: ignore[arg-type]
    return result


def _search(ctx: RunContext, supernet: Model) -> list[Candidate]:
    """The candidates to retrain: the controller's fittest (its one proposal when it ignores fitness).

    A proposal that ignores fitness is still measured once when there is validation data,
    so every run reports the fitness of its answer; so is a one-shot controller's choice.
    """
    config, task, run, controller = ctx.config, ctx.task, ctx.run, ctx.controller
    searched = any(True for _ in run.events("searched"))
    if not controller.multi_trial:
        if not searched:
            evaluator = build_evaluator(config, task, supernet) if task.has_validation else None
            record_one_shot_choice(run, controller, supernet, ctx.budget, evaluator)  # type: ignore[arg-type]
            run.log_event("searched", top=[c.fingerprint for c in ranked_candidates(run)[:1]], evaluator=config.evaluator,
                          measured=evaluator.measured if evaluator is not None else 0)
        return _logged_candidates(run, 1)
    if not task.has_validation:
        allocation = ctx.space.allocation(controller.recommend())  # type: ignore[union-attr]
        allocation.validate(ctx.budget)
        name = f"candidates/{allocation.fingerprint()}.npz"
        if not run.has(name):
            run.save_allocation(name, allocation)
        return [Candidate(allocation.fingerprint(), float("nan"), allocation.cost, 0)]
    if not searched:
        evaluator = _executor(ctx).evaluator(ctx, build_evaluator(config, task, supernet), supernet)
        trials = config.trials if controller.needs_fitness else 1
        run_trials(run, controller, ctx.space, ctx.budget, evaluator, trials, config.ask_batch,  # type: ignore[arg-type]
                   progress=ctx.progress)
        ranked = ranked_candidates(run)
        evaluated = {c.fingerprint for c in ranked}
        top = [c.fingerprint for c in ranked[: config.retrain_top]]
        fallbacks = [f for f in dict.fromkeys(ctx.space.allocation(row).fingerprint()
                                              for row in controller.fallbacks())  # type: ignore[union-attr]
                     if f in evaluated]
        run.log_event("searched", top=top + [f for f in fallbacks if f not in top], fallbacks=fallbacks,
                      evaluator=config.evaluator, measured=evaluator.measured)
    return _logged_candidates(run, config.retrain_top)


def _executor(ctx: RunContext) -> Executor:
    """Where the run's independent jobs go (a context made without one: this process)."""
    return ctx.executor or LocalExecutor()


def _last_searched(run: Run) -> dict[str, Any]:
    """The run's last ``searched`` event (empty before the search has ended)."""
    last = deque(run.events("searched"), maxlen=1)
    return last[0] if last else {}


def _logged_fallbacks(run: Run) -> set[str]:
    """The fingerprints the controller named as fallbacks (:meth:`~nas.core.controller.Controller.fallbacks`), as logged."""
    return set(_last_searched(run).get("fallbacks") or ())


def _logged_candidates(run: Run, n: int) -> list[Candidate]:
    """The candidates the ``searched`` event names that the log evaluated (else the ``n`` fittest), in its order.

    A log that lost them all is refused (the search ran: its state says so).
    """
    ranked = ranked_candidates(run)
    named = _last_searched(run).get("top")
    by_fingerprint = {c.fingerprint: c for c in ranked}
    chosen = [by_fingerprint[f] for f in named if f in by_fingerprint] if named else ranked[:n]
    if not chosen:
        raise ArtifactError(f"{run.path('events.jsonl')}: logs no evaluated candidate although the search's state says "
                            "it ran (the log was truncated or edited); start a new run")
    return chosen


def _retrain(ctx: RunContext, candidates: list[Candidate], horizon: int, supernet: Model,
             fallbacks: Collection[str] = ()) -> list[_Retrained]:
    """Retrain the candidates from scratch: each to the end (``full``), by successive halving, or the best after a fine-tune.

    The ``fallbacks`` (fingerprints) are trained to the end whatever the early rungs or the
    fine-tune say: a short training can favour an allocation that starts fast over one that
    ends better, and a fallback is there so that the final choice can be it.

    Successive halving (``halving``) trains every candidate for ``horizon / η²`` epochs
    (``horizon``: the epoch at which the supernet peaked on validation, an estimate of
    how long a training takes here), keeps the best ``1/η`` on validation, continues them
    to ``horizon / η`` epochs, and so on until one is trained to the end with early
    stopping (η = :data:`HALVING_RATE`).  A continued training resumes from its saved
    state (weights, optimiser moments, sampler, early stopping), so the survivors'
    training is one training paused at each rung.  With five candidates and η = 3 that
    is about 1.7 full trainings instead of 5.
    """
    config, task, run = ctx.config, ctx.task, ctx.run
    models: dict[str, tuple[Allocation, Model]] = {}
    for candidate in candidates:
        allocation = candidate.load(run)
        allocation.validate(ctx.budget)
        model = ctx.new_model()
        model.embedding.set_allocation(allocation)
        models[candidate.fingerprint] = (allocation, model)
    if config.retrain == "finetune":
        return _finetune_then_retrain(ctx, candidates, models, horizon, supernet, fallbacks)
    epochs = config.train.epochs
    rungs = (halving_rungs(len(candidates), epochs, horizon=horizon) if config.retrain == "halving"
             else [(epochs, len(candidates))])
    results: dict[str, _Retrained] = {}
    alive = list(candidates)
    protected = [c for c in candidates if c.fingerprint in fallbacks]
    bar = tqdm(total=sum(len(_runners(candidates, count, protected)) for _, count in rungs), desc="retrain top",
               unit="training", disable=not ctx.progress or len(candidates) == 1)
    for rung, (rung_epochs, count) in enumerate(rungs):
        final = rung == len(rungs) - 1
        rung_config = replace(ctx.train_config, epochs=rung_epochs)
        runners = _runners(alive, count, protected)
        jobs = [TrainJob("retrain" if final else f"retrain-rung{rung}", c.fingerprint, models[c.fingerprint][1],
                         models[c.fingerprint][0], rung_config, f"retrain-{c.fingerprint}.state.safetensors",
                         final=final, last_epoch=rung_epochs, progress=ctx.progress)
                for c in runners]
        for candidate, stats in zip(runners, _executor(ctx).train(ctx, jobs)):
            allocation, model = models[candidate.fingerprint]
            earlier = results.get(candidate.fingerprint)
            results[candidate.fingerprint] = _retrained(task, candidate, allocation, model, stats, final,
                                                        earlier_seconds=earlier.seconds if earlier else 0.0)
            bar.update(1)
        # Survivors: the best on validation so far (the search's order breaks ties).
        alive = _by_validation(runners, lambda c: results[c.fingerprint].quality)
    bar.close()
    for candidate in candidates:  # the eliminated candidates' states are not needed any more
        run.remove(f"checkpoints/retrain-{candidate.fingerprint}.state.safetensors")
    return [results[c.fingerprint] for c in candidates]


def _runners(ranked: list[Candidate], count: int, protected: list[Candidate]) -> list[Candidate]:
    """Who trains in a rung: the ``count`` best of ``ranked``, then the protected ones not among them."""
    first = ranked[:count]
    return first + [c for c in protected if c not in first]


def _finetune_then_retrain(
    ctx: RunContext, candidates: list[Candidate], models: dict[str, tuple[Allocation, Model]], horizon: int,
    supernet: Model, fallbacks: Collection[str] = (),
) -> list[_Retrained]:
    """Judge the candidates by a short fine-tune from the supernet's weights; retrain the best from scratch.

    Each candidate starts from the trained supernet under its allocation, so a few
    epochs (:func:`finetune_epochs`, validated on the search's fitness users) show how
    well it recovers, where a rung of successive halving from scratch shows little more
    than how fast a fresh model starts.  Only the winner is trained to the end, from
    scratch like every retrained allocation (the quality a user reproduces without the
    supernet).
    """
    task, run = ctx.task, ctx.run
    weights = {name: value.detach().clone() for name, value in supernet.state_dict().items()}
    # Judged on the search's fitness users: a ranking of all validation users after each
    # fine-tune cost as much as the fine-tune itself.
    short = task.validating_on_subset(replace(ctx.train_config, epochs=finetune_epochs(horizon)), ctx.config.fitness_users)
    results: list[_Retrained] = []
    bar = tqdm(total=len(candidates) + 1, desc="fine-tune top", unit="training", disable=not ctx.progress)
    jobs = [TrainJob("finetune", c.fingerprint, models[c.fingerprint][1], models[c.fingerprint][0], short,
                     f"finetune-{c.fingerprint}.state.safetensors", final=False, last_epoch=short.epochs, start=weights)
            for c in candidates]
    for candidate, stats in zip(candidates, _executor(ctx).train(ctx, jobs)):
        allocation, model = models[candidate.fingerprint]
        results.append(_retrained(task, candidate, allocation, model, stats, final=False))
        bar.update(1)
    # The best after fine-tuning (the search's order breaks ties and stands in without validation),
    # and the fallbacks, each retrained from scratch.
    best = _by_validation(results)[0]
    finalists = [best, *(r for r in results if r.candidate.fingerprint in fallbacks and r is not best)]
    bar.total = len(candidates) + len(finalists)
    finals = []
    jobs = []
    for finalist in finalists:
        model = ctx.new_model()
        model.embedding.set_allocation(finalist.allocation)
        jobs.append(TrainJob("retrain", finalist.candidate.fingerprint, model, finalist.allocation, ctx.train_config,
                             f"retrain-{finalist.candidate.fingerprint}.state.safetensors",
                             last_epoch=ctx.train_config.epochs, progress=ctx.progress))
    for finalist, job, stats in zip(finalists, jobs, _executor(ctx).train(ctx, jobs)):
        finals.append(_retrained(task, finalist.candidate, finalist.allocation, job.model, stats, final=True))
        bar.update(1)
    bar.close()
    for candidate in candidates:
        run.remove(f"checkpoints/finetune-{candidate.fingerprint}.state.safetensors")
    return [*results, *finals]


def _retrained(
    task: Task, candidate: Candidate, allocation: Allocation, model: Model, stats: dict[str, Any], final: bool,
    earlier_seconds: float = 0.0,
) -> _Retrained:
    """A retrained candidate with its validation quality (``nan`` without validation)."""
    return _Retrained(candidate, allocation, model, stats,
                      quality=task.quality(stats["valid"]) if stats["valid"] else float("nan"),
                      seconds=stats["seconds"] + earlier_seconds, epochs=stats["epochs_run"], final=final)


def finetune_epochs(horizon: int) -> int:
    """Epochs each candidate is fine-tuned from the supernet by ``retrain="finetune"``: a 25th of ``horizon``, at least 1."""
    return max(1, -(-int(horizon) // FINETUNE_SHARE))


def halving_rungs(n: int, epochs: int, *, horizon: int | None = None, rate: int | None = None) -> list[tuple[int, int]]:
    """Successive-halving schedule: per rung, the epoch trained to and how many candidates train.

    ``n`` candidates train to ``horizon / rate**(R-1)`` epochs, the best ``n / rate`` of them
    (rounded up) continue to ``horizon / rate**(R-2)``, ... and the last one trains to
    ``epochs`` (``horizon`` defaults to ``epochs``; it is capped by it).
    """
    rate = HALVING_RATE if rate is None else rate
    horizon = epochs if horizon is None else min(horizon, epochs)
    if n < 1 or epochs < 1 or horizon < 1 or rate < 2:
        raise ValueError(f"halving needs n, epochs, horizon >= 1 and rate >= 2; got {n}, {epochs}, {horizon}, {rate}")
    depth = 0
    while rate**depth < n:
        depth += 1
    rungs = [(max(1, -(-horizon // rate ** (depth - r))), -(-n // rate**r)) for r in range(depth)]
    return [*rungs, (epochs, 1)]


def _export(ctx: RunContext, model: Model, allocation: Allocation) -> int:
    """Export the answer into the run folder (in memory: only pack it); returns the export's bytes."""
    run = ctx.run
    if run.in_memory:
        return pack_tables(model.embedding, allocation, ctx.budget, config_hash=run.config_hash).nbytes
    manifest = export_tables(run.path("export"), model.embedding, allocation, ctx.budget, config_hash=run.config_hash)
    return int(manifest["bytes_stored"])
