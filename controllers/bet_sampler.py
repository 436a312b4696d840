"""BET's budget-aware action sampler [BET, eqs. 4-6], for any search space.

An *action* gives every decision of the space a size.  Per table (users, items, or
any field) a distribution family is drawn uniformly from :data:`FAMILIES`, with its
parameter ``β ~ Uniform(0, β_max)`` (eq. 4); as many values are drawn from it as the
table has decisions and normalised into shares of the table's budget (eq. 5); the
budget is split between tables by a random share ``w ~ Uniform(0, 1)`` for users
(for more than two tables: a flat Dirichlet draw, which for two tables is exactly
that uniform ``w``).  The largest share goes to the most frequent decision (eq. 6 and
the frequency ranking that follows it).

Two corrections to [BET]'s arithmetic (equations and sections cited here are its own):

* eq. 5 reads ``p_i / Σ_i |U| p_i``; with eq. 6's ``(|U| + |V|)`` factor that would
  not spend the budget, so shares are normalised by ``Σ_i p_i`` (each table's sizes
  add up to its share of the budget);
* eq. 6 floors sizes, and the released code then raises them to ``d_min`` and caps
  them at ``d_max``, which can break the budget.  Here the desired sizes go to the
  space's :meth:`~nas.core.space.SearchSpace.project` (with the frequency order), so
  every action is within the budget, spends at least 99 % of it whenever the grid
  allows, and keeps the more frequent decision at least as large as the rarer one.

Spaces whose decisions stand for several rows (per-field, block) get a share per
decision, turned into a size by dividing by the decision's cost per dimension.

Searching precisions too, every action also draws a precision per table, uniformly; the
table's share of the budget (then in bits) buys values at that precision's price.

Everything is vectorised: values are drawn as sorted uniforms (Rényi's representation
through cumulative exponentials, no sort) mapped through each family's inverse CDF,
in log space so that extreme parameters neither overflow nor divide by zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np
from scipy.special import ndtr, ndtri

from nas.core.budget import Budget
from nas.core.errors import ConfigError
from nas.core.space import SearchSpace

__all__ = ["BETA_MAX", "FAMILIES", "Actions", "BudgetedSampler"]

#: The four families of section 3.2, in a fixed order (their index is logged with each action).
FAMILIES = ("power_law", "truncated_exponential", "truncated_normal", "log_normal")

#: ``β_max`` of each family, as in section 4.3.
BETA_MAX = {"power_law": 20.0, "truncated_exponential": 5.0, "truncated_normal": 20.0, "log_normal": 0.5}

#: Parameters are drawn from ``[_BETA_FLOOR, β_max)``: ``β = 0`` is a degenerate limit of every family.
_BETA_FLOOR = 1e-6


@dataclass(frozen=True)
class Actions:
    """A batch of sampled actions and how each was drawn.

    Attributes:
        decisions: projected decisions, shape ``(m, n_decisions)`` (int64, grid values), or
            the desired real-valued sizes of actions just drawn (:meth:`BudgetedSampler.draw`).
        family: family index (into :data:`FAMILIES`) per action and table, shape ``(m, n_tables)``.
        beta: the family parameter per action and table.
        share: budget share per action and table (rows add up to one).
        precision: precision index per action and table, or ``None`` when precisions are not searched.
    """

    decisions: np.ndarray
    family: np.ndarray
    beta: np.ndarray
    share: np.ndarray
    precision: np.ndarray | None = None


class BudgetedSampler:
    """Draws whole actions under the budget, as BET does.

    Args:
        space: the search space (any: per-feature, per-field, block, or a user's own).
        budget: the hard budget every action meets.
        user_share: the first table's share of the budget; ``None`` draws it per action
            (``Uniform(0, 1)``, BET's choice).  Only defined for two tables.
        families: the families to draw from (default: all four).
        beta_max: ``β_max`` per family (default :data:`BETA_MAX`).
    """

    def __init__(
        self,
        space: SearchSpace,
        budget: Budget,
        *,
        user_share: float | None = None,
        families: tuple[str, ...] = FAMILIES,
        beta_max: dict[str, float] | None = None,
    ) -> None:
        space.check_budget(budget)
        unknown = sorted(set(families) - set(FAMILIES))
        if unknown or not families:
            raise ConfigError(f"BET families must be among {FAMILIES}, got {list(families)}")
        if user_share is not None and (len(space.tables) != 2 or not 0.0 <= user_share <= 1.0):
            raise ConfigError(
                f"a fixed user share needs exactly two tables and a value in [0, 1]; got {user_share} "
                f"for {len(space.tables)} tables (leave it unset to draw shares at random)"
            )
        limits = {**BETA_MAX, **(beta_max or {})}
        if any(limits[f] <= 0 for f in families):
            raise ConfigError(f"every beta_max must be positive, got {limits}")
        self.space = space
        self.budget = budget
        self.user_share = user_share
        self.families = np.array([FAMILIES.index(f) for f in families])
        self.beta_max = np.array([limits[f] for f in FAMILIES])
        order = space.frequency_order()
        # Decisions of each table, most frequent first (the order sorts by table, then frequency).
        bounds = np.searchsorted(order.table[order.order], np.arange(len(space.tables) + 1))
        self._ranked = [order.order[a:b] for a, b in pairwise(bounds)]
        self._weights = space.weights.astype(np.float64)
        per_value, per_row = budget.prices()
        self._per_value, self._per_row = per_value.astype(np.float64), per_row.astype(np.float64)

    def sample(self, rng: np.random.Generator, m: int) -> Actions:
        """``m`` projected actions; the same generator state gives the same actions."""
        return self.project(self.draw(rng, m))

    def draw(self, rng: np.random.Generator, m: int) -> Actions:
        """``m`` actions before projection: their ``decisions`` are the desired, real-valued sizes.

        Drawing and projecting apart lets a caller that needs only a few of the actions
        (BET's random strategy) project only those; the draws are the same either way.
        """
        n_tables = len(self._ranked)
        family = self.families[rng.integers(0, len(self.families), size=(m, n_tables))]
        beta = np.maximum(rng.uniform(0.0, 1.0, size=(m, n_tables)) * self.beta_max[family], _BETA_FLOOR)
        if self.user_share is not None:
            share = np.tile([self.user_share, 1.0 - self.user_share], (m, 1))
        else:
            share = rng.dirichlet(np.ones(n_tables), size=m) if n_tables > 1 else np.ones((m, 1))
        raw = np.zeros((m, self.space.n_decisions))
        precision = rng.integers(0, len(self.space.precisions), size=(m, n_tables)) if self.space.precisions else None
        for t, ranked in enumerate(self._ranked):
            if len(ranked) == 0:
                continue
            fractions = _fractions(rng, family[:, t], beta[:, t], len(ranked))
            if precision is None:
                raw[:, ranked] = fractions * share[:, t : t + 1] * self.budget.max_values / self._weights[ranked]
                continue
            # The table's bits, less its rows' scales, buy values at the drawn precision's price.
            k = precision[:, t : t + 1]
            spare = share[:, t : t + 1] * self.budget.max_cost - self._per_row[k] * self._weights[ranked].sum()
            raw[:, ranked] = fractions * np.maximum(spare, 0.0) / (self._weights[ranked] * self._per_value[k])
        if precision is not None:
            raw = self.space.join(raw, precision[:, self.space.context()["table"]].astype(np.float64))
        return Actions(raw, family, beta, share, precision)

    def project(self, actions: Actions, which: np.ndarray | None = None) -> Actions:
        """The drawn ``actions`` (or those at indices ``which``, in that order) projected onto the budget."""
        which = np.arange(len(actions.decisions)) if which is None else np.asarray(which)
        decisions = np.stack([self.space.project(actions.decisions[i], self.budget, monotone=True) for i in which])
        precision = None if actions.precision is None else actions.precision[which]
        return Actions(decisions, actions.family[which], actions.beta[which], actions.share[which], precision)


def _fractions(rng: np.random.Generator, family: np.ndarray, beta: np.ndarray, n: int) -> np.ndarray:
    """Per action, ``n`` shares that sum to one, largest first (eq. 5 on sorted draws)."""
    uniforms = _sorted_uniforms(rng, len(family), n)[:, ::-1]  # descending: the largest draw first
    log_values = np.empty_like(uniforms)
    for index in np.unique(family):
        rows = family == index
        log_values[rows] = _log_inverse_cdf(FAMILIES[index], uniforms[rows], beta[rows, None])
    log_values = np.nan_to_num(log_values, nan=-np.inf, posinf=np.finfo(np.float64).max)
    top = log_values.max(axis=1, keepdims=True)
    values = np.exp(log_values - np.where(np.isfinite(top), top, 0.0))
    total = values.sum(axis=1, keepdims=True)
    # A degenerate draw (every value zero) means no preference: equal shares.
    return np.where(total > 0, values / np.where(total > 0, total, 1.0), 1.0 / n)


def _sorted_uniforms(rng: np.random.Generator, m: int, n: int) -> np.ndarray:
    """``m`` rows of ``n`` sorted Uniform(0, 1) draws, in ``O(n)``: ``S_k / S_{n+1}`` of exponential sums."""
    sums = np.cumsum(rng.standard_exponential(size=(m, n + 1)), axis=1)
    return sums[:, :n] / sums[:, n:]


def _log_inverse_cdf(family: str, u: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """``log F⁻¹(u)`` of the family with parameter ``β`` (increasing in ``u``)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if family == "power_law":  # density β x^(β-1) on [0, 1]
            return np.log(u) / beta
        if family == "truncated_exponential":  # Exp(1) truncated to [0, β]
            return np.log(-np.log1p(u * np.expm1(-beta)))
        if family == "truncated_normal":  # N(0, 1) truncated to [0, β]; written with the upper tail, exact near β
            upper = ndtr(-beta)
            return np.log(-ndtri(0.5 * (1.0 - u) + u * upper))
        if family == "log_normal":  # exp(β z), z ~ N(0, 1)
            return beta * ndtri(u)
    raise ValueError(f"unknown family {family!r}")
