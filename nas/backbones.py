"""The registry of backbones: name -> a function building the model around an embedding provider."""

from __future__ import annotations

from collections.abc import Callable

from nas.core.registry import Registry
from recsys.embedding import EmbeddingProvider
from recsys.models import MF, Backbone

__all__ = ["BACKBONES", "BackboneFactory"]

#: Builds a backbone around the provider it is given (and the dataset's table sizes).
BackboneFactory = Callable[[EmbeddingProvider], Backbone]

BACKBONES: Registry[BackboneFactory] = Registry("backbone", entry_point_group="embnas.backbones")
BACKBONES.register("mf")(MF)
