"""Multi-field click data: the container every CTR backbone and search step reads.

One frozen container, :class:`CTRData`, holds the train, validation and test
rows of a click-through-rate dataset: per split an int64 ``(n, n_fields)``
matrix of per-field ids and a float32 vector of 0/1 labels.

Ids are local to a field: field ``f`` has ids ``0 .. cardinalities[f] - 1``,
and the **last** id, ``cardinalities[f] - 1``, is the field's out-of-vocabulary
(OOV) bucket, shared by the values too rare in the train split and by values
never seen there ([LERSBench, section 5.1]; its reference code also puts the OOV
id after the kept values). The kept values are numbered by decreasing train
frequency, so id 0 is the most frequent value of its field.

**One embedding table per field**, named after the field (``rows()``,
``frequencies()``). The alternative, one table over all fields with offsets
(as [LERSBench]'s code builds it), would hide the fields from the search: the
per-field space needs a variable per field, the block space groups rows by
frequency *within* a field (frequencies of a gender and of a zip code do not
compare), and an allocation is stored per table. The search spaces already
handle several tables, so a field is simply a table. Field names must therefore
be valid table names: non-empty and without ``'.'`` (torch parameter names).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from recsys.data.dataset import SPLITS
from recsys.errors import DataError

__all__ = ["CTRData", "shared_tensor"]


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


@dataclass(frozen=True, eq=False)
class CTRData:
    """Train/valid/test rows of a multi-field click dataset, ids per field.

    Equality is identity (``eq=False``): two datasets are the same data when
    their :meth:`fingerprint` agrees. The arrays are made read-only.

    Attributes:
        name: short dataset name, used in run records.
        fields: field names, in the column order of the id matrices; each is
            also the name of the field's embedding table.
        cardinalities: rows of each field's table, OOV bucket included (so at
            least 1); the OOV id of field ``f`` is ``cardinalities[f] - 1``.
        x: ``{"train", "valid", "test"}`` → int64 ``(n, n_fields)`` ids, column
            ``f`` within ``[0, cardinalities[f])``. A split may have 0 rows.
        y: the same splits → float32 ``(n,)`` labels, 0 (no click) or 1 (click).
        vocabularies: per field, the original value (a string) of each id but
            the OOV one, ``cardinalities[f] - 1`` entries; what serving needs to
            turn raw values into ids. ``None`` when unknown (synthetic data).
            Numeric fields hold their bucket names (see
            :func:`recsys.data.load_ctr_csv`); ``""`` is the missing value.
        notes: human-readable facts the loader decided (values sent to OOV,
            the split, the discretisation), for logs and reports.
    """

    name: str
    fields: tuple[str, ...]
    cardinalities: tuple[int, ...]
    x: Mapping[str, np.ndarray]
    y: Mapping[str, np.ndarray]
    vocabularies: Mapping[str, np.ndarray] | None = None
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        fields = tuple(str(f) for f in self.fields)
        cards = tuple(int(c) for c in self.cardinalities)
        if len(set(fields)) != len(fields):
            raise ValueError(f"field names must be distinct, got {list(fields)}")
        bad = [f for f in fields if not f or "." in f]
        if bad:
            raise ValueError(f"field names must be non-empty and without '.', got {bad} (they name embedding tables)")
        if len(cards) != len(fields):
            raise ValueError(f"{len(fields)} fields but {len(cards)} cardinalities")
        if cards and min(cards) < 1:
            raise ValueError(f"every field needs at least its OOV row, got cardinalities {dict(zip(fields, cards))}")
        missing = [s for s in SPLITS if s not in self.x or s not in self.y]
        if missing:
            raise ValueError(f"x and y need the splits {SPLITS}; missing {missing}")
        limits = np.asarray(cards, dtype=np.int64)
        xs: dict[str, np.ndarray] = {}
        ys: dict[str, np.ndarray] = {}
        for split in SPLITS:
            x = np.asarray(self.x[split])
            y = np.asarray(self.y[split])
            if x.ndim != 2 or x.shape[1] != len(fields):
                raise ValueError(f"x[{split!r}] must have shape (n, {len(fields)}), got {x.shape}")
            if y.shape != (x.shape[0],):
                raise ValueError(f"y[{split!r}] must have shape ({x.shape[0]},), got {y.shape}")
            if x.size and not np.issubdtype(x.dtype, np.integer):
                raise ValueError(f"x[{split!r}] must hold integer ids, got dtype {x.dtype}")
            x = np.ascontiguousarray(x, dtype=np.int64)
            if x.size and ((x < 0).any() or (x >= limits).any()):
                column = int(np.flatnonzero(((x < 0) | (x >= limits)).any(axis=0))[0])
                raise ValueError(
                    f"x[{split!r}] has ids of field {fields[column]!r} outside [0, {cards[column]})"
                )
            y = np.ascontiguousarray(y, dtype=np.float32)
            if y.size and not np.isin(y, (0.0, 1.0)).all():
                raise ValueError(f"y[{split!r}] must hold 0/1 labels")
            xs[split], ys[split] = _read_only(x), _read_only(y)
        vocabularies = None
        if self.vocabularies is not None:
            vocabularies = {}
            for name, card in zip(fields, cards):
                values = np.asarray(self.vocabularies[name])
                if values.shape != (card - 1,):
                    raise ValueError(f"vocabulary of {name!r} has {values.shape} values, expected ({card - 1},)")
                vocabularies[name] = _read_only(values)
        object.__setattr__(self, "fields", fields)
        object.__setattr__(self, "cardinalities", cards)
        object.__setattr__(self, "x", xs)
        object.__setattr__(self, "y", ys)
        object.__setattr__(self, "vocabularies", vocabularies)
        object.__setattr__(self, "notes", tuple(self.notes))

    @property
    def n_fields(self) -> int:
        """Number of fields (columns of the id matrices)."""
        return len(self.fields)

    @property
    def oov_ids(self) -> tuple[int, ...]:
        """The OOV id of each field (its last row)."""
        return tuple(c - 1 for c in self.cardinalities)

    def size(self, split: str) -> int:
        """Rows of ``split``."""
        return int(self.y[split].shape[0])

    def check_trainable(self) -> None:
        """Refuse data a click model cannot train on, so that it fails before a run is made for it.

        A click model trains on the train rows; each row draws its split at random, so a
        very small file can leave none in train.

        Raises:
            DataError: when the train split has no row.
        """
        if self.size("train") == 0:
            rows = sum(self.size(split) for split in SPLITS)
            raise DataError(
                f"dataset {self.name!r} has no train row: the random split put all {rows:,} of its rows in "
                "valid/test; give more rows, or change the split's seed or fractions"
            )

    def tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``split``'s ids and labels as tensors on the same (read-only) memory, without a copy.

        Nothing writes to them: trainers only index them to cut batches.
        """
        return shared_tensor(self.x[split]), shared_tensor(self.y[split])

    @cached_property
    def _frequencies(self) -> dict[str, np.ndarray]:
        train = self.x["train"]
        return {
            name: _read_only(np.bincount(train[:, f], minlength=card).astype(np.int64))
            for f, (name, card) in enumerate(zip(self.fields, self.cardinalities))
        }

    def frequencies(self) -> dict[str, np.ndarray]:
        """Train frequency of every row, by table (= field) name: int64, read-only.

        The OOV row counts the train rows whose value was too rare; a value
        seen only in valid/test (kept with ``oov_threshold=0``) has frequency 0.
        """
        return dict(self._frequencies)

    def rows(self) -> dict[str, int]:
        """Number of rows of each embedding table (one per field, OOV included), by field name."""
        return dict(zip(self.fields, self.cardinalities))

    def summary(self) -> dict[str, int | float | str]:
        """Sizes for logs: fields, table rows, rows and click rate per split, OOV share of train values.

        ``oov_share`` is the fraction of train (row, field) values that fell
        into an OOV bucket.
        """
        out: dict[str, int | float | str] = {
            "name": self.name,
            "fields": self.n_fields,
            "rows": int(sum(self.cardinalities)),
        }
        for split in SPLITS:
            out[f"{split}_rows"] = self.size(split)
        for split in SPLITS:
            y = self.y[split]
            out[f"{split}_click_rate"] = float(y.mean()) if y.size else 0.0
        train = self.x["train"]
        out["oov_share"] = float((train == np.asarray(self.oov_ids)).mean()) if train.size else 0.0
        return out

    def fingerprint(self) -> str:
        """SHA-256 hex digest of the fields, their cardinalities and the three splits.

        Ties a run to its data: it hashes the field names and cardinalities and,
        for train, valid and test in that order, the ids (int64) and labels
        (float32); not the name, the notes or the vocabularies.
        """
        digest = hashlib.sha256(repr((self.fields, self.cardinalities)).encode())
        for split in SPLITS:
            digest.update(split.encode())
            digest.update(np.int64(self.size(split)).tobytes())
            digest.update(self.x[split].tobytes())
            digest.update(self.y[split].tobytes())
        return digest.hexdigest()

    @classmethod
    def from_arrays(
        cls,
        name: str,
        fields: Sequence[str],
        cardinalities: Sequence[int],
        train: tuple[np.ndarray, np.ndarray],
        valid: tuple[np.ndarray, np.ndarray],
        test: tuple[np.ndarray, np.ndarray],
        **options: object,
    ) -> CTRData:
        """Build from ``(x, y)`` pairs per split (``options``: ``vocabularies``, ``notes``)."""
        splits = dict(zip(SPLITS, (train, valid, test)))
        return cls(
            name=name,
            fields=tuple(fields),
            cardinalities=tuple(cardinalities),
            x={s: xy[0] for s, xy in splits.items()},
            y={s: xy[1] for s, xy in splits.items()},
            **options,  # type: ignore[arg-type]
        )


def shared_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor on ``array``'s memory, read-only arrays included (torch warns; nothing here writes to it)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*")
        return torch.from_numpy(array)
