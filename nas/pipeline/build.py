"""Building a run's parts from its configuration: the budget, space and controller, the model, the evaluator.

Spaces and controllers come from the registries (:mod:`nas.core.plugins`), backbones
from :data:`nas.pipeline.backbones.BACKBONES`, so a plug-in is built exactly like a
built-in.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from nas.core.budget import Budget
from nas.core.controller import Controller
from nas.core.errors import ArtifactError, ConfigError
from nas.core.evaluator import Evaluator
from nas.core.plugins import CONTROLLERS, SPACES
from nas.core.space import SearchSpace
from nas.core.tables import table_specs
from nas.pipeline.backbones import BACKBONES
from nas.pipeline.config import PROPAGATION_DTYPES, SearchConfig
from nas.pipeline.embedding import MaskableEmbedding
from nas.pipeline.evaluators import FineTuneEvaluator, SupernetEvaluator
from nas.pipeline.runs import Run
from nas.pipeline.tasks import Task, task_for
from recsys.data import CTRData, InteractionData

__all__ = ["Data", "Model", "build_budget", "build_evaluator", "build_model", "build_search", "build_space", "load_checkpoint"]

#: A top-k or click backbone (:class:`~recsys.models.Backbone`, :class:`~recsys.models.CTRBackbone`).
Model = Any
#: The data of either task.
Data = InteractionData | CTRData


def build_model(config: SearchConfig, data: Data | Task) -> Model:
    """The configured backbone on a fresh maskable embedding, seeded by the run's seed."""
    task = task_for(data)
    if config.task != task.name:  # the configuration checked its data spec; this is the data itself
        raise ConfigError(f"the {config.model} model is a {config.task} model and cannot learn from "
                          f"{type(task.data).__name__}")
    embedding = MaskableEmbedding(task.data.rows(), config.d_max, std=task.embedding_std, seed=config.seed,
                                  scales=config.scales)
    # Dense layers a factory leaves to torch's default initialisation draw from the global
    # generator, whose seed differs per process: seed it here, so a resumed run builds the same model.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = BACKBONES.get(config.model)(embedding, task.data)
    if config.train is not None and config.train.propagation != "fp32":  # the configuration checked the backbone
        model.propagation_dtype = PROPAGATION_DTYPES[config.train.propagation]
    return model.to(config.device)


def build_space(config: SearchConfig, data: Data | Task) -> SearchSpace:
    """The run's search space over the data's tables and frequencies."""
    data = task_for(data).data
    space_class = SPACES.get(config.space)
    try:
        space = space_class(table_specs(data.rows()), data.frequencies(), config.d_min, config.d_max, **config.space_options)
        return space.with_precisions(config.precisions)
    except TypeError as error:
        if not config.space_options:
            raise
        raise ConfigError(
            f"the {config.space} space does not take the options {sorted(config.space_options)} ({error})"
        ) from None


def build_budget(config: SearchConfig, data: Data | Task) -> Budget:
    """The run's budget on the data's tables."""
    data = task_for(data).data
    return Budget.parse(config.budget, data.rows(), config.d_max, config.d_min, precisions=config.precisions,
                        scales=config.scales)


def build_search(config: SearchConfig, data: Data | Task) -> tuple[Budget, SearchSpace, Controller]:
    """The budget, search space and controller of a run (checked before any training)."""
    data = task_for(data).data
    budget = build_budget(config, data)
    space = build_space(config, data)
    controller_class = CONTROLLERS.get(config.controller)
    try:
        controller = controller_class(space, budget, seed=config.seed, **config.controller_options)
    except TypeError as error:
        if not config.controller_options:
            raise
        raise ConfigError(
            f"the {config.controller} controller does not take the options {sorted(config.controller_options)} ({error})"
        ) from None
    if config.supernet.proposals == "controller" and controller.needs_fitness and controller.multi_trial:
        if controller.supernet_proposals(np.random.default_rng(0), 1) is None:
            raise ConfigError(f"the {config.controller} controller has no proposal distribution of its own for the "
                              "supernet to train on; use --supernet-proposals space")
    if controller.max_ask is not None and config.ask_batch > controller.max_ask:
        raise ConfigError(
            f"the {config.controller} controller proposes at most {controller.max_ask} candidates at once; "
            f"lower --ask-batch to {controller.max_ask}, or raise the limit by the controller's options "
            f"(nevergrad: workers, bet: candidates)"
        )
    return budget, space, controller


def build_evaluator(config: SearchConfig, data: Data | Task, model: Model) -> Evaluator:
    """The configured evaluator on the trained supernet, over the search's sample of validation users (top-k)."""
    task = task_for(data, config.train)
    users = task.validation_subset(config.fitness_users, config.seed)
    if config.evaluator == "finetune":
        return FineTuneEvaluator(model, task, users, config.finetune, seed=config.seed, training=config.train)
    return SupernetEvaluator(model, task, users)


def load_checkpoint(model: Model, run: Run, name: str) -> None:
    """Load a run's checkpoint into ``model``, refusing one whose tensors do not match it exactly."""
    try:
        model.load_state_dict(run.load_tensors(name), strict=True)  # type: ignore[attr-defined]
    except RuntimeError as error:
        raise ArtifactError(f"{run.path('checkpoints', name)} does not fit the configured model: {error}") from None
