"""A run folder whose files were changed, damaged, locked or could not be written: one clear line, never a traceback.

Each case copies one small finished run, damages it the way the case says, and runs the
commands that read it (``embnas evaluate``, ``resume``, ``report``, ``export`` and
``nas.SearchResult.read``) in this process.  A command that reads the damaged file must
exit 2 with one ``embnas: error:`` line naming the file; one that does not read it (a
resume rewrites ``allocation.npz`` and ``metrics.json`` from the checkpoints) must work.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from nas.app.cli import main
from nas.core import ArtifactError
from nas.pipeline import runs as runs_module
from nas.pipeline.result import SearchResult
from nas.pipeline.runs import HASHES_FILE, Run

#: Every command that reads a finished run; ``read`` is :meth:`SearchResult.read`.
COMMANDS = ("evaluate", "report", "export", "read", "resume")  # resume last: it may rebuild files
#: What each command reads of those files (a resume rewrites the results from the checkpoints).
READS = {
    "config.json": set(COMMANDS) - {"read"},
    "metrics.json": {"read", "report"},
    "allocation.npz": {"evaluate", "report", "export", "read"},
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, small_search: list[str]) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    assert main(["search", "--runs", str(runs), "--name", "r", *small_search]) == 0
    return runs / "r"


def _copy(finished: Path, tmp_path: Path, *, legacy: bool = False) -> Path:
    """A copy of the finished run; ``legacy``: without the digest index, as an earlier version wrote it."""
    folder = Path(shutil.copytree(finished, tmp_path / "run"))
    if legacy:
        (folder / HASHES_FILE).unlink()
    return folder


def _run(command: str, folder: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Exit status and stderr of a command on ``folder``, in this process (``read``: as the CLI would report it)."""
    capsys.readouterr()
    if command == "read":
        try:
            SearchResult.read(folder)
            return 0, ""
        except ArtifactError as error:
            return 2, f"embnas: error: {error}\n"
    argv = {"resume": ["resume", str(folder), "--quiet"], "export": ["export", str(folder)]}.get(command, [command, str(folder)])
    status = main(argv)
    return status, capsys.readouterr().err


def _assert_one_line(err: str, *names: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("embnas: error: "), err
    assert any(name in lines[0] for name in names), f"{names} not named in: {lines[0]}"


def _flip_sign_bits(path: Path, nbytes: int) -> None:
    data = bytearray(path.read_bytes())
    for i in range(len(data) - nbytes + 3, len(data), 4):  # float32 little-endian: the sign is the 4th byte
        data[i] ^= 0x80
    path.write_bytes(bytes(data))


def test_flipped_sign_bits_in_the_retrained_checkpoint_are_refused(finished: Path, tmp_path: Path, capsys):
    folder = _copy(finished, tmp_path)
    checkpoint = folder / "checkpoints" / "allocated.safetensors"
    assert checkpoint.stat().st_size > 60_000
    _flip_sign_bits(checkpoint, 50_000)
    for command in ("evaluate", "export"):
        status, err = _run(command, folder, capsys)
        assert status == 2, err
        _assert_one_line(err, str(checkpoint))
        assert "sha256" in err
    with pytest.raises(ArtifactError, match="allocated.safetensors: its sha256"):
        SearchResult.read(folder).export(tmp_path / "out")


@pytest.mark.parametrize("legacy", [False, True], ids=["indexed", "legacy"])
def test_an_edited_model_in_config_json_is_refused_by_every_command(finished: Path, tmp_path: Path, capsys, legacy: bool):
    folder = _copy(finished, tmp_path, legacy=legacy)
    path = folder / "config.json"
    record = json.loads(path.read_text())
    assert record["config"]["model"] == "mf"
    record["config"]["model"] = "lightgcn"  # the old config_hash kept
    path.write_text(json.dumps(record, indent=2))
    for command in ("evaluate", "resume", "report", "export"):
        status, err = _run(command, folder, capsys)
        assert status == 2, err
        _assert_one_line(err, str(path))
        assert ("sha256" if not legacy else "not to its recorded config_hash") in err


@pytest.mark.parametrize("legacy", [False, True], ids=["indexed", "legacy"])
@pytest.mark.parametrize("name, content", [
    ("allocation.npz", "truncated"),
    ("metrics.json", "deep"), ("metrics.json", "list"), ("metrics.json", "huge"),
    ("config.json", "deep"), ("config.json", "list"), ("config.json", "string"),
])
def test_a_damaged_file_is_one_line_naming_it(finished: Path, tmp_path: Path, capsys, name: str, content: str, legacy: bool):
    folder = _copy(finished, tmp_path, legacy=legacy)
    path = folder / name
    if content == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])  # BadZipFile once
    else:
        path.write_text({"deep": "[" * 100_000 + "]" * 100_000, "list": "[1, 2]", "string": '"mf"',
                         "huge": '{"version": ' + "9" * 5000 + "}"}[content])
    for command in COMMANDS:
        status, err = _run(command, folder, capsys)
        if command in READS[name]:
            assert status == 2, f"{command}: {err}"
            _assert_one_line(err, str(path))
        else:
            assert status == 0, f"{command} does not read {name}: {err}"
    if "resume" not in READS[name]:  # the resume rebuilt the file from the checkpoints
        assert SearchResult.read(folder).allocation.fingerprint() == SearchResult.read(finished).allocation.fingerprint()


def test_a_run_written_before_digests_existed_evaluates_and_resumes(finished: Path, tmp_path: Path, capsys):
    folder = _copy(finished, tmp_path, legacy=True)
    (folder / "lock").unlink()
    for command in COMMANDS:
        status, err = _run(command, folder, capsys)
        assert status == 0, f"{command}: {err}"
    # The resume trusted the files it read once and recorded their digests.
    recorded = Run(folder)._recorded()
    assert {"config.json", "checkpoints/allocated.safetensors", "metrics.json"} <= set(recorded)


def _assert_every_file_whole(folder: Path) -> None:
    """No temporary is left and every file the run wrote whole reads back and matches a recorded digest."""
    assert not list(folder.rglob("*.tmp")), "a temporary was left behind"
    run = Run(folder)
    for path in folder.rglob("*"):
        name = path.relative_to(folder).as_posix()
        if path.is_dir() or name in (HASHES_FILE, "lock", "events.jsonl") or name.startswith("export/"):
            continue
        if path.suffix == ".json":
            run.read_json(name)
        elif path.suffix == ".npz":
            run.load_allocation(name)
        elif path.suffix == ".safetensors":
            run.load_tensors(name.removeprefix("checkpoints/"))
    list(run.events())


@contextmanager
def _full_disk_at(monkeypatch: pytest.MonkeyPatch, target: str, nth: int = 1, *, append: bool = False):
    """Make the run folder's ``nth`` write of ``target`` (a whole-file write, or an ``append``) fail with ENOSPC half-way."""
    state = {"seen": 0, "hit": False}

    def reached(path: Path) -> bool:
        if state["hit"] or Path(path).name != target:
            return False
        state["seen"] += 1
        state["hit"] = state["seen"] == nth
        return state["hit"]

    if append:
        def opener(path, mode="r", *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            handle = open(path, mode, *args, **kwargs)
            if "a" in mode and reached(path):
                write = handle.write

                def half_then_full(data):  # noqa: ANN001, ANN202
                    write(data[: len(data) // 2])
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

                handle.write = half_then_full
            return handle

        monkeypatch.setattr(runs_module, "open", opener, raising=False)
    else:
        real = runs_module.atomic_write

        @contextmanager
        def filling(path, mode="w"):  # noqa: ANN001, ANN202
            with real(path, mode) as handle:
                yield handle
                if reached(path):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

        monkeypatch.setattr(runs_module, "atomic_write", filling)
    yield state
    monkeypatch.undo()


@pytest.mark.parametrize("target, nth, append", [
    ("allocation.npz", 1, False),  # the result, after the retraining
    ("events.jsonl", 4, True),  # the search's trial line, half-written
    ("hashes.jsonl", 3, True),  # the digest of the supernet's second state, before the state
])
def test_a_full_disk_is_one_line_and_resume_finishes_the_run(
    finished: Path, small_search: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys,
    target: str, nth: int, append: bool,
):
    with _full_disk_at(monkeypatch, target, nth, append=append) as state:
        capsys.readouterr()
        status = main(["search", "--runs", str(tmp_path), "--name", "r", *small_search])
        err = capsys.readouterr().err
        assert state["hit"]
    folder = tmp_path / "r"
    assert status == 2, err
    _assert_one_line(err, target)
    assert f"no space left on device; free space and continue with `embnas resume {folder}`" in err
    assert not (folder / "metrics.json").exists()
    _assert_every_file_whole(folder)
    Run(folder).check_unlocked()  # the failed search released its lock
    assert main(["resume", str(folder), "--quiet"]) == 0
    ours, reference = SearchResult.read(folder), SearchResult.read(finished)
    assert ours.allocation.fingerprint() == reference.allocation.fingerprint()
    assert ours.metrics["test"] == reference.metrics["test"]
    _assert_every_file_whole(folder)


def test_a_full_disk_before_the_run_exists_says_to_run_the_command_again(
    small_search: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    with _full_disk_at(monkeypatch, "config.json") as state:
        capsys.readouterr()
        status = main(["search", "--runs", str(tmp_path), "--name", "r", *small_search])
        err = capsys.readouterr().err
        assert state["hit"]
    assert status == 2
    _assert_one_line(err, "config.json")
    assert "no space left on device; free space and run the same command again" in err
    assert not (tmp_path / "r" / "config.json").exists() and not list(tmp_path.rglob("*.tmp"))
    Run(tmp_path / "r").check_unlocked()


def test_a_run_being_written_is_refused_to_writers_and_readable_by_readers(
    finished: Path, small_search: list[str], tmp_path: Path, capsys
):
    folder = _copy(finished, tmp_path)
    holder = Run.create(folder.parent, Run(folder).config(), folder.name)
    try:
        status, err = _run("resume", folder, capsys)
        assert status == 2
        _assert_one_line(err, "is being written by this process")
        # A second search of the same name (two `embnas search --name dup` at once) is refused the same way.
        events = (folder / "events.jsonl").read_bytes()
        assert main(["search", "--runs", str(folder.parent), "--name", folder.name, *small_search]) == 2
        _assert_one_line(capsys.readouterr().err, "is being written by this process")
        assert (folder / "events.jsonl").read_bytes() == events, "the refused writer wrote nothing"
        other = subprocess.run([sys.executable, "-m", "nas", "resume", str(folder), "--quiet"],
                               capture_output=True, text=True, timeout=300)
        assert other.returncode == 2, other.stderr
        _assert_one_line(other.stderr, f"is being written by process {os.getpid()} ")
        for command in ("evaluate", "report", "export", "read"):
            status, err = _run(command, folder, capsys)
            assert status == 0, f"{command}: {err}"
    finally:
        holder.close()
    status, err = _run("resume", folder, capsys)
    assert status == 0, err


def test_searches_in_one_process_leave_no_lock_held(finished: Path):
    Run(finished).check_unlocked()
    assert (finished / "lock").read_text() == ""
    with Run.create(finished.parent, Run(finished).config(), finished.name):
        pass


def test_an_emptied_event_log_is_refused_by_resume_not_an_index_error(finished: Path, tmp_path: Path, capsys):
    """The controller's state says the search ran; a log that lost every trial cannot be continued."""
    folder = _copy(finished, tmp_path)
    (folder / "events.jsonl").write_bytes(b"")
    status, err = _run("resume", folder, capsys)
    assert status == 2
    _assert_one_line(err, str(folder / "events.jsonl"))
    assert "logs no evaluated candidate" in err


def test_a_full_disk_outside_the_run_folders_writes_is_one_line(finished: Path, tmp_path: Path, monkeypatch, capsys):
    """The export folder and the report's pictures are written by their own modules: main says it in one line too."""
    import nas.pipeline.replay as replay

    def full(folder, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))

    monkeypatch.setattr(replay, "export_tables", full)
    capsys.readouterr()
    assert main(["export", str(finished), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    _assert_one_line(err, str(tmp_path / "out"))
    assert "no space left on device; free space and run the command again" in err
