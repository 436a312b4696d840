"""Run folders: everything one search leaves behind, written so that nothing is ever half-written.

``runs/<id>/`` holds ``config.json`` (with the hash that ties the folder to its
configuration and data), ``events.jsonl`` (append-only, one JSON object per
line: each evaluated allocation, each stage that finished), ``checkpoints/``
(safetensors), ``candidates/`` and ``allocation.npz``, ``metrics.json`` and ``export/``.
Whole files are written to a temporary name and renamed; the event log is only
appended to, and a torn last line (a crash mid-append) is ignored when it is read back.

Integrity.  Every file written whole (:meth:`Run._write`: configuration, checkpoints,
allocations, metrics) has its sha256 appended to ``hashes.jsonl`` *before* it is
renamed into place, and every read (:meth:`Run._read`) checks the bytes against the
digests recorded for that name: a file changed or damaged after the run wrote it is
refused with an :class:`~nas.core.errors.ArtifactError` naming it.  Recording first is
what keeps a crash harmless: killed between the record and the rename, the folder holds
the previous file, whose digest was recorded when it was written, and a digest recorded
for a file that never arrived matches nothing and costs nothing.  That is also why a
file may match *any* digest recorded for its name, not only the last.  The index is
append-only like the event log (a torn last line is skipped), so writing it needs no
rename.  ``config.json`` is checked twice: its bytes against the index, and its
configuration against its own ``config_hash``, so an edited configuration is refused
even in a folder without an index.

Files with no recorded digest are accepted as they are: folders written before the
index existed (they have no ``hashes.jsonl``), or a file a tool put in place without
:class:`Run`.  When the reader holds the folder's lock (it continues the run), such a
file's digest is recorded on that first read: it is trusted once and checked from then
on.  The index guards against damage and careless edits, not against someone who also
rewrites the index.  ``export/`` is not in it: the export carries its own sha256 in its
manifest, which :func:`nas.artifact.serving.load_tables` checks.

Locking.  A process that writes a run folder (:meth:`Run.create`: a search, a resume)
holds an exclusive ``flock`` on ``<run>/lock`` until :meth:`Run.close` (or until the
process ends: the operating system drops the lock of a killed process), with its PID
written in the file; a second writer is refused with a
:class:`~nas.core.errors.RunLockedError` naming that PID.  Readers (evaluate, report,
:meth:`~nas.pipeline.result.SearchResult.read`) take no lock.

:class:`MemoryRun` keeps the same records in memory, for a search that must leave
nothing on disk (``nas.search(..., run_dir=None)``): every stage reads and writes
through the same few methods, so the stages do not know which kind they have.  It
needs neither digests nor a lock.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import struct
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch
from safetensors.torch import load, save

from nas.core._atomic import atomic_write
from nas.core.allocation import Allocation
from nas.core.errors import ArtifactError, ConfigError, ResumeError, StorageError
from nas.pipeline._lock import LOCK_FILE, FolderLock

__all__ = ["DAMAGED_JSON_ERRORS", "HASHES_FILE", "LOCK_FILE", "MemoryRun", "Run", "config_hash"]

#: The append-only index of the sha256 of every file the run wrote whole.
HASHES_FILE = "hashes.jsonl"
#: The append-only event log.
EVENTS_FILE = "events.jsonl"

#: Files only ever appended to: their digest changes with every line, so they are not in the index.
_APPENDED = frozenset({EVENTS_FILE, HASHES_FILE})

#: Errors a damaged or edited JSON document raises when it is read or walked (huge
#: numbers, deep nesting, wrong types), besides what the JSON decoder raises.
DAMAGED_JSON_ERRORS = (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError, RecursionError)


def config_hash(config: Mapping[str, Any]) -> str:
    """Stable short hash of a JSON-able configuration (key order does not matter)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Run:
    """One run folder.

    A :class:`Run` made by :meth:`create` holds the folder's lock until :meth:`close`
    (it is a context manager); one made directly, ``Run(folder)``, only reads.

    Args:
        folder: the run's folder, ``runs/<id>``.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._lock: FolderLock | None = None
        self._index: tuple[tuple[int, int, int], dict[str, set[str]]] | None = None

    @classmethod
    def create(
        cls,
        root: str | Path,
        config: Mapping[str, Any],
        name: str | None = None,
        *,
        upgrade: Callable[[dict[str, Any]], Mapping[str, Any]] | None = None,
        wait: Callable[[int | None], None] | None = None,
    ) -> Run:
        """Make a new run folder under ``root`` (or continue one), lock it and write its ``config.json``.

        The folder stays locked against other writers until :meth:`close`.

        Args:
            root: the folder holding runs (``runs/``).
            config: the JSON-able configuration of the run.
            name: folder name; default ``<UTC time>-<config hash>``.
            upgrade: brings a configuration recorded by an earlier version up to date
                (options added since take their defaults) before it is compared with
                ``config``; the recorded file is left as it is.
            wait: when another process writes the folder, ``wait(its_pid)`` is called and
                the lock is waited for instead of refused (a shared cache entry being filled).

        Raises:
            ResumeError: when a folder of that name exists for another configuration.
            RunLockedError: when another process is writing the folder (naming its PID) and
                ``wait`` is not given.
            ArtifactError: when the folder's ``config.json`` is damaged or was edited.
            StorageError: when the folder cannot be made or written.
        """
        digest = config_hash(config)
        name = name or time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{digest[:8]}"
        if not name or name in (".", "..") or "/" in name or "\\" in name:
            raise ConfigError(f"run name {name!r} must be a plain folder name (no path separators)")
        run = cls(Path(root) / name)
        with run._storage(run.folder):
            run.folder.mkdir(parents=True, exist_ok=True)
        run._lock = FolderLock.acquire(run.folder, run._storage, wait=wait)
        try:
            if run.has("config.json"):
                run.check_config(config, upgrade=upgrade)
                run._remove_stale_temporaries()
            else:
                run.write_json("config.json", {"config_hash": digest, "config": dict(config)})
        except BaseException:
            run.close()
            raise
        return run

    def close(self) -> None:
        """Release the folder's lock (a no-op for a run that holds none); the run can still be read."""
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.close()

    def check_unlocked(self) -> None:
        """Refuse, naming the writer's PID, when another process is writing this folder (takes no lock).

        Raises:
            RunLockedError: the folder's lock is held.
        """
        if self._lock is None:
            FolderLock.probe(self.folder)

    def _remove_stale_temporaries(self) -> None:
        """Delete the temporary files of atomic writes a crash interrupted (never the files they were for).

        Only a lock holder calls this: another writer's temporaries would be live files.
        """
        for path in self.folder.rglob(".*.tmp"):
            path.unlink(missing_ok=True)

    # -- configuration ------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """The configuration the run was created with, checked against its ``config_hash``.

        Raises:
            ArtifactError: ``config.json`` is missing, damaged, not a run's configuration,
                or its configuration was edited (it no longer hashes to its ``config_hash``).
        """
        return self._config_record()["config"]

    @property
    def config_hash(self) -> str:
        """The hash recorded in ``config.json`` (checked against the configuration)."""
        return self._config_record()["config_hash"]

    def _config_record(self) -> dict[str, Any]:
        path = self.path("config.json")
        record = self.read_json("config.json")
        if (not isinstance(record, dict) or not isinstance(record.get("config"), dict)
                or not isinstance(record.get("config_hash"), str)):
            raise ArtifactError(f"{path}: not a run's configuration (an object with 'config' and 'config_hash' was "
                                "expected); the file was edited or damaged")
        try:
            actual = config_hash(record["config"])
        except DAMAGED_JSON_ERRORS as error:
            raise ArtifactError(f"{path}: damaged configuration ({type(error).__name__})") from None
        if actual != record["config_hash"]:
            raise ArtifactError(
                f"{path}: the configuration hashes to {actual}, not to its recorded config_hash "
                f"{record['config_hash'][:16]!r}: it was edited after the run started. A run's configuration "
                "cannot change; restore the file, or start a new run with the options you want"
            )
        return record

    def check_config(
        self, config: Mapping[str, Any], *, upgrade: Callable[[dict[str, Any]], Mapping[str, Any]] | None = None
    ) -> None:
        """Refuse to continue this folder with a different configuration, naming what differs."""
        recorded = self.config()
        if upgrade is not None:
            try:
                recorded = dict(upgrade(recorded))
            except DAMAGED_JSON_ERRORS as error:  # a configuration this version cannot read (ConfigError is a ValueError)
                raise ArtifactError(f"{self.path('config.json')}: not a configuration this version reads "
                                    f"({type(error).__name__}: {str(error)[:200]})") from None
        if config_hash(recorded) == config_hash(config):
            return
        keys = sorted(k for k in set(recorded) | set(config) if recorded.get(k) != config.get(k))
        details = ", ".join(f"{k}: {recorded.get(k)!r} -> {config.get(k)!r}" for k in keys[:5])
        raise ResumeError(f"{self.folder} was made by a different configuration ({details}); use another run name")

    # -- files ---------------------------------------------------------------------------------------
    def path(self, *parts: str) -> Path:
        """A path inside the run folder."""
        return self.folder.joinpath(*parts)

    def write_json(self, name: str, data: Any) -> None:
        """Write ``name`` as indented JSON, atomically."""
        self._write(name, (json.dumps(data, indent=2) + "\n").encode())

    def read_json(self, name: str) -> Any:
        """Read a JSON file of the run, with a clear error when it is missing, damaged or changed."""
        path = self.path(name)
        if not self.has(name):
            raise ArtifactError(f"{path} does not exist; is {self.folder} a run folder made by `embnas search`?")
        data = self._read(name)
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError, or a number of too many digits
            raise ArtifactError(f"{path}: damaged JSON ({error})") from None
        except RecursionError:
            raise ArtifactError(f"{path}: damaged JSON (nested too deeply to be a file embnas wrote)") from None

    def has(self, name: str) -> bool:
        """Whether the run already holds ``name``."""
        return self.path(name).exists()

    @property
    def in_memory(self) -> bool:
        """Whether the run lives in memory only (:class:`MemoryRun`)."""
        return False

    def save_tensors(self, name: str, tensors: Mapping[str, torch.Tensor]) -> None:
        """Save a checkpoint (safetensors, atomically) under ``checkpoints/``."""
        self._write(f"checkpoints/{name}", save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}))

    def load_tensors(self, name: str) -> dict[str, torch.Tensor]:
        """Load a checkpoint written by :meth:`save_tensors` (never unpickles)."""
        data = self._read(f"checkpoints/{name}")
        try:
            return load(data)
        except Exception as error:  # safetensors raises its own error types for damaged files
            raise ArtifactError(f"{self.path('checkpoints', name)}: damaged checkpoint ({error})") from None

    def save_state(self, name: str, state: Any) -> None:
        """Save a nested state (dicts, lists, numbers, strings, tensors, arrays) in one safetensors file.

        Training states (model, optimiser moments, sampler, best weights) and controller
        states are written whole and atomically: a crash leaves the previous state or the
        new one.  The structure travels as JSON in the file's metadata, the tensors as
        tensors; nothing is pickled.
        """
        tensors: dict[str, torch.Tensor] = {}
        skeleton = _flatten(state, tensors)
        self._write(f"checkpoints/{name}", save(tensors, metadata={"state": json.dumps(skeleton)}))

    def load_state(self, name: str) -> Any:
        """Load a state written by :meth:`save_state`."""
        data = self._read(f"checkpoints/{name}")
        try:
            tensors = load(data)
            return _unflatten(json.loads(_safetensors_metadata(data)["state"]), tensors)
        except Exception as error:  # safetensors and json raise their own types for damaged files
            raise ArtifactError(f"{self.path('checkpoints', name)}: damaged state ({type(error).__name__}: "
                                f"{str(error)[:200]})") from None

    def save_allocation(self, name: str, allocation: Allocation) -> None:
        """Save an allocation (``.npz``, atomically) as ``name``."""
        self._write(name, allocation.to_bytes())

    def load_allocation(self, name: str) -> Allocation:
        """Load an allocation saved by :meth:`save_allocation`."""
        return Allocation.from_bytes(self._read(name), source=str(self.path(name)))

    def remove(self, name: str) -> None:
        """Delete ``name`` if the run holds it."""
        with self._storage(self.path(name)):
            self.path(name).unlink(missing_ok=True)

    # -- storage: the only methods that touch the folder -----------------------------------------------
    def _write(self, name: str, data: bytes) -> None:
        """Write ``name`` whole and atomically, its digest recorded first (see the module's docstring)."""
        digest = hashlib.sha256(data).hexdigest()
        if digest not in self._recorded().get(name, ()):  # the same bytes written again need no second record
            self._record(name, digest)
        with self._storage(self.path(name)), atomic_write(self.path(name), "wb") as handle:
            handle.write(data)

    def _read(self, name: str) -> bytes:
        """The bytes of ``name``, checked against the digests recorded for it."""
        path = self.path(name)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ArtifactError(f"{path} does not exist") from None
        except OSError as error:  # a folder where a file should be, no permission, an I/O error
            raise ArtifactError(f"{path} cannot be read ({error.strerror or error})") from None
        self._verify(name, data)
        return data

    def _verify(self, name: str, data: bytes) -> None:
        # The index is read after the file: a writer records a digest before it renames the
        # file into place, so whatever file this read saw has its digest in the index by now.
        if name in _APPENDED:
            return
        recorded = self._recorded().get(name)
        actual = hashlib.sha256(data).hexdigest()
        if recorded is None:  # written before digests existed, or put in place without Run
            if self._lock is not None:  # a writer continues the run: trusted once, checked from now on
                self._record(name, actual)
            return
        if actual not in recorded:
            raise ArtifactError(
                f"{self.path(name)}: its sha256 ({actual[:16]}...) is not the one {self.path(HASHES_FILE)} recorded "
                "when the run wrote it: the file was changed or damaged since; refusing it"
            )

    def _record(self, name: str, digest: str) -> None:
        self._append(HASHES_FILE, (json.dumps({"file": name, "sha256": digest}, separators=(",", ":")) + "\n").encode())

    def _recorded(self) -> dict[str, set[str]]:
        """The digests recorded for each file name (empty when the folder has no index).

        Parsed again only when the index changed (its inode, size or modification time).
        """
        path = self.path(HASHES_FILE)
        try:
            stat = path.stat()
            key = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
            if self._index is not None and self._index[0] == key:
                return self._index[1]
            text = path.read_bytes().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return {}
        except OSError as error:
            raise ArtifactError(f"{path} cannot be read ({error.strerror or error})") from None
        recorded: dict[str, set[str]] = {}
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except (ValueError, RecursionError):  # a torn line (a crash mid-append)
                continue
            if isinstance(entry, dict) and isinstance(entry.get("file"), str) and isinstance(entry.get("sha256"), str):
                recorded.setdefault(entry["file"], set()).add(entry["sha256"])
        self._index = (key, recorded)
        return recorded

    def _append(self, name: str, line: bytes) -> None:
        with self._storage(self.path(name)), open(self.path(name), "a+b") as handle:
            # A crash mid-append leaves a torn line without its newline: end it first, so
            # this line starts a line of its own instead of being glued to the fragment.
            if handle.tell() > 0:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    handle.write(b"\n")
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    @contextmanager
    def _storage(self, path: Path) -> Iterator[None]:
        """Turn an operating-system error of a write into a :class:`StorageError` that says how to continue.

        An atomic write that fails leaves the previous file and no temporary; a failed
        append leaves at most a torn last line, which readers skip.
        """
        try:
            yield
        except OSError as error:
            what = ("no space left on device; free space" if error.errno in (errno.ENOSPC, errno.EDQUOT)
                    else f"cannot be written ({error.strerror or error}); fix that")
            # Until config.json is written the folder is not a run yet: the search itself starts it again.
            then = (f"continue with `embnas resume {self.folder}`" if self.path("config.json").is_file()
                    else "run the same command again")
            raise StorageError(f"{path}: {what} and {then}") from error

    # -- events --------------------------------------------------------------------------------------
    def log_event(self, kind: str, **fields: Any) -> None:
        """Append one event line, flushed and synced, so a crash loses at most the line being written."""
        record = {"event": kind, "time": round(time.time(), 3), **fields}
        self._append(EVENTS_FILE, (json.dumps(record, separators=(",", ":"), default=float) + "\n").encode())

    def events(self, kind: str | None = None) -> Iterator[dict[str, Any]]:
        """The logged events in order (of one kind if given).

        A line that is not JSON (a torn line: a crash mid-append) is skipped; a line that
        is JSON but not an event the stages can read is refused.

        Raises:
            ArtifactError: naming the line of ``events.jsonl`` that was edited or damaged.
        """
        if not self.has(EVENTS_FILE):
            return
        path = self.path(EVENTS_FILE)
        for number, line in enumerate(self._read(EVENTS_FILE).decode("utf-8", errors="replace").splitlines(), 1):
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):
                continue
            problem = _event_problem(record)
            if problem:
                raise ArtifactError(f"{path}, line {number}: {problem}; the log was edited or damaged")
            if kind is None or record["event"] == kind:
                yield record


class MemoryRun(Run):
    """A run whose records live in memory: the same stages, nothing written to disk.

    Args:
        config: the JSON-able configuration of the run (as :meth:`Run.create` records it).
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__(Path("<in-memory run>"))
        self._files: dict[str, bytes] = {}
        self.write_json("config.json", {"config_hash": config_hash(config), "config": dict(config)})

    @property
    def in_memory(self) -> bool:
        return True

    def has(self, name: str) -> bool:
        return name in self._files

    def remove(self, name: str) -> None:
        self._files.pop(name, None)

    def _write(self, name: str, data: bytes) -> None:
        self._files[name] = bytes(data)

    def _read(self, name: str) -> bytes:
        try:
            return self._files[name]
        except KeyError:
            raise ArtifactError(f"{self.path(name)} does not exist") from None

    def _append(self, name: str, line: bytes) -> None:
        self._files[name] = self._files.get(name, b"") + line


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if not _is_int(value):
        return False
    try:
        float(value)
    except OverflowError:
        return False
    return True


def _is_metrics(value: Any) -> bool:
    return value is None or (isinstance(value, dict) and all(_is_number(v) for v in value.values()))


#: The fields the stages read back from each kind of event, with their checks.
_EVENT_FIELDS: dict[str, dict[str, Callable[[Any], bool]]] = {
    "trial": {"round": _is_int, "index": _is_int, "trial": _is_int, "fingerprint": lambda v: isinstance(v, str),
              "cost": _is_int, "fitness": _is_number},
    "trained": {"stage": lambda v: isinstance(v, str), "allocation": lambda v: v is None or isinstance(v, str),
                "valid": _is_metrics, "seconds": _is_number, "best_epoch": lambda v: v is None or _is_int(v),
                "epochs_run": _is_int},
}


def _event_problem(record: Any) -> str:
    """What makes ``record`` unreadable as an event (empty when it is fine)."""
    if not isinstance(record, dict) or not isinstance(record.get("event"), str):
        return "not an event (an object with an 'event' name was expected)"
    for field, ok in _EVENT_FIELDS.get(record["event"], {}).items():
        if field not in record:
            return f"{record['event']} event without its {field!r}"
        if not ok(record[field]):
            return f"{record['event']} event with a bad {field!r} ({str(record[field])[:40]!r})"
    note = record.get("note")
    if record["event"] == "trial" and note is not None:
        if not isinstance(note, dict) or not (note.get("predicted") is None or _is_number(note["predicted"])):
            return "trial event with a bad 'note'"
    return ""


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's header (an 8-byte length, then JSON)."""
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]).get("__metadata__") or {}


def _flatten(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON skeleton of ``value``; tensors and arrays move to ``tensors`` under numbered keys.

    Dicts keep the type of their keys (an optimiser's state is keyed by int).
    """
    if isinstance(value, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = value.detach().cpu().clone().contiguous()
        return {"__tensor__": key}
    if isinstance(value, np.ndarray):
        key = str(len(tensors))
        tensors[key] = torch.from_numpy(np.array(value, copy=True, order="C"))
        return {"__array__": key}
    if isinstance(value, dict):
        return {"__dict__": [[k, _flatten(v, tensors)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [_flatten(v, tensors) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _unflatten(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__array__" in value:
            return tensors[value["__array__"]].numpy()
        return {k: _unflatten(v, tensors) for k, v in value["__dict__"]}
    if isinstance(value, list):
        return [_unflatten(v, tensors) for v in value]
    return value
