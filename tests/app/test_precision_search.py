"""Searching precision with size from the command line and the API: bytes within the budget, bad input one line."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch

import nas
from nas.app.cli import main
from nas.artifact.serving import PackedEmbedding
from nas.core.errors import ConfigError
from nas.pipeline.config import SearchConfig
from recsys.data import synthetic

FAST = {"train": {"epochs": 1, "eval_every": 1}, "fitness_users": 300, "progress": False}
PRECISIONS = ("fp32", "fp16", "int8", "int4")


@pytest.fixture(scope="module")
def data():
    return synthetic(n_users=300, n_items=400, seed=3)


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(argv))
    return status, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("controller, options", [("equal", {"precision": "int4"}), ("frequency", {}), ("random", {})])
def test_a_byte_budget_with_precisions_is_met_by_the_files_on_disk(data, tmp_path, controller, options):
    result = nas.search(data, budget="12KB", precisions=PRECISIONS, controller=controller, controller_options=options,
                        trials=2, retrain_top=1, run_dir=tmp_path / "run", **FAST)
    export = tmp_path / "run" / "export"
    on_disk = sum(entry.stat().st_size for entry in export.iterdir())
    assert on_disk == result.export_bytes <= 12_000
    manifest = json.loads((export / "manifest.json").read_text())
    assert manifest["format_version"] == 2 and manifest["precisions"] == list(PRECISIONS)
    assert result.allocation.bits() <= result.budget.max_bits and result.budget_used >= 0.99
    loaded = PackedEmbedding.load(export)
    assert loaded.rows == {"user": 300, "item": 400}
    if controller == "equal":
        assert set(result.allocation.summary()["user"]["rows_at"].items()) >= {("int4", 300)}


def test_narrower_rows_buy_more_dimensions_than_float32_at_the_same_bytes(data):
    fp32 = nas.search(data, budget="12KB", precisions=("fp32",), controller="equal", run_dir=None, **FAST)
    int4 = nas.search(data, budget="12KB", precisions=PRECISIONS, controller="equal",
                      controller_options={"precision": "int4"}, run_dir=None, **FAST)
    assert int4.export_bytes <= 12_000 and fp32.export_bytes <= 12_000
    assert fp32.allocation.row_precisions is None  # fp32 alone is the sizes-only run
    # 4 bits a value and a 16-bit scale a row against 32 bits a value: over 3x the dimensions here.
    assert int4.allocation.summary()["user"]["mean"] > 3 * fp32.allocation.summary()["user"]["mean"]
    # Left to choose, the rule takes int4 here: equal sizes keep the most dimensions at it.
    default = nas.search(data, budget="12KB", controller="equal", run_dir=None, **FAST)
    assert default.allocation.precisions == PRECISIONS
    assert default.allocation.fingerprint() == int4.allocation.fingerprint()


@pytest.mark.parametrize("budget, controller, searched", [
    ("900KB", "frequency", PRECISIONS),   # a byte budget: memory is what counts
    ("2MiB", "shape", PRECISIONS),
    ("900KB", "magprune", ()),            # a controller that cannot search them keeps sizes only
    ("900KB", "pep", ()),
    ("0.9", "shape", ()),                 # a sparsity or a parameter count counts values
    ("250000", "frequency", ()),
])
def test_a_byte_budget_searches_precisions_unless_told_otherwise(budget, controller, searched):
    assert SearchConfig(budget=budget, controller=controller).precisions == searched
    assert SearchConfig(budget=budget, controller=controller, precisions=["fp32"]).precisions == ()
    assert SearchConfig(budget=budget, controller=controller, precisions=()).precisions == ()


def test_a_run_recorded_without_precisions_resumes_without_them():
    recorded = SearchConfig(budget="900KB", precisions=()).to_dict()
    assert "precisions" not in recorded
    assert SearchConfig.from_dict(recorded).precisions == ()


def test_a_config_without_precisions_is_what_it_was_before_they_existed():
    plain = SearchConfig().to_dict()
    assert "precisions" not in plain and SearchConfig.from_dict(plain) == SearchConfig()
    searched = SearchConfig(precisions=["int4", "fp32"])
    assert searched.precisions == ("fp32", "int4") and searched.to_dict()["precisions"] == ["fp32", "int4"]
    assert SearchConfig.from_dict(searched.to_dict()) == searched
    with pytest.raises(ConfigError, match="--precisions: unknown precision 'int3'"):
        SearchConfig(precisions="fp32,int3")


@pytest.mark.parametrize("argv, message", [
    (["--precisions", "fp32,int3"], "--precisions: unknown precision 'int3'; choose from fp32, fp16, int8, int4, int2"),
    (["--precisions", "--controller", "magprune"], "the magprune controller does not search precisions"),
    (["--controller", "equal", "--controller-option", "precision=int8"], "precision 'int8' must be used with --precisions"),
    (["--precisions", "fp32,int8", "--controller", "equal", "--controller-option", "precision=int4"],
     "precision 'int4' must be one of the searched fp32, int8"),
    (["--precisions", "--budget", "300B"], "the smallest feasible budget is"),
    (["--precisions", "fp32", "--scales", "shared"], "--scales shared shares the scales of integer precisions"),
    (["--scales", "shared"], "give --precisions"),
])
def test_bad_precision_input_is_one_line_and_leaves_no_run_folder(tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    status, stdout, stderr = run_cli("search", "--epochs", "1", "--quiet", *argv)
    assert status == 2 and stdout == ""
    assert stderr.count("\n") == 1 and message in stderr, stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_shared_scales_fit_a_budget_per_row_scales_cannot_and_serve_what_the_model_served(data, tmp_path):
    from nas.app.summary import summary_table
    from nas.core.errors import BudgetError
    from nas.pipeline.replay import export_run

    with pytest.raises(BudgetError, match="smallest feasible budget is"):
        nas.search(data, budget="8500B", precisions=PRECISIONS, controller="frequency", run_dir=None, **FAST)
    spec = nas.DataSpec("synthetic", seed=3, extra={"n_users": 300, "n_items": 400})
    result = nas.search(spec, seed=3, budget="8500B", precisions=PRECISIONS, scales="shared", controller="frequency",
                        run_dir=tmp_path / "run", **FAST)
    export = tmp_path / "run" / "export"
    assert sum(entry.stat().st_size for entry in export.iterdir()) == result.export_bytes <= 8_500
    assert json.loads((export / "manifest.json").read_text())["scales"] == "shared"
    assert result.allocation.bits("shared") <= result.budget.max_bits and result.budget_used >= 0.99
    assert f"in {result.allocation.bits('shared'):,} bits" in summary_table(result)
    assert "bits of values (scales shared by size)" in summary_table(result)
    served = result.trained_model.embedding
    loaded = PackedEmbedding.load(export)
    for table in ("user", "item"):
        assert torch.equal(loaded.table(table), served.table(table).detach())
    assert export_run(tmp_path / "run", tmp_path / "again")["bytes_stored"] == result.export_bytes


def test_the_space_and_the_budget_agree_on_every_rows_precision(data):
    result = nas.search(data, budget="0.9", precisions=("fp32", "int8"), controller="random", trials=2, retrain_top=1,
                        run_dir=None, **FAST)
    assert result.budget.unit == "values"  # a sparsity keeps counting values
    assert result.allocation.cost <= result.budget.max_values
    assert np.isin(result.allocation.row_precisions["user"], [0, 1]).all()


def test_report_export_and_evaluate_read_a_run_with_precisions(tmp_path):
    from nas.app.report import precision_bands, write_report
    from nas.pipeline.replay import evaluate_run, export_run

    spec = nas.DataSpec("synthetic", seed=3, extra={"n_users": 300, "n_items": 400})
    data = synthetic(n_users=300, n_items=400, seed=3)
    result = nas.search(spec, seed=3, budget="12KB", precisions=PRECISIONS, controller="frequency",
                        controller_options={"precision": "int8"}, run_dir=tmp_path / "run", **FAST)
    written = {path.name for path in write_report(tmp_path / "run")}
    assert {"allocation.png", "precisions.md"} <= written
    table = (tmp_path / "run" / "report" / "precisions.md").read_text()
    assert "| user | top 1% | 3 |" in table and table.count("| 100% |") == 8  # every band of both tables at int8
    assert precision_bands(result.allocation, data.frequencies()) in table
    manifest = export_run(tmp_path / "run", tmp_path / "again")
    assert manifest["bytes_stored"] == result.export_bytes and manifest["precisions"] == list(PRECISIONS)
    assert evaluate_run(tmp_path / "run") == pytest.approx(result.metrics["test"])
