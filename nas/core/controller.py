"""The controller interface: a controller proposes decisions and learns from their fitness.

Two kinds, told apart by the ``multi_trial`` flag:

* **multi-trial** controllers (:class:`Controller`) implement the ask/tell protocol of
  Optuna's and nevergrad's optimizers: the search loop asks for candidates, measures
  their fitness on the supernet and tells it back;
* **one-shot** controllers (:class:`OneShotController`) learn *during* supernet
  training: they relax the choice of sizes into something differentiable, take a
  step per batch, and end with one discrete choice under the budget.

The public methods live here and do the checking and bookkeeping once; a controller
fills the small protected hooks ``_ask``, ``_tell`` and, when it carries learned
state, ``_state`` / ``_load_state``.  The search loop, not the controller, owns
evaluation, logging and checkpoints.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from nas.core.allocation import Allocation
from nas.core.budget import Budget
from nas.core.errors import ConfigError
from nas.core.space import SearchSpace

__all__ = ["Controller", "ControllerState", "OneShotController"]

#: A controller's state: JSON-able values, numpy arrays and torch tensors (saved as one safetensors file).
ControllerState = dict[str, Any]


class Controller(ABC):
    """A multi-trial controller over one search space and one budget.

    Args:
        space: the search space whose decisions it proposes.
        budget: the hard budget; every proposal is projected onto it.
        seed: seeds the controller's random generator, so a seed fixes its proposals.

    Capability flags (class attributes) say what a controller can do, so the loop
    never needs ``isinstance`` checks.
    """

    #: Registry name, set by the registry decorator.
    name: ClassVar[str] = ""
    #: ``True`` for ask/tell controllers; one-shot controllers hook into supernet training.
    multi_trial: ClassVar[bool] = True
    #: ``False`` when the controller's proposals do not depend on fitness (one ask is enough).
    needs_fitness: ClassVar[bool] = True
    #: Names of the spaces it supports, or ``None`` for every space.
    spaces: ClassVar[tuple[str, ...] | None] = None
    #: The supernet its fitness is designed for (``"sandwich"`` or ``"full"``), used when a
    #: run leaves the choice to it (``--supernet auto``, the default); ``None``: the sandwich.
    preferred_supernet: ClassVar[str | None] = None
    #: How many of its fittest allocations a run retrains when it gives no ``retrain_top``
    #: (``None``: :data:`~nas.pipeline.config.DEFAULT_RETRAIN_TOP`).
    preferred_retrain_top: ClassVar[int | None] = None
    #: ``True`` when it reads the space's per-decision context (table, frequency): a space
    #: must then give ``table`` and ``log_frequency`` for every decision.
    needs_context: ClassVar[bool] = False
    #: Most candidates one ``ask`` may request, or ``None`` for no limit (instances may set their own).
    max_ask: int | None = None
    #: ``True`` when it proposes a precision for every decision beside its size, so it can
    #: search a space told to (:meth:`~nas.core.space.SearchSpace.with_precisions`); its
    #: proposals are then whole decision vectors, sizes followed by precision indices.
    searches_precision: ClassVar[bool] = False

    @classmethod
    def preferred_trials(cls, precisions: int) -> int | None:
        """Allocations its search is designed to evaluate, used when a run gives no ``trials``.

        ``precisions``: how many precisions the run searches (0: sizes alone).  ``None``
        leaves it to the run's default (:data:`~nas.pipeline.config.DEFAULT_TRIALS`).
        """
        return None

    def __init__(self, space: SearchSpace, budget: Budget, seed: int = 0) -> None:
        space.check_budget(budget)
        if self.spaces is not None and space.name not in self.spaces:
            raise ConfigError(f"controller {self.name!r} supports the spaces {self.spaces}, not {space.name!r}")
        if space.precisions and not self.searches_precision:
            raise ConfigError(f"the {self.name} controller does not search precisions; drop --precisions to search "
                              "sizes alone, or choose a controller that searches both")
        if self.needs_context:
            context = space.context()
            missing = [k for k in ("table", "log_frequency") if len(np.asarray(context.get(k, ()))) != space.n_decisions]
            if missing:
                raise ConfigError(f"controller {self.name!r} reads the context {missing} per decision, "
                                  f"which the {space.name!r} space does not give")
        self.space = space
        self.budget = budget
        self.seed = int(seed)
        self.rng = np.random.default_rng(seed)
        self.n_told = 0
        self.best_decisions: np.ndarray | None = None
        self.best_fitness = -np.inf

    # -- public protocol ---------------------------------------------------------------------------
    def ask(self, n: int = 1) -> np.ndarray:
        """``n`` feasible decision vectors, shape ``(n, space.vector_length)``, each within the budget."""
        if n < 1:
            raise ValueError(f"ask for at least one candidate, got n={n}")
        raw = np.asarray(self._ask(n), dtype=np.float64).reshape(n, self.space.vector_length)
        proposals = np.stack([self.space.project(row, self.budget) for row in raw])
        self._last_asked = proposals.copy()
        return proposals

    def _asked_row(self, decisions: np.ndarray, index: int) -> bool:
        """Whether told row ``index`` is the ``index``-th proposal of the last ``ask`` (not decisions from elsewhere).

        Controllers that learn from what they drew before projection (``rl``, the black-box
        optimisers) use it to match told decisions to their own draws.
        """
        asked = getattr(self, "_last_asked", None)
        return asked is not None and len(asked) == len(decisions) and np.array_equal(asked[index], decisions[index])

    def tell(self, decisions: np.ndarray, fitness: np.ndarray | list[float]) -> None:
        """Report the fitness of decision vectors the loop evaluated (higher is better)."""
        batch = np.atleast_2d(np.asarray(decisions, dtype=np.int64))
        values = np.atleast_1d(np.asarray(fitness, dtype=np.float64))
        if batch.shape != (len(values), self.space.vector_length):
            raise ValueError(f"tell got decisions of shape {batch.shape} for {len(values)} fitness values")
        if not np.isfinite(values).all():
            raise ValueError(f"fitness must be finite, got {values.tolist()}")
        sizes, precision = self.space.split(batch)
        off_grid = ~np.isin(sizes, self.space.grid)
        if off_grid.any():
            row, column = (int(i) for i in np.argwhere(off_grid)[0])
            raise ValueError(f"told decisions must be grid values from ask(); row {row} has {batch[row, column]} at {column}")
        stray = np.zeros_like(off_grid) if precision is None else (precision < 0) | (precision >= len(self.space.precisions))
        if stray.any():
            row, column = (int(i) for i in np.argwhere(stray)[0])
            raise ValueError(f"told precisions must index the space's {len(self.space.precisions)}; "
                             f"row {row} has {precision[row, column]} for decision {column}")
        for row in batch:
            self.budget.check_cost(self.space.cost_in(row, self.budget))
        for row, value in zip(batch, values):
            self.n_told += 1
            if value > self.best_fitness:
                self.best_fitness, self.best_decisions = float(value), row.copy()
        self._tell(batch, values)

    def recommend(self) -> np.ndarray:
        """The controller's answer: the best decisions told so far, else its own proposal."""
        if self.best_decisions is not None:
            return self.best_decisions.copy()
        return self.ask(1)[0]

    def supernet_proposals(self, rng: np.random.Generator, n: int) -> np.ndarray | None:
        """``n`` feasible decision vectors drawn like the controller's proposals, for the supernet to train on.

        Drawn from ``rng`` only (never the controller's own generator or learned state), so
        the supernet's training stays a function of its seed.  ``None`` (the default): the
        controller has no proposal distribution of its own, and the space is sampled.
        """
        return None

    def fallbacks(self) -> np.ndarray:
        """Evaluated decision vectors retrained to the end beside the search's pick, whatever their fitness (default: none).

        Fitness is a proxy, and so is a short rung of successive halving: either can rank a
        candidate above one that retrains better.  A search that contains a rule (equal
        sizes, the frequency rule) names it here, so the rule is trained as long as the pick
        and validation, not a proxy, decides between them.  Only vectors the search
        evaluated are retrained; shape ``(k, space.vector_length)``.
        """
        return np.zeros((0, self.space.vector_length), dtype=np.int64)

    def notes(self) -> list[dict[str, Any]]:
        """What the controller wants logged with each candidate of its last ask (default: nothing).

        One JSON-able dict per candidate, in ask order; the search loop stores it in the
        candidate's ``trial`` event (BET logs its strategy and predicted fitness).
        """
        return []

    def state_dict(self) -> ControllerState:
        """Everything needed to continue exactly where the controller stands."""
        return {
            "name": self.name,
            "seed": self.seed,
            "rng": self.rng.bit_generator.state,
            "n_told": self.n_told,
            "best_fitness": None if self.best_decisions is None else self.best_fitness,
            "best_decisions": self.best_decisions,
            "own": self._state(),
        }

    def load_state_dict(self, state: ControllerState) -> None:
        """Restore a state written by :meth:`state_dict`."""
        if state.get("name") != self.name:
            raise ValueError(f"state of controller {state.get('name')!r} cannot be loaded into {self.name!r}")
        self.rng.bit_generator.state = state["rng"]
        self.n_told = int(state["n_told"])
        best = state.get("best_decisions")
        self.best_decisions = None if best is None else np.asarray(best, dtype=np.int64)
        self.best_fitness = -np.inf if state.get("best_fitness") is None else float(state["best_fitness"])
        self._load_state(state.get("own") or {})

    # -- hooks ---------------------------------------------------------------------------------------
    @abstractmethod
    def _ask(self, n: int) -> np.ndarray:
        """Raw proposals ``(n, space.vector_length)``: any non-negative sizes (then precision indices); the base class projects them."""

    def _tell(self, decisions: np.ndarray, fitness: np.ndarray) -> None:  # noqa: B027 - optional hook
        """Learn from evaluated decisions (the default learns nothing)."""

    def _state(self) -> ControllerState:
        """The controller's own learned state (default: none)."""
        return {}

    def _load_state(self, state: ControllerState) -> None:  # noqa: B027 - optional hook
        """Restore :meth:`_state`."""


class OneShotController(Controller):
    """A controller trained jointly with the supernet, then asked once for its choice.

    The search loop trains the supernet with :meth:`relaxed_loss` as the loss of every
    batch, calls :meth:`after_step` after each optimiser step of the weights (the
    controller updates its own architecture parameters there) and :meth:`on_epoch_start`
    before each epoch; the controller's :meth:`state_dict` is saved with every training
    checkpoint.  :meth:`relaxed_loss` is told how to compute the model's own loss of the
    batch (BPR for top-k data, cross-entropy for click data), so one controller searches
    every kind of model; :meth:`supernet_loss` is its BPR form.  Afterwards ``ask`` returns :meth:`choose`'s decisions, projected to the
    budget like every proposal.

    After training (and after a resumed run reloads the trained supernet) the loop calls
    :meth:`finish` with the model, then takes :meth:`allocation`: by default the
    allocation of ``ask``'s decisions; controllers that keep arbitrary elements rather
    than a prefix (pruning) return one with element masks.

    Subclasses implement :meth:`relaxed_loss` and :meth:`choose` (and the state hooks).
    One written for top-k data only may implement :meth:`supernet_loss` instead.
    """

    multi_trial = False
    needs_fitness = False

    def __init__(self, space: SearchSpace, budget: Budget, seed: int = 0) -> None:
        cls = type(self)
        if cls.relaxed_loss is OneShotController.relaxed_loss and cls.supernet_loss is OneShotController.supernet_loss:
            # Neither is abstract (either one will do), so say it here rather than at the first batch.
            raise TypeError(f"{cls.__name__} must implement relaxed_loss (or, for top-k data only, supernet_loss)")
        super().__init__(space, budget, seed)

    def parameters(self) -> list[Any]:
        """The architecture parameters it learns (tensors), for inspection (default: none)."""
        return []

    def relaxed_loss(self, model: Any, loss: Callable[[], Any]) -> Any:
        """The loss of one batch under the relaxed choice (a scalar tensor with gradients to both sides).

        Args:
            model: the supernet (its ``embedding`` is a maskable embedding).
            loss: computes the model's own loss of the batch as the embedding serves it
                when called; a controller sets its soft mask around the call, for example,
                and adds its own terms to the result.
        """
        raise ConfigError(
            f"the {self.name} controller implements only supernet_loss (BPR, top-k data); "
            "implement relaxed_loss(model, loss) to search click models or to train with another loss (--loss softmax)"
        )

    def supernet_loss(self, model: Any, users: Any, pos: Any, neg: Any, reg: float) -> Any:
        """The BPR loss of one batch of (user, positive, negative) triples under the relaxed choice."""
        return self.relaxed_loss(model, lambda: model.bpr_loss(users, pos, neg, reg))

    def after_step(self) -> None:  # noqa: B027 - optional hook
        """Update the architecture parameters after the weights' optimiser step (default: nothing)."""

    def on_epoch_start(self, epoch: int) -> None:  # noqa: B027 - optional hook
        """Called with the epoch number (from 1) before its first batch (default: nothing)."""

    def finish(self, model: Any) -> None:  # noqa: B027 - optional hook
        """Read what the trained supernet holds before the choice (default: nothing)."""

    @property
    def settled(self) -> bool:
        """Whether the supernet's validation now measures what the choice will keep (default: always).

        While it is ``False`` the trainer neither keeps a validation as the best state nor
        counts it towards early stopping: a pruning controller whose mask is still
        shrinking says so until the mask is frozen.
        """
        return True

    @abstractmethod
    def choose(self) -> np.ndarray:
        """The final discrete decision vector (grid values, then precision indices) under the budget."""

    def allocation(self) -> Allocation:
        """What the controller deploys; must meet the budget (checked by the loop)."""
        return self.space.allocation(self.ask(1)[0])

    def _ask(self, n: int) -> np.ndarray:
        return np.tile(np.asarray(self.choose(), dtype=np.float64), (n, 1))
