"""The training loop every trainer shares: epochs of batches, validation, early stopping, resume.

:func:`recsys.train.train_bpr` and :func:`recsys.train_ctr.train_ctr` differ only in
where their batches come from, the loss of a batch, how a model is validated and what
extra state their batch source keeps.  They hand those to :func:`fit`, which owns the
rest once: the optimiser, the epoch loop with progress bar, early stopping on the
validation metric with the best state kept and restored, the per-step hook, and the
complete training state handed to ``on_epoch_end`` (and taken back by ``resume``: weights,
optimiser, the batch source's state, the CPU generator and, on a GPU, the GPU's, the early
stopping), so a training killed between epochs continues exactly as if it had never stopped.

A training that diverges stops with :class:`~recsys.errors.TrainingDiverged`.  The loss is
summed on the device without a host sync per step; every :data:`CHECK_EVERY` steps and at
the end of the epoch one sync checks that sum (a single non-finite loss makes it
non-finite), and at the end of each epoch the parameters, their last gradients and the
optimiser's state are checked (a non-finite gradient poisons Adam's moments and the
parameters at once, so it is found there even when it was transient).  These checks come
before validation and before ``on_epoch_end``: a non-finite state is never scored, never
kept as the best state and never handed to a checkpoint hook.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from recsys.errors import TrainingDiverged

__all__ = ["CHECK_EVERY", "Fit", "OptimizerFactory", "TrainHooks", "TrainResult", "check_loop_options", "device_of", "fit"]

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]

#: Steps between the checks of the summed loss (one host sync each): a diverged epoch is
#: stopped within this many steps instead of running to its end, at no measurable cost.
CHECK_EVERY = 64


@dataclass
class TrainHooks:
    """Ways into the training loop for callers that train something more than a plain model.

    Attributes:
        loss: replaces the model's own loss for every batch, called as
            ``loss(model, *batch, reg)`` (a supernet averages the loss of several masked
            variants of the model, for example).
        on_epoch_start: called with the epoch number (from 1) before its first batch; a
            caller that draws random state per epoch seeds it from the epoch so that a
            resumed run draws the same.
        on_epoch_end: called with the complete training state after each epoch (see
            ``resume``): the caller writes it somewhere safe to survive a crash.
        after_step: called after every optimiser step (a one-shot architecture search
            updates its own parameters there, from the gradients of the same loss).
        resume: a state given to ``on_epoch_end`` earlier; training continues after that
            epoch exactly as if it had never stopped (same batches, same optimiser moments,
            same best state and patience count).
        settled: whether a validation now may be chosen: one taken while it returns
            ``False`` is recorded, but is neither a best state nor counted towards patience
            or the learning-rate decay (a pruning search's model is worse at each validation
            while its mask is still shrinking, and early stopping would end the search
            before the mask is final).
    """

    loss: Callable[..., torch.Tensor] | None = None
    on_epoch_start: Callable[[int], None] | None = None
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None
    after_step: Callable[[], None] | None = None
    resume: dict[str, Any] | None = None
    settled: Callable[[], bool] | None = None


@dataclass
class TrainResult:
    """What a training run produced; the model itself holds the best state.

    Attributes:
        best_epoch: epoch of the restored state (the last epoch without validation).
        best_valid: validation metrics of that state (empty without validation).
        history: one dict per epoch: ``epoch``, ``loss`` (mean loss per example),
            ``seconds`` (training time of the epoch) and, when evaluated,
            ``valid`` (the metrics) and ``eval_seconds``.
        seconds: wall time of the whole run, evaluations included.
        epochs_run: epochs trained (fewer than configured after early stopping).
    """

    best_epoch: int
    best_valid: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    epochs_run: int = 0


@dataclass
class Fit:
    """What one trainer brings to :func:`fit`.

    Attributes:
        batches: the batches of an epoch (CPU tensors; the first one's length is the
            number of examples), given the epoch number.
        loss: the model's own loss of a batch, ``loss(model, *batch, reg)``.
        validate: the validation metrics of the model, or ``None`` to train without
            validation (a fixed number of epochs, the last state kept).
        metric: the validation metric that selects the best state.
        higher_is_better: whether a larger ``metric`` is better (AUC, Recall) or worse (log loss).
        state: extra state of the batch source, saved with every epoch (a sampler's).
        load_state: restores ``state`` when resuming.
    """

    batches: Callable[[int], Iterable[tuple[torch.Tensor, ...]]]
    loss: Callable[..., torch.Tensor]
    validate: Callable[[], dict[str, float]] | None
    metric: str
    higher_is_better: bool = True
    state: Callable[[], dict[str, Any]] = dict
    load_state: Callable[[dict[str, Any]], None] = lambda state: None


def fit(
    model: torch.nn.Module,
    loop: Fit,
    *,
    epochs: int,
    lr: float,
    reg: float,
    eval_every: int,
    patience: int,
    seed: int,
    threads: int | None,
    hooks: TrainHooks | None,
    progress: bool,
    optimizer_factory: OptimizerFactory | None,
    lr_decay: float = 1.0,
) -> TrainResult:
    """Train ``model`` for at most ``epochs`` epochs; see the module docstring.

    Every validation that does not improve on the best so far multiplies the learning
    rate by ``lr_decay`` (1: a constant rate).  A large rate learns fast and then levels
    off below what a small one reaches much later; decaying it on a plateau keeps both.
    The decay waits for a first improvement: a model whose second validation falls below
    its first has not reached a plateau but is still starting (a retrain under a sparse
    element mask can dip for a few validations before it climbs), and halving its rate
    there would freeze it near where it began.

    Raises:
        TrainingDiverged: a loss, gradient, parameter or optimiser state became non-finite;
            the model is left holding its best validated state when there is one.
    """
    start = time.perf_counter()
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _fit(model, loop, epochs, lr, reg, eval_every, patience, seed, hooks or TrainHooks(), progress,
                    optimizer_factory, start, lr_decay)
    finally:
        torch.set_num_threads(previous_threads)


def _fit(
    model: torch.nn.Module, loop: Fit, epochs: int, lr: float, reg: float, eval_every: int, patience: int, seed: int,
    hooks: TrainHooks, progress: bool, optimizer_factory: OptimizerFactory | None, start: float, lr_decay: float,
) -> TrainResult:
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters; is its embedding provider an nn.Module?")
    device = params[0].device
    optimizer = optimizer_factory(params) if optimizer_factory is not None else adam(params, lr)
    sign = 1.0 if loop.higher_is_better else -1.0  # the stored best value is always "higher is better"

    history: list[dict[str, Any]] = []
    best_value, best_epoch, best_valid, best_state = -np.inf, 0, {}, None
    since_best, first_epoch, stopped = 0, 1, False
    improved = False  # whether a validation has beaten an earlier one: the rate decays only after that
    if hooks.resume is not None:
        state = hooks.resume
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        loop.load_state(state)
        torch.set_rng_state(state["torch_rng"])
        if "device_rng" in state and device.type == "cuda":  # dropout drawn on the GPU
            torch.cuda.set_rng_state(state["device_rng"], device)
        history = list(state["history"])
        best_value, best_epoch, best_valid = state["best_value"], state["best_epoch"], dict(state["best_valid"])
        best_state = state["best_state"]
        since_best, first_epoch, stopped = state["since_best"], state["epoch"] + 1, state["stopped"]
        improved = state.get("improved", True)  # states saved before the flag decayed from the first validation on
    step_loss = hooks.loss or loop.loss
    shard = _DataParallelStep.for_process_group(model, step_loss, reg, device)

    schedule: Iterable[int] = range(first_epoch, epochs + 1) if not stopped else range(0)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(schedule, desc="train", unit="epoch", initial=first_epoch - 1, total=epochs)
        schedule = bar
    postfix: dict[str, str] = {}
    for epoch in schedule:
        model.train()
        if hooks.on_epoch_start is not None:
            hooks.on_epoch_start(epoch)
        tic = time.perf_counter()
        total, count = torch.zeros((), device=device), 0
        recent: list[torch.Tensor] = []  # the losses since the last check, to name the first bad step
        diverged = _Divergence(model, epoch, lr, reg, hooks, best_state, best_epoch)
        step = 0
        for step, batch in enumerate(loop.batches(epoch), 1):
            if device.type != "cpu":
                batch = tuple(t.to(device, non_blocking=True) for t in batch)
            if shard is None:
                loss = step_loss(model, *batch, reg)
                detached, examples = loss.detach(), len(batch[0])
            else:
                loss, detached, examples = shard(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if hooks.after_step is not None:
                hooks.after_step()
            total += detached * examples  # summed on the device: no sync per step
            count += len(batch[0])
            recent.append(detached)
            if shard is None and step % CHECK_EVERY == 0:  # data-parallel: every process checks the same sum, below
                diverged.check_loss(total, recent, step)
                recent.clear()
        if shard is not None:
            shard.sum_over_processes(total)
        diverged.check_loss(total, recent, step)
        diverged.check_state(optimizer)
        record: dict[str, Any] = {"epoch": epoch, "loss": float(total) / max(count, 1), "seconds": time.perf_counter() - tic,
                                  "lr": optimizer.param_groups[0]["lr"]}
        postfix["loss"] = f"{record['loss']:.4f}"
        stop = False
        if loop.validate is not None and (epoch % eval_every == 0 or epoch == epochs):
            tic = time.perf_counter()
            metrics = loop.validate()
            record["valid"] = metrics
            record["eval_seconds"] = time.perf_counter() - tic
            postfix[loop.metric] = f"{metrics[loop.metric]:.4f}"
            value = sign * metrics[loop.metric]
            if hooks.settled is not None and not hooks.settled():
                pass  # recorded in the history, never chosen: the model is still changing shape
            elif value > best_value:
                improved = improved or np.isfinite(best_value)
                best_value, best_epoch, best_valid = value, epoch, metrics
                best_state = copy.deepcopy(model.state_dict())
                since_best = 0
            else:
                since_best += 1
                stop = since_best >= patience
                if improved:  # a model still starting is not on a plateau
                    for group in optimizer.param_groups:  # saved with the optimiser's state, so a resume keeps it
                        group["lr"] *= lr_decay
        history.append(record)
        if bar is not None:
            bar.set_postfix(postfix)
        if hooks.on_epoch_end is not None:
            hooks.on_epoch_end({
                "epoch": epoch, "stopped": stop, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                **loop.state(), "torch_rng": torch.get_rng_state(), **_device_rng(device), "history": history,
                "best_value": best_value,
                "best_epoch": best_epoch, "best_valid": best_valid, "best_state": best_state, "since_best": since_best,
                "improved": improved,
            })
        if stop:
            break
    if bar is not None:
        bar.close()
    if shard is not None:
        shard.close()
    epochs_run = len(history)
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_epoch = epochs_run
    return TrainResult(best_epoch=best_epoch, best_valid=dict(best_valid), history=history,
                       seconds=time.perf_counter() - start, epochs_run=epochs_run)


class _DataParallelStep:
    """One step on this process's share of every batch, the gradients averaged over the processes by DDP.

    When the training runs in a ``torch.distributed`` process group of several processes
    (each holding the same model, seed and batch source), every process draws the same
    global batch, computes the loss on its contiguous share of it and
    :class:`~torch.nn.parallel.DistributedDataParallel` averages the gradients.  The share's
    mean loss is weighted by its size, so the averaged gradient is the global batch's,
    as in one process, up to the order floats are added in, for a loss that is a mean over
    the batch's examples (BPR, binary cross-entropy).  A loss that couples the examples of
    a batch (in-batch negatives, InfoNCE) sees each process's share alone.
    """

    def __init__(self, model: torch.nn.Module, loss: Callable[..., torch.Tensor], reg: float, device: torch.device,
                 rank: int, world: int) -> None:
        from torch.nn.parallel import DistributedDataParallel

        self.rank, self.world = rank, world
        self.module = _Loss(model, loss, reg)
        self.parallel: Any = DistributedDataParallel(self.module, device_ids=[device] if device.type == "cuda" else None,
                                                     forward_sync_buffers=False)

    @classmethod
    def for_process_group(cls, model: torch.nn.Module, loss: Callable[..., torch.Tensor], reg: float,
                          device: torch.device) -> _DataParallelStep | None:
        """The step of this process in its group; ``None`` outside a process group of several processes."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return None
        return cls(model, loss, reg, device, dist.get_rank(), dist.get_world_size())

    def __call__(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The loss to differentiate, this share's mean loss and its number of examples."""
        examples = len(batch[0])
        share = tuple(t.tensor_split(self.world)[self.rank] for t in batch)
        mine = len(share[0])
        if mine == 0:  # a last batch smaller than the group: this process adds zero gradients
            mean = self.parallel(*(t[:1] for t in batch))
            return mean * 0.0, mean.detach() * 0.0, 0
        mean = self.parallel(*share)
        return mean * (self.world * mine / examples), mean.detach(), mine

    def close(self) -> None:
        """Free DDP's reducer now, while its process group exists.

        Left to a later garbage collection (DDP's objects hold reference cycles), it could
        run after the group is destroyed, which aborts the process.
        """
        import gc

        self.parallel = None
        gc.collect()

    def sum_over_processes(self, total: torch.Tensor) -> None:
        """Sum ``total`` (an epoch's summed loss) over the processes, in place."""
        import torch.distributed as dist

        dist.all_reduce(total)


class _Loss(torch.nn.Module):
    """A step's loss as a module's forward, which is what DDP wraps."""

    def __init__(self, model: torch.nn.Module, loss: Callable[..., torch.Tensor], reg: float) -> None:
        super().__init__()
        self.model, self.loss, self.reg = model, loss, reg

    def forward(self, *batch: torch.Tensor) -> torch.Tensor:
        return self.loss(self.model, *batch, self.reg)


class _Divergence:
    """The checks of one epoch for non-finite values, and the error that names what went wrong."""

    def __init__(self, model: torch.nn.Module, epoch: int, lr: float, reg: float, hooks: TrainHooks,
                 best_state: dict[str, Any] | None, best_epoch: int) -> None:
        self.model, self.epoch, self.lr, self.reg, self.hooks = model, epoch, lr, reg, hooks
        self.best_state, self.best_epoch = best_state, best_epoch

    def check_loss(self, total: torch.Tensor, recent: list[torch.Tensor], step: int) -> None:
        """Raise when the summed loss is not finite (one host sync), naming the first bad step among ``recent``."""
        if bool(torch.isfinite(total)):
            return
        first: int | None = None
        what = "the loss summed over the epoch overflowed"
        if recent:
            losses = torch.stack([t.reshape(()).float() for t in recent]).cpu()
            bad = torch.nonzero(~torch.isfinite(losses)).flatten()
            if len(bad):
                index = int(bad[0])
                first = step - len(recent) + index + 1
                what = f"the loss became {float(losses[index])}"
        self.fail(what, ["loss"], first)

    def check_state(self, optimizer: torch.optim.Optimizer) -> None:
        """Raise when a parameter, its last gradient or its optimiser state holds a non-finite value."""
        found: list[str] = []
        for name, param in self.model.named_parameters():
            if not param.requires_grad:
                continue
            parts = []
            if not _finite(param.detach()):
                parts.append("parameter")
            if param.grad is not None and not _finite(param.grad):
                parts.append("gradient")
            state = optimizer.state.get(param, {})
            if any(torch.is_tensor(v) and v.is_floating_point() and not _finite(v) for v in state.values()):
                parts.append("optimiser state")
            if parts:
                found.append(f"{name} ({', '.join(parts)})")
        if found:
            shown = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
            self.fail(f"non-finite values in {shown}", found, None)

    def fail(self, what: str, found: list[str], step: int | None) -> None:
        """Restore the best state (if any) and raise :class:`TrainingDiverged`."""
        where = f"epoch {self.epoch}" + (f", step {step}" if step is not None else "")
        parts = [
            f"training diverged in {where}: {what}",
            (f"the learning rate (lr={self.lr:g}) is likely too high, or the regularisation (reg={self.reg:g}) "
             "too strong; lower them and train again"),
        ]
        if self.hooks.on_epoch_end is not None:
            parts.append(f"nothing of epoch {self.epoch} was saved, so the last checkpoint written before it is kept")
        best_epoch: int | None = None
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
            best_epoch = self.best_epoch
            parts.append(f"the model holds its best state (epoch {best_epoch})")
        raise TrainingDiverged("; ".join(parts), epoch=self.epoch, step=step, what=found, best_epoch=best_epoch)


def _finite(tensor: torch.Tensor) -> bool:
    """Whether every value of ``tensor`` (dense or sparse) is finite."""
    values = tensor.coalesce().values() if tensor.is_sparse else tensor
    return bool(torch.isfinite(values).all())


def device_of(model: Any) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    parameters = getattr(model, "parameters", None)
    first = next(iter(parameters()), None) if parameters is not None else None
    return torch.device("cpu") if first is None else first.device


def check_loop_options(epochs: int, batch_size: int, lr: float, reg: float, eval_every: int, patience: int,
                       threads: int | None, lr_decay: float = 1.0) -> None:
    """Refuse loop options :func:`fit` cannot run with (every trainer's configuration checks these).

    An infinite or NaN learning rate or regularisation is refused here: it would train
    straight to non-finite weights.

    Raises:
        ValueError: naming the first option out of range and its value.
    """
    checks = [
        (epochs >= 1, f"epochs must be >= 1, got {epochs}"),
        (batch_size >= 1, f"batch_size must be >= 1, got {batch_size}"),
        (lr > 0 and math.isfinite(lr), f"lr must be > 0 and finite, got {lr}"),
        (reg >= 0 and math.isfinite(reg), f"reg must be >= 0 and finite, got {reg}"),
        (eval_every >= 1, f"eval_every must be >= 1, got {eval_every}"),
        (patience >= 1, f"patience must be >= 1 evaluation, got {patience}"),
        (threads is None or threads >= 1, f"threads must be >= 1 or None, got {threads}"),
        (0 < lr_decay <= 1, f"lr_decay must be in (0, 1], got {lr_decay}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def _device_rng(device: torch.device) -> dict[str, torch.Tensor]:
    """The GPU generator's state, saved beside the CPU one: dropout on a GPU draws from it."""
    return {"device_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}


def adam(params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """Adam, fused when every parameter is a dense floating CPU/GPU tensor (fused needs that).

    Fused Adam does the whole update in one kernel over all parameters, where the
    for-each variant runs one pass over the tables per elementwise operation; on
    embedding tables the fused step is much cheaper.
    """
    fusable = all(p.is_floating_point() and p.layout == torch.strided for p in params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True) if fusable else torch.optim.Adam(params, lr=lr)
    except (RuntimeError, TypeError):  # an older torch or an unsupported device
        return torch.optim.Adam(params, lr=lr)
