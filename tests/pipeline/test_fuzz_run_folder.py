"""Fuzzing the run-folder readers: a damaged or edited run folder gives a result or one clear error, never a traceback.

One small finished run is made per module; every case copies it, mutates some of its files
and reads the copy back with:

* ``read``: the cheap readers, all of them in each case: :meth:`SearchResult.read`, the
  run's configuration (:func:`nas.pipeline.replay.read_config`), its event log, and every
  candidate allocation and checkpoint (most of the cases);
* ``evaluate``, ``export``, ``report`` and ``resume``: the commands, in this process.

Mutations: structure-aware edits of the JSON files and of the lines of the two logs (a value
replaced by deep nesting, a 5,000-digit or huge number, ``NaN``/``Infinity``, a wrong type; a
key deleted or added; the whole document replaced), byte damage of any file (truncation, bit
flips, flipped sign bits of 50 KB, garbage appended or written over, an empty file), a file
removed or replaced by a directory.  A damaged file's digest is kept as recorded (``keep``),
recorded anew as if the run had written the damage (``rehash``; the configuration's
``config_hash`` is sometimes recomputed too, so the parsers behind both checks are reached),
or the whole index is removed (``legacy``: a folder of an earlier version).

The oracle: every reader either works or raises an error of the project
(:class:`~nas.core.errors.EmbnasError`, :class:`~recsys.errors.DataError`) on one line that
names the run folder's file; a command exits 0, or 2 with one ``embnas: error:`` line.  And
integrity: a file whose bytes changed while its recorded digest was kept is refused by every
reader that reads it.

The default profile runs 200 cases in all (seconds); ``-m slow`` runs the ``slow`` profile:
10,000 cases per target.  ``report`` is fuzzed with its two plotting functions replaced by
ones that only check their inputs: the run folder's reader is the target, and drawing a
picture of a valid allocation costs most of a case.  Both profiles are deterministic
(``derandomize=True``) and print their counts.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nas.app.cli import main
from nas.core.errors import EmbnasError
from nas.pipeline.replay import read_config
from nas.pipeline.result import SearchResult
from nas.pipeline.runs import HASHES_FILE, Run, config_hash
from recsys.errors import DataError

PROFILES = {
    "default": {"read": 130, "evaluate": 30, "export": 10, "report": 5, "resume": 25},
    "slow": {"read": 10_000, "evaluate": 10_000, "export": 10_000, "report": 10_000, "resume": 10_000},
}
PROFILE_PARAMS = ["default", pytest.param("slow", marks=pytest.mark.slow)]

#: Files written whole by the run, checked against ``hashes.jsonl``.
_APPENDED = ("events.jsonl", HASHES_FILE)
#: A string placed where a raw JSON token is spliced in after dumping.
_HOLE = "__fuzz_hole__"
_HASH = "__fuzz_hash__"

#: Raw JSON tokens: deep nesting, numbers Python refuses or turns infinite, wrong types.
RAW_TOKENS = [
    "null", "true", "false", "0", "-1", "1.5", "[]", "{}", '""', '"x"', '"mf"', "[1, 2]", '{"a": {}}',
    str(2**63), str(-(2**63) - 1), "1" + "0" * 400, "9" * 5000, "-" + "9" * 5000, "1e999", "-1e999", "NaN", "Infinity",
    "[" * 50 + "]" * 50, "[" * 900 + "]" * 900, "[" * 100_000 + "]" * 100_000,
    '{"a":' * 900 + "0" + "}" * 900, '{"a":' * 100_000 + "0" + "}" * 100_000,
    '"' + "x" * 100_000 + '"',
]


def fuzz_settings(count: int) -> settings:
    return settings(max_examples=count, derandomize=True, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


# -- the finished run ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Original:
    """The finished run: its folder, its files' bytes, and what each cheap reader reads."""

    folder: Path
    files: dict[str, bytes]

    @property
    def names(self) -> list[str]:
        return sorted(self.files)


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory, small_search: list[str]) -> Original:
    runs = tmp_path_factory.mktemp("fuzz-runs")
    assert main(["search", "--runs", str(runs), "--name", "r", *small_search]) == 0
    folder = runs / "r"
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    assert {"config.json", "metrics.json", "allocation.npz", "events.jsonl", HASHES_FILE, "lock",
            "checkpoints/allocated.safetensors", "checkpoints/controller.safetensors"} <= set(files)
    assert sum(name.startswith("candidates/") for name in files) >= 2
    return Original(folder, files)


# -- mutations ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Mutation:
    """One change to one file; ``apply`` returns whether the file's bytes changed."""

    name: str
    kind: str  # "json", "bytes", "remove", "dir"
    detail: tuple
    hashes: str  # "keep", "rehash", "legacy"
    fix_config_hash: bool = False

    def apply(self, folder: Path, original: Original) -> bool:
        path = folder / self.name
        old = original.files[self.name]
        if self.kind == "remove":
            _clear(path)
            return True
        if self.kind == "dir":
            _clear(path)
            path.mkdir()
            return True
        new = _json_mutated(old, self) if self.kind == "json" else _bytes_mutated(old, self.detail)
        _clear(path)
        path.write_bytes(new)
        if self.hashes == "rehash" and self.name not in _APPENDED:
            index = folder / HASHES_FILE
            record = json.dumps({"file": self.name, "sha256": hashlib.sha256(new).hexdigest()}) + "\n"
            text = index.read_bytes() if index.is_file() else b""
            _clear(index)  # (a folder in its place too)
            index.write_bytes(text + record.encode())
        return new != old


def _clear(path: Path) -> None:
    """Remove a file or folder (copies are hard links: never write a file in place)."""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _json_mutated(old: bytes, mutation: Mutation) -> bytes:
    line, steps, op, raw = mutation.detail
    lines = old.decode().splitlines() if mutation.name in _APPENDED else [old.decode()]
    index = line % len(lines)
    doc = json.loads(lines[index])
    if mutation.fix_config_hash and isinstance(doc, dict):
        doc["config_hash"] = _HASH
    if not steps and op != "add":
        text = raw
    else:
        parent, key = None, None
        node = doc
        for step in steps:
            if isinstance(node, dict) and node:
                key = sorted(node)[step % len(node)]
            elif isinstance(node, list) and node:
                key = step % len(node)
            else:
                break
            parent, node = node, node[key]
        if op == "add" and isinstance(node, dict):
            node["zz_fuzz"] = _HOLE
        elif op == "delete" and parent is not None:
            del parent[key]
            raw = None
        elif parent is not None:
            parent[key] = _HOLE
        else:
            doc = _HOLE
        text = json.dumps(doc, indent=None if mutation.name in _APPENDED else 2)
        if raw is not None:
            text = text.replace(json.dumps(_HOLE), raw, 1)
    if mutation.fix_config_hash and json.dumps(_HASH) in text:
        try:
            digest = config_hash(json.loads(text.replace(json.dumps(_HASH), '""', 1))["config"])
        except Exception:  # the mutated configuration cannot be hashed: leave the placeholder as a wrong hash
            digest = "0" * 16
        text = text.replace(json.dumps(_HASH), json.dumps(digest), 1)
    lines[index] = text
    return ("\n".join(lines) + "\n").encode() if mutation.name in _APPENDED else (text + "\n").encode()


def _bytes_mutated(old: bytes, detail: tuple) -> bytes:
    op, *args = detail
    data = bytearray(old)
    if op == "truncate":
        return bytes(data[: args[0] % max(len(data), 1)])
    if op == "flip":
        for bit in args[0]:
            position = bit % max(len(data) * 8, 1)
            if data:
                data[position // 8] ^= 1 << (position % 8)
        return bytes(data)
    if op == "signs":  # the sign bit of each float32 in the last 50 KB
        for i in range(max(len(data) - 50_000, 0) + 3, len(data), 4):
            data[i] ^= 0x80
        return bytes(data)
    if op == "append":
        return bytes(data) + args[0]
    if op == "overwrite":
        offset = args[0] % max(len(data), 1)
        patch = args[1]
        return bytes(data[:offset]) + patch + bytes(data[offset + len(patch):])
    return b""  # "empty"


@st.composite
def mutations(draw: Any, original: Original, *, resume: bool = False) -> list[Mutation]:
    names = original.names
    if resume:  # a resume that must retrain from scratch takes seconds: leave the log and checkpoints present
        names = [n for n in names if not n.startswith("export/")]
    # The JSON files and the logs are where structure lives: they are drawn four times as often.
    names = names + [n for n in names if n.endswith((".json", ".jsonl"))] * 3
    count = draw(st.integers(1, 2))
    result = []
    for _ in range(count):
        name = draw(st.sampled_from(names))
        is_json = name.endswith((".json", ".jsonl"))
        kinds = ["bytes", "remove", "dir"] + ["json"] * (6 if is_json else 0)
        if resume and (name == "events.jsonl" or name.startswith("checkpoints/")):
            kinds.remove("remove")
        kind = draw(st.sampled_from(kinds))
        # A kept digest refuses any change at once; the other two reach the parsers behind it.
        hashes = draw(st.sampled_from(["keep", "rehash", "rehash", "legacy", "legacy"]))
        fix = name == "config.json" and hashes != "keep" and draw(st.booleans())
        if kind == "json":
            depth = 3 if name == "config.json" else 4
            steps = tuple(draw(st.lists(st.integers(0, 50), max_size=depth)))
            op = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
            raw = draw(st.one_of(
                st.sampled_from(RAW_TOKENS),
                st.integers(-(2**70), 2**70).map(str),
                st.floats(allow_nan=True, allow_infinity=True).map(json.dumps),
                st.text(max_size=12).map(json.dumps),
            ))
            detail: tuple = (draw(st.integers(0, 20)), steps, op, raw)
        elif kind == "bytes":
            op = draw(st.sampled_from(["truncate", "flip", "flip", "signs", "append", "overwrite", "empty"]))
            size = len(original.files[name])
            if op == "truncate":
                detail = (op, draw(st.integers(0, max(size - 1, 0))))
            elif op == "flip":
                detail = (op, tuple(draw(st.lists(st.integers(0, max(size * 8 - 1, 0)), min_size=1, max_size=8))))
            elif op == "append":
                detail = (op, draw(st.binary(min_size=1, max_size=64)))
            elif op == "overwrite":
                detail = (op, draw(st.integers(0, max(size - 1, 0))), draw(st.binary(min_size=1, max_size=64)))
            else:
                detail = (op,)
        else:
            detail = ()
        result.append(Mutation(name, kind, detail, hashes, fix))
    return result


def _data_spec_untouched(mutation: Mutation, original: Original) -> bool:
    """Whether a JSON edit leaves the fields of the data spec alone (it may replace the spec whole).

    A forged data spec is the data loaders' business (they have fuzzers of their own), and
    one that asks for a billion synthetic users would only take time.
    """
    if mutation.kind != "json" or mutation.name != "config.json" or len(mutation.detail[1]) < 3:
        return True
    steps = mutation.detail[1]
    if ["config", "config_hash"][steps[0] % 2] != "config":
        return True
    keys = sorted(json.loads(original.files["config.json"])["config"])
    return keys[steps[1] % len(keys)] != "data"


def _make_case(original: Original, mutations_: list[Mutation], *, links: bool) -> tuple[Path, list[tuple[Mutation, bool]]]:
    folder = Path(tempfile.mkdtemp(prefix="fuzz-run-")) / "r"
    shutil.copytree(original.folder, folder, copy_function=os.link if links else shutil.copy2)
    applied = []
    for mutation in mutations_:
        if mutation.hashes == "legacy":
            _clear(folder / HASHES_FILE)
        applied.append((mutation, mutation.apply(folder, original)))
    return folder, applied


def _tampered(applied: list[tuple[Mutation, bool]]) -> set[str]:
    """Files whose bytes changed while the digest recorded for them was kept (one mutation only: no interplay)."""
    if len(applied) != 1:
        return set()
    mutation, changed = applied[0]
    if not changed or mutation.hashes != "keep" or mutation.name in _APPENDED or mutation.name == "lock":
        return set()
    if mutation.name.startswith("export/"):
        return set()
    return {mutation.name}


# -- the oracle ---------------------------------------------------------------------------------------
def _refused(error: BaseException, folder: Path) -> str:
    message = str(error)
    assert isinstance(error, (EmbnasError, DataError)), f"{type(error).__name__}: {message}"
    assert "\n" not in message and "\r" not in message, message
    assert str(folder) in message, f"the message names no file of the run: {message}"
    return "refused"


def read_everything(folder: Path, original: Original, tampered: set[str]) -> Counter:
    """Every cheap reader on ``folder``: each works or refuses on one line naming a file."""
    run = Run(folder)
    readers: list[tuple[str, set[str], Any]] = [
        ("result", {"metrics.json", "allocation.npz"}, lambda: SearchResult.read(folder)),
        ("config", {"config.json"}, lambda: read_config(run)),
        ("events", set(), lambda: list(run.events())),
    ]
    for name in original.names:
        if name.startswith("candidates/"):
            readers.append(("candidate", {name}, lambda name=name: run.load_allocation(name)))
        elif name.startswith("checkpoints/"):
            short = name.removeprefix("checkpoints/")
            load = run.load_state if short == "controller.safetensors" else run.load_tensors
            readers.append(("checkpoint", {name}, lambda load=load, short=short: load(short)))
    outcomes: Counter = Counter()
    for what, reads, read in readers:
        try:
            read()
            outcome = "ok"
        except Exception as error:  # noqa: BLE001 - the oracle sorts them
            outcome = _refused(error, folder)
        if reads & tampered:
            assert outcome == "refused", f"{what} read {reads & tampered}, changed behind its digest, without refusing"
        outcomes[f"{what}:{outcome}"] += 1
    return outcomes


#: The run's files each command reads (and so must refuse when they were changed behind their digest).
COMMAND_READS = {
    "evaluate": {"config.json", "allocation.npz", "checkpoints/allocated.safetensors"},
    "export": {"config.json", "allocation.npz", "checkpoints/allocated.safetensors"},
    "report": {"config.json", "allocation.npz", "metrics.json"},
    "resume": {"config.json", "checkpoints/supernet.safetensors"},
}


def run_command(command: str, folder: Path, tampered: set[str]) -> str:
    argv = {"resume": ["resume", str(folder), "--quiet"]}.get(command, [command, str(folder)])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    assert status in (0, 2), f"exit {status}: {err.getvalue()}"
    lines = err.getvalue().strip().splitlines()
    if status == 0:
        assert not tampered & COMMAND_READS[command], f"{command} used {tampered} though it changed behind its digest"
        return "ok"
    assert len(lines) == 1 and lines[0].startswith("embnas: error: "), err.getvalue()
    # An error about the configuration's content (a forged but consistent config.json) may name no file.
    return "refused (names the file)" if str(folder) in lines[0] else f"refused: {lines[0][15:75]}"


# -- the tests ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("profile", PROFILE_PARAMS)
def test_fuzz_the_cheap_readers(original: Original, profile: str):
    totals: Counter = Counter()
    kinds: Counter = Counter()
    started = time.perf_counter()

    @fuzz_settings(PROFILES[profile]["read"])
    @given(st.data())
    def case(data: st.DataObject) -> None:
        mutations_ = data.draw(mutations(original).filter(lambda ms: all(_data_spec_untouched(m, original) for m in ms)))
        folder, applied = _make_case(original, mutations_, links=True)
        try:
            totals.update(read_everything(folder, original, _tampered(applied)))
            kinds.update(m.kind + "/" + m.hashes for m in mutations_)
            kinds["cases"] += 1
        finally:
            shutil.rmtree(folder.parent)

    case()
    cases = kinds.pop("cases")
    print(f"\nrun-folder readers ({profile}): {cases} cases ({sum(kinds.values())} mutations), "
          f"{sum(totals.values())} reads in {time.perf_counter() - started:.1f} s; {dict(sorted(totals.items()))}; "
          f"mutations {dict(sorted(kinds.items()))}")
    assert totals["result:refused"] and totals["result:ok"] and totals["checkpoint:refused"]


@pytest.mark.parametrize("profile", PROFILE_PARAMS)
@pytest.mark.parametrize("command", ["evaluate", "export", "report", "resume"])
def test_fuzz_the_commands(original: Original, command: str, profile: str, monkeypatch: pytest.MonkeyPatch):
    outcomes: Counter = Counter()
    started = time.perf_counter()
    if command == "report":
        import nas.app.report as report

        def checked(allocation, frequencies, path, **_):  # noqa: ANN001, ANN202 - the plot's inputs, checked
            assert set(frequencies) >= set(allocation.tables)
            return Path(path)

        monkeypatch.setattr(report, "plot_allocation", checked)
        monkeypatch.setattr(report, "plot_fitness", lambda trials, path, **_: Path(path))

    @fuzz_settings(PROFILES[profile][command])
    @given(st.data())
    def case(data: st.DataObject) -> None:
        strategy = mutations(original, resume=command == "resume")
        mutations_ = data.draw(strategy.filter(lambda ms: all(_data_spec_untouched(m, original) for m in ms)))
        # A resume appends to the copy's logs, which must not be links to the original's.
        folder, applied = _make_case(original, mutations_, links=command != "resume")
        try:
            outcomes[run_command(command, folder, _tampered(applied))] += 1
        finally:
            shutil.rmtree(folder.parent)

    case()
    print(f"\nembnas {command} ({profile}): {sum(outcomes.values())} cases in {time.perf_counter() - started:.1f} s; "
          f"{dict(outcomes)}")
    assert sum(outcomes.values()) >= PROFILES[profile][command] // 2
