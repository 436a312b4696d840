"""Errors raised by :mod:`recsys`.

``recsys`` imports nothing of the rest of the project, so its errors live here;
the CLI reports them exactly like the search errors of :mod:`nas.core.errors`.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DataError"]


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
