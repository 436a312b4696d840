"""The controller conformance suite: what every controller, built-in or plugged in, must guarantee.

A third-party controller runs it from its own tests::

    from nas.testing import check_controller
    from my_pkg import MyController

    def test_my_controller_conforms():
        check_controller(MyController)

For every built-in space (per-feature, per-field, block; those the controller supports)
and three budgets (near the space's minimum, in the middle, near full), it drives a
small search on a synthetic fitness and checks:

* **feasibility**: every proposal (``ask``) and the ``recommend``-ation are grid values,
  the right shape, within the budget;
* **fallbacks**: what ``fallbacks`` names after the search is a feasible decision vector that
  was told (the pipeline retrains only evaluated candidates);
* **determinism**: two controllers with the same seed propose the same sequence;
* **resume**: a controller stopped half-way, its ``state_dict`` written to a run file
  and loaded into a fresh controller, continues with exactly the proposals of the
  uninterrupted one;
* **precision**: a controller that says it searches precisions (``searches_precision``)
  goes through the same checks on the spaces searching ``fp32, fp16, int8, int4`` under
  a byte budget midway between their cheapest and dearest allocation (its proposals then whole decision vectors within the bits); one that
  does not must refuse such a space with a ``ConfigError``;
* **one-shot** controllers are trained for a few steps on a tiny matrix factorisation
  (``supernet_loss``, backward, ``after_step``, then ``finish``) before the same checks;
  their loss must be finite with gradients reaching the weights, and their deployed
  ``allocation`` (element masks included) must meet the budget and survive a resume.

The individual checks are public too.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from nas.core.budget import Budget
from nas.core.controller import Controller, OneShotController
from nas.core.errors import ConfigError
from nas.core.precision import DEFAULT_PRECISIONS
from nas.core.space import SearchSpace
from nas.pipeline.embedding import MaskableEmbedding
from nas.pipeline.runs import Run
from nas.testing.budgets import precision_bytes
from nas.testing.data import synthetic_fields
from recsys.models import MF

__all__ = [
    "BUDGET_LEVELS",
    "ControllerFactory",
    "check_allocation",
    "check_controller",
    "check_fallbacks",
    "check_proposals",
    "check_resume",
    "conformance_cases",
    "synthetic_fitness",
]

#: Where in ``[minimum, maximum]`` cost the checked budgets sit.
BUDGET_LEVELS = {"near-minimum": 0.05, "middle": 0.5, "near-full": 0.95}

#: Builds a controller like the registry does: ``factory(space, budget, seed=..., **options)``.
ControllerFactory = Callable[..., Controller]


def conformance_cases(rows: Mapping[str, int] | None = None, d_max: int = 16,
                      precisions: tuple[str, ...] = ()) -> list[tuple[str, SearchSpace, str, Budget]]:
    """``(space name, space, budget level, budget)`` for every built-in space and budget level.

    The tables are named ``user`` and ``item`` so that one-shot controllers can train a
    matrix factorisation on them.  With ``precisions`` the spaces search them and the
    budgets are bytes, placed between the cheapest and the dearest allocation in bits.
    """
    from nas.core.plugins import SPACES

    fields = synthetic_fields(dict(rows or {"user": 60, "item": 90}), exponent=1.1, seed=0)
    spaces = {
        "per-feature": SPACES.get("per-feature")(fields.tables, fields.frequencies, 1, d_max),
        "per-field": SPACES.get("per-field")(fields.tables, fields.frequencies, 1, d_max),
        "block": SPACES.get("block")(fields.tables, fields.frequencies, 1, d_max, groups=4, blocks=4),
    }
    cases = []
    for name, space in spaces.items():
        space.with_precisions(precisions)
        low, high = space.minimum_cost(), space.maximum_cost()
        for level, share in BUDGET_LEVELS.items():
            budget = (Budget.from_bytes(precision_bytes(space, share), space.rows(), d_max, 1, precisions=precisions)
                      if precisions else Budget.from_params(int(low + share * (high - low)), space.rows(), d_max, 1))
            cases.append((name, space, level, budget))
    return cases


def synthetic_fitness(space: SearchSpace) -> Callable[[np.ndarray], float]:
    """A fitness that rewards sizes growing with frequency (deterministic, in [-1, 1]; with precisions a little
    more for narrower ones)."""
    log_frequency = np.asarray(space.context()["log_frequency"], dtype=np.float64)
    centred = log_frequency - log_frequency.mean()
    scale = float(np.linalg.norm(centred)) or 1.0

    def fitness(decisions: np.ndarray) -> float:
        sizes, precision = space.split(np.asarray(decisions, dtype=np.float64))
        spread = sizes - sizes.mean()
        norm = float(np.linalg.norm(spread))
        value = float(centred @ spread / (scale * norm)) if norm else 0.0
        if precision is not None:
            value = 0.9 * value + 0.1 * float(precision.mean()) / max(len(space.precisions) - 1, 1)
        return value

    return fitness


def check_proposals(controller: Controller, decisions: np.ndarray) -> None:
    """Every row of ``decisions`` is on the grid (precisions among the space's), the right length and within the budget."""
    space, budget = controller.space, controller.budget
    decisions = np.atleast_2d(decisions)
    assert decisions.shape[1] == space.vector_length, \
        f"{controller.name}: {decisions.shape[1]} values a proposal, want {space.vector_length}"
    for row in decisions:
        sizes, precision = space.split(row)
        assert np.isin(sizes, space.grid).all(), f"{controller.name}: a proposal is off the grid"
        assert precision is None or (precision.min() >= 0 and precision.max() < len(space.precisions)), \
            f"{controller.name}: a proposal's precision is not one of the space's"
        cost = space.cost_in(row, budget)
        assert cost <= budget.max_cost, f"{controller.name}: a proposal costs {cost} > budget {budget.max_cost} {budget.unit}"
        space.allocation(row).validate(budget)


class _TinySupernet:
    """A tiny MF and its batches, trained with a one-shot controller's relaxed loss; continues across calls."""

    def __init__(self, space: SearchSpace, seed: int) -> None:
        self.rows = space.rows()
        self.model = MF(MaskableEmbedding(self.rows, space.d_max, seed=seed))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=0.01)
        self.generator = torch.Generator().manual_seed(seed)
        self.step = 0

    def train(self, controller: OneShotController, steps: int) -> None:
        for _ in range(steps):
            if self.step % 4 == 0:
                controller.on_epoch_start(self.step // 4 + 1)
            self.step += 1
            users = torch.randint(self.rows["user"], (32,), generator=self.generator)
            pos, neg = torch.randint(self.rows["item"], (2, 32), generator=self.generator)
            loss = controller.supernet_loss(self.model, users, pos, neg, 1e-4)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            assert torch.isfinite(loss), f"{controller.name}: the relaxed loss is not finite"
            assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in self.model.parameters()), \
                f"{controller.name}: the relaxed loss does not reach the weights"
            self.optimizer.step()
            controller.after_step()


def check_fallbacks(controller: Controller, told: list[np.ndarray]) -> None:
    """``fallbacks()`` names feasible decision vectors among those ``told``, in an array of the right shape."""
    fallbacks = np.asarray(controller.fallbacks())
    assert fallbacks.ndim == 2 and fallbacks.shape[1] == controller.space.vector_length, \
        f"{controller.name}: fallbacks() must be (k, {controller.space.vector_length}), got {fallbacks.shape}"
    if len(fallbacks):
        check_proposals(controller, fallbacks)
    for row in fallbacks:
        assert any(np.array_equal(row, t) for t in told), f"{controller.name}: a fallback was never told"


def check_allocation(controller: OneShotController) -> None:
    """A one-shot controller's deployed allocation meets the budget (element masks included)."""
    allocation = controller.allocation()
    allocation.validate(controller.budget)
    assert allocation.cost <= controller.budget.max_values


def _drive(controller: Controller, trials: int, fitness: Callable[[np.ndarray], float]) -> list[np.ndarray]:
    """Ask and tell ``trials`` single candidates; the proposals, checked."""
    proposals = []
    for _ in range(trials):
        decisions = controller.ask(1)
        check_proposals(controller, decisions)
        controller.tell(decisions, [fitness(decisions[0])])
        proposals.append(decisions[0])
    return proposals


def check_resume(factory: ControllerFactory, space: SearchSpace, budget: Budget, *, trials: int = 6, seed: int = 0,
                 **options: Any) -> None:
    """Stopped after half the trials and restored from a run file, a controller continues identically."""
    fitness = synthetic_fitness(space)
    whole = factory(space, budget, seed=seed, **options)
    first = factory(space, budget, seed=seed, **options)
    one_shot = not whole.multi_trial
    if one_shot:
        trained = _TinySupernet(space, seed)
        trained.train(whole, 8)
        whole.finish(trained.model)
        supernet = _TinySupernet(space, seed)  # the weights' side resumes from the trainer's own checkpoint
        supernet.train(first, 4)
    straight = _drive(whole, trials, fitness)
    if not one_shot:
        _drive(first, trials // 2, fitness)
    with tempfile.TemporaryDirectory() as folder:
        run = Run(folder)
        run.save_state("controller.safetensors", first.state_dict())
        state = run.load_state("controller.safetensors")
    second = factory(space, budget, seed=seed, **options)
    second.load_state_dict(state)
    if one_shot:
        supernet.train(second, 4)
        second.finish(supernet.model)
        resumed = _drive(second, trials, fitness)
        check_allocation(whole)
        assert whole.allocation().fingerprint() == second.allocation().fingerprint(), \
            f"{second.name}: after a resume, the chosen allocation differs from the uninterrupted run's"
    else:
        resumed = straight[: trials // 2] + _drive(second, trials - trials // 2, fitness)
    for i, (a, b) in enumerate(zip(straight, resumed)):
        assert np.array_equal(a, b), f"{second.name}: after a resume, proposal {i} differs from the uninterrupted run"


def check_controller(factory: ControllerFactory, *, trials: int = 6, seed: int = 0, **options: Any) -> None:
    """Run every check on every built-in space and budget level the controller supports, with precisions if it searches them."""
    searches = bool(getattr(factory, "searches_precision", False))
    # With precisions, the middle budget of each space: the narrow and wide ends are the sizes' cases again.
    searched = [case for case in conformance_cases(precisions=DEFAULT_PRECISIONS) if case[2] == "middle"]
    cases = conformance_cases() + searched
    for name, space, level, budget in cases:
        supported = getattr(factory, "spaces", None)
        if supported is not None and name not in supported:
            continue
        if space.precisions and not searches:
            try:
                factory(space, budget, seed=seed, **options)
            except ConfigError:
                continue
            raise AssertionError(f"{factory!r} does not search precisions, yet accepted a space that does")
        fitness = synthetic_fitness(space)
        runs = []
        for _ in range(2):
            controller = factory(space, budget, seed=seed, **options)
            if not controller.multi_trial:
                supernet = _TinySupernet(space, seed)
                supernet.train(controller, 8)
                controller.finish(supernet.model)
                check_allocation(controller)
            runs.append(_drive(controller, trials, fitness))
            check_proposals(controller, controller.recommend())
            check_fallbacks(controller, runs[-1])
        for i, (a, b) in enumerate(zip(*runs)):
            assert np.array_equal(a, b), f"{controller.name} on {name}/{level}: proposal {i} differs under the same seed"
        check_resume(factory, space, budget, trials=trials, seed=seed, **options)
