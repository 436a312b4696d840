"""Loader for the LightGCN text format (Gowalla, Yelp2018, Amazon-Book, Last.fm...).

Each line is ``user item item ...``: whitespace-separated non-negative integer
ids, the user first. A line holding only the user id means that user has no
pair in that split; blank lines are ignored. A file is gunzipped when its name
ends in ``.gz`` or its content starts with the gzip magic bytes. Several files
given for one split are concatenated (Gowalla's original train set is
``lightgcnpp_train`` + ``lightgcnpp_valid``); a user may then have a line in
each, but a pair may occur only once.

Cold rows policy (``cold=``), for ids that occur in valid/test but have no
train pair (Last.fm: item ids >= 13973 occur only in valid/test):

* ``"keep"`` (default): the tables cover every id seen in any split
  (``n_items = max item id + 1`` over all splits, ``n_users`` likewise, users
  of item-less lines included); such rows have train frequency 0 and their
  pairs stay in the evaluation sets, so metrics count them (a model can only
  rank them by its initialisation).
* ``"drop"``: valid/test pairs whose user or item has no train pair are
  removed, and the tables cover only ids with a train pair
  (``n_items = max train item id + 1``); ``notes`` says how many pairs and ids
  were dropped per split.

Either way no id ever falls outside the tables. With ``remap=True`` the ids
covered are renumbered ``0..n-1`` in increasing order of original id (the
originals are kept in ``user_ids`` / ``item_ids``), which removes gaps;
with ``remap=False`` (default) the ids are the row indices, as the published
files already are 0-based and contiguous (an id far beyond a file's number of
ids, which would make tables of mostly empty rows, is refused: see
:data:`_ROW_SLACK`).

Every malformed input raises :class:`~recsys.errors.DataError` naming the file
and 1-based line: a token that is not a non-negative integer, a user with two
lines in one file, an item repeated on a user's line, a pair given twice across
the files of one split, an empty file, an unreadable gzip, a missing file, a
carriage return inside a line (an old Mac file, whose ``\\r`` line ends would
otherwise read as one user's line holding every id of the file).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from recsys.data._arrays import first_repeat
from recsys.data._io import PathLike, check_line_ends, parse_int_lines, read_bytes
from recsys.data.dataset import SPLITS, InteractionData, check_cold_policy, pairs_to_csr
from recsys.errors import DataError

__all__ = ["load_lightgcn"]

_MAX_ROW_ID = int(np.iinfo(np.int32).max) - 1
"""Largest id usable as a row index without ``remap``; larger ids need ``remap=True``."""

_ROW_SLACK = 1 << 20
"""Without ``remap``, a file's ids must stay below ``2 × (its number of ids) + _ROW_SLACK``.

Ids are then row indices, so one id of two billion in a small file would make
tables of two billion rows, nearly all empty (16 GiB for the row pointers alone):
such a file needs ``remap=True``. Published files are 0-based and contiguous,
far inside the bound.
"""


@dataclass(frozen=True)
class _Pairs:
    """The pairs of one split, concatenated over its files, with where each came from."""

    paths: tuple[str, ...]
    line_users: np.ndarray  # user id of every non-blank line (int64)
    users: np.ndarray  # user id of every pair (int64)
    items: np.ndarray  # item id of every pair (int64)
    file: np.ndarray  # index into paths of every pair
    line: np.ndarray  # 1-based line of every pair


def load_lightgcn(
    train: PathLike | Sequence[PathLike],
    valid: PathLike | Sequence[PathLike] | None = None,
    test: PathLike | Sequence[PathLike] | None = None,
    *,
    cold: str = "keep",
    remap: bool = False,
    name: str | None = None,
) -> InteractionData:
    """Load train/valid/test files in the LightGCN text format.

    Args:
        train: the train file, or several to concatenate.
        valid: the validation file(s); ``None`` for an empty validation split.
        test: the test file(s); ``None`` for an empty test split.
        cold: ``"keep"`` or ``"drop"``: what to do with ids that have no train
            pair (see the module docstring).
        remap: renumber the covered ids ``0..n-1`` by increasing original id
            instead of using them as row indices.
        name: dataset name; default the folder of the first train file.

    Returns:
        The three splits as binary CSR matrices of one shape, with ``notes``
        on cold rows and on pairs shared between splits.

    Raises:
        DataError: a file is missing, unreadable or malformed (with the line).
        ValueError: ``cold`` is not one of ``"keep"``, ``"drop"``, or no train file.
    """
    check_cold_policy(cold)
    given = {"train": _as_paths(train), "valid": _as_paths(valid), "test": _as_paths(test)}
    if not given["train"]:
        raise ValueError("load_lightgcn needs at least one train file")
    max_id = None if remap else _MAX_ROW_ID
    parts = {split: _read_split(paths, max_id) for split, paths in given.items()}
    if parts["train"].users.size == 0:
        raise DataError("no (user, item) pair in the train split", parts["train"].paths[0])
    if name is None:
        first = Path(given["train"][0])
        name = first.parent.name or first.name.split(".")[0]
    return _assemble(name, parts, cold, remap)


def _as_paths(arg: PathLike | Sequence[PathLike] | None) -> tuple[str, ...]:
    """One path or several, as a tuple of strings (empty for ``None``)."""
    if arg is None:
        return ()
    if isinstance(arg, (str, os.PathLike)):
        return (os.fspath(arg),)
    return tuple(os.fspath(p) for p in arg)


def _read_file(path: str, max_id: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Parse one file: ``(line_users, pair_users, pair_items, pair_lines)``, checked for repeats."""
    data = read_bytes(path)
    check_line_ends(data, path)
    values, counts = parse_int_lines(data, path)
    if values.size == 0:
        raise DataError("empty file (no user line)", path)
    filled = np.flatnonzero(counts)
    per_line = counts[filled]
    first = np.zeros(filled.size, dtype=np.int64)
    np.cumsum(per_line[:-1], out=first[1:])
    line_users = values[first]
    user_lines = filled + 1
    is_item = np.ones(values.size, dtype=bool)
    is_item[first] = False
    items = values[is_item]
    users = np.repeat(line_users, per_line - 1)
    lines = np.repeat(user_lines, per_line - 1)

    faults: list[tuple[int, str]] = []
    k = first_repeat(line_users)
    if k is not None:
        earlier = int(user_lines[np.flatnonzero(line_users == line_users[k])[0]])
        faults.append((int(user_lines[k]), f"user {line_users[k]} already has a line (line {earlier})"))
    k = first_repeat(users, items)
    if k is not None:
        faults.append((int(lines[k]), f"item {items[k]} appears twice on the line of user {users[k]}"))
    limit = None if max_id is None else min(max_id, 2 * values.size + _ROW_SLACK)
    if limit is not None and values.max() > limit:
        k = int(np.argmax(values > limit))
        line = int(np.searchsorted(np.cumsum(counts), k, side="right")) + 1
        if values[k] > max_id:
            faults.append((line, f"id {values[k]} is too large to be a row index; pass remap=True"))
        else:
            faults.append((line, f"id {values[k]} as a row index would make tables of {values[k] + 1:,} rows for the "
                                 f"{values.size:,} ids of this file, nearly all empty; pass remap=True"))
    if faults:
        line, reason = min(faults)
        raise DataError(reason, path, line)
    return line_users, users, items, lines


def _read_split(paths: tuple[str, ...], max_id: int | None) -> _Pairs:
    """Parse and concatenate the files of one split; a pair may occur in only one of them."""
    parsed = [_read_file(p, max_id) for p in paths]

    def cat(j: int) -> np.ndarray:
        return np.concatenate([f[j] for f in parsed]) if parsed else np.zeros(0, dtype=np.int64)

    pairs = _Pairs(
        paths=paths,
        line_users=cat(0),
        users=cat(1),
        items=cat(2),
        file=np.repeat(np.arange(len(parsed), dtype=np.int64), [f[1].size for f in parsed]),
        line=cat(3),
    )
    k = first_repeat(pairs.users, pairs.items) if len(paths) > 1 else None
    if k is not None:
        j = int(np.flatnonzero((pairs.users == pairs.users[k]) & (pairs.items == pairs.items[k]))[0])
        raise DataError(
            f"pair (user {pairs.users[k]}, item {pairs.items[k]}) already given in "
            f"{paths[pairs.file[j]]}:{pairs.line[j]}",
            paths[pairs.file[k]],
            int(pairs.line[k]),
        )
    return pairs


def _rows(ids: np.ndarray | None, values: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Row index of each id value and whether the table covers it."""
    if ids is None:
        return values, values < n
    pos = np.minimum(np.searchsorted(ids, values), max(ids.size - 1, 0))
    known = ids[pos] == values if ids.size else np.zeros(values.size, dtype=bool)
    return pos, known


def _assemble(name: str, parts: dict[str, _Pairs], cold: str, remap: bool) -> InteractionData:
    """Size the tables under the cold policy and build the three matrices."""
    train = parts["train"]
    if cold == "keep":
        user_universe = np.concatenate([parts[s].line_users for s in SPLITS])
        item_universe = np.concatenate([parts[s].items for s in SPLITS])
    else:
        user_universe, item_universe = train.users, train.items
    if remap:
        user_ids, item_ids = np.unique(user_universe), np.unique(item_universe)
        n_users, n_items = user_ids.size, item_ids.size
    else:
        user_ids = item_ids = None
        n_users, n_items = int(user_universe.max()) + 1, int(item_universe.max()) + 1

    train_u, _ = _rows(user_ids, train.users, n_users)
    train_i, _ = _rows(item_ids, train.items, n_items)
    has_train_user = np.bincount(train_u, minlength=n_users) > 0
    has_train_item = np.bincount(train_i, minlength=n_items) > 0

    notes: list[str] = []
    matrices = {"train": pairs_to_csr(train_u, train_i, (n_users, n_items))}
    for split in ("valid", "test"):
        part = parts[split]
        u, u_known = _rows(user_ids, part.users, n_users)
        i, i_known = _rows(item_ids, part.items, n_items)
        warm_u = u_known.copy()
        warm_u[u_known] = has_train_user[u[u_known]]
        warm_i = i_known.copy()
        warm_i[i_known] = has_train_item[i[i_known]]
        cold_pairs = ~(warm_u & warm_i)
        n_cold = int(np.count_nonzero(cold_pairs))
        if n_cold:
            cold_items = np.unique(part.items[~warm_i]).size
            cold_users = np.unique(part.users[~warm_u]).size
            ids = f"{cold_items:,} cold items, {cold_users:,} cold users"
            if cold == "drop":
                notes.append(f"dropped {n_cold:,} {split} pairs with ids unseen in train ({ids})")
            else:
                notes.append(f"kept {n_cold:,} {split} pairs with ids unseen in train ({ids}; train frequency 0)")
        if cold == "drop":
            u, i = u[~cold_pairs], i[~cold_pairs]
        matrices[split] = pairs_to_csr(u, i, (n_users, n_items))

    keys = {s: _keys(m) for s, m in matrices.items()}
    for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
        shared = np.intersect1d(keys[a], keys[b], assume_unique=True).size
        if shared:
            notes.append(f"{shared:,} pairs are in both {a} and {b}")
    return InteractionData(
        name=name,
        n_users=int(n_users),
        n_items=int(n_items),
        train=matrices["train"],
        valid=matrices["valid"],
        test=matrices["test"],
        cold_policy=cold,
        notes=tuple(notes),
        user_ids=user_ids,
        item_ids=item_ids,
    )


def _keys(matrix: sp.csr_matrix) -> np.ndarray:
    """Sorted int64 keys ``user * n_items + item`` of a canonical CSR matrix."""
    rows = np.repeat(np.arange(matrix.shape[0], dtype=np.int64), np.diff(matrix.indptr))
    return rows * matrix.shape[1] + matrix.indices
