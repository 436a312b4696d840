"""The supernet: one set of full-size weights trained so that any allocation of the space can be scored.

Two ways to train it:

* ``"sandwich"`` (the default): every step averages the BPR loss of the *largest*
  allocation (every row at ``d_max``), the *smallest* (every decision at its least
  size) and a few *random feasible* allocations of the active space under the budget.
  The leading dimensions of every row thus learn to work on their own, which is
  what masking assumes.  The variants share one gather of the batch's rows
  (:meth:`MaskableEmbedding.set_variants`); a dot-product backbone that offers
  ``prefix_bpr_loss`` (MF) computes all of them from prefix sums instead, so a step
  costs little more than a plain one whatever the number of variants.
* ``"full"``: plain full-size training (BET's pre-trained backbone).

Random allocations are drawn per epoch into a small pool, seeded by the run's seed and
the epoch number; each step picks from the pool.  A run resumed at an epoch boundary
therefore draws exactly what the uninterrupted run drew.  They come from the space
(uniform sizes, projected) or, with ``proposals="controller"``, from the controller's own
proposal distribution (:meth:`~nas.core.controller.Controller.supernet_proposals`), so the
weights learn most about the allocations that will be scored on them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from nas.core.budget import Budget
from nas.core.controller import OneShotController
from nas.core.errors import ConfigError
from nas.core.space import SearchSpace
from nas.embedding import MaskableEmbedding, stack_row_dims
from recsys.data import InteractionData
from recsys.models import Backbone
from recsys.train import TrainConfig, TrainHooks, TrainResult, train_bpr

__all__ = ["SUPERNET_MODES", "SandwichLoss", "SupernetOptions", "train_one_shot", "train_supernet"]

SUPERNET_MODES = ("sandwich", "full")
#: Where the sandwich's random allocations come from.
PROPOSAL_SOURCES = ("space", "controller")


@dataclass(frozen=True)
class SupernetOptions:
    """How the supernet is trained.

    Attributes:
        mode: ``"sandwich"`` or ``"full"`` (see the module docstring).
        random: random feasible allocations per step beside the largest and the smallest.
        pool: random allocations drawn per epoch, among which each step picks ``random``.
        proposals: ``"space"`` (uniform sizes, projected) or ``"controller"`` (the
            controller's proposal distribution, when it has one).
    """

    mode: str = "sandwich"
    random: int = 2
    pool: int = 16
    proposals: str = "space"

    def __post_init__(self) -> None:
        if self.mode not in SUPERNET_MODES:
            raise ConfigError(f"supernet mode must be one of {SUPERNET_MODES}, got {self.mode!r}")
        if self.proposals not in PROPOSAL_SOURCES:
            raise ConfigError(f"supernet proposals must be one of {PROPOSAL_SOURCES}, got {self.proposals!r}")
        if self.random < 0 or self.pool < max(1, self.random):
            raise ConfigError(f"supernet needs 0 <= random <= pool and pool >= 1, got random={self.random}, pool={self.pool}")


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
    """

    def __init__(
        self,
        space: SearchSpace,
        budget: Budget | Sequence[Budget],
        options: SupernetOptions,
        seed: int,
        proposals: Callable[[np.random.Generator, int], np.ndarray] | None = None,
    ) -> None:
        self.space = space
        self.proposals = proposals
        self.budgets = [budget] if isinstance(budget, Budget) else list(budget)
        self.options = options
        self.seed = seed
        self._ends = [
            space.to_allocation(np.full(space.n_decisions, space.grid[-1])),
            space.to_allocation(np.full(space.n_decisions, space.grid[0])),
        ]
        self._stack: dict[str, torch.Tensor] = {}
        self._picks = torch.Generator()

    def on_epoch_start(self, epoch: int) -> None:
        """Draw this epoch's pool of random allocations (a function of seed and epoch only)."""
        rng = np.random.default_rng([self.seed, epoch])
        if self.proposals is not None:
            pool = [self.space.to_allocation(row) for row in self.proposals(rng, self.options.pool)]
        else:
            budgets = [self.budgets[i % len(self.budgets)] for i in range(self.options.pool)]
            pool = [self.space.to_allocation(self.space.sample(rng, budget)) for budget in budgets]
        self._stack = stack_row_dims(self._ends + pool)
        self._picks.manual_seed(int(rng.integers(2**62)))

    def __call__(self, model: Backbone, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, reg: float) -> torch.Tensor:
        embedding = model.embedding
        assert isinstance(embedding, MaskableEmbedding)
        picks = torch.randperm(self.options.pool, generator=self._picks)[: self.options.random] + len(self._ends)
        index = torch.cat([torch.arange(len(self._ends)), picks])
        device = embedding.columns.device
        chosen = {name: dims[index].to(device) for name, dims in self._stack.items()}
        prefix_loss = getattr(model, "prefix_bpr_loss", None)
        if prefix_loss is not None and embedding.allocation is None:
            # A dot-product backbone computes every variant's loss from prefix sums.
            return prefix_loss(users, pos, neg, reg, lambda table, ids: chosen[table][:, ids].long())
        embedding.set_variants(chosen)
        try:
            # The BPR term is a mean over variants and triples; the L2 term sums over the
            # stacked vectors, so its weight is shared out to keep one triple's weight ``reg``.
            return model.bpr_loss(users, pos, neg, reg / len(index))
        finally:
            embedding.set_variants(None)


def train_supernet(
    model: Backbone,
    data: InteractionData,
    space: SearchSpace,
    budget: Budget | Sequence[Budget],
    config: TrainConfig,
    options: SupernetOptions,
    *,
    hooks: TrainHooks | None = None,
    progress: bool = True,
    proposals: Callable[[np.random.Generator, int], np.ndarray] | None = None,
) -> TrainResult:
    """Train ``model`` as a supernet for ``space`` under ``budget`` (early stopping on the full model).

    Args:
        hooks: checkpoint callbacks and the state to resume from (their ``loss`` and
            ``on_epoch_start`` are set here).
        proposals: where the sandwich's random allocations come from when
            ``options.proposals == "controller"`` (ignored otherwise).
    """
    if not isinstance(model.embedding, MaskableEmbedding):
        raise ConfigError("a supernet needs a model built on a MaskableEmbedding")
    hooks = hooks or TrainHooks()
    if options.mode == "sandwich":
        loss = SandwichLoss(space, budget, options, config.seed,
                            proposals if options.proposals == "controller" else None)
        hooks = TrainHooks(loss=loss, on_epoch_start=loss.on_epoch_start, on_epoch_end=hooks.on_epoch_end,
                           resume=hooks.resume)
    return train_bpr(model, data, config, progress=progress, hooks=hooks)


def train_one_shot(
    model: Backbone,
    data: InteractionData,
    controller: OneShotController,
    config: TrainConfig,
    *,
    hooks: TrainHooks | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` jointly with a one-shot controller's architecture parameters.

    Every batch's loss is the controller's relaxed loss and the controller steps after the
    weights do.  Each training state handed to ``hooks.on_epoch_end`` carries the
    controller's state under ``"controller"``, and a resumed state restores it, so a killed
    one-shot search continues exactly.
    """
    if not isinstance(model.embedding, MaskableEmbedding):
        raise ConfigError("a one-shot search needs a model built on a MaskableEmbedding")
    hooks = hooks or TrainHooks()
    if hooks.resume is not None and "controller" in hooks.resume:
        controller.load_state_dict(hooks.resume["controller"])
    save = hooks.on_epoch_end

    def on_epoch_end(state: dict) -> None:
        if save is not None:
            save({**state, "controller": controller.state_dict()})

    return train_bpr(model, data, config, progress=progress, hooks=TrainHooks(
        loss=controller.supernet_loss, on_epoch_start=controller.on_epoch_start, after_step=controller.after_step,
        on_epoch_end=on_epoch_end, resume=hooks.resume,
    ))
