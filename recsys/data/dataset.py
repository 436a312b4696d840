"""The interaction data every recommender and search step reads.

One frozen container, :class:`InteractionData`, holds the train, validation and
test user-item pairs of a collaborative-filtering dataset as three binary CSR
matrices of one shape, plus the facts a loader decided on the way (``notes``).
The two embedding tables are always named ``"user"`` and ``"item"``; their row
counts (:meth:`InteractionData.rows`) and train frequencies
(:meth:`InteractionData.frequencies`) are what a search space sizes and ranks.

Cold rows: a user or item with no train pair (train frequency 0). Under the
``"keep"`` policy such rows exist in the tables and their valid/test pairs stay
in the evaluation sets; under ``"drop"`` the loader removed the valid/test pairs
of ids unseen in train and sized the tables from train alone (see
:mod:`recsys.data.lightgcn`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse as sp

from recsys.errors import DataError

__all__ = ["COLD_POLICIES", "SPLITS", "InteractionData", "pairs_to_csr", "check_cold_policy"]

COLD_POLICIES = ("keep", "drop")
"""Accepted values of ``cold``: keep rows unseen in train, or drop their evaluation pairs."""

SPLITS = ("train", "valid", "test")
"""Names of the three splits, in order."""


def check_cold_policy(cold: str) -> str:
    """Return ``cold`` if it is one of :data:`COLD_POLICIES`.

    Raises:
        ValueError: naming the accepted choices.
    """
    if cold not in COLD_POLICIES:
        raise ValueError(f"cold must be one of {', '.join(map(repr, COLD_POLICIES))}, got {cold!r}")
    return cold


def pairs_to_csr(users: np.ndarray, items: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """Binary CSR matrix of the (user, item) pairs, in canonical form.

    The pairs must be distinct and inside ``shape`` (the loaders check both
    before calling this). Values are float32 ones, column indices sorted within
    each row; index arrays are int32 when they fit, as scipy itself prefers.

    Args:
        users: row ids, any integer dtype.
        items: column ids, same length.
        shape: ``(n_users, n_items)``.
    """
    n_users, n_items = int(shape[0]), int(shape[1])
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    idx = np.int32 if max(n_users, n_items, users.size) < np.iinfo(np.int32).max else np.int64
    order = np.argsort(users * n_items + items)  # keys are distinct, so any sort is exact
    indptr = np.zeros(n_users + 1, dtype=idx)
    np.cumsum(np.bincount(users, minlength=n_users), out=indptr[1:])
    matrix = sp.csr_matrix(
        (np.ones(users.size, dtype=np.float32), items[order].astype(idx), indptr), shape=(n_users, n_items)
    )
    matrix.has_sorted_indices = True
    matrix.has_canonical_format = True
    return matrix


def _canonical(matrix: sp.spmatrix | sp.sparray, shape: tuple[int, int], split: str) -> sp.csr_matrix:
    """``matrix`` as a canonical binary float32 ``csr_matrix`` of ``shape``."""
    if not sp.issparse(matrix):
        raise TypeError(f"{split} must be a scipy sparse matrix, got {type(matrix).__name__}")
    if matrix.shape != shape:
        raise ValueError(f"{split} has shape {matrix.shape}, expected (n_users, n_items) = {shape}")
    csr = matrix if isinstance(matrix, sp.csr_matrix) else sp.csr_matrix(matrix)
    if csr.has_canonical_format and csr.dtype == np.float32 and (csr.data == 1).all():
        return csr
    csr = csr.copy()
    csr.sum_duplicates()
    csr.eliminate_zeros()
    csr.data = np.ones(csr.nnz, dtype=np.float32)
    return csr


@dataclass(frozen=True, eq=False)
class InteractionData:
    """Train/valid/test user-item pairs of one dataset, as binary CSR matrices.

    Equality is identity (``eq=False``): two datasets are the same data when
    their :meth:`fingerprint` agrees.

    Attributes:
        name: short dataset name, used in run records.
        n_users: rows of the user table.
        n_items: rows of the item table.
        train: ``(n_users, n_items)`` float32 ones, sorted indices, no duplicates.
        valid: same shape; ``nnz == 0`` when there is no validation split.
        test: same shape.
        cold_policy: ``"keep"`` or ``"drop"``: what the loader did with ids
            unseen in train (see the module docstring).
        notes: human-readable facts the loader decided (pairs dropped, rows
            filtered, overlaps found), for logs and reports.
        user_ids: original id of each user row when the loader remapped ids to
            ``0..n_users-1`` (int64, sorted), ``None`` when rows are the ids.
        item_ids: the same for items.
    """

    name: str
    n_users: int
    n_items: int
    train: sp.csr_matrix
    valid: sp.csr_matrix
    test: sp.csr_matrix
    cold_policy: str
    notes: tuple[str, ...] = ()
    user_ids: np.ndarray | None = None
    item_ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        check_cold_policy(self.cold_policy)
        if self.n_users < 0 or self.n_items < 0:
            raise ValueError(f"n_users and n_items must be >= 0, got {self.n_users} and {self.n_items}")
        shape = (int(self.n_users), int(self.n_items))
        for split in SPLITS:
            object.__setattr__(self, split, _canonical(getattr(self, split), shape, split))
        for table, ids, n in (("user", self.user_ids, shape[0]), ("item", self.item_ids, shape[1])):
            if ids is not None and len(ids) != n:
                raise ValueError(f"{table}_ids has {len(ids)} entries for {n} rows")
        object.__setattr__(self, "notes", tuple(self.notes))

    @cached_property
    def user_frequency(self) -> np.ndarray:
        """Train degree of each user row (int64, length ``n_users``, read-only)."""
        freq = np.diff(self.train.indptr).astype(np.int64)
        freq.flags.writeable = False
        return freq

    @cached_property
    def item_frequency(self) -> np.ndarray:
        """Train degree of each item row (int64, length ``n_items``, read-only)."""
        freq = np.bincount(self.train.indices, minlength=self.n_items).astype(np.int64)
        freq.flags.writeable = False
        return freq

    def check_trainable(self) -> None:
        """Refuse data a top-k model cannot train on, so that it fails before a run is made for it.

        Training pairs each train pair with a negative, an item the user has no
        train pair with (BPR and the sampled softmax alike, see
        :class:`recsys.data.BPRSampler`). That needs a train pair, at least two
        items, and no user who has a train pair with every item.

        Raises:
            DataError: saying what is missing and what to add.
        """
        if self.train.nnz == 0:
            raise DataError(f"dataset {self.name!r} has no train pair: nothing to train on; give (user, item) pairs")
        if self.n_items < 2:
            raise DataError(
                f"dataset {self.name!r} has {self.n_items} item: training needs at least 2, so that each user has "
                "a negative item (one they did not interact with) to rank below their own; add pairs with other items"
            )
        full = np.flatnonzero(self.user_frequency >= self.n_items)
        if full.size:
            user = int(full[0]) if self.user_ids is None else int(self.user_ids[full[0]])
            others = f" (and {full.size - 1:,} more such users)" if full.size > 1 else ""
            raise DataError(
                f"dataset {self.name!r}: user {user}{others} has a train pair with every one of the {self.n_items:,} "
                "items, so training finds no negative item (one the user did not interact with) for them; "
                "add items they did not interact with, or leave such users out"
            )

    def frequencies(self) -> dict[str, np.ndarray]:
        """Train frequency of every row, by table name (``"user"``, ``"item"``)."""
        return {"user": self.user_frequency, "item": self.item_frequency}

    def rows(self) -> dict[str, int]:
        """Number of rows of each embedding table, by table name."""
        return {"user": int(self.n_users), "item": int(self.n_items)}

    def summary(self) -> dict[str, int | float | str]:
        """Sizes for logs: users, items, pairs per split, train density, cold rows.

        ``cold_users`` / ``cold_items`` count rows with train frequency 0;
        ``density`` is train pairs over ``n_users * n_items`` (a fraction).
        """
        cells = self.n_users * self.n_items
        return {
            "name": self.name,
            "users": int(self.n_users),
            "items": int(self.n_items),
            "train_pairs": int(self.train.nnz),
            "valid_pairs": int(self.valid.nnz),
            "test_pairs": int(self.test.nnz),
            "density": float(self.train.nnz / cells) if cells else 0.0,
            "cold_users": int(np.count_nonzero(self.user_frequency == 0)),
            "cold_items": int(np.count_nonzero(self.item_frequency == 0)),
            "cold_policy": self.cold_policy,
        }

    def fingerprint(self) -> str:
        """SHA-256 hex digest of the shape and the three matrices' structure.

        Ties a run to its data: it hashes ``(n_users, n_items)`` and, for
        train, valid and test in that order, ``indptr`` and ``indices`` as
        int64, so it does not depend on the index dtype, the name or the notes.
        """
        digest = hashlib.sha256(f"{int(self.n_users)},{int(self.n_items)}".encode())
        for split in SPLITS:
            matrix = getattr(self, split)
            digest.update(split.encode())
            digest.update(np.ascontiguousarray(matrix.indptr, dtype=np.int64).tobytes())
            digest.update(np.ascontiguousarray(matrix.indices, dtype=np.int64).tobytes())
        return digest.hexdigest()
