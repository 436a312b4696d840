"""Executors: where a search's independent jobs run, in this process or as Ray tasks.

Two parts of a search are naturally parallel: the fitness of a round of candidates (a
controller asked for ``ask_batch`` at once) and the retrains of the top candidates (all
of them, each rung of successive halving, each fine-tune).  An executor runs those jobs;
everything else (the supernet, the controller, the log) stays in the process that runs
the search, the *driver*.

* :class:`LocalExecutor` (the default) runs them one after another in the driver.
* :class:`RayExecutor` runs them as Ray tasks, each with its share of the cluster's CPUs
  (and GPUs, fractions allowed).  The data, the configuration and the supernet's weights
  are put in Ray's object store once; a task reads them from there, never from files.

Whatever the executor, the driver is the only writer of the run folder: a job's result
comes back to it and is checkpointed and logged there, in the order the jobs were given.
So the events log is the same as with the local executor, append-only and ordered; a
task whose worker dies is retried by Ray (``retries``) and logged once, when it
succeeds; and a driver killed at any point resumes with ``embnas resume`` like any run
(logged trials are not measured again, finished trainings are reloaded, an unfinished
rung continues from the state the previous one left).  Each job is seeded by the run
alone, so the same seed gives the same trials, allocation and metrics on either executor
(with the same number of torch threads per training: ``--threads``; float sums can
differ in their last bits between thread counts).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nas.core.allocation import Allocation
from nas.core.errors import ConfigError
from nas.core.evaluator import Evaluator
from nas.pipeline.build import Data, Model, build_evaluator, build_model
from nas.pipeline.config import SearchConfig
from nas.pipeline.data_parallel import Retraining, train_data_parallel
from nas.pipeline.stages import finished_stage, partial_state, record_stage, train_stage
from nas.pipeline.tasks import task_for
from recsys.train import TrainHooks, TrainResult

if TYPE_CHECKING:
    from nas.pipeline.stages import RunContext

__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "RayExecutor", "TrainJob", "make_executor"]

#: The executors by name, as ``--executor`` takes them.
EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class TrainJob:
    """One training of a stage of the run: ``model`` trained under ``allocation`` with the trainer's ``config``.

    Attributes:
        stage: the stage's name in the log (``retrain``, ``retrain-rung0``, ``finetune``).
        key: the allocation's fingerprint.
        model: the driver's model; it holds the trained weights afterwards.
        allocation: the allocation the model is trained under.
        config: the task's trainer configuration (epochs, learning rate, validation users).
        partial: the checkpoint of the training state (see :func:`~nas.pipeline.stages.train_stage`).
        final: a stage trained to its end (weights kept) rather than a rung continued later.
        last_epoch: the epoch the state is saved at whatever ``checkpoint_every`` says.
        start: weights loaded before training (a fine-tune from the supernet); ``None``: the
            model's own initialisation.
        progress: draw the training's progress bar (in the driver only).
    """

    stage: str
    key: str
    model: Model
    allocation: Allocation
    config: Any
    partial: str
    final: bool = True
    last_epoch: int | None = None
    start: dict[str, Any] | None = None
    progress: bool = False


class Executor:
    """Runs a search's independent jobs; :class:`LocalExecutor` and :class:`RayExecutor` are the two kinds."""

    name = ""

    def train(self, ctx: RunContext, jobs: Sequence[TrainJob]) -> Iterator[dict[str, Any]]:
        """Train (or reload, when the run finished them) ``jobs``; yields each one's stats in their order."""
        raise NotImplementedError

    def evaluator(self, ctx: RunContext, evaluator: Evaluator, supernet: Model) -> Evaluator:
        """The evaluator the search measures fitness with: ``evaluator`` itself, or one that spreads its rounds."""
        return evaluator

    def close(self) -> None:
        """Release what the executor started (a Ray cluster it started is shut down)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalExecutor(Executor):
    """Every job in the driver, one after another (checkpointed every ``checkpoint_every`` epochs; data-parallel with ``ddp``)."""

    name = "local"

    def train(self, ctx: RunContext, jobs: Sequence[TrainJob]) -> Iterator[dict[str, Any]]:
        for job in jobs:
            def train(model: Model, hooks: TrainHooks, job: TrainJob = job) -> TrainResult:
                return train_data_parallel(ctx.ddp, ctx.config, ctx.task, model, hooks,
                                           Retraining(job.allocation, job.config, job.start), job.progress)

            yield train_stage(ctx, job.stage, job.key, job.model, train, partial=job.partial, final=job.final,
                              last_epoch=job.last_epoch)


class RayExecutor(Executor):
    """Jobs as Ray tasks, ``workers`` at a time, each with its share of the cluster's CPUs and GPUs.

    Args:
        workers: jobs run at once; each asks Ray for ``1/workers`` of the cluster's CPUs
            (and of its GPUs, when the run's device is a GPU).  ``None``: one per CPU.
        address: a running cluster (``"auto"``, ``"ray://host:10001"``); ``None`` starts a
            local one on this machine's CPUs, shut down by :meth:`close`.  Ray already
            initialised by the caller is used as it is, and left running.
        retries: how often Ray retries a task whose worker died (``max_retries``).

    The package must be importable on every node (``pip install "embnas[ray]"`` there too).
    """

    name = "ray"

    def __init__(self, workers: int | None = None, address: str | None = None, retries: int = 3) -> None:
        if workers is not None and workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {workers}")
        if retries < 0:
            raise ConfigError(f"retries must be at least 0, got {retries}")
        try:
            import ray
        except ImportError:
            raise ConfigError('the ray executor needs Ray: pip install "embnas[ray]"') from None
        self._ray = ray
        self.workers, self.address, self.retries = workers, address, retries
        self._started = False
        self._shared: dict[str, Any] = {}  # the run's (config, data) in the object store, by data fingerprint and config

    def _connect(self) -> Any:
        ray = self._ray
        if not ray.is_initialized():
            ray.init(address=self.address, num_cpus=self.workers if self.address is None else None,
                     include_dashboard=False, log_to_driver=False)
            self._started = True
        return ray

    def _resources(self, config: SearchConfig) -> dict[str, float]:
        """One job's share of the cluster: its CPUs, and its GPUs when the run trains on one."""
        total = self._connect().cluster_resources()
        cpus = float(total.get("CPU", 1))
        workers = self.workers or max(int(cpus), 1)
        share = {"num_cpus": cpus / workers}
        if config.device.startswith("cuda"):
            gpus = float(total.get("GPU", 0))
            if gpus <= 0:
                raise ConfigError(f"the run trains on {config.device} and the Ray cluster has no GPU; "
                                  "use --device cpu or a cluster with GPUs")
            share["num_gpus"] = gpus / workers
        return share

    def _shared_ref(self, ctx: RunContext) -> Any:
        """The run's configuration and data in the object store (put once per run)."""
        key = f"{ctx.data.fingerprint()}/{ctx.run.config_hash}"
        if key not in self._shared:
            self._shared[key] = self._connect().put((ctx.config, ctx.data))
        return self._shared[key]

    def _remote(self, function: Any, config: SearchConfig) -> Any:
        return self._ray.remote(function).options(max_retries=self.retries, **self._resources(config))

    def train(self, ctx: RunContext, jobs: Sequence[TrainJob]) -> Iterator[dict[str, Any]]:
        ray = self._connect()
        shared, remote = self._shared_ref(ctx), self._remote(_train_job, ctx.config)
        starts: dict[int, Any] = {}  # each distinct start (the supernet's weights) put once
        pending: dict[int, Any] = {}
        for index, job in enumerate(jobs):
            if finished_stage(ctx, job.stage, job.key, job.model, final=job.final) is not None:
                continue
            start = None
            if job.start is not None:
                start = starts.setdefault(id(job.start), ray.put(job.start))
            pending[index] = remote.remote(shared, job.allocation, job.config, start, partial_state(ctx, job.partial),
                                           job.final, job.last_epoch)
        for index, job in enumerate(jobs):
            if index not in pending:
                yield finished_stage(ctx, job.stage, job.key, job.model, final=job.final)  # type: ignore[misc]
                continue
            weights, state, result = ray.get(pending.pop(index))
            job.model.load_state_dict(weights)
            if not job.final and state is not None:  # the next rung continues from here (None: it had, already)
                ctx.run.save_state(job.partial, state)
            yield record_stage(ctx, job.stage, job.key, job.model, result, partial=job.partial, final=job.final)

    def evaluator(self, ctx: RunContext, evaluator: Evaluator, supernet: Model) -> Evaluator:
        return _SpreadEvaluator(self, ctx, evaluator, supernet)

    def close(self) -> None:
        self._shared.clear()
        if self._started:
            self._ray.shutdown()
            self._started = False


class _SpreadEvaluator(Evaluator):
    """An evaluator whose rounds are split into one chunk per worker, each measured by a Ray task.

    The full model's quality is measured in the driver (once); a round of one candidate
    too (there is nothing to spread).
    """

    def __init__(self, executor: RayExecutor, ctx: RunContext, local: Evaluator, supernet: Model) -> None:
        super().__init__()
        self.name, self._executor, self._ctx, self._local = local.name, executor, ctx, local
        self._supernet = supernet
        self._weights: Any = None

    def _reference_quality(self) -> float:
        return self._local.reference

    def _qualities(self, allocations: Sequence[Allocation]) -> Sequence[float]:
        executor, ctx = self._executor, self._ctx
        if len(allocations) == 1:
            return self._local._qualities(allocations)
        ray = executor._connect()
        if self._weights is None:
            self._weights = ray.put(dict(self._supernet.state_dict()))
        workers = executor.workers or max(int(ray.cluster_resources().get("CPU", 1)), 1)
        size = math.ceil(len(allocations) / min(workers, len(allocations)))
        remote = executor._remote(_qualities_job, ctx.config)
        chunks = [list(allocations[i:i + size]) for i in range(0, len(allocations), size)]
        shared = executor._shared_ref(ctx)
        return [q for chunk in ray.get([remote.remote(shared, self._weights, c) for c in chunks]) for q in chunk]


def make_executor(name: str = "local", *, workers: int | None = None, address: str | None = None) -> Executor:
    """The executor called ``name`` (:data:`EXECUTORS`), as the command line's ``--executor`` builds it."""
    if name == "local":
        if workers is not None or address is not None:
            raise ConfigError("--workers and --ray-address need --executor ray")
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(workers, address)
    raise ConfigError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")


# The tasks themselves: plain functions of what the object store holds, run in a Ray worker.

def _train_job(
    shared: tuple[SearchConfig, Data], allocation: Allocation, train_config: Any, start: dict[str, Any] | None,
    resume: dict[str, Any] | None, final: bool, last_epoch: int | None,
) -> tuple[dict[str, Any], dict[str, Any] | None, TrainResult]:
    """Train one allocation; returns its weights, the state a later rung continues from (not final), the result."""
    import copy

    config, data = shared
    task = task_for(data, config.train)
    model = build_model(config, task)
    kept: dict[str, Any] = {}

    def keep(state: dict[str, Any]) -> None:  # the state at the rung's end, where the next rung continues
        if not final and (state["stopped"] or state["epoch"] == last_epoch):
            kept["state"] = copy.deepcopy(state)

    result = Retraining(allocation, train_config, start).train(config, task, model,
                                                               TrainHooks(on_epoch_end=keep, resume=resume), False)
    return dict(model.state_dict()), kept.get("state"), result


def _qualities_job(shared: tuple[SearchConfig, Data], weights: dict[str, Any], allocations: list[Allocation]) -> list[float]:
    """The raw qualities of ``allocations`` on the supernet, measured as the run's own evaluator measures them."""
    config, data = shared
    task = task_for(data, config.train)
    model = build_model(config, task)
    model.load_state_dict(weights)
    return [float(q) for q in build_evaluator(config, task, model)._qualities(allocations)]
