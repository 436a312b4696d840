"""MovieLens in RecBole's atomic files as multi-field click data.

The ratings (``<dataset>.inter``) are joined with the user features
(``<dataset>.user``: age, gender, occupation, zip code) and the item features
(``<dataset>.item``: release year, genres); a rating of 4 or more is a click.
The rows then go through the same encoder as :func:`recsys.data.load_ctr_csv`
(train-frequency ids, OOV bucket, random 8:1:1 split per row), streamed in
chunks of the ratings file; only the two small feature files are read whole.

Fields, one embedding table each: ``user``, ``item``, ``age``, ``gender``,
``occupation``, ``zip``, ``genres``, ``year``; all categorical (ages and years are
few distinct values, and [LERSBench] treats every field as categorical).

**Genres** are multi-valued (``class:token_seq``: ``"Action Adventure
Thriller"``), but a field is one id per row, so the field's value is the item's
*whole genre set*, canonicalised as its sorted genres joined by ``'|'``
(``"Action|Adventure|Thriller"``). The set keeps what the file says (216 sets
on ML-100K, the common ones with thousands of ratings each; rare sets fall into
the OOV bucket by the usual rule), whereas "the first genre" would keep an
artefact of the file's alphabetical listing (Action and Adventure would absorb
every film that has them, whatever else it is). A multi-hot field with a pooled
lookup would be more faithful still, but it is not a one-id field and no search
space sizes its rows differently.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import repeat
from pathlib import Path

import numpy as np

from recsys.data._ctr_encode import (
    CHUNK_ROWS,
    Chunk,
    DelimitedChunks,
    Field,
    RawChunk,
    encode,
)
from recsys.data._io import PathLike, quote
from recsys.data.ctr import CTRData
from recsys.data.split import check_fractions
from recsys.errors import DataError

__all__ = ["MOVIELENS_FIELDS", "load_movielens_ctr"]

MOVIELENS_FIELDS = ("user", "item", "age", "gender", "occupation", "zip", "genres", "year")
"""The fields of :func:`load_movielens_ctr`, in column order."""


def _find(folder: Path, name: str) -> Path:
    """``folder/name``, or its gzipped form."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"no {name} (or {name}.gz) in the folder", folder)


def _side_table(path: Path, key: str, columns: list[str]) -> tuple[dict[str, int], list[np.ndarray]]:
    """A small feature file read whole: the row of each key, and each column (object arrays of strings).

    Raises:
        DataError: a missing column, a ragged row, or a key given twice (with both lines).
    """
    reader = DelimitedChunks(path, "\t", CHUNK_ROWS)
    indices = [reader.column(key)] + [reader.column(c) for c in columns]
    chunks: list[RawChunk] = list(reader.chunks(indices))
    if not chunks:
        raise DataError("no data rows (only a header)", path)
    lines = np.concatenate([c.lines for c in chunks])
    table = [[text for c in chunks for text in c.columns[k]] for k in range(len(indices))]
    row: dict[str, int] = {}
    for k, text in enumerate(table[0]):  # the feature file's rows (943 users, 1,682 items)
        if text in row:
            raise DataError(f"{key} {quote(text)} is given twice, first on line {int(lines[row[text]])}", path, int(lines[k]))
        row[text] = k
    return row, [np.array(column, dtype=object) for column in table[1:]]


def _join(row: dict[str, int], wanted: list[str], what: str, side: Path, chunk: RawChunk, path: Path) -> np.ndarray:
    """Row of the side table for each of ``wanted``, or a :class:`DataError` at the first id the side file lacks."""
    pos = np.fromiter(map(row.get, wanted, repeat(-1)), dtype=np.int64, count=len(wanted))
    absent = np.flatnonzero(pos < 0)
    if absent.size:
        k = int(absent[0])
        raise DataError(f"{what} {quote(wanted[k])} is not in {side.name}", path, int(chunk.lines[k]))
    return pos


def load_movielens_ctr(
    folder: PathLike,
    *,
    dataset: str = "ml-100k",
    click_threshold: float = 4.0,
    oov_threshold: int = 2,
    split: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    chunk_rows: int = CHUNK_ROWS,
) -> CTRData:
    """MovieLens ratings with user and item features as click data (rating ≥ ``click_threshold``).

    Args:
        folder: the folder of RecBole atomic files ``<dataset>.inter``,
            ``<dataset>.user`` and ``<dataset>.item`` (each may be gzipped).
        dataset: the files' common stem.
        click_threshold: least rating that counts as a click (4 on a 1..5 scale).
        oov_threshold: least train count of a kept value; the default 2 is
            [LERSBench]'s smaller threshold (Avazu's, section 5.1), fitting a small
            dataset; 0 keeps every user and item of the ratings (943 and 1,682 on
            ML-100K) as rows of their own, like the collaborative-filtering tables.
        split: ``(train, valid, test)`` fractions of the ratings, drawn per row.
        seed: seed of the split.
        chunk_rows: rating lines read at a time; the result does not depend on it.

    Raises:
        DataError: a missing or malformed file (with the line), or a rated user
            or item absent from the feature files (at the rating's line).
    """
    fractions = check_fractions(split)
    if int(oov_threshold) < 0:
        raise ValueError(f"oov_threshold must be >= 0, got {oov_threshold}")
    root = Path(folder)
    inter_path, user_path, item_path = (_find(root, f"{dataset}.{kind}") for kind in ("inter", "user", "item"))
    user_row, (age, gender, occupation, zip_code) = _side_table(
        user_path, "user_id", ["age", "gender", "occupation", "zip_code"]
    )
    item_row, (year, classes) = _side_table(item_path, "item_id", ["release_year", "class"])
    # One value per item for its genre set: sorted, deduplicated, '|'-joined (a loop over
    # the item table, 1,682 rows, not over the ratings).
    genres = np.array(["|".join(sorted(set(text.split()))) for text in classes.tolist()], dtype=object)

    ratings = DelimitedChunks(inter_path, "\t", chunk_rows)
    columns = [ratings.column("user_id"), ratings.column("item_id"), ratings.column("rating")]

    def source() -> Iterator[Chunk]:
        for raw in ratings.chunks(columns):
            users, items, rating = raw.columns
            u = _join(user_row, users, "user_id", user_path, raw, inter_path)
            i = _join(item_row, items, "item_id", item_path, raw, inter_path)
            side = [column[u].tolist() for column in (age, gender, occupation, zip_code)]
            values = [users, items, *side, genres[i].tolist(), year[i].tolist()]
            yield Chunk(raw.start, raw.lines, rating, values)

    return encode(
        source,
        inter_path,
        [Field(name) for name in MOVIELENS_FIELDS],
        label="rating",
        label_threshold=click_threshold,
        oov_threshold=int(oov_threshold),
        bins="log_square",
        fractions=fractions,
        seed=seed,
        name=dataset,
        notes=(
            f"click = rating >= {click_threshold:g}",
            "joined with user features (age, gender, occupation, zip) and item features (year, genres)",
            "genres: the item's whole genre set as one value (sorted, '|'-joined)",
        ),
    )
