"""CTR data: CTRData, load_ctr_csv on small files (OOV, buckets, missing values, streaming split, errors), MovieLens."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsys.data import CTRData, load_ctr_csv, load_movielens_ctr
from recsys.data._ctr_encode import log_square_buckets, row_split
from recsys.errors import DataError

ALL_TRAIN = (1.0, 0.0, 0.0)


def _write(path: Path, text: str) -> Path:
    data = text.encode()
    path.write_bytes(gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)
    return path


def _decode(d: CTRData, split: str, field: str) -> list[str | None]:
    """The value of every row's id in ``field`` (``None`` for OOV)."""
    f = d.fields.index(field)
    vocab = d.vocabularies[field].tolist()
    return [None if i == d.cardinalities[f] - 1 else vocab[i] for i in d.x[split][:, f].tolist()]


# ---- the container ---------------------------------------------------------------------------------


def _tiny(**overrides: object) -> CTRData:
    x = np.array([[0, 1], [1, 0], [0, 2]])
    args: dict = {
        "name": "t", "fields": ("a", "b"), "cardinalities": (2, 3),
        "x": {"train": x, "valid": x[:1], "test": x[:0]}, "y": {"train": [1, 0, 1], "valid": [0], "test": []},
    }
    args.update(overrides)
    return CTRData(**args)


def test_container_rows_frequencies_fingerprint() -> None:
    d = _tiny()
    assert d.rows() == {"a": 2, "b": 3} and d.oov_ids == (1, 2) and d.n_fields == 2
    assert {k: v.tolist() for k, v in d.frequencies().items()} == {"a": [2, 1], "b": [1, 1, 1]}
    assert d.x["train"].dtype == np.int64 and d.y["train"].dtype == np.float32
    assert not d.x["train"].flags.writeable and not d.frequencies()["a"].flags.writeable
    assert d.size("test") == 0 and d.summary()["train_click_rate"] == pytest.approx(2 / 3)
    assert d.fingerprint() == _tiny(name="other", notes=("x",)).fingerprint()
    assert d.fingerprint() != _tiny(y={"train": [1, 1, 1], "valid": [0], "test": []}).fingerprint()
    assert d.fingerprint() != _tiny(cardinalities=(2, 4)).fingerprint()


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"fields": ("a", "a")}, "distinct"),
        ({"fields": ("a", "b.c")}, "without '.'"),
        ({"cardinalities": (2,)}, "2 fields but 1"),
        ({"cardinalities": (1, 3)}, "field 'a' outside"),
        ({"y": {"train": [1, 0, 2], "valid": [0], "test": []}}, "0/1"),
        ({"x": {"train": np.zeros((3, 2), int)}}, "missing"),
        ({"vocabularies": {"a": np.array(["x"]), "b": np.array(["y"])}}, "vocabulary of 'b'"),
    ],
)
def test_container_rejects_inconsistent_data(overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _tiny(**overrides)


# ---- categorical values, OOV, missing ----------------------------------------------------------------


def test_ids_by_train_frequency_with_oov_and_missing(tmp_path: Path) -> None:
    values = ["a"] * 5 + ["b"] * 3 + ["c"] + ["d"] * 3 + [""]
    text = "click,color\n" + "\n".join(f"{i % 2},{v}" for i, v in enumerate(values)) + "\n"
    d = load_ctr_csv(_write(tmp_path / "c.csv", text), label="click", categorical=["color"],
                     oov_threshold=2, split=ALL_TRAIN)
    # b and d tie at 3: the value breaks the tie; c (1 < 2) goes to OOV; missing keeps its own id.
    assert d.vocabularies["color"].tolist() == ["a", "b", "d", ""]
    assert d.cardinalities == (5,) and d.rows() == {"color": 5}
    assert d.frequencies()["color"].tolist() == [5, 3, 3, 1, 1]
    assert _decode(d, "train", "color") == [None if v == "c" else v for v in values]
    assert d.y["train"].tolist() == [i % 2 for i in range(len(values))]
    assert any("color: 5 rows (4 values + OOV); 1 values seen < 2 times in train went to OOV" in n for n in d.notes)


def test_values_unseen_in_train_go_to_oov_or_get_cold_rows(tmp_path: Path) -> None:
    n, split, seed = 200, (0.5, 0.25, 0.25), 3
    part = row_split(np.arange(n), split, seed)
    values = np.where(part == 0, "seen", "new").astype("U16")  # "new" occurs only outside train
    values[np.flatnonzero(part == 2)[0]] = "test-only"
    text = "y\tv\n" + "\n".join(f"{k % 2}\t{v}" for k, v in enumerate(values))
    path = _write(tmp_path / "u.tsv", text)
    d = load_ctr_csv(path, label="y", categorical=["v"], oov_threshold=1, split=split, seed=seed)
    assert d.vocabularies["v"].tolist() == ["seen"]
    assert [d.size(s) for s in ("train", "valid", "test")] == np.bincount(part, minlength=3).tolist()
    assert (d.x["valid"][:, 0] == 1).all() and (d.x["test"][:, 0] == 1).all()  # all OOV
    cold = load_ctr_csv(path, label="y", categorical=["v"], oov_threshold=0, split=split, seed=seed)
    assert cold.vocabularies["v"].tolist() == ["seen", "new", "test-only"]
    assert cold.frequencies()["v"].tolist() == [int((part == 0).sum()), 0, 0, 0]
    assert _decode(cold, "test", "v") == values[part == 2].tolist()


# ---- numeric discretisation ------------------------------------------------------------------------


def test_log_square_buckets_follow_the_criteo_rule() -> None:
    x = np.array([-3.0, -1.0, 0.0, 0.5, 1.0, 2.0, 2.5, 3.0, 4.0, 5.0, 8.0, 100.0, 1e6])
    expected = ["V-3", "V-1", "V0", "V0", "V1", "V2", "L0", "L1", "L1", "L2", "L4", "L21", "L190"]
    assert log_square_buckets(x).tolist() == expected
    big = x > 2
    assert [int(t[1:]) for t in expected if t[0] == "L"] == np.floor(np.log(x[big]) ** 2).astype(int).tolist()


def test_numeric_columns_are_bucketed_missing_kept(tmp_path: Path) -> None:
    raw = ["0", "1", "2", "3", "4", "5", "100", "", "1e2", "-1"]
    text = "label,n,c\n" + "\n".join(f"1,{v},x" for v in raw)
    d = load_ctr_csv(_write(tmp_path / "n.csv", text), label="label", categorical=["c"], numeric=["n"],
                     oov_threshold=1, split=ALL_TRAIN)
    assert d.fields == ("n", "c")  # header order
    assert _decode(d, "train", "n") == ["V0", "V1", "V2", "L1", "L1", "L2", "L21", "", "L21", "V-1"]
    assert any("floor(ln(x)^2)" in note for note in d.notes)
    custom = load_ctr_csv(tmp_path / "n.csv", label="label", categorical=["c"], numeric=["n"], oov_threshold=1,
                          split=ALL_TRAIN, bins=lambda v: (v >= 3).astype(np.int64))
    assert _decode(custom, "train", "n") == ["B0", "B0", "B0", "B1", "B1", "B1", "B1", "", "B1", "B0"]
    with pytest.raises(ValueError, match="bins"):
        load_ctr_csv(tmp_path / "n.csv", label="label", categorical=["c"], bins="quantile")


def test_label_threshold_reads_ratings_as_clicks(tmp_path: Path) -> None:
    text = "rating:float\tuser_id:token\n5\tu1\n3.5\tu2\n4\tu1\n1\tu3\n"
    d = load_ctr_csv(_write(tmp_path / "r.inter", text), label="rating", categorical=["user_id"],
                     label_threshold=4, oov_threshold=1, split=ALL_TRAIN)
    assert d.y["train"].tolist() == [1, 0, 1, 0] and d.name == "r"
    assert d.fields == ("user_id",) and "click = rating >= 4" in d.notes


# ---- streaming: the split does not depend on the chunks --------------------------------------------


def _mixed_file(path: Path, n: int = 60) -> Path:
    rng = np.random.default_rng(1)
    lines = ["", "label,cat,num,other"]  # a blank line before the header
    for k in range(n):
        lines.append(f"{k % 2},c{rng.integers(6)},{'' if k % 7 == 0 else rng.integers(-2, 50)},o{rng.integers(3)}")
        if k % 11 == 5:
            lines.append("   ")  # blank lines inside
    return _write(path, "\r\n".join(lines) + "\r\n")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunk_rows=st.integers(1, 80), seed=st.integers(0, 3))
def test_result_is_independent_of_chunk_rows(tmp_path: Path, chunk_rows: int, seed: int) -> None:
    path = tmp_path / "mixed.csv"
    if not path.exists():
        _mixed_file(path)
    options = {"label": "label", "categorical": ["cat", "other"], "numeric": ["num"], "oov_threshold": 2, "seed": seed}
    whole = load_ctr_csv(path, chunk_rows=10_000, **options)
    chunked = load_ctr_csv(path, chunk_rows=chunk_rows, **options)
    assert chunked.fingerprint() == whole.fingerprint()
    assert {k: v.tolist() for k, v in chunked.vocabularies.items()} == {k: v.tolist() for k, v in whole.vocabularies.items()}


def test_split_is_seeded_per_row_and_near_the_fractions() -> None:
    rows = np.arange(200_000)
    part = row_split(rows, (0.8, 0.1, 0.1), 7)
    counts = np.bincount(part, minlength=3) / rows.size
    assert np.allclose(counts, (0.8, 0.1, 0.1), atol=0.005)
    assert (row_split(rows[12_345:12_400], (0.8, 0.1, 0.1), 7) == part[12_345:12_400]).all()
    assert (row_split(rows, (0.8, 0.1, 0.1), 8) != part).mean() > 0.2
    assert (row_split(rows, (1.0, 0.0, 0.0), 7) == 0).all()


def test_gzip_input_by_suffix_or_magic(tmp_path: Path) -> None:
    plain = _mixed_file(tmp_path / "m.csv")
    options = {"label": "label", "categorical": ["cat"], "numeric": ["num"], "oov_threshold": 1}
    expected = load_ctr_csv(plain, **options).fingerprint()
    zipped = tmp_path / "m.csv.gz"
    zipped.write_bytes(gzip.compress(plain.read_bytes(), mtime=0))
    assert load_ctr_csv(zipped, chunk_rows=7, **options).fingerprint() == expected
    unnamed = tmp_path / "m.dat"
    unnamed.write_bytes(zipped.read_bytes())
    assert load_ctr_csv(unnamed, sep=",", **options).fingerprint() == expected
    fake = _write(tmp_path / "fake.csv.gz", "")
    fake.write_bytes(b"label,cat\n1,a\n")
    with pytest.raises(DataError, match="unreadable"):
        load_ctr_csv(fake, label="label", categorical=["cat"])


# ---- ids within the cardinalities, whatever the values ---------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(st.tuples(st.booleans(), st.sampled_from(["", "a", "b", "c", "dd", "é"]),
                            st.one_of(st.just(""), st.integers(-5, 10_000).map(str))), min_size=1, max_size=40),
    threshold=st.integers(0, 4),
    seed=st.integers(0, 10),
)
def test_ids_are_always_within_the_cardinalities(rows: list, threshold: int, seed: int) -> None:
    import tempfile

    text = "y;cat;num\n" + "\n".join(f"{int(y)};{c};{n}" for y, c, n in rows)
    with tempfile.TemporaryDirectory() as folder:
        d = load_ctr_csv(_write(Path(folder) / "h.txt", text), label="y", categorical=["cat"], numeric=["num"],
                         sep=";", oov_threshold=threshold, seed=seed)
    assert sum(d.size(s) for s in ("train", "valid", "test")) == len(rows)
    for split in ("train", "valid", "test"):
        x = d.x[split]
        assert ((x >= 0) & (x < np.asarray(d.cardinalities))).all()
    for name, freq in d.frequencies().items():
        assert freq.sum() == d.size("train") and freq.size == d.rows()[name]
        kept = freq[:-1]  # the OOV row is last
        assert (np.diff(kept) <= 0).all()  # ids by decreasing train frequency
        if threshold >= 1:  # every kept value but "missing" met the threshold
            assert (kept[d.vocabularies[name] != ""] >= threshold).all()


# ---- errors name the file and the line ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("y,c,n\n1,a,3\n0,b\n", 3, "expected 3 fields as in the header (line 1), found 2"),
        ("y,c,n\n1,a,3\n\n0,b,x1\n", 4, "numeric field 'n' is not a finite number: 'x1'"),
        ("y,c,n\n1,a,3\n0,b,inf\n", 3, "numeric field 'n' is not a finite number: 'inf'"),
        ("y,c,n\n1,a,3\n2,b,4\n", 3, "label 'y' must be 0 or 1 (or give label_threshold), got '2'"),
        ("y,c,n\n1,a,3\nyes,b,4\n", 3, "label 'y' is not a finite number: 'yes'"),
        ("y,c,n\n1,a,3\n,b,4\n", 3, "empty label 'y'"),
        ("\n\ny,c,n\n1,a,3\n0,b,4,5\n", 5, "expected 3 fields"),
    ],
)
def test_malformed_rows_raise_with_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    for name in ("bad.csv", "bad.csv.gz"):
        path = _write(tmp_path / name, text)
        for chunk_rows in (1, 2, 100):
            with pytest.raises(DataError) as caught:
                load_ctr_csv(path, label="y", categorical=["c"], numeric=["n"], chunk_rows=chunk_rows)
            assert caught.value.line == line and caught.value.path == str(path)
            assert str(caught.value).startswith(f"{path}:{line}: {message}")


def test_missing_column_names_the_columns_found(tmp_path: Path) -> None:
    path = _write(tmp_path / "h.csv", "\nclick,site,app\n1,a,b\n")
    with pytest.raises(DataError) as caught:
        load_ctr_csv(path, label="click", categorical=["site", "device"])
    assert caught.value.line == 2
    assert re.search(r"no column 'device'.*columns found: 'click', 'site', 'app'", str(caught.value))


def test_empty_files_and_bad_bytes(tmp_path: Path) -> None:
    for text in ("", "\n  \n"):
        with pytest.raises(DataError, match="empty file") as caught:
            load_ctr_csv(_write(tmp_path / "e.csv", text), label="y", categorical=["c"])
        assert caught.value.line is None
    with pytest.raises(DataError, match="no data rows"):
        load_ctr_csv(_write(tmp_path / "h.csv", "y,c\n\n"), label="y", categorical=["c"])
    (tmp_path / "b.csv").write_bytes(b"y,c\n1,a\n0,\xff\n")
    with pytest.raises(DataError, match="not UTF-8") as caught:
        load_ctr_csv(tmp_path / "b.csv", label="y", categorical=["c"], chunk_rows=1)
    assert caught.value.line == 3
    with pytest.raises(DataError, match="file not found"):
        load_ctr_csv(tmp_path / "absent.csv", label="y", categorical=["c"])


def test_bad_arguments(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.csv", "y,c,n\n1,a,3\n")
    with pytest.raises(ValueError, match="more than once"):
        load_ctr_csv(path, label="y", categorical=["c", "y"])
    with pytest.raises(ValueError, match="at least one"):
        load_ctr_csv(path, label="y", categorical=[])
    with pytest.raises(ValueError, match="oov_threshold"):
        load_ctr_csv(path, label="y", categorical=["c"], oov_threshold=-1)
    with pytest.raises(ValueError, match="chunk_rows"):
        load_ctr_csv(path, label="y", categorical=["c"], chunk_rows=0)
    with pytest.raises(ValueError, match="sum to 1"):
        load_ctr_csv(path, label="y", categorical=["c"], split=(0.5, 0.1, 0.1))


# ---- MovieLens-100K with features ----------------------------------------------------------------------


ML = "ml-100k_recbole"


@pytest.fixture(scope="module")
def movielens(shared_data: Path) -> CTRData:
    return load_movielens_ctr(shared_data / ML)


def test_movielens_rows_fields_and_clicks(movielens: CTRData) -> None:
    d = movielens
    assert d.fields == ("user", "item", "age", "gender", "occupation", "zip", "genres", "year")
    sizes = [d.size(s) for s in ("train", "valid", "test")]
    assert sum(sizes) == 100_000
    assert abs(sizes[0] - 80_000) < 600 and abs(sizes[1] - 10_000) < 400 and abs(sizes[2] - 10_000) < 400
    assert sum(int(d.y[s].sum()) for s in ("train", "valid", "test")) == 55_375  # ratings >= 4
    assert d.rows()["user"] == 943 + 1 and d.rows()["gender"] == 2 + 1 and d.rows()["occupation"] == 21 + 1
    assert d.rows()["item"] < 1682 + 1  # items rated < 2 times in train share the OOV row
    assert "Comedy|Romance" in d.vocabularies["genres"].tolist()
    assert set(d.frequencies()) == set(d.fields)


def test_movielens_keeps_every_user_and_item_with_threshold_zero(shared_data: Path, movielens: CTRData) -> None:
    d = load_movielens_ctr(shared_data / ML, oov_threshold=0, chunk_rows=7_919)
    assert d.rows()["user"] == 943 + 1 and d.rows()["item"] == 1682 + 1
    items = d.frequencies()["item"]
    assert items[-1] == 0 and (items[:-1] == 0).any()  # items rated only in valid/test: cold rows, OOV unused
    assert (np.diff(items[:-1]) <= 0).all()
    assert d.rows()["genres"] == 216 + 1
    # Same rows and labels as the default load, whatever the chunking: only the vocabularies differ.
    assert all((d.y[s] == movielens.y[s]).all() for s in ("train", "valid", "test"))
    chunked = load_movielens_ctr(shared_data / ML, chunk_rows=12_345)
    assert chunked.fingerprint() == movielens.fingerprint()


def test_movielens_rating_of_unknown_user_names_the_line(tmp_path: Path, shared_data: Path) -> None:
    folder = tmp_path / "ml"
    folder.mkdir()
    for name in ("ml-100k.user", "ml-100k.item"):
        (folder / name).write_bytes((shared_data / ML / name).read_bytes())
    _write(folder / "ml-100k.inter", "user_id:token\titem_id:token\trating:float\n1\t1\t5\n9999\t1\t3\n")
    with pytest.raises(DataError, match="user_id '9999' is not in ml-100k.user") as caught:
        load_movielens_ctr(folder)
    assert caught.value.line == 3 and caught.value.path.endswith("ml-100k.inter")


def test_movielens_user_given_twice_names_both_lines(tmp_path: Path, shared_data: Path) -> None:
    folder = tmp_path / "ml"
    folder.mkdir()
    (folder / "ml-100k.item").write_bytes((shared_data / ML / "ml-100k.item").read_bytes())
    _write(folder / "ml-100k.user", "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
           "1\t24\tM\ttechnician\t85711\n2\t53\tF\tother\t94043\n1\t30\tF\twriter\t10001\n")
    _write(folder / "ml-100k.inter.gz", "user_id:token\titem_id:token\trating:float\n1\t1\t5\n")
    with pytest.raises(DataError, match="user_id '1' is given twice, first on line 2") as caught:
        load_movielens_ctr(folder)
    assert caught.value.line == 4 and caught.value.path.endswith("ml-100k.user")
