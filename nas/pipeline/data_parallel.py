"""Data-parallel training on one machine: ``--ddp N`` trains the supernet and every retrain with N processes.

The process that runs the search is rank 0: it keeps its model, its hooks and the run
folder.  For each training it starts ``N - 1`` helper processes (``spawn``) that rebuild
the same model from the run's configuration and data, join a process group with it
(gloo on a CPU, NCCL on GPUs, one GPU per rank) and train on their shares of every batch;
PyTorch's :class:`~torch.nn.parallel.DistributedDataParallel` averages the gradients
(:class:`recsys._loop._DataParallelStep`), so every process holds the same weights after
every step.  Only rank 0 writes: the checkpoints and the log, atomically as always; a
training killed at any point resumes from rank 0's last checkpoint, which every process
loads.  The result equals one process's on the same global batch up to the order floats
are added in (a test holds it to 1e-5), for a loss that is a mean over the batch's
examples (BPR, binary cross-entropy).

A training is described by a small picklable object (:class:`Retraining`,
:class:`SupernetTraining`) that each process runs on its own model; everything else a
helper needs comes from the configuration, which seeds it exactly as it seeds rank 0.
"""

from __future__ import annotations

import os
import pickle
import time
from dataclasses import dataclass, replace
from datetime import timedelta
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch

from nas.core.allocation import Allocation
from nas.core.budget import Budget
from nas.core.errors import ConfigError, WorkerError
from nas.core.space import SearchSpace
from nas.pipeline.build import Model, build_model, build_search
from nas.pipeline.config import SearchConfig, SupernetOptions
from nas.pipeline.supernet import train_supernet
from nas.pipeline.tasks import Task, task_for
from recsys.train import TrainHooks, TrainResult

__all__ = ["Retraining", "SupernetTraining", "Training", "train_data_parallel"]

#: How long a process waits for the others at a collective before it gives up.
_TIMEOUT = timedelta(minutes=30)


class Training(Protocol):
    """One training of a run, runnable by every process of a group on its own model."""

    def train(self, config: SearchConfig, task: Task, model: Model, hooks: TrainHooks, progress: bool) -> TrainResult:
        ...


@dataclass(frozen=True)
class Retraining:
    """A model trained under ``allocation`` with the trainer's ``config``, from ``start`` (weights) or from scratch."""

    allocation: Allocation
    config: Any
    start: dict[str, Any] | None = None

    def train(self, config: SearchConfig, task: Task, model: Model, hooks: TrainHooks, progress: bool) -> TrainResult:
        if self.start is not None:
            model.load_state_dict(self.start)
        model.embedding.set_allocation(self.allocation)
        return task.train(model, self.config, hooks, progress=progress)


@dataclass(frozen=True)
class SupernetTraining:
    """The supernet trained under ``budgets`` (one, or several in turn) with the trainer's ``config`` and ``options``.

    ``space`` and ``proposals`` are the run's own, used by rank 0; they are not sent to the
    helpers (a per-feature space holds about 80 bytes a row), which rebuild them from the
    configuration: seeded, so every process gets the same space and draws the same proposals.
    """

    config: Any
    options: SupernetOptions
    budgets: Budget | list[Budget]
    space: SearchSpace | None = None
    proposals: Callable[[np.random.Generator, int], np.ndarray] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "space": None, "proposals": None}

    def train(self, config: SearchConfig, task: Task, model: Model, hooks: TrainHooks, progress: bool) -> TrainResult:
        space, proposals = self.space, self.proposals
        if space is None:  # a helper
            _, space, controller = build_search(config, task)
            proposals = controller.supernet_proposals if self.options.proposals == "controller" else None  # type: ignore[union-attr]
        return train_supernet(model, task, space, self.budgets, self.config, self.options, hooks=hooks,
                              progress=progress, proposals=proposals)


def train_data_parallel(
    processes: int, config: SearchConfig, task: Task, model: Model, hooks: TrainHooks, training: Training,
    progress: bool,
) -> TrainResult:
    """Run ``training`` on ``model`` in this process (rank 0) and ``processes - 1`` helpers; one process: here alone.

    Raises:
        ConfigError: more processes than GPUs on a GPU run.
        WorkerError: a helper died (its exit code is named; the run resumes from its last
            checkpoint); rank 0's own errors (a diverged training, say) are raised as they
            are, every process having stopped.
    """
    if processes < 2:
        return training.train(config, task, model, hooks, progress)
    gpu = config.device.startswith("cuda")
    if gpu and torch.cuda.device_count() < processes:
        raise ConfigError(f"--ddp {processes} on {config.device} needs {processes} GPUs, this machine has "
                          f"{torch.cuda.device_count()}; lower --ddp")
    import torch.distributed as dist
    import torch.multiprocessing as mp

    backend = "nccl" if gpu else "gloo"
    store = dist.TCPStore("127.0.0.1", 0, processes, is_master=True, timeout=_TIMEOUT, wait_for_workers=False)
    # What the helpers need goes through the store, copied: a spawned process's own arguments would
    # share tensors' memory with this one, and a large argument blocks this process for good when
    # the helper dies before reading it.
    store.set("payload", pickle.dumps((config, task.data, training, hooks.resume), protocol=pickle.HIGHEST_PROTOCOL))
    context = mp.get_context("spawn")
    helpers = [context.Process(target=_helper, args=(rank, processes, store.port, backend), daemon=True)
               for rank in range(1, processes)]
    for helper in helpers:
        helper.start()
    failed = True
    try:
        _wait_until_joined(store, helpers)
        dist.init_process_group(backend, store=store, rank=0, world_size=processes, timeout=_TIMEOUT)
        try:
            result = training.train(config, task, model, hooks, progress)
            dist.barrier()  # every process done with the group before any tears its connections down
        except RuntimeError as error:  # gloo: "Connection closed by peer"; NCCL: a timeout
            dead = _dead(helpers, wait=5.0)
            if dead:
                raise WorkerError(f"data-parallel helper process {dead[0][0]} died (exit code {dead[0][1]}) while "
                                  "training; the run keeps its last checkpoint: continue it with `embnas resume "
                                  "<run>`") from error
            raise
        finally:
            dist.destroy_process_group()
        failed = False
        return result
    finally:
        for helper in helpers:
            helper.join(timeout=None if not failed else 10)
            if helper.is_alive():
                helper.kill()
                helper.join()
        codes = [helper.exitcode for helper in helpers]
        if not failed and any(codes):
            raise WorkerError(f"a data-parallel helper process failed (exit codes {codes}); its error is above")


def _dead(helpers: list[Any], wait: float = 0.0) -> list[tuple[int, int]]:
    """``(rank, exit code)`` of the helpers that have ended (waiting up to ``wait`` seconds for one to)."""
    deadline = time.monotonic() + wait
    while True:
        dead = [(rank, h.exitcode) for rank, h in enumerate(helpers, 1) if h.exitcode is not None]
        if dead or time.monotonic() >= deadline:
            return dead
        time.sleep(0.05)


def _wait_until_joined(store: Any, helpers: list[Any]) -> None:
    """Wait until every helper has reached the store; one that died first is an error, not a wait without end."""
    keys = [f"joined/{rank}" for rank in range(1, len(helpers) + 1)]
    while not store.check(keys):
        dead = _dead(helpers)
        if dead:
            raise WorkerError(f"data-parallel helper process {dead[0][0]} ended (exit code {dead[0][1]}) before "
                               "training began; its error is above (a script that starts a data-parallel run needs "
                               "the `if __name__ == \"__main__\":` guard that every spawned process needs)")
        time.sleep(0.02)


def _helper(rank: int, processes: int, port: int, backend: str) -> None:
    """Rank ``rank``: the run's model rebuilt here from the store's payload, trained in the group, nothing written."""
    import torch.distributed as dist

    store = dist.TCPStore("127.0.0.1", port, processes, is_master=False, timeout=_TIMEOUT)
    store.set(f"joined/{rank}", "1")
    config, data, training, resume = pickle.loads(store.get("payload"))
    if config.device.startswith("cuda"):
        torch.cuda.set_device(rank)
        config = replace(config, device=f"cuda:{rank}")
    elif config.threads is None:
        torch.set_num_threads(max(1, (os.cpu_count() or processes) // processes))
    dist.init_process_group(backend, store=store, rank=rank, world_size=processes, timeout=_TIMEOUT)
    try:
        task = task_for(data, config.train)
        training.train(config, task, build_model(config, task), TrainHooks(resume=resume), False)
        dist.barrier()  # rank 0 may still be validating or checkpointing: leave the group together
    finally:
        dist.destroy_process_group()
