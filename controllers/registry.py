"""The registry of controllers, fed by decorators and the ``embnas.controllers`` entry points."""

from __future__ import annotations

from nas.core.controller import Controller
from nas.core.registry import Registry

__all__ = ["CONTROLLERS", "register_controller"]

CONTROLLERS: Registry[type[Controller]] = Registry("controller", entry_point_group="embnas.controllers")


def register_controller(name: str):
    """Class decorator: register a :class:`~nas.core.controller.Controller` subclass under ``name``."""
    return CONTROLLERS.register(name)
