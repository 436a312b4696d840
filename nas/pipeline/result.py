"""The typed result of a search, and its serialisation ``metrics.json``.

A :class:`SearchResult` is what :func:`nas.search` returns and what a finished run
folder holds: the allocation, the budget, the metrics of the allocated and of the
full-size model by split, the chosen fitness, the timings.  ``metrics.json`` is
:meth:`SearchResult.to_dict`, tagged with :data:`RESULT_FORMAT` and
:data:`RESULT_VERSION`; :meth:`SearchResult.read` reads it back (with the
allocation beside it), so the summary, the report and the benchmarks read one type
instead of a dictionary's unwritten schema.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nas.artifact.export import export_tables
from nas.core.allocation import Allocation
from nas.core.budget import Budget
from nas.core.errors import ArtifactError, EmbnasError
from nas.pipeline.runs import DAMAGED_JSON_ERRORS, Run

__all__ = ["RESULT_FORMAT", "RESULT_VERSION", "Retrained", "SearchResult"]

#: Names ``metrics.json`` as a search result.
RESULT_FORMAT = "embnas.search-result"
#: Version of the ``metrics.json`` layout; files without one are version 1 (the same fields,
#: untagged); version 3 added the supernet beside a plainly trained reference.
RESULT_VERSION = 3

Metrics = Mapping[str, float]

#: Where a backbone's state dict keeps its embedding tables (``embedding.weights.<table>``).
_EMBEDDING = "embedding.weights."


@dataclass(frozen=True)
class Retrained:
    """One allocation retrained at the end of a search.

    Attributes:
        fingerprint: the allocation's fingerprint.
        fitness: its fitness in the search.
        valid_quality: its validation quality after retraining (``nan`` without validation).
        train_seconds: seconds its training took (all rungs of successive halving together).
        epochs: epochs it was trained in its last stage.
        final: whether it was trained to the end (a finalist) rather than stopped early.
    """

    fingerprint: str
    fitness: float
    valid_quality: float
    train_seconds: float
    epochs: int
    final: bool


@dataclass(frozen=True)
class SearchResult:
    """What a search produced.

    Attributes:
        allocation: the answer: what each row of each table keeps; within ``budget``.
        budget: the hard budget the search was held to.
        metrics: the retrained, allocated model's metrics by split: ``"test"`` (Recall@k and
            NDCG@k for top-k data, AUC and log loss for click data) and ``"valid"`` (its best
            validation, empty without validation data).
        full_metrics: the full-size reference model's metrics, by split as ``metrics``.
        reference: what the reference is: ``"full"`` (a plainly trained full model of the
            same backbone, recipe and seed, :mod:`nas.pipeline.reference`), or, in a run
            with ``reference="none"``, its supernet: ``"sandwich"`` (the sandwich supernet
            with every row at ``d_max``) or ``"one-shot"`` (the supernet trained with a
            one-shot controller, unmasked).
        fitness: the chosen allocation's fitness in the search (``nan`` without validation).
        timings: seconds per stage: ``supernet``, ``search``, ``retrain`` and ``total``.
        run_dir: the run folder; ``None`` for a search kept in memory.
        task: ``"top-k"`` or ``"click"``.
        model: the backbone's name.
        controller: the controller's name.
        space: the search space, described.
        data: a summary of the data (name, sizes).
        evaluator: how fitness was measured (``None`` without validation data).
        fitness_driven: whether the controller learned from fitness.
        retrain: how the fittest were retrained (``full``, ``halving`` or ``finetune``).
        retrained: every retrained allocation, finalists and those stopped early.
        trials: allocations whose fitness was measured.
        decisions: the space's decisions of the answer, for spaces of at most 64 decisions.
        export_bytes: bytes of the packed export (written to ``run_dir/export``, or what
            :meth:`export` writes for a search kept in memory).
        config_hash: the hash of the run's configuration and data (recorded in the export).
        full_train_seconds: seconds the reference model trained.
        allocated_train_seconds: seconds the answer's retraining took.
        supernet: what the supernet was (``"sandwich"``, ``"one-shot"``) when its full-size
            quality is reported beside a plainly trained reference; else ``None``.
        supernet_metrics: that supernet's full-size metrics, by split as ``metrics``.
        reference_dir: the cache entry of the plainly trained reference (``None`` without one).
        trained_model: the retrained, allocated model itself: set by a search or a
            resume, ``None`` when read back from ``metrics.json`` (:meth:`read`).
    """

    allocation: Allocation
    budget: Budget
    metrics: Mapping[str, Metrics]
    full_metrics: Mapping[str, Metrics]
    reference: str
    fitness: float
    timings: Mapping[str, float]
    run_dir: Path | None
    task: str
    model: str
    controller: str
    space: str
    data: Mapping[str, Any]
    evaluator: str | None
    fitness_driven: bool
    retrain: str
    retrained: tuple[Retrained, ...]
    trials: int
    decisions: tuple[int, ...] | None
    export_bytes: int
    config_hash: str
    full_train_seconds: float
    allocated_train_seconds: float
    supernet: str | None = None
    supernet_metrics: Mapping[str, Metrics] | None = None
    reference_dir: Path | None = None
    trained_model: Any = field(default=None, compare=False, repr=False)

    # -- derived ------------------------------------------------------------------------------------
    @property
    def seconds(self) -> float:
        """Wall-clock seconds of the whole search."""
        return float(self.timings.get("total", math.nan))

    @property
    def cost_ratio(self) -> float:
        """The search's wall time in full trainings: seconds (less the reference's training,
        when this run trained it) over the seconds the full reference model trained."""
        own = self.seconds - float(self.timings.get("reference", 0.0))
        return own / self.full_train_seconds if self.full_train_seconds else math.nan

    @property
    def retain_ratio(self) -> float:
        """Share of the full tables' values the allocation keeps."""
        return self.budget.retain_ratio(self.allocation.cost)

    @property
    def budget_used(self) -> float:
        """Share of the budget the allocation spends, in the budget's unit (values, or bits)."""
        limit = self.budget.max_cost
        return self.allocation.cost_in(self.budget) / limit if limit else 1.0

    def ratio(self, metric: str, split: str = "test") -> float:
        """The allocated model's ``metric`` over the reference's (``nan`` when the reference's is 0)."""
        full = self.full_metrics[split][metric]
        return self.metrics[split][metric] / full if full else math.nan

    # -- actions ------------------------------------------------------------------------------------
    def export(self, folder: str | Path, **options: Any) -> dict[str, Any]:
        """Write the packed, budget-checked tables to ``folder``; returns the manifest.

        Uses the trained model held by the result, or the embedding tables of the run
        folder's checkpoint when the result was read back from disk (no data needed).
        ``options`` go to :func:`nas.artifact.export.export_tables`.
        """
        if self.trained_model is not None:
            tables = self.trained_model.embedding
        elif self.run_dir is not None:
            weights = Run(self.run_dir).load_tensors("allocated.safetensors")
            tables = {key.removeprefix(_EMBEDDING): value for key, value in weights.items() if key.startswith(_EMBEDDING)}
        else:
            raise ArtifactError("this result holds no trained model and no run folder to load it from")
        manifest = export_tables(folder, tables, self.allocation, self.budget, config_hash=self.config_hash, **options)
        return {**manifest, "folder": str(folder)}

    # -- metrics.json ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON-able form written to ``metrics.json``."""
        allocation, budget = self.allocation, self.budget
        return {
            "format": RESULT_FORMAT,
            "version": RESULT_VERSION,
            "run": None if self.run_dir is None else str(self.run_dir),
            "task": self.task,
            "model": self.model,
            "data": dict(self.data),
            "space": self.space,
            "controller": self.controller,
            "evaluator": self.evaluator,
            "fitness_driven": self.fitness_driven,
            "budget": {**budget.to_dict(), "description": budget.describe(), "max_bytes": budget.max_bytes},
            "allocation": {
                "values": allocation.cost,
                "retain_ratio": self.retain_ratio,
                "budget_used": self.budget_used,
                "fingerprint": allocation.fingerprint(),
                "fitness": self.fitness,
                "tables": allocation.summary(),
                "decisions": None if self.decisions is None else list(self.decisions),
            },
            "config_hash": self.config_hash,
            "export": {"bytes_stored": self.export_bytes,
                       "folder": None if self.run_dir is None else str(self.run_dir / "export")},
            "full": {"valid": dict(self.full_metrics.get("valid") or {}), "test": dict(self.full_metrics["test"]),
                     "train_seconds": self.full_train_seconds, "supernet": self.reference,
                     "cache": None if self.reference_dir is None else str(self.reference_dir)},
            "supernet": None if self.supernet_metrics is None else {
                "kind": self.supernet, "valid": dict(self.supernet_metrics.get("valid") or {}),
                "test": dict(self.supernet_metrics["test"])},
            "allocated": {"valid": dict(self.metrics.get("valid") or {}), "test": dict(self.metrics["test"]),
                          "train_seconds": self.allocated_train_seconds},
            "retrain": self.retrain,
            "retrained": [
                {"fingerprint": r.fingerprint, "fitness": r.fitness, "valid_quality": r.valid_quality,
                 "train_seconds": r.train_seconds, "epochs": r.epochs, "final": r.final}
                for r in self.retrained
            ],
            "trials": self.trials,
            "timing": dict(self.timings),
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], allocation: Allocation, *, source: str = "metrics.json") -> SearchResult:
        """Inverse of :meth:`to_dict`, given the allocation (stored beside it as ``allocation.npz``).

        Reads version 1 (untagged, written before the result was typed) to :data:`RESULT_VERSION`.

        Raises:
            ArtifactError: the data is not a search result, is of a newer version, or does
                not match the allocation.
        """
        if not isinstance(data, Mapping):
            raise ArtifactError(f"{source}: not a search result (a JSON object was expected)")
        version, kind = data.get("version", 1), data.get("format", RESULT_FORMAT)
        if kind != RESULT_FORMAT or not isinstance(version, int) or isinstance(version, bool):
            shown = repr(kind)[:60] if isinstance(kind, str) else f"a {type(kind).__name__}"
            number = str(version)[:20] if isinstance(version, int) else f"a {type(version).__name__}"
            raise ArtifactError(f"{source}: not an embnas search result (format {shown}, version {number})")
        if version > RESULT_VERSION:
            raise ArtifactError(f"{source}: written by a newer embnas (result version {str(version)[:20]}, this one reads "
                                f"up to {RESULT_VERSION}); upgrade embnas to read it")
        try:
            chosen = data["allocation"]
            if chosen["fingerprint"] != allocation.fingerprint():
                raise ArtifactError(f"{source}: describes allocation {chosen['fingerprint']}, but the allocation beside "
                                    f"it is {allocation.fingerprint()}")
            full, allocated, supernet = data["full"], data["allocated"], data.get("supernet")
            run, cache = data.get("run"), full.get("cache")
            return cls(
                allocation=allocation,
                budget=Budget.from_dict(data["budget"]),
                metrics={"valid": dict(allocated.get("valid") or {}), "test": dict(allocated["test"])},
                full_metrics={"valid": dict(full.get("valid") or {}), "test": dict(full["test"])},
                reference=str(full.get("supernet") or "full"),
                fitness=float(chosen["fitness"]) if chosen.get("fitness") is not None else math.nan,
                timings={k: float(v) for k, v in (data.get("timing") or {}).items()},
                run_dir=None if run is None else Path(run),
                task=str(data["task"]),
                model=str(data.get("model", "")),
                controller=str(data["controller"]),
                space=str(data["space"]),
                data=dict(data["data"]),
                evaluator=data.get("evaluator"),
                fitness_driven=bool(data.get("fitness_driven", True)),
                retrain=str(data.get("retrain", "full")),
                retrained=tuple(Retrained(str(r["fingerprint"]), float(r["fitness"]), float(r["valid_quality"]),
                                          float(r["train_seconds"]), int(r["epochs"]), bool(r["final"]))
                                for r in data.get("retrained") or ()),
                trials=int(data.get("trials", 0)),
                decisions=None if chosen.get("decisions") is None else tuple(int(v) for v in chosen["decisions"]),
                export_bytes=int(data["export"]["bytes_stored"]),
                config_hash=str(data.get("config_hash", "")),
                full_train_seconds=float(full.get("train_seconds", math.nan)),
                allocated_train_seconds=float(allocated.get("train_seconds", math.nan)),
                supernet=None if supernet is None else str(supernet["kind"]),
                supernet_metrics=None if supernet is None else {"valid": dict(supernet.get("valid") or {}),
                                                                 "test": dict(supernet["test"])},
                reference_dir=None if cache is None else Path(cache),
            )
        except ArtifactError:
            raise
        except (EmbnasError, *DAMAGED_JSON_ERRORS) as error:  # wrong types, missing keys, an infeasible budget
            raise ArtifactError(f"{source}: damaged search result ({type(error).__name__}: {str(error)[:200]})") from None

    @classmethod
    def read(cls, run_dir: str | Path) -> SearchResult:
        """The result of a finished run folder (``metrics.json`` and ``allocation.npz``), without its model.

        Both files are checked against the digests the run recorded when it wrote them
        (:mod:`nas.pipeline.runs`); the folder is not locked.

        Raises:
            ArtifactError: naming the file that is missing, damaged, or changed since the run wrote it.
        """
        run = Run(run_dir)
        if not run.has("metrics.json"):
            raise ArtifactError(f"{run_dir} has no metrics.json: the run is not finished (continue it with "
                                "`embnas resume`) or is not a run folder")
        result = cls.from_dict(run.read_json("metrics.json"), run.load_allocation("allocation.npz"),
                               source=str(run.path("metrics.json")))
        # The folder where it is now (a moved folder keeps working); version 1 kept the hash in config.json only.
        return replace(result, run_dir=run.folder, config_hash=result.config_hash or run.config_hash)
