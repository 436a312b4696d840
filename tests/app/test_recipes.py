"""Named training recipes: they fill the options a run does not give, for their backbones only, and leave no trace of their name."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from nas.app.api import configure
from nas.app.cli import _config_from_args, build_parser, main
from nas.app.grid import plan_cells, read_grid
from nas.core.errors import ConfigError
from nas.pipeline.backbones import backbone_task
from nas.pipeline.config import TRAINING_DEFAULTS, TrainingOptions
from nas.pipeline.recipes import DEFAULT_RECIPES, RECIPES, Recipe, recipe_options


def _config(*flags: str):  # noqa: ANN202
    return _config_from_args(build_parser().parse_args(["search", *flags]))


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_builds_valid_options_for_each_of_its_backbones(name: str):
    recipe = RECIPES[name]
    for model in recipe.backbones:
        options = recipe_options(name, model, backbone_task(model))
        assert isinstance(options, TrainingOptions)
        assert all(getattr(options, key) == value for key, value in recipe.options.items())


def test_a_recipe_fills_the_options_left_out_and_the_given_ones_win():
    recipe = RECIPES["lightgcn-sgl"]
    config = _config("--model", "lightgcn", "--recipe", "lightgcn-sgl", "--epochs", "7")
    assert config.train == replace(TRAINING_DEFAULTS["top-k"], **{**recipe.options, "epochs": 7})
    assert "recipe" not in config.to_dict(), "a run records the options it trained with, not the recipe's name"
    assert config.to_dict() == _config("--model", "lightgcn", "--recipe", "none",
                                       *_flags({**recipe.options, "epochs": 7})).to_dict()
    assert configure(model="lightgcn", recipe="lightgcn-sgl", train={"epochs": 7}).train == config.train


def test_without_a_recipe_a_backbone_trains_with_its_default_recipe_else_the_task_defaults():
    assert _config().train == TRAINING_DEFAULTS["top-k"]
    assert _config("--model", "deepfm").train == TRAINING_DEFAULTS["click"]
    assert _config("--model", "ngcf").train == TRAINING_DEFAULTS["top-k"]
    for model, name in DEFAULT_RECIPES.items():
        expected = recipe_options(name, model, backbone_task(model))
        assert _config("--model", model).train == expected
        assert configure(model=model).train == expected
        assert configure(model=model, train={"epochs": 3}).train == replace(expected, epochs=3)


def test_recipe_none_asks_for_the_task_defaults_for_any_backbone():
    assert DEFAULT_RECIPES["lightgcn"] == "lightgcn-hard"
    assert _config("--model", "lightgcn", "--recipe", "none").train == TRAINING_DEFAULTS["top-k"]
    assert configure(model="lightgcn", recipe="none").train == TRAINING_DEFAULTS["top-k"]
    assert configure(model="deepfm", recipe="none", train={"epochs": 3}).train == replace(TRAINING_DEFAULTS["click"], epochs=3)


def test_a_recipe_for_another_backbone_or_an_unknown_one_is_one_line_and_no_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    for flags, message in (
        (["--model", "mf", "--recipe", "lightgcn-sgl"], "recipe 'lightgcn-sgl' is for lightgcn, ngcf, not mf; for mf use mf-long"),
        (["--model", "neumf", "--recipe", "mf-long"], "neumf has no recipe, so leave --recipe out"),
        (["--recipe", "fast"], "unknown recipe 'fast'; choose one of"),
    ):
        assert main(["search", "--runs", str(tmp_path), "--quiet", *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match="a recipe or complete TrainingOptions, not both"):
        configure(model="mf", recipe="mf-long", train=TrainingOptions())


def test_a_recipe_naming_an_unknown_option_is_refused():
    with pytest.raises(ConfigError, match=r"unknown training options \['learning_rate'\]"):
        Recipe("bad", ("mf",), {"learning_rate": 1e-3}, "", "")


def test_the_recipes_command_lists_every_recipe_with_its_options(capsys: pytest.CaptureFixture[str]):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    for recipe in RECIPES.values():
        assert f"{recipe.name} (for {', '.join(recipe.backbones)}" in out and recipe.measured in out
    assert "lightgcn-hard (for lightgcn; the default of lightgcn)" in out
    assert "lightgcn-sgl (for lightgcn, ngcf)" in out
    assert "none: the plain defaults" in out


def test_a_grid_arm_may_name_a_recipe(tmp_path: Path):
    grid = read_grid({
        "data": {"format": "synthetic", "extra": {"n_users": 60, "n_items": 80}}, "model": "lightgcn",
        "budgets": ["0.5"], "seeds": [0], "options": {"train": {"epochs": 2}},
        "arms": {"equal": {"recipe": "lightgcn-sgl"}},
    })
    (cell,) = plan_cells(grid, tmp_path)
    assert cell.config.train == replace(recipe_options("lightgcn-sgl", "lightgcn", "top-k"), epochs=2)


def _flags(options: dict) -> list[str]:
    return [item for key, value in options.items() for item in (f"--{key.replace('_', '-')}", str(value))]
