"""Pruning baselines [LERSBench]: keep arbitrary elements of the trained tables, not a prefix per row.

* ``magprune``: MagPrune [LERSBench]: train the full-size model, keep the largest-magnitude
  elements up to the budget (one global ranking over every table);
* ``pep``: PEP's learnable soft thresholds [PEP]: every element is served
  as ``sign(w) · relu(|w| - sigmoid(s))`` with ``s`` learned per column (PEP's
  dimension-wise granularity, shared by every table: with a threshold per table the user
  and item tables can keep different columns, and a dot product only sums the columns
  both keep), and the mask is frozen the moment the elements above their threshold fit
  the budget.  PEP steers the final sparsity through the thresholds' initial value;
  here the budget is a constraint, so an augmented Lagrangian on the (sigmoid-softened)
  share of kept elements raises the thresholds until they get there, and training then
  continues on the frozen mask.  The thresholds can overshoot the schedule (more so with
  few steps an epoch), so the frozen mask is filled up to the budget with the elements
  nearest above or below their threshold: PEP's own ranking, spending what the user
  allowed.

Both export an element mask beside the packed values.  Every row keeps at least its
``d_min`` largest elements; the rest of the budget goes to the largest scores anywhere.
Under a byte budget the bit masks are paid for too, so fewer values fit
(:func:`masked_value_limit`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from controllers._constraint import DualAscent
from nas.core.plugins import register_controller
from nas.core.allocation import Allocation
from nas.core.budget import Budget
from nas.core.controller import ControllerState, OneShotController
from nas.core.errors import BudgetError, ConfigError
from nas.core.space import SearchSpace
from nas.core.accounting import masked_value_limit

__all__ = ["LearnableThresholds", "MagnitudePruning", "keep_largest", "masked_value_limit"]


def keep_largest(scores: Mapping[str, np.ndarray], limit: int, d_min: int) -> Allocation:
    """The element-masked allocation keeping every row's ``d_min`` best elements, then the best overall.

    Args:
        scores: per table, ``(rows, d_max)`` non-negative scores (magnitudes); only
            positive scores are kept beyond the per-row floor.
        limit: most elements kept in total (at least rows × ``d_min``).
        d_min: elements every row keeps whatever its scores.
    """
    names = list(scores)
    width = next(iter(scores.values())).shape[1]
    masks = {name: np.zeros(scores[name].shape, dtype=bool) for name in names}
    for name in names:
        if d_min:
            best = np.argsort(-scores[name], axis=1, kind="stable")[:, :d_min]
            np.put_along_axis(masks[name], best, True, axis=1)
    left = limit - sum(int(m.sum()) for m in masks.values())
    if left < 0:
        raise BudgetError(f"keeping {d_min} element(s) per row needs {limit - left:,} values; the budget allows {limit:,}")
    flat = np.concatenate([np.where(masks[n], -np.inf, scores[n]).ravel() for n in names])
    candidates = np.flatnonzero(flat > 0)
    chosen = candidates[np.argsort(-flat[candidates], kind="stable")[:left]]
    offsets = np.cumsum([0] + [scores[n].size for n in names])
    for i, name in enumerate(names):
        inside = chosen[(chosen >= offsets[i]) & (chosen < offsets[i + 1])] - offsets[i]
        masks[name].ravel()[inside] = True
    row_dims = {}
    for name, mask in masks.items():
        last = width - np.argmax(mask[:, ::-1], axis=1)  # one past the last kept column
        row_dims[name] = np.maximum(np.where(mask.any(axis=1), last, 0), d_min)
    return Allocation(row_dims, masks)


class _ElementPruning(OneShotController):
    """What both pruning baselines share: the choice is an element mask, the decisions its prefix."""

    def __init__(self, space: SearchSpace, budget: Budget, seed: int = 0) -> None:
        super().__init__(space, budget, seed)
        self.limit = masked_value_limit(budget)
        self._scores: dict[str, np.ndarray] | None = None

    def _final_scores(self, model: Any) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def finish(self, model: Any) -> None:
        self._scores = self._final_scores(model)

    def allocation(self) -> Allocation:
        if self._scores is None:
            raise ConfigError(f"the {self.name} controller chooses from a trained model: call finish(model) first")
        return keep_largest(self._scores, self.limit, self.space.d_min)

    def choose(self) -> np.ndarray:
        """The space's decisions nearest the mask's prefixes (the element mask itself is :meth:`allocation`)."""
        return self.space.decisions(self.allocation())


@register_controller("magprune")
class MagnitudePruning(_ElementPruning):
    """Keeps the largest-magnitude elements of the trained full-size tables, up to the budget (MagPrune)."""

    def relaxed_loss(self, model: Any, loss: Callable[[], torch.Tensor]) -> torch.Tensor:
        return loss()  # plain training: the full model is what gets pruned

    def _final_scores(self, model: Any) -> dict[str, np.ndarray]:
        return {name: weight.detach().abs().cpu().numpy() for name, weight in model.embedding.weights.items()}


@register_controller("pep")
class LearnableThresholds(_ElementPruning):
    """PEP: a learnable soft threshold per column, the mask frozen once what survives fits the budget.

    Args:
        space, budget, seed: as for every controller.
        init: initial threshold logit ``s`` (``sigmoid(-8) ≈ 3e-4``: nearly nothing pruned).
        lr: Adam learning rate of the thresholds.
        warmup: epochs of plain training before the thresholds move (a mask frozen before
            the weights learned anything keeps noise).
        ramp: epochs over which the kept share the thresholds aim at falls from everything
            to the budget (cubically, as gradual magnitude pruning does): a mask pushed to
            the budget within a couple of epochs keeps nearly random elements, since the
            thresholds have not yet learned which elements matter.
        dual_lr: step of the multiplier on the kept share.
        penalty: weight of the augmented Lagrangian's quadratic term.
        sharpness: temperature of the sigmoid that softens "above the threshold" for the
            constraint's gradient, relative to the threshold.
        sample_rows: rows per table sampled each step to estimate the kept share.
    """

    def __init__(
        self,
        space: SearchSpace,
        budget: Budget,
        seed: int = 0,
        *,
        init: float = -8.0,
        lr: float = 0.05,
        warmup: int = 2,
        ramp: int = 20,
        dual_lr: float = 0.05,
        penalty: float = 10.0,
        sharpness: float = 0.1,
        sample_rows: int = 4096,
    ) -> None:
        super().__init__(space, budget, seed)
        if lr <= 0 or dual_lr <= 0 or penalty < 0 or sharpness <= 0 or sample_rows < 1 or warmup < 0 or ramp < 0:
            raise ConfigError("pep needs lr, dual_lr, sharpness > 0, penalty >= 0, sample_rows >= 1, warmup >= 0, ramp >= 0")
        self.warmup, self.ramp, self.epoch = int(warmup), int(ramp), 0
        self.sharpness, self.sample_rows = float(sharpness), int(sample_rows)
        self.share_constraint = DualAscent(dual_lr, penalty)
        self.threshold = nn.Parameter(torch.full((space.d_max,), float(init)))
        self.optimizer = torch.optim.Adam([self.threshold], lr=lr)
        self.sampler = torch.Generator().manual_seed(seed)
        self.kept_share = float("nan")
        self.frozen: dict[str, torch.Tensor] | None = None
        self._model: Any = None
        # Aim a little under the budget: the mask freezes when the hard count crosses it.
        self._final_share = 0.9 * self.limit / sum(space.rows().values()) / space.d_max

    def parameters(self) -> list[nn.Parameter]:
        """The threshold logits, one per column."""
        return [self.threshold]

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def _progress(self) -> float:
        """How far the ramp has come: 0 at the end of the warm-up, 1 once the target is the budget."""
        return 1.0 if self.ramp == 0 else min(max((self.epoch - self.warmup) / self.ramp, 0.0), 1.0)

    @property
    def _target(self) -> float:
        """The kept share the thresholds aim at this epoch."""
        return self._final_share + (1.0 - self._final_share) * (1.0 - self._progress) ** 3

    @property
    def settled(self) -> bool:
        """Only a validation of the frozen mask may be chosen: before it, each one measures a model still being pruned."""
        return self.frozen is not None

    @property
    def pruning(self) -> bool:
        """Whether the thresholds train: after the warm-up, until the mask is frozen."""
        return self.frozen is None and self.epoch > self.warmup

    def _scale(self, table: str, ids: torch.Tensor | None) -> torch.Tensor:
        weight = self._model.embedding.weights[table]
        rows = weight if ids is None else weight[ids]
        if self.frozen is not None:
            keep = self.frozen[table] if ids is None else self.frozen[table][ids]
            return keep.to(rows.dtype)
        magnitude = rows.abs()
        return torch.relu(magnitude - torch.sigmoid(self.threshold)) / magnitude.clamp_min(1e-12)

    def relaxed_loss(self, model: Any, loss: Callable[[], torch.Tensor]) -> torch.Tensor:
        self._model = model
        if self.frozen is None and not self.pruning:
            return loss()
        model.embedding.set_soft_mask(self._scale)
        try:
            value = loss()
        finally:
            model.embedding.set_soft_mask(None)
        if self.frozen is not None:
            return value
        share = 0.0
        total = sum(self.space.rows().values())
        for name, weight in model.embedding.weights.items():
            sample = torch.randint(weight.shape[0], (min(self.sample_rows, weight.shape[0]),), generator=self.sampler)
            threshold = torch.sigmoid(self.threshold)
            soft = torch.sigmoid((weight[sample].detach().abs() - threshold) / (self.sharpness * threshold))
            share = share + soft.mean() * weight.shape[0] / total
        excess = share / self._target - 1.0
        self.kept_share = float(share.detach())
        return value + self.share_constraint.term(excess)

    def after_step(self) -> None:
        if not self.pruning:
            return
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.share_constraint.update(self.kept_share / self._target - 1.0)
        with torch.no_grad():
            above = {name: weight.abs() > torch.sigmoid(self.threshold)
                     for name, weight in self._model.embedding.weights.items()}
        if self._progress >= 1.0 and sum(int(mask.sum()) for mask in above.values()) <= self.limit:
            self.frozen = self._filled()  # what survives fits: PEP's pruning stops, training goes on with this mask

    def _filled(self) -> dict[str, torch.Tensor]:
        """The mask at the budget: every element above its threshold, then those nearest below it, to the limit.

        Ranked by the margin ``|w| - sigmoid(s)`` (what PEP prunes by), shifted positive so that
        :func:`keep_largest` may take any element; every row keeps its ``d_min`` floor.
        """
        threshold = torch.sigmoid(self.threshold.detach())
        margins = {name: (weight.detach().abs() - threshold).cpu().numpy()
                   for name, weight in self._model.embedding.weights.items()}
        lowest = min(float(m.min()) for m in margins.values())
        scores = {name: margin - lowest + 1.0 for name, margin in margins.items()}
        masks = keep_largest(scores, self.limit, self.space.d_min).element_masks
        device = self.threshold.device
        return {name: torch.tensor(mask, device=device) for name, mask in masks.items()}

    def _final_scores(self, model: Any) -> dict[str, np.ndarray]:
        scores = {}
        for name, weight in model.embedding.weights.items():
            magnitude = weight.detach().abs()
            if self.frozen is not None:
                scores[name] = torch.where(self.frozen[name], magnitude, torch.zeros(())).cpu().numpy()
            else:  # never reached the budget: what is above its threshold first, by magnitude, then the rest
                above = magnitude > torch.sigmoid(self.threshold.detach())
                scores[name] = (magnitude + above * (1.0 + magnitude.max())).cpu().numpy()
        return scores

    def notes(self) -> list[dict[str, Any]]:
        return [{"multiplier": self.share_constraint.multiplier, "kept_share": self.kept_share, "frozen": self.frozen is not None}]

    def _state(self) -> ControllerState:
        state: ControllerState = {
            "threshold": self.threshold.detach().clone(),
            "optimizer": self.optimizer.state_dict(),
            "sampler": self.sampler.get_state(),
            "multiplier": self.share_constraint.multiplier,
            "kept_share": self.kept_share,
            "epoch": self.epoch,
        }
        if self.frozen is not None:
            state["frozen"] = {name: torch.from_numpy(np.packbits(mask.numpy(), axis=1)) for name, mask in self.frozen.items()}
        return state

    def _load_state(self, state: ControllerState) -> None:
        with torch.no_grad():
            self.threshold.copy_(torch.as_tensor(state["threshold"]))
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.set_state(torch.as_tensor(state["sampler"], dtype=torch.uint8))
        self.share_constraint.multiplier = float(state["multiplier"])
        self.kept_share = float(state["kept_share"])
        self.epoch = int(state["epoch"])
        self.frozen = None
        if "frozen" in state:
            width = self.space.d_max
            self.frozen = {name: torch.from_numpy(np.unpackbits(np.asarray(bits), axis=1)[:, :width].astype(bool))
                           for name, bits in state["frozen"].items()}
