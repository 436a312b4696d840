"""Policy-gradient search: a small network maps each decision's context to a distribution over sizes.

The policy never keeps a parameter per decision, so it scales to the millions of rows
of a per-feature space: every decision is described by its context (table, frequency,
frequency rank: :func:`~controllers._context.decision_features`) and by its size in the
fittest allocation found so far (the *incumbent*, equal sizes before the first tell),
and one shared MLP turns that into logits over the space's grid.  An allocation is
one draw per decision (Gumbel-max on the controller's generator), projected onto the
budget by the space.

Learning is REINFORCE: the projection onto the budget is part of the environment, so
when told, the controller takes the log-probability of the sizes it *drew* (before
projection) under the policy that drew them, and ascends ``advantage · mean log π`` plus a small entropy bonus.  The advantage is the
fitness minus a moving-average baseline, divided by a moving standard deviation, so
the step size does not depend on the scale of the metric (recall differences of 1e-3
matter).

Searching precisions too, the policy's logits cover every (size, precision) pair, the
incumbent's precision is one more input, and the prior is centred on the incumbent's
precision as on its size.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from controllers._context import decision_features
from nas.core.plugins import register_controller
from nas.core.budget import Budget
from nas.core.controller import Controller, ControllerState
from nas.core.errors import ConfigError
from nas.core.space import SearchSpace

__all__ = ["PolicyGradient"]


@register_controller("rl")
class PolicyGradient(Controller):
    """REINFORCE with a context-conditioned policy over sizes and a moving-average baseline.

    Args:
        space: any search space.
        budget: the hard budget.
        seed: fixes the policy's initialisation and every draw.
        hidden: width of the policy's hidden layer.
        lr: Adam learning rate of the policy.  Large, because a search tells it only tens
            of fitness values: a small rate leaves the policy near its prior for the whole
            search.
        momentum: weight of the past in the moving mean and variance of the fitness.
        entropy: weight of the entropy bonus that keeps the policy exploring.
        spread: width, as a share of ``d_max``, of a fixed Gaussian prior on the logits
            centred on each decision's incumbent size, so the first proposals are near the
            incumbent (equal sizes) rather than uniform over the grid, which per row is far
            worse than equal sizes on real data; ``None`` for a flat prior.
    """

    needs_context = True
    searches_precision = True

    def __init__(
        self,
        space: SearchSpace,
        budget: Budget,
        seed: int = 0,
        *,
        hidden: int = 32,
        lr: float = 0.2,
        momentum: float = 0.8,
        entropy: float = 0.01,
        spread: float | None = 0.1,
    ) -> None:
        super().__init__(space, budget, seed)
        if hidden < 1 or lr <= 0 or not 0 <= momentum < 1 or entropy < 0 or (spread is not None and spread <= 0):
            raise ConfigError(f"rl needs hidden >= 1, lr > 0, 0 <= momentum < 1, entropy >= 0 and spread > 0 or None; "
                              f"got {hidden}, {lr}, {momentum}, {entropy}, {spread}")
        self.momentum = float(momentum)
        self.spread = None if spread is None else float(spread)
        self.entropy = float(entropy)
        self.features = torch.from_numpy(decision_features(space))
        self.n_precisions = len(space.precisions)  # 0: sizes only
        inputs = self.features.shape[1] + (2 if self.n_precisions else 1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.policy = nn.Sequential(
                nn.Linear(inputs, hidden), nn.LeakyReLU(), nn.Linear(hidden, len(space.grid) * max(self.n_precisions, 1))
            )
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=lr)
        self.incumbent = space.project(space.join(np.ones(space.n_decisions), np.zeros(space.n_decisions)), budget)
        self.baseline: float | None = None
        self.variance = 0.0
        self._drawn: np.ndarray | None = None

    def _logits(self, incumbent: np.ndarray) -> torch.Tensor:
        """Logits per decision over the grid (sizes only) or over (size, precision) pairs, size-major."""
        sizes, precision = self.space.split(incumbent)
        size = torch.from_numpy(sizes.astype(np.float32) / self.space.d_max).unsqueeze(1)
        inputs = [self.features, size]
        if precision is not None:
            share = torch.from_numpy(precision.astype(np.float32) / max(self.n_precisions - 1, 1)).unsqueeze(1)
            inputs.append(share)
        logits = self.policy(torch.cat(inputs, dim=1))
        if self.spread is None:
            return logits
        # A fixed prior centred on the incumbent's size: the policy explores around the best allocation found.
        grid = torch.as_tensor(self.space.grid, dtype=torch.float32) / self.space.d_max
        prior = -(grid[None, :] - size).square() / (2 * self.spread**2)
        if precision is None:
            return logits + prior
        steps = torch.arange(self.n_precisions, dtype=torch.float32) / max(self.n_precisions - 1, 1)
        prior_precision = -(steps[None, :] - share).square() / (2 * self.spread**2)
        return logits + (prior.unsqueeze(2) + prior_precision.unsqueeze(1)).reshape(len(sizes), -1)

    def _ask(self, n: int) -> np.ndarray:
        with torch.no_grad():
            logits = self._logits(self.incumbent).numpy().astype(np.float64)
        drawn = []
        for _ in range(n):  # one draw at a time: n × decisions × grid noise would not fit for millions of rows
            gumbel = -np.log(-np.log(self.rng.random(logits.shape).clip(1e-300, None)))
            drawn.append(np.argmax(logits + gumbel, axis=1))
        self._drawn = np.stack(drawn)
        if not self.n_precisions:
            return self.space.grid[self._drawn].astype(np.float64)
        sizes = self.space.grid[self._drawn // self.n_precisions].astype(np.float64)
        return self.space.join(sizes, self._drawn % self.n_precisions)

    def _actions(self, decisions: np.ndarray) -> np.ndarray:
        """Grid indices of the draws behind told decisions: the projection belongs to the environment.

        Decisions the controller did not just propose (told from elsewhere) stand for themselves.
        """
        sizes, precision = self.space.split(decisions)
        actions = np.searchsorted(self.space.grid, sizes)
        if precision is not None:
            actions = actions * self.n_precisions + precision
        drawn, self._drawn = self._drawn, None
        if drawn is None or len(drawn) != len(decisions):
            return actions
        for i, row in enumerate(drawn):
            if self._asked_row(decisions, i):
                actions[i] = row
        return actions

    def _tell(self, decisions: np.ndarray, fitness: np.ndarray) -> None:
        index = torch.from_numpy(self._actions(decisions))
        for row, value in zip(index, fitness):
            if self.baseline is None:
                self.baseline = float(value)
                continue
            advantage = (float(value) - self.baseline) / np.sqrt(self.variance + 1e-12) if self.variance > 0 else 0.0
            log_probs = torch.log_softmax(self._logits(self.incumbent), dim=-1)
            chosen = log_probs.gather(1, row.unsqueeze(1)).mean()
            entropy = -(log_probs.exp() * log_probs).sum(dim=1).mean()
            loss = -float(np.clip(advantage, -5.0, 5.0)) * chosen - self.entropy * entropy
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            deviation = float(value) - self.baseline
            self.baseline += (1 - self.momentum) * deviation
            self.variance = self.momentum * self.variance + (1 - self.momentum) * deviation**2
        # The next proposals start from the fittest allocation so far.
        if self.best_decisions is not None:
            self.incumbent = self.best_decisions.copy()

    def _state(self) -> ControllerState:
        return {
            "policy": dict(self.policy.state_dict()),
            "optimizer": self.optimizer.state_dict(),
            "incumbent": self.incumbent.astype(np.int64),
            "baseline": self.baseline,
            "variance": self.variance,
        }

    def _load_state(self, state: ControllerState) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.incumbent = np.asarray(state["incumbent"], dtype=np.int64)
        self.baseline = None if state["baseline"] is None else float(state["baseline"])
        self.variance = float(state["variance"])
