"""The `embnas` command end to end on the built-in synthetic data (small settings, seconds each)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from nas.app.cli import main
from nas.core import Allocation, Budget
from nas.pipeline.result import SearchResult

FAST = ["--epochs", "2", "--eval-every", "1", "--quiet", "--fitness-users", "300"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    assert main(["search", "--runs", str(runs), "--name", "default", *FAST]) == 0
    return runs / "default"


def test_search_writes_every_artifact(finished_run: Path):
    for name in ("config.json", "events.jsonl", "allocation.npz", "metrics.json", "export/manifest.json",
                 "checkpoints/allocated.safetensors"):
        assert (finished_run / name).is_file(), name
    # The default (frequency) rule's full-size model is the cached reference: not trained a second time.
    cache = Path(json.loads((finished_run / "metrics.json").read_text())["full"]["cache"])
    assert (cache / "checkpoints" / "reference.safetensors").is_file() and (cache / "reference.json").is_file()
    assert not (finished_run / "checkpoints" / "supernet.safetensors").exists()
    events = [json.loads(line) for line in (finished_run / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events][0] == "start"
    assert any(e["event"] == "trial" for e in events)
    assert events[-1]["event"] == "done"
    leftovers = [p.name for p in finished_run.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_export_meets_the_budget_from_the_files_alone(finished_run: Path):
    export = finished_run / "export"
    manifest = json.loads((export / "manifest.json").read_text())
    on_disk = sum(p.stat().st_size for p in export.iterdir() if p.is_file())
    assert on_disk == manifest["bytes_stored"]
    assert on_disk <= manifest["budget"]["max_bytes"]
    tensors = load_file(str(export / "tables.safetensors"))
    kept = sum(int(tensors[f"{t}.row_dims"].astype(np.int64).sum()) for t in manifest["tables"])
    stored = sum(tensors[f"{t}.values"].size for t in manifest["tables"])
    assert stored == kept <= manifest["budget"]["max_values"]
    # The budget in the manifest is the one asked for on the command line (default sparsity 0.9).
    budget = Budget.from_dict(manifest["budget"])
    assert budget.kind == "sparsity" and budget.amount == 0.9
    assert kept <= 0.1 * budget.full_values


def test_summary_and_metrics(finished_run: Path):
    from nas.app.summary import summary_table

    metrics = json.loads((finished_run / "metrics.json").read_text())
    assert 0.99 <= metrics["allocation"]["budget_used"] <= 1.0
    assert metrics["allocated"]["test"]["recall@20"] > 0
    assert metrics["full"]["test"]["recall@20"] > 0
    text = summary_table(SearchResult.read(finished_run))
    assert "sparsity 0.9" in text and "per-feature (7,000 decisions)" in text
    assert f"{metrics['export']['bytes_stored']:,} bytes exported" in text
    recall_line = next(line for line in text.splitlines() if line.strip().startswith("recall@20"))
    full, allocated = metrics["full"]["test"]["recall@20"], metrics["allocated"]["test"]["recall@20"]
    beside = [f"{metrics['supernet']['test']['recall@20']:.4f}"] if metrics["supernet"] else []
    assert recall_line.split()[1:] == [f"{full:.4f}", *beside, f"{allocated:.4f}", f"{allocated / full:.3f}"]
    assert metrics["full"]["supernet"] == "full" and "a plainly trained full model" in text


def test_evaluate_and_export_an_existing_run(finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["evaluate", str(finished_run)]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    recorded = json.loads((finished_run / "metrics.json").read_text())["allocated"]["test"]
    assert evaluated["recall@20"] == pytest.approx(recorded["recall@20"], abs=1e-12)
    assert main(["export", str(finished_run), "--out", str(tmp_path / "again")]) == 0
    again = load_file(str(tmp_path / "again" / "tables.safetensors"))
    first = load_file(str(finished_run / "export" / "tables.safetensors"))
    assert again.keys() == first.keys()
    assert all(np.array_equal(again[k], first[k]) for k in first)


def test_export_a_run_for_torchrec(finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "torchrec"
    assert main(["export", str(finished_run), "--format", "torchrec", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    config = json.loads((out / "torchrec.json").read_text())
    assert f"{config['bytes']:,} bytes of values and remap" in printed
    assert config["bytes"] <= config["bytes_limit"] and set(config["tables"]) == {"user", "item"}
    assert config["source"]["allocation"] == json.loads((finished_run / "export" / "manifest.json").read_text())["allocation"]
    pytest.importorskip("torchrec", reason='TorchRec is not installed: pip install "embnas[torchrec]"')
    import torch

    from nas.artifact.serving import PackedEmbedding
    from nas.artifact.torchrec_tables import TorchRecTables

    served, packed = TorchRecTables.load(out), PackedEmbedding.load(finished_run / "export")
    for name, rows in packed.rows.items():
        assert torch.equal(served.lookup(name, torch.arange(rows)), packed.table(name))


def test_export_options_that_cannot_work_are_one_line(finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["export", str(finished_run), "--align", "4", "--out", str(tmp_path / "x")]) == 2
    assert "only the torchrec format takes one" in capsys.readouterr().err
    # The frequency rule spends the whole budget: rounding its sizes up to multiples of 4 cannot fit.
    assert main(["export", str(finished_run), "--format", "torchrec", "--align", "4", "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "multiples of 4" in err and not (tmp_path / "y").exists()


def test_same_seed_gives_the_same_allocation(tmp_path: Path):
    args = ["search", "--runs", str(tmp_path), "--controller", "random", "--trials", "3", "--seed", "7", *FAST]
    assert main([*args, "--name", "a"]) == 0
    assert main([*args, "--name", "b"]) == 0
    first = Allocation.load(tmp_path / "a" / "allocation.npz")
    second = Allocation.load(tmp_path / "b" / "allocation.npz")
    assert first.fingerprint() == second.fingerprint()


def test_an_infeasible_budget_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["search", "--runs", str(tmp_path), "--budget", "0.999", *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "smallest feasible budget is sparsity 0.984375" in err
    assert list(tmp_path.iterdir()) == []  # refused before any run folder is made


def test_malformed_data_names_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    bad = tmp_path / "inter.csv"
    bad.write_text("user_id,item_id\n1,2\n3,x\n")
    assert main(["search", "--runs", str(tmp_path), "--data", str(bad), *FAST]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:3" in err and "Traceback" not in err


def test_a_run_name_reused_with_another_config_is_refused(finished_run: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["search", "--runs", str(finished_run.parent), "--name", "default", "--budget", "0.5", *FAST]) == 2
    assert "different configuration" in capsys.readouterr().err


@pytest.mark.parametrize("command", [[], ["search"], ["resume"], ["evaluate"], ["export"], ["report"], ["controllers"]])
def test_help_on_every_command(command: list[str], capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as stopped:
        main([*command, "--help"])
    assert stopped.value.code == 0
    assert "usage: embnas" in capsys.readouterr().out


def test_controllers_are_listed(capsys: pytest.CaptureFixture[str]):
    assert main(["controllers"]) == 0
    out = capsys.readouterr().out
    for name in ("equal", "frequency", "random"):
        assert name in out


def test_block_space_search_exports_within_budget_and_draws_a_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    args = ["search", "--runs", str(tmp_path), "--name", "block", "--space", "block", "--groups", "8", "--blocks", "4", *FAST]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "block G=8×B=4 by count (16 decisions)" in out
    run = tmp_path / "block"
    manifest = json.loads((run / "export" / "manifest.json").read_text())
    tensors = load_file(str(run / "export" / "tables.safetensors"))
    kept = sum(int(tensors[f"{t}.row_dims"].astype(np.int64).sum()) for t in manifest["tables"])
    assert kept <= manifest["budget"]["max_values"]
    assert set(np.unique(np.concatenate([tensors[f"{t}.row_dims"] for t in manifest["tables"]]))) <= {1, 16, 32, 48, 64}
    assert main(["report", str(run)]) == 0
    png = run / "report" / "allocation.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_space_flags_for_another_space_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["search", "--runs", str(tmp_path), "--groups", "4", *FAST]) == 2
    assert "--groups only apply to --space block" in capsys.readouterr().err
    assert main(["search", "--runs", str(tmp_path), "--space", "per-field", "--grid", "pow2", *FAST]) == 0


def test_bad_training_options_are_one_line_and_leave_no_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    for flags in (["--epochs", "0"], ["--batch-size", "0"], ["--lr", "-1"], ["--seed", "-3"], ["--threads", "0"],
                  ["--supernet-epochs", "0"]):
        assert main(["search", "--runs", str(tmp_path), *FAST, *flags]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("controller", ["darts", "random", "equal"])
def test_supernet_epochs_shorten_the_search_not_the_retrain(controller: str, tmp_path: Path):
    """A one-shot search, a sandwich supernet and a rule's full-size reference stop at --supernet-epochs;
    the retrain trains --epochs."""
    args = ["search", "--runs", str(tmp_path), "--name", "r", "--controller", controller, "--trials", "2", "--retrain-top", "1",
            *FAST, "--epochs", "3", "--supernet-epochs", "1", "--patience", "9"]
    assert main(args) == 0
    trained = [json.loads(line) for line in (tmp_path / "r" / "events.jsonl").read_text().splitlines() if '"trained"' in line]
    assert {e["stage"]: e["epochs_run"] for e in trained} == {"supernet": 1, "retrain": 3}
    config = json.loads((tmp_path / "r" / "config.json").read_text())["config"]
    assert config["supernet"]["epochs"] == 1 and config["train"]["epochs"] == 3


def test_rerunning_a_finished_run_reuses_its_stages(finished_run: Path):
    before = (finished_run / "events.jsonl").read_text().splitlines()
    allocation = Allocation.load(finished_run / "allocation.npz").fingerprint()
    assert main(["search", "--runs", str(finished_run.parent), "--name", "default", *FAST]) == 0
    after = [json.loads(line) for line in (finished_run / "events.jsonl").read_text().splitlines()[len(before):]]
    kinds = [e["event"] for e in after]
    assert "trained" not in kinds and "trial" not in kinds and "searched" not in kinds
    assert Allocation.load(finished_run / "allocation.npz").fingerprint() == allocation


def test_search_on_movielens_ratings_as_clicks(shared_data: Path, tmp_path: Path):
    inter = shared_data / "ml-100k_recbole" / "ml-100k.inter.gz"
    args = ["search", "--runs", str(tmp_path), "--name", "ml", "--data", str(inter), "--rating-col", "rating",
            "--min-rating", "4", "--budget", "0.8", *FAST]
    assert main(args) == 0
    summary = json.loads((tmp_path / "ml" / "metrics.json").read_text())["data"]
    assert summary["train_pairs"] + summary["valid_pairs"] + summary["test_pairs"] == 55_375


def test_rating_options_come_together(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["search", "--runs", str(tmp_path), "--rating-col", "rating", *FAST]) == 2
    assert "--rating-col and --min-rating together" in capsys.readouterr().err


def test_fitness_search_retrains_the_top_and_draws_fitness(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    args = ["search", "--runs", str(tmp_path), "--name", "rand", "--controller", "random", "--trials", "4",
            "--ask-batch", "2", "--evaluator", "finetune", "--finetune-steps", "5", "--retrain-top", "2", *FAST]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "4 allocations evaluated by the finetune evaluator" in out
    run = tmp_path / "rand"
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["retrained"]) == 2 and metrics["trials"] == 4
    best = max(metrics["retrained"], key=lambda r: r["valid_quality"])
    assert metrics["allocation"]["fingerprint"] == best["fingerprint"], "the best retrained on validation wins"
    assert metrics["allocation"]["values"] <= metrics["budget"]["max_values"]
    assert main(["report", str(run)]) == 0
    assert (run / "report" / "fitness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Rerunning the finished run reloads every stage: same answer, nothing retrained.
    assert main(["resume", str(run), "--quiet"]) == 0
    again = json.loads((run / "metrics.json").read_text())
    assert again["allocation"] == metrics["allocation"] and again["allocated"]["test"] == metrics["allocated"]["test"]
    trained = [line for line in (run / "events.jsonl").read_text().splitlines() if '"trained"' in line]
    assert len(trained) == 3, "one supernet and two retrains, none repeated"


def test_bet_search_with_options_and_successive_halving(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    args = ["search", "--runs", str(tmp_path), "--name", "bet", "--controller", "bet", "--trials", "5",
            "--controller-option", "candidates=12", "--controller-option", "predictor=sizes",
            "--retrain-top", "3", "--retrain", "halving", *FAST]
    assert main(args) == 0
    assert "top 3 by successive halving" in capsys.readouterr().out
    run = tmp_path / "bet"
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["controller_options"] == {"candidates": 12, "predictor": "sizes"}
    trials = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines() if '"trial"' in line]
    assert [t["note"]["strategy"] for t in trials] == ["greedy", "greedy", "random", "nearest", "greedy"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["retrain"] == "halving" and [r["final"] for r in metrics["retrained"]].count(True) == 1
    final = next(r for r in metrics["retrained"] if r["final"])
    assert metrics["allocation"]["fingerprint"] == final["fingerprint"]
    assert metrics["allocation"]["values"] <= metrics["budget"]["max_values"]
    assert main(["report", str(run)]) == 0  # fitness.png with BET's predictions beside the measurements
    assert (run / "report" / "fitness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_faithful_sets_the_papers_protocol_and_bad_controller_options_are_refused(capsys: pytest.CaptureFixture[str]):
    from nas.app.cli import _config_from_args, build_parser

    config = _config_from_args(build_parser().parse_args(["search", "--controller", "bet", "--faithful", "--evaluator", "supernet"]))
    assert (config.evaluator, config.supernet.mode, config.retrain) == ("finetune", "full", "full")
    assert (config.finetune.epochs, config.finetune.decay_every, config.finetune.lr) == (10, 200, 0.03)
    assert main(["search", "--controller", "bet", "--controller-option", "oops", *FAST]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert main(["search", "--controller", "equal", "--controller-option", "candidates=3", *FAST]) == 2
    assert "does not take the options ['candidates']" in capsys.readouterr().err


def test_click_search_on_movielens_with_features(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """The RecBole folder is found to be click data; DeepFM's allocation keeps AUC far above chance within the budget."""
    args = ["search", "--runs", str(tmp_path), "--name", "ml", "--data", str(shared_data / "ml-100k_recbole"),
            "--model", "deepfm", "--budget", "0.8", "--controller", "frequency", "--epochs", "1", "--batch-size", "4096",
            "--quiet"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "ml-100k: 8 fields" in text and "auc" in text and "logloss" in text
    folder = tmp_path / "ml"
    config = json.loads((folder / "config.json").read_text())["config"]
    assert config["data"]["format"] == "movielens-ctr" and config["d_max"] == 16 and config["train"]["lr"] == 1e-3
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["task"] == "click" and metrics["data"]["fields"] == 8
    assert metrics["full"]["test"]["auc"] > 0.7 and metrics["allocated"]["test"]["auc"] > 0.7
    assert metrics["allocation"]["values"] <= metrics["budget"]["max_values"] == int(0.2 * 16 * metrics["data"]["rows"])
    manifest = json.loads((folder / "export" / "manifest.json").read_text())
    assert set(manifest["tables"]) == {"user", "item", "age", "gender", "occupation", "zip", "genres", "year"}
    assert manifest["bytes_stored"] <= manifest["budget"]["max_bytes"]
    assert main(["evaluate", str(folder)]) == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx(metrics["allocated"]["test"])


def test_a_model_on_the_wrong_kind_of_data_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["search", "--runs", str(tmp_path), "--model", "mf", "--format", "auto", "--label-col", "y", *FAST]) == 2
    assert "apply to click data" in capsys.readouterr().err
    assert main(["search", "--runs", str(tmp_path), "--model", "deepfm", "--train", "x.txt", *FAST]) == 2
    err = capsys.readouterr().err
    assert "'deepfm' is a click model" in err and "use one of lightgcn, mf, neumf, ngcf" in err
    assert not any(tmp_path.iterdir())


def test_click_search_on_a_csv_file(tmp_path: Path):
    """A CSV with --label-col is click data: label, categorical and numeric columns, each field a table."""
    rng = np.random.default_rng(0)
    n = 1500
    city, device, age = rng.integers(0, 40, n), rng.integers(0, 3, n), rng.integers(15, 70, n)
    clicks = rng.random(n) < 1.0 / (1.0 + np.exp(-(np.sin(city) + (device == 1) - 0.5)))
    lines = ["clicked,city,device,age,ignored"] + [f"{int(c)},c{a},d{b},{g},x" for c, a, b, g in zip(clicks, city, device, age)]
    (tmp_path / "clicks.csv").write_text("\n".join(lines) + "\n")
    args = ["search", "--runs", str(tmp_path / "runs"), "--name", "csv", "--data", str(tmp_path / "clicks.csv"),
            "--label-col", "clicked", "--categorical", "city,device", "--numeric", "age", "--oov-threshold", "2",
            "--model", "fm", "--space", "per-field", "--controller", "random", "--trials", "3", "--retrain-top", "1",
            "--epochs", "2", "--lr", "0.01", "--quiet"]
    assert main(args) == 0
    metrics = json.loads((tmp_path / "runs" / "csv" / "metrics.json").read_text())
    assert metrics["data"]["fields"] == 3 and set(metrics["allocation"]["tables"]) == {"city", "device", "age"}
    assert metrics["allocation"]["values"] <= metrics["budget"]["max_values"] and metrics["trials"] == 3
    assert metrics["full"]["test"]["auc"] > 0.55
    data = json.loads((tmp_path / "runs" / "csv" / "config.json").read_text())["config"]["data"]
    assert data["format"] == "ctr-csv" and data["categorical"] == ["city", "device"] and data["oov_threshold"] == 2
