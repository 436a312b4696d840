"""Public recommendation datasets by name: where they come from, and fetching them into a cache.

A :class:`Dataset` is plain data: the files to fetch (URL, sha256 where it is
known, size), the source to cite, the format of the result and, where the
upstream files are not already in a loader's format, a converter.
:func:`fetch` downloads every file into ``<cache>/<name>/`` (see
:mod:`recsys.data.download` for the cache, mirrors and resuming), verifies it,
converts it, and says what to hand to a loader:

* ``"lightgcn"``: the folder itself (``train.txt``, ``valid.txt`` if any,
  ``test.txt``), for :func:`recsys.data.load_lightgcn` or ``--data <folder>``;
* ``"ratings-tsv"``: ``ratings.tsv``, header ``user_id item_id rating
  timestamp``, for :func:`recsys.data.load_interactions_csv`;
* ``"ctr-csv"``: the raw CTR table, kept as downloaded.

Hashes are never guessed. A file whose sha256 is not known for sure has
``sha256=None`` ("unpinned"): its first download records the hash it got in
``<cache>/<name>/SHA256SUMS`` (the format ``sha256sum -c`` reads), and later
downloads, resumed ones included, must match that record (trust on first use).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

from recsys.data._io import PathLike
from recsys.data.download import (
    cache_dir,
    download,
    file_sha256,
    mirror_base,
    mirror_url,
)
from recsys.errors import DataError

__all__ = [
    "CATALOG",
    "FORMATS",
    "Converter",
    "Dataset",
    "Fetched",
    "MovieLensRatings",
    "RemoteFile",
    "cache_state",
    "extract_zip",
    "fetch",
    "get_dataset",
    "names",
]

FORMATS = {
    "lightgcn": "LightGCN folder (train.txt, valid.txt if any, test.txt)",
    "ratings-tsv": "ratings.tsv (tab-separated, header user_id, item_id, rating, timestamp)",
    "ctr-csv": "raw CTR table (comma-separated, header row), kept as downloaded",
}
"""What a fetched dataset is, by format name."""

SUMS_FILE = "SHA256SUMS"
"""Per-dataset record of the hash every file had when it was fetched (``sha256sum`` format)."""

_MARKER = ".converted.json"
"""Written last by a conversion, with the hashes of its inputs: a finished, current conversion."""

_NAME = re.compile(r"[a-z0-9][a-z0-9.-]*")
_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset, as published upstream.

    Attributes:
        name: the file's name in ``<cache>/<dataset>/`` (and on a mirror).
        url: the upstream URL (https).
        sha256: hex digest of the exact upstream bytes, or ``None`` when it is
            not known for sure (the first download records it).
        size: size in bytes when known, else ``None``.
    """

    name: str
    url: str
    sha256: str | None = None
    size: int | None = None

    def __post_init__(self) -> None:
        if not _FILE.fullmatch(self.name):
            raise ValueError(f"file name {self.name!r} must be a plain name (letters, digits, '.', '_', '-')")
        if not self.url.startswith("https://"):
            raise ValueError(f"{self.name}: url {self.url!r} must be an https URL")
        if self.sha256 is not None and not _SHA256.fullmatch(self.sha256):
            raise ValueError(f"{self.name}: sha256 must be 64 lowercase hex digits or None, got {self.sha256!r}")
        if self.size is not None and self.size <= 0:
            raise ValueError(f"{self.name}: size must be a positive number of bytes or None, got {self.size}")

    @property
    def pinned(self) -> bool:
        """Whether the catalog knows the file's hash (otherwise the first download records it)."""
        return self.sha256 is not None


class Converter(Protocol):
    """Turns downloaded files into a loader's format, inside the dataset's folder.

    Attributes:
        inputs: names of the downloaded files it reads.
        outputs: names of the files it writes (each written atomically).
    """

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def convert(self, folder: Path) -> None:
        """Write :attr:`outputs` into ``folder`` from :attr:`inputs` there."""


@dataclass(frozen=True)
class MovieLensRatings:
    """Unzip a GroupLens MovieLens archive and write its ratings as ``ratings.tsv`` with a header.

    Every member is extracted (the archive's single top folder, ``ml-100k/``,
    is dropped, so ``u.user`` and ``u.item`` land beside ``ratings.tsv``);
    members with absolute paths or ``..`` are refused before anything is
    written. The ratings member has no header and ``sep``-separated fields
    ``user item rating timestamp``; only the separator changes, so ids stay
    exactly the published ones.

    Attributes:
        archive: the downloaded zip, e.g. ``"ml-100k.zip"``.
        ratings: the ratings member below the top folder, e.g. ``"u.data"``.
        sep: its field separator (``"\\t"`` for ml-100k, ``"::"`` for ml-1m).
    """

    archive: str
    ratings: str
    sep: str
    outputs: tuple[str, ...] = ("ratings.tsv",)
    header: str = "user_id\titem_id\trating\ttimestamp"

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.archive,)

    def convert(self, folder: Path) -> None:
        archive = folder / self.archive
        extracted = extract_zip(archive, folder)
        source = folder / self.ratings
        if source not in extracted:
            found = ", ".join(sorted(p.relative_to(folder).as_posix() for p in extracted)[:20])
            raise DataError(f"no member {self.ratings!r} in the archive (found: {found})", archive)
        data = source.read_bytes()
        if self.sep != "\t":
            if b"\t" in data:
                raise DataError(f"tab inside a {self.sep!r}-separated ratings file", source)
            data = data.replace(self.sep.encode(), b"\t")
        if data and not data.endswith(b"\n"):
            data += b"\n"
        _write_atomic(folder / self.outputs[0], self.header.encode() + b"\n" + data)


@dataclass(frozen=True)
class Dataset:
    """A public dataset: its files, where they come from, and what fetching it yields.

    Attributes:
        name: the catalog name (``embnas data get NAME``).
        description: one line on what it is, its size and caveats.
        source: the citation and the homepage of the data.
        files: the files to fetch.
        format: a key of :data:`FORMATS`.
        data: what to hand to a loader, relative to the dataset's folder
            (``""``: the folder itself).
        converter: writes the loader's format from the downloads, or ``None``
            when the downloads already are in it.
    """

    name: str
    description: str
    source: str
    files: tuple[RemoteFile, ...]
    format: str
    data: str = ""
    converter: Converter | None = None

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"dataset name {self.name!r} must be lowercase letters, digits, '.' and '-'")
        if self.format not in FORMATS:
            raise ValueError(f"{self.name}: format {self.format!r} is not one of {sorted(FORMATS)}")
        names = [f.name for f in self.files]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"{self.name}: needs files with distinct names, got {names}")
        if self.converter is not None and not set(self.converter.inputs) <= set(names):
            raise ValueError(f"{self.name}: the converter reads {self.converter.inputs}, not all among the files {names}")

    @property
    def size(self) -> int | None:
        """Bytes to download when every size is known, else ``None``."""
        sizes = [f.size for f in self.files]
        return None if None in sizes else sum(sizes)  # type: ignore[arg-type]

    @property
    def outputs(self) -> tuple[str, ...]:
        """Names of the files a fetch leaves in the folder: downloads and converted files."""
        extra = self.converter.outputs if self.converter is not None else ()
        return tuple(f.name for f in self.files) + tuple(extra)


@dataclass(frozen=True)
class Fetched:
    """The result of :func:`fetch`.

    Attributes:
        dataset: the catalog entry.
        folder: ``<cache>/<name>``.
        data: what to hand to a loader (the folder for LightGCN data).
        downloaded: names of the files fetched this time; the others were
            already complete and verified.
        converted: whether the conversion ran this time.
    """

    dataset: Dataset
    folder: Path
    data: Path
    downloaded: tuple[str, ...]
    converted: bool


_LIGHTGCN = "https://raw.githubusercontent.com/gusye1234/LightGCN-PyTorch/master/data"
_LIGHTGCNPP = "https://raw.githubusercontent.com/geon0325/LightGCNpp/main/data"
_DEEPCTR = "https://raw.githubusercontent.com/shenweichen/DeepCTR/master/examples"
_GROUPLENS = "https://files.grouplens.org/datasets/movielens"
_LIGHTGCN_PAPER = ("X. He et al., LightGCN: Simplifying and Powering Graph Convolution Network for Recommendation, "
                   "SIGIR 2020 (split of X. Wang et al., NGCF, SIGIR 2019); files: https://github.com/gusye1234/LightGCN-PyTorch")
_LIGHTGCNPP_PAPER = ("G. Lee, K. Kim, K. Shin, Revisiting LightGCN: Unexpected Inflexibility, Inconsistency, and a Remedy "
                     "Towards Improved Recommendation, RecSys 2024; files: https://github.com/geon0325/LightGCNpp")
_MOVIELENS_PAPER = ("F. M. Harper, J. A. Konstan, The MovieLens Datasets: History and Context, ACM TiiS 2015; "
                    "https://grouplens.org/datasets/movielens/ (see its README for the terms of use)")

CATALOG: tuple[Dataset, ...] = (
    Dataset(
        name="gowalla",
        description="Gowalla check-ins, the NGCF/LightGCN split: 29,858 users, 40,981 items, 810,128 train and "
                    "217,242 test pairs; no validation split; about 7 MB",
        source="E. Cho, S. A. Myers, J. Leskovec, Friendship and Mobility, KDD 2011 "
               "(https://snap.stanford.edu/data/loc-gowalla.html); " + _LIGHTGCN_PAPER,
        files=(
            RemoteFile("train.txt", f"{_LIGHTGCN}/gowalla/train.txt"),
            RemoteFile("test.txt", f"{_LIGHTGCN}/gowalla/test.txt",
                       "099a2a73924e4b754dc6efd730d764f492321b53c38eb93298850c83acf57be3", 1_372_559),
            RemoteFile("user_list.txt", f"{_LIGHTGCN}/gowalla/user_list.txt",
                       "5344c4d0deef610e1f148f23ad216a0db03b36f88834cd39a06786a672c5f5a1", 351_203),
            RemoteFile("item_list.txt", f"{_LIGHTGCN}/gowalla/item_list.txt",
                       "6b186f92890cc3f0c15a6dae5d6285f125a302bb8c5ea0cd9a16cf9c16347139", 506_926),
        ),
        format="lightgcn",
    ),
    Dataset(
        name="yelp2018",
        description="Yelp 2018 challenge reviews, the NGCF/LightGCN split (31,668 users, 38,048 items); "
                    "no validation split",
        source="Yelp Dataset Challenge 2018 (https://www.yelp.com/dataset); " + _LIGHTGCN_PAPER,
        files=tuple(RemoteFile(f, f"{_LIGHTGCN}/yelp2018/{f}") for f in ("train.txt", "test.txt", "user_list.txt", "item_list.txt")),
        format="lightgcn",
    ),
    Dataset(
        name="lastfm",
        description="Last.fm listening, the LightGCN++ split: 1,885 users, 17,388 items, 91,779 pairs in "
                    "train/valid/test; item ids >= 13,973 occur only in valid/test (cold items)",
        source="HetRec 2011 Last.fm (https://grouplens.org/datasets/hetrec-2011/); " + _LIGHTGCNPP_PAPER,
        files=(
            RemoteFile("train.txt", f"{_LIGHTGCNPP}/lastfm/train.txt",
                       "1845769cb1a9834692d3cf884de523d23aa126fa6b58eb5f49e9628e8c317705", 300_863),
            RemoteFile("valid.txt", f"{_LIGHTGCNPP}/lastfm/valid.txt",
                       "9ae3440becfcbba19d5a5a8298b7933126f89424a468de5765bf1c6f08a9e3eb", 50_860),
            RemoteFile("test.txt", f"{_LIGHTGCNPP}/lastfm/test.txt",
                       "0f0a15e3de2f868554ee1e32190c51db3e0ad0c4138e1428c66ba6de86102755", 93_806),
        ),
        format="lightgcn",
    ),
    Dataset(
        name="gowalla-lightgcnpp",
        description="Gowalla, the LightGCN++ split: the NGCF/LightGCN train set cut into train (719,081 pairs) "
                    "and valid (91,047), the same test (217,242)",
        source="E. Cho, S. A. Myers, J. Leskovec, Friendship and Mobility, KDD 2011 "
               "(https://snap.stanford.edu/data/loc-gowalla.html); " + _LIGHTGCNPP_PAPER,
        files=(
            RemoteFile("train.txt", f"{_LIGHTGCNPP}/gowalla/train.txt",
                       "d47e01d060624f389956c0b2f89a1ed8c453ea158631cd2b5320c241f3e1a073", 4_132_444),
            RemoteFile("valid.txt", f"{_LIGHTGCNPP}/gowalla/valid.txt",
                       "ddc22c1cd9a7d14fd5cd0c98b1473b614f4323038fef74ae0d28cc9c92a08ba2", 669_008),
            RemoteFile("test.txt", f"{_LIGHTGCNPP}/gowalla/test.txt",
                       "099a2a73924e4b754dc6efd730d764f492321b53c38eb93298850c83acf57be3", 1_372_559),
        ),
        format="lightgcn",
    ),
    Dataset(
        name="ml-100k",
        description="MovieLens 100K: 100,000 ratings 1-5 by 943 users on 1,682 movies, with user and movie "
                    "features (u.user, u.item); a zip of about 5 MB",
        source=_MOVIELENS_PAPER,
        files=(RemoteFile("ml-100k.zip", f"{_GROUPLENS}/ml-100k.zip"),),
        format="ratings-tsv",
        data="ratings.tsv",
        converter=MovieLensRatings("ml-100k.zip", "u.data", "\t"),
    ),
    Dataset(
        name="ml-1m",
        description="MovieLens 1M: 1,000,209 ratings 1-5 by 6,040 users on 3,706 movies, with users.dat and "
                    "movies.dat; a zip of about 6 MB",
        source=_MOVIELENS_PAPER,
        files=(RemoteFile("ml-1m.zip", f"{_GROUPLENS}/ml-1m.zip"),),
        format="ratings-tsv",
        data="ratings.tsv",
        converter=MovieLensRatings("ml-1m.zip", "ratings.dat", "::"),
    ),
    Dataset(
        name="criteo-sample",
        description="A few hundred rows of the Criteo display-advertising CTR data (label, I1-I13, C1-C26), the "
                    "sample DeepCTR ships; the full data (45M rows, about 11 GB) is on Kaggle",
        source="Criteo Display Advertising Challenge, Kaggle 2014 (https://www.kaggle.com/c/criteo-display-ad-challenge); "
               "sample from https://github.com/shenweichen/DeepCTR (examples/criteo_sample.txt)",
        files=(RemoteFile("criteo_sample.txt", f"{_DEEPCTR}/criteo_sample.txt"),),
        format="ctr-csv",
        data="criteo_sample.txt",
    ),
    Dataset(
        name="avazu-sample",
        description="About 100 rows of the Avazu mobile-ads CTR data (id, click, hour, C1 ... C21), the sample "
                    "DeepCTR ships; the full data (40M rows, several GB) is on Kaggle",
        source="Avazu Click-Through Rate Prediction, Kaggle 2014 (https://www.kaggle.com/c/avazu-ctr-prediction); "
               "sample from https://github.com/shenweichen/DeepCTR (examples/avazu_sample.txt)",
        files=(RemoteFile("avazu_sample.txt", f"{_DEEPCTR}/avazu_sample.txt"),),
        format="ctr-csv",
        data="avazu_sample.txt",
    ),
)
"""Every dataset :func:`fetch` knows, in the order ``embnas data list`` shows them."""

_BY_NAME = {d.name: d for d in CATALOG}


def names() -> tuple[str, ...]:
    """The catalog's dataset names."""
    return tuple(_BY_NAME)


def get_dataset(name: str) -> Dataset:
    """The catalog entry called ``name``.

    Raises:
        ValueError: no such dataset; the message lists the known names.
    """
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(names())}") from None


def cache_state(dataset: Dataset, cache: PathLike | None = None) -> str:
    """``"yes"`` when every file and converted output is in the cache, ``"partial"`` when some are, else ``"no"``.

    Only checks that the files exist (no hashing), so listing stays instant;
    :func:`fetch` verifies them.
    """
    folder = cache_dir(cache) / dataset.name
    wanted = [folder / n for n in dataset.outputs]
    if dataset.converter is not None:
        wanted.append(folder / _MARKER)
    present = [p.exists() for p in wanted]
    if all(present):
        return "yes"
    started = any(present) or any((folder / f"{f.name}.part").exists() for f in dataset.files)
    return "partial" if started else "no"


def fetch(
    name: str | Dataset,
    cache: PathLike | None = None,
    *,
    mirror: str | None = None,
    force: bool = False,
    progress: bool = True,
    retries: int = 3,
    timeout: float = 60.0,
) -> Fetched:
    """Download, verify and convert a catalog dataset into ``<cache>/<name>/``.

    Files already there with the expected hash are not fetched again, an
    interrupted download resumes, and a finished conversion whose inputs did
    not change is not redone, so running it twice costs one hash per file.

    Args:
        name: a catalog name (:func:`names`), or a :class:`Dataset` of one's own.
        cache: the cache folder (default ``$EMBNAS_CACHE``, else ``~/.cache/embnas``).
        mirror: base URL (or folder) serving ``<name>/<file>`` instead of the
            upstream URLs (default ``$EMBNAS_MIRROR``, else upstream).
        force: fetch every file and convert again even if complete; the hashes
            are still checked, recorded ones included, and a file in the cache
            stays until a verified download replaces it.
        progress: a progress bar per downloaded file.
        retries: see :func:`recsys.data.download.download`.
        timeout: seconds without an answer or a byte before a try fails.

    Returns:
        Where the data is and what was done.

    Raises:
        ValueError: ``name`` is not in the catalog.
        recsys.data.download.DownloadError: a file cannot be fetched or does not match its hash.
        DataError: an archive is malformed or unsafe.
    """
    dataset = name if isinstance(name, Dataset) else get_dataset(name)
    folder = cache_dir(cache) / dataset.name
    folder.mkdir(parents=True, exist_ok=True)
    base = mirror_base(mirror)
    sums = folder / SUMS_FILE
    recorded = _read_sums(sums)
    digests: dict[str, str] = {}
    downloaded: list[str] = []
    for remote in dataset.files:
        dest = folder / remote.name
        expected = remote.sha256 or recorded.get(remote.name)
        if force:  # start afresh, but keep the old file until a verified one replaces it
            dest.with_name(dest.name + ".part").unlink(missing_ok=True)
        elif dest.exists() and expected is not None and file_sha256(dest) == expected:
            digests[remote.name] = expected
            continue
        url = mirror_url(base, f"{dataset.name}/{remote.name}") if base else remote.url
        hint = ("the server sent other content than the one pinned in the catalog: check the URL or the mirror"
                if remote.pinned or expected is None else
                f"the hash was recorded in {sums} when the file was first downloaded; if the upstream file "
                f"really changed, delete {sums} and download again")
        digests[remote.name] = download(url, dest, sha256=expected, size=remote.size, progress=progress,
                                        retries=retries, timeout=timeout, mismatch_hint=hint)
        downloaded.append(remote.name)
        if recorded.get(remote.name) != digests[remote.name]:
            recorded[remote.name] = digests[remote.name]
            _write_sums(sums, recorded)
    converted = _convert(dataset, folder, digests, force)
    return Fetched(dataset, folder, folder / dataset.data if dataset.data else folder, tuple(downloaded), converted)


def _convert(dataset: Dataset, folder: Path, digests: dict[str, str], force: bool) -> bool:
    """Run the dataset's converter unless its marker says the same inputs were already converted."""
    converter = dataset.converter
    if converter is None:
        return False
    marker = folder / _MARKER
    inputs = {n: digests[n] for n in converter.inputs}
    if not force and marker.exists() and all((folder / n).exists() for n in converter.outputs):
        try:
            if json.loads(marker.read_text()).get("inputs") == inputs:
                return False
        except (OSError, ValueError):
            pass  # an unreadable marker: convert again
    marker.unlink(missing_ok=True)
    converter.convert(folder)
    _write_atomic(marker, json.dumps({"inputs": inputs, "outputs": list(converter.outputs)}, indent=1).encode())
    return True


def extract_zip(archive: Path, folder: Path) -> list[Path]:
    """Extract every file member of ``archive`` into ``folder``, dropping a single top folder shared by all.

    Members are checked before anything is written: an absolute path, a drive
    letter or a ``..`` component (a "zip slip", which would write outside
    ``folder``) rejects the whole archive. Each file is written atomically.

    Returns:
        The paths written.

    Raises:
        DataError: an unreadable or unsafe archive, naming the member.
    """
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            parts = [_safe_parts(m.filename, archive) for m in members]
            tops = {p[0] for p in parts}
            strip = 1 if len(tops) == 1 and all(len(p) > 1 for p in parts) else 0
            written = []
            for member, p in zip(members, parts):
                target = folder.joinpath(*p[strip:])
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f".{target.name}.tmp")
                with zf.open(member) as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                os.replace(tmp, target)
                written.append(target)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise DataError(f"not a readable zip archive ({exc}); delete it and download again", archive) from exc
    return written


def _safe_parts(name: str, archive: Path) -> tuple[str, ...]:
    """The path components of a zip member, refusing any that could land outside the target folder."""
    unix = name.replace("\\", "/")
    parts = tuple(p for p in PurePosixPath(unix).parts if p not in ("", "."))
    if unix.startswith("/") or re.match(r"[A-Za-z]:", unix) or ".." in parts or not parts:
        raise DataError(f"unsafe member {name!r} (absolute path or '..'); nothing was extracted", archive)
    return parts


def _read_sums(path: Path) -> dict[str, str]:
    """The hashes recorded in a ``SHA256SUMS`` file (``<hex>  <name>`` lines); empty if there is none."""
    if not path.exists():
        return {}
    sums = {}
    for line in path.read_text().splitlines():
        digest, _, name = line.partition("  ")
        if _SHA256.fullmatch(digest) and name:
            sums[name.lstrip("*")] = digest
    return sums


def _write_sums(path: Path, sums: dict[str, str]) -> None:
    _write_atomic(path, "".join(f"{d}  {n}\n" for n, d in sorted(sums.items())).encode())


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename, so ``path`` is never half written."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)

