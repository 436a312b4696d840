"""Fuzzing every file loader: malformed input raises the project's own errors, naming the file.

Each target writes a file (or a folder of files) built by hypothesis to a temporary
folder and loads it. The inputs are valid files mutated at the byte level (bits
flipped, bytes inserted or deleted, truncation, gzip or corrupt gzip) and at the
line and field level (a field replaced by a huge number, an empty, a NUL, invalid
UTF-8, a ``\\r``, a very long run; a field dropped or added; a line dropped or
repeated), plus plain random bytes. A load may succeed; when it fails, the error
must be a :class:`recsys.errors.DataError` (or an :class:`nas.core.errors.EmbnasError`)
whose message is one bounded line naming the file. Anything else (a ``ValueError``
from numpy, an ``IndexError``, ...) is a loader bug: hypothesis shrinks it to a
small failing file.

The default profile runs :data:`DEFAULT_CASES` cases per target; the ``slow``
profile :data:`SLOW_CASES`. Both are derandomised (the same cases on every run);
each test prints how many cases it ran (``pytest -s``).
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nas.core.errors import EmbnasError
from recsys.data import (
    load_ctr_csv,
    load_interactions_csv,
    load_lightgcn,
    load_movielens_ctr,
)
from recsys.errors import DataError

DEFAULT_CASES = 100
"""Cases per target in the default suite (about a second or two per target)."""

SLOW_CASES = 10_000
"""Cases per target in the ``slow`` profile."""

MAX_MESSAGE = 3_000
"""Longest error message accepted: quoted fields are cut, so a message stays short whatever the input."""

# Payloads inserted into or substituted for a field: numbers around every limit, empties,
# control characters, invalid UTF-8, line ends, separators and very long runs.
SPECIALS: tuple[bytes, ...] = (
    b"", b" ", b"0", b"-1", b"-0", b"+1", b"1.5", b"1e3", b"nan", b"inf", b"-inf", b"1e309", b"0x1f",
    b"2147483646", b"2147483647", b"9223372036854775806", b"9223372036854775807", b"18446744073709551616",
    b"9" * 25, b"9" * 4_301, b"0" * 5_000 + b"7", b"1" * 100_000, b"x" * 100_000, b"1 " * 20_000,
    b"1," * 20_000, b"\t" * 1_000, b"\x00", b"\x00" * 64, b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xef\xbb\xbf",
    b"\r", b"\r\n", b"\n", b"\n\n", b"\r\r", b"\t", b",", b";", b"|", b":", b"\x0b", b"\x0c", b"\x1f\x8b",
    "é".encode(), "٣".encode(), "１".encode(), "\u2028".encode(), b"'", b'"', b"\\", b"#",
)

SEPARATORS = (",", "\t", ";", "|")


def payloads() -> st.SearchStrategy[bytes]:
    return st.one_of(st.sampled_from(SPECIALS), st.binary(max_size=8))


def _mutate(draw: st.DrawFn, data: bytes, sep: bytes) -> bytes:
    """Up to four byte-level or structure-aware mutations of ``data``."""
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(
            ("flip", "insert", "delete", "truncate", "field", "drop_field", "add_field", "dup_line", "drop_line")
        ))
        pos = draw(st.integers(0, 1 << 16)) % (len(data) + 1)
        if op == "flip" and data:
            at = pos % len(data)
            data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
        elif op == "insert":
            data = data[:pos] + draw(payloads()) + data[pos:]
        elif op == "delete":
            data = data[:pos] + data[pos + draw(st.integers(1, 16)) :]
        elif op == "truncate":
            data = data[:pos]
        else:
            lines = data.split(b"\n")
            k = pos % len(lines)
            fields = lines[k].split(sep)
            j = draw(st.integers(0, 64)) % len(fields)
            if op == "field":
                fields[j] = draw(payloads())
            elif op == "drop_field":
                del fields[j]
            elif op == "add_field":
                fields.insert(j, draw(payloads()))
            if op == "dup_line":
                lines.insert(k, lines[k])
            elif op == "drop_line":
                del lines[k]
            else:
                lines[k] = sep.join(fields)
            data = b"\n".join(lines)
    return data


def _pack(draw: st.DrawFn, data: bytes, sep: bytes, name: str) -> tuple[str, bytes]:
    """Mutate ``data``, then maybe gzip it (named ``.gz``, or not), and maybe corrupt the gzip stream."""
    data = _mutate(draw, data, sep)
    mode = draw(st.sampled_from(("plain", "plain", "plain", "gz", "gz-unnamed", "gz-corrupt", "named-gz")))
    if mode == "plain":
        return name, data
    if mode == "named-gz":  # a .gz name on plain text
        return name + ".gz", data
    packed = gzip.compress(data, mtime=0)
    if mode == "gz-corrupt":
        packed = _mutate(draw, packed, b"\x00")
    return (name if mode == "gz-unnamed" else name + ".gz"), packed


def _sep_option(draw: st.DrawFn, sep: str, suffix: str) -> str | None:
    """The ``sep`` argument: the file's, ``None`` where the suffix implies it, now and then a wrong or empty one."""
    choice = draw(st.sampled_from(("given", "given", "default", "wrong")))
    if choice == "default" and suffix != ".txt":
        return None
    if choice == "wrong":
        return draw(st.sampled_from(["", *(s for s in SEPARATORS if s != sep)]))
    return sep


def _text(rows: Sequence[Sequence[object]], sep: str, eol: str, tail: bool) -> bytes:
    body = eol.join(sep.join(map(str, row)) for row in rows)
    return (body + (eol if tail else "")).encode()


# -- one strategy per loader: (files to write, keyword arguments) -------------------------------------------


@st.composite
def lightgcn_cases(draw: st.DrawFn) -> tuple[dict[str, bytes], dict[str, object]]:
    files: dict[str, bytes] = {}
    names: dict[str, list[str]] = {"train": [], "valid": [], "test": []}
    eol = draw(st.sampled_from(("\n", "\r\n")))
    for split in ("train", "valid", "test"):
        for n in range(draw(st.integers(1 if split == "train" else 0, 2))):
            users = draw(st.lists(st.integers(0, 30), max_size=8, unique=True))
            rows = [[u, *draw(st.lists(st.integers(0, 40), max_size=6, unique=True))] for u in users]
            text = _text(rows, " ", eol, draw(st.booleans()))
            if draw(st.integers(0, 9)) == 0:
                text = draw(st.binary(max_size=64))  # random bytes now and then
            name, data = _pack(draw, text, b" ", f"{split}{n}.txt")
            files[name] = data
            names[split].append(name)
    options = {"cold": draw(st.sampled_from(("keep", "drop"))), "remap": draw(st.booleans())}
    return files, {"names": names, **options}


@st.composite
def interaction_cases(draw: st.DrawFn) -> tuple[dict[str, bytes], dict[str, object]]:
    sep = draw(st.sampled_from(SEPARATORS))
    pairs = draw(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 30)), max_size=12, unique=True))
    rows = [["user_id", "item_id", "rating"]] + [[u, i, draw(st.sampled_from((1, 3, 4.5, 5)))] for u, i in pairs]
    text = _text(rows, sep, draw(st.sampled_from(("\n", "\r\n"))), draw(st.booleans()))
    if draw(st.integers(0, 9)) == 0:
        text = b"user_id,item_id,rating\n" + draw(st.binary(max_size=64))
    suffix = {",": ".csv", "\t": ".tsv"}.get(sep, ".txt")
    name, data = _pack(draw, text, sep.encode(), "inter" + suffix)
    rating = draw(st.sampled_from((None, "rating")))
    options: dict[str, object] = {
        "sep": _sep_option(draw, sep, suffix),
        "rating_col": rating,
        "min_rating": 3.0 if rating is not None and draw(st.booleans()) else None,
        "seed": draw(st.integers(0, 3)),
    }
    return {name: data}, {"name": name, **options}


@st.composite
def ctr_cases(draw: st.DrawFn) -> tuple[dict[str, bytes], dict[str, object]]:
    sep = draw(st.sampled_from(SEPARATORS))
    threshold = draw(st.sampled_from((None, 0.5)))
    labels = ("0", "1") if threshold is None else ("0", "1", "0.2", "3")
    row = st.tuples(
        st.sampled_from(labels),
        st.sampled_from(("a", "b", "", "ccc")),
        st.sampled_from(("", "0", "1", "2.5", "3", "100", "-1")),
        st.sampled_from(("x", "y", "")),
    )
    rows = [["label", "c1", "n1", "c2"], *draw(st.lists(row, max_size=12))]
    text = _text(rows, sep, draw(st.sampled_from(("\n", "\r\n"))), draw(st.booleans()))
    if draw(st.integers(0, 9)) == 0:
        text = b"label,c1,n1,c2\n" + draw(st.binary(max_size=64))
    suffix = {",": ".csv", "\t": ".tsv"}.get(sep, ".txt")
    name, data = _pack(draw, text, sep.encode(), "clicks" + suffix)
    options: dict[str, object] = {
        "sep": _sep_option(draw, sep, suffix),
        "label_threshold": threshold,
        "oov_threshold": draw(st.integers(0, 2)),
        "chunk_rows": draw(st.sampled_from((1, 2, 3, 100_000))),
        "seed": draw(st.integers(0, 3)),
    }
    return {name: data}, {"name": name, **options}


@st.composite
def movielens_cases(draw: st.DrawFn) -> tuple[dict[str, bytes], dict[str, object]]:
    users = draw(st.lists(st.integers(1, 9), min_size=1, max_size=5, unique=True))
    items = draw(st.lists(st.integers(1, 9), min_size=1, max_size=5, unique=True))
    user_rows = [["user_id:token", "age:token", "gender:token", "occupation:token", "zip_code:token"]]
    user_rows += [[u, draw(st.sampled_from((18, 25, 40))), draw(st.sampled_from("MF")), "other", "12345"] for u in users]
    item_rows = [["item_id:token", "movie_title:token_seq", "release_year:token", "class:token_seq"]]
    item_rows += [[i, "A Film", draw(st.sampled_from((1995, 2001))), draw(st.sampled_from(("Action", "Comedy Drama", "")))]
                  for i in items]
    inter_rows = [["user_id:token", "item_id:token", "rating:float", "timestamp:float"]]
    inter_rows += [[u, i, draw(st.sampled_from((1, 4, 5))), 881250949]
                   for u, i in draw(st.lists(st.tuples(st.sampled_from(users), st.sampled_from(items)), max_size=12))]
    files: dict[str, bytes] = {}
    for kind, rows in (("user", user_rows), ("item", item_rows), ("inter", inter_rows)):
        text = _text(rows, "\t", "\n", True)
        keep = draw(st.integers(0, 19))
        if keep == 0:  # a missing file now and then
            continue
        if keep > 10:  # each file is left valid about half of the time
            files[f"ml.{kind}"] = text
        else:
            name, data = _pack(draw, text, b"\t", f"ml.{kind}")
            files[name] = data
    options = {"chunk_rows": draw(st.sampled_from((1, 3, 100_000))), "oov_threshold": draw(st.integers(0, 2))}
    return files, options


def _load_lightgcn(folder: Path, options: dict[str, object]) -> object:
    names = options["names"]
    paths = {split: [folder / n for n in names[split]] or None for split in ("train", "valid", "test")}  # type: ignore[index]
    return load_lightgcn(paths["train"], paths["valid"], paths["test"], cold=options["cold"], remap=options["remap"])


def _load_interactions(folder: Path, options: dict[str, object]) -> object:
    kw = {k: v for k, v in options.items() if k != "name"}
    return load_interactions_csv(folder / str(options["name"]), user_col="user_id", item_col="item_id", **kw)


def _load_ctr(folder: Path, options: dict[str, object]) -> object:
    kw = {k: v for k, v in options.items() if k != "name"}
    return load_ctr_csv(folder / str(options["name"]), label="label", categorical=["c1", "c2"], numeric=["n1"], **kw)


def _load_movielens(folder: Path, options: dict[str, object]) -> object:
    return load_movielens_ctr(folder, dataset="ml", **options)


TARGETS: dict[str, tuple[Callable[[], st.SearchStrategy], Callable[[Path, dict[str, object]], object]]] = {
    "lightgcn": (lightgcn_cases, _load_lightgcn),
    "interactions_csv": (interaction_cases, _load_interactions),
    "ctr_csv": (ctr_cases, _load_ctr),
    "movielens_ctr": (movielens_cases, _load_movielens),
}


def _fuzz(target: str, cases: int, tmp_path: Path) -> int:
    """Run ``cases`` derandomised cases against one loader; return how many ran."""
    strategy, load = TARGETS[target]
    ran = 0

    @settings(max_examples=cases, derandomize=True, deadline=None, database=None, print_blob=True,
              suppress_health_check=list(HealthCheck))
    @given(strategy())
    def case(made: tuple[dict[str, bytes], dict[str, object]]) -> None:
        nonlocal ran
        ran += 1
        files, options = made
        folder = Path(tempfile.mkdtemp(dir=tmp_path))
        try:
            for name, data in files.items():
                (folder / name).write_bytes(data)
            try:
                load(folder, options)
            except (DataError, EmbnasError) as error:
                message = str(error)
                named = [str(folder / name) for name in files] + [str(folder)]
                assert any(path in message for path in named), f"the error names no file: {message[:300]}"
                assert "\n" not in message, f"the error is not one line: {message[:300]!r}"
                assert len(message) < MAX_MESSAGE, f"the error is {len(message):,} characters: {message[:300]}"
        finally:
            shutil.rmtree(folder)

    case()
    return ran


@pytest.mark.parametrize("cases", [DEFAULT_CASES, pytest.param(SLOW_CASES, marks=pytest.mark.slow, id="slow")])
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_fuzz_loader_raises_only_data_errors(target: str, cases: int, tmp_path: Path) -> None:
    start = time.perf_counter()
    ran = _fuzz(target, cases, tmp_path)
    profile = " (slow)" if cases == SLOW_CASES else ""
    print(f"\nfuzz {target}{profile}: {ran} cases in {time.perf_counter() - start:.1f} s")
    assert ran == cases
