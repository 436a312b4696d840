"""What conditioning controllers read about each decision, and coarse groups of decisions.

A per-feature space has one decision per row, often millions: a controller cannot keep
a parameter per decision.  Two ways around it, shared by the controllers here:

* :func:`decision_features` describes every decision by a few numbers (its table and
  its frequency), so a small network maps context to a distribution over sizes;
* :class:`DecisionGroups` ties decisions of one table and a similar frequency into one
  group, so a black-box optimiser (nevergrad, Optuna) searches tens of values, not
  millions.  Spaces with few decisions keep one group per decision.
"""

from __future__ import annotations

import numpy as np

from nas.core.space import SearchSpace

__all__ = ["DecisionGroups", "decision_features"]


def decision_features(space: SearchSpace) -> np.ndarray:
    """Per decision: its table one-hot, log-frequency scaled to [0, 1], and its frequency rank in its table.

    Returns:
        float32 array ``(n_decisions, n_tables + 2)``.
    """
    context = space.context()
    table = np.asarray(context["table"], dtype=np.int64)
    log_frequency = np.asarray(context["log_frequency"], dtype=np.float64)
    features = np.zeros((space.n_decisions, len(space.tables) + 2), dtype=np.float32)
    features[np.arange(space.n_decisions), table] = 1.0
    top = float(log_frequency.max()) if log_frequency.size else 0.0
    features[:, -2] = log_frequency / top if top > 0 else 0.0
    for t in range(len(space.tables)):
        members = np.flatnonzero(table == t)
        if len(members) > 1:
            # Rank 1 for the most frequent decision, 0 for the rarest (ties share the lower rank).
            ranks = np.argsort(np.argsort(log_frequency[members], kind="stable"), kind="stable")
            features[members, -1] = ranks / (len(members) - 1)
        elif len(members) == 1:
            features[members, -1] = 1.0
    return features


class DecisionGroups:
    """Decisions tied into at most ``max_groups`` groups: by table, then by frequency rank.

    Each table gets a share of the groups proportional to its decisions (at least one);
    within a table the decisions sorted by frequency are cut into runs of equal length.
    With ``n_decisions <= max_groups`` every decision is its own group.

    Attributes:
        of_decision: group index of every decision (int64).
        n_groups: number of groups.
    """

    def __init__(self, space: SearchSpace, max_groups: int = 32) -> None:
        if max_groups < 1:
            raise ValueError(f"max_groups must be >= 1, got {max_groups}")
        n = space.n_decisions
        if n <= max_groups:
            self.of_decision = np.arange(n, dtype=np.int64)
            self.n_groups = n
            return
        context = space.context()
        table = np.asarray(context["table"], dtype=np.int64)
        log_frequency = np.asarray(context["log_frequency"], dtype=np.float64)
        counts = np.bincount(table, minlength=len(space.tables))
        present = np.flatnonzero(counts)
        shares = np.maximum(1, np.floor(max_groups * counts[present] / n)).astype(np.int64)
        shares = np.minimum(shares, counts[present])
        self.of_decision = np.empty(n, dtype=np.int64)
        start = 0
        for t, share in zip(present, shares):
            members = np.flatnonzero(table == t)
            by_frequency = members[np.argsort(-log_frequency[members], kind="stable")]
            self.of_decision[by_frequency] = start + (np.arange(len(members)) * share) // len(members)
            start += int(share)
        self.n_groups = start

    def expand(self, values: np.ndarray) -> np.ndarray:
        """One value per decision from one value per group (last axis)."""
        return np.asarray(values)[..., self.of_decision]

    def reduce(self, decisions: np.ndarray) -> np.ndarray:
        """One value per group from decisions: the mean of its members (last axis)."""
        decisions = np.atleast_2d(np.asarray(decisions, dtype=np.float64))
        counts = np.bincount(self.of_decision, minlength=self.n_groups)
        sums = np.stack([np.bincount(self.of_decision, weights=row, minlength=self.n_groups) for row in decisions])
        return sums / np.maximum(counts, 1)
