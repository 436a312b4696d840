"""The main job: train the supernet, search allocations under the budget, retrain the best, evaluate, export.

The same stages serve every task (:mod:`nas.tasks`): top-k backbones on interaction
data, click backbones on click data; what differs between them (training, metrics,
fitness) is the task's.  Each stage leaves its result in the run folder (``nas.runs``)
before the next starts, and long stages checkpoint as they go, so a run killed at any
moment continues with ``embnas resume <run>`` and ends exactly as the uninterrupted run
would have:

1. *supernet*: one set of full-size weights trained so that any allocation can be
   scored by masking (``nas.supernet``); its training state is saved every epoch;
2. *search*: the controller proposes, an evaluator measures fitness (``nas.evaluate``),
   every candidate is logged, the controller's state is saved each round (``nas.trials``);
3. *retrain*: the ``retrain_top`` fittest allocations are retrained from scratch with
   early stopping, each to the end, by successive halving (``retrain="halving"``), or only
   the best after a short fine-tune of each from the supernet (``retrain="finetune"``); the
   best on validation is the run's answer;
4. *test and export*: test metrics, the packed export and ``metrics.json``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from controllers import CONTROLLERS
from nas.backbones import BACKBONES
from nas.config import SearchConfig, TrainingOptions
from nas.core.allocation import Allocation
from nas.core.budget import Budget
from nas.core.controller import Controller, OneShotController
from nas.core.errors import ArtifactError, ConfigError
from nas.core.evaluator import Evaluator
from nas.core.space import SearchSpace
from nas.core.tables import table_specs
from nas.data_source import load_data
from nas.embedding import MaskableEmbedding
from nas.evaluate import FineTuneEvaluator, SupernetEvaluator
from nas.export import export_tables
from nas.runs import Run
from nas.supernet import SupernetOptions, train_one_shot, train_supernet
from nas.tasks import Task, task_for
from nas.trials import Candidate, ranked_candidates, record_one_shot_choice, run_trials, save_controller_state
from recsys.data import CTRData, InteractionData
from recsys.train import TrainHooks, TrainResult
from search_spaces import SPACES

__all__ = [
    "FINETUNE_SHARE",
    "HALVING_RATE",
    "SearchConfig",
    "TrainingOptions",
    "build_evaluator",
    "build_model",
    "build_search",
    "finetune_epochs",
    "halving_rungs",
    "load_checkpoint",
    "resume_run",
    "run_search",
]

#: Successive halving keeps the best ``1/HALVING_RATE`` of the candidates at each rung.
HALVING_RATE = 3

#: ``retrain="finetune"`` fine-tunes each candidate for ``1/FINETUNE_SHARE`` of the training horizon.
FINETUNE_SHARE = 25

#: Spaces with at most this many decisions have them listed in metrics.json and the summary.
_LISTED_DECISIONS = 64


#: A top-k or click backbone (:class:`~recsys.models.Backbone`, :class:`~recsys.models.CTRBackbone`).
Model = Any
#: The data of either task.
Data = InteractionData | CTRData


def build_model(config: SearchConfig, data: Data) -> Model:
    """The configured backbone on a fresh maskable embedding, seeded by the run's seed."""
    if config.task != task_for(data).name:  # the configuration checked its data spec; this is the data itself
        raise ConfigError(f"the {config.model} model is a {config.task} model and cannot learn from {type(data).__name__}")
    embedding = MaskableEmbedding(data.rows(), config.d_max, std=task_for(data).embedding_std, seed=config.seed)
    # Dense layers a factory leaves to torch's default initialisation draw from the global
    # generator, whose seed differs per process: seed it here, so a resumed run builds the same model.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = BACKBONES.get(config.model)(embedding, data)
    return model.to(config.device)


def build_search(config: SearchConfig, data: Data) -> tuple[Budget, SearchSpace, Controller]:
    """The budget, search space and controller of a run (checked before any training)."""
    rows = data.rows()
    budget = Budget.parse(config.budget, rows, config.d_max, config.d_min)
    space = SPACES.get(config.space)(
        table_specs(rows), data.frequencies(), config.d_min, config.d_max, **config.space_options
    )
    controller_class = CONTROLLERS.get(config.controller)
    try:
        controller = controller_class(space, budget, seed=config.seed, **config.controller_options)
    except TypeError as error:
        if not config.controller_options:
            raise
        raise ConfigError(
            f"the {config.controller} controller does not take the options {sorted(config.controller_options)} ({error})"
        ) from None
    if config.supernet.proposals == "controller" and controller.needs_fitness and not isinstance(controller, OneShotController):
        if controller.supernet_proposals(np.random.default_rng(0), 1) is None:
            raise ConfigError(f"the {config.controller} controller has no proposal distribution of its own for the "
                              "supernet to train on; use --supernet-proposals space")
    if controller.max_ask is not None and config.ask_batch > controller.max_ask:
        raise ConfigError(
            f"the {config.controller} controller proposes at most {controller.max_ask} candidates at once; "
            f"lower --ask-batch to {controller.max_ask}, or raise the limit by the controller's options "
            f"(nevergrad: workers, bet: candidates)"
        )
    return budget, space, controller


def build_evaluator(config: SearchConfig, data: Data, model: Model) -> Evaluator:
    """The configured evaluator on the trained supernet, over the search's sample of validation users (top-k)."""
    users = task_for(data).validation_subset(config.fitness_users, config.seed)
    if config.evaluator == "finetune":
        return FineTuneEvaluator(model, data, users, config.finetune, seed=config.seed, training=config.train)
    return SupernetEvaluator(model, data, users)


def resume_run(folder: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Continue a run folder from where it stopped (or reload a finished one); returns its metrics.

    Raises:
        ArtifactError: when ``folder`` is not a run folder.
        ResumeError: when the data changed since the run started.
    """
    run = Run(folder)
    if not run.has("config.json"):
        raise ArtifactError(f"{folder} is not a run folder (no config.json); give a folder made by `embnas search`")
    config = SearchConfig.from_dict(run.config())
    return run_search(config, run.folder.parent, run.folder.name, progress=progress)


def run_search(config: SearchConfig, runs_root: str | Path = "runs", name: str | None = None, *, progress: bool = True) -> dict[str, Any]:
    """Run the whole job and return its metrics (also written to ``metrics.json``).

    Stages already finished in the run folder (same configuration) are not redone, and an
    unfinished stage continues from its last checkpoint.
    """
    started = time.perf_counter()
    config.check_device()
    data = load_data(config.data)
    task = task_for(data, config.train)
    budget, space, controller = build_search(config, data)
    if controller.needs_fitness and not task.has_validation:
        raise ConfigError(
            f"the {config.controller} controller learns from validation fitness, and this dataset has no validation split"
            f"{' with both labels' if task.name == 'click' else ''}; add one (valid.txt) or use --controller equal or frequency"
        )
    # The run is tied to its configuration and to the data's content: a folder made from
    # other files refuses to continue. It is made only once data and budget are known good.
    run = Run.create(runs_root, {**config.to_dict(), "data_fingerprint": data.fingerprint()}, name,
                     upgrade=SearchConfig.upgrade)
    run.log_event("start", data=data.summary(), budget=budget.to_dict())
    train_config = task.train_config(config.train, config.seed, config.threads)
    timing: dict[str, float] = {}

    tic = time.perf_counter()
    supernet = build_model(config, data)
    # A controller whose proposal ignores fitness needs no supernet: plain training gives the reference.
    options = config.supernet if controller.needs_fitness else SupernetOptions(mode="full")
    supernet_mode = options.mode
    supernet_config = train_config if config.supernet.epochs is None else replace(train_config, epochs=config.supernet.epochs)
    if isinstance(controller, OneShotController):
        supernet_mode = "one-shot"
        train = partial(_train_one_shot, run, data, controller, supernet_config, progress)
    else:
        def train(model: Model, hooks: TrainHooks) -> TrainResult:
            return train_supernet(model, data, space, budget, supernet_config, options, hooks=hooks, progress=progress,
                                  proposals=_proposals(controller, options))
    supernet_stats = _train_stage(run, "supernet", None, supernet, config.train.checkpoint_every, train)
    supernet_test = task.evaluate(supernet, "test")
    timing["supernet"] = time.perf_counter() - tic

    tic = time.perf_counter()
    candidates = _search(run, config, task, supernet, space, controller, budget, progress)
    timing["search"] = time.perf_counter() - tic

    tic = time.perf_counter()
    # Intermediate rungs of successive halving are sized by how long the supernet took to peak.
    horizon = max(int(supernet_stats.get("best_epoch") or config.train.epochs), 1)
    retrained = _retrain(run, config, task, budget, candidates, train_config, horizon, progress)
    # The best on validation among those trained to the end (the search's order breaks ties
    # and stands in without validation).
    finalists = [r for r in retrained if r.final]
    winner = max(enumerate(finalists), key=lambda item: (np.nan_to_num(item[1].quality, nan=-np.inf), -item[0]))[1]
    candidate, allocation, model, stats = winner.candidate, winner.allocation, winner.model, winner.stats
    timing["retrain"] = time.perf_counter() - tic

    allocation.save(run.path("allocation.npz"))
    run.save_tensors("allocated.safetensors", dict(model.state_dict()))  # type: ignore[attr-defined]
    allocated_test = task.evaluate(model, "test")
    manifest = export_tables(run.path("export"), model.embedding, allocation, budget, config_hash=run.config_hash)
    timing["total"] = time.perf_counter() - started
    metrics = {
        "run": str(run.folder),
        "task": task.name,
        "data": data.summary(),
        "space": space.describe(),
        "controller": config.controller,
        "evaluator": config.evaluator if task.has_validation else None,
        "fitness_driven": controller.needs_fitness,
        "budget": {**budget.to_dict(), "description": budget.describe(), "max_bytes": budget.max_bytes},
        "allocation": {
            "values": allocation.cost,
            "retain_ratio": budget.retain_ratio(allocation.cost),
            "budget_used": allocation.cost / budget.max_values if budget.max_values else 1.0,
            "fingerprint": allocation.fingerprint(),
            "fitness": candidate.fitness,
            "tables": allocation.summary(),
            "decisions": space.from_allocation(allocation).tolist() if space.n_decisions <= _LISTED_DECISIONS else None,
        },
        "export": {"bytes_stored": manifest["bytes_stored"], "folder": str(run.path("export"))},
        "full": {"valid": supernet_stats["valid"], "test": supernet_test, "train_seconds": supernet_stats["seconds"],
                 "supernet": supernet_mode},
        "allocated": {"valid": stats["valid"], "test": allocated_test, "train_seconds": winner.seconds},
        "retrain": config.retrain,
        "retrained": [
            {"fingerprint": r.candidate.fingerprint, "fitness": r.candidate.fitness, "valid_quality": r.quality,
             "train_seconds": r.seconds, "epochs": r.epochs, "final": r.final}
            for r in retrained
        ],
        "trials": sum(1 for _ in run.events("trial")),
        "timing": timing,
        "seconds": timing["total"],
    }
    run.write_json("metrics.json", metrics)
    run.log_event("done", seconds=metrics["seconds"])
    return metrics


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


def _proposals(controller: Controller, options: SupernetOptions) -> Callable[[np.random.Generator, int], np.ndarray] | None:
    """The controller's proposal distribution for the sandwich, when asked for and it has one."""
    if options.proposals != "controller":
        return None
    return controller.supernet_proposals  # type: ignore[return-value]  (checked by build_search)


def _train_one_shot(
    run: Run, data: Data, controller: OneShotController, train_config: Any, progress: bool,
    model: Model, hooks: TrainHooks,
) -> TrainResult:
    """The supernet trained with the controller; its state is left where the search loop restores it from."""
    result = train_one_shot(model, data, controller, train_config, hooks=hooks, progress=progress)
    save_controller_state(run, controller, rounds=0)
    return result


def _retrain(
    run: Run,
    config: SearchConfig,
    task: Task,
    budget: Budget,
    candidates: list[Candidate],
    train_config: Any,
    horizon: int,
    progress: bool,
) -> list[_Retrained]:
    """Retrain the candidates from scratch: each to the end (``full``), by successive halving, or the best after a fine-tune.

    Successive halving (``halving``) trains every candidate for ``horizon / η²`` epochs
    (``horizon``: the epoch at which the supernet peaked on validation, an estimate of
    how long a training takes here), keeps the best ``1/η`` on validation, continues them
    to ``horizon / η`` epochs, and so on until one is trained to the end with early
    stopping (η = :data:`HALVING_RATE`).  A continued
    training resumes from its saved state (weights, optimiser moments, sampler, early
    stopping), so the survivors' training is one training paused at each rung.  With five candidates and η = 3 that is about
    about 1.7 full trainings instead of 5.
    """
    models: dict[str, tuple[Allocation, Model]] = {}
    for candidate in candidates:
        allocation = candidate.load(run)
        allocation.validate(budget)
        model = build_model(config, task.data)
        model.embedding.set_allocation(allocation)
        models[candidate.fingerprint] = (allocation, model)
    if config.retrain == "finetune":
        return _finetune_then_retrain(run, config, task, candidates, models, train_config, horizon, progress)
    epochs = config.train.epochs
    rungs = (halving_rungs(len(candidates), epochs, horizon=horizon) if config.retrain == "halving"
             else [(epochs, len(candidates))])
    results: dict[str, _Retrained] = {}
    alive = list(candidates)
    bar = tqdm(total=sum(count for _, count in rungs), desc="retrain top", unit="training",
               disable=not progress or len(candidates) == 1)
    for rung, (rung_epochs, count) in enumerate(rungs):
        final = rung == len(rungs) - 1
        rung_config = replace(train_config, epochs=rung_epochs)
        for candidate in alive[:count]:
            allocation, model = models[candidate.fingerprint]
            stats = _train_stage(
                run, "retrain" if final else f"retrain-rung{rung}", candidate.fingerprint, model,
                config.train.checkpoint_every,
                lambda model, hooks, c=rung_config: task.train(model, c, hooks, progress=progress),
                partial=f"retrain-{candidate.fingerprint}.state.safetensors", final=final, last_epoch=rung_epochs,
            )
            earlier = results.get(candidate.fingerprint)
            results[candidate.fingerprint] = _Retrained(
                candidate, allocation, model, stats,
                quality=task.quality(stats["valid"]) if stats["valid"] else float("nan"),
                seconds=stats["seconds"] + (earlier.seconds if earlier else 0.0),
                epochs=stats["epochs_run"], final=final,
            )
            bar.update(1)
        # Survivors: the best on validation so far (the search's order breaks ties).
        alive = sorted(alive[:count], key=lambda c: -np.nan_to_num(results[c.fingerprint].quality, nan=-np.inf))
    bar.close()
    for candidate in candidates:  # the eliminated candidates' states are not needed any more
        _remove(run, f"retrain-{candidate.fingerprint}.state.safetensors")
    return [results[c.fingerprint] for c in candidates]


def _finetune_then_retrain(
    run: Run,
    config: SearchConfig,
    task: Task,
    candidates: list[Candidate],
    models: dict[str, tuple[Allocation, Model]],
    train_config: Any,
    horizon: int,
    progress: bool,
) -> list[_Retrained]:
    """Judge the candidates by a short fine-tune from the supernet's weights; retrain the best from scratch.

    Each candidate starts from the trained supernet under its allocation, so a few
    epochs (:func:`finetune_epochs`, validated on the search's fitness users) show how
    well it recovers, where a rung of
    successive halving from scratch shows little more than how fast a fresh model
    starts.  Only the winner is trained to the end, from scratch like every
    retrained allocation (the quality a user reproduces without the supernet).
    """
    weights = run.load_tensors("supernet.safetensors")
    # Judged on the search's fitness users: a ranking of all validation users after each
    # fine-tune cost as much as the fine-tune itself.
    short = task.validating_on_subset(replace(train_config, epochs=finetune_epochs(horizon)), config.fitness_users)
    checkpoint_every = config.train.checkpoint_every
    results: list[_Retrained] = []
    bar = tqdm(total=len(candidates) + 1, desc="fine-tune top", unit="training", disable=not progress)
    for candidate in candidates:
        allocation, model = models[candidate.fingerprint]
        model.load_state_dict(weights)  # type: ignore[attr-defined]  (the allocation is not part of the state)
        stats = _train_stage(
            run, "finetune", candidate.fingerprint, model, checkpoint_every,
            lambda model, hooks: task.train(model, short, hooks, progress=False),
            partial=f"finetune-{candidate.fingerprint}.state.safetensors", final=False, last_epoch=short.epochs,
        )
        results.append(_Retrained(candidate, allocation, model, stats,
                                  quality=task.quality(stats["valid"]) if stats["valid"] else float("nan"),
                                  seconds=stats["seconds"], epochs=stats["epochs_run"], final=False))
        bar.update(1)
    # The best after fine-tuning (the search's order breaks ties and stands in without validation).
    best = max(enumerate(results), key=lambda item: (np.nan_to_num(item[1].quality, nan=-np.inf), -item[0]))[1]
    model = build_model(config, task.data)
    model.embedding.set_allocation(best.allocation)
    stats = _train_stage(
        run, "retrain", best.candidate.fingerprint, model, checkpoint_every,
        lambda model, hooks: task.train(model, train_config, hooks, progress=progress),
        partial=f"retrain-{best.candidate.fingerprint}.state.safetensors", last_epoch=train_config.epochs,
    )
    bar.update(1)
    bar.close()
    for candidate in candidates:
        _remove(run, f"finetune-{candidate.fingerprint}.state.safetensors")
    return [*results, _Retrained(best.candidate, best.allocation, model, stats,
                                 quality=task.quality(stats["valid"]) if stats["valid"] else float("nan"),
                                 seconds=stats["seconds"], epochs=stats["epochs_run"], final=True)]


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


def _train_stage(
    run: Run,
    stage: str,
    key: str | None,
    model: Model,
    checkpoint_every: int,
    train: Callable[[Model, TrainHooks], TrainResult],
    *,
    partial: str | None = None,
    final: bool = True,
    last_epoch: int | None = None,
) -> dict[str, Any]:
    """Train ``model`` with ``train(model, hooks)``, or reload it when the run already finished this stage.

    ``key`` names the allocation of a retrain stage.  The training state is saved every
    ``checkpoint_every`` epochs (and at ``last_epoch`` and when training stops) to
    ``checkpoints/<partial>`` (default ``<stage>.state.safetensors``); a training that was
    interrupted continues from it.  A ``final`` stage saves the trained weights and then
    drops the partial state; a non-final one (a rung of successive halving) keeps the
    state for the next rung to continue from, and saves no weights.
    """
    name = stage if key is None else f"{stage}-{key}"
    checkpoint, partial = f"{name}.safetensors", partial or f"{name}.state.safetensors"
    finished = [e for e in run.events("trained") if e.get("stage") == stage and e.get("allocation") == key]
    if finished and (not final or run.has(f"checkpoints/{checkpoint}")):
        if final:
            load_checkpoint(model, run, checkpoint)
        return finished[-1]
    resume = run.load_state(partial) if run.has(f"checkpoints/{partial}") else None

    def save(state: dict[str, Any]) -> None:
        if state["epoch"] % checkpoint_every == 0 or state["stopped"] or state["epoch"] == last_epoch:
            run.save_state(partial, state)

    result = train(model, TrainHooks(on_epoch_end=save, resume=resume))
    if final:
        run.save_tensors(checkpoint, dict(model.state_dict()))  # type: ignore[attr-defined]
    stats = {"stage": stage, "allocation": key, "valid": result.best_valid, "seconds": result.seconds,
             "best_epoch": result.best_epoch, "epochs_run": result.epochs_run}
    run.log_event("trained", **stats)
    if final:
        _remove(run, partial)
    return stats


def _remove(run: Run, checkpoint: str) -> None:
    try:
        os.unlink(run.path("checkpoints", checkpoint))
    except FileNotFoundError:
        pass


def load_checkpoint(model: Model, run: Run, name: str) -> None:
    """Load a run's checkpoint into ``model``, refusing one whose tensors do not match it exactly."""
    try:
        model.load_state_dict(run.load_tensors(name), strict=True)  # type: ignore[attr-defined]
    except RuntimeError as error:
        raise ArtifactError(f"{run.path('checkpoints', name)} does not fit the configured model: {error}") from None


def _search(
    run: Run,
    config: SearchConfig,
    task: Task,
    supernet: Model,
    space: SearchSpace,
    controller: Controller,
    budget: Budget,
    progress: bool,
) -> list[Candidate]:
    """The candidates to retrain: the controller's fittest (its one proposal when it ignores fitness).

    A proposal that ignores fitness is still measured once when there is validation data,
    so every run reports the fitness of its answer; so is a one-shot controller's choice.
    """
    if isinstance(controller, OneShotController):
        if not any(True for _ in run.events("searched")):
            evaluator = build_evaluator(config, task.data, supernet) if task.has_validation else None
            record_one_shot_choice(run, controller, supernet, budget, evaluator)
            run.log_event("searched", top=[c.fingerprint for c in ranked_candidates(run)[:1]], evaluator=config.evaluator,
                          measured=evaluator.measured if evaluator is not None else 0)
        return ranked_candidates(run)[:1]
    if not task.has_validation:
        allocation = space.to_allocation(controller.recommend())
        allocation.validate(budget)
        path = run.path("candidates", f"{allocation.fingerprint()}.npz")
        if not path.exists():
            allocation.save(path)
        return [Candidate(allocation.fingerprint(), float("nan"), allocation.cost, 0)]
    if not any(True for _ in run.events("searched")):
        evaluator = build_evaluator(config, task.data, supernet)
        trials = config.trials if controller.needs_fitness else 1
        run_trials(run, controller, space, budget, evaluator, trials, config.ask_batch, progress=progress)
        ranked = ranked_candidates(run)
        run.log_event("searched", top=[c.fingerprint for c in ranked[: config.retrain_top]], evaluator=config.evaluator,
                      measured=evaluator.measured)
    return ranked_candidates(run)[: config.retrain_top]
