"""A typed registry per plug-in kind, fed by decorators and by Python entry points.

Plug-ins register themselves with a decorator when their module is imported;
third-party packages declare an entry point in their own ``pyproject.toml`` (for
example ``[project.entry-points."embnas.controllers"]`` ``mine = "my_pkg:MyController"``)
and appear after ``pip install``.  Before the first lookup in any registry, the
loaders given to :func:`on_first_lookup` run once: that is how the composition root
(the ``nas`` package) brings in the built-in plug-ins without any lower layer naming them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from nas.core.errors import ConfigError

__all__ = ["Registry", "on_first_lookup"]

T = TypeVar("T")

_first_lookup_loaders: list[Callable[[], object]] = []
_loaded = False


def on_first_lookup(loader: Callable[[], object]) -> None:
    """Run ``loader`` (e.g. one that imports built-in plug-ins) before the first lookup in any registry."""
    if _loaded:
        loader()
    else:
        _first_lookup_loaders.append(loader)


def _run_first_lookup_loaders() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True  # set first: a loader's own imports may consult a registry
    for loader in _first_lookup_loaders:
        loader()


class Registry(Generic[T]):
    """Names to plug-ins of one kind.

    Args:
        kind: what the registry holds, for messages (``"controller"``).
        entry_point_group: the entry-point group scanned for third-party plug-ins.
    """

    def __init__(self, kind: str, entry_point_group: str) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._items: dict[str, T] = {}
        self._scanned = False
        #: Plug-ins whose entry point failed to load, with the reason (they are skipped).
        self.broken: dict[str, str] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering its target under ``name``; sets ``target.name`` when it has one."""

        def decorate(target: T) -> T:
            existing = self._items.get(name)
            if existing is not None and existing is not target:
                raise ConfigError(f"a {self.kind} named {name!r} is already registered ({existing!r})")
            if isinstance(target, type) and not getattr(target, "name", ""):
                # Built-ins learn their name here; an alias of a class registered already keeps its own.
                target.name = name  # type: ignore[attr-defined]
            self._items[name] = target
            return target

        return decorate

    def _scan_entry_points(self) -> None:
        _run_first_lookup_loaders()
        if self._scanned:
            return
        self._scanned = True
        for point in entry_points(group=self.entry_point_group):
            if point.name in self._items:
                continue
            try:
                target = point.load()
            except Exception as error:  # a broken third-party plug-in must not break the others
                self.broken[point.name] = f"entry point {point.value!r} failed to load: {error}"
                warnings.warn(f"embnas: skipping the {self.kind} {point.name!r}: {self.broken[point.name]}", stacklevel=2)
                continue
            self.register(point.name)(target)

    def get(self, name: str) -> T:
        """The plug-in registered as ``name``; the error lists the names available."""
        if name not in self._items:
            self._scan_entry_points()
        try:
            return self._items[name]
        except KeyError:
            if name in self.broken:
                raise ConfigError(f"the {self.kind} {name!r} is installed but broken: {self.broken[name]}") from None
            raise ConfigError(f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        """Every registered name, built-in and from entry points, sorted."""
        self._scan_entry_points()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._scan_entry_points()
        return name in self._items
