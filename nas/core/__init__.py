"""The small shared types and protocols at the bottom of embnas.

The names below are imported on first use, so that importing a light module of the
core (the registries, the errors) loads nothing else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nas.core._lazy import lazy_names

if TYPE_CHECKING:
    from nas.core.allocation import Allocation
    from nas.core.budget import Budget
    from nas.core.errors import ArtifactError, BudgetError, ConfigError, DataError, EmbnasError, ResumeError
    from nas.core.errors import RunLockedError, StorageError, TrainingDiverged
    from nas.core.evaluator import Evaluator
    from nas.core.tables import TableSpec, table_specs

_PUBLIC = {
    "Allocation": "nas.core.allocation",
    "ArtifactError": "nas.core.errors",
    "Budget": "nas.core.budget",
    "BudgetError": "nas.core.errors",
    "ConfigError": "nas.core.errors",
    "DataError": "nas.core.errors",
    "EmbnasError": "nas.core.errors",
    "Evaluator": "nas.core.evaluator",
    "ResumeError": "nas.core.errors",
    "RunLockedError": "nas.core.errors",
    "StorageError": "nas.core.errors",
    "TrainingDiverged": "nas.core.errors",
    "TableSpec": "nas.core.tables",
    "table_specs": "nas.core.tables",
}

__all__ = [
    "Allocation",
    "ArtifactError",
    "Budget",
    "BudgetError",
    "ConfigError",
    "DataError",
    "EmbnasError",
    "Evaluator",
    "ResumeError",
    "RunLockedError",
    "StorageError",
    "TrainingDiverged",
    "TableSpec",
    "table_specs",
]


__getattr__, __dir__ = lazy_names(__name__, _PUBLIC)
