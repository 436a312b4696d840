"""load_lightgcn on small files: format, gzip, concatenation, cold policy, remap, every error."""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.data import load_lightgcn, pairs_to_csr
from recsys.errors import DataError


def _write(path: Path, text: str, gz: bool | None = None) -> Path:
    data = text.encode()
    if gz if gz is not None else path.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path


def _pairs(m) -> set[tuple[int, int]]:  # type: ignore[no-untyped-def]
    coo = m.tocoo()
    return set(zip(coo.row.tolist(), coo.col.tolist()))


def test_basic_format_blank_lines_crlf_and_user_only_lines(tmp_path: Path) -> None:
    train = _write(tmp_path / "train.txt", "0 1 2\r\n\n1\t3 0\n  2 2  \n")
    test = _write(tmp_path / "test.txt.gz", "0 3\n3\n1 1\n")  # user 3 has no test item
    d = load_lightgcn(train, test=test)
    assert (d.n_users, d.n_items) == (4, 4)
    assert _pairs(d.train) == {(0, 1), (0, 2), (1, 0), (1, 3), (2, 2)}
    assert _pairs(d.test) == {(0, 3), (1, 1)}
    assert d.valid.nnz == 0 and d.valid.shape == (4, 4)
    assert d.name == tmp_path.name and d.user_ids is None and d.item_ids is None
    assert d.user_frequency.tolist() == [2, 2, 1, 0]


def test_gzip_detected_by_magic_bytes_and_by_name(tmp_path: Path) -> None:
    plain = load_lightgcn(_write(tmp_path / "a.txt", "0 1 2\n1 0\n"))
    magic = load_lightgcn(_write(tmp_path / "b.txt", "0 1 2\n1 0\n", gz=True))
    named = load_lightgcn(_write(tmp_path / "c.txt.gz", "0 1 2\n1 0\n"))
    assert plain.fingerprint() == magic.fingerprint() == named.fingerprint()


def test_several_files_concatenate(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.txt", "0 1\n1 2\n")
    b = _write(tmp_path / "b.txt", "0 3\n2 0\n")
    d = load_lightgcn([a, b], name="cat")
    assert d.name == "cat" and _pairs(d.train) == {(0, 1), (0, 3), (1, 2), (2, 0)}


def test_cold_keep_and_drop(tmp_path: Path) -> None:
    train = _write(tmp_path / "train.txt", "0 0 1\n1 1 2\n")
    valid = _write(tmp_path / "valid.txt", "0 2 5\n1 0\n")  # item 5 is cold
    test = _write(tmp_path / "test.txt", "0 4\n2 1\n1 3\n")  # items 3, 4 and user 2 are cold
    keep = load_lightgcn(train, valid, test)
    assert keep.cold_policy == "keep" and (keep.n_users, keep.n_items) == (3, 6)
    assert keep.valid.nnz == 3 and keep.test.nnz == 3
    assert keep.item_frequency[3:].tolist() == [0, 0, 0] and keep.user_frequency[2] == 0
    assert any("kept 1 valid" in n for n in keep.notes) and any("kept 3 test" in n for n in keep.notes)

    drop = load_lightgcn(train, valid, test, cold="drop")
    assert drop.cold_policy == "drop" and (drop.n_users, drop.n_items) == (2, 3)
    assert _pairs(drop.valid) == {(0, 2), (1, 0)} and drop.test.nnz == 0
    assert "dropped 1 valid pairs" in drop.notes[0] and "1 cold items, 0 cold users" in drop.notes[0]
    assert "dropped 3 test pairs" in drop.notes[1] and "2 cold items, 1 cold users" in drop.notes[1]

    with pytest.raises(ValueError, match="'keep', 'drop'"):
        load_lightgcn(train, cold="ignore")


def test_drop_removes_gaps_in_train_ids_too(tmp_path: Path) -> None:
    train = _write(tmp_path / "train.txt", "0 0 3\n")  # items 1, 2 have no train pair
    test = _write(tmp_path / "test.txt", "0 1 2\n")
    assert load_lightgcn(train, test=test, cold="drop").test.nnz == 0
    assert load_lightgcn(train, test=test, cold="keep").test.nnz == 2


def test_remap_renumbers_sorted_original_ids(tmp_path: Path) -> None:
    train = _write(tmp_path / "train.txt", "10 500 7\n3 7\n")
    test = _write(tmp_path / "test.txt", "10 9000\n3 500\n")
    d = load_lightgcn(train, test=test, remap=True)
    assert d.user_ids.tolist() == [3, 10] and d.item_ids.tolist() == [7, 500, 9000]
    assert _pairs(d.train) == {(1, 1), (1, 0), (0, 0)} and _pairs(d.test) == {(1, 2), (0, 1)}
    dropped = load_lightgcn(train, test=test, remap=True, cold="drop")
    assert dropped.item_ids.tolist() == [7, 500] and _pairs(dropped.test) == {(0, 1)}


def test_overlap_between_splits_is_noted(tmp_path: Path) -> None:
    d = load_lightgcn(_write(tmp_path / "a.txt", "0 1 2\n"), test=_write(tmp_path / "b.txt", "0 2\n"))
    assert "1 pairs are in both train and test" in d.notes


# ---- errors: every one names the file and the 1-based line -----------------------------------


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("0 1 2\n1 abc\n", 2, "'abc'"),
        ("0 1\n1 2\n\n2 1.5 3\n", 4, "'1.5'"),
        ("0 1\n1 -2\n", 2, "negative id -2"),
        ("0 1 2\n-1 3\n", 2, "negative id -1"),
        ("0 1 x7\n", 1, "'x7'"),
        ("0 1\n1 2 3 2\n", 2, "item 2 appears twice"),
        ("0 1\n1 2\n0 3\n", 3, "user 0 already has a line (line 1)"),
        ("0 1\n1 99999999999999999999\n", 2, "too large"),
        ("0 1\n1 5000000000\n", 2, "remap=True"),
        ("0 1\n1 2\xe9\n", 2, "not a non-negative integer"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    path = _write(tmp_path / "bad.txt", text)
    with pytest.raises(DataError) as info:
        load_lightgcn(path)
    assert f"{path}:{line}: " in str(info.value) and words in str(info.value)
    assert info.value.line == line and info.value.path == str(path)


def test_large_ids_load_with_remap(tmp_path: Path) -> None:
    d = load_lightgcn(_write(tmp_path / "a.txt", "0 1\n1 5000000000\n"), remap=True)
    assert d.item_ids.tolist() == [1, 5000000000]


@pytest.mark.parametrize("text", ["", "\n\n  \n", " \t\r\n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path / "empty.txt", text)
    with pytest.raises(DataError, match="empty") as info:
        load_lightgcn(path)
    assert str(path) in str(info.value)


def test_train_without_pairs(tmp_path: Path) -> None:
    path = _write(tmp_path / "users.txt", "0\n1\n")
    with pytest.raises(DataError, match="no \\(user, item\\) pair") as info:
        load_lightgcn(path)
    assert str(path) in str(info.value)


def test_duplicate_pair_across_files_of_one_split(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.txt", "0 1\n1 2\n")
    b = _write(tmp_path / "b.txt", "2 0\n\n1 2\n")
    with pytest.raises(DataError) as info:
        load_lightgcn([a, b])
    assert f"{b}:3: " in str(info.value) and f"already given in {a}:2" in str(info.value)


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(DataError, match="file not found") as info:
        load_lightgcn(missing)
    assert str(missing) in str(info.value)
    garbage = tmp_path / "bad.txt.gz"
    garbage.write_bytes(b"0 1 2\n")  # named .gz but not gzip
    with pytest.raises(DataError, match="unreadable gzip") as info:
        load_lightgcn(garbage)
    assert str(garbage) in str(info.value)
    truncated = tmp_path / "cut.txt"
    truncated.write_bytes(gzip.compress(b"0 1 2\n" * 100)[:30])  # gzip magic, then cut short
    with pytest.raises(DataError, match="unreadable gzip"):
        load_lightgcn(truncated)
    with pytest.raises(DataError, match="not a regular file"):
        load_lightgcn(tmp_path)
    good = _write(tmp_path / "good.txt", "0 1\n")
    with pytest.raises(DataError, match="file not found"):
        load_lightgcn(good, test=missing)


# ---- properties ----------------------------------------------------------------------------


@st.composite
def interaction_sets(draw: st.DrawFn) -> tuple[int, int, set[tuple[int, int]]]:
    n_users = draw(st.integers(1, 12))
    n_items = draw(st.integers(1, 15))
    pairs = draw(st.sets(st.tuples(st.integers(0, n_users - 1), st.integers(0, n_items - 1)), min_size=1))
    return n_users, n_items, pairs


def _lightgcn_text(pairs: set[tuple[int, int]], n_users: int, rng: np.random.Generator) -> list[str]:
    """One line per user (item-less users get a bare id), random order, random whitespace, blank lines."""
    lines = []
    for u in rng.permutation(n_users).tolist():
        items = [i for (v, i) in pairs if v == u]
        rng.shuffle(items)
        tokens = [str(u)] + [str(i) for i in items]
        seps = rng.choice([" ", "  ", "\t"], size=len(tokens))
        lines.append("".join(s + t if k else t for k, (s, t) in enumerate(zip(seps, tokens))))
        if rng.random() < 0.2:
            lines.append("")
    return lines


@settings(max_examples=40, deadline=None)
@given(interaction_sets(), st.booleans(), st.integers(0, 2**16))
def test_roundtrip_lightgcn(case: tuple[int, int, set[tuple[int, int]]], gz: bool, seed: int) -> None:
    n_users, n_items, pairs = case
    rng = np.random.default_rng(seed)
    u, i = np.array(sorted(pairs)).T
    expected = pairs_to_csr(u, i, (n_users, int(i.max()) + 1))
    with tempfile.TemporaryDirectory() as tmp:
        text = "\n".join(_lightgcn_text(pairs, n_users, rng)) + "\n"
        path = _write(Path(tmp) / ("train.txt.gz" if gz else "train.txt"), text)
        d = load_lightgcn(path)
    assert d.train.shape == expected.shape
    assert (d.train != expected).nnz == 0
    assert np.array_equal(d.train.indptr, expected.indptr) and np.array_equal(d.train.indices, expected.indices)


BAD_TOKENS = ["abc", "1.5", "-3", "x", "1e5", "0x1f", "+4", "3,", "nan", "\u0661"]


@settings(max_examples=60, deadline=None)
@given(interaction_sets(), st.integers(0, 2**16), st.sampled_from(BAD_TOKENS), st.data())
def test_corrupt_line_is_named(
    case: tuple[int, int, set[tuple[int, int]]], seed: int, bad: str, data: st.DataObject
) -> None:
    n_users, _, pairs = case
    lines = _lightgcn_text(pairs, n_users, np.random.default_rng(seed))
    k = data.draw(st.integers(0, len(lines) - 1))
    tokens = lines[k].split()
    at = data.draw(st.integers(0, len(tokens)))
    lines[k] = " ".join(tokens[:at] + [bad] + tokens[at + 1 :])
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp) / "train.txt", "\n".join(lines) + "\n")
        with pytest.raises(DataError) as info:
            load_lightgcn(path)
    assert info.value.line == k + 1
    assert f"{path}:{k + 1}: " in str(info.value)
