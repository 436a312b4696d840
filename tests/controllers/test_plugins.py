"""The plug-in API as users meet it: the documented controller runs as written, and a package adds one by entry point."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import nas
from nas import CONTROLLERS
from nas.testing import check_controller

DOC = Path(__file__).resolve().parents[2] / "docs" / "custom_controller.md"

TINY = dict(
    data=nas.DataSpec("synthetic", extra={"n_users": 300, "n_items": 400, "mean_items_per_user": 15.0}),
    trials=4, retrain_top=1, fitness_users=0, threads=1,
    train=nas.TrainingOptions(epochs=2, batch_size=512, eval_every=1, patience=5),
)


def documented_controller() -> str:
    """The first Python block under the documentation's "A complete controller" heading."""
    section = DOC.read_text().split("## A complete controller", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def hill_climb(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("plugin")
    (folder / "hill_climb.py").write_text(documented_controller())
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module("hill_climb")
    finally:
        sys.path.remove(str(folder))


def test_the_documented_controller_is_thirty_lines():
    assert len(documented_controller().strip().splitlines()) <= 30


def test_the_documented_controller_conforms_and_runs_a_search(hill_climb, tmp_path: Path):
    assert CONTROLLERS.get("hill-climb") is hill_climb.HillClimb
    check_controller(hill_climb.HillClimb)
    result = nas.search(controller="hill-climb", controller_options={"moves": 0.1}, **TINY, progress=False)
    assert result.controller == "hill-climb" and result.trials == 4
    assert result.allocation.cost <= result.budget.max_values


def test_an_installed_package_adds_a_controller_by_entry_point(tmp_path: Path):
    package = tmp_path / "src"
    package.mkdir()
    (package / "embnas_hill_climb.py").write_text(documented_controller().replace('@register_controller("hill-climb")\n', ""))
    (package / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n\n'
        '[project]\nname = "embnas-hill-climb"\nversion = "0.1"\n\n'
        '[tool.setuptools]\npy-modules = ["embnas_hill_climb"]\n\n'
        '[project.entry-points."embnas.controllers"]\nhill-climb = "embnas_hill_climb:HillClimb"\n'
    )
    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(package)],
        capture_output=True, text=True, timeout=300,
    )
    assert install.returncode == 0, install.stderr
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}
    listing = subprocess.run([sys.executable, "-m", "nas.app.cli", "controllers"], capture_output=True, text=True, env=env,
                             timeout=120)
    assert listing.returncode == 0, listing.stderr
    assert re.search(r"^hill-climb\s+multi-trial\s+fitness\s+all\s+-\s+Moves a few decisions", listing.stdout, re.M), listing.stdout
    search = subprocess.run(
        [sys.executable, "-m", "nas.app.cli", "search", "--controller", "hill-climb", "--controller-option", "moves=0.1",
         "--trials", "3", "--epochs", "2", "--retrain-top", "1", "--runs", str(tmp_path / "runs"), "--name", "plugged",
         "--quiet"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert search.returncode == 0, search.stderr
    assert "hill-climb controller" in search.stdout


def test_a_fallback_the_search_never_told_breaks_conformance(hill_climb):
    class Stranger(hill_climb.HillClimb):
        def fallbacks(self):
            return self.space.project(self.rng.random(self.space.vector_length) * self.space.d_max, self.budget)[None, :]

    with pytest.raises(AssertionError, match="a fallback was never told"):
        check_controller(Stranger)
