"""load_interactions_csv on small files: headers, separators, rating filter, split, every error."""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.data import load_interactions_csv
from recsys.data.tabular import default_sep
from recsys.errors import DataError


def _write(path: Path, text: str) -> Path:
    data = text.encode()
    path.write_bytes(gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)
    return path


def _original_pairs(d, split: str) -> set[tuple[int, int]]:  # type: ignore[no-untyped-def]
    coo = getattr(d, split).tocoo()
    return set(zip(d.user_ids[coo.row].tolist(), d.item_ids[coo.col].tolist()))


def test_default_sep() -> None:
    assert default_sep("a.tsv") == default_sep("a.inter.gz") == default_sep("A.INTER") == "\t"
    assert default_sep("a.csv") == default_sep("a.csv.gz") == default_sep("a.txt") == ","


def test_recbole_header_matches_by_prefix_and_remaps(tmp_path: Path) -> None:
    text = "user_id:token\titem_id:token\trating:float\n7\t100\t5\n7\t30\t3\n2\t100\t4\n"
    d = load_interactions_csv(_write(tmp_path / "toy.inter", text), user_col="user_id", item_col="item_id",
                              split=(1.0, 0.0, 0.0))
    assert d.name == "toy" and (d.n_users, d.n_items) == (2, 2)
    assert d.user_ids.tolist() == [2, 7] and d.item_ids.tolist() == [30, 100]
    assert _original_pairs(d, "train") == {(7, 100), (7, 30), (2, 100)}
    assert d.valid.nnz == d.test.nnz == 0 and d.cold_policy == "keep"


def test_exact_column_name_wins_and_rating_filter(tmp_path: Path) -> None:
    text = "u,i,r\n1,1,5\n1,2,3.5\n2,1,4\n3,3,1\n\n"
    path = _write(tmp_path / "r.csv.gz", text)
    d = load_interactions_csv(path, user_col="u", item_col="i", rating_col="r", min_rating=4, split=(1, 0, 0))
    assert _original_pairs(d, "train") == {(1, 1), (2, 1)}
    assert "kept 2 of 4 rows with r >= 4" in d.notes
    all_rows = load_interactions_csv(path, user_col="u", item_col="i", rating_col="r", split=(1, 0, 0))
    assert all_rows.train.nnz == 4
    with pytest.raises(ValueError, match="rating_col"):
        load_interactions_csv(path, user_col="u", item_col="i", min_rating=4)
    with pytest.raises(DataError, match="no row has r >= 9"):
        load_interactions_csv(path, user_col="u", item_col="i", rating_col="r", min_rating=9)


def test_split_is_per_user_seeded_and_keeps_a_train_pair(tmp_path: Path) -> None:
    rows = [(u, i) for u in range(30) for i in range(u % 7 + 1)]  # users with 1..7 pairs
    rows += [(100, i) for i in range(50)]
    text = "user;item\n" + "\n".join(f"{u};{i}" for u, i in rows)
    path = _write(tmp_path / "s.txt", text)
    a = load_interactions_csv(path, user_col="user", item_col="item", sep=";", seed=3)
    b = load_interactions_csv(path, user_col="user", item_col="item", sep=";", seed=3)
    c = load_interactions_csv(path, user_col="user", item_col="item", sep=";", seed=4)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert (a.user_frequency >= 1).all()
    parts = [_original_pairs(a, s) for s in ("train", "valid", "test")]
    assert set.union(*parts) == set(rows) and sum(map(len, parts)) == len(rows)
    big = a.user_ids.tolist().index(100)
    assert (a.train[big].nnz, a.valid[big].nnz, a.test[big].nnz) == (40, 5, 5)
    with pytest.raises(ValueError, match="sum to 1"):
        load_interactions_csv(path, user_col="user", item_col="item", sep=";", split=(0.5, 0.2, 0.2))


# ---- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("u,i\n1,2\n3,abc\n", 3, "'abc'"),
        ("u,i\n1,2\n\n1.5,3\n", 4, "'1.5'"),
        ("u,i\n1,2\n-4,3\n", 3, "negative id -4"),
        ("u,i\n1,2\n3,4,5\n", 3, "expected 2 fields"),
        ("u,i\n1,2\n3\n", 3, "found 1"),
        ("u,i\n1,2\n3,\n", 3, "empty i field"),
        ("u,i\n1,2\n3,4 5\n", 3, "expected one integer id in i"),
        ("u,i\n1,2\n3,4\n1,2\n", 4, "duplicate pair (user 1, item 2), first given on line 2"),
        ("u,i,r\n1,2,4\n3,4,high\n", 3, "'high'"),
        ("u,i,r\n1,2,4\n3,4,nan\n", 3, "not a finite number"),
        ("u,i,r\n1,2,\n", 2, "not a finite number"),
        ("x,y\n1,2\n", 1, "columns found: 'x', 'y'"),
        ("\n\nu,i\n1,2\n2,a\n", 5, "'a'"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    path = _write(tmp_path / "bad.csv", text)
    rating = "r" if text.lstrip().startswith("u,i,r") else None
    with pytest.raises(DataError) as info:
        load_interactions_csv(path, user_col="u", item_col="i", rating_col=rating)
    assert f"{path}:{line}: " in str(info.value) and words in str(info.value)
    assert info.value.line == line


@pytest.mark.parametrize(("text", "words"), [("", "empty"), ("\n \n", "empty"), ("u,i\n\n", "no data rows")])
def test_empty_files(tmp_path: Path, text: str, words: str) -> None:
    path = _write(tmp_path / "e.csv", text)
    with pytest.raises(DataError, match=words) as info:
        load_interactions_csv(path, user_col="u", item_col="i")
    assert str(path) in str(info.value)


def test_missing_and_unreadable(tmp_path: Path) -> None:
    missing = tmp_path / "none.csv"
    with pytest.raises(DataError, match="file not found") as info:
        load_interactions_csv(missing, user_col="u", item_col="i")
    assert str(missing) in str(info.value)
    bad = tmp_path / "x.csv.gz"
    bad.write_bytes(b"\x1f\x8b\x08garbage")
    with pytest.raises(DataError, match="unreadable gzip") as info:
        load_interactions_csv(bad, user_col="u", item_col="i")
    assert str(bad) in str(info.value)
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"u,i\n1,2\n3,\xe9\n")
    with pytest.raises(DataError, match="not UTF-8") as info:
        load_interactions_csv(latin, user_col="u", item_col="i")
    assert f"{latin}:3: " in str(info.value)


def test_ambiguous_prefix(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.csv", "u:token,u:float,i\n1,2,3\n")
    with pytest.raises(DataError, match="ambiguous"):
        load_interactions_csv(path, user_col="u", item_col="i")
    assert load_interactions_csv(path, user_col="u:float", item_col="i").user_ids.tolist() == [2]


# ---- properties ----------------------------------------------------------------------------


pair_sets = st.sets(st.tuples(st.integers(0, 10**12), st.integers(0, 40)), min_size=1, max_size=60)


@settings(max_examples=40, deadline=None)
@given(pair_sets, st.sampled_from([",", "\t", "::"]), st.booleans(), st.integers(0, 2**16))
def test_roundtrip_csv(pairs: set[tuple[int, int]], sep: str, gz: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows = sorted(pairs)
    rng.shuffle(rows)
    newline = "\r\n" if seed % 2 else "\n"  # CRLF files load too
    text = newline.join([f"ts{sep}user{sep}item"] + [f"{rng.integers(10**9)}{sep}{u}{sep}{i}" for u, i in rows])
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp) / ("t.csv.gz" if gz else "t.csv"), text + newline * (seed % 3))
        whole = load_interactions_csv(path, user_col="user", item_col="item", sep=sep, split=(1, 0, 0))
        parts = load_interactions_csv(path, user_col="user", item_col="item", sep=sep, seed=seed)
    assert _original_pairs(whole, "train") == pairs
    assert whole.user_ids.tolist() == sorted({u for u, _ in pairs})
    assert whole.item_ids.tolist() == sorted({i for _, i in pairs})
    got = [_original_pairs(parts, s) for s in ("train", "valid", "test")]
    assert set.union(*got) == pairs and sum(map(len, got)) == len(pairs)
    assert (parts.user_frequency >= 1).all()


@settings(max_examples=40, deadline=None)
@given(pair_sets, st.sampled_from(["abc", "1.5", "-2", "", "1 2", "0x3", "\u0662"]), st.data())
def test_corrupt_field_is_named(pairs: set[tuple[int, int]], bad: str, data: st.DataObject) -> None:
    rows = [f"{u},{i}" for u, i in sorted(pairs)]
    k = data.draw(st.integers(0, len(rows) - 1))
    u, i = rows[k].split(",")
    rows[k] = f"{bad},{i}" if data.draw(st.booleans()) else f"{u},{bad}"
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp) / "t.csv", "user,item\n" + "\n".join(rows) + "\n")
        with pytest.raises(DataError) as info:
            load_interactions_csv(path, user_col="user", item_col="item")
    assert info.value.line == k + 2
    assert f"{path}:{k + 2}: " in str(info.value)
