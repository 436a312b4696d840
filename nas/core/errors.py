"""The errors of embnas, one root and a few clear kinds.

``DataError`` and ``TrainingDiverged`` are defined in :mod:`recsys.errors` (``recsys``
depends on nothing of the project) and re-exported here so callers find every kind in
one place.
"""

from __future__ import annotations

from recsys.errors import DataError, TrainingDiverged

__all__ = ["ArtifactError", "BudgetError", "ConfigError", "DataError", "EmbnasError", "ResumeError", "RunLockedError", "StorageError", "TrainingDiverged", "WorkerError"]


class EmbnasError(Exception):
    """Root of the errors the toolkit raises on purpose; the CLI prints them as one line."""


class BudgetError(EmbnasError, ValueError):
    """A budget that cannot be met (naming the minimum) or an allocation that overshoots it."""


class ConfigError(EmbnasError, ValueError):
    """An option or combination of options that cannot work; the message says what to change."""


class ArtifactError(EmbnasError):
    """An exported artifact or checkpoint that is missing, truncated, tampered with or of an unknown format."""


class ResumeError(EmbnasError):
    """A run folder that cannot be resumed with the given configuration."""


class RunLockedError(EmbnasError):
    """A run folder another process (named by its PID) is writing: two writers would interleave its files."""


class StorageError(EmbnasError):
    """A run folder that cannot be written (a full disk, no permission); the message says how to continue."""


class WorkerError(EmbnasError):
    """A process that trained part of the run died; the run keeps its last checkpoint and continues with resume."""
