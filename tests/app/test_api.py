"""The library API: ``nas.search`` and ``nas.resume`` on data in memory, in memory or in a run folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nas
from nas.app.cli import main
from recsys.data import synthetic

ROOT = Path(__file__).resolve().parents[2]
FAST = {"train": {"epochs": 2, "eval_every": 1}, "fitness_users": 300, "progress": False}
RECORDED = json.loads((Path(__file__).parent / "recorded_results.json").read_text())


@pytest.fixture(scope="module")
def data():
    return synthetic(n_users=300, n_items=400, seed=3)


def test_import_is_light_and_help_works():
    probe = ("import sys, time; t = time.perf_counter(); import nas; took = time.perf_counter() - t\n"
             "print('torch' in sys.modules, 'numpy' in sys.modules); help(nas.search)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    assert out.splitlines()[0] == "False False"  # torch and numpy come with the first use, not with the import
    assert "Search embedding sizes under a hard budget" in out


def test_public_names_resolve():
    for name in nas.__all__:
        assert getattr(nas, name) is not None, name
    assert "bet" in nas.CONTROLLERS and "per-feature" in nas.SPACES and "lightgcn" in nas.BACKBONES.names()
    with pytest.raises(AttributeError):
        nas.not_a_name  # noqa: B018


def test_search_in_memory_writes_nothing(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    result = nas.search(data, budget=0.9, controller="random", trials=3, retrain_top=2, seed=1, run_dir=None, **FAST)
    assert sorted(tmp_path.rglob("*")) == before
    assert isinstance(result, nas.SearchResult) and result.run_dir is None
    assert result.allocation.cost <= result.budget.max_values
    assert result.metrics["test"]["ndcg@20"] > 0 and result.full_metrics["test"]["ndcg@20"] > 0
    assert result.trials == 3 and len(result.retrained) == 2
    assert set(result.timings) - {"reference"} == {"supernet", "search", "retrain", "total"}
    # Exporting writes what the summary announced, within the budget, and serves the model's vectors.
    manifest = result.export(tmp_path / "out")
    assert manifest["bytes_stored"] == result.export_bytes <= result.budget.max_bytes
    served = nas.PackedEmbedding.load(tmp_path / "out")
    import torch

    ids = torch.arange(data.n_users)
    expected = result.trained_model.embedding.served_tables(result.allocation)["user"]
    assert torch.equal(served.lookup("user", ids), expected)


def test_search_in_a_folder_matches_the_same_search_in_memory(data, tmp_path):
    kept = nas.search(data, controller="frequency", seed=2, run_dir=None, **FAST)
    written = nas.search(data, controller="frequency", seed=2, run_dir=tmp_path / "run", **FAST)
    assert written.allocation.fingerprint() == kept.allocation.fingerprint()
    assert written.metrics == kept.metrics and written.export_bytes == kept.export_bytes
    read = nas.SearchResult.read(tmp_path / "run")
    assert read.allocation.fingerprint() == written.allocation.fingerprint()
    assert read.metrics["test"] == pytest.approx(written.metrics["test"])
    assert read.trained_model is None and read.run_dir == tmp_path / "run"
    read.export(tmp_path / "again")  # from the run folder's checkpoint
    assert (tmp_path / "again" / "manifest.json").is_file()
    # A run of data given in memory continues only with that data handed over again.
    with pytest.raises(nas.ConfigError, match="hand the same data over again"):
        nas.resume(tmp_path / "run", progress=False)
    assert nas.resume(tmp_path / "run", data=data, progress=False).metrics == written.metrics
    other = synthetic(n_users=300, n_items=400, seed=4)
    with pytest.raises(nas.ResumeError):
        nas.resume(tmp_path / "run", data=other, progress=False)


def test_bad_options_are_config_errors(data):
    with pytest.raises(nas.ConfigError, match="unknown search options"):
        nas.search(data, epochs=3)
    with pytest.raises(nas.ConfigError, match="unknown training options"):
        nas.search(data, train={"epoch": 3})
    with pytest.raises(nas.ConfigError, match="cannot search"):
        nas.search(np.zeros(3))
    with pytest.raises(nas.BudgetError):
        nas.search(data, budget="10B")


def test_a_killed_library_run_resumes_to_the_same_result(tmp_path):
    """The process is killed (SIGKILL) in the middle of retraining; ``nas.resume`` ends where the uninterrupted run ends."""
    script = (
        "import os, signal, sys, nas\n"
        "from nas.pipeline.runs import Run\n"
        "run_dir, kill = sys.argv[1], sys.argv[2] == 'kill'\n"
        "log_event = Run.log_event\n"
        "def dying(self, kind, **fields):\n"
        "    if kill and kind == 'trained' and fields.get('stage') == 'retrain':\n"  # the first retraining, done but unlogged
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    log_event(self, kind, **fields)\n"
        "Run.log_event = dying\n"
        "data = nas.DataSpec('synthetic', extra={'n_users': 300, 'n_items': 400})\n"
        "nas.search(data, budget=0.9, controller='random', trials=3, retrain_top=2, seed=5, run_dir=run_dir, "
        "train={'epochs': 2, 'eval_every': 1}, fitness_users=300, progress=False)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = subprocess.run([sys.executable, "-c", script, str(tmp_path / "killed"), "kill"], env=env)
    assert killed.returncode == -9
    assert not (tmp_path / "killed" / "metrics.json").exists()
    resumed = nas.resume(tmp_path / "killed", progress=False)
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "whole"), "no"], env=env, check=True)
    whole = nas.SearchResult.read(tmp_path / "whole")
    assert resumed.allocation.fingerprint() == whole.allocation.fingerprint()
    assert resumed.metrics["test"] == whole.metrics["test"]


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_embnas_search_reproduces_the_results_recorded_before_the_layers(name, tmp_path):
    """`embnas search` on the default data: the allocation and test metrics recorded by the version before the layers."""
    controller, seed = name.rsplit("-", 1)
    args = ["search", "--controller", controller, "--seed", seed, "--runs", str(tmp_path), "--name", name, "--quiet",
            "--epochs", "2", "--eval-every", "1", "--fitness-users", "300", "--trials", "4", "--retrain-top", "2"]
    assert main(args) == 0
    result = nas.SearchResult.read(tmp_path / name)
    recorded = RECORDED[name]
    assert result.allocation.fingerprint() == recorded["fingerprint"]
    assert result.metrics["test"] == pytest.approx(recorded["test"], rel=1e-6)
    # What was recorded as "full" was the supernet: a rule's plain full model (now the cached
    # reference itself), BET's sandwich supernet (now reported beside the plainly trained reference).
    supernet = result.full_metrics if result.supernet_metrics is None else result.supernet_metrics
    assert supernet["test"] == pytest.approx(recorded["full"], rel=1e-6)
    assert result.reference == "full" and (result.supernet is None) == (controller == "frequency")
