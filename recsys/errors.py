"""Errors raised by :mod:`recsys`.

``recsys`` imports nothing of the rest of the project, so its errors live here;
the CLI reports them exactly like the search errors of :mod:`nas.core.errors`.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DataError", "TrainingDiverged"]


class DataError(ValueError):
    """Malformed or inconsistent input data.

    The message always names the file and, where one applies, the 1-based line,
    as ``path:line: what is wrong``, so a user can open the file at the fault.

    Attributes:
        path: the offending file, or ``None`` for in-memory data.
        line: 1-based line number of the fault, or ``None`` when it is not tied
            to one line (an empty file, a missing column in a header, ...).
        reason: the bare description, without location.
    """

    def __init__(self, reason: str, path: str | Path | None = None, line: int | None = None) -> None:
        self.path = None if path is None else str(path)
        self.line = line
        self.reason = reason
        where = ""
        if self.path is not None:
            where = self.path if line is None else f"{self.path}:{line}"
            where += ": "
        super().__init__(where + reason)


class TrainingDiverged(ArithmeticError):
    """Training produced a non-finite loss, gradient, parameter or optimiser state, and was stopped.

    Raised by the training loop (:func:`recsys._loop.fit`) before the diverged state is
    validated or handed to a checkpoint hook, so the last checkpoint written stays the
    last good one, and the model is left holding its best validated state when it has one.
    The message names the epoch (and the step, when the loss went first), what became
    non-finite and the likely cause.

    Attributes:
        epoch: the epoch (from 1) in which training diverged; ``None`` for a training counted
            in steps only (a fine-tune).
        step: the step within that epoch (from 1) whose loss was first non-finite, or
            ``None`` when only the state checked at the end of the epoch was.
        what: what was found non-finite, e.g. ``["loss"]`` or ``["embedding.weights.user (parameter, gradient)"]``.
        best_epoch: the epoch of the state the model was restored to, or ``None`` when there was none.
    """

    def __init__(self, message: str, *, epoch: int | None = None, step: int | None = None, what: list[str] | None = None,
                 best_epoch: int | None = None) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.what = list(what or [])
        self.best_epoch = best_epoch
