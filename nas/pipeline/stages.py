"""What the stages of a search share: the :class:`RunContext`, and one crash-safe training stage.

:func:`train_stage` is how every training of a run happens (the supernet, each retrained
allocation, the cached full reference model): the state saved as it goes, a killed
training continued from its last checkpoint, a finished one reloaded instead of redone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas.core.budget import Budget
from nas.core.controller import Controller, OneShotController
from nas.core.errors import ArtifactError
from nas.core.space import SearchSpace
from nas.pipeline.build import Data, Model, build_model, load_checkpoint
from nas.pipeline.config import SearchConfig
from nas.pipeline.runs import Run
from nas.pipeline.tasks import Task
from recsys.train import TrainHooks, TrainResult

if TYPE_CHECKING:
    from nas.pipeline.executors import Executor

__all__ = ["RunContext", "finished_stage", "logged_stats", "partial_state", "record_stage", "train_stage"]


@dataclass(frozen=True)
class RunContext:
    """What every stage of one search shares, built once by :func:`nas.pipeline.search.open_run`.

    Attributes:
        config: the run's configuration.
        task: the data with the operations that depend on its kind, training with the
            run's objective (built once, handed to every stage).
        budget: the hard budget.
        space: the search space.
        controller: the controller.
        run: the run folder, or a :class:`~nas.pipeline.runs.MemoryRun`.
        train_config: the task's trainer configuration for this run.
        progress: whether to draw progress bars.
        reference_cache: where plainly trained full reference models are cached (``None``:
            :func:`nas.pipeline.reference.default_cache`).
        shared_supernet: a folder the sandwich supernet is trained into once and read from by
            every run given it (the searches of one front); ``None``: the run trains its own.
        executor: where the search's independent jobs run (fitness rounds, retrains;
            :mod:`nas.pipeline.executors`); :func:`~nas.pipeline.search.open_run` always sets one.
        ddp: processes that train each training of the run data-parallel
            (:mod:`nas.pipeline.data_parallel`).
    """

    config: SearchConfig
    task: Task
    budget: Budget
    space: SearchSpace
    controller: Controller | OneShotController
    run: Run
    train_config: Any
    progress: bool
    reference_cache: Path | None = None
    shared_supernet: Path | None = None
    executor: Executor | None = None
    ddp: int = 1

    @property
    def data(self) -> Data:
        return self.task.data

    def new_model(self) -> Model:
        """A fresh backbone of the run (seeded by the run's seed)."""
        return build_model(self.config, self.task)


def train_stage(
    ctx: RunContext,
    stage: str,
    key: str | None,
    model: Model,
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
    finished = finished_stage(ctx, stage, key, model, final=final)
    if finished is not None:
        return finished
    partial = _partial_name(stage, key, partial)
    run, checkpoint_every = ctx.run, ctx.config.train.checkpoint_every

    def save(state: dict[str, Any]) -> None:
        if state["epoch"] % checkpoint_every == 0 or state["stopped"] or state["epoch"] == last_epoch:
            run.save_state(partial, state)

    result = train(model, TrainHooks(on_epoch_end=save, resume=partial_state(ctx, partial)))
    return record_stage(ctx, stage, key, model, result, partial=partial, final=final)


def _partial_name(stage: str, key: str | None, partial: str | None = None) -> str:
    """Where a stage's training state is checkpointed (``partial``, by default ``<stage>[-<key>].state.safetensors``)."""
    return partial or f"{stage if key is None else f'{stage}-{key}'}.state.safetensors"


def partial_state(ctx: RunContext, partial: str) -> dict[str, Any] | None:
    """The training state an interrupted stage (or an earlier rung) left in ``checkpoints/<partial>``, if any."""
    return ctx.run.load_state(partial) if ctx.run.has(f"checkpoints/{partial}") else None


def finished_stage(ctx: RunContext, stage: str, key: str | None, model: Model, *, final: bool = True) -> dict[str, Any] | None:
    """The logged stats of a stage the run already finished (its weights loaded into ``model`` when ``final``), else ``None``."""
    run = ctx.run
    finished = [e for e in run.events("trained") if e.get("stage") == stage and e.get("allocation") == key]
    checkpoint = _checkpoint_name(stage, key)
    if finished and (not final or run.has(f"checkpoints/{checkpoint}")):
        if final:
            load_checkpoint(model, run, checkpoint)
        return logged_stats(ctx, finished[-1])
    return None


def record_stage(
    ctx: RunContext, stage: str, key: str | None, model: Model, result: TrainResult, *, partial: str, final: bool = True
) -> dict[str, Any]:
    """Keep a finished training in the run: the weights of a ``final`` stage, then its ``trained`` event; returns its stats."""
    run = ctx.run
    if final:
        run.save_tensors(_checkpoint_name(stage, key), dict(model.state_dict()))  # type: ignore[attr-defined]
    stats = {"stage": stage, "allocation": key, "valid": result.best_valid, "seconds": result.seconds,
             "best_epoch": result.best_epoch, "epochs_run": result.epochs_run, "curve": training_curve(ctx, result.history)}
    run.log_event("trained", **stats)
    if final:
        run.remove(f"checkpoints/{partial}")
    return stats


def _checkpoint_name(stage: str, key: str | None) -> str:
    return f"{stage if key is None else f'{stage}-{key}'}.safetensors"


def training_curve(ctx: RunContext, history: list[dict[str, Any]]) -> list[list[float | None]]:
    """``[epoch, loss, validation quality or None]`` per epoch, for the report's training curves."""
    curve: list[list[float | None]] = []
    for record in history:
        quality = ctx.task.quality(record["valid"]) if record.get("valid") else None
        curve.append([int(record["epoch"]), float(record["loss"]), None if quality is None else float(quality)])
    return curve


def logged_stats(ctx: RunContext, event: dict[str, Any]) -> dict[str, Any]:
    """A finished stage's logged stats, refused when its validation metrics are not the ones this task reads back."""
    if event["valid"]:
        try:
            ctx.task.quality(event["valid"])
        except (KeyError, TypeError, ValueError) as error:
            raise ArtifactError(f"{ctx.run.path('events.jsonl')}: the {event['stage']} stage's logged validation "
                                f"metrics are not this task's ({error}); the log was edited or damaged") from None
    return event
