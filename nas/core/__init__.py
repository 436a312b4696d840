"""The small shared types and protocols at the bottom of embnas."""

from nas.core.allocation import Allocation
from nas.core.budget import Budget
from nas.core.errors import ArtifactError, BudgetError, ConfigError, DataError, EmbnasError, ResumeError
from nas.core.evaluator import Evaluator
from nas.core.tables import TableSpec, table_specs

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
    "TableSpec",
    "table_specs",
]
