"""A built-in synthetic dataset with power-law popularity and learnable structure.

Real CF data has two traits an embedding-size search must face: long-tailed
frequencies (a few items and users hold most pairs, so row sizes should differ)
and latent structure (users like items "near" them, which is what embeddings
learn). :func:`synthetic` has both, is deterministic for a seed and takes well
under a second, so tests and the default run need no download:

* item popularity is Zipf-like: the item of popularity rank ``r`` (1-based, in
  random order over ids) has weight ``r ** -alpha``;
* user activity is power-law: ``n_min + Lomax(1 + alpha)``, scaled so the mean
  is ``mean_items_per_user`` (clipped to half the items);
* every user and item belongs to one of :data:`CLUSTERS` latent clusters; a
  user picks :data:`IN_CLUSTER` of their items from their own cluster (by
  popularity within it) and the rest by global popularity.

A matrix factorisation model recovers the clusters, so it beats a popularity
ranking by a wide margin on Recall@20: the signal is learnable, not noise.
"""

from __future__ import annotations

import numpy as np

from recsys.data.dataset import InteractionData, pairs_to_csr
from recsys.data.split import check_fractions, split_per_user

__all__ = ["CLUSTERS", "IN_CLUSTER", "synthetic"]

CLUSTERS = 20
"""Number of latent clusters of users and items."""

IN_CLUSTER = 0.9
"""Share of a user's picks drawn from their own cluster."""

_OVERDRAW = 1.5
"""Draws with replacement per missing item in the first round; doubled each further round."""

_ROUNDS = 5
"""Rounds of drawing; users still short after them (huge activity, tiny tail weights) keep fewer items."""


def synthetic(
    n_users: int = 3000,
    n_items: int = 4000,
    mean_items_per_user: float = 30.0,
    alpha: float = 1.1,
    seed: int = 0,
    split: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> InteractionData:
    """Generate a clustered power-law interaction dataset named ``"synthetic"``.

    Args:
        n_users: user rows.
        n_items: item rows (items never picked stay as rows of frequency 0).
        mean_items_per_user: target mean number of distinct items per user
            (the realised mean is a little lower: activity is clipped to half
            the items and a user's draws may repeat).
        alpha: power-law exponent: Zipf exponent of item popularity, and user
            activity has tail index ``1 + alpha``; larger means more skewed.
        seed: seed of everything random, including the split.
        split: ``(train, valid, test)`` fractions of each user's pairs.

    Raises:
        ValueError: a size or exponent out of range.
    """
    fractions = check_fractions(split)
    if n_users < 1 or n_items < 2:
        raise ValueError(f"need n_users >= 1 and n_items >= 2, got {n_users} and {n_items}")
    if not 1.0 <= mean_items_per_user <= n_items / 2:
        raise ValueError(
            f"mean_items_per_user must lie in [1, n_items / 2 = {n_items / 2:g}], got {mean_items_per_user}"
        )
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    rng = np.random.default_rng(seed)

    popularity = (1.0 + rng.permutation(n_items)) ** -float(alpha)
    item_cluster = rng.integers(0, CLUSTERS, n_items)
    user_cluster = rng.integers(0, CLUSTERS, n_users)
    n_min = max(1.0, min(5.0, mean_items_per_user / 3))
    scale = (mean_items_per_user - n_min) * alpha  # Lomax(1 + alpha) has mean 1 / alpha
    wanted = np.clip(np.rint(n_min + scale * rng.pareto(1.0 + alpha, n_users)), 1, n_items // 2).astype(np.int64)

    pick = _Picker(popularity, item_cluster, user_cluster, rng)
    users = items = np.zeros(0, dtype=np.int64)
    missing = wanted
    for round_ in range(_ROUNDS):  # top up users whose draws repeated items; rounds, not users, loop
        active = np.flatnonzero(missing > 0)
        if active.size == 0:
            break
        draws = np.ceil(_OVERDRAW * 2**round_ * missing[active]).astype(np.int64) + 2
        new_users = np.repeat(active, draws)
        users, items = _first_distinct(
            np.r_[users, new_users], np.r_[items, pick(new_users)], wanted, n_items
        )
        missing = wanted - np.bincount(users, minlength=n_users)

    part = split_per_user(users, fractions, rng)
    shape = (n_users, n_items)
    matrices = [pairs_to_csr(users[part == p], items[part == p], shape) for p in range(3)]
    note = (
        f"synthetic: {CLUSTERS} latent clusters, {IN_CLUSTER:.0%} of picks in the user's cluster, "
        f"Zipf popularity alpha={alpha:g}, mean {users.size / n_users:.1f} items per user, seed {seed}"
    )
    return InteractionData(
        name="synthetic",
        n_users=n_users,
        n_items=n_items,
        train=matrices[0],
        valid=matrices[1],
        test=matrices[2],
        cold_policy="keep",
        notes=(note,),
    )


class _Picker:
    """Draws one item per user: from the user's cluster with probability :data:`IN_CLUSTER`, else globally.

    Both draws are inverse-CDF lookups (``searchsorted``) in cumulative
    popularity, globally or over the cluster's items, so a draw of any size is
    a handful of vectorised operations.
    """

    def __init__(
        self, popularity: np.ndarray, item_cluster: np.ndarray, user_cluster: np.ndarray, rng: np.random.Generator
    ) -> None:
        self._rng = rng
        self._user_cluster = user_cluster
        self._by_cluster = np.argsort(item_cluster, kind="stable")
        self._cum_cluster = np.cumsum(popularity[self._by_cluster])
        bounds = np.searchsorted(item_cluster[self._by_cluster], np.arange(CLUSTERS + 1))
        cum0 = np.r_[0.0, self._cum_cluster]
        self._low, self._high = cum0[bounds[:-1]], cum0[bounds[1:]]
        self._cum = np.cumsum(popularity)

    def __call__(self, users: np.ndarray) -> np.ndarray:
        n_items = self._cum.size
        c = self._user_cluster[users]
        u01 = self._rng.random(users.size)
        low, high = self._low[c], self._high[c]
        in_cluster = (self._rng.random(users.size) < IN_CLUSTER) & (high > low)
        local = self._by_cluster[np.minimum(np.searchsorted(self._cum_cluster, low + u01 * (high - low)), n_items - 1)]
        glob = np.minimum(np.searchsorted(self._cum, u01 * self._cum[-1]), n_items - 1)
        return np.where(in_cluster, local, glob)


def _first_distinct(
    users: np.ndarray, items: np.ndarray, wanted: np.ndarray, n_items: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each user's first ``wanted`` distinct items, in draw order (a random order), grouped by user."""
    _, first = np.unique(users * n_items + items, return_index=True)
    first.sort()
    first = first[np.argsort(users[first], kind="stable")]
    users, items = users[first], items[first]
    start = np.searchsorted(users, np.arange(wanted.size))
    keep = np.arange(users.size) - start[users] < wanted[users]
    return users[keep], items[keep]
