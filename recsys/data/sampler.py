"""BPR triples with a uniform negative item, drawn by train pair or by user.

Two ways to fill an epoch of ``n_pairs`` triples (``by``):

* ``"pair"``: every train pair once, in a fresh random order;
* ``"user"``: users drawn uniformly (among users with a train pair), then one of
  the user's train items uniformly, as LightGCN's reference sampler does.  Each
  user weighs the same whatever their activity, which matches metrics averaged
  over users.

Negatives are drawn for a whole epoch at once: uniform item ids, then every
draw whose key ``user * n_items + item`` is a train pair (found with
``np.searchsorted`` in the sorted train keys) is redrawn, and only those. A
user who owns nearly every item would need many rounds, so after
:data:`REJECTION_ROUNDS` rounds the few draws left are taken exactly from the
user's complement (the r-th item the user does not have, again by
``searchsorted``); both routes give the uniform distribution over the items
the user has no train pair with.  Before the search, a filter of
:data:`FILTER_SLOTS_PER_PAIR` hashed slots per train pair lets through only the draws whose
slot holds a train pair (about 6 %), so the binary search runs on those alone: the same
answer, and an epoch of 32 hard-negative candidates a triple on Gowalla is drawn 3.9x faster
(``benchmarks/bench_sampler.py``, docs/results.md §9.7).

With ``candidates`` above 1 each triple carries that many independent negatives,
``(batch, candidates)``, from which the loss keeps the one the model scores highest
(dynamic negative sampling, :func:`recsys.models._losses.hardest`).  With 1 the
negatives are ``(batch,)`` and the stream is the one a sampler without the option drew.

The stream is a deterministic function of the seed. :meth:`BPRSampler.state_dict`
captures the numpy generator (as JSON-able data) and, mid-epoch, how many
pairs of the epoch were already handed out, so a run resumed from it yields
exactly the batches the uninterrupted run would have.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from recsys.errors import DataError

__all__ = ["BPRSampler", "FILTER_MAX_SLOTS", "FILTER_SLOTS_PER_PAIR", "REJECTION_ROUNDS", "SAMPLING"]

SAMPLING = ("pair", "user")
"""How an epoch's triples are drawn: each train pair once, or uniform users."""

REJECTION_ROUNDS = 8
"""Rounds of redrawing colliding negatives before the exact complement draw takes over."""

#: Slots of the collision filter per train pair (one byte each; about 1 in 16 slots is taken),
#: up to :data:`FILTER_MAX_SLOTS` (256 MiB): beyond 16 million pairs the filter lets more draws
#: through to the binary search, and the answer stays exact.
FILTER_SLOTS_PER_PAIR = 16
FILTER_MAX_SLOTS = 1 << 28
#: Fibonacci hashing: the top bits of ``key × ⌊2⁶⁴/φ⌋`` (mod 2⁶⁴) spread consecutive keys over the slots.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


class BPRSampler:
    """Shuffled (user, positive, negative) batches over the train pairs.

    Args:
        train: ``(n_users, n_items)`` binary train matrix (any scipy sparse
            format; duplicates count once).
        seed: seed of the numpy generator (PCG64) behind shuffles and negatives.
        by: ``"pair"`` (each train pair once per epoch) or ``"user"`` (uniform users,
            then a uniform train item of the user); see the module docstring.
        candidates: negatives drawn per triple; above 1 the negatives of a batch are
            ``(batch, candidates)`` (an epoch's draw holds ``n_pairs × candidates`` ids).

    Raises:
        DataError: some user has a train pair with every item, so no negative
            exists for them (:meth:`recsys.data.InteractionData.check_trainable`
            says so before a run starts).
    """

    def __init__(self, train: sp.spmatrix | sp.sparray, seed: int = 0, by: str = "pair", candidates: int = 1) -> None:
        if by not in SAMPLING:
            raise ValueError(f"by must be one of {SAMPLING}, got {by!r}")
        if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
            raise ValueError(f"candidates must be an integer >= 1, got {candidates!r}")
        self.by = by
        self.candidates = candidates
        csr = sp.csr_matrix(train, copy=True)
        csr.sum_duplicates()
        csr.eliminate_zeros()
        self.n_users, self.n_items = (int(n) for n in csr.shape)
        degree = np.diff(csr.indptr).astype(np.int64)
        full = np.flatnonzero((degree > 0) & (degree >= self.n_items))
        if full.size:
            raise DataError(
                f"user {int(full[0])} has a train pair with every item: no negative item exists; "
                "add items the user did not interact with, or leave the user out"
            )
        self._indptr = csr.indptr.astype(np.int64)
        self._users = np.repeat(np.arange(self.n_users, dtype=np.int64), degree)
        self._items = csr.indices.astype(np.int64)
        self._keys = self._users * self.n_items + self._items  # sorted: canonical CSR order
        # Complement lookup: within a row, items[k] - k counts the non-items before items[k].
        rank = np.arange(self._items.size, dtype=np.int64) - np.repeat(self._indptr[:-1], degree)
        self._gap_keys = self._users * self.n_items + (self._items - rank)
        bits = int(np.ceil(np.log2(min(max(2, self._keys.size * FILTER_SLOTS_PER_PAIR), FILTER_MAX_SLOTS))))
        self._filter_shift = np.uint64(64 - bits)  # a key's slot is the top `bits` bits of its hash
        self._filter = np.zeros(1 << bits, dtype=bool)
        self._filter[self._slots(self._keys)] = True
        self._degree = degree
        self._active_users = np.flatnonzero(degree > 0)
        self._rng = np.random.default_rng(seed)
        self._epoch_state: dict[str, Any] | None = None  # generator state at the start of an unfinished epoch
        self._cursor = 0  # pairs of that epoch already handed out

    @property
    def n_pairs(self) -> int:
        """Number of train pairs, i.e. triples per epoch."""
        return int(self._items.size)

    def epoch(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yield ``(users, positives, negatives)`` int64 tensors covering every train pair once.

        The order is a fresh permutation each epoch and the last batch may be
        short. An epoch left unfinished (its iterator dropped, or a mid-epoch
        state loaded by :meth:`load_state_dict`) is finished by the next call,
        from the first pair not yet handed out, so an interrupted run and an
        uninterrupted one see the same stream and no pair is skipped.

        Args:
            batch_size: triples per batch (the last one may have fewer).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if self._epoch_state is not None:  # resume an interrupted epoch
            self._rng.bit_generator.state = copy.deepcopy(self._epoch_state)
            start = self._cursor
        else:
            start = 0
        self._epoch_state = copy.deepcopy(self._rng.bit_generator.state)
        self._cursor = start
        users, positives, negatives = self._draw_pairs() if self.by == "pair" else self._draw_users()
        for lo in range(start, self.n_pairs, batch_size):
            hi = min(lo + batch_size, self.n_pairs)
            self._cursor = hi
            if hi == self.n_pairs:
                self._epoch_state, self._cursor = None, 0
            yield (
                torch.from_numpy(users[lo:hi]),
                torch.from_numpy(positives[lo:hi]),
                torch.from_numpy(negatives[lo:hi]),
            )
        self._epoch_state, self._cursor = None, 0  # also when there was nothing to hand out

    def _draw_pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every train pair once, shuffled, each with a negative."""
        order = self._rng.permutation(self.n_pairs)
        # Negatives are drawn in CSR order, where queries ascend by user and
        # searchsorted stays cache-friendly (a shuffled order would not be).
        negatives = self._negatives_of(self._users)[order]
        return self._users[order], self._items[order], negatives

    def _draw_users(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``n_pairs`` uniform users, a uniform train item of each, and a negative."""
        users = self._active_users[self._rng.integers(0, self._active_users.size, size=self.n_pairs)]
        picks = np.floor(self._rng.random(self.n_pairs) * self._degree[users]).astype(np.int64)
        positives = self._items[self._indptr[users] + picks]
        order = np.argsort(users, kind="stable")  # ascending users keep searchsorted cache-friendly
        negatives = np.empty((users.size, self.candidates) if self.candidates > 1 else users.size, dtype=np.int64)
        negatives[order] = self._negatives_of(users[order])
        return users, positives, negatives

    def _negatives_of(self, users: np.ndarray) -> np.ndarray:
        """``candidates`` negatives of each user, ``(n,)`` for one and ``(n, candidates)`` for more."""
        if self.candidates == 1:
            return self._negatives(users)
        return self._negatives(np.repeat(users, self.candidates)).reshape(users.size, self.candidates)

    def _negatives(self, users: np.ndarray) -> np.ndarray:
        """Rejection rounds on the colliding draws only, then the exact complement draw."""
        neg = self._rng.integers(0, max(self.n_items, 1), size=users.size, dtype=np.int64)
        todo = np.flatnonzero(self._is_train(users, neg))
        for _ in range(REJECTION_ROUNDS):
            if todo.size == 0:
                return neg
            neg[todo] = self._rng.integers(0, self.n_items, size=todo.size, dtype=np.int64)
            todo = todo[self._is_train(users[todo], neg[todo])]
        if todo.size:
            neg[todo] = self._complement_draw(users[todo])
        return neg

    def _slots(self, keys: np.ndarray) -> np.ndarray:
        """The filter slot of each key (non-negative int64; reinterpreted, not copied, as unsigned)."""
        slots = keys.view(np.uint64) * _GOLDEN
        slots >>= self._filter_shift
        return slots.view(np.int64)

    def _is_train(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Whether each (user, item) is a train pair: the filter, then one ``searchsorted`` in the sorted keys."""
        keys = users * self.n_items + items
        hit = np.zeros(keys.size, dtype=bool)
        maybe = np.flatnonzero(self._filter[self._slots(keys)])
        pos = np.searchsorted(self._keys, keys[maybe])
        inside = pos < self._keys.size
        hit[maybe[inside]] = self._keys[pos[inside]] == keys[maybe[inside]]
        return hit

    def _complement_draw(self, users: np.ndarray) -> np.ndarray:
        """Exactly uniform over each user's non-items: the r-th missing item, r uniform."""
        r = np.floor(self._rng.random(users.size) * (self.n_items - self._degree[users])).astype(np.int64)
        # items of the user with items[k] - k <= r come before the r-th gap; skip over them
        before = np.searchsorted(self._gap_keys, users * self.n_items + r, side="right") - self._indptr[users]
        return r + before

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state: the generator and the position inside an unfinished epoch.

        ``bit_generator`` is numpy's ``bit_generator.state`` (plain ints and
        strings); ``cursor`` counts the pairs of the unfinished epoch already
        handed out (0 between epochs).
        """
        unfinished = self._epoch_state is not None
        state = self._epoch_state if unfinished else self._rng.bit_generator.state
        return {"bit_generator": copy.deepcopy(state), "cursor": int(self._cursor) if unfinished else 0}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`, so the stream continues exactly where it was taken."""
        self._rng.bit_generator.state = copy.deepcopy(state["bit_generator"])
        cursor = int(state.get("cursor", 0))
        if cursor:
            self._epoch_state, self._cursor = copy.deepcopy(state["bit_generator"]), cursor
        else:
            self._epoch_state, self._cursor = None, 0
