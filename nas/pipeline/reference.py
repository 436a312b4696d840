"""The honest reference: a plainly trained full-size model, trained once and shared by every run.

A compressed model is only as good as what it is compared with.  The supernet at full size
is the wrong yardstick: trained to serve every allocation at once, it is weaker than the
same backbone trained plainly, so an allocation can even score above "full" against it,
and the ratio differs by controller for the same data.  Every run therefore compares its
allocated model with a plainly trained full model of the same backbone, training recipe and
seed.

Training that model costs as much as training the allocation, so it is trained once per
(data, backbone, recipe, seed) and cached: a user who searches ten budgets pays for it once.
The cache entry is named by the sha256 of what determines the trained model (the data's
fingerprint, the backbone and its width, the training options, the seed, the device kind),
so runs with equal recipes share it and any difference gets an entry of its own.  An entry
is a run folder (:mod:`nas.pipeline.runs`): written atomically, its files' digests recorded
and checked on every read (an entry whose files were altered is refused, naming the file),
a killed training continued from its last checkpoint, and one process filling it at a time
while the others wait for it.

The cache lives in ``$EMBNAS_CACHE/references`` (default ``$XDG_CACHE_HOME/embnas`` or
``~/.cache/embnas``), or wherever ``reference_cache`` points.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nas.core.errors import ArtifactError, StorageError
from nas.pipeline.build import Model, load_checkpoint
from nas.pipeline.runs import DAMAGED_JSON_ERRORS, Run, config_hash
from nas.pipeline.stages import RunContext, train_stage

__all__ = ["REFERENCE_FORMAT", "REFERENCE_VERSION", "Reference", "cache_folder", "default_cache", "full_reference",
           "reference_key"]

#: Names a cache entry's record as a reference model's.
REFERENCE_FORMAT = "embnas.reference"
#: Version of the entry's layout; a different version is a different entry.
REFERENCE_VERSION = 1

#: The entry's result: test and best validation metrics, training time and length.
_RESULT = "reference.json"
#: The stage name of the reference's training (its checkpoint is ``checkpoints/reference.safetensors``).
_STAGE = "reference"


@dataclass(frozen=True)
class Reference:
    """A plainly trained full model's quality, from the cache.

    Attributes:
        folder: the cache entry.
        metrics: test and best validation metrics, by split (``"test"``, ``"valid"``).
        seconds: how long its training took (when it was trained, by whichever run).
        best_epoch: the epoch of its best validation (``None`` without validation).
        epochs_run: epochs it trained.
        trained_here: whether this process trained it (rather than finding it cached).
    """

    folder: Path
    metrics: Mapping[str, Mapping[str, float]]
    seconds: float
    best_epoch: int | None
    epochs_run: int
    trained_here: bool

    @property
    def stats(self) -> dict[str, Any]:
        """Its training's stats, as a training stage logs them."""
        return {"stage": _STAGE, "allocation": None, "valid": dict(self.metrics.get("valid") or {}) or None,
                "seconds": self.seconds, "best_epoch": self.best_epoch, "epochs_run": self.epochs_run}

    def load_into(self, model: Model) -> None:
        """Load the reference's weights into ``model`` (checked against the digest recorded when they were written)."""
        with _refusing_altered(self.folder):
            load_checkpoint(model, Run(self.folder), f"{_STAGE}.safetensors")


def default_cache() -> Path:
    """Where references are cached unless told otherwise: ``$EMBNAS_CACHE``, else the user's cache folder."""
    root = os.environ.get("EMBNAS_CACHE")
    if root:
        return Path(root).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "embnas"


def cache_folder(cache: str | Path | None = None) -> Path:
    """The folder of the cached references (``cache``, else :func:`default_cache`), made if missing.

    A run checks it before it makes its own folder, so a cache that cannot be written is
    one line and leaves nothing behind.

    Raises:
        StorageError: the folder cannot be made or written (naming it).
    """
    root = (Path(cache) if cache is not None else default_cache()) / "references"
    try:
        root.mkdir(parents=True, exist_ok=True)
        writable = os.access(root, os.W_OK | os.X_OK)
    except OSError as error:
        raise StorageError(f"{root}: the cache of full reference models cannot be made ({error.strerror}); give "
                           "another --reference-cache (or EMBNAS_CACHE)") from None
    if not writable:
        raise StorageError(f"{root}: the cache of full reference models is not writable; give another "
                           "--reference-cache (or EMBNAS_CACHE)")
    return root


def reference_key(ctx: RunContext) -> dict[str, Any]:
    """What determines the trained reference model: two runs with equal keys share it.

    Everything about the search (budget, space, controller, supernet) is left out: the
    reference does not depend on it.  The checkpoint interval and thread count are left
    out too (they change neither the weights nor the metrics' meaning).
    """
    config = ctx.config
    train = {k: v for k, v in config.train.to_dict().items() if k != "checkpoint_every"}  # type: ignore[union-attr]
    return {
        "format": REFERENCE_FORMAT,
        "version": REFERENCE_VERSION,
        "data_fingerprint": ctx.data.fingerprint(),
        "task": ctx.task.name,
        "model": config.model,
        "d_max": config.d_max,
        "train": train,
        "seed": config.seed,
        "device": config.device.split(":")[0],
    }


def full_reference(ctx: RunContext, cache: str | Path | None = None) -> Reference:
    """The plainly trained full model of ``ctx``'s backbone, recipe and seed: from the cache, or trained into it.

    Another process training the same entry is waited for (its PID is printed when
    ``ctx.progress``); a training this process was killed in continues from its checkpoint.

    Raises:
        ArtifactError: the entry's files were altered or damaged since they were written
            (naming the file and the entry to delete to train it again).
    """
    root = cache_folder(cache)
    key = reference_key(ctx)

    def waiting(pid: int | None) -> None:
        if ctx.progress:
            who = f"process {pid}" if pid is not None else "another process"
            print(f"waiting for {who}, which is training the same full reference model ({root / config_hash(key)})",
                  file=sys.stderr, flush=True)

    with _refusing_altered(root / config_hash(key)):
        with Run.create(root, key, config_hash(key), wait=waiting) as entry:
            if entry.has(_RESULT):
                return _reference(entry, entry.read_json(_RESULT), trained_here=False)
            model = ctx.new_model()
            stats = train_stage(replace(ctx, run=entry), _STAGE, None, model,
                                lambda model, hooks: ctx.task.train(model, ctx.train_config, hooks, progress=ctx.progress))
            record = {"valid": stats["valid"] or {}, "test": ctx.task.evaluate(model, "test"), "seconds": stats["seconds"],
                      "best_epoch": stats["best_epoch"], "epochs_run": stats["epochs_run"]}
            entry.write_json(_RESULT, record)
            return _reference(entry, record, trained_here=True)


def _reference(entry: Run, record: Mapping[str, Any], *, trained_here: bool) -> Reference:
    try:
        return Reference(
            folder=entry.folder,
            metrics={"valid": {k: float(v) for k, v in (record["valid"] or {}).items()},
                     "test": {k: float(v) for k, v in record["test"].items()}},
            seconds=float(record["seconds"]),
            best_epoch=None if record["best_epoch"] is None else int(record["best_epoch"]),
            epochs_run=int(record["epochs_run"]),
            trained_here=trained_here,
        )
    except DAMAGED_JSON_ERRORS as error:
        raise ArtifactError(f"{entry.path(_RESULT)}: not a reference result ({type(error).__name__}: {str(error)[:200]})") from None


@contextmanager
def _refusing_altered(folder: Path) -> Iterator[None]:
    """Turns an integrity error inside a cache entry into one that says how to recover."""
    try:
        yield
    except ArtifactError as error:
        raise ArtifactError(f"the cached full reference model is not usable: {error}; delete {folder} to train it "
                            "again") from None
