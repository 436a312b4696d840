"""One-shot search: sizes relaxed into a (gumbel-)softmax mixture and trained with the supernet.

Every decision ``i`` has a distribution ``p_i`` over the grid's sizes.  A row of that
decision is looked up as its full vector times the *expected prefix mask*
``m_j = P(size > j) = Σ_k p_ik · [j < grid_k]``, so the loss is differentiable in the
architecture parameters, and the weights learn to work at every size the distribution
favours (as in [DARTS]).  With ``relaxation="gumbel"`` each looked-up row draws its own
gumbel-softmax sample at temperature ``τ``, annealed per epoch, so training sees nearly
discrete sizes late on.

The distributions come from a small network over each decision's context
(:func:`~controllers._context.decision_features`), so a per-feature space with
millions of rows has a few thousand architecture parameters, not a table per row;
spaces with at most ``free_limit`` decisions add a free logit per decision and size.

The budget is a constraint, not a penalty to tune: with ``e = E[cost] / budget − 1`` the
loss adds the augmented Lagrangian ``λ · e + ρ/2 · e²`` and ``λ`` follows dual ascent,
``λ ← λ + η_λ · (E[cost] / budget − 1)`` after every step, so the expected cost settles
at the budget whatever the scale of the loss.  The constraint is an equality (``λ`` may
turn negative): a masked L2 term and the rich-get-richer dynamics of joint training
otherwise let the sizes collapse to the smallest, far below a budget that was meant to
be spent.  The final choice maximises the
summed log-probabilities under the hard budget: a multiple-choice knapsack
(:func:`nas.core.knapsack.solve_knapsack`).

Searching precisions too, the distributions are over (size, precision) pairs.  A row is
served as the mixture ``Σ_p Q_p(x) ⊙ m_p`` of its vector quantised at each precision
(straight-through), each masked by ``m_p = Σ_k P(size k, precision p) · [j < grid_k]``;
the expected cost and the knapsack price every pair in the budget's unit (bits under a
byte budget, scales included).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from controllers._constraint import DualAscent
from controllers._context import decision_features
from nas.core.plugins import register_controller
from nas.core.budget import Budget
from nas.core.controller import ControllerState, OneShotController
from nas.core.errors import ConfigError
from nas.core.quantise import RowPrecision, fake_quantise
from nas.core.knapsack import solve_knapsack
from nas.core.space import SearchSpace

__all__ = ["RELAXATIONS", "DifferentiableSizes"]

RELAXATIONS = ("gumbel", "softmax")


@register_controller("darts")
class DifferentiableSizes(OneShotController):
    """DARTS / gumbel-softmax over sizes, the budget held by a dual-ascent multiplier.

    Args:
        space: any search space whose rows each take one decision's size.
        budget: the hard budget.
        seed: fixes the architecture network's initialisation and the gumbel noise.
        relaxation: ``"gumbel"`` (a gumbel-softmax sample per looked-up row) or
            ``"softmax"`` (the plain mixture of DARTS).
        lr: Adam learning rate of the architecture parameters.
        dual_lr: step ``η_λ`` of the budget multiplier.
        penalty: weight ``ρ`` of the augmented Lagrangian's quadratic term, which damps the
            oscillation of plain dual ascent (0 for the plain Lagrangian).
        tau: the gumbel temperature of the first epoch; ``tau_decay`` multiplies it per
            epoch, down to ``tau_min``.
        warmup: epochs in which only the weights train (the distributions stay uniform).
        hidden: width of the architecture network.
        free_limit: spaces with at most this many decisions also get a free logit per
            decision and size.
        cost_sample: decisions drawn per step to estimate the expected cost (unbiased);
            spaces with at most this many use all of them.  The exact sum runs the
            architecture network over every decision at every step, which on a per-feature
            space costs more than the rest of the step.
    """

    needs_context = True
    searches_precision = True

    def __init__(
        self,
        space: SearchSpace,
        budget: Budget,
        seed: int = 0,
        *,
        relaxation: str = "gumbel",
        lr: float = 0.01,
        dual_lr: float = 0.05,
        penalty: float = 10.0,
        tau: float = 1.0,
        tau_decay: float = 0.9,
        tau_min: float = 0.1,
        warmup: int = 1,
        hidden: int = 32,
        free_limit: int = 4096,
        cost_sample: int = 8192,
    ) -> None:
        super().__init__(space, budget, seed)
        if relaxation not in RELAXATIONS:
            raise ConfigError(f"darts relaxation must be one of {RELAXATIONS}, got {relaxation!r}")
        if cost_sample < 1:
            raise ConfigError(f"darts needs cost_sample >= 1, got {cost_sample}")
        self.cost_sample = int(cost_sample)
        if lr <= 0 or dual_lr <= 0 or penalty < 0 or not 0 < tau_min <= tau or not 0 < tau_decay <= 1 or warmup < 0 or hidden < 1:
            raise ConfigError("darts needs lr, dual_lr > 0, 0 < tau_min <= tau, 0 < tau_decay <= 1, warmup >= 0, hidden >= 1")
        self.relaxation = relaxation
        self.budget_constraint = DualAscent(dual_lr, penalty)
        self.tau0, self.tau_decay, self.tau_min, self.warmup = float(tau), float(tau_decay), float(tau_min), int(warmup)
        grid = torch.as_tensor(space.grid, dtype=torch.float32)
        self.features = torch.from_numpy(decision_features(space))
        self.rows = {name: torch.from_numpy(np.array(d, dtype=np.int64)) for name, d in space.row_decisions().items()}
        # prefix[k, j] = 1 when size grid[k] keeps column j: p @ prefix is the expected mask.
        self.prefix = (torch.arange(space.d_max, dtype=torch.float32)[None, :] < grid[:, None]).float()
        self.unit_costs = torch.as_tensor(space.weights, dtype=torch.float64)
        # Candidates: the grid's sizes, or (size, precision) pairs size-major; the price of each
        # per unit of a decision's weight, in the budget's unit.
        self.n_precisions = len(space.precisions)
        self.candidate_costs = space.candidate_prices(budget).reshape(-1)
        self.grid = torch.as_tensor(self.candidate_costs, dtype=torch.float64)
        n_candidates = len(self.candidate_costs)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.network = nn.Sequential(nn.Linear(self.features.shape[1], hidden), nn.LeakyReLU(),
                                         nn.Linear(hidden, n_candidates))
            torch.nn.init.zeros_(self.network[-1].weight)
            # Start with the expected cost at the budget: a tilt of the uniform distribution
            # towards cheap candidates, so the multiplier has only to keep it there.
            tilt = _tilt(self.candidate_costs, budget.max_cost / space.weights.sum())
            self.network[-1].bias.data.copy_(torch.as_tensor(tilt))
        self.free = nn.Parameter(torch.zeros(space.n_decisions, n_candidates)) if space.n_decisions <= free_limit else None
        self._precisions = [RowPrecision(torch.zeros(1, dtype=torch.int64) + k, space.precisions)
                            for k in range(self.n_precisions)]
        self.optimizer = torch.optim.Adam(self.parameters(), lr=lr)
        self.noise = torch.Generator().manual_seed(seed)
        self._device_noise: torch.Generator | None = None
        self.epoch = 0
        self.tau = self.tau0
        self.expected_cost = float("nan")

    def parameters(self) -> list[nn.Parameter]:
        """The architecture parameters (not the supernet's weights)."""
        return [*self.network.parameters(), *([self.free] if self.free is not None else [])]

    def logits(self, decisions: torch.Tensor | None = None) -> torch.Tensor:
        """Logits over the grid for ``decisions`` (all when ``None``): ``(n, len(grid))``."""
        features = self.features if decisions is None else self.features[decisions]
        logits = self.network(features)
        if self.free is not None:
            logits = logits + (self.free if decisions is None else self.free[decisions])
        return logits

    def _uniform(self, shape: torch.Size, device: torch.device) -> torch.Tensor:
        """Uniform noise drawn where it is used: a CPU draw per step would cost more than a GPU step."""
        if device.type == "cpu" or self._device_noise is None:
            return torch.rand(shape, generator=self.noise)
        return torch.rand(shape, generator=self._device_noise, device=device)

    def _seed_device_noise(self) -> None:
        """Seed the device's generator from the run's seed and the epoch (so a resumed epoch redraws the same)."""
        if self._device_noise is not None:
            self._device_noise.manual_seed(int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0]))

    def _follow(self, device: torch.device) -> None:
        """Move the architecture to the supernet's device, once: its masks multiply the weights there."""
        if self.prefix.device == device:
            return
        if device.type != "cpu":
            self._device_noise = torch.Generator(device=device)
            self._seed_device_noise()
        self.network.to(device)
        if self.free is not None:
            self.free.data = self.free.data.to(device)
        self.features, self.prefix = self.features.to(device), self.prefix.to(device)
        for precision in self._precisions:
            precision.levels, precision.half = precision.levels.to(device), precision.half.to(device)
        self.unit_costs, self.grid = self.unit_costs.to(device), self.grid.to(device)
        self.rows = {name: rows.to(device) for name, rows in self.rows.items()}
        for state in self.optimizer.state.values():  # a resumed optimiser's moments
            for key, value in state.items():
                if torch.is_tensor(value) and key != "step":
                    state[key] = value.to(device)

    # -- one-shot hooks ----------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch
        self._seed_device_noise()
        self.tau = max(self.tau_min, self.tau0 * self.tau_decay ** max(epoch - 1 - self.warmup, 0))

    @property
    def searching(self) -> bool:
        """Whether the architecture trains yet (after the warm-up epochs)."""
        return self.epoch > self.warmup

    def _probabilities(self, table: str, ids: torch.Tensor | None) -> torch.Tensor:
        """The relaxed choice of every looked-up row over the candidates, ``(rows, n_candidates)``."""
        decisions = self.rows[table] if ids is None else self.rows[table][ids.reshape(-1)]
        logits = self.logits(decisions)
        if not self.searching:
            logits = logits.detach() * 0.0  # uniform over sizes while the weights warm up
        if self.relaxation == "gumbel":
            uniform = self._uniform(logits.shape, logits.device).clamp_(1e-10, 1.0)
            return torch.softmax((logits - torch.log(-torch.log(uniform))) / self.tau, dim=-1)
        return torch.softmax(logits, dim=-1)

    def _mask(self, table: str, ids: torch.Tensor | None) -> torch.Tensor:
        mask = self._probabilities(table, ids) @ self.prefix
        return mask if ids is None else mask.reshape(*ids.shape, -1)

    def _mixture(self, table: str, ids: torch.Tensor | None, vectors: torch.Tensor) -> torch.Tensor:
        """``Σ_p Q_p(x) ⊙ m_p``: the row quantised at each precision, masked by that precision's expected prefix."""
        probabilities = self._probabilities(table, ids)
        pairs = probabilities.reshape(len(probabilities), len(self.prefix), self.n_precisions)
        masks = torch.einsum("rkp,kd->rpd", pairs, self.prefix)
        flat = vectors.reshape(-1, vectors.shape[-1])
        served = torch.zeros_like(flat)
        for k, precision in enumerate(self._precisions):  # on the supernet's device (_follow)
            quantised = fake_quantise(flat, precision.levels.expand(len(flat)), precision.half.expand(len(flat)))
            served = served + quantised * masks[:, k, :]
        return served.reshape(vectors.shape)

    def relaxed_loss(self, model: Any, loss: Callable[[], torch.Tensor]) -> torch.Tensor:
        embedding = model.embedding
        self._follow(embedding.columns.device)
        if self.n_precisions:
            embedding.set_relaxation(self._mixture)
        else:
            embedding.set_soft_mask(self._mask)
        try:
            value = loss()
        finally:
            embedding.set_soft_mask(None)
            embedding.set_relaxation(None)
        if not self.searching:
            return value
        expected = self._expected_cost()
        excess = expected / self.budget.max_cost - 1.0
        self.expected_cost = float(expected.detach())
        return value + self.budget_constraint.term(excess).float()

    def _expected_cost(self) -> torch.Tensor:
        """``E[cost]`` under the current distributions: exact, or estimated from a uniform sample of decisions."""
        n = self.space.n_decisions
        if n <= self.cost_sample:
            probabilities = torch.softmax(self.logits(), dim=-1)
            return (self.unit_costs * (probabilities @ self.grid.float()).double()).sum()
        sample = torch.randint(n, (self.cost_sample,), generator=self.noise).to(self.prefix.device)
        probabilities = torch.softmax(self.logits(sample), dim=-1)
        return (self.unit_costs[sample] * (probabilities @ self.grid.float()).double()).sum() * (n / self.cost_sample)

    def after_step(self) -> None:
        if not self.searching:
            return
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        excess = self.expected_cost / self.budget.max_cost - 1.0
        self.budget_constraint.update(excess)

    def choose(self) -> np.ndarray:
        """The candidates of highest summed log-probability within the budget (a multiple-choice knapsack)."""
        with torch.no_grad():
            scores = torch.log_softmax(self.logits(), dim=-1).double().cpu().numpy()
        if not self.n_precisions:
            picks = solve_knapsack(scores, self.space.weights, self.space.grid, self.budget.max_values)
            return self.space.grid[picks]
        order = np.argsort(self.candidate_costs, kind="stable")  # the knapsack takes candidates by ascending cost
        picks = order[solve_knapsack(scores[:, order], self.space.weights, self.candidate_costs[order], self.budget.max_cost)]
        return self.space.join(self.space.grid[picks // self.n_precisions], picks % self.n_precisions)

    def notes(self) -> list[dict[str, Any]]:
        return [{"multiplier": self.budget_constraint.multiplier, "expected_cost": self.expected_cost, "tau": self.tau}]

    # -- state ---------------------------------------------------------------------------------------
    def _state(self) -> ControllerState:
        state: ControllerState = {
            "network": dict(self.network.state_dict()),
            "optimizer": self.optimizer.state_dict(),
            "noise": self.noise.get_state(),
            "multiplier": self.budget_constraint.multiplier,
            "epoch": self.epoch,
            "expected_cost": self.expected_cost,
        }
        if self.free is not None:
            state["free"] = self.free.detach().clone()
        return state

    def _load_state(self, state: ControllerState) -> None:
        self.network.load_state_dict(state["network"])
        if self.free is not None:
            with torch.no_grad():
                self.free.copy_(torch.as_tensor(state["free"]))
        self.optimizer.load_state_dict(state["optimizer"])
        self.noise.set_state(torch.as_tensor(state["noise"], dtype=torch.uint8))
        self.budget_constraint.multiplier = float(state["multiplier"])
        self.on_epoch_start(int(state["epoch"]))
        self.expected_cost = float(state["expected_cost"])


def _tilt(grid: np.ndarray, mean: float) -> np.ndarray:
    """Logits ``-β · grid`` whose softmax has the given mean (``β`` by bisection; clipped to the values' range).

    ``grid`` holds the candidates' sizes, or their costs when they are (size, precision) pairs.
    """
    values = np.asarray(grid, dtype=np.float64) / float(np.max(grid))
    target = float(np.clip(mean / float(np.max(grid)), values.min(), values.max()))

    def mean_of(beta: float) -> float:
        logits = -beta * values
        weights = np.exp(logits - logits.max())
        return float(weights @ values / weights.sum())

    low, high = -1e3, 1e3  # mean_of decreases with beta
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if mean_of(middle) > target else (low, middle)
    return (-(low + high) / 2 * values).astype(np.float32)
