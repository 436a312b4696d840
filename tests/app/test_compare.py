"""``embnas compare``: a grid of cells runs, resumes, survives a failed cell, and reports what the run folders hold."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import nas
from nas.app.cli import main
from nas.core.errors import ConfigError, RunLockedError
from nas.pipeline._lock import FolderLock
from nas.pipeline.result import SearchResult

#: Tiny cells: 500 rows of width 8, one epoch (every row at d_min=1 needs 500 of the 4,000 values).
GRID = """\
data = { format = "synthetic", extra = { n_users = 200, n_items = 300 } }
model = "mf"
budgets = ["0.5", "0.7", "1"]
seeds = [0, 1]
[options]
d_max = 8
train = { epochs = 1 }
[arms.equal]
[arms.frequency]
controller = "frequency"
"""
ARMS, BUDGETS, SEEDS = ("equal", "frequency"), ("0.5", "0.7"), (0, 1)


def run_cli(*argv: str) -> tuple[int, str, str]:
    """``embnas ARGV`` in this process: the exit status, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(argv))
    return status, out.getvalue(), err.getvalue()


def write_grid(folder: Path, text: str = GRID) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    grid = folder / "grid.toml"
    grid.write_text(text)
    return grid


def cell(out: Path, arm: str, budget: str, seed: int) -> Path:
    return out / "runs" / arm / budget / f"seed{seed}"


def stamps(out: Path) -> dict[Path, tuple[int, int]]:
    """Inode and modification time of every cell's metrics.json: what a rewrite would change."""
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(out.glob("runs/*/*/*/metrics.json"))}


@pytest.fixture(autouse=True)
def reference_cache(tmp_path_factory, monkeypatch):
    """Full reference models are cached under ``EMBNAS_CACHE``: a folder of the test's own."""
    monkeypatch.setenv("EMBNAS_CACHE", str(tmp_path_factory.getbasetemp() / "embnas-cache"))


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """The grid, run once by the command with two cells side by side."""
    folder = tmp_path_factory.mktemp("compare")
    grid = write_grid(folder)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EMBNAS_CACHE", str(tmp_path_factory.getbasetemp() / "embnas-cache"))
        status, stdout, stderr = run_cli("compare", str(grid), "--jobs", "2", "--quiet")
    return {"folder": folder, "grid": grid, "out": folder / "grid", "status": status, "stdout": stdout,
            "stderr": stderr}


def test_every_feasible_cell_runs_and_the_outputs_say_how_they_compare(ran):
    out = ran["out"]
    assert ran["status"] == 0, ran["stderr"]
    # The budget no allocation can meet is dropped with one line; the other budgets ran.
    skipped = [line for line in ran["stderr"].splitlines() if "budget 1" in line]
    assert len(skipped) == 1 and "is skipped" in skipped[0] and "smallest feasible budget is 500 parameters" in skipped[0]
    assert not any(out.glob("runs/*/1"))
    finished = {p.parts[-4:-1] for p in out.glob("runs/*/*/*/metrics.json")}
    assert finished == {(a, b, f"seed{s}") for a in ARMS for b in BUDGETS for s in SEEDS}
    markdown = (out / "comparison.md").read_text()
    assert markdown in ran["stdout"]  # the table is printed at the end
    for budget in BUDGETS:
        section = markdown.split(f"## Budget {budget}\n")[1].split("##")[0]
        comparison, timing = section.split("Where the time goes")
        rows = [line for line in comparison.splitlines() if line.startswith("| ")]
        assert [r.split("|")[1].strip() for r in rows[2:]] == ["equal", "frequency", "full model"]
        stages = [line for line in timing.splitlines() if line.startswith("| ")]
        assert [c.strip() for c in stages[0].split("|")[1:-1]] == ["arm", "reference", "supernet", "search", "retrain",
                                                                     "total"]
        assert [r.split("|")[1].strip() for r in stages[2:]] == ["equal", "frequency"]
        assert "Δ vs equal [95 % CI] (%)" in rows[0] and "vs frequency" in rows[0]
    assert "Budget 1 is skipped" in markdown
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "comparison.html").read_text()
    for arm in ARMS:  # a point per arm and budget on the front, and a row per arm in each budget's table
        assert page.count(f'data-point="{arm}"') == len(BUDGETS) and page.count(f"<tr><td>{arm}</td>") == len(BUDGETS)
    assert "full model" in page and "<script" not in page
    assert not (out / "failures.jsonl").exists()


def test_the_json_holds_what_the_run_folders_hold(ran):
    report = json.loads((ran["out"] / "comparison.json").read_text())
    assert report["format"] == "embnas.comparison" and report["metric"] == "ndcg@20" and report["higher_is_better"]
    assert report["budgets"] == list(BUDGETS) and report["seeds"] == list(SEEDS)
    assert report["baselines"] == ["equal", "frequency"] and report["missing"] == []
    read = {(g["arm"], g["budget"]): {c["seed"]: SearchResult.read(c["run"]) for c in g["cells"]}
            for g in report["groups"]}
    for group in report["groups"]:
        results = read[(group["arm"], group["budget"])]
        assert sorted(results) == list(SEEDS)
        for entry in group["cells"]:
            result = results[entry["seed"]]
            assert Path(entry["run"]) == result.run_dir
            assert entry["ndcg@20"] == result.metrics["test"]["ndcg@20"]
            assert entry["bytes"] == result.export_bytes and entry["cost_ratio"] == pytest.approx(result.cost_ratio)
        quality = [results[s].metrics["test"]["ndcg@20"] for s in SEEDS]
        assert group["n"] == 2 and group["mean"] == pytest.approx(np.mean(quality))
        assert group["sd"] == pytest.approx(np.std(quality, ddof=1))
        assert group["bytes"] == pytest.approx(np.mean([results[s].export_bytes for s in SEEDS]))
        for stage in ("reference", "supernet", "search", "retrain", "total"):
            assert group["seconds"][stage] == pytest.approx(np.mean([results[s].timings.get(stage, 0.0) for s in SEEDS]))
        assert group["full_seconds"] == pytest.approx(np.mean([results[s].full_train_seconds for s in SEEDS]))
        for base, diff in group["versus"].items():
            assert base != group["arm"]
            theirs = read[(base, group["budget"])]
            differences = [results[s].metrics["test"]["ndcg@20"] - theirs[s].metrics["test"]["ndcg@20"] for s in SEEDS]
            assert diff["n"] == 2 and diff["seeds"] == list(SEEDS)
            assert diff["mean"] == pytest.approx(np.mean(differences))
            assert diff["low"] < diff["mean"] < diff["high"] and diff["verdict"] in ("better", "worse", "level")
        retain = [results[s].metrics["test"]["ndcg@20"] / results[s].full_metrics["test"]["ndcg@20"] for s in SEEDS]
        assert group["retain"]["n"] == 2 and group["retain"]["mean"] == pytest.approx(np.mean(retain))
    full = {s: r.full_metrics["test"]["ndcg@20"] for runs in read.values() for s, r in runs.items() if r.reference == "full"}
    assert report["full_model"]["n"] == len(full) == 2
    assert report["full_models"] == [{"arms": list(ARMS), **{k: report["full_model"][k] for k in ("n", "mean", "sd", "by_seed")}}]
    assert report["full_model"]["mean"] == pytest.approx(np.mean(list(full.values())))


def test_a_rerun_runs_only_what_is_missing_and_a_failing_cell_loses_nothing(ran, tmp_path):
    shutil.copytree(ran["folder"], tmp_path, dirs_exist_ok=True)
    grid, out = tmp_path / "grid.toml", tmp_path / "grid"
    gone, locked = cell(out, "equal", "0.5", 1), cell(out, "frequency", "0.7", 0)
    shutil.rmtree(gone)  # a cell never run (or lost)
    (locked / "metrics.json").unlink()  # an unfinished cell ...
    lock = FolderLock.acquire(locked, lambda path: contextlib.nullcontext())  # ... that another writer holds
    kept = stamps(out)
    try:
        status, stdout, stderr = run_cli("compare", str(grid), "--jobs", "1", "--quiet")
    finally:
        lock.release()
    assert status == 2
    failed = [line for line in stderr.splitlines() if "failed" in line]
    assert len(failed) == 1 and "arm frequency, budget 0.7, seed 0 failed:" in failed[0] and "is being written" in failed[0]
    assert (gone / "metrics.json").is_file(), "the missing cell ran"
    assert not (locked / "metrics.json").exists()
    assert stamps(out) == {**kept, gone / "metrics.json": stamps(out)[gone / "metrics.json"]}, "finished cells untouched"
    logged = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [(f["arm"], f["budget"], f["seed"], f["error"]) for f in logged] == [("frequency", "0.7", 0, "RunLockedError")]
    report = json.loads((out / "comparison.json").read_text())
    assert report["missing"] == [{"arm": "frequency", "budget": "0.7", "seed": 0}]
    assert report["failures"][0]["error"] == "RunLockedError"
    group = next(g for g in report["groups"] if g["arm"] == "frequency" and g["budget"] == "0.7")
    assert group["n"] == 1 and group["versus"]["equal"]["verdict"] == "n/a"  # one paired seed: no interval
    assert "Not finished: frequency 0.7 seed 0" in stdout

    # --report-only writes the outputs again from what is finished, and runs nothing.
    before = stamps(out)
    status, stdout, _ = run_cli("compare", str(grid), "--report-only", "--quiet")
    assert status == 0 and stamps(out) == before and not (locked / "metrics.json").exists()
    assert "7 of 8 cells finished" in stdout


def test_report_only_on_a_new_grid_runs_nothing(tmp_path):
    grid = {"data": {"format": "synthetic", "extra": {"n_users": 200, "n_items": 300}}, "model": "mf",
            "budgets": ["0.5"], "seeds": [0, 1], "options": {"d_max": 8, "train": {"epochs": 1}},
            "arms": {"equal": {}, "frequency": {}}}
    comparison = nas.compare(grid, tmp_path / "out", report_only=True, progress=False)
    assert not (tmp_path / "out" / "runs").exists()
    assert comparison.missing == tuple((a, "0.5", s) for a in ARMS for s in SEEDS)
    assert comparison.group("frequency", "0.5").quality.n == 0 and comparison.full_model is None
    assert comparison.group("frequency", "0.5").versus["equal"].verdict == "n/a"
    assert all(path.is_file() for path in comparison.paths.values())
    assert "0 of 4 cells finished" in comparison.markdown


def test_a_corner_of_the_grid_runs_alone_and_the_rest_later(tmp_path):
    """budgets= and arms= run only their cells; the outputs cover what is finished; the next call finishes the rest."""
    grid = {"data": {"format": "synthetic", "extra": {"n_users": 200, "n_items": 300}}, "model": "mf",
            "budgets": ["0.5", "0.8"], "seeds": [0], "options": {"d_max": 8, "train": {"epochs": 1}, "reference": "none"},
            "arms": {"equal": {}, "frequency": {}}}
    first = nas.compare(grid, tmp_path / "out", progress=False, budgets=["0.8"], arms=["frequency"])
    ran = sorted(str(p.relative_to(tmp_path / "out" / "runs")) for p in (tmp_path / "out" / "runs").glob("*/*/seed0"))
    assert ran == ["frequency/0.8/seed0"]
    assert set(first.missing) == {("equal", "0.5", 0), ("equal", "0.8", 0), ("frequency", "0.5", 0)}
    assert first.group("frequency", "0.8").quality.n == 1
    rest = nas.compare(grid, tmp_path / "out", progress=False)
    assert rest.missing == () and rest.group("frequency", "0.8").quality.mean == first.group("frequency", "0.8").quality.mean
    with pytest.raises(ConfigError, match="the grid has no budget '0.9'; its budgets are 0.5, 0.8"):
        nas.compare(grid, tmp_path / "out", progress=False, budgets=["0.9"])
    with pytest.raises(ConfigError, match="the grid has no arm 'bet'"):
        nas.compare(grid, tmp_path / "out", progress=False, arms=["bet"])


def test_arms_that_train_differently_each_divide_by_their_own_full_model(tmp_path):
    """An arm with other training options has full models of its own: a row each, and its retain divides by its own."""
    grid = {"data": {"format": "synthetic", "extra": {"n_users": 200, "n_items": 300}}, "model": "mf",
            "budgets": ["0.5"], "seeds": [0, 1], "options": {"d_max": 8, "train": {"epochs": 1}},
            "arms": {"equal": {}, "frequency": {}, "equal_fast": {"controller": "equal", "train": {"lr": 0.05}}}}
    comparison = nas.compare(grid, tmp_path / "out", progress=False)
    results = {(arm, seed): SearchResult.read(tmp_path / "out" / "runs" / arm / "0.5" / f"seed{seed}")
               for arm in ("equal", "frequency", "equal_fast") for seed in SEEDS}
    own = {arm: [results[(arm, s)].full_metrics["test"]["ndcg@20"] for s in SEEDS] for arm in ("equal", "equal_fast")}
    assert own["equal"] != own["equal_fast"]
    assert [full.arms for full in comparison.full_models] == [("equal", "frequency"), ("equal_fast",)]
    assert comparison.full_model.mean == pytest.approx(np.mean(own["equal"]))
    assert comparison.full_models[1].quality.mean == pytest.approx(np.mean(own["equal_fast"]))
    retain = [results[("equal_fast", s)].metrics["test"]["ndcg@20"] / own["equal_fast"][i] for i, s in enumerate(SEEDS)]
    assert comparison.group("equal_fast", "0.5").retain.mean == pytest.approx(np.mean(retain))
    table = comparison.markdown.split("Where the time goes")[0]
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")]
    assert rows[-2:] == ["full model (equal, frequency)", "full model (equal_fast)"]


@pytest.mark.parametrize(("change", "message"), [
    ({"[arms.frequency]\ncontroller = \"frequency\"": "[arms.frequency]\ncontroller = \"no-such\""},
     "arm 'frequency': unknown controller 'no-such'; available:"),
    ({"[options]\n": "[options]\nepochz = 3\n"}, "arm 'equal': unknown search options ['epochz']"),
    ({"[options]\n": "[options]\nbudget = \"0.9\"\n"}, "[options] sets 'budget'; the grid sets it once"),
    ({"budgets = [": "baselines = [\"bet\"]\nbudgets = ["}, "baselines ['bet'] are not arms"),
    ({"\"1\"]": "\"lots\"]"}, "budget 'lots': cannot read the budget"),
    ({"train = { epochs = 1 }": "train = { epochs = 0 }"}, "arm 'equal': training option"),
    ({"model = \"mf\"": "model = \"mf\"\nmetric = \"auc\""}, "metric 'auc' is not a test metric of the top-k model"),
])
def test_a_grid_that_cannot_run_is_one_line_before_anything_runs(tmp_path, change, message):
    text = GRID
    for old, new in change.items():
        assert old in text
        text = text.replace(old, new)
    grid = write_grid(tmp_path, text)
    status, stdout, stderr = run_cli("compare", str(grid), "--quiet")
    assert status == 2 and stdout == ""
    assert stderr.count("\n") == 1 and message in stderr, stderr
    assert not (tmp_path / "grid").exists(), "nothing ran, nothing was written"


def test_a_finished_cell_of_another_grid_is_refused(ran, tmp_path):
    shutil.copytree(ran["folder"], tmp_path, dirs_exist_ok=True)
    grid = write_grid(tmp_path, GRID.replace("epochs = 1", "epochs = 1, lr = 0.01"))
    status, _, stderr = run_cli("compare", str(grid), "--report-only", "--quiet")
    errors = [line for line in stderr.splitlines() if line.startswith("embnas: error:")]
    assert status == 2 and len(errors) == 1
    assert "arm equal, budget 0.5, seed 0:" in errors[0] and "another configuration (it differs in train)" in errors[0]


def test_a_finished_cell_on_data_that_changed_since_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    lines = [" ".join(str(i) for i in [u, *rng.choice(40, size=4, replace=False)]) for u in range(30)]
    train, test = tmp_path / "train.txt", tmp_path / "test.txt"
    train.write_text("\n".join(lines) + "\n")
    test.write_text("\n".join(f"{u} {u + 1}" for u in range(30)) + "\n")
    text = GRID.replace('data = { format = "synthetic", extra = { n_users = 200, n_items = 300 } }',
                        'data = { format = "lightgcn", train = ["train.txt"], test = ["test.txt"] }')
    text = text.replace('budgets = ["0.5", "0.7", "1"]', 'budgets = ["0.5"]').replace("seeds = [0, 1]", "seeds = [0]")
    grid = write_grid(tmp_path, text)
    status, _, stderr = run_cli("compare", str(grid), "--quiet")
    assert status == 0, stderr
    train.write_text("\n".join(lines[:-1]) + "\n" + lines[-1].rsplit(" ", 1)[0] + "\n")  # one interaction fewer
    status, _, stderr = run_cli("compare", str(grid), "--report-only", "--quiet")
    errors = [line for line in stderr.splitlines() if line.startswith("embnas: error:")]
    assert status == 2 and len(errors) == 1, stderr
    assert "arm equal, budget 0.5, seed 0:" in errors[0] and "a run on other data" in errors[0]


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie nobody reaped has ended too)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True
    return state in ("Z", "X")


def _lock_is_free(folder: Path) -> bool:
    """Whether no process holds ``folder``'s lock (taken and released at once when free)."""
    try:
        FolderLock.acquire(folder, lambda path: contextlib.nullcontext()).release()
    except RunLockedError:
        return False
    return True


def _wait_for(condition, what: str, limit: float = 120.0) -> None:
    """Wait until ``condition()`` holds (a liveness wait, not a timing claim: the limit only ends a hung test)."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_killed_harness_leaves_no_worker_holding_a_run_folder(tmp_path):
    # One long cell: it is still training when the harness is killed.
    grid = write_grid(tmp_path, GRID.replace('budgets = ["0.5", "0.7", "1"]', 'budgets = ["0.5"]')
                      .replace("seeds = [0, 1]", "seeds = [0]").replace("[arms.equal]\n", "")
                      .replace("epochs = 1", "epochs = 100000, eval_every = 10000, patience = 100"))
    folder = cell(tmp_path / "grid", "frequency", "0.5", 0)
    root = Path(__file__).resolve().parents[2]
    harness = subprocess.Popen([sys.executable, "-m", "nas", "compare", str(grid), "--quiet"], cwd=tmp_path,
                               env={**os.environ, "PYTHONPATH": str(root)}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    worker = None
    try:
        lock = folder / "lock"
        _wait_for(lambda: lock.exists() and lock.read_text().strip().isdigit(), "the worker to lock the cell's folder")
        worker = int(lock.read_text())
        assert worker != harness.pid
        harness.send_signal(signal.SIGKILL)
        harness.wait()
        _wait_for(lambda: _gone(worker), "the worker to end with its harness")
        # The folder is free again. A process's other threads may still be closing its files
        # for a moment after its main thread shows as ended, so the lock is waited for too.
        _wait_for(lambda: _lock_is_free(folder), "the worker's lock on the cell's folder to be released")
    finally:
        if harness.poll() is None:
            harness.kill()
            harness.wait()
        if worker is not None and not _gone(worker):
            os.kill(worker, signal.SIGKILL)


@pytest.mark.parametrize("grid", sorted((Path(__file__).parents[2] / "benchmarks" / "grids").glob("[!_]*.toml")),
                         ids=lambda path: path.stem)
def test_every_published_grid_reads_and_plans(grid, tmp_path):
    """The grid files docs/results.md cites stay valid as the options evolve: each reads, and plans a cell per arm, budget and seed."""
    from nas.app.grid import plan_cells, read_grid

    read = read_grid(grid)
    cells = plan_cells(read, tmp_path)
    assert len(cells) == len(read.arms) * len(read.budgets) * len(read.seeds) > 0
