"""A search killed with SIGKILL anywhere resumes to exactly the result of an uninterrupted run.

Each case runs ``crash_runner.py`` in a child process that kills itself at a chosen
point (inside an atomic write, before its rename or half-way through its data; half-way
through an event line) or is killed by this process after a random delay.  The run
folder must then hold no half-written file (every JSON, safetensors and npz file reads
back whole; only the last event line may be torn, and the log reader skips it), and
``embnas resume`` must end with the reference run's allocation, trials and metrics.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from nas.app.cli import main
from nas.core import Allocation

RUNNER = Path(__file__).with_name("crash_runner.py")
#: Metrics that measure time or where the run lives, not what it found.
_UNSTABLE = {"run", "seconds", "timing", "train_seconds", "folder"}


def _start(runs: Path, name: str, *flags: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(RUNNER), str(runs), name, *flags],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _reference_run(tmp_path_factory: pytest.TempPathFactory, config: str) -> Path:
    """The uninterrupted run of a crash-runner configuration."""
    runs = tmp_path_factory.mktemp("runs")
    process = _start(runs, "reference", "--config", config)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err.decode()
    return runs / "reference"


def _killed_then_resumed(tmp_path: Path, config: str, flag: str, n: int) -> Path:
    """A run of ``config`` killed at ``flag n``, checked intact, then resumed to the end; its folder."""
    process = _start(tmp_path, "run", "--config", config, flag, str(n))
    _, err = process.communicate(timeout=300)
    assert process.returncode == -9, f"the runner should have died at {flag} {n}: {err.decode()}"
    folder = tmp_path / "run"
    assert_intact(folder)
    assert not (folder / "metrics.json").exists()
    assert main(["resume", str(folder), "--quiet"]) == 0
    return folder


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _reference_run(tmp_path_factory, "random")


def _stable(value):  # noqa: ANN001, ANN202
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in _UNSTABLE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def _trials(folder: Path) -> list[tuple]:
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines() if line.endswith("}")]
    return [(e["round"], e["index"], e["fingerprint"], e["fitness"]) for e in events if e["event"] == "trial"]


def assert_intact(folder: Path) -> None:
    """No file of the run is half-written (temporaries of interrupted writes aside)."""
    for path in folder.rglob("*"):
        if path.is_dir() or path.name.endswith(".tmp"):
            continue
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            lines = path.read_text().splitlines()
            for line in lines[:-1]:
                if line.startswith('{"event"') and not line.endswith("}"):
                    continue  # a torn line the next append closed; the reader skips it
                json.loads(line)
        elif path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():
                    handle.get_tensor(key)
        elif path.suffix == ".npz":
            Allocation.load(path)


def assert_same_result(folder: Path, reference: Path) -> None:
    assert _trials(folder) == _trials(reference)
    ours, theirs = Allocation.load(folder / "allocation.npz"), Allocation.load(reference / "allocation.npz")
    assert ours.fingerprint() == theirs.fingerprint()
    for name in theirs.row_dims:
        np.testing.assert_array_equal(ours.row_dims[name], theirs.row_dims[name])
    metrics = json.loads((folder / "metrics.json").read_text())
    assert _stable(metrics) == _stable(json.loads((reference / "metrics.json").read_text()))
    assert not [p for p in folder.rglob("*.tmp")], "resume leaves no temporary file behind"
    assert not [p for p in folder.rglob("*.state.safetensors")], "finished trainings drop their partial state"


@pytest.mark.parametrize(
    "flag, n",
    [
        ("--die-at-rename", 3),  # supernet training, an epoch's state
        ("--die-at-rename", 9),  # search, a round's controller state
        ("--die-mid-write", 7),  # search, a candidate's allocation
        ("--die-mid-write", 11),  # search, second round: the first round's controller state is loaded
        ("--die-mid-write", 19),  # retraining
        ("--die-mid-event", 4),  # a trial line
        ("--die-mid-event", 11),  # the retrained line of the second allocation
    ],
)
def test_killed_inside_a_write_resumes_to_the_same_result(tmp_path: Path, reference: Path, flag: str, n: int):
    folder = _killed_then_resumed(tmp_path, "random", flag, n)
    assert_same_result(folder, reference)


def test_killed_at_random_moments_resumes_to_the_same_result(tmp_path: Path, reference: Path):
    rng = np.random.default_rng(7)
    folder = tmp_path / "run"
    kills = 0
    for _ in range(3):
        process = _start(tmp_path, "run")
        # Kill it at a random moment of its run, however long importing took on a loaded machine.
        started = time.monotonic()
        while not (folder / "config.json").exists() and process.poll() is None and time.monotonic() - started < 120:
            time.sleep(0.05)
        time.sleep(float(rng.uniform(0.0, 2.0)))  # the run itself takes ~2 s on an idle machine
        if process.poll() is None:
            process.kill()
            kills += 1
        process.communicate(timeout=300)
        if (folder / "config.json").exists():
            assert_intact(folder)
    assert kills >= 1
    assert main(["resume", str(folder), "--quiet"]) == 0
    assert_same_result(folder, reference)


def test_resume_refuses_a_folder_that_is_not_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["resume", str(tmp_path), "--quiet"]) == 2
    assert "not a run folder" in capsys.readouterr().err


@pytest.fixture(scope="module")
def bet_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _reference_run(tmp_path_factory, "bet")


@pytest.mark.parametrize(
    "flag, n",
    [
        ("--die-mid-write", 14),  # BET's controller state after the second round (population, predictor, Adam)
        ("--die-mid-write", 21),  # successive halving, first rung, the second candidate's last state
        ("--die-at-rename", 25),  # the survivor's training in the last rung
        ("--die-mid-event", 11),  # the first rung's line of the second candidate
    ],
)
def test_a_killed_bet_search_with_halving_resumes_to_the_same_result(
    tmp_path: Path, bet_reference: Path, flag: str, n: int
):
    folder = _killed_then_resumed(tmp_path, "bet", flag, n)
    assert_same_result(folder, bet_reference)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert [r["final"] for r in metrics["retrained"]].count(True) == 1 and len(metrics["retrained"]) == 3


@pytest.fixture(scope="module")
def darts_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _reference_run(tmp_path_factory, "darts")


@pytest.mark.parametrize(
    "flag, n",
    [
        ("--die-at-rename", 3),  # one-shot training, epoch 2: weights, architecture, multiplier, gumbel noise
        ("--die-mid-write", 4),  # the same, epoch 3, torn
        ("--die-at-rename", 6),  # the controller's trained state, before the supernet checkpoint
        ("--die-at-rename", 7),  # the supernet checkpoint, after the controller's state
        ("--die-mid-event", 3),  # the trained line of the supernet
    ],
)
def test_a_killed_one_shot_search_resumes_to_the_same_result(tmp_path: Path, darts_reference: Path, flag: str, n: int):
    folder = _killed_then_resumed(tmp_path, "darts", flag, n)
    assert_same_result(folder, darts_reference)
    assert json.loads((folder / "metrics.json").read_text())["supernet"]["kind"] == "one-shot"


@pytest.fixture(scope="module")
def click_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _reference_run(tmp_path_factory, "click")


@pytest.mark.parametrize(
    "flag, n",
    [
        ("--die-at-rename", 3),  # the DeepFM supernet's training, epoch 2 (sandwich pool, optimiser, early stopping)
        ("--die-mid-write", 10),  # search, second round: the first round's controller state is loaded
        ("--die-at-rename", 18),  # retraining the first candidate, epoch 3
    ],
)
def test_a_killed_click_search_resumes_to_the_same_result(tmp_path: Path, click_reference: Path, flag: str, n: int):
    folder = _killed_then_resumed(tmp_path, "click", flag, n)
    assert_same_result(folder, click_reference)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["task"] == "click" and metrics["allocation"]["values"] <= metrics["budget"]["max_values"]
    assert set(metrics["allocated"]["test"]) == {"auc", "logloss"}


@pytest.fixture(scope="module")
def finetune_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _reference_run(tmp_path_factory, "finetune")


@pytest.mark.parametrize(
    "flag, n",
    [
        ("--die-at-rename", 19),  # the second candidate's fine-tune from the supernet
        ("--die-mid-write", 20),  # the third one's, torn
        ("--die-mid-event", 11),  # a fine-tune's trained line
        ("--die-at-rename", 23),  # the winner's retraining from scratch, epoch 3
    ],
)
def test_a_killed_finetune_selection_resumes_to_the_same_result(
    tmp_path: Path, finetune_reference: Path, flag: str, n: int
):
    folder = _killed_then_resumed(tmp_path, "finetune", flag, n)
    assert_same_result(folder, finetune_reference)
    metrics = json.loads((folder / "metrics.json").read_text())
    tuned = [r for r in metrics["retrained"] if not r["final"]]
    final = [r for r in metrics["retrained"] if r["final"]]
    assert len(tuned) == 3 and len(final) == 1
    # The winner is the best candidate after its fine-tune, and it was retrained to the end.
    assert final[0]["fingerprint"] == max(tuned, key=lambda r: r["valid_quality"])["fingerprint"]
    assert final[0]["epochs"] == 6 and all(r["epochs"] == 1 for r in tuned)
    assert metrics["allocation"]["values"] <= metrics["budget"]["max_values"]
