"""Random per-user train/valid/test split of interaction pairs.

Each user's pairs are ranked by random keys (one ``lexsort``, no loop over
users) and cut at that user's rounded fractions, so every user with pairs keeps
at least one train pair: a user never becomes cold by the split itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["check_fractions", "split_per_user"]


def check_fractions(split: Sequence[float]) -> tuple[float, float, float]:
    """Validate ``(train, valid, test)`` fractions and return them as floats.

    Raises:
        ValueError: unless there are three finite non-negative fractions that
            sum to 1 and the train fraction is positive.
    """
    fractions = tuple(float(f) for f in split)
    if len(fractions) != 3:
        raise ValueError(f"split must be (train, valid, test) fractions, got {tuple(split)!r}")
    if not all(np.isfinite(f) and f >= 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions!r}")
    if fractions[0] <= 0:
        raise ValueError(f"the train fraction of split must be > 0, got {fractions!r}")
    return fractions  # type: ignore[return-value]


def split_per_user(users: np.ndarray, split: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """Assign each pair to train (0), valid (1) or test (2), at random within its user.

    A user with ``c`` pairs gets ``max(1, round(c * train))`` train pairs and
    ``round(c * (train + valid))`` train+valid pairs (ties round half up), so
    the realised fractions approach ``split`` for active users, and a user with
    one or two pairs keeps them in train.

    Args:
        users: user id of each pair (any non-negative integers).
        split: ``(train, valid, test)`` fractions, see :func:`check_fractions`.
        rng: the source of the random ranks; the result is a deterministic
            function of its state.

    Returns:
        int8 array, one part per pair, aligned with ``users``.
    """
    p_train, p_valid, _ = check_fractions(split)
    users = np.asarray(users, dtype=np.int64)
    n = users.size
    if n == 0:
        return np.zeros(0, dtype=np.int8)
    order = np.lexsort((rng.random(n), users))
    sorted_users = users[order]
    group_start = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    sizes = np.diff(np.r_[group_start, n])
    rank = np.arange(n) - np.repeat(group_start, sizes)
    size = np.repeat(sizes, sizes).astype(np.float64)
    eps = 1e-9  # so c * 0.8 == 7.999999... still rounds as 8
    cut_train = np.clip(np.floor(size * p_train + 0.5 + eps), 1, size)
    cut_valid = np.clip(np.floor(size * (p_train + p_valid) + 0.5 + eps), cut_train, size)
    part = np.full(n, 2, dtype=np.int8)
    part[rank < cut_valid] = 1
    part[rank < cut_train] = 0
    out = np.empty(n, dtype=np.int8)
    out[order] = part
    return out
