"""Run folders: atomic files, an append-only event log that survives a torn line, config checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nas.core._atomic import atomic_write
from nas.core import Allocation, ArtifactError, ConfigError, ResumeError
from nas.pipeline.runs import Run, config_hash


def test_config_hash_ignores_key_order():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_reusing_a_run_folder_needs_the_same_config(tmp_path: Path):
    Run.create(tmp_path, {"budget": "0.9", "seed": 0}, name="r")
    assert Run.create(tmp_path, {"seed": 0, "budget": "0.9"}, name="r").config() == {"budget": "0.9", "seed": 0}
    with pytest.raises(ResumeError, match=r"budget: '0.9' -> '0.5'"):
        Run.create(tmp_path, {"budget": "0.5", "seed": 0}, name="r")


def test_events_skip_a_torn_last_line(tmp_path: Path):
    run = Run.create(tmp_path, {}, name="r")
    run.log_event("trial", fitness=0.5)
    run.log_event("trial", fitness=0.7)
    with open(run.path("events.jsonl"), "a") as handle:
        handle.write('{"event": "trial", "fitn')  # a crash in the middle of an append
    assert [e["fitness"] for e in run.events("trial")] == [0.5, 0.7]
    # The next event after the tear must not be glued to the fragment and lost.
    run.log_event("trial", fitness=0.9)
    assert [e["fitness"] for e in run.events("trial")] == [0.5, 0.7, 0.9]


def test_run_names_cannot_escape_the_runs_folder(tmp_path: Path):
    for bad in ("../x", "a/b", ".."):
        with pytest.raises(ConfigError, match="plain folder name"):
            Run.create(tmp_path, {}, name=bad)


def test_artifacts_get_the_usual_permissions(tmp_path: Path):
    run = Run.create(tmp_path, {}, name="r")
    run.write_json("metrics.json", {})
    run.save_tensors("full.safetensors", {"w": torch.zeros(2)})
    assert run.path("metrics.json").stat().st_mode & 0o044 == 0o044  # readable by group and others
    assert run.path("checkpoints", "full.safetensors").stat().st_mode & 0o044 == 0o044


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path):
    target = tmp_path / "metrics.json"
    target.write_text('{"old": true}')
    with pytest.raises(RuntimeError):
        with atomic_write(target) as handle:
            handle.write('{"new": ')
            raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_checkpoints_round_trip_and_damage_is_reported(tmp_path: Path):
    run = Run.create(tmp_path, {}, name="r")
    tensors = {"weights.user": torch.randn(5, 3)}
    run.save_tensors("full.safetensors", tensors)
    assert torch.equal(run.load_tensors("full.safetensors")["weights.user"], tensors["weights.user"])
    path = run.path("checkpoints", "full.safetensors")
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(ArtifactError, match="damaged checkpoint"):
        run.load_tensors("full.safetensors")
    with pytest.raises(ArtifactError, match="does not exist"):
        run.load_tensors("missing.safetensors")


def test_allocation_files_round_trip_without_pickle(tmp_path: Path):
    mask = np.zeros((3, 8), dtype=bool)
    mask[0, :2] = mask[2, 1] = True
    allocation = Allocation({"user": np.array([2, 1, 3]), "item": np.array([8])}, {"user": mask})
    allocation.save(tmp_path / "a.npz")
    loaded = Allocation.load(tmp_path / "a.npz")
    assert loaded.fingerprint() == allocation.fingerprint()
    assert loaded.cost == allocation.cost == 3 + 8
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(ArtifactError, match="cannot read the allocation"):
        Allocation.load(tmp_path / "bad.npz")


def test_states_round_trip_through_one_safetensors_file(tmp_path: Path):
    """Nested training/controller states: int keys, tuples, inf, big ints, tensors and arrays, no pickle."""
    run = Run.create(tmp_path, {}, name="r")
    rng = np.random.default_rng(5)
    state = {
        "epoch": 3, "best": -float("inf"), "ints": {0: {"step": torch.tensor(2.0)}, 1: [1, 2]},
        "rng": rng.bit_generator.state, "weights": torch.arange(6, dtype=torch.float32).view(2, 3),
        "best_decisions": np.array([1, 4, 2]), "none": None, "pair": (0.9, 0.999),
    }
    run.save_state("s.safetensors", state)
    back = run.load_state("s.safetensors")
    assert back["epoch"] == 3 and back["best"] == -float("inf") and back["none"] is None
    assert list(back["ints"]) == [0, 1] and torch.equal(back["ints"][0]["step"], torch.tensor(2.0))
    assert back["rng"] == rng.bit_generator.state
    assert torch.equal(back["weights"], state["weights"])
    np.testing.assert_array_equal(back["best_decisions"], state["best_decisions"])
    assert back["pair"] == [0.9, 0.999]
    run.path("checkpoints", "s.safetensors").write_bytes(b"not a state")
    with pytest.raises(ArtifactError, match="damaged state"):
        run.load_state("s.safetensors")


def test_reopening_a_run_removes_temporaries_of_interrupted_writes(tmp_path: Path):
    run = Run.create(tmp_path, {"a": 1}, name="r")
    stale = run.path("checkpoints", ".supernet.safetensors.abc123.tmp")
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half")
    keep = run.path("checkpoints", "supernet.safetensors")
    keep.write_bytes(b"whole")
    Run.create(tmp_path, {"a": 1}, name="r")
    assert not stale.exists() and keep.exists()
