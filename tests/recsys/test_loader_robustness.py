"""Reported loader failures, one regression test each: untrainable data, huge ids, an empty
separator, huge fields in error messages, old Mac line endings.

Each case used to end in a traceback (or a misleading message); now it is a
:class:`recsys.errors.DataError` naming the file, which the CLI prints as one line
``embnas: error: ...`` with exit status 2, before any run folder is made.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from nas.app.cli import main
from recsys.data import (
    BPRSampler,
    InteractionData,
    load_ctr_csv,
    load_interactions_csv,
    load_lightgcn,
    load_movielens_ctr,
    pairs_to_csr,
)
from recsys.data._io import QUOTE_LIMIT, quote
from recsys.errors import DataError


def _write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def _cli_error(argv: list[str], runs: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI, which must fail with status 2, one line on stderr, and no run folder under ``runs``."""
    assert main([*argv, "--runs", str(runs)]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("embnas: error: "), err
    assert not runs.exists() or not any(runs.iterdir()), "a run folder was made for data that cannot train"
    return lines[0]


# -- 1. data a model cannot train on: a clear error before the run folder ------------------------------------


def test_one_item_catalogue_fails_in_one_line_before_the_run_folder(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    data = _write(tmp_path / "one.csv", "user_id,item_id\n1,2\n")
    line = _cli_error(["search", "--data", str(data), "--epochs", "1"], tmp_path / "runs", capsys)
    assert "1 item" in line and "at least 2" in line and "negative item" in line


def test_user_with_every_item_fails_in_one_line_before_the_run_folder(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "full"
    folder.mkdir()
    _write(folder / "train.txt", "0 0 1\n1 0\n")  # user 0 has both items
    _write(folder / "test.txt", "1 1\n")
    line = _cli_error(["search", "--data", str(folder), "--epochs", "1"], tmp_path / "runs", capsys)
    assert "user 0 has a train pair with every one of the 2 items" in line and "no negative item" in line


def test_click_data_with_no_train_row_fails_before_the_run_folder(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    data = _write(tmp_path / "c1.csv", "y,c\n1,a\n")  # seed 1 sends the only row to valid/test
    assert load_ctr_csv(data, label="y", categorical=["c"], seed=1).size("train") == 0
    argv = ["search", "--data", str(data), "--label-col", "y", "--categorical", "c", "--model", "fm", "--seed", "1",
            "--epochs", "1"]
    assert "no train row" in _cli_error(argv, tmp_path / "runs", capsys)


def test_check_trainable_names_the_original_user_id_and_passes_good_data() -> None:
    train = pairs_to_csr(np.array([0, 0, 1]), np.array([0, 1, 0]), (2, 2))
    empty = sp.csr_matrix((2, 2), dtype=np.float32)
    full = InteractionData("toy", 2, 2, train, empty, empty, "keep", user_ids=np.array([7, 9]), item_ids=np.array([3, 4]))
    with pytest.raises(DataError, match="'toy': user 7 has a train pair with every one of the 2 items"):
        full.check_trainable()
    with pytest.raises(DataError, match="no negative item exists"):  # the sampler says the same, as a DataError
        BPRSampler(full.train)
    nothing = InteractionData("none", 2, 2, empty, empty, empty, "keep")
    with pytest.raises(DataError, match="no train pair"):
        nothing.check_trainable()
    spare = pairs_to_csr(np.array([0, 0, 1]), np.array([0, 1, 0]), (2, 3))  # item 2 is a negative for everyone
    no_pairs = sp.csr_matrix((2, 3), dtype=np.float32)
    InteractionData("fine", 2, 3, spare, no_pairs, no_pairs, "keep").check_trainable()


# -- 2. ids of more than 4,300 digits --------------------------------------------------------------------------


def test_id_of_more_than_4300_digits_is_a_data_error_with_file_and_line(tmp_path: Path) -> None:
    huge = "9" * 5_000
    csv = _write(tmp_path / "big.csv", f"user_id,item_id\n1,2\n3,{huge}\n")
    with pytest.raises(DataError, match="too large") as caught:
        load_interactions_csv(csv, user_col="user_id", item_col="item_id")
    assert str(caught.value).startswith(f"{csv}:3: id 999") and "(5,000 bytes)" in str(caught.value)
    assert len(str(caught.value)) < 300
    text = _write(tmp_path / "train.txt", f"0 1\n1 {'0' * 5_000}5 {huge}\n")  # a long zero-padded id is fine
    with pytest.raises(DataError, match="too large") as caught:
        load_lightgcn(text)
    assert caught.value.line == 2 and len(str(caught.value)) < 300
    padded = load_lightgcn(_write(tmp_path / "padded.txt", f"0 1\n1 {'0' * 5_000}5\n"))
    assert padded.n_items == 6


def test_sparse_huge_lightgcn_id_without_remap_is_refused_not_allocated(tmp_path: Path) -> None:
    """Found by the fuzzer: a user id of 2**31 - 2 made 16 GiB tables (MemoryError, or the process killed)."""
    text = _write(tmp_path / "train.txt", "0 1\n2147483646 2\n")
    with pytest.raises(DataError, match="2,147,483,647 rows for the 4 ids of this file.*pass remap=True") as caught:
        load_lightgcn(text)
    assert caught.value.line == 2
    assert load_lightgcn(text, remap=True).n_users == 2


# -- 3. an empty separator -------------------------------------------------------------------------------------


def test_empty_sep_is_a_one_line_error(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    data = _write(tmp_path / "pairs.csv", "user_id,item_id\n1,2\n2,1\n")
    line = _cli_error(["search", "--data", str(data), "--sep", "", "--epochs", "1"], tmp_path / "runs", capsys)
    assert "separator" in line and str(data) in line
    with pytest.raises(DataError, match="separator"):
        load_ctr_csv(data, label="user_id", categorical=["item_id"], sep="")


# -- 4. a huge field is quoted by a bounded prefix, and fails fast ---------------------------------------------


def test_quote_keeps_a_bounded_prefix_and_the_length() -> None:
    assert quote("ab") == "'ab'" and quote("9" * 100, bare=True) == "9" * QUOTE_LIMIT + "… (100 characters)"
    assert quote("\x00" * 500).endswith("… (500 characters)") and len(quote("\x00" * 500)) < 2 * QUOTE_LIMIT
    assert quote(b"\xff" * 90).endswith("… (90 bytes)")


@pytest.mark.parametrize("case", ["rating", "id", "label", "numeric", "categorical-key"])
def test_huge_field_error_quotes_a_bounded_prefix(case: str, tmp_path: Path) -> None:
    big = "1" * 2_000_000 + "x"
    if case == "rating":
        path = _write(tmp_path / "r.csv", "user_id,item_id,rating\n1,2,5\n3,4," + big + "\n")
        load = lambda: load_interactions_csv(path, user_col="user_id", item_col="item_id", rating_col="rating")
    elif case == "id":
        path = _write(tmp_path / "i.csv", f"user_id,item_id\n1,2\n3,{big}\n")
        load = lambda: load_interactions_csv(path, user_col="user_id", item_col="item_id")
    elif case in ("label", "numeric"):
        row = f"{big},b,3" if case == "label" else f"0,b,{big}"
        path = _write(tmp_path / "c.csv", f"y,c,n\n1,a,3\n{row}\n")
        load = lambda: load_ctr_csv(path, label="y", categorical=["c"], numeric=["n"])
    else:
        folder = tmp_path / "ml"
        folder.mkdir()
        _write(folder / "ml.user", f"user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n{big}\t1\tM\tx\t1\n"
               f"{big}\t2\tF\ty\t2\n")
        _write(folder / "ml.item", "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n1\tA\t1995\tAction\n")
        _write(folder / "ml.inter", "user_id:token\titem_id:token\trating:float\n1\t1\t5\n")
        path = folder / "ml.user"
        load = lambda: load_movielens_ctr(folder, dataset="ml")
    with pytest.raises(DataError) as caught:
        load()
    message = str(caught.value)
    assert message.startswith(f"{path}:") and "(2,000,001 " in message and len(message) < 300, message[:400]


def test_header_listing_is_bounded(tmp_path: Path) -> None:
    path = _write(tmp_path / "wide.csv", ",".join(f"col{k}" * 50 for k in range(1_000)) + "\n" + "1," * 999 + "1\n")
    with pytest.raises(DataError, match=r"no column 'user_id'.*… \(1,000 columns\)") as caught:
        load_interactions_csv(path, user_col="user_id", item_col="item_id")
    assert len(str(caught.value)) < 2_000


# -- 5. old Mac line endings -----------------------------------------------------------------------------------


def test_old_mac_line_endings_say_so(tmp_path: Path) -> None:
    mac = "lines end with \\\\r only \\(old Mac line endings\\); convert them to \\\\n"
    csv = _write(tmp_path / "mac.csv", "user_id,item_id\r1,2\r3,4\r")
    with pytest.raises(DataError, match=mac):
        load_interactions_csv(csv, user_col="user_id", item_col="item_id")
    with pytest.raises(DataError, match=mac):
        load_ctr_csv(_write(tmp_path / "clicks.csv", "y,c\r1,a\r0,b\r"), label="y", categorical=["c"])
    with pytest.raises(DataError, match=mac):  # it used to load as one user holding items 5, 1 and 6
        load_lightgcn(_write(tmp_path / "train.txt", "0 5\r1 6\r"))
    with pytest.raises(DataError, match="carriage return .* inside a line") as caught:
        load_lightgcn(_write(tmp_path / "mixed.txt", "0 5\r\n1 6\r2 7\n"))
    assert caught.value.line == 2
    crlf = load_interactions_csv(_write(tmp_path / "crlf.csv", "user_id,item_id\r\n1,2\r\r\n3,4\r"),
                                 user_col="user_id", item_col="item_id")  # CRLF and stray \r at line ends are fine
    assert crlf.train.nnz + crlf.valid.nnz + crlf.test.nnz == 2
