"""Loader for delimited click logs (Criteo/Avazu-style CSV or TSV) into :class:`~recsys.data.CTRData`.

The preparation follows [LERSBench, section 5.1] (itself after the open CTR
benchmark [OpenCTR]; short names: docs/references.md):

* **categorical** values are strings; a value seen fewer than ``oov_threshold``
  times in the *train* split goes to its field's OOV bucket, and so does a value
  never seen in train ([LERSBench]: fewer than 10 times on Criteo, 2 on Avazu);
* **numeric** values are discretised into categorical buckets by the Criteo
  contest winners' rule [LERSBench] applies, ``⌊ln²(x)⌋`` for ``x > 2`` (the
  paper's text prints it as a rounded logarithm; its code, and the contest
  solution it cites, take the floor of the squared natural logarithm), and
  ``⌊x⌋`` for ``x ≤ 2``; the buckets then follow the categorical rules. A
  function of the values can replace the rule (``bins``);
* **missing** values (empty fields) are a value of their own: they get their
  own id whenever they occur in the train split, even below the threshold,
  because "unknown" is a signal distinct from "rare";
* the rows are split **8:1:1 at random** (a per-row draw, see
  :func:`recsys.data._ctr_encode.row_split`).

The file is streamed: it is read twice in chunks of ``chunk_rows`` lines (once
to count the train values, once to write the ids), so only the encoded ids, not
the text, are ever held whole.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from recsys.data._ctr_encode import (
    CHUNK_ROWS,
    LOG_SQUARE,
    Bins,
    Chunk,
    DelimitedChunks,
    Field,
    check_bins,
    encode,
)
from recsys.data._io import PathLike
from recsys.data.ctr import CTRData
from recsys.data.split import check_fractions
from recsys.data.tabular import default_sep

__all__ = ["load_ctr_csv"]


def load_ctr_csv(
    path: PathLike,
    *,
    label: str,
    categorical: Sequence[str],
    numeric: Sequence[str] = (),
    sep: str | None = None,
    label_threshold: float | None = None,
    oov_threshold: int = 10,
    bins: Bins = LOG_SQUARE,
    split: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    chunk_rows: int = CHUNK_ROWS,
    name: str | None = None,
) -> CTRData:
    """Load a delimited click log with a header line into per-field ids and 0/1 labels.

    Fields are the requested columns in the order of the header, named as they
    were requested (``"age"`` for a RecBole column ``age:token``); each becomes
    an embedding table. Ids within a field are numbered by decreasing train
    frequency (ties by value), and the last id is the OOV bucket. Vocabularies
    record the value of every id: categorical values as written, numeric buckets
    as ``"L<⌊ln²x⌋>"`` (``x > 2``), ``"V<⌊x⌋>"`` (``x ≤ 2``) or ``"B<bucket>"``
    (a ``bins`` function), ``""`` for missing.

    Args:
        path: the file, plain or gzipped (by name or by content).
        label: header name of the label column: 0/1, or a number compared with
            ``label_threshold``.
        categorical: header names of the categorical columns.
        numeric: header names of the numeric columns (finite numbers or empty).
        sep: field separator; ``None``: a tab for ``.tsv``/``.inter`` files, else a comma.
        label_threshold: when given, a row is a click if its label is at least
            this (e.g. 4 to read 1..5 star ratings as clicks).
        oov_threshold: least number of train rows a value needs to keep its own
            id ([LERSBench]: 10 on Criteo, 2 on Avazu); 1 keeps every train value;
            0 also keeps the values seen only in valid/test (train frequency 0).
        bins: :data:`LOG_SQUARE` ([LERSBench]), or an elementwise vectorised
            function from float64 values to integer buckets (e.g. fixed edges with
            ``np.digitize``); it is applied once to each distinct raw value.
        split: ``(train, valid, test)`` fractions; each row draws its split.
        seed: seed of the split.
        chunk_rows: lines read at a time; the result does not depend on it.
        name: dataset name; default the file name up to its first ``'.'``.

    Raises:
        DataError: the file is missing, unreadable or empty; a requested column
            is not in the header (the message lists the columns found); a row has
            a different number of fields than the header; a label is empty, not
            a number, or (without a threshold) not 0/1; a numeric value is not a
            finite number; a carriage return inside a line (old Mac line ends); an
            empty ``sep``. Row errors name the file and 1-based line.
        ValueError: a column requested twice or used as label and field, no
            fields, bad ``split``, ``oov_threshold < 0``, ``chunk_rows < 1``, or
            an unknown ``bins``.
    """
    fractions = check_fractions(split)
    categorical, numeric = [str(c) for c in categorical], [str(c) for c in numeric]
    requested = [label, *categorical, *numeric]
    repeated = sorted({c for c in requested if requested.count(c) > 1})
    if repeated:
        raise ValueError(f"columns {repeated} are requested more than once (label, categorical and numeric must differ)")
    if not categorical and not numeric:
        raise ValueError("give at least one categorical or numeric column")
    if int(oov_threshold) < 0:
        raise ValueError(f"oov_threshold must be >= 0, got {oov_threshold}")
    check_bins(bins)
    sep = default_sep(path) if sep is None else sep
    reader = DelimitedChunks(path, sep, chunk_rows)
    label_index = reader.column(label)
    wanted = [(reader.column(c), Field(c, numeric=False)) for c in categorical]
    wanted += [(reader.column(c), Field(c, numeric=True)) for c in numeric]
    wanted.sort(key=lambda item: item[0])  # fields in header order
    fields = [spec for _, spec in wanted]
    columns = [label_index, *(index for index, _ in wanted)]

    def source() -> Iterator[Chunk]:
        for raw in reader.chunks(columns):
            yield Chunk(raw.start, raw.lines, raw.columns[0], raw.columns[1:])

    click = f"{label} >= {label_threshold:g}" if label_threshold is not None else f"{label} (0/1)"
    return encode(
        source,
        path,
        fields,
        label=label,
        label_threshold=label_threshold,
        oov_threshold=int(oov_threshold),
        bins=bins,
        fractions=fractions,
        seed=seed,
        name=Path(path).name.split(".")[0] if name is None else name,
        notes=(f"click = {click}",),
    )
