"""Run folders: atomic files, an append-only event log that survives a torn line, config checks,
the sha256 index that refuses a changed file, the writer's lock, and a full disk."""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nas.core import Allocation, ArtifactError, ConfigError, ResumeError
from nas.core._atomic import atomic_write
from nas.core.errors import RunLockedError, StorageError
from nas.pipeline import runs as runs_module
from nas.pipeline.runs import HASHES_FILE, MemoryRun, Run, config_hash


def test_config_hash_ignores_key_order():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_reusing_a_run_folder_needs_the_same_config(tmp_path: Path):
    Run.create(tmp_path, {"budget": "0.9", "seed": 0}, name="r").close()
    with Run.create(tmp_path, {"seed": 0, "budget": "0.9"}, name="r") as run:
        assert run.config() == {"budget": "0.9", "seed": 0}
    with pytest.raises(ResumeError, match=r"budget: '0.9' -> '0.5'"):
        Run.create(tmp_path, {"budget": "0.5", "seed": 0}, name="r")
    Run.create(tmp_path, {"budget": "0.9", "seed": 0}, name="r").close()  # the refusal released the lock


def test_events_skip_a_torn_last_line(tmp_path: Path):
    run = Run.create(tmp_path, {}, name="r")
    run.log_event("note", fitness=0.5)
    run.log_event("note", fitness=0.7)
    with open(run.path("events.jsonl"), "a") as handle:
        handle.write('{"event": "trial", "fitn')  # a crash in the middle of an append
    assert [e["fitness"] for e in run.events("note")] == [0.5, 0.7]
    # The next event after the tear must not be glued to the fragment and lost.
    run.log_event("note", fitness=0.9)
    assert [e["fitness"] for e in run.events("note")] == [0.5, 0.7, 0.9]


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
    with pytest.raises(ArtifactError, match=r"full.safetensors: its sha256 .* is not the one"):
        run.load_tensors("full.safetensors")
    run.path(HASHES_FILE).unlink()  # a folder without digests: the file's own format is checked
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


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(0, 2**33), min_size=1, max_size=40), top=st.sampled_from([1, 255, 256, 65_535, 65_536, 2**33]))
def test_allocation_files_store_sizes_compactly_and_read_them_back_exactly(sizes, top):
    dims = np.minimum(np.array(sizes, dtype=np.int64), top)
    allocation = Allocation({"t": dims})
    data = allocation.to_bytes()
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        stored = npz["row_dims/t"]
    assert stored.itemsize == next(n for n, limit in ((1, 255), (2, 65_535), (4, 2**32 - 1), (8, 2**63 - 1))
                                   if int(dims.max()) <= limit)
    loaded = Allocation.from_bytes(data)
    assert loaded.row_dims["t"].dtype == np.int64 and np.array_equal(loaded.row_dims["t"], dims)
    assert loaded.fingerprint() == allocation.fingerprint()
    legacy = io.BytesIO()
    np.savez(legacy, **{"row_dims/t": dims})  # as files were written with int64 sizes
    assert Allocation.from_bytes(legacy.getvalue()).fingerprint() == allocation.fingerprint()


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
    with pytest.raises(ArtifactError, match="s.safetensors: its sha256"):
        run.load_state("s.safetensors")
    run.path(HASHES_FILE).unlink()
    with pytest.raises(ArtifactError, match="damaged state"):
        run.load_state("s.safetensors")


def test_reopening_a_run_removes_temporaries_of_interrupted_writes(tmp_path: Path):
    run = Run.create(tmp_path, {"a": 1}, name="r")
    run.close()
    stale = run.path("checkpoints", ".supernet.safetensors.abc123.tmp")
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half")
    keep = run.path("checkpoints", "supernet.safetensors")
    keep.write_bytes(b"whole")
    Run.create(tmp_path, {"a": 1}, name="r").close()
    assert not stale.exists() and keep.exists()


# -- integrity: every file written whole has its sha256 recorded, every read checks it ---------------
def _flip_sign_bits(path: Path, nbytes: int) -> None:
    """Flip the sign bit of each float32 in the last ``nbytes`` bytes of ``path`` (the tensor data)."""
    data = bytearray(path.read_bytes())
    for i in range(len(data) - nbytes + 3, len(data), 4):
        data[i] ^= 0x80
    path.write_bytes(bytes(data))


def test_a_file_changed_after_it_was_written_is_refused_naming_it(tmp_path: Path):
    with Run.create(tmp_path, {"a": 1}, name="r") as run:
        run.save_tensors("allocated.safetensors", {"w": torch.randn(64, 64)})
        run.write_json("metrics.json", {"ok": 1})
        run.save_allocation("allocation.npz", Allocation({"user": np.array([2, 1, 3])}))
    reader = Run(run.folder)
    assert reader.read_json("metrics.json") == {"ok": 1}
    _flip_sign_bits(run.path("checkpoints", "allocated.safetensors"), 4096)
    run.path("metrics.json").write_text('{"ok": 2}\n')
    npz = run.path("allocation.npz")
    npz.write_bytes(npz.read_bytes()[:-10])
    for read, name in [(lambda: reader.load_tensors("allocated.safetensors"), "checkpoints/allocated.safetensors"),
                       (lambda: reader.read_json("metrics.json"), "metrics.json"),
                       (lambda: reader.load_allocation("allocation.npz"), "allocation.npz")]:
        with pytest.raises(ArtifactError, match=rf"{run.path(name)}: its sha256 .* recorded when the run wrote it"):
            read()


def test_a_digest_recorded_for_a_write_a_crash_stopped_leaves_the_old_file_readable(tmp_path: Path):
    """The digest is recorded before the rename: killed in between, the previous file must still read."""
    with Run.create(tmp_path, {}, name="r") as run:
        run.save_tensors("supernet.state.safetensors", {"epoch": torch.tensor(1)})
        # What a kill between the record and the rename leaves: the new digest, the old file.
        run._append(HASHES_FILE, b'{"file":"checkpoints/supernet.state.safetensors","sha256":"' + b"0" * 64 + b'"}\n')
        with open(run.path(HASHES_FILE), "ab") as handle:
            handle.write(b'{"file":"checkpoints/supernet.state.saf')  # and a torn record after it
        assert run.load_tensors("supernet.state.safetensors")["epoch"] == 1
        run.save_tensors("supernet.state.safetensors", {"epoch": torch.tensor(2)})
        assert run.load_tensors("supernet.state.safetensors")["epoch"] == 2


def test_a_write_that_fails_leaves_the_old_file_readable_and_no_temporary(tmp_path: Path, monkeypatch):
    with Run.create(tmp_path, {}, name="r") as run:
        run.write_json("metrics.json", {"old": True})

        def full_disk(path, mode="w"):  # noqa: ANN001, ANN202 - atomic_write, on a full disk
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

        monkeypatch.setattr(runs_module, "atomic_write", full_disk)
        with pytest.raises(StorageError, match=r"metrics.json: no space left on device; free space and continue with `embnas resume "):
            run.write_json("metrics.json", {"new": True})
        monkeypatch.undo()
        assert run.read_json("metrics.json") == {"old": True}
        assert not list(run.folder.rglob("*.tmp"))


def test_files_written_before_digests_existed_are_trusted_once_then_checked(tmp_path: Path):
    with Run.create(tmp_path, {"a": 1}, name="r") as run:
        run.save_tensors("supernet.safetensors", {"w": torch.ones(3)})
    run.path(HASHES_FILE).unlink()  # a run folder of an earlier version
    reader = Run(run.folder)
    assert torch.equal(reader.load_tensors("supernet.safetensors")["w"], torch.ones(3))
    assert not run.path(HASHES_FILE).exists(), "a reader records nothing"
    with Run.create(tmp_path, {"a": 1}, name="r") as writer:  # a resume: reading records the digest
        writer.load_tensors("supernet.safetensors")
    _flip_sign_bits(run.path("checkpoints", "supernet.safetensors"), 4)
    with pytest.raises(ArtifactError, match="supernet.safetensors: its sha256"):
        reader.load_tensors("supernet.safetensors")


def test_an_edited_configuration_is_refused_even_without_the_index(tmp_path: Path):
    Run.create(tmp_path, {"model": "mf", "seed": 0}, name="r").close()
    path = tmp_path / "r" / "config.json"
    record = json.loads(path.read_text())
    record["config"]["model"] = "lightgcn"  # the old config_hash kept
    path.write_text(json.dumps(record))
    with pytest.raises(ArtifactError, match=r"config.json: its sha256"):
        Run(tmp_path / "r").config()
    (tmp_path / "r" / HASHES_FILE).unlink()
    with pytest.raises(ArtifactError, match=r"config.json: the configuration hashes to .* not to its recorded config_hash"):
        Run(tmp_path / "r").config()
    with pytest.raises(ArtifactError, match="config.json: the configuration hashes"):
        Run.create(tmp_path, {"model": "lightgcn", "seed": 0}, name="r")


@pytest.mark.parametrize("text, problem", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"config_hash": 1, "config": {}}', "not a run's configuration"),
    ("[1, 2]", "not a run's configuration"),
    ('{"config_hash": "x", "config": {"a": ' + "9" * 5000 + "}}", "damaged JSON"),
])
def test_a_damaged_configuration_is_one_artifact_error_naming_it(tmp_path: Path, text: str, problem: str):
    Run.create(tmp_path, {}, name="r").close()
    (tmp_path / "r" / "config.json").write_text(text)
    (tmp_path / "r" / HASHES_FILE).unlink()
    with pytest.raises(ArtifactError, match=rf"config.json: .*{problem}"):
        Run(tmp_path / "r").config()


def test_an_edited_or_damaged_event_line_is_refused_naming_the_line(tmp_path: Path):
    with Run.create(tmp_path, {}, name="r") as run:
        run.log_event("trial", round=0, index=0, trial=0, fingerprint="ab", cost=3, fitness=0.5, seconds=0.1)
        assert [e["fitness"] for e in run.events("trial")] == [0.5]
        for line, problem in [('{"event":"trial","round":"0","index":0,"trial":0,"fingerprint":"ab","cost":3,"fitness":1}',
                               "bad 'round'"),
                              ('{"event":"trained","stage":"supernet"}', "trained event without its 'allocation'"),
                              ("[1, 2]", "not an event"),
                              ('{"event":"trial","round":0,"index":0,"trial":0,"fingerprint":"ab","cost":3,"fitness":'
                               + "9" * 400 + "}", "bad 'fitness'")]:
            lines = run.path("events.jsonl").read_text().splitlines()[:1]
            run.path("events.jsonl").write_text("\n".join([*lines, line]) + "\n")
            with pytest.raises(ArtifactError, match=rf"events.jsonl, line 2: .*{problem}"):
                list(run.events())


def test_a_memory_run_keeps_no_digests_and_takes_no_lock(tmp_path: Path):
    run = MemoryRun({"a": 1})
    run.save_tensors("x.safetensors", {"w": torch.ones(2)})
    assert run.has("checkpoints/x.safetensors") and not run.has(HASHES_FILE)
    assert torch.equal(run.load_tensors("x.safetensors")["w"], torch.ones(2))
    assert run.config() == {"a": 1}
    run.close()


# -- the writer's lock ------------------------------------------------------------------------------------
_TRY_TO_WRITE = """
import sys
from nas.core.errors import RunLockedError
from nas.pipeline.runs import Run
try:
    Run.create(sys.argv[1], {"a": 1}, name="r").close()
except RunLockedError as error:
    print("refused:", error)
    sys.exit(3)
print("wrote")
"""

_HOLD = """
import sys, time
from nas.pipeline.runs import Run
run = Run.create(sys.argv[1], {"a": 1}, name="r")
print("holding", flush=True)
time.sleep(600)
"""


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


def test_a_second_writer_in_this_process_is_refused_until_the_first_closes(tmp_path: Path):
    run = Run.create(tmp_path, {"a": 1}, name="r")
    assert (tmp_path / "r" / "lock").read_text().strip() == str(os.getpid())
    with pytest.raises(RunLockedError, match=r"r is being written by this process .*`embnas resume "):
        Run.create(tmp_path, {"a": 1}, name="r")
    with pytest.raises(RunLockedError):
        Run(tmp_path / "r").check_unlocked()
    run.close()
    run.close()  # closing twice is harmless
    with Run.create(tmp_path, {"a": 1}, name="r"):
        pass
    Run(tmp_path / "r").check_unlocked()


def test_another_process_is_refused_with_the_holders_pid_then_proceeds_after_release(tmp_path: Path):
    run = Run.create(tmp_path, {"a": 1}, name="r")
    refused = _python(_TRY_TO_WRITE, str(tmp_path))
    assert refused.returncode == 3, refused.stderr
    assert f"is being written by process {os.getpid()}" in refused.stdout
    run.close()
    allowed = _python(_TRY_TO_WRITE, str(tmp_path))
    assert allowed.returncode == 0 and "wrote" in allowed.stdout, allowed.stderr


def test_a_killed_holder_leaves_the_lock_free(tmp_path: Path):
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(RunLockedError, match=f"process {holder.pid} "):
            Run.create(tmp_path, {"a": 1}, name="r")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
        holder.stdout.close()
    with Run.create(tmp_path, {"a": 1}, name="r") as run:
        run.log_event("start")
