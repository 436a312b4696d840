"""The registry of backbones: name -> a function building the model around an embedding provider.

A factory takes the provider and the dataset (graph models read the training
interactions from it) and returns a :class:`~recsys.models.Backbone`; third-party
backbones register under the ``embnas.backbones`` entry-point group.
"""

from __future__ import annotations

from collections.abc import Callable

from nas.core.registry import Registry
from recsys.data import InteractionData
from recsys.embedding import EmbeddingProvider
from recsys.models import MF, Backbone, LightGCN

__all__ = ["BACKBONES", "BackboneFactory"]

#: Builds a backbone around the provider it is given, for the dataset it will train on.
BackboneFactory = Callable[[EmbeddingProvider, InteractionData], Backbone]

BACKBONES: Registry[BackboneFactory] = Registry("backbone", entry_point_group="embnas.backbones")


@BACKBONES.register("mf")
def matrix_factorisation(embedding: EmbeddingProvider, data: InteractionData) -> Backbone:
    """BPR-MF: dot products of the user and item vectors."""
    return MF(embedding)


@BACKBONES.register("lightgcn")
def light_gcn(embedding: EmbeddingProvider, data: InteractionData) -> Backbone:
    """LightGCN with 3 propagation rounds over the training graph (masks apply to layer 0)."""
    return LightGCN(embedding, data.train, layers=3)
