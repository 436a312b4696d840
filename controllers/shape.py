"""``shape``: search the shape of the frequency rule instead of every row's size.

Sizes grow with frequency in every allocation that wins (measured across the backbones and
datasets of this project); what differs between data, backbones and budgets is *how
steeply* they grow and how the budget splits between tables.  So this controller searches
a two-parameter family that contains both rules:

    size of row i  ∝  log(1 + f_i)^α · 2^(τ · z_t(i))

where ``f_i`` is the row's training frequency and ``z_t(i)`` the standardised mean
log-frequency of the row's table (a table of frequent rows has ``z > 0``); every vector is
projected to spend the budget exactly.  ``α = 0, τ = 0`` is equal sizes, ``α = 1, τ = 0``
the frequency rule; larger ``α`` gives the head more and the tail less, ``τ`` moves budget
between tables.

Why a family and not per-row decisions: a search with tens of fitness evaluations cannot
learn tens of thousands of independent decisions (random per-row proposals lose to both
rules), while it can rank a couple of dozen well-placed shapes.  Fitness masks the plainly
trained full model (``preferred_supernet``), which every run has anyway as its reference, so
the search itself costs a few evaluations; the fittest shape is then retrained with the
fitter rule trained to the end beside it (:meth:`fallbacks`), and the better on validation is
the answer: about two trainings in all.  The design evaluates a grid of
``alphas × tilts`` first (both rules first of all, so the search never ends without having
measured them), then refines around the fittest by a pattern search that halves its steps.

Searching precisions too (``--precisions``), a shape also has one precision ``p`` for all its
rows: the search first measures the frequency rule at every precision, then runs its design
at the fittest precision so far, and the pattern search also steps to the neighbouring
precisions.  A narrower precision buys more dimensions for the same bytes; which trade wins
is what the fitness (and then the retraining, quantised) decides.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from nas.core.budget import Budget
from nas.core.controller import Controller, ControllerState
from nas.core.errors import ConfigError
from nas.core.plugins import register_controller
from nas.core.space import SearchSpace

__all__ = ["FrequencyShape"]

#: The default exponents of ``log(1 + f)`` the design evaluates (0: equal sizes, 1: the frequency rule).
ALPHAS = (0.0, 1.0, 0.5, 1.5, 2.0, 3.0)
#: The default tilts between tables (0 first: the rules are untilted).  At 2 a table one
#: standard deviation of mean log-frequency above another gets 16x its size before projection,
#: which on LightGCN puts the rarer table at the floor (docs/results.md, 14.6).
TILTS = (0.0, -1.0, 1.0, 2.0)
#: Halvings of the refinement steps before the pattern search falls back to random steps.
_HALVINGS = 4


@register_controller("shape")
class FrequencyShape(Controller):
    """Searches ``α`` (how steeply sizes grow with log-frequency) and ``τ`` (the tilt between tables).

    Args:
        space: the search space (any space whose context gives ``table`` and ``log_frequency``).
        budget: the hard budget.
        seed: seeds the random steps taken once the pattern search has converged.
        alphas: exponents of the initial design.
        tilts: tilts of the initial design (``2^τ`` is the factor between tables one
            standard deviation apart in mean log-frequency).
    """

    needs_context = True
    searches_precision = True
    #: Fitness masks the plainly trained full model, which the run already has (the cached
    #: reference): the search trains no supernet of its own.
    preferred_supernet = "full"
    #: Only the fittest shape is retrained, beside the fitter rule (:meth:`fallbacks`):
    #: validation then picks between a searched shape and the rule at the cost of two
    #: trainings, where the short first rungs of successive halving judge how fast a model
    #: starts rather than where it ends (docs/results.md, 14.6).
    preferred_retrain_top = 1

    @classmethod
    def preferred_trials(cls, precisions: int) -> int:
        """The default design once, after the frequency rule at each precision searched."""
        return len(ALPHAS) * len(TILTS) + precisions

    def __init__(
        self,
        space: SearchSpace,
        budget: Budget,
        seed: int = 0,
        *,
        alphas: Sequence[float] = ALPHAS,
        tilts: Sequence[float] = TILTS,
    ) -> None:
        super().__init__(space, budget, seed)
        for name, given in (("alphas", alphas), ("tilts", tilts)):
            if (isinstance(given, (str, bytes)) or not isinstance(given, Sequence) or not given
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in given)):
                raise ConfigError(f"the shape controller's {name} must be a non-empty list of finite numbers, "
                                  f"got {given!r} (e.g. --controller-option {name}=[0,1,2])")
        if min(alphas) < 0:
            raise ConfigError(f"the shape controller's alphas must be non-negative, got {list(alphas)}")
        self.design = [(float(a), float(t)) for t in tilts for a in alphas]
        context = space.context()
        self._log_frequency = np.asarray(context["log_frequency"], dtype=np.float64)
        self._table_z = _table_z(np.asarray(context["table"]), self._log_frequency)
        # (alpha, tilt, precision index, fitness), in the order told; the index is 0 without precisions
        self.evaluated: list[tuple[float, float, int, float]] = []
        self._asked: list[tuple[float, float, int]] = []
        self._halvings = 0

    def direction(self, alpha: float, tilt: float, precision: int = 0) -> np.ndarray:
        """The unprojected decision vector of shape ``(alpha, tilt)`` at ``precision`` (an index; ignored without precisions).

        ``0^0 = 1``: at ``alpha = 0`` unseen rows count like others.
        """
        sizes = np.power(self._log_frequency, alpha) * np.exp2(tilt * self._table_z)
        return self.space.join(sizes, np.full(len(sizes), float(precision)))

    # -- the search --------------------------------------------------------------------------------
    def _ask(self, n: int) -> np.ndarray:
        self._asked = []
        for _ in range(n):
            self._asked.append(self._next())
        return np.stack([self.direction(a, t, k) for a, t, k in self._asked])

    def _tell(self, decisions: np.ndarray, fitness: np.ndarray) -> None:
        shapes = self._asked if len(self._asked) == len(fitness) else [(np.nan, np.nan, -1)] * len(fitness)
        self.evaluated += [(a, t, k, float(f)) for (a, t, k), f in zip(shapes, fitness)]
        self._asked = []

    def _next(self) -> tuple[float, float, int]:
        """The first unmeasured design point, else the best point's nearest unmeasured neighbour.

        With precisions the design starts with the frequency rule at every precision and
        then runs at the fittest precision measured so far.
        """
        seen = {(a, t, k) for a, t, k, _ in self.evaluated} | set(self._asked)
        measured = [(a, t, k, f) for a, t, k, f in self.evaluated if np.isfinite(a)]
        n_precisions = max(len(self.space.precisions), 1)
        for k in range(n_precisions if self.space.precisions else 0):
            if (1.0, 0.0, k) not in seen:
                return (1.0, 0.0, k)
        best = max(measured, key=lambda e: e[3])[2] if measured else 0
        for alpha, tilt in self.design:
            if (alpha, tilt, best) not in seen:
                return (alpha, tilt, best)
        alpha, tilt, k, _ = max(measured, key=lambda e: e[3]) if measured else (*self.design[0], 0, 0.0)
        while self._halvings <= _HALVINGS:
            step_a, step_t = self._steps()
            steps = [(alpha + step_a, tilt, k), (alpha - step_a, tilt, k), (alpha, tilt + step_t, k), (alpha, tilt - step_t, k)]
            steps += [(alpha, tilt, j) for j in (k - 1, k + 1) if 0 <= j < n_precisions]
            for a, t, j in steps:
                point = (round(max(a, 0.0), 6), round(t, 6), j)
                if point not in seen:
                    return point
            self._halvings += 1
        return (round(max(alpha + self.rng.normal(0, 0.25), 0.0), 6), round(tilt + self.rng.normal(0, 0.25), 6), k)

    def _steps(self) -> tuple[float, float]:
        """The pattern search's steps: half the design's spacing, halved after each round without a new point."""
        def spacing(values: list[float]) -> float:
            gaps = np.diff(sorted(set(values)))
            return float(gaps.min()) if len(gaps) else 0.5
        scale = 0.5 ** (self._halvings + 1)
        return spacing([a for a, _ in self.design]) * scale, spacing([t for _, t in self.design]) * scale

    def fallbacks(self) -> np.ndarray:
        """The fitter of the two rules (equal sizes, the frequency rule) at its fittest precision measured.

        Retrained to the end beside the search's pick, so that validation decides whether
        a shape beats the rule it would otherwise replace: fitness on the masked full model
        can prefer a tilt that retrains worse than the untilted rules (Gowalla MF under a
        byte budget), and so can the short first rungs of successive halving.
        """
        rules = [e for e in self.evaluated if (e[0], e[1]) in ((0.0, 0.0), (1.0, 0.0))]
        if not rules:
            return super().fallbacks()
        alpha, tilt, k, _ = max(rules, key=lambda e: e[3])
        return self.space.project(self.direction(alpha, tilt, k), self.budget)[None, :]

    # -- state ---------------------------------------------------------------------------------------
    def _state(self) -> ControllerState:
        return {"evaluated": [list(e) for e in self.evaluated], "halvings": self._halvings}

    def _load_state(self, state: ControllerState) -> None:
        # States saved before precisions were searched hold (alpha, tilt, fitness).
        entries = [e if len(e) == 4 else (e[0], e[1], 0, e[2]) for e in state.get("evaluated", [])]
        self.evaluated = [(float(a), float(t), int(k), float(f)) for a, t, k, f in entries]
        self._halvings = int(state.get("halvings", 0))

    def notes(self) -> list[dict[str, float | str]]:
        """The shape of each candidate of the last ask (and its precision), logged with its trial."""
        if not self.space.precisions:
            return [{"alpha": a, "tilt": t} for a, t, _ in self._asked]
        return [{"alpha": a, "tilt": t, "precision": self.space.precisions[k]} for a, t, k in self._asked]


def _table_z(table: np.ndarray, log_frequency: np.ndarray) -> np.ndarray:
    """Per decision: its table's mean log-frequency, standardised across tables (0 with one table)."""
    tables = np.unique(table)
    means = np.array([log_frequency[table == t].mean() for t in tables])
    spread = means.std()
    z = (means - means.mean()) / spread if spread > 0 else np.zeros_like(means)
    return z[np.searchsorted(tables, table)]
