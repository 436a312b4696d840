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
from recsys.models import MF, NGCF, Backbone, LightGCN, NeuMF

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


@BACKBONES.register("neumf")
def neural_mf(embedding: EmbeddingProvider, data: InteractionData) -> Backbone:
    """NeuMF: GMF and a halving MLP tower (2d → d → d/2) over one shared user and one item table."""
    return NeuMF(embedding, mlp_layers=2, dropout=0.0)


@BACKBONES.register("ngcf")
def neural_graph_cf(embedding: EmbeddingProvider, data: InteractionData) -> Backbone:
    """NGCF with 3 layers and message dropout 0.1 over the training graph (masks apply to layer 0)."""
    return NGCF(embedding, data.train, layers=3, message_dropout=0.1)
