"""Loader for delimited interaction tables (CSV, TSV, RecBole ``.inter``).

The first non-blank line is a header naming the columns. A requested column
matches a header name exactly or by the part before ``':'``, so RecBole's
``user_id:token item_id:token rating:float timestamp:float`` answers to
``user_col="user_id"``. Fields are split on ``sep`` literally (no quoting).
User and item ids must be non-negative integers; they are remapped to
``0..n-1`` by increasing original id (the originals are kept in
``InteractionData.user_ids`` / ``item_ids``), counting only the rows kept by
the rating filter.

The table has no predefined split, so each user's pairs are split at random
(:func:`recsys.data.split.split_per_user`); every user keeps at least one train
pair. Items that land only in valid/test stay as rows of train frequency 0
(cold policy ``"keep"``), and ``notes`` counts them.

Every malformed input raises :class:`~recsys.errors.DataError` naming the file
and 1-based line: a ragged row, a missing column (naming the columns found), a
non-integer or negative id, a non-numeric rating, a duplicate (user, item) row,
an empty file, lines that end in ``\\r`` alone (old Mac files). Quoted fields are
cut to a bounded prefix (:func:`recsys.data._io.quote`).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat
from pathlib import Path

import numpy as np

from recsys.data._arrays import first_repeat
from recsys.data._io import (
    PathLike,
    check_line_ends,
    decode_text,
    parse_int_lines,
    quote,
    read_bytes,
)
from recsys.data.dataset import InteractionData, pairs_to_csr
from recsys.data.split import check_fractions, split_per_user
from recsys.errors import DataError

__all__ = ["check_sep", "default_sep", "load_interactions_csv"]

_TAB_SUFFIXES = (".tsv", ".tsv.gz", ".inter", ".inter.gz")


def default_sep(path: PathLike) -> str:
    """The separator implied by the file name: a tab for ``.tsv`` / ``.inter`` (gzipped or not), else a comma."""
    return "\t" if Path(path).name.lower().endswith(_TAB_SUFFIXES) else ","


def load_interactions_csv(
    path: PathLike,
    *,
    user_col: str,
    item_col: str,
    sep: str | None = None,
    rating_col: str | None = None,
    min_rating: float | None = None,
    split: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    name: str | None = None,
) -> InteractionData:
    """Load a delimited table of (user, item[, rating]) rows and split it per user.

    Args:
        path: the file, plain or gzipped.
        user_col: header name of the user id column (exact, or before ``':'``).
        item_col: header name of the item id column.
        sep: field separator; ``None`` picks :func:`default_sep`.
        rating_col: header name of a rating column, parsed as float.
        min_rating: keep only rows with ``rating >= min_rating`` (e.g. 4 to
            read 1..5 star ratings as implicit positives); needs ``rating_col``.
        split: ``(train, valid, test)`` fractions of each user's pairs.
        seed: seed of the random split.
        name: dataset name; default the file name up to its first ``'.'``.

    Returns:
        The three splits as binary CSR matrices over remapped ids.

    Raises:
        DataError: the file is missing, unreadable or malformed (with the line),
            or ``sep`` is empty.
        ValueError: bad ``split`` fractions, or ``min_rating`` without ``rating_col``.
    """
    fractions = check_fractions(split)
    if min_rating is not None and rating_col is None:
        raise ValueError("min_rating needs rating_col, the column to compare")
    sep = check_sep(default_sep(path) if sep is None else sep, path)

    raw = read_bytes(path)
    check_line_ends(raw, path)
    lines = decode_text(raw, path).replace("\r\n", "\n").split("\n")
    filled = np.flatnonzero(np.fromiter(map(bool, map(str.strip, lines)), dtype=bool, count=len(lines)))
    if filled.size == 0:
        raise DataError("empty file (no header, no rows)", path)
    header_line = int(filled[0]) + 1
    header = [c.strip() for c in lines[filled[0]].split(sep)]
    wanted = {"user": user_col, "item": item_col} | ({"rating": rating_col} if rating_col is not None else {})
    col = {role: _column(header, name_, path, header_line, sep) for role, name_ in wanted.items()}
    body_lines = filled[1:] + 1  # 1-based line of each data row
    if body_lines.size == 0:
        raise DataError("no data rows (only a header)", path)

    body = [lines[k - 1] for k in body_lines.tolist()] if body_lines.size < len(lines) - 1 else lines[1:]
    width = np.fromiter(map(str.count, body, repeat(sep)), dtype=np.int64, count=len(body)) + 1
    ragged = np.flatnonzero(width != len(header))
    if ragged.size:
        k = int(ragged[0])
        raise DataError(
            f"expected {len(header)} fields as in the header (line {header_line}), found {width[k]}",
            path,
            int(body_lines[k]),
        )
    fields = sep.join(body).split(sep)  # row-major, len(header) fields per row: columns are strided slices
    n_cols = len(header)
    users = _id_column(fields[col["user"] :: n_cols], user_col, body_lines, path)
    items = _id_column(fields[col["item"] :: n_cols], item_col, body_lines, path)
    k = first_repeat(users, items)
    if k is not None:
        earlier = int(body_lines[np.flatnonzero((users == users[k]) & (items == items[k]))[0]])
        raise DataError(
            f"duplicate pair (user {users[k]}, item {items[k]}), first given on line {earlier}",
            path,
            int(body_lines[k]),
        )

    notes: list[str] = []
    if rating_col is not None:
        ratings = _rating_column(fields[col["rating"] :: n_cols], rating_col, body_lines, path)
        if min_rating is not None:
            keep = ratings >= min_rating
            if not keep.any():
                raise DataError(f"no row has {rating_col} >= {min_rating:g}", path)
            notes.append(f"kept {int(keep.sum()):,} of {keep.size:,} rows with {rating_col} >= {min_rating:g}")
            users, items = users[keep], items[keep]

    user_ids, u = np.unique(users, return_inverse=True)
    item_ids, i = np.unique(items, return_inverse=True)
    part = split_per_user(u, fractions, np.random.default_rng(seed))
    shape = (user_ids.size, item_ids.size)
    matrices = [pairs_to_csr(u[part == p], i[part == p], shape) for p in range(3)]
    seen = np.zeros(shape[1], dtype=bool)
    seen[i[part == 0]] = True
    cold = ~seen[i] & (part > 0)
    if cold.any():
        notes.append(
            f"kept {int(cold.sum()):,} valid/test pairs of {np.unique(i[cold]).size:,} items "
            "with no train pair (train frequency 0)"
        )
    notes.append(f"split per user at random, fractions {fractions}, seed {seed}")
    return InteractionData(
        name=Path(path).name.split(".")[0] if name is None else name,
        n_users=int(shape[0]),
        n_items=int(shape[1]),
        train=matrices[0],
        valid=matrices[1],
        test=matrices[2],
        cold_policy="keep",
        notes=tuple(notes),
        user_ids=user_ids,
        item_ids=item_ids,
    )


def check_sep(sep: str, path: PathLike) -> str:
    """Return ``sep`` if it can split a line: a non-empty string.

    Raises:
        DataError: naming the file, so that the CLI reports it as one line.
    """
    if not isinstance(sep, str) or not sep:
        raise DataError(f"the field separator (sep) must be a non-empty string, got {sep!r}; e.g. ',' or a tab", path)
    return sep


_LISTED_COLUMNS = 20
"""Most header columns an error message lists."""

_LISTED_CHARACTERS = 40
"""Most characters of each column name an error message lists."""


def _column(header: Sequence[str], wanted: str, path: PathLike, line: int, sep: str) -> int:
    """Index of ``wanted`` in the header: an exact match, else a unique match of the part before ``':'``."""
    if wanted in header:
        return list(header).index(wanted)
    stems = [h.split(":", 1)[0] for h in header]
    hits = [k for k, stem in enumerate(stems) if stem == wanted]
    if len(hits) == 1:
        return hits[0]
    found = ", ".join(quote(h, _LISTED_CHARACTERS) for h in header[:_LISTED_COLUMNS])
    if len(header) > _LISTED_COLUMNS:
        found += f", … ({len(header):,} columns)"
    if hits:
        raise DataError(f"column {wanted!r} is ambiguous in the header: {found}", path, line)
    raise DataError(f"no column {wanted!r} in the header (sep {sep!r}); columns found: {found}", path, line)


def _id_column(fields: list[str], column: str, lines: np.ndarray, path: PathLike) -> np.ndarray:
    """Parse one id per field (int64), or raise naming the line of the first bad field."""
    values, counts = parse_int_lines("\n".join(fields).encode("utf-8"), path, lines)
    bad = np.flatnonzero(counts != 1)
    if bad.size:
        k = int(bad[0])
        if counts[k] == 0:
            what = f"empty {column} field"
        else:
            what = f"expected one integer id in {column}, found {quote(fields[k])}"
        raise DataError(what, path, int(lines[k]))
    return values


def _rating_column(fields: list[str], column: str, lines: np.ndarray, path: PathLike) -> np.ndarray:
    """Parse the ratings as float64, or raise naming the line of the first non-finite or non-numeric one."""
    try:  # float() per field: linear in the text (a fixed-width numpy string array is not, for one huge field)
        ratings = np.fromiter(map(float, fields), dtype=np.float64, count=len(fields))
    except ValueError:
        ratings = None
    if ratings is not None and np.isfinite(ratings).all():
        return ratings
    for k, field in enumerate(fields):  # failure path only: find the first culprit
        try:
            ok = np.isfinite(float(field))
        except ValueError:
            ok = False
        if not ok:
            raise DataError(f"{column} is not a finite number: {quote(field)}", path, int(lines[k]))
    raise AssertionError("unreachable")  # pragma: no cover
