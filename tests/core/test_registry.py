"""Registries: decorators and entry points, and a broken plug-in that does not break the others."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

from nas.core import registry as registry_module
from nas.core.errors import ConfigError
from nas.core.registry import Registry


def test_decorator_registration_and_unknown_names():
    plugins: Registry[type] = Registry("widget", entry_point_group="embnas.tests.none")

    @plugins.register("round")
    class Round:
        pass

    assert plugins.get("round") is Round and Round.name == "round"
    with pytest.raises(ConfigError, match="unknown widget 'square'; available: round"):
        plugins.get("square")
    with pytest.raises(ConfigError, match="already registered"):
        plugins.register("round")(type("Other", (), {}))


def test_entry_points_are_loaded_and_a_broken_one_is_skipped(monkeypatch: pytest.MonkeyPatch):
    points = [
        EntryPoint("good", "json:JSONDecoder", "embnas.tests"),
        EntryPoint("broken", "no_such_module_anywhere:Thing", "embnas.tests"),
    ]
    monkeypatch.setattr(registry_module, "entry_points", lambda group: points)
    plugins: Registry[type] = Registry("widget", entry_point_group="embnas.tests")
    with pytest.warns(UserWarning, match="skipping the widget 'broken'"):
        assert plugins.names() == ["good"]
    import json

    assert plugins.get("good") is json.JSONDecoder
    with pytest.raises(ConfigError, match="installed but broken"):
        plugins.get("broken")
