"""The Ray executor: the same run as the local executor, and nothing lost or logged twice when a worker or the driver dies.

Every test runs on one local Ray cluster of 2 CPUs started here (about 5 s).  The
searches are the small ones of ``crash_runner.py`` (one torch thread per training, so
the local and Ray runs add floats in the same order).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from nas.core.errors import ConfigError
from nas.pipeline.executors import RayExecutor, make_executor
from nas.pipeline.search import resume_run, run_search

ray = pytest.importorskip("ray", reason='the ray executor needs Ray: pip install "embnas[ray]"')

sys.path.insert(0, str(Path(__file__).parent))
from crash_runner import CONFIGS  # noqa: E402

#: Retrains long enough (about a second each) for a test to kill them midway.
LONG = replace(CONFIGS["random"], retrain_top=2, train=replace(CONFIGS["random"].train, epochs=25, patience=100))


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of 2 CPUs; yields its address for other processes to join."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def _trials(run_dir: Path) -> list[tuple]:
    return [(e["round"], e["index"], e["fingerprint"], e["fitness"]) for e in _events(run_dir) if e["event"] == "trial"]


def _trainings(run_dir: Path) -> list[tuple]:
    return [(e["stage"], e["allocation"]) for e in _events(run_dir) if e["event"] == "trained"]


def _same_result(a, b) -> None:
    assert a.allocation.fingerprint() == b.allocation.fingerprint()
    assert a.metrics == b.metrics
    assert a.fitness == b.fitness


@pytest.mark.parametrize("name", ["bet", "finetune"])
def test_ray_gives_the_local_run(cluster, name: str, tmp_path: Path, reference_cache: Path):
    """Fitness rounds (ask_batch 2) and retrains (halving rungs; fine-tunes then the winner) as Ray tasks: the same run."""
    config = CONFIGS[name]
    local = run_search(config, run_dir=tmp_path / "local", progress=False, reference_cache=reference_cache)
    with RayExecutor(workers=2) as executor:
        spread = run_search(config, run_dir=tmp_path / "ray", progress=False, reference_cache=reference_cache,
                            executor=executor)
    _same_result(local, spread)
    assert _trials(tmp_path / "ray") == _trials(tmp_path / "local")
    assert _trainings(tmp_path / "ray") == _trainings(tmp_path / "local")  # logged in the same order
    assert len(_trainings(tmp_path / "ray")) > 2
    # the run's own executor was not part of its configuration: the local executor reloads the Ray run
    _same_result(resume_run(tmp_path / "ray", progress=False, reference_cache=reference_cache), local)


def _ray_workers(function: str) -> list[int]:
    """The process ids of Ray workers running ``function`` now (Ray titles them ``ray::<function>``)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if handle.read().split(b"\0")[0] == f"ray::{function}".encode():
                    pids.append(int(pid))
        except OSError:
            continue
    return pids


def test_a_worker_killed_mid_training_is_retried_and_logged_once(cluster, tmp_path: Path, reference_cache: Path):
    local = run_search(LONG, run_dir=tmp_path / "local", progress=False, reference_cache=reference_cache)
    killed: list[int] = []
    done = threading.Event()

    def kill_one() -> None:
        while not done.is_set() and not killed:
            workers = _ray_workers("_train_job")
            if workers:
                time.sleep(0.3)  # midway through its training
                if workers[0] in _ray_workers("_train_job"):
                    os.kill(workers[0], signal.SIGKILL)
                    killed.append(workers[0])
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one, daemon=True)
    killer.start()
    try:
        with RayExecutor(workers=2) as executor:
            spread = run_search(LONG, run_dir=tmp_path / "ray", progress=False, reference_cache=reference_cache,
                                executor=executor)
    finally:
        done.set()
        killer.join()
    assert killed, "no retraining worker was seen to kill"
    _same_result(local, spread)
    trainings = _trainings(tmp_path / "ray")
    assert trainings == _trainings(tmp_path / "local")
    assert max(Counter(trainings).values()) == 1


DRIVER = """
import sys
from nas.pipeline.executors import RayExecutor
from nas.pipeline.search import run_search
sys.path.insert(0, {tests!r})
from test_ray_executor import LONG
with RayExecutor(workers=2, address={address!r}) as executor:
    run_search(LONG, run_dir={run_dir!r}, progress=False, reference_cache={cache!r}, executor=executor)
"""


def test_a_driver_killed_during_the_retrains_resumes_without_measuring_again(
    cluster, tmp_path: Path, reference_cache: Path
):
    run_dir = tmp_path / "ray"
    script = DRIVER.format(tests=str(Path(__file__).parent), address=cluster, run_dir=str(run_dir),
                           cache=str(reference_cache))
    driver = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        deadline = time.monotonic() + 240
        while not _ray_workers("_train_job"):  # the search is logged and the retrains run on the cluster
            assert driver.poll() is None, "the driver ended before its retrains started"
            assert time.monotonic() < deadline, "the retrains never started"
            time.sleep(0.05)
        time.sleep(0.3)
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.wait()
    trials = _trials(run_dir)
    assert trials and "retrain" not in {stage for stage, _ in _trainings(run_dir)}  # killed midway through them
    with make_executor("ray", workers=2) as executor:  # joins the running cluster
        resumed = resume_run(run_dir, progress=False, reference_cache=reference_cache, executor=executor)
    local = run_search(LONG, run_dir=tmp_path / "local", progress=False, reference_cache=reference_cache)
    _same_result(local, resumed)
    assert _trials(run_dir) == trials == _trials(tmp_path / "local")  # not one trial measured again
    assert max(Counter(_trainings(run_dir)).values()) == 1


def test_executor_options_are_checked():
    with pytest.raises(ConfigError, match="need --executor ray"):
        make_executor("local", workers=2)
    with pytest.raises(ConfigError, match="at least 1"):
        make_executor("ray", workers=0)
    with pytest.raises(ConfigError, match="unknown executor"):
        make_executor("dask")
