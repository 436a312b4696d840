"""Streaming encoding of multi-field click data, shared by every CTR loader.

Three pieces, so that a loader only says where its rows come from:

* :class:`DelimitedChunks` reads a delimited text file (plain or gzipped) in
  chunks of ``chunk_rows`` lines, as many passes as asked, never holding more
  than one chunk of text;
* :func:`row_split` puts each row in train, valid or test from a hash of the
  seed and the row's position in the file (a counter-based generator), so both
  passes and every chunk size agree without storing anything per row;
* :func:`encode` makes two passes over the loader's chunks: the first validates
  every row and counts each field's values over the train rows, the second
  writes the ids into arrays sized by the first.

Every malformed row raises :class:`~recsys.errors.DataError` with the file and
its 1-based line, in the first pass, before any id is written.
"""

from __future__ import annotations

import gzip
import operator
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import compress, islice, repeat
from pathlib import Path
from typing import BinaryIO

import numpy as np

from recsys.data._io import GZIP_MAGIC, PathLike, check_line_ends, quote
from recsys.data.ctr import CTRData
from recsys.data.dataset import SPLITS
from recsys.data.tabular import _column, check_sep
from recsys.errors import DataError

__all__ = [
    "CHUNK_ROWS",
    "LOG_SQUARE",
    "MISSING",
    "Bins",
    "Chunk",
    "DelimitedChunks",
    "Field",
    "RawChunk",
    "check_bins",
    "encode",
    "log_square_buckets",
    "row_split",
]

CHUNK_ROWS = 100_000
"""Default lines per chunk: about 100k × fields short strings in memory at a time."""

LOG_SQUARE = "log_square"
"""The numeric discretisation of [LERSBench, section 5.1], the Criteo contest winners' scheme."""

MISSING = ""
"""The value of an empty field: a value of its own (see :func:`encode`)."""

#: A numeric discretisation: :data:`LOG_SQUARE`, or a vectorised map from float64 values to integer buckets.
Bins = str | Callable[[np.ndarray], np.ndarray]

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _mix_int(z: int) -> int:
    """splitmix64's finaliser on a Python int (for the seed)."""
    z &= _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def row_split(rows: np.ndarray, fractions: Sequence[float], seed: int) -> np.ndarray:
    """Train (0), valid (1) or test (2) for each row, from the seed and the row's index alone.

    Row ``i`` draws ``u = splitmix64(i · φ + key(seed)) / 2**64`` (53 bits) and goes
    to train when ``u < train``, to valid when ``u < train + valid``, else to test.
    A counter-based draw depends on nothing but ``(seed, i)``, so the two passes of a
    loader and any chunking give the same split, and no per-row state is kept; the
    realised fractions are ``split`` up to sampling noise (±√n rows), as for any
    random per-row split.

    Args:
        rows: 0-based indices of data rows in the file (int64, non-negative).
        fractions: ``(train, valid, test)``, checked by the caller.
        seed: any integer.

    Returns:
        int8 array of the rows' splits.
    """
    key = np.uint64(_mix_int(int(seed) * _GOLDEN + 0x632BE59BD9B4E019))
    z = np.asarray(rows, dtype=np.uint64) * np.uint64(_GOLDEN) + key  # wraps modulo 2**64
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    u = (z >> np.uint64(11)).astype(np.float64) * 2.0**-53
    cut_valid = float(fractions[0])
    cut_test = float(fractions[0]) + float(fractions[1])
    return ((u >= cut_valid).astype(np.int8) + (u >= cut_test).astype(np.int8)).astype(np.int8)


# -- reading ---------------------------------------------------------------------------------------


@dataclass
class RawChunk:
    """Consecutive data rows of a delimited file.

    Attributes:
        start: 0-based index of the chunk's first data row among all data rows.
        lines: 1-based line of each row in the file (int64).
        columns: the requested columns, whitespace-stripped strings.
    """

    start: int
    lines: np.ndarray
    columns: list[list[str]]


@contextmanager
def _open_binary(path: Path) -> Iterator[BinaryIO]:
    """The decompressed byte stream of ``path`` (gunzipped when named ``.gz`` or starting with the magic)."""
    if not path.exists():
        raise DataError("file not found", path)
    if not path.is_file():
        raise DataError("not a regular file", path)
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise DataError(f"cannot read file ({exc.strerror or exc})", path) from exc
    with raw:
        magic = raw.read(2)
        raw.seek(0)
        if magic == GZIP_MAGIC or path.name.endswith(".gz"):
            with gzip.GzipFile(fileobj=raw) as unzipped:
                yield unzipped  # type: ignore[misc]
        else:
            yield raw


class DelimitedChunks:
    """A delimited text file with a header line, read in chunks of lines, one pass per call.

    The first non-blank line is the header; blank lines are skipped; fields are
    split on ``sep`` literally (no quoting) and stripped of surrounding whitespace;
    CRLF files and a UTF-8 byte-order mark are accepted.

    Args:
        path: the file, plain or gzipped.
        sep: the field separator.
        chunk_rows: lines read at a time (the text of one chunk is all that is held).

    Raises:
        DataError: the file is missing, unreadable, not UTF-8, has no header or a
            carriage return inside a line (old Mac line ends); ``sep`` is empty.
        ValueError: ``chunk_rows < 1``.
    """

    def __init__(self, path: PathLike, sep: str, chunk_rows: int = CHUNK_ROWS) -> None:
        if int(chunk_rows) < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        self.path = Path(path)
        self.sep = check_sep(sep, path)
        self.chunk_rows = int(chunk_rows)
        self.header, self.header_line = self._find_header()

    def column(self, wanted: str) -> int:
        """Index of header column ``wanted`` (exact, or the part before ``':'`` as in RecBole files).

        Raises:
            DataError: at the header line, naming the columns found.
        """
        return _column(self.header, wanted, self.path, self.header_line, self.sep)

    def _batches(self) -> Iterator[tuple[int, list[str]]]:
        """``(line number of the first, decoded lines)`` for each run of ``chunk_rows`` lines."""
        with _open_binary(self.path) as handle:
            first = 1
            while True:
                try:
                    batch = list(islice(handle, self.chunk_rows))
                except (OSError, EOFError, zlib.error) as exc:
                    raise DataError(f"unreadable file ({exc})", self.path) from exc
                if not batch:
                    return
                data = b"".join(batch)
                check_line_ends(data, self.path, first)
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError as exc:
                    line = first + data.count(b"\n", 0, exc.start)
                    raise DataError(f"not UTF-8 text (byte {data[exc.start]:#04x})", self.path, line) from exc
                if first == 1 and text.startswith("\ufeff"):
                    text = text[1:]
                yield first, text.replace("\r\n", "\n").split("\n")[: len(batch)]
                first += len(batch)

    def _find_header(self) -> tuple[list[str], int]:
        for first, lines in self._batches():
            for k, line in enumerate(lines):
                if line.strip():
                    return [c.strip() for c in line.split(self.sep)], first + k
        raise DataError("empty file (no header, no rows)", self.path)

    def chunks(self, columns: Sequence[int]) -> Iterator[RawChunk]:
        """One pass over the data rows, yielding the ``columns`` (header indices) of each chunk.

        Raises:
            DataError: a row whose number of fields differs from the header's.
        """
        width = len(self.header)
        start = 0
        for first, lines in self._batches():
            numbers = np.arange(first, first + len(lines), dtype=np.int64)
            filled = np.fromiter(map(bool, map(str.strip, lines)), dtype=bool, count=len(lines))
            keep = filled & (numbers > self.header_line)
            if not keep.any():
                continue
            body = [lines[k] for k in np.flatnonzero(keep).tolist()] if not keep.all() else lines
            numbers = numbers[keep]
            counts = np.fromiter(map(str.count, body, repeat(self.sep)), dtype=np.int64, count=len(body)) + 1
            ragged = np.flatnonzero(counts != width)
            if ragged.size:
                k = int(ragged[0])
                raise DataError(
                    f"expected {width} fields as in the header (line {self.header_line}), found {counts[k]}",
                    self.path,
                    int(numbers[k]),
                )
            flat = self.sep.join(body).split(self.sep)  # row-major: a column is a strided slice
            out = [list(map(str.strip, flat[c::width])) for c in columns]
            yield RawChunk(start, numbers, out)
            start += len(body)


# -- encoding --------------------------------------------------------------------------------------
#
# Values stay Python strings: counting them (``Counter.update``), looking them up
# (``map(dict.get, ...)``) and selecting rows (``itertools.compress``) all iterate in C,
# much cheaper than building numpy string arrays, and a numeric field's buckets
# are computed once per distinct raw value (a cache), as [LERSBench]'s code does.


@dataclass(frozen=True)
class Field:
    """One field of the encoded data: its name (= table name) and whether its values are numbers to discretise."""

    name: str
    numeric: bool = False


@dataclass
class Chunk:
    """Rows handed to :func:`encode` by a loader.

    Attributes:
        start: 0-based index of the first row among all rows of the source (decides the split).
        lines: 1-based line of each row in ``path`` (for errors).
        labels: the raw label strings.
        values: per field, the raw value strings (``""`` is missing).
    """

    start: int
    lines: np.ndarray
    labels: Sequence[str]
    values: list[Sequence[str]]


def check_bins(bins: Bins) -> Bins:
    """Return ``bins`` if it is :data:`LOG_SQUARE` or a callable.

    Raises:
        ValueError: naming the accepted choices.
    """
    if bins != LOG_SQUARE and not callable(bins):
        raise ValueError(f"bins must be {LOG_SQUARE!r} or a function of float64 values to integer buckets, got {bins!r}")
    return bins


def log_square_buckets(values: np.ndarray) -> np.ndarray:
    """[LERSBench]'s discretisation (section 5.1): ``"L{⌊ln²x⌋}"`` for ``x > 2``, ``"V{⌊x⌋}"`` otherwise.

    The Criteo contest winners' scheme, as in [LERSBench]'s code: a value above 2 goes to
    bucket ⌊(ln x)²⌋, so buckets widen with the value (3-4 → 1, 5-7 → 2, 8-11 → 3,
    ...); smaller values keep their own integer (Criteo's counts are integers, with -1, 0,
    1, 2 frequent). The prefixes keep the two kinds of bucket apart.
    """
    values = np.asarray(values, dtype=np.float64)
    big = values > 2
    log_bucket = np.floor(np.log(np.where(big, values, 3.0)) ** 2)
    small_bucket = np.floor(np.clip(values, -(2.0**62), 2.0))
    buckets = np.where(big, log_bucket, small_bucket).astype(np.int64).astype(str)
    return np.char.add(np.where(big, "L", "V"), buckets)


def _number(text: str) -> float | None:
    """``text`` as a finite float, or ``None``."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if np.isfinite(value) else None


def _first_line(column: Sequence[str], bad: set[str], lines: np.ndarray) -> tuple[str, int]:
    """The first value of ``column`` in ``bad`` and its line (failure path only)."""
    k = next(k for k, text in enumerate(column) if text in bad)
    return column[k], int(lines[k])


def _labels(chunk: Chunk, label: str, threshold: float | None, path: Path) -> np.ndarray:
    """float32 0/1 clicks of a chunk: the label itself (0 or 1), or ``label >= threshold``."""
    value_of: dict[str, float] = {}
    bad: set[str] = set()
    for text in set(chunk.labels):  # distinct labels: a handful
        value = _number(text)
        if value is None or (threshold is None and value not in (0.0, 1.0)):
            bad.add(text)
        else:
            value_of[text] = float(value >= threshold) if threshold is not None else value
    if bad:
        text, line = _first_line(chunk.labels, bad, chunk.lines)
        if text == "":
            reason = f"empty label {label!r}"
        elif _number(text) is None:
            reason = f"label {label!r} is not a finite number: {quote(text)}"
        else:
            reason = f"label {label!r} must be 0 or 1 (or give label_threshold), got {quote(text)}"
        raise DataError(reason, path, line)
    return np.fromiter(map(value_of.__getitem__, chunk.labels), dtype=np.float32, count=len(chunk.labels))


def _tokens(field: Field, raw: Sequence[str], lines: np.ndarray, bins: Bins, cache: dict[str, str], path: Path) -> Sequence[str]:
    """The values of one field as strings: categorical values as they are, numbers as their bucket.

    ``cache`` maps the raw numbers already seen to their bucket; it grows by the new
    distinct values of each chunk only.
    """
    if not field.numeric:
        return raw
    new = set(raw).difference(cache)
    if new:
        new.discard(MISSING)
        texts = sorted(new)
        numbers = [_number(text) for text in texts]
        bad = {text for text, number in zip(texts, numbers) if number is None}
        if bad:
            text, line = _first_line(raw, bad, lines)
            raise DataError(f"numeric field {field.name!r} is not a finite number: {quote(text)}", path, line)
        values = np.asarray(numbers, dtype=np.float64)
        if bins == LOG_SQUARE:
            tokens = log_square_buckets(values)
        else:
            buckets = np.asarray(bins(values))  # type: ignore[operator]
            if buckets.shape != values.shape or not np.issubdtype(buckets.dtype, np.integer):
                raise ValueError(
                    f"bins must map float64 values to integers of the same shape, got {buckets.dtype} {buckets.shape}"
                )
            tokens = np.char.add("B", buckets.astype(str))
        cache.update(zip(texts, tokens.tolist()))
        cache[MISSING] = MISSING
    return list(map(cache.__getitem__, raw))


def _vocabulary(counts: Counter[str], unseen: set[str] | None, threshold: int) -> tuple[list[str], int]:
    """Kept values in id order (train frequency descending, then value), and how many rarer values went to OOV.

    A value is kept when its train count reaches ``threshold``; the missing value is
    kept whenever it occurs in train, however rarely; with ``threshold == 0`` the
    values seen only outside train (``unseen``) are kept too, after the others.
    """
    kept = [value for value, count in counts.items() if count >= threshold or value == MISSING]
    kept.sort(key=lambda value: (-counts[value], value))  # distinct values, not rows
    rare = len(counts) - len(kept)
    if unseen is not None:
        kept += sorted(unseen.difference(counts))
    return kept, rare


def encode(
    source: Callable[[], Iterable[Chunk]],
    path: PathLike,
    fields: Sequence[Field],
    *,
    label: str,
    label_threshold: float | None,
    oov_threshold: int,
    bins: Bins,
    fractions: Sequence[float],
    seed: int,
    name: str,
    notes: Sequence[str] = (),
) -> CTRData:
    """Encode the rows of ``source`` into a :class:`CTRData`, in two passes.

    Ids of a field are numbered by decreasing train frequency (ties by value), the
    OOV bucket last; see :func:`recsys.data.load_ctr_csv` for the rules.

    Args:
        source: returns a fresh iterator over the same chunks each time it is called.
        path: the file the rows come from, for errors.
        fields: the fields, in column order; ``Chunk.values`` follows it.
        label: the label column's name, for errors.
        label_threshold: ``None`` (labels are 0/1) or the least value that is a click.
        oov_threshold: least train count of a kept value (0 keeps every value seen).
        bins: the discretisation of numeric fields.
        fractions: ``(train, valid, test)``.
        seed: seed of :func:`row_split`.
        name: dataset name.
        notes: the loader's own notes, put first.

    Raises:
        DataError: a malformed row (with its line), no data rows, or a source that changed between passes.
    """
    path = Path(path)
    counts: list[Counter[str]] = [Counter() for _ in fields]
    unseen: list[set[str]] | None = [set() for _ in fields] if oov_threshold == 0 else None
    caches: list[dict[str, str]] = [{} for _ in fields]
    sizes = np.zeros(3, dtype=np.int64)
    for chunk in source():  # pass 1: validate, split, count the train values
        part = row_split(chunk.start + np.arange(len(chunk.lines), dtype=np.int64), fractions, seed)
        _labels(chunk, label, label_threshold, path)
        sizes += np.bincount(part, minlength=3)
        train = (part == 0).tolist()
        for f, spec in enumerate(fields):
            tokens = _tokens(spec, chunk.values[f], chunk.lines, bins, caches[f], path)
            counts[f].update(compress(tokens, train))
            if unseen is not None:
                unseen[f].update(compress(tokens, map(operator.not_, train)))
    if not sizes.sum():
        raise DataError("no data rows (only a header)", path)

    vocabularies: dict[str, np.ndarray] = {}
    lookups: list[dict[str, int]] = []
    rare: list[int] = []
    for f, spec in enumerate(fields):
        vocabulary, n_rare = _vocabulary(counts[f], None if unseen is None else unseen[f], oov_threshold)
        vocabularies[spec.name] = np.array(vocabulary, dtype=str)
        lookups.append({value: k for k, value in enumerate(vocabulary)})
        rare.append(n_rare)
    del counts, unseen

    x = {s: np.empty((int(n), len(fields)), dtype=np.int64) for s, n in zip(SPLITS, sizes)}
    y = {s: np.empty(int(n), dtype=np.float32) for s, n in zip(SPLITS, sizes)}
    filled = np.zeros(3, dtype=np.int64)
    for chunk in source():  # pass 2: write the ids
        n = len(chunk.lines)
        part = row_split(chunk.start + np.arange(n, dtype=np.int64), fractions, seed)
        labels = _labels(chunk, label, label_threshold, path)
        block = np.empty((n, len(fields)), dtype=np.int64)
        for f, spec in enumerate(fields):
            tokens = _tokens(spec, chunk.values[f], chunk.lines, bins, caches[f], path)
            oov = len(lookups[f])
            block[:, f] = np.fromiter(map(lookups[f].get, tokens, repeat(oov)), dtype=np.int64, count=n)
        for p, split in enumerate(SPLITS):
            mine = part == p
            m = int(mine.sum())
            if filled[p] + m > sizes[p]:
                raise DataError("the rows changed between the two passes over the file", path)
            x[split][filled[p] : filled[p] + m] = block[mine]
            y[split][filled[p] : filled[p] + m] = labels[mine]
            filled[p] += m
    if (filled != sizes).any():
        raise DataError("the rows changed between the two passes over the file", path)

    cardinalities = [len(lookups[f]) + 1 for f in range(len(fields))]
    train_x = x["train"]
    described = list(notes)
    for f, spec in enumerate(fields):
        oov_rows = int((train_x[:, f] == cardinalities[f] - 1).sum())
        share = oov_rows / train_x.shape[0] if train_x.shape[0] else 0.0
        if oov_threshold == 0:
            rule = "every value seen in any split kept"
        elif oov_threshold == 1:
            rule = "every value seen in train kept"
        else:
            rule = f"{rare[f]:,} values seen < {oov_threshold} times in train went to OOV"
        described.append(
            f"{spec.name}: {cardinalities[f]:,} rows ({cardinalities[f] - 1:,} values + OOV); "
            f"{rule}; {share:.2%} of train rows in OOV"
        )
    if any(spec.numeric for spec in fields):
        scheme = "floor(ln(x)^2) for x > 2, else floor(x) [LERSBench, section 5.1]" if bins == LOG_SQUARE else "a given function"
        described.append(f"numeric fields discretised by {scheme}; empty values are a value of their own")
    described.append(
        f"random per-row split, fractions {tuple(float(v) for v in fractions)}, seed {seed}: "
        f"{int(sizes[0]):,} / {int(sizes[1]):,} / {int(sizes[2]):,} rows"
    )
    return CTRData(
        name=name,
        fields=tuple(spec.name for spec in fields),
        cardinalities=tuple(cardinalities),
        x=x,
        y=y,
        vocabularies=vocabularies,
        notes=tuple(described),
    )
