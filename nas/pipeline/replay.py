"""Work on a finished run: reload its retrained model, re-evaluate it, or export it again.

These read the run folder and take no lock: a run being written is read as it is
(every file is whole; a run that has not reached its retrained model is refused).
Every file read is checked against the digest the run recorded for it
(:mod:`nas.pipeline.runs`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from nas.artifact.export import export_tables
from nas.artifact.torchrec_tables import ALIGNMENTS, export_torchrec
from nas.core.allocation import Allocation
from nas.core.budget import Budget
from nas.core.errors import ArtifactError, BudgetError, ConfigError
from nas.pipeline.build import Data, Model, build_budget, build_model, load_checkpoint
from nas.pipeline.config import SearchConfig
from nas.pipeline.data import load_data
from nas.pipeline.runs import DAMAGED_JSON_ERRORS, Run
from nas.pipeline.tasks import task_for

__all__ = ["evaluate_run", "export_run", "load_allocated_model", "read_config"]

def read_config(run: Run) -> SearchConfig:
    """The run's :class:`~nas.pipeline.config.SearchConfig`, read from its checked ``config.json``.

    Raises:
        ArtifactError: naming ``config.json`` when it is missing, damaged, edited (it no
            longer matches its ``config_hash``) or not a configuration this version reads.
    """
    recorded = run.config()
    try:
        return SearchConfig.from_dict(recorded)
    except DAMAGED_JSON_ERRORS as error:  # a configuration of the wrong shape (ConfigError is a ValueError)
        raise ArtifactError(f"{run.path('config.json')}: not a search configuration this version reads "
                            f"({type(error).__name__}: {str(error)[:200]})") from None


def load_allocated_model(folder: str | Path, data: Data | None = None) -> tuple[Run, SearchConfig, Model, Allocation, Budget, Data]:
    """The run, its configuration, retrained model (allocation applied), allocation, budget and data.

    Args:
        folder: a finished run folder.
        data: the data, for a run that searched data given in memory.

    Raises:
        ArtifactError: naming the file that is missing, damaged, or changed since the run wrote it.
    """
    run = Run(folder)
    if not run.has("config.json"):
        raise ArtifactError(f"{folder} is not a run folder (no config.json); give a folder made by `embnas search`")
    config = read_config(run)
    if not run.has("allocation.npz") or not run.has("checkpoints/allocated.safetensors"):
        raise ArtifactError(f"{folder} has no retrained allocation yet; finish the run with `embnas search` first")
    data = load_data(config.data) if data is None else data
    allocation = run.load_allocation("allocation.npz")
    budget = checked_budget(run, config, data, allocation)
    model = build_model(config, data)
    model.embedding.set_allocation(allocation)
    load_checkpoint(model, run, "allocated.safetensors")
    return run, config, model, allocation, budget, data


def checked_budget(run: Run, config: SearchConfig, data: Data, allocation: Allocation, name: str = "allocation.npz") -> Budget:
    """The run's budget on ``data``, with ``allocation`` (the run's file ``name``) checked against it.

    Raises:
        ArtifactError: the allocation does not fit the data's tables or breaks the budget.
        BudgetError: the configured budget is infeasible on this data.
    """
    budget = build_budget(config, data)
    try:
        allocation.validate(budget)
    except BudgetError as error:
        raise ArtifactError(f"{run.path(name)}: does not fit the run's budget on its data ({error})") from None
    return budget


def evaluate_run(folder: str | Path, split: str = "test") -> dict[str, float]:
    """The metrics of a run's retrained, allocated model on ``split``: full-ranking Recall and NDCG, or AUC and log loss."""
    _, _, model, _, _, data = load_allocated_model(folder)
    return task_for(data).evaluate(model, split)


EXPORT_FORMATS = ("packed", "torchrec")


def export_run(folder: str | Path, out: str | Path | None = None, *, format: str = "packed", align: int = 1) -> dict[str, Any]:
    """Export a run's allocated tables to ``out``; returns the manifest (packed) or the TorchRec config.

    Args:
        folder: the run folder.
        out: the export folder (default ``<run>/export``, or ``<run>/export-torchrec``).
        format: ``"packed"`` (:func:`~nas.artifact.export.export_tables`) or ``"torchrec"``
            (:func:`~nas.artifact.torchrec_tables.export_torchrec`, converted from the packed export).
        align: for ``"torchrec"``, round every dimension up to a multiple of this.
    """
    if format not in EXPORT_FORMATS:
        raise ConfigError(f"export format must be one of {EXPORT_FORMATS}, got {format!r}")
    if align not in ALIGNMENTS or (align != 1 and format != "torchrec"):
        raise ConfigError(f"align must be one of {ALIGNMENTS}, and only the torchrec format takes one (got {align!r})")
    run, _, model, allocation, budget, _ = load_allocated_model(folder)
    if format == "packed":
        target = Path(out) if out is not None else run.path("export")
        manifest = export_tables(target, model.embedding, allocation, budget, config_hash=run.config_hash)
        return {**manifest, "folder": str(target)}
    target = Path(out) if out is not None else run.path("export-torchrec")
    with tempfile.TemporaryDirectory(prefix="embnas-export-") as scratch:
        packed = Path(scratch) / "packed"
        export_tables(packed, model.embedding, allocation, budget, config_hash=run.config_hash)
        config = export_torchrec(packed, target, align=align)
    return {**config, "folder": str(target)}
