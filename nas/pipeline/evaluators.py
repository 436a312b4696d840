"""Evaluators: the fitness of allocations measured on a trained supernet, with or without fine-tuning.

* :class:`SupernetEvaluator` applies each allocation's masks to the trained weights and
  scores the validation data: no training at all, and many allocations share one pass
  (the embedding serves them as stacked variants; for top-k data the ranking work common
  to them, exclusions, truth look-ups and top-k, is done once per chunk of users).
* :class:`FineTuneEvaluator` is BET's protocol [BET, section 4.3]: copy the
  pre-trained weights, fine-tune them under the allocation's masks with SGD at a
  decaying learning rate, then score.  Slower, closer to what retraining will give.

Both measure the task's quality (:meth:`nas.pipeline.tasks.Task.quality`) on validation and
divide it by the full model's (BET eq. 12): for top-k data the mean over k in
{5, 10, 20} of (Recall@k + NDCG@k) / 2 (BET eq. 13), for click data the AUC.  For top-k
data a fixed, seeded subset of validation users makes the search-phase fitness cheap;
``users=None`` ranks on all of them (the final ranking).  Click data is scored on every
validation row.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from nas.core.allocation import Allocation
from nas.core.errors import ConfigError
from nas.core.evaluator import Evaluator
from nas.pipeline.config import FineTuneConfig
from nas.pipeline.embedding import MaskableEmbedding, stack_precisions, stack_row_dims
from nas.pipeline.tasks import Task, task_for
from recsys.data import CTRData, InteractionData
from recsys.errors import TrainingDiverged

__all__ = ["FineTuneEvaluator", "SupernetEvaluator"]


class _ValidationEvaluator(Evaluator):
    """Shared set-up: a trained backbone on a maskable embedding and the validation data."""

    def __init__(
        self, model: Any, data: InteractionData | CTRData | Task, users: np.ndarray | None = None, training: Any = None
    ) -> None:
        super().__init__()
        if not isinstance(model.embedding, MaskableEmbedding):
            raise ConfigError("fitness needs a model built on a MaskableEmbedding")
        self.task = task_for(data, training)
        if not self.task.has_validation:
            raise ConfigError(
                "fitness is measured on validation data, and this dataset has none (or, for click data, only one class); "
                "give a validation split (--valid) or use a controller that needs no fitness (equal, frequency)"
            )
        self.model = model
        self.data = self.task.data
        self.users = users

    @property
    def embedding(self) -> MaskableEmbedding:
        return self.model.embedding  # type: ignore[return-value]

    def _masked_quality(self, allocation: Allocation | None) -> float:
        """Quality of the model as it stands, with ``allocation`` applied (then restored)."""
        previous = self.embedding.allocation
        self.embedding.set_allocation(allocation)
        try:
            return self.task.quality(self.task.evaluate(self.model, "valid", self.users))
        finally:
            self.embedding.set_allocation(previous)

    def _reference_quality(self) -> float:
        return self._masked_quality(None)


class SupernetEvaluator(_ValidationEvaluator):
    """Fitness of allocations as masks on one trained supernet (or pre-trained full model).

    Args:
        model: the trained backbone, on a :class:`MaskableEmbedding`.
        data: interactions (the validation split is ranked against all items, train items
            excluded) or click rows (the validation rows are scored).
        users: a fixed subset of validation users, or ``None`` for all (top-k data only).
        batch: allocations scored together in one pass (prefix allocations only; element
            masks are scored one at a time).  ``None``: 8 on a GPU, 1 on a CPU, where the
            score products dominate and a shared pass measured no faster
            (``benchmarks/fitness_trust.py``).
    """

    name = "supernet"

    def __init__(
        self, model: Any, data: InteractionData | CTRData | Task, users: np.ndarray | None = None, batch: int | None = None
    ) -> None:
        super().__init__(model, data, users)
        if batch is None:
            batch = 8 if self.embedding.columns.device.type == "cuda" else 1
        if batch < 1:
            raise ConfigError(f"evaluation batch must be at least 1, got {batch}")
        self.batch = batch

    def _qualities(self, allocations: Sequence[Allocation]) -> list[float]:
        qualities: dict[int, float] = {}
        stackable = [i for i, a in enumerate(allocations) if not a.element_masks]
        for i, allocation in enumerate(allocations):
            if allocation.element_masks or self.batch == 1:
                qualities[i] = self._masked_quality(allocation)
        if self.batch > 1:
            for group in _batched(stackable, self.batch):
                for i, quality in zip(group, self._stacked_qualities([allocations[i] for i in group])):
                    qualities[i] = quality
        return [qualities[i] for i in range(len(allocations))]

    def _stacked_qualities(self, allocations: Sequence[Allocation]) -> list[float]:
        """Quality of several prefix allocations in one pass."""
        embedding = self.embedding
        previous = embedding.allocation
        was_training = getattr(self.model, "training", False)
        self.model.eval()
        embedding.set_variants(stack_row_dims(allocations, embedding.columns.device))
        precision = stack_precisions(allocations, embedding.columns.device)
        if precision is not None:
            embedding.set_variant_precisions(precision, allocations[0].precisions)
        try:
            return self.task.stacked_qualities(self.model, len(allocations), self.users)
        finally:
            embedding.set_variant_precisions(None)
            embedding.set_allocation(previous)
            if was_training:
                self.model.train()


class FineTuneEvaluator(_ValidationEvaluator):
    """BET's fitness: fine-tune a copy of the pre-trained weights under the allocation, then score it.

    Every allocation starts from the same weights and sees the same batches (the
    sampler is re-seeded each time), so differences in fitness come from the
    allocations alone, and the result does not depend on the order of evaluation.
    The reference is the pre-trained full model without fine-tuning.  A fine-tune whose
    loss or weights become non-finite raises :class:`~recsys.errors.TrainingDiverged` instead
    of scoring them (one check per allocation, after its last step).

    Args:
        model: the pre-trained backbone on a :class:`MaskableEmbedding`.
        data: interactions (fine-tuning on train, ranking on validation).
        users: a fixed subset of validation users, or ``None`` for all.
        config: the fine-tuning protocol.
        seed: seeds the fine-tuning batches.
        training: the run's training options: fine-tuning uses their objective (``loss``;
            BPR when ``None``), as the pre-training did.
    """

    name = "finetune"

    def __init__(
        self,
        model: Any,
        data: InteractionData | CTRData | Task,
        users: np.ndarray | None = None,
        config: FineTuneConfig | None = None,
        seed: int = 0,
        training: Any = None,
    ) -> None:
        super().__init__(model, data, users, training)
        self.config = config or FineTuneConfig()
        self.seed = seed
        self._pretrained = copy.deepcopy(model.state_dict())  # type: ignore[attr-defined]

    def _qualities(self, allocations: Sequence[Allocation]) -> list[float]:
        try:
            return [self._fine_tuned_quality(allocation) for allocation in allocations]
        finally:
            self.model.load_state_dict(self._pretrained)  # type: ignore[attr-defined]

    def _fine_tuned_quality(self, allocation: Allocation) -> float:
        config = self.config
        self.model.load_state_dict(self._pretrained)  # type: ignore[attr-defined]
        params = [p for p in self.model.parameters() if p.requires_grad]  # type: ignore[attr-defined]
        device = params[0].device
        optimizer = (torch.optim.SGD if config.optimizer == "sgd" else torch.optim.Adam)(params, lr=config.lr)
        schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.decay_every, gamma=config.gamma)
        batches = self.task.finetune_batches(config.batch_size, self.seed, epochs=config.epochs, steps=config.steps)
        self.embedding.set_allocation(allocation)
        self.model.train()  # type: ignore[attr-defined]
        total = torch.zeros((), device=device)
        try:
            for batch in batches:
                loss = self.task.batch_loss(self.model, tuple(t.to(device) for t in batch), config.reg)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total += loss.detach()  # no sync per step; checked once below
            self._check_finite(total, params, allocation)
            return self._masked_quality(allocation)
        finally:
            self.embedding.set_allocation(None)

    def _check_finite(self, total: torch.Tensor, params: list[torch.nn.Parameter], allocation: Allocation) -> None:
        """Refuse to score a fine-tune whose loss or weights became non-finite (its fitness would be noise)."""
        what = "the loss" if not bool(torch.isfinite(total)) else (
            "the weights" if not all(bool(torch.isfinite(p.detach()).all()) for p in params) else None)
        if what is None:
            return
        config = self.config
        raise TrainingDiverged(
            f"fine-tuning allocation {allocation.fingerprint()} diverged: {what} became non-finite; the fine-tuning "
            f"learning rate (lr={config.lr:g}, decayed x{config.gamma:g}) is likely too high, or its regularisation "
            f"(reg={config.reg:g}) too strong; lower them (FineTuneConfig)", what=[what.removeprefix("the ")])


def _batched(items: Sequence[int], size: int) -> list[list[int]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]
