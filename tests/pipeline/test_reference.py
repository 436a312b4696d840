"""The plainly trained full reference model: trained once per recipe, shared by runs, refused when altered."""

from __future__ import annotations

import json
import threading
from contextlib import nullcontext
from pathlib import Path

import pytest

import nas
from nas.core.errors import ArtifactError, StorageError
from nas.pipeline._lock import FolderLock
from nas.pipeline.config import SearchConfig

DATA = nas.DataSpec("synthetic", extra={"n_users": 300, "n_items": 400})
FAST = {"train": {"epochs": 2, "eval_every": 1}, "fitness_users": 300, "progress": False}


def _search(tmp_path: Path, name: str, cache: Path, **options) -> nas.SearchResult:
    options = {"controller": "random", "trials": 2, "retrain_top": 1, **FAST, **options}
    return nas.search(DATA, run_dir=tmp_path / name, reference_cache=cache, **options)


def _entries(cache: Path) -> list[Path]:
    return sorted((cache / "references").iterdir())


def _events(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]


def test_the_reference_is_trained_once_for_two_runs(tmp_path):
    cache = tmp_path / "cache"
    first = _search(tmp_path, "first", cache, budget=0.9)
    second = _search(tmp_path, "second", cache, budget=0.8, seed=0)
    [entry] = _entries(cache)
    assert "reference" in first.timings and "reference" not in second.timings
    assert first.reference == second.reference == "full"
    assert first.reference_dir == second.reference_dir == entry
    assert first.full_metrics == second.full_metrics
    assert [e["stage"] for e in _events(entry) if e["event"] == "trained"] == ["reference"]
    # The sandwich supernet is reported beside it, under its own name.
    assert first.supernet == "sandwich" and first.supernet_metrics["test"] != first.full_metrics["test"]
    assert nas.SearchResult.read(tmp_path / "first").to_dict() == first.to_dict()


def test_a_rule_takes_its_full_model_from_the_cache_instead_of_training_it_again(tmp_path):
    cache = tmp_path / "cache"
    searched = _search(tmp_path, "random", cache, budget=0.9)
    rule = _search(tmp_path, "frequency", cache, budget=0.9, controller="frequency")
    assert rule.full_metrics == searched.full_metrics and rule.supernet is None
    assert rule.full_train_seconds == searched.full_train_seconds
    assert not any(e["event"] == "trained" and e["stage"] == "supernet" for e in _events(tmp_path / "frequency"))
    assert len(_entries(cache)) == 1


def test_other_recipes_get_entries_of_their_own(tmp_path):
    cache = tmp_path / "cache"
    base = _search(tmp_path, "base", cache, budget=0.9, controller="equal")
    other_seed = _search(tmp_path, "seed", cache, budget=0.9, controller="equal", seed=1)
    other_recipe = _search(tmp_path, "recipe", cache, budget=0.9, controller="equal", train={"epochs": 1})
    assert len({base.reference_dir, other_seed.reference_dir, other_recipe.reference_dir}) == 3
    assert len(_entries(cache)) == 3


@pytest.mark.parametrize("controller, altered", [
    ("random", "reference.json"),
    ("frequency", "checkpoints/reference.safetensors"),
    ("random", "config.json"),
])
def test_a_cache_entry_whose_files_were_altered_is_refused(tmp_path, controller, altered):
    cache = tmp_path / "cache"
    _search(tmp_path, "first", cache, budget=0.9, controller=controller)
    [entry] = _entries(cache)
    path = entry / altered
    data = bytearray(path.read_bytes())
    if altered.endswith(".json"):
        data = bytearray(bytes(data).replace(b"0.", b"1.", 1))
    else:
        data[-3] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=f"delete {entry}"):
        _search(tmp_path, "second", cache, budget=0.8, controller=controller)
    assert not (tmp_path / "second" / "metrics.json").exists()


def test_no_reference_compares_with_the_supernet_and_writes_no_cache(tmp_path):
    cache = tmp_path / "cache"
    result = _search(tmp_path, "none", cache, budget=0.9, reference="none")
    assert result.reference == "sandwich" and result.supernet is None and result.reference_dir is None
    assert not cache.exists()


def test_a_configuration_recorded_before_the_reference_existed_compares_with_its_supernet():
    recorded = SearchConfig().to_dict()
    del recorded["reference"]
    assert SearchConfig.from_dict(recorded).reference == "none"
    assert SearchConfig.upgrade(recorded)["reference"] == "none"


def test_a_second_process_waits_for_the_entry_instead_of_failing(tmp_path):
    """Two runs needing the same reference: the second waits for the first to fill the entry."""
    held = FolderLock.acquire(tmp_path, lambda path: nullcontext())
    told, acquired = threading.Event(), threading.Event()
    holders: list[int | None] = []

    def waiter() -> None:
        lock = FolderLock.acquire(tmp_path, lambda path: nullcontext(), wait=lambda pid: (holders.append(pid), told.set()))
        acquired.set()
        lock.release()

    thread = threading.Thread(target=waiter)
    thread.start()
    assert told.wait(10)
    assert not acquired.is_set()  # still waiting while the lock is held
    held.release()
    thread.join(10)
    assert acquired.is_set() and holders and holders[0] is not None


def test_a_cache_that_cannot_be_written_is_one_line_and_leaves_no_run_folder(tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    with pytest.raises(StorageError, match="cache of full reference models cannot be made"):
        _search(tmp_path, "run", blocked, budget=0.9)
    assert not (tmp_path / "run").exists()
