"""BET [BET, Algorithm 1]: budgeted actions, a DeepSets fitness predictor, three selection strategies.

Each round (an *iteration* ``t`` of Algorithm 1, counted from 1) the controller draws
``candidates`` whole actions with :class:`~controllers.bet_sampler.BudgetedSampler` and
picks the ones to evaluate by the strategy of ``t mod 5``:

* 0, 1, 2 — **I, greedy**: the highest predicted fitness;
* 3 — **II, random**: uniformly among the candidates, so the predictor sees more than
  its own favourites;
* 4 — **III, nearest neighbour**: the candidate whose embedding ``h_a`` (eq. 9) is
  closest, in Euclidean distance, to that of the fittest action evaluated so far.

Told fitness joins the *population*; after each told action the predictor takes
``updates`` (N = 2) Adam steps on the squared error (eq. 11) of a member drawn at
random.  The search loop evaluates the picks (fine-tuning as in [BET], or masks on
a supernet) and retrains the top five (eq. 14); the controller's whole state
(population, predictor, optimiser, generator) is saved every round, so a killed
search resumes where it stopped.  Equations, tables and sections cited here are [BET]'s
(short names: docs/references.md).

Asked for several candidates at once (``--ask-batch``), one iteration yields the top
``n`` of its strategy instead of one: cheap evaluators can then score them together.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from controllers.bet_sampler import FAMILIES, BudgetedSampler
from controllers.fitness_predictor import (
    PREDICTORS,
    DeepSetsPredictor,
    FitnessPredictor,
    SizeOnlyPredictor,
)
from nas.core.plugins import register_controller
from nas.core.budget import Budget
from nas.core.precision import PRECISIONS
from nas.core.controller import Controller, ControllerState
from nas.core.errors import ConfigError
from nas.core.space import SearchSpace

__all__ = ["BET", "STRATEGIES", "strategy_of"]

#: The three selection strategies of section 3.5.1.
STRATEGIES = ("greedy", "random", "nearest")


def strategy_of(iteration: int) -> str:
    """The strategy Algorithm 1 uses at ``iteration`` (counted from 1): by ``iteration mod 5``."""
    rest = iteration % 5
    return "greedy" if rest <= 2 else ("random" if rest == 3 else "nearest")


@register_controller("bet")
class BET(Controller):
    """BET's controller: budgeted table-level sampling with predictor-guided selection.

    Args:
        space: any search space (per-feature is [BET]'s; per-field and block work too).
        budget: the hard budget.
        seed: fixes the sampled actions, the predictor's initialisation and its training draws.
        candidates: actions sampled per iteration (``m``, 100 in [BET]).
        predictor: ``"deepsets"`` ([BET]'s), ``"sizes"`` (Table 2's size-only MLP) or
            ``"none"`` (random selection only, Table 2's first row).
        updates: predictor updates per evaluated action (``N``, 2 in [BET]).
        lr: Adam learning rate of the predictor.  [BET] does not give one; with only
            N = 2 single-action updates per iteration the rate must be large enough to move
            the predictor off its initial output within a search: 1e-3 barely does.
        user_share: the first table's share of the budget, or ``None`` to draw it per action.
        anchors: beyond [BET]: before Algorithm 1, evaluate the two rule-based
            allocations (equal sizes, and sizes growing with log-frequency) so they join the
            population, train the predictor and compete for retraining.  BET's sampler
            cannot draw the log-frequency rule, which is a strong allocation on real data.
    """

    needs_context = True
    searches_precision = True

    def __init__(
        self,
        space: SearchSpace,
        budget: Budget,
        seed: int = 0,
        *,
        candidates: int = 100,
        predictor: str = "deepsets",
        updates: int = 2,
        lr: float = 1e-2,
        user_share: float | None = None,
        anchors: bool = False,
    ) -> None:
        super().__init__(space, budget, seed)
        if candidates < 1 or updates < 0 or lr <= 0:
            raise ConfigError(f"BET needs candidates >= 1, updates >= 0 and lr > 0; got {candidates}, {updates}, {lr}")
        if predictor not in PREDICTORS:
            raise ConfigError(f"BET predictor must be one of {PREDICTORS}, got {predictor!r}")
        self.candidates = int(candidates)
        self.max_ask = self.candidates
        self.predictor_name = predictor
        self.updates = int(updates)
        self.sampler = BudgetedSampler(space, budget, user_share=user_share)
        self.iteration = 0
        self.anchors = _anchors(space, budget) if anchors else {}
        self.anchored = 0
        self._asked_anchors = 0
        self.n_candidates = len(space.grid) * max(len(space.precisions), 1)  # sizes, or (size, precision) pairs
        self.population = np.empty((0, space.n_decisions), dtype=_index_dtype(self.n_candidates))
        self.population_fitness = np.empty(0)
        self.losses: list[float] = []
        self.picks: list[dict[str, Any]] = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.predictor = _build_predictor(predictor, space)
        self.optimizer = torch.optim.Adam(self.predictor.parameters(), lr=lr) if self.predictor is not None else None

    # -- Algorithm 1 -------------------------------------------------------------------------------
    def _ask(self, n: int) -> np.ndarray:
        if n > self.candidates:
            raise ConfigError(f"BET picks at most its {self.candidates} candidates per iteration; asked for {n}")
        # Anchors still to evaluate come first; the rest of the round is an iteration of Algorithm 1.
        pending = list(self.anchors.items())[self.anchored : self.anchored + n]
        self._asked_anchors = len(pending)
        rows = [decisions.astype(np.float64) for _, decisions in pending]
        notes = [{"iteration": 0, "strategy": "anchor", "anchor": name, "predicted": self._predicted_or_none(decisions)}
                 for name, decisions in pending]
        if len(pending) < n:
            rows.extend(self._algorithm_1(n - len(pending)))
            notes.extend(self.picks)
        self.picks = notes
        return np.stack(rows)

    def _algorithm_1(self, n: int) -> np.ndarray:
        """The ``n`` picks of iteration ``t``: candidates drawn, then selected by ``t``'s strategy."""
        iteration = self.iteration + 1
        drawn = self.sampler.draw(self.rng, self.candidates)
        strategy = strategy_of(iteration) if self.predictor is not None else "random"
        if strategy == "nearest" and not len(self.population):
            strategy = "random"
        predicted = np.full(self.candidates, np.nan)
        if strategy == "random":  # nothing to score: only the picks are projected
            chosen = self.rng.choice(self.candidates, size=n, replace=False)
            actions = self.sampler.project(drawn, chosen)
            picked = np.arange(n)
        else:
            actions = self.sampler.project(drawn)
            indices = self._indices(actions.decisions)
            with torch.no_grad():
                embedding = self.predictor.embed(indices)
                predicted = self.predictor.decoder(embedding).squeeze(-1).numpy().astype(np.float64)
                if strategy == "greedy":
                    chosen = np.argsort(-predicted, kind="stable")[:n]
                else:
                    best = self.population[int(np.argmax(self.population_fitness))]
                    target = self.predictor.embed(torch.as_tensor(best, dtype=torch.int64).unsqueeze(0))
                    distance = torch.cdist(embedding, target).squeeze(1).numpy()
                    chosen = np.argsort(distance, kind="stable")[:n]
            picked = chosen
        self.picks = [
            {
                "iteration": iteration, "strategy": strategy,
                "predicted": None if np.isnan(predicted[i]) else float(predicted[i]),
                "families": [FAMILIES[f] for f in actions.family[j]],
                "beta": [round(float(b), 6) for b in actions.beta[j]],
                "share": [round(float(s), 6) for s in actions.share[j]],
                **({} if actions.precision is None
                   else {"precision": [self.space.precisions[k] for k in actions.precision[j]]}),
            }
            for i, j in zip(chosen, picked)
        ]
        return actions.decisions[picked].astype(np.float64)

    def _tell(self, decisions: np.ndarray, fitness: np.ndarray) -> None:
        self.anchored += self._asked_anchors
        if len(decisions) > self._asked_anchors:  # the round held an iteration of Algorithm 1
            self.iteration += 1
        self._asked_anchors = 0
        indices = self._indices(decisions).numpy().astype(self.population.dtype)
        self.population = np.concatenate([self.population, indices])
        self.population_fitness = np.concatenate([self.population_fitness, fitness])
        if self.predictor is None:
            return
        for _ in range(self.updates * len(decisions)):
            member = int(self.rng.integers(len(self.population)))
            sizes = torch.as_tensor(self.population[member : member + 1].astype(np.int64))
            target = torch.tensor([self.population_fitness[member]], dtype=torch.float32)
            loss = torch.nn.functional.mse_loss(self.predictor(sizes), target)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.losses.append(float(loss.detach()))

    def supernet_proposals(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Actions of BET's budgeted sampler, so the supernet trains on the shapes BET will score."""
        return self.sampler.sample(rng, n).decisions

    def predict(self, decisions: np.ndarray) -> np.ndarray:
        """Predicted fitness of decision vectors (grid values), shape ``(m,)``."""
        if self.predictor is None:
            raise ConfigError("this BET controller has no predictor (predictor='none')")
        with torch.no_grad():
            return self.predictor(self._indices(np.atleast_2d(decisions))).numpy().astype(np.float64)

    def _predicted_or_none(self, decisions: np.ndarray) -> float | None:
        return None if self.predictor is None else float(self.predict(decisions)[0])

    def notes(self) -> list[dict[str, Any]]:
        """How each candidate of the last ask was picked: iteration, strategy, predicted fitness, draw."""
        return [dict(pick) for pick in self.picks]

    # -- state -------------------------------------------------------------------------------------
    def _state(self) -> ControllerState:
        state: ControllerState = {
            "iteration": self.iteration,
            "anchored": self.anchored,
            "population": self.population,
            "population_fitness": self.population_fitness,
            "losses": np.asarray(self.losses, dtype=np.float64),
        }
        if self.predictor is not None:
            state["predictor"] = dict(self.predictor.state_dict())
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def _load_state(self, state: ControllerState) -> None:
        self.iteration = int(state["iteration"])
        self.anchored = int(state.get("anchored", 0))
        self.population = np.asarray(state["population"]).astype(self.population.dtype)
        self.population_fitness = np.asarray(state["population_fitness"], dtype=np.float64)
        self.losses = [float(x) for x in np.asarray(state["losses"])]
        if self.predictor is not None:
            self.predictor.load_state_dict(state["predictor"])
            self.optimizer.load_state_dict(state["optimizer"])

    def _indices(self, decisions: np.ndarray) -> torch.Tensor:
        """Candidate indices of decision vectors, ``(m, n_decisions)``: the grid index of each size, and with
        precisions the index of its (size, precision) pair, size-major.

        By a lookup table (cheaper than a binary search per value over millions).
        """
        grid = self.space.grid
        sizes, precision = self.space.split(np.atleast_2d(np.asarray(decisions, dtype=np.int64)))
        lookup = np.zeros(int(grid[-1]) + 1, dtype=np.int64)
        lookup[grid] = np.arange(len(grid))
        index = lookup[sizes]
        if precision is not None:
            index = index * len(self.space.precisions) + precision
        return torch.from_numpy(index)


def _build_predictor(name: str, space: SearchSpace) -> FitnessPredictor | None:
    if name == "none":
        return None
    bits = np.array([PRECISIONS[p].bits for p in space.precisions]) if space.precisions else None
    if name == "sizes":
        return SizeOnlyPredictor(space.n_decisions, space.grid, bits)
    context = space.context()
    return DeepSetsPredictor(context["table"], np.expm1(context["log_frequency"]), space.weights, space.grid, bits)


def _anchors(space: SearchSpace, budget: Budget) -> dict[str, np.ndarray]:
    """The rule-based allocations, computed here so the controller needs nothing but ``nas.core``.

    Searching precisions: both rules at every precision (``equal@int8``, ...).
    """
    n, log_frequency = space.n_decisions, space.context()["log_frequency"]
    anchors = {}
    for k, precision in enumerate(space.precisions or (None,)):
        suffix = "" if precision is None else f"@{precision}"
        anchors[f"equal{suffix}"] = space.project(space.join(np.ones(n), np.full(n, k)), budget)
        anchors[f"frequency{suffix}"] = space.project(space.join(log_frequency, np.full(n, k)), budget, monotone=True)
    return anchors


def _index_dtype(n_grid: int) -> np.dtype:
    """The smallest dtype that stores a grid index (so a large population over many rows stays small)."""
    return np.dtype(np.uint8 if n_grid <= 256 else np.int32)
