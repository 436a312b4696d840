"""The supernet: one set of full-size weights trained so that any allocation of the space can be scored.

Two ways to train it:

* ``"sandwich"``: every step averages the loss (BPR for top-k data,
  binary cross-entropy for click data) of the *largest*
  allocation (every row at ``d_max``), the *smallest* (every decision at its least
  size) and a few *random feasible* allocations of the active space under the budget.
  The leading dimensions of every row thus learn to work on their own, which is
  what masking assumes.  The variants share one gather of the batch's rows
  (:meth:`MaskableEmbedding.set_variants`); a dot-product backbone that offers
  ``prefix_bpr_loss`` (MF) computes all of them from prefix sums instead, so a step
  costs little more than a plain one whatever the number of variants.
* ``"full"``: plain full-size training (BET's pre-trained backbone).  A run takes it from
  the cache of full reference models (:mod:`nas.pipeline.reference`) instead of training it.

``"auto"`` (the default of a run) is whichever of the two the controller's fitness is designed
for (:attr:`~nas.core.controller.Controller.preferred_supernet`), else the sandwich.

Random allocations are drawn per epoch into a small pool, seeded by the run's seed and
the epoch number; each step picks from the pool.  A run resumed at an epoch boundary
therefore draws exactly what the uninterrupted run drew.  They come from the space
(uniform sizes, projected) or, with ``proposals="controller"``, from the controller's own
proposal distribution (:meth:`~nas.core.controller.Controller.supernet_proposals`), so the
weights learn most about the allocations that will be scored on them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from nas.core.budget import Budget
from nas.core.controller import OneShotController
from nas.core.errors import ConfigError
from nas.core.space import SearchSpace
from nas.pipeline.config import SupernetOptions
from nas.pipeline.embedding import MaskableEmbedding, stack_precisions, stack_row_dims
from nas.pipeline.tasks import Batch, Task, Variants, top_k_variants_loss, task_for
from recsys.data import CTRData, InteractionData
from recsys.errors import TrainingDiverged
from recsys.train import TrainHooks, TrainResult

__all__ = ["SandwichLoss", "train_one_shot", "train_supernet"]

class SandwichLoss:
    """The per-step loss of sandwich training, for :class:`recsys.train.TrainHooks`.

    Args:
        space: the active search space (its random feasible allocations are trained).
        budget: the budget those allocations meet; several budgets (a list) make a supernet
            that serves all of them, drawn in turn.
        options: how many random allocations, from how large a pool.
        seed: seeds the pool (with the epoch) and the picks.
        proposals: draws ``n`` decision vectors from a generator (a controller's
            :meth:`~nas.core.controller.Controller.supernet_proposals`); ``None`` samples the space.
        variants_loss: the loss of a batch averaged over the allocations served at once,
            ``variants_loss(model, chosen, batch, reg)`` (a task's
            :meth:`~nas.pipeline.tasks.Task.variants_loss`); the default is top-k's BPR.

    Called as the trainer's loss hook, ``loss(model, *batch, reg)``: ``(users, pos, neg)``
    from the BPR trainer, ``(x, y)`` from the click trainer.
    """

    def __init__(
        self,
        space: SearchSpace,
        budget: Budget | Sequence[Budget],
        options: SupernetOptions,
        seed: int,
        proposals: Callable[[np.random.Generator, int], np.ndarray] | None = None,
        *,
        variants_loss: Callable[[Any, Variants, Batch, float], torch.Tensor] = top_k_variants_loss,
    ) -> None:
        self.space = space
        self.variants_loss = variants_loss
        self.proposals = proposals
        self.budgets = [budget] if isinstance(budget, Budget) else list(budget)
        self.options = options
        self.seed = seed
        n = space.n_decisions
        self._ends = [  # the largest at the widest precision, the smallest at the narrowest
            space.allocation(space.join(np.full(n, space.grid[-1]), np.zeros(n))),
            space.allocation(space.join(np.full(n, space.grid[0]), np.full(n, max(len(space.precisions) - 1, 0)))),
        ]
        self._stack: dict[str, torch.Tensor] = {}
        self._precision_stack: dict[str, torch.Tensor] | None = None
        self._picks = torch.Generator()

    def on_epoch_start(self, epoch: int) -> None:
        """Draw this epoch's pool of random allocations (a function of seed and epoch only)."""
        rng = np.random.default_rng([self.seed, epoch])
        if self.proposals is not None:
            pool = [self.space.allocation(row) for row in self.proposals(rng, self.options.pool)]
        else:
            budgets = [self.budgets[i % len(self.budgets)] for i in range(self.options.pool)]
            pool = [self.space.allocation(self.space.sample(rng, budget)) for budget in budgets]
        self._stack = stack_row_dims(self._ends + pool)
        self._precision_stack = stack_precisions(self._ends + pool)
        self._picks.manual_seed(int(rng.integers(2**62)))

    def __call__(self, model: Any, *args: Any) -> torch.Tensor:
        *batch, reg = args
        embedding = model.embedding
        assert isinstance(embedding, MaskableEmbedding)
        picks = torch.randperm(self.options.pool, generator=self._picks)[: self.options.random] + len(self._ends)
        index = torch.cat([torch.arange(len(self._ends)), picks])
        device = embedding.columns.device
        chosen = {name: dims[index].to(device) for name, dims in self._stack.items()}
        if self._precision_stack is None:
            return self.variants_loss(model, chosen, tuple(batch), reg)
        embedding.set_variant_precisions({name: rows[index] for name, rows in self._precision_stack.items()},
                                         self.space.precisions)
        try:
            return self.variants_loss(model, chosen, tuple(batch), reg)
        finally:
            embedding.set_variant_precisions(None)


def train_supernet(
    model: Any,
    data: InteractionData | CTRData | Task,
    space: SearchSpace,
    budget: Budget | Sequence[Budget],
    config: Any,
    options: SupernetOptions,
    *,
    hooks: TrainHooks | None = None,
    progress: bool = True,
    proposals: Callable[[np.random.Generator, int], np.ndarray] | None = None,
) -> TrainResult:
    """Train ``model`` as a supernet for ``space`` under ``budget`` (early stopping on the full model).

    Args:
        model: a top-k or click backbone on a :class:`MaskableEmbedding`.
        data: interactions (BPR training) or click rows (click training).
        config: the trainer's configuration (:class:`recsys.train.TrainConfig` or
            :class:`recsys.train_ctr.CTRTrainConfig`, as the data asks).
        hooks: checkpoint callbacks and the state to resume from (their ``loss`` and
            ``on_epoch_start`` are set here).
        proposals: where the sandwich's random allocations come from when
            ``options.proposals == "controller"`` (ignored otherwise).
    """
    if not isinstance(model.embedding, MaskableEmbedding):
        raise ConfigError("a supernet needs a model built on a MaskableEmbedding")
    task = task_for(data, config)
    hooks = hooks or TrainHooks()
    if options.resolved(None).mode == "sandwich":
        loss = SandwichLoss(space, budget, options, config.seed,
                            proposals if options.proposals == "controller" else None, variants_loss=task.variants_loss)
        hooks = TrainHooks(loss=loss, on_epoch_start=loss.on_epoch_start, on_epoch_end=hooks.on_epoch_end,
                           resume=hooks.resume)
    return task.train(model, config, hooks, progress=progress)


def train_one_shot(
    model: Any,
    data: InteractionData | CTRData | Task,
    controller: OneShotController,
    config: Any,
    *,
    hooks: TrainHooks | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` jointly with a one-shot controller's architecture parameters.

    Every batch's loss is the controller's relaxed loss and the controller steps after the
    weights do.  Each training state handed to ``hooks.on_epoch_end`` carries the
    controller's state under ``"controller"``, and a resumed state restores it, so a killed
    one-shot search continues exactly.

    Raises:
        recsys.errors.TrainingDiverged: the weights or the controller's architecture parameters
            became non-finite (checked every epoch, before the state is saved).
    """
    if not isinstance(model.embedding, MaskableEmbedding):
        raise ConfigError("a one-shot search needs a model built on a MaskableEmbedding")
    task = task_for(data, config)
    hooks = hooks or TrainHooks()
    if hooks.resume is not None and "controller" in hooks.resume:
        controller.load_state_dict(hooks.resume["controller"])
    save = hooks.on_epoch_end

    def on_epoch_end(state: dict) -> None:
        # The loop checked the model's weights; the architecture parameters are the controller's.
        bad = [i for i, p in enumerate(controller.parameters()) if not bool(torch.isfinite(p.detach()).all())]
        if bad:
            raise TrainingDiverged(
                f"training diverged in epoch {state['epoch']}: the {controller.name} controller's architecture "
                f"parameters {bad} became non-finite; its learning rate (--controller-option lr=...) is likely too "
                f"high; nothing of epoch {state['epoch']} was saved, so the last checkpoint written before it is kept",
                epoch=state["epoch"], what=[f"controller parameter {i}" for i in bad])
        if save is not None:
            save({**state, "controller": controller.state_dict()})

    return task.train(model, config, TrainHooks(
        loss=task.one_shot_loss(controller), on_epoch_start=controller.on_epoch_start, after_step=controller.after_step,
        on_epoch_end=on_epoch_end, resume=hooks.resume, settled=lambda: controller.settled,
    ), progress=progress)
