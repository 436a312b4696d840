"""Where a run's data comes from, described as plain data so a run can reload it.

Two kinds of data, one per task (:mod:`nas.pipeline.tasks`): *interactions* (users × items, for
top-k backbones) from the ``synthetic``, ``lightgcn`` and ``csv`` formats, and
*click rows* (one id per field and a 0/1 label, for click backbones) from the
``synthetic-ctr``, ``ctr-csv`` and ``movielens-ctr`` formats.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nas.core.errors import ConfigError
from recsys.data import (
    CTRData,
    InteractionData,
    load_ctr_csv,
    load_interactions_csv,
    load_lightgcn,
    load_movielens_ctr,
    synthetic,
    synthetic_ctr,
)
from recsys.errors import DataError

__all__ = ["CLICK_FORMATS", "FORMATS", "MEMORY_FORMATS", "PATH_FORMATS", "TOP_K_FORMATS", "DataSpec", "load_data"]

_SPLIT_NAMES = {"train": ("train",), "valid": ("valid", "val"), "test": ("test",)}
#: Formats of interaction data (top-k backbones); ``memory``: data handed over in memory.
TOP_K_FORMATS = ("synthetic", "lightgcn", "csv", "memory")
#: Formats of click data (click backbones); ``memory-ctr``: data handed over in memory.
CLICK_FORMATS = ("synthetic-ctr", "ctr-csv", "movielens-ctr", "memory-ctr")
#: What :meth:`DataSpec.from_path` reads (``auto``: told by the files).
PATH_FORMATS = ("auto", "lightgcn", "csv", "ctr-csv", "movielens-ctr")
#: Formats of data that only exists in memory: a run records its description, not the data.
MEMORY_FORMATS = ("memory", "memory-ctr")
FORMATS = TOP_K_FORMATS + CLICK_FORMATS
#: Options of the click loaders, refused for interaction data.
_CLICK_OPTIONS = ("label_col", "categorical", "numeric", "label_threshold", "oov_threshold")


@dataclass(frozen=True)
class DataSpec:
    """The dataset of a run.

    Attributes:
        format: ``"synthetic"`` (the built-in default), ``"lightgcn"`` or ``"csv"``
            (interactions); ``"synthetic-ctr"``, ``"ctr-csv"`` or ``"movielens-ctr"`` (click rows);
            ``"memory"`` or ``"memory-ctr"`` for data given in memory (:meth:`in_memory`).
        train: LightGCN files of the training split (several are concatenated).
        valid: LightGCN files of the validation split (may be empty).
        test: LightGCN files of the test split.
        path: the CSV/TSV file (``csv``, ``ctr-csv``), or the folder of RecBole files
            ``<stem>.inter``, ``.user`` and ``.item`` (``movielens-ctr``).
        user_col: CSV column of user ids.
        item_col: CSV column of item ids.
        cold: policy for users/items seen only outside train: ``"keep"`` or ``"drop"``.
        seed: seed of the synthetic data and of CSV and click splits.
        sep: CSV field separator (``None``: tab for .tsv/.inter, comma otherwise).
        rating_col: CSV rating column; with ``min_rating``, rows below it are not interactions.
        min_rating: the least rating that counts as an interaction (e.g. 4 on MovieLens).
        remap: map LightGCN ids to contiguous ones (for files with gaps or huge ids).
        label_col: click CSV: the label column (0/1, or a number compared with ``label_threshold``).
        categorical: click CSV: the categorical columns (one field, one embedding table each).
        numeric: click CSV: the numeric columns (discretised by ``⌊ln² x⌋`` [LERSBench, section 5.1]).
        label_threshold: click data: a row clicks when its label is at least this
            (``movielens-ctr``: the rating, 4 when ``None``).
        oov_threshold: click data: the least train count of a value that keeps its own
            row (``None``: the loader's default, 10 for ``ctr-csv``, 2 for ``movielens-ctr``).
        extra: further keyword options of the loader (e.g. the synthetic data's size, the
            RecBole file stem ``dataset`` of ``movielens-ctr``).
    """

    format: str = "synthetic"
    train: tuple[str, ...] = ()
    valid: tuple[str, ...] = ()
    test: tuple[str, ...] = ()
    path: str = ""
    user_col: str = "user_id"
    item_col: str = "item_id"
    cold: str = "keep"
    seed: int = 0
    sep: str | None = None
    rating_col: str | None = None
    min_rating: float | None = None
    remap: bool = False
    label_col: str | None = None
    categorical: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    label_threshold: float | None = None
    oov_threshold: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"unknown data format {self.format!r}; choose one of {FORMATS}")
        for name in ("train", "valid", "test"):
            object.__setattr__(self, name, tuple(str(Path(p)) for p in getattr(self, name)))
        for name in ("categorical", "numeric"):
            object.__setattr__(self, name, tuple(str(c) for c in getattr(self, name)))
        if self.task == "top-k":
            given = [f"--{o.replace('_', '-')}" for o in _CLICK_OPTIONS if getattr(self, o) not in (None, ())]
            if given:
                raise ConfigError(f"{', '.join(given)} apply to click data (formats {CLICK_FORMATS}), "
                                  f"not to {self.format} interaction data")
        if self.format == "ctr-csv" and (not self.label_col or not (self.categorical or self.numeric)):
            raise ConfigError("click CSV data needs --label-col and at least one of --categorical and --numeric")
        if self.oov_threshold is not None and self.oov_threshold < 0:
            raise ConfigError(f"--oov-threshold must be 0 or more, got {self.oov_threshold}")

    @property
    def task(self) -> str:
        """``"click"`` for click rows, ``"top-k"`` for interactions (see :mod:`nas.pipeline.tasks`)."""
        return "click" if self.format in CLICK_FORMATS else "top-k"

    @classmethod
    def in_memory(cls, data: InteractionData | CTRData) -> DataSpec:
        """The description of data handed over in memory: its kind and name (the run checks its fingerprint)."""
        if not isinstance(data, (InteractionData, CTRData)):
            raise ConfigError(f"data in memory must be InteractionData or CTRData, got {type(data).__name__}")
        kind = "memory-ctr" if isinstance(data, CTRData) else "memory"
        return cls(kind, extra={"name": str(data.summary().get("name", type(data).__name__))})

    @classmethod
    def from_path(cls, path: str | Path, format: str = "auto", **options: Any) -> DataSpec:
        """Describe data at ``path``.

        Args:
            path: a folder of LightGCN files (``train``, ``valid``, ``test``), a folder of
                RecBole MovieLens files (``<stem>.inter``, ``.user``, ``.item``), or a CSV/TSV file.
            format: ``"lightgcn"``, ``"csv"``, ``"ctr-csv"``, ``"movielens-ctr"``, or
                ``"auto"``: a folder is LightGCN when it holds train and test files,
                MovieLens click data when it holds the RecBole files; a file is click data
                when ``label_col`` is given, interactions otherwise.
            options: other :class:`DataSpec` fields.
        """
        path = Path(path)
        formats = PATH_FORMATS
        if format not in formats:
            raise ConfigError(f"unknown data format {format!r}; choose one of {formats}")
        if format in ("lightgcn", "movielens-ctr") and not path.is_dir():
            raise ConfigError(f"{path}: {format} data is a folder; give the folder")
        if format in ("csv", "ctr-csv") and path.is_dir():
            raise ConfigError(f"{path} is a folder; {format} data is one file")
        if path.is_dir():
            splits = {name: _find_split(path, aliases) for name, aliases in _SPLIT_NAMES.items()}
            stem = _recbole_stem(path)
            if format == "movielens-ctr" or (format == "auto" and stem and not splits["train"]):
                if not stem:
                    raise ConfigError(f"{path}: MovieLens click data is a folder with <name>.inter, <name>.user "
                                      "and <name>.item (gzipped or not)")
                extra = {"dataset": stem, **options.pop("extra", {})}
                return cls("movielens-ctr", path=str(path), extra=extra, **options)
            if not splits["train"] or not splits["test"]:
                raise ConfigError(
                    f"{path}: a LightGCN data folder needs train.txt and test.txt (optionally valid.txt, gzipped or not); "
                    "a MovieLens click folder needs <name>.inter, <name>.user and <name>.item"
                )
            return cls("lightgcn", splits["train"], splits["valid"], splits["test"], **options)
        if path.is_file():
            click = format == "ctr-csv" or (format == "auto" and options.get("label_col"))
            return cls("ctr-csv" if click else "csv", path=str(path), **options)
        raise ConfigError(f"{path} does not exist; give a LightGCN or MovieLens data folder or a CSV/TSV file")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form for ``config.json``."""
        data = asdict(self)
        for name in ("train", "valid", "test", "categorical", "numeric"):
            data[name] = list(data[name])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataSpec:
        """Inverse of :meth:`to_dict` (a configuration written before click data loads with its defaults)."""
        return cls(**{**data, **{k: tuple(data.get(k, ())) for k in ("train", "valid", "test", "categorical", "numeric")}})


def _find_split(folder: Path, aliases: tuple[str, ...]) -> tuple[str, ...]:
    for alias in aliases:
        for suffix in (".txt", ".txt.gz"):
            candidate = folder / f"{alias}{suffix}"
            if candidate.exists():
                return (str(candidate),)
    return ()


def _recbole_stem(folder: Path) -> str:
    """The stem ``s`` of the first ``s.inter[.gz]`` in ``folder`` that has ``s.user`` and ``s.item`` beside it, or ``""``."""
    for inter in sorted([*folder.glob("*.inter"), *folder.glob("*.inter.gz")]):
        stem = inter.name.removesuffix(".gz").removesuffix(".inter")
        if all(any((folder / f"{stem}.{kind}{gz}").is_file() for gz in ("", ".gz")) for kind in ("user", "item")):
            return stem
    return ""


def load_data(spec: DataSpec) -> InteractionData | CTRData:
    """Load the data a :class:`DataSpec` describes: interactions, or click rows for the click formats."""
    if spec.format in MEMORY_FORMATS:
        raise ConfigError(f"this run searched data given in memory ({spec.extra.get('name', spec.format)}); hand the same "
                          "data over again, e.g. nas.resume(run_dir, data=data)")
    if spec.format == "synthetic":
        return synthetic(seed=spec.seed, **spec.extra)
    if spec.format == "lightgcn":
        return load_lightgcn(
            list(spec.train), list(spec.valid) or None, list(spec.test) or None, cold=spec.cold, remap=spec.remap
        )
    if spec.format == "csv":
        return load_interactions_csv(
            spec.path, user_col=spec.user_col, item_col=spec.item_col, sep=spec.sep, rating_col=spec.rating_col,
            min_rating=spec.min_rating, seed=spec.seed, **spec.extra,
        )
    oov = {} if spec.oov_threshold is None else {"oov_threshold": spec.oov_threshold}
    try:
        if spec.format == "synthetic-ctr":
            return synthetic_ctr(seed=spec.seed, **spec.extra)
        if spec.format == "movielens-ctr":
            threshold = {} if spec.label_threshold is None else {"click_threshold": spec.label_threshold}
            return load_movielens_ctr(spec.path, seed=spec.seed, **threshold, **oov, **spec.extra)
        return load_ctr_csv(
            spec.path, label=str(spec.label_col), categorical=spec.categorical, numeric=spec.numeric, sep=spec.sep,
            label_threshold=spec.label_threshold, seed=spec.seed, **oov, **spec.extra,
        )
    except DataError:
        raise
    except (ValueError, TypeError) as error:  # an option the loader refuses
        raise ConfigError(f"click data {spec.path or spec.format}: {error}") from None
