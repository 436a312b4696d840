"""The registry of backbones: name -> a function building the model around an embedding provider.

A factory takes the provider and the dataset (graph models read the training
interactions from it, click models the field order) and returns the model.  Every
factory belongs to one *task*, the kind of data it learns from (:data:`TASKS`):
``"top-k"`` models (:class:`~recsys.models.Backbone`) rank items for users from
:class:`~recsys.data.InteractionData`, ``"click"`` models
(:class:`~recsys.models.CTRBackbone`) predict clicks from :class:`~recsys.data.CTRData`.
The task is recorded on the factory (its ``task`` attribute) by :func:`register_backbone`;
a third-party factory registered under the ``embnas.backbones`` entry-point group
without one is a top-k backbone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from nas.core.errors import ConfigError
from nas.core.registry import Registry
from recsys.data import CTRData, InteractionData
from recsys.embedding import EmbeddingProvider
from recsys.models import FM, MF, NGCF, DCNv2, DeepFM, LightGCN, NeuMF

__all__ = ["BACKBONES", "TASKS", "BackboneFactory", "backbone_task", "models_of_task", "register_backbone"]

#: Builds a backbone around the provider it is given, for the dataset it will train on.
BackboneFactory = Callable[[EmbeddingProvider, Any], Any]

#: The tasks a backbone can belong to, and the data each learns from.
TASKS = {"top-k": "interaction data (users x items)", "click": "multi-field click data"}

BACKBONES: Registry[BackboneFactory] = Registry("backbone", entry_point_group="embnas.backbones")


def register_backbone(name: str, task: str = "top-k") -> Callable[[BackboneFactory], BackboneFactory]:
    """Register a factory under ``name`` as a backbone of ``task`` (``"top-k"`` or ``"click"``)."""
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r} for backbone {name!r}; choose one of {tuple(TASKS)}")

    def decorate(factory: BackboneFactory) -> BackboneFactory:
        factory.task = task  # type: ignore[attr-defined]
        return BACKBONES.register(name)(factory)

    return decorate


def backbone_task(name: str) -> str:
    """The task of the backbone registered as ``name`` (raises :class:`ConfigError` for an unknown name)."""
    return str(getattr(BACKBONES.get(name), "task", "top-k"))


def models_of_task(task: str) -> list[str]:
    """The registered backbones of ``task``, sorted."""
    return [name for name in BACKBONES.names() if backbone_task(name) == task]


@register_backbone("mf")
def matrix_factorisation(embedding: EmbeddingProvider, data: InteractionData) -> Any:
    """BPR-MF: dot products of the user and item vectors."""
    return MF(embedding)


@register_backbone("lightgcn")
def light_gcn(embedding: EmbeddingProvider, data: InteractionData) -> Any:
    """LightGCN with 3 propagation rounds over the training graph (masks apply to layer 0)."""
    return LightGCN(embedding, data.train, layers=3)


@register_backbone("neumf")
def neural_mf(embedding: EmbeddingProvider, data: InteractionData) -> Any:
    """NeuMF: GMF and a halving MLP tower (2d → d → d/2) over one shared user and one item table."""
    return NeuMF(embedding, mlp_layers=2, dropout=0.0, seed=_seed_from_torch())


@register_backbone("ngcf")
def neural_graph_cf(embedding: EmbeddingProvider, data: InteractionData) -> Any:
    """NGCF with 3 layers and message dropout 0.1 over the training graph (masks apply to layer 0)."""
    return NGCF(embedding, data.train, layers=3, message_dropout=0.1, seed=_seed_from_torch())


@register_backbone("fm", task="click")
def factorisation_machine(embedding: EmbeddingProvider, data: CTRData) -> Any:
    """FM: a first-order scalar per value (a dense weight, not searched) and pairwise dot products of the fields."""
    return FM(embedding, data.fields)


@register_backbone("deepfm", task="click")
def deep_fm(embedding: EmbeddingProvider, data: CTRData) -> Any:
    """DeepFM: FM plus an MLP 400-400-400 on the concatenated field vectors [LERSBench, Table 4]."""
    return DeepFM(embedding, data.fields, hidden=(400, 400, 400), dropout=0.0)


@register_backbone("dcnv2", task="click")
def deep_cross_v2(embedding: EmbeddingProvider, data: CTRData) -> Any:
    """DCN-v2: 3 full-rank cross layers stacked under an MLP 512-512 [LERSBench, Table 4]."""
    return DCNv2(embedding, data.fields, cross_layers=3, hidden=(512, 512), dropout=0.0, structure="stacked")


def _seed_from_torch() -> int:
    """A seed for a model's dense layers, drawn from torch's generator.

    The pipeline seeds that generator with the run's seed before calling a factory
    (:func:`nas.pipeline.search.build_model`), so another run seed gives other dense weights and
    the same seed the same ones.
    """
    return int(torch.randint(0, 2**31 - 1, ()))
