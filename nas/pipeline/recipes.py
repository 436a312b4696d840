"""Named training recipes: the settings that bring a backbone to its published strength, with their measured cost.

A recipe is a set of training options (:class:`~nas.pipeline.config.TrainingOptions`
fields) that a run takes in place of its task's defaults, for the backbones it was
measured on; options a run gives itself still win.  A run records the options it
trained with, never the recipe's name, so its identity (and its cached reference model)
does not change if a recipe is later retuned.

``embnas recipes`` lists them with what each one measured (docs/results.md has the
commands), and ``--recipe NAME`` (``recipe=`` in :func:`nas.search`, ``recipe =`` in a
grid arm) picks one.  A backbone with a recipe in :data:`DEFAULT_RECIPES` trains with it
unless the run names another, or ``none`` for its task's plain defaults: a user who gives
no training options gets the strongest training measured, not the quickest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from nas.core.errors import ConfigError
from nas.pipeline.config import TRAINING_DEFAULTS, TrainingOptions

__all__ = ["DEFAULT_RECIPES", "NO_RECIPE", "RECIPES", "Recipe", "recipe_options", "training_defaults"]


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
        name="lightgcn-hard",
        backbones=("lightgcn",),
        options={"epochs": 400, "batch_size": 8192, "lr": 2e-3, "reg": 1e-3, "eval_every": 5, "patience": 6,
                 "sampling": "user", "loss": "bpr", "hard_negatives": 16, "lr_decay": 0.5},
        summary="BPR against the hardest of 16 uniform candidates, uniform users, batch 8,192, L2 1e-3, "
                "the rate halved at each validation without improvement",
        measured="Gowalla: Recall@20 0.1808 / NDCG@20 0.1554 (published LightGCN 0.1830 / 0.1554), 70 epochs chosen "
                 "on validation, 16 minutes on one thread (the selection run 30 more); Last.fm: NDCG@20 0.2732 over three "
                 "seeds (lightgcn-sgl: 0.2647); every row at 3 dimensions 0.1859 over five, 9 % above 32 candidates "
                 "(docs/results.md §9.7, §9.9)",
    ),
    Recipe(
        name="lightgcn-sgl",
        backbones=("lightgcn", "ngcf"),
        options={"epochs": 200, "batch_size": 2048, "lr": 1e-3, "reg": 1e-4, "eval_every": 5, "patience": 3,
                 "loss": "bpr", "info_nce": 0.02, "info_nce_temperature": 0.2},
        summary="BPR plus SGL's InfoNCE term without augmentation (weight 0.02, τ 0.2), early-stopped on validation; "
                "the default before lightgcn-hard, level with it for rows of 3 dimensions",
        measured="Last.fm (lr 2e-3): NDCG@20 0.2635 in 50 epochs (BPR: 0.2602 in 190), every row at 6 dimensions "
                 "0.2236 (BPR: 0.2026); Gowalla: 0.1437 after 40 epochs of about 52 s on 2 threads, still rising "
                 "(BPR: 0.1209 after 40; the published 0.1554 is not reached) (docs/results.md §9.4, §9.5)",
    ),
)}


#: The recipe each backbone trains with when a run names none.
DEFAULT_RECIPES: dict[str, str] = {"lightgcn": "lightgcn-hard"}
#: The recipe name that asks for the task's plain defaults (:data:`~nas.pipeline.config.TRAINING_DEFAULTS`).
NO_RECIPE = "none"


def recipe_options(name: str, model: str, task: str) -> TrainingOptions:
    """The training options of recipe ``name`` for ``model`` (a backbone of ``task``): its task's defaults, updated.

    ``name`` :data:`NO_RECIPE` gives the task's defaults unchanged.

    Raises:
        ConfigError: an unknown recipe, or one not meant for ``model`` (the message lists those that are).
    """
    if name == NO_RECIPE:
        return TRAINING_DEFAULTS[task]
    recipe = RECIPES.get(name)
    if recipe is None:
        raise ConfigError(f"unknown recipe {name!r}; choose one of {', '.join(sorted(RECIPES))}, or {NO_RECIPE} for the "
                          "plain defaults (embnas recipes lists them)")
    if model not in recipe.backbones:
        fitting = [r.name for r in RECIPES.values() if model in r.backbones]
        raise ConfigError(f"recipe {name!r} is for {', '.join(recipe.backbones)}, not {model}; "
                          + (f"for {model} use {', '.join(fitting)}" if fitting else f"{model} has no recipe, so leave --recipe out"))
    return replace(TRAINING_DEFAULTS[task], **recipe.options)


def training_defaults(model: str, task: str, recipe: str | None = None) -> TrainingOptions:
    """What a run of ``model`` trains with before its own options: ``recipe``, else the backbone's default recipe.

    Backbones without a default recipe get their task's defaults.
    """
    name = DEFAULT_RECIPES.get(model, NO_RECIPE) if recipe is None else recipe
    return recipe_options(name, model, task)
