"""embnas: embedding-size search for recommender systems under a hard memory budget.

Use it from Python::

    import nas

    result = nas.search(data, budget="2MB", model="lightgcn", controller="bet", trials=50)
    result.allocation, result.metrics["test"]["ndcg@20"]
    result.export("out/")                  # the packed tables, loaded by nas.PackedEmbedding
    result = nas.resume("runs/<id>")       # a run folder continues where it stopped
    nas.front(data, budgets=[0.5, 0.8, 0.95], folder="runs/front")   # one supernet, a search per budget
    nas.compare("grid.toml", jobs=4)       # arms x budgets x seeds, compared seed by seed
    nas.tune(data, model="lightgcn").train   # learning rate and L2 tuned on validation

The layers, lowest first: :mod:`nas.core` (types and contracts), :mod:`nas.artifact`
(the export and its serving loader), :mod:`nas.pipeline` (configuration, tasks,
supernet, evaluators, trials, run folders, the search stages) and :mod:`nas.app`
(this API, the ``embnas`` command, summary and report).  Each imports only the layers
below it.

This package is also the composition root: the built-in controllers and search
spaces (the ``controllers`` and ``search_spaces`` packages) are imported here, the
first time any registry is consulted, so that they are found exactly as third-party
plug-ins are, through :data:`CONTROLLERS` and :data:`SPACES`.  The public names below
are imported on first use, so ``import nas`` stays fast and imports no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nas.core import registry as _registry
from nas.core._lazy import lazy_names as _lazy_names

if TYPE_CHECKING:
    from nas.app.api import front, resume, search, tune
    from nas.app.compare import compare
    from nas.artifact.serving import PackedEmbedding
    from nas.core.allocation import Allocation
    from nas.core.budget import Budget
    from nas.core.controller import Controller, OneShotController
    from nas.core.errors import ArtifactError, BudgetError, ConfigError, DataError, EmbnasError, ResumeError, WorkerError
    from nas.core.errors import RunLockedError, StorageError, TrainingDiverged
    from nas.core.evaluator import Evaluator
    from nas.core.plugins import CONTROLLERS, SPACES, register_controller, register_space
    from nas.core.space import SearchSpace
    from nas.pipeline.backbones import BACKBONES, register_backbone
    from nas.pipeline.config import SearchConfig, SupernetOptions, TrainingOptions
    from nas.pipeline.data import DataSpec
    from nas.pipeline.result import SearchResult

#: Public name -> the module that defines it.
_PUBLIC = {
    "search": "nas.app.api",
    "resume": "nas.app.api",
    "front": "nas.app.api",
    "tune": "nas.app.api",
    "compare": "nas.app.compare",
    "SearchResult": "nas.pipeline.result",
    "SearchConfig": "nas.pipeline.config",
    "TrainingOptions": "nas.pipeline.config",
    "SupernetOptions": "nas.pipeline.config",
    "DataSpec": "nas.pipeline.data",
    "Budget": "nas.core.budget",
    "Allocation": "nas.core.allocation",
    "SearchSpace": "nas.core.space",
    "Controller": "nas.core.controller",
    "OneShotController": "nas.core.controller",
    "Evaluator": "nas.core.evaluator",
    "PackedEmbedding": "nas.artifact.serving",
    "CONTROLLERS": "nas.core.plugins",
    "SPACES": "nas.core.plugins",
    "register_controller": "nas.core.plugins",
    "register_space": "nas.core.plugins",
    "BACKBONES": "nas.pipeline.backbones",
    "register_backbone": "nas.pipeline.backbones",
    "EmbnasError": "nas.core.errors",
    "ConfigError": "nas.core.errors",
    "BudgetError": "nas.core.errors",
    "DataError": "nas.core.errors",
    "ArtifactError": "nas.core.errors",
    "ResumeError": "nas.core.errors",
    "WorkerError": "nas.core.errors",
    "RunLockedError": "nas.core.errors",
    "StorageError": "nas.core.errors",
    "TrainingDiverged": "nas.core.errors",
}

__all__ = [
    "Allocation",
    "ArtifactError",
    "BACKBONES",
    "Budget",
    "BudgetError",
    "CONTROLLERS",
    "ConfigError",
    "Controller",
    "DataError",
    "DataSpec",
    "EmbnasError",
    "Evaluator",
    "OneShotController",
    "PackedEmbedding",
    "ResumeError",
    "WorkerError",
    "RunLockedError",
    "StorageError",
    "TrainingDiverged",
    "SPACES",
    "SearchConfig",
    "SearchResult",
    "SearchSpace",
    "SupernetOptions",
    "TrainingOptions",
    "compare",
    "front",
    "register_backbone",
    "register_controller",
    "register_space",
    "resume",
    "search",
    "tune",
]


__getattr__, __dir__ = _lazy_names(__name__, _PUBLIC)


def _import_builtin_plugins() -> None:
    """The built-in controllers and search spaces register themselves when imported."""
    import controllers  # noqa: F401
    import search_spaces  # noqa: F401


_registry.on_first_lookup(_import_builtin_plugins)
