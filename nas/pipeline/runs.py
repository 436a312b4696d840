"""Run folders: everything one search leaves behind, written so that nothing is ever half-written.

``runs/<id>/`` holds ``config.json`` (with the hash that ties the folder to its
configuration and data), ``events.jsonl`` (append-only, one JSON object per
line: each evaluated allocation, each stage that finished), ``checkpoints/``
(safetensors), ``allocation.npz``, ``metrics.json`` and ``export/``.  Whole files
are written to a temporary name and renamed; the event log is only appended to,
and a torn last line (a crash mid-append) is ignored when it is read back.

:class:`MemoryRun` keeps the same records in memory, for a search that must leave
nothing on disk (``nas.search(..., run_dir=None)``): every stage reads and writes
through the same few methods, so the stages do not know which kind they have.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load, save

from nas.core._atomic import atomic_write, write_json
from nas.core.allocation import Allocation
from nas.core.errors import ArtifactError, ConfigError, ResumeError

__all__ = ["MemoryRun", "Run", "config_hash"]


def config_hash(config: Mapping[str, Any]) -> str:
    """Stable short hash of a JSON-able configuration (key order does not matter)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Run:
    """One run folder.

    Args:
        folder: the run's folder, ``runs/<id>``.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    @classmethod
    def create(
        cls,
        root: str | Path,
        config: Mapping[str, Any],
        name: str | None = None,
        *,
        upgrade: Callable[[dict[str, Any]], Mapping[str, Any]] | None = None,
    ) -> Run:
        """Make a new run folder under ``root`` and write its ``config.json``.

        Args:
            root: the folder holding runs (``runs/``).
            config: the JSON-able configuration of the run.
            name: folder name; default ``<UTC time>-<config hash>``.
            upgrade: brings a configuration recorded by an earlier version up to date
                (options added since take their defaults) before it is compared with
                ``config``; the recorded file is left as it is.

        Raises:
            ResumeError: when a folder of that name exists for another configuration.
        """
        digest = config_hash(config)
        name = name or time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{digest[:8]}"
        if not name or name in (".", "..") or "/" in name or "\\" in name:
            raise ConfigError(f"run name {name!r} must be a plain folder name (no path separators)")
        run = cls(Path(root) / name)
        if (run.folder / "config.json").exists():
            run.check_config(config, upgrade=upgrade)
            run._remove_stale_temporaries()
            return run
        run.folder.mkdir(parents=True, exist_ok=True)
        write_json(run.folder / "config.json", {"config_hash": digest, "config": dict(config)})
        return run

    def _remove_stale_temporaries(self) -> None:
        """Delete the temporary files of atomic writes a crash interrupted (never the files they were for)."""
        for path in self.folder.rglob(".*.tmp"):
            path.unlink(missing_ok=True)

    # -- configuration ------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """The configuration the run was created with."""
        return self.read_json("config.json")["config"]

    @property
    def config_hash(self) -> str:
        """The hash recorded in ``config.json``."""
        return str(self.read_json("config.json")["config_hash"])

    def check_config(
        self, config: Mapping[str, Any], *, upgrade: Callable[[dict[str, Any]], Mapping[str, Any]] | None = None
    ) -> None:
        """Refuse to continue this folder with a different configuration, naming what differs."""
        recorded = self.config()
        if upgrade is not None:
            recorded = dict(upgrade(recorded))
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
        """Write ``name`` as JSON, atomically."""
        write_json(self.path(name), data)

    def read_json(self, name: str) -> Any:
        """Read a JSON file of the run, with a clear error when it is missing or damaged."""
        path = self.path(name)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise ArtifactError(f"{path} does not exist; is {self.folder} a run folder made by `embnas search`?") from None
        except json.JSONDecodeError as error:
            raise ArtifactError(f"{path}: damaged JSON ({error})") from None

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
            skeleton = json.loads(_safetensors_metadata(data)["state"])
        except Exception as error:  # safetensors and json raise their own types for damaged files
            raise ArtifactError(f"{self.path('checkpoints', name)}: damaged state ({error})") from None
        return _unflatten(skeleton, tensors)

    def save_allocation(self, name: str, allocation: Allocation) -> None:
        """Save an allocation (``.npz``, atomically) as ``name``."""
        self._write(name, allocation.to_bytes())

    def load_allocation(self, name: str) -> Allocation:
        """Load an allocation saved by :meth:`save_allocation`."""
        return Allocation.from_bytes(self._read(name), source=str(self.path(name)))

    def remove(self, name: str) -> None:
        """Delete ``name`` if the run holds it."""
        self.path(name).unlink(missing_ok=True)

    # -- storage: the only methods that touch the folder -----------------------------------------------
    def _write(self, name: str, data: bytes) -> None:
        with atomic_write(self.path(name), "wb") as handle:
            handle.write(data)

    def _read(self, name: str) -> bytes:
        path = self.path(name)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise ArtifactError(f"{path} does not exist") from None

    def _append(self, name: str, line: bytes) -> None:
        with open(self.path(name), "a+b") as handle:
            # A crash mid-append leaves a torn line without its newline: end it first, so
            # this event starts a line of its own instead of being glued to the fragment.
            if handle.tell() > 0:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    handle.write(b"\n")
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    # -- events --------------------------------------------------------------------------------------
    def log_event(self, kind: str, **fields: Any) -> None:
        """Append one event line, flushed and synced, so a crash loses at most the line being written."""
        record = {"event": kind, "time": round(time.time(), 3), **fields}
        self._append("events.jsonl", (json.dumps(record, separators=(",", ":"), default=float) + "\n").encode())

    def events(self, kind: str | None = None) -> Iterator[dict[str, Any]]:
        """The logged events in order (of one kind if given); a torn last line is skipped."""
        if not self.has("events.jsonl"):
            return
        for line in self._read("events.jsonl").decode().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if kind is None or record.get("event") == kind:
                yield record


class MemoryRun(Run):
    """A run whose records live in memory: the same stages, nothing written to disk.

    Args:
        config: the JSON-able configuration of the run (as :meth:`Run.create` records it).
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__(Path("<in-memory run>"))
        self._files: dict[str, bytes] = {}
        self._write("config.json", json.dumps({"config_hash": config_hash(config), "config": dict(config)}).encode())

    @property
    def in_memory(self) -> bool:
        return True

    def write_json(self, name: str, data: Any) -> None:
        self._write(name, json.dumps(data, indent=2).encode())

    def read_json(self, name: str) -> Any:
        return json.loads(self._read(name))

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
