"""The registries of the core's plug-in kinds: controllers and search spaces.

Built-in and third-party plug-ins are found the same way: a class registers itself
with :func:`register_controller` / :func:`register_space` when its module is imported,
and installed packages declare entry points (``embnas.controllers``,
``embnas.search_spaces``) that are loaded on the first lookup.  The built-ins are
imported by the composition root, the ``nas`` package itself, on that same first
lookup (:func:`nas.core.registry.on_first_lookup`), so no layer of ``nas`` names
them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from nas.core.controller import Controller
from nas.core.registry import Registry
from nas.core.space import SearchSpace

__all__ = ["CONTROLLERS", "SPACES", "register_controller", "register_space"]

C = TypeVar("C", bound=type[Controller])
S = TypeVar("S", bound=type[SearchSpace])

CONTROLLERS: Registry[type[Controller]] = Registry("controller", entry_point_group="embnas.controllers")
SPACES: Registry[type[SearchSpace]] = Registry("search space", entry_point_group="embnas.search_spaces")


def register_controller(name: str) -> Callable[[C], C]:
    """Class decorator: register a :class:`~nas.core.controller.Controller` subclass under ``name``."""
    return CONTROLLERS.register(name)  # type: ignore[return-value]


def register_space(name: str) -> Callable[[S], S]:
    """Class decorator: register a :class:`~nas.core.space.SearchSpace` subclass under ``name``."""
    return SPACES.register(name)  # type: ignore[return-value]
