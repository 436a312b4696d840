"""What the nevergrad and Optuna controllers share: a black-box optimiser over grouped decisions.

The optimiser sees one number in [0, 1] per group of decisions
(:class:`~controllers._context.DecisionGroups`: by table and frequency rank, so a
per-feature space with millions of rows is searched through a few tens of values); the
number picks a grid value, the group's members all take it, and the space projects the
vector onto the budget.  The projection is part of the objective: the optimiser is
told the fitness of the projected allocation for the point it proposed.

Searching precisions too, the point has a second number in [0, 1] per group, which picks
the group's precision the same way.

Neither library's optimiser state is saved as such (that would mean pickles).  The
state is the history of told points and values: a restored controller builds a fresh
optimiser with the same seed and replays the history through ask and tell, which puts
it exactly where the original stood.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from controllers._context import DecisionGroups
from nas.core.budget import Budget
from nas.core.controller import Controller, ControllerState
from nas.core.errors import ConfigError
from nas.core.space import SearchSpace

__all__ = ["GroupedBlackBox"]


class GroupedBlackBox(Controller):
    """Base of controllers that drive an ask/tell optimiser over ``[0, 1]^groups``.

    Subclasses implement :meth:`_new_optimizer`, :meth:`_propose` and :meth:`_learn`.

    Args:
        space, budget, seed: as for every controller.
        groups: most groups of decisions the optimiser searches (one per decision when
            the space has no more decisions than this).
    """

    needs_context = True
    searches_precision = True

    def __init__(self, space: SearchSpace, budget: Budget, seed: int = 0, *, groups: int = 32) -> None:
        super().__init__(space, budget, seed)
        if groups < 1:
            raise ConfigError(f"groups must be >= 1, got {groups}")
        self.groups = DecisionGroups(space, groups)
        self.history_points = np.empty((0, self.dimensions))
        self.history_values = np.empty(0)
        self.history_proposed = np.empty(0, dtype=bool)
        self.history_round = np.empty(0, dtype=np.int64)
        self._pending: list[tuple[Any, np.ndarray]] = []
        self._optimizer = self._new_optimizer()

    @property
    def dimensions(self) -> int:
        """Numbers in a point: one size per group, and with precisions one precision per group."""
        return self.groups.n_groups * (2 if self.space.precisions else 1)

    # -- what a library adapter fills in -----------------------------------------------------------
    def _new_optimizer(self) -> Any:
        """A fresh optimiser over ``[0, 1]^dimensions`` seeded with ``self.seed``."""
        raise NotImplementedError

    def _propose(self) -> tuple[Any, np.ndarray]:
        """Ask the optimiser for one point: its handle (to tell later) and the point."""
        raise NotImplementedError

    def _learn(self, handle: Any, point: np.ndarray, fitness: float) -> None:
        """Tell the optimiser the fitness (higher is better) of a point; ``handle`` is ``None`` for a point it did not propose."""
        raise NotImplementedError

    # -- the controller protocol -------------------------------------------------------------------
    def _decisions(self, point: np.ndarray) -> np.ndarray:
        grid, n = self.space.grid, self.groups.n_groups
        index = np.rint(np.clip(point[:n], 0.0, 1.0) * (len(grid) - 1)).astype(np.int64)
        sizes = self.groups.expand(grid[index]).astype(np.float64)
        if not self.space.precisions:
            return sizes
        precision = np.rint(np.clip(point[n:], 0.0, 1.0) * (len(self.space.precisions) - 1))
        return self.space.join(sizes, self.groups.expand(precision))

    def _ask(self, n: int) -> np.ndarray:
        self._pending = [self._propose() for _ in range(n)]
        return np.stack([self._decisions(point) for _, point in self._pending])

    def _tell(self, decisions: np.ndarray, fitness: np.ndarray) -> None:
        pending, self._pending = self._pending, []
        mine = len(pending) == len(decisions) and all(self._asked_row(decisions, i) for i in range(len(decisions)))
        if not mine:  # decisions from elsewhere: the group means, scaled to [0, 1] of the grid's range
            grid, (sizes, precision) = self.space.grid, self.space.split(decisions)
            means = self.groups.reduce(sizes)
            index = np.array([np.searchsorted(grid, m) for m in means.ravel()]).reshape(means.shape)
            points = index / max(len(grid) - 1, 1)
            if precision is not None:
                shares = np.rint(self.groups.reduce(precision)) / max(len(self.space.precisions) - 1, 1)
                points = np.concatenate([points, shares], axis=1)
            pending = [(None, point) for point in points]
        round_ = int(self.history_round[-1]) + 1 if len(self.history_round) else 0
        for (handle, point), value in zip(pending, fitness):
            self._learn(handle, point, float(value))
            self._remember(point, float(value), handle is not None, round_)

    def _remember(self, point: np.ndarray, value: float, proposed: bool, round_: int) -> None:
        self.history_points = np.vstack([self.history_points, point])
        self.history_values = np.append(self.history_values, value)
        self.history_proposed = np.append(self.history_proposed, proposed)
        self.history_round = np.append(self.history_round, round_)

    def _state(self) -> ControllerState:
        return {"points": self.history_points, "values": self.history_values, "proposed": self.history_proposed,
                "round": self.history_round}

    def _load_state(self, state: ControllerState) -> None:
        points = np.asarray(state["points"], dtype=np.float64).reshape(-1, self.dimensions)
        values = np.asarray(state["values"], dtype=np.float64)
        proposed = np.asarray(state["proposed"], dtype=bool)
        rounds = np.asarray(state["round"], dtype=np.int64)
        self._optimizer = self._new_optimizer()
        self.history_points, self.history_values = np.empty((0, self.dimensions)), np.empty(0)
        self.history_proposed, self.history_round = np.empty(0, dtype=bool), np.empty(0, dtype=np.int64)
        # Replayed round by round, as asked and told: some optimisers treat a batch differently.
        for round_ in np.unique(rounds):
            members = np.flatnonzero(rounds == round_)
            handles = [self._replay_proposal(points[i]) if proposed[i] else None for i in members]
            for i, handle in zip(members, handles):
                self._learn(handle, points[i], float(values[i]))
                self._remember(points[i], float(values[i]), bool(proposed[i]), int(round_))

    def _replay_proposal(self, point: np.ndarray) -> Any:
        handle, again = self._propose()
        if not np.allclose(again, point):
            raise ConfigError(f"the {self.name} controller's optimiser did not replay its history (its library "
                              "changed since the state was saved, or it is not deterministic); start a new run")
        return handle
