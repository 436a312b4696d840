"""Work on a finished run: reload its retrained model, re-evaluate it, or export it again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nas.artifact.export import export_tables
from nas.core.allocation import Allocation
from nas.core.budget import Budget
from nas.core.errors import ArtifactError
from nas.pipeline.build import Data, Model, build_model, load_checkpoint
from nas.pipeline.config import SearchConfig
from nas.pipeline.data import load_data
from nas.pipeline.runs import Run
from nas.pipeline.tasks import task_for

__all__ = ["evaluate_run", "export_run", "load_allocated_model"]


def load_allocated_model(folder: str | Path, data: Data | None = None) -> tuple[Run, SearchConfig, Model, Allocation, Budget, Data]:
    """The run, its configuration, retrained model (allocation applied), allocation, budget and data.

    Args:
        folder: a finished run folder.
        data: the data, for a run that searched data given in memory.
    """
    run = Run(folder)
    if not run.has("config.json"):
        raise ArtifactError(f"{folder} is not a run folder (no config.json); give a folder made by `embnas search`")
    config = SearchConfig.from_dict(run.config())
    if not run.has("allocation.npz") or not run.has("checkpoints/allocated.safetensors"):
        raise ArtifactError(f"{folder} has no retrained allocation yet; finish the run with `embnas search` first")
    data = load_data(config.data) if data is None else data
    allocation = run.load_allocation("allocation.npz")
    budget = Budget.parse(config.budget, data.rows(), config.d_max, config.d_min)
    allocation.validate(budget)
    model = build_model(config, data)
    model.embedding.set_allocation(allocation)
    load_checkpoint(model, run, "allocated.safetensors")
    return run, config, model, allocation, budget, data


def evaluate_run(folder: str | Path, split: str = "test") -> dict[str, float]:
    """The metrics of a run's retrained, allocated model on ``split``: full-ranking Recall and NDCG, or AUC and log loss."""
    _, _, model, _, _, data = load_allocated_model(folder)
    return task_for(data).evaluate(model, split)


def export_run(folder: str | Path, out: str | Path | None = None) -> dict[str, Any]:
    """Export a run's allocated tables to ``out`` (default ``<run>/export``); returns the manifest."""
    run, _, model, allocation, budget, _ = load_allocated_model(folder)
    target = Path(out) if out is not None else run.path("export")
    manifest = export_tables(target, model.embedding, allocation, budget, config_hash=run.config_hash)
    return {**manifest, "folder": str(target)}
