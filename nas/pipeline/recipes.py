"""Named training recipes: the settings that bring a backbone to its published strength, with their measured cost.

A recipe is a set of training options (:class:`~nas.pipeline.config.TrainingOptions`
fields) that a run takes in place of its task's defaults, for the backbones it was
measured on; options a run gives itself still win.  A run records the options it
trained with, never the recipe's name, so its identity (and its cached reference model)
does not change if a recipe is later retuned.

``embnas recipes`` lists them with what each one measured (docs/results.md has the
commands), and ``--recipe NAME`` (``recipe=`` in :func:`nas.search`, ``recipe =`` in a
grid arm) picks one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from nas.core.errors import ConfigError
from nas.pipeline.config import TRAINING_DEFAULTS, TrainingOptions

__all__ = ["RECIPES", "Recipe", "recipe_options"]


@dataclass(frozen=True)
class Recipe:
    """A named set of training options for some backbones.

    Attributes:
        name: what ``--recipe`` takes.
        backbones: the backbones it was measured on; others refuse it.
        options: the :class:`~nas.pipeline.config.TrainingOptions` fields it sets.
        summary: what it is, in a line.
        measured: its measured quality and cost, and where docs/results.md reports them.
    """

    name: str
    backbones: tuple[str, ...]
    options: Mapping[str, Any]
    summary: str
    measured: str

    def __post_init__(self) -> None:
        unknown = sorted(set(self.options) - {f.name for f in fields(TrainingOptions)})
        if unknown:
            raise ConfigError(f"recipe {self.name!r} sets unknown training options {unknown}")


RECIPES: dict[str, Recipe] = {recipe.name: recipe for recipe in (
    Recipe(
        name="mf-long",
        backbones=("mf",),
        options={"epochs": 400, "batch_size": 2048, "lr": 1e-3, "reg": 1e-3, "eval_every": 10, "patience": 3},
        summary="BPR with a strong L2 (1e-3), a small learning rate and long training",
        measured="Gowalla: Recall@20 0.1434 / NDCG@20 0.1150 (published MF 0.1291 / 0.1109), "
                 "250 epochs chosen on validation (docs/results.md §1)",
    ),
    Recipe(
        name="lightgcn-sgl",
        backbones=("lightgcn", "ngcf"),
        options={"epochs": 200, "batch_size": 2048, "lr": 1e-3, "reg": 1e-4, "eval_every": 5, "patience": 3,
                 "loss": "bpr", "info_nce": 0.02, "info_nce_temperature": 0.2},
        summary="BPR plus SGL's InfoNCE term without augmentation (weight 0.02, τ 0.2), early-stopped on validation",
        measured="Last.fm (lr 2e-3): NDCG@20 0.2635 in 50 epochs (BPR: 0.2602 in 190), every row at 6 dimensions "
                 "0.2236 (BPR: 0.2026); Gowalla, measured at weight 0.1 only: 0.1450 after 40 epochs of 52 s each "
                 "on 2 threads (BPR: 0.1209 after 40; the published 0.1554 is not reached) (docs/results.md §9.4)",
    ),
)}


def recipe_options(name: str, model: str, task: str) -> TrainingOptions:
    """The training options of recipe ``name`` for ``model`` (a backbone of ``task``): its task's defaults, updated.

    Raises:
        ConfigError: an unknown recipe, or one not meant for ``model`` (the message lists those that are).
    """
    recipe = RECIPES.get(name)
    if recipe is None:
        raise ConfigError(f"unknown recipe {name!r}; choose one of {', '.join(sorted(RECIPES))} (embnas recipes lists them)")
    if model not in recipe.backbones:
        fitting = [r.name for r in RECIPES.values() if model in r.backbones]
        raise ConfigError(f"recipe {name!r} is for {', '.join(recipe.backbones)}, not {model}; "
                          + (f"for {model} use {', '.join(fitting)}" if fitting else f"{model} has no recipe, so leave --recipe out"))
    return replace(TRAINING_DEFAULTS[task], **recipe.options)
