"""The registry of search spaces, fed by decorators and the ``embnas.search_spaces`` entry points."""

from __future__ import annotations

from nas.core.registry import Registry
from nas.core.space import SearchSpace

__all__ = ["SPACES", "register_space"]

SPACES: Registry[type[SearchSpace]] = Registry("search space", entry_point_group="embnas.search_spaces")


def register_space(name: str):  # noqa: ANN201 - returns the class decorator
    """Class decorator: register a :class:`SearchSpace` subclass under ``name``."""
    return SPACES.register(name)
