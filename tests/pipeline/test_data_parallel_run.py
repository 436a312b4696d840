"""A search whose supernet and retrains are trained by two processes (``--ddp 2``, gloo on the CPU).

It reaches the one-process run (the same trials and allocation, metrics to float rounding),
and a data-parallel run killed mid-retrain resumes to the uninterrupted data-parallel run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file
from torch.testing import assert_close

from nas.app.cli import main
from nas.core.errors import ConfigError
from nas.pipeline.search import run_search

sys.path.insert(0, str(Path(__file__).parent))
from crash_runner import CONFIGS  # noqa: E402
from test_resume import RUNNER, _trials, assert_intact, assert_same_result  # noqa: E402


@pytest.fixture(scope="module")
def parallel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted two-process run of the random search of ``crash_runner.py``."""
    runs = tmp_path_factory.mktemp("runs")
    process = subprocess.run([sys.executable, str(RUNNER), str(runs), "reference", "--ddp", "2"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
    assert process.returncode == 0, process.stderr.decode()
    return runs / "reference"


def test_two_processes_reach_the_one_process_run(parallel: Path, tmp_path: Path):
    single = run_search(CONFIGS["random"], run_dir=tmp_path / "single", progress=False)
    ours, theirs = _trials(parallel), _trials(tmp_path / "single")
    assert [t[:3] for t in ours] == [t[:3] for t in theirs]  # the same candidates, in the same rounds
    assert [t[3] for t in ours] == pytest.approx([t[3] for t in theirs], rel=1e-6)
    theirs = json.loads((parallel / "metrics.json").read_text())
    assert theirs["allocation"]["fingerprint"] == single.allocation.fingerprint()
    assert theirs["allocated"]["test"] == pytest.approx(single.metrics["test"], rel=1e-5)
    for name in ("supernet.safetensors", "allocated.safetensors"):
        ours, others = load_file(parallel / "checkpoints" / name), load_file(tmp_path / "single" / "checkpoints" / name)
        for key, value in others.items():
            assert_close(ours[key], value, rtol=1e-4, atol=1e-5)


def test_a_killed_data_parallel_run_resumes_to_the_uninterrupted_one(parallel: Path, tmp_path: Path):
    killed = subprocess.run([sys.executable, str(RUNNER), str(tmp_path), "run", "--ddp", "2", "--die-at-rename", "19"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
    assert killed.returncode == -9, f"the runner should have died while retraining: {killed.stderr.decode()}"
    folder = tmp_path / "run"
    assert_intact(folder)
    assert list((folder / "checkpoints").glob("retrain-*.state.safetensors")), "killed inside a retraining"
    assert main(["resume", str(folder), "--quiet", "--ddp", "2"]) == 0
    assert_same_result(folder, parallel)


def _helpers_of(pid: int) -> list[int]:
    """The spawned processes whose parent is ``pid``."""
    found = []
    for child in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{child}/stat").read_text()
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"spawn_main" in cmdline:
            found.append(int(child))
    return found


def test_a_helper_killed_mid_retrain_stops_the_run_with_a_worker_error_and_it_resumes(parallel: Path, tmp_path: Path):
    runner = subprocess.Popen([sys.executable, str(RUNNER), str(tmp_path), "run", "--ddp", "2"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    folder, deadline = tmp_path / "run", time.monotonic() + 240
    try:
        while not list((folder / "checkpoints").glob("retrain-*.state.safetensors")) or not _helpers_of(runner.pid):
            assert runner.poll() is None, "the run ended before its helper could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(_helpers_of(runner.pid)[0], signal.SIGKILL)
        _, err = runner.communicate(timeout=120)
    finally:
        runner.kill()
    assert runner.returncode != 0
    assert "WorkerError: data-parallel helper process 1 died (exit code -9) while training" in err.decode()
    assert main(["resume", str(folder), "--quiet", "--ddp", "2"]) == 0
    assert_same_result(folder, parallel)


def test_data_parallel_options_are_checked(tmp_path: Path):
    with pytest.raises(ConfigError, match="at least 1"):
        run_search(CONFIGS["random"], run_dir=tmp_path / "a", progress=False, ddp=0)
    with pytest.raises(ConfigError, match="architecture weights"):
        run_search(CONFIGS["darts"], run_dir=tmp_path / "b", progress=False, ddp=2)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
