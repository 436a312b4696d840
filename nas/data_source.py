"""Where a run's interactions come from, described as plain data so a run can reload them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nas.core.errors import ConfigError
from recsys.data import InteractionData, load_interactions_csv, load_lightgcn, synthetic

__all__ = ["DataSpec", "load_data"]

_SPLIT_NAMES = {"train": ("train",), "valid": ("valid", "val"), "test": ("test",)}
_FORMATS = ("synthetic", "lightgcn", "csv")


@dataclass(frozen=True)
class DataSpec:
    """The dataset of a run.

    Attributes:
        format: ``"synthetic"`` (the built-in default), ``"lightgcn"`` or ``"csv"``.
        train: LightGCN files of the training split (several are concatenated).
        valid: LightGCN files of the validation split (may be empty).
        test: LightGCN files of the test split.
        path: the CSV/TSV interaction file.
        user_col: CSV column of user ids.
        item_col: CSV column of item ids.
        cold: policy for users/items seen only outside train: ``"keep"`` or ``"drop"``.
        seed: seed of the synthetic data and of CSV splits.
        sep: CSV field separator (``None``: tab for .tsv/.inter, comma otherwise).
        rating_col: CSV rating column; with ``min_rating``, rows below it are not interactions.
        min_rating: the least rating that counts as an interaction (e.g. 4 on MovieLens).
        remap: map LightGCN ids to contiguous ones (for files with gaps or huge ids).
        extra: further keyword options of the loader (e.g. the synthetic data's size).
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
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.format not in _FORMATS:
            raise ConfigError(f"unknown data format {self.format!r}; choose one of {_FORMATS}")
        for name in ("train", "valid", "test"):
            object.__setattr__(self, name, tuple(str(Path(p)) for p in getattr(self, name)))

    @classmethod
    def from_path(cls, path: str | Path, format: str = "auto", **options: Any) -> DataSpec:
        """Describe data at ``path``: a folder of LightGCN files (``train``, ``valid``, ``test``) or a CSV/TSV file.

        Args:
            path: the folder or file.
            format: ``"lightgcn"``, ``"csv"``, or ``"auto"`` (a folder is LightGCN, a file is CSV/TSV).
            options: other :class:`DataSpec` fields.
        """
        path = Path(path)
        if format not in ("auto", "lightgcn", "csv"):
            raise ConfigError(f"unknown data format {format!r}; choose auto, lightgcn or csv")
        if format == "lightgcn" and not path.is_dir():
            raise ConfigError(f"{path}: LightGCN data is a folder with train.txt and test.txt; give the folder")
        if format == "csv" and path.is_dir():
            raise ConfigError(f"{path} is a folder; CSV/TSV data is one interaction file")
        if path.is_dir():
            splits = {name: _find_split(path, aliases) for name, aliases in _SPLIT_NAMES.items()}
            if not splits["train"] or not splits["test"]:
                raise ConfigError(
                    f"{path}: a LightGCN data folder needs train.txt and test.txt (optionally valid.txt, gzipped or not)"
                )
            return cls("lightgcn", splits["train"], splits["valid"], splits["test"], **options)
        if path.is_file():
            return cls("csv", path=str(path), **options)
        raise ConfigError(f"{path} does not exist; give a LightGCN data folder or a CSV/TSV interaction file")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form for ``config.json``."""
        data = asdict(self)
        for name in ("train", "valid", "test"):
            data[name] = list(data[name])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(**{**data, **{k: tuple(data.get(k, ())) for k in ("train", "valid", "test")}})


def _find_split(folder: Path, aliases: tuple[str, ...]) -> tuple[str, ...]:
    for alias in aliases:
        for suffix in (".txt", ".txt.gz"):
            candidate = folder / f"{alias}{suffix}"
            if candidate.exists():
                return (str(candidate),)
    return ()


def load_data(spec: DataSpec) -> InteractionData:
    """Load the interactions a :class:`DataSpec` describes."""
    if spec.format == "synthetic":
        return synthetic(seed=spec.seed, **spec.extra)
    if spec.format == "lightgcn":
        return load_lightgcn(
            list(spec.train), list(spec.valid) or None, list(spec.test) or None, cold=spec.cold, remap=spec.remap
        )
    return load_interactions_csv(
        spec.path, user_col=spec.user_col, item_col=spec.item_col, sep=spec.sep, rating_col=spec.rating_col,
        min_rating=spec.min_rating, seed=spec.seed, **spec.extra,
    )
