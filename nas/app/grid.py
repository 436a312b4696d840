"""The grid of ``embnas compare``: arms (allocation methods) × budgets × seeds, read from a TOML file.

A grid file names the data and the model once, the budgets and the seeds, options
shared by every arm (``[options]``) and the arms themselves (``[arms.<name>]``)::

    data = "../data/lastfm"            # a path (relative to this file), or a table of DataSpec fields
    model = "lightgcn"
    budgets = ["0.8", "0.9"]
    seeds = [0, 1, 2]
    metric = "ndcg@20"                 # default: ndcg@20 (top-k models), auc (click models)
    baselines = ["equal"]              # default: the arms named equal and frequency
    [options]                          # keywords of nas.search shared by every arm
    train = { epochs = 200 }
    [arms.equal]                       # the controller defaults to the arm's name
    [arms.bet]
    trials = 50
    controller_options = { anchors = true }

An arm's keys override ``[options]``; a table in both (``train``, ``supernet``,
``controller_options``, ...) merges key by key.  Everything is checked here, before
anything runs, and each problem is one :class:`~nas.core.errors.ConfigError` naming
the arm or budget; only a budget the data cannot meet is a matter of the data, and
:func:`feasible_cells` drops it rather than refusing the grid.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from nas.app.api import configure
from nas.app.stats import higher_is_better
from nas.core.budget import Budget
from nas.core.errors import BudgetError, ConfigError
from nas.core.plugins import CONTROLLERS
from nas.pipeline.backbones import backbone_task
from nas.pipeline.config import SearchConfig
from nas.pipeline.data import DataSpec

__all__ = ["DEFAULT_BASELINES", "DEFAULT_METRICS", "Arm", "Cell", "Grid", "feasible_cells", "plan_cells", "read_grid"]

#: The keys of a grid file.
GRID_KEYS = ("data", "model", "budgets", "seeds", "metric", "baselines", "options", "arms")
#: Baselines when the grid names none: those of these arms that it has.
DEFAULT_BASELINES = ("equal", "frequency")
#: The metric compared when the grid names none, by task.
DEFAULT_METRICS = {"top-k": "ndcg@20", "click": "auc"}
#: The test metrics of each task (top-k ones at any cut-off ``k``).
_METRIC_PATTERNS = {"top-k": re.compile(r"(recall|ndcg)@[1-9][0-9]*"), "click": re.compile(r"auc|logloss")}
#: Seeds when the grid names none: three, the fewest that give a paired interval some width to spare.
DEFAULT_SEEDS = (0, 1, 2)
#: Search options a grid sets once, at its top, for every arm.
_PER_GRID = {"data": "data", "model": "model", "budget": "budgets", "seed": "seeds"}
#: Names usable as folder names on every system (arms and budgets name folders of the runs).
_FOLDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
#: Fields of a data table that name files, read relative to the grid file's folder.
_DATA_PATHS = ("path", "train", "valid", "test")


@dataclass(frozen=True)
class Arm:
    """One way of allocating: a name and the search keywords that differ from the grid's defaults.

    Attributes:
        name: the arm's name (its folder under ``runs/``).
        options: keywords of :func:`nas.app.api.search` (``[options]`` merged with the arm's own).
    """

    name: str
    options: Mapping[str, Any]


@dataclass(frozen=True)
class Grid:
    """A grid file, read and checked.

    Attributes:
        data: the data: ``None`` (the built-in synthetic data), an absolute path, or a
            table of :class:`~nas.pipeline.data.DataSpec` fields (its paths absolute).
        model: the backbone.
        budgets: the budgets, as typed (each also names a folder).
        seeds: the seeds; every arm and budget runs each of them.
        metric: the test metric compared.
        baselines: names of the arms every other arm is compared with.
        arms: the arms, in the file's order.
        source: the grid file, ``None`` for a grid given as a mapping.
    """

    data: str | Mapping[str, Any] | None
    model: str
    budgets: tuple[str, ...]
    seeds: tuple[int, ...]
    metric: str
    baselines: tuple[str, ...]
    arms: tuple[Arm, ...]
    source: Path | None = None

    @property
    def higher_is_better(self) -> bool:
        """Whether a larger :attr:`metric` is the better model."""
        return higher_is_better(self.metric)

    def data_for(self, seed: int) -> str | DataSpec | None:
        """The ``data`` argument of :func:`nas.app.api.search` for ``seed``.

        A data table without its own ``seed`` takes the cell's, as a path does: the seed
        fixes a CSV file's split and the synthetic data, the same for every arm.
        """
        if not isinstance(self.data, Mapping):
            return self.data
        table = dict(self.data)
        table.setdefault("seed", seed)
        try:
            if table.get("format", "auto") == "auto":
                table.pop("format", None)
                return DataSpec.from_path(table.pop("path"), **table)
            return DataSpec.from_dict(table)
        except TypeError as error:
            raise ConfigError(f"grid data: {error}") from None

    def arguments(self, arm: Arm, budget: str, seed: int) -> dict[str, Any]:
        """The keywords of :func:`nas.app.api.search` for one cell (all but where the run lives)."""
        return {"data": self.data_for(seed), "model": self.model, "budget": budget, "seed": seed, "threads": 1,
                **arm.options}


@dataclass(frozen=True, eq=False)
class Cell:
    """One search of the grid: an arm at a budget with a seed, and its run folder.

    Attributes:
        arm: the arm's name.
        budget: the budget, as typed.
        seed: the seed.
        folder: the run folder, ``<out>/runs/<arm>/<budget>/seed<seed>``.
        arguments: the keywords of :func:`nas.app.api.search` (without ``run_dir``).
        config: the configuration those keywords give (checked).
    """

    arm: str
    budget: str
    seed: int
    folder: Path
    arguments: Mapping[str, Any]
    config: SearchConfig

    @property
    def label(self) -> str:
        """The cell in words: ``arm bet, budget 0.9, seed 1``."""
        return f"arm {self.arm}, budget {self.budget}, seed {self.seed}"


def read_grid(grid: str | Path | Mapping[str, Any]) -> Grid:
    """Read and check a grid: a TOML file, or its content as a mapping.

    Paths in a file are relative to the file's folder; in a mapping, to the working folder.

    Raises:
        ConfigError: naming what is wrong (an unknown key, a controller no registry
            holds, an unreadable budget, a baseline that is not an arm, ...).
    """
    if isinstance(grid, Mapping):
        content, source, base = dict(grid), None, Path.cwd()
    else:
        source = Path(grid).absolute()
        content, base = _load_toml(source), source.resolve().parent
    where = f"{source}: " if source is not None else "grid: "
    try:
        return _checked(content, source, base)
    except ConfigError as error:
        raise ConfigError(f"{where}{error}") from None


def plan_cells(grid: Grid, out: str | Path) -> list[Cell]:
    """Every cell of ``grid``, arm by arm, budget by budget, seeds innermost, each configured and checked.

    Seeds innermost puts cells of different seeds next to each other: cells run side by
    side then train different full reference models instead of waiting on one.

    Raises:
        ConfigError: an option of an arm that cannot work (naming the arm).
    """
    runs = Path(out) / "runs"
    cells = []
    for arm in grid.arms:
        for budget in grid.budgets:
            for seed in grid.seeds:
                arguments = grid.arguments(arm, budget, seed)
                try:
                    config = configure(**arguments)
                except ConfigError as error:
                    raise ConfigError(f"arm {arm.name!r}: {error}") from None
                cells.append(Cell(arm.name, budget, seed, runs / arm.name / budget / f"seed{seed}", arguments, config))
    return cells


def feasible_cells(cells: Sequence[Cell], rows: Mapping[str, int]) -> tuple[list[Cell], list[str]]:
    """The cells whose budget the data can meet, and one line for each budget left out.

    A budget below every row at ``d_min`` cannot be met by any allocation; its cells
    are dropped so that the rest of the grid still runs.

    Args:
        cells: the cells (:func:`plan_cells`).
        rows: rows of each embedding table of the data.

    Returns:
        The feasible cells in their order, and the lines saying which budget was dropped
        for which arms, with the smallest feasible budget.
    """
    infeasible: dict[tuple[str, str], str] = {}
    for cell in cells:
        key = (cell.arm, cell.budget)
        if key in infeasible:
            continue
        try:
            Budget.parse(cell.budget, rows, int(cell.config.d_max or 1), cell.config.d_min, precisions=cell.config.precisions,
                         scales=cell.config.scales)
        except BudgetError as error:
            infeasible[key] = " ".join(str(error).splitlines())
    arms = list(dict.fromkeys(cell.arm for cell in cells))
    lines = []
    for budget in dict.fromkeys(cell.budget for cell in cells):
        failing = [arm for arm in arms if (arm, budget) in infeasible]
        if failing:
            which = "" if len(failing) == len(arms) else f" for arm{'s' if len(failing) > 1 else ''} {', '.join(failing)}"
            lines.append(f"budget {budget}{which} is skipped: {infeasible[(failing[0], budget)]}")
    return [cell for cell in cells if (cell.arm, cell.budget) not in infeasible], lines


# -- reading and checking ------------------------------------------------------------------------------
def _load_toml(path: Path) -> dict[str, Any]:
    """The content of a TOML file (:mod:`tomllib`, or the ``tomli`` package before Python 3.11)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise ConfigError("reading a grid file needs Python 3.11 or the tomli package (pip install tomli)") from None
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist; give a grid file (TOML)") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a folder; give a grid file (TOML)") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not a valid TOML file ({error})") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not a text file ({error.reason})") from None


def _checked(content: dict[str, Any], source: Path | None, base: Path) -> Grid:
    unknown = sorted(set(content) - set(GRID_KEYS))
    if unknown:
        raise ConfigError(f"unknown keys {unknown}; a grid has {', '.join(GRID_KEYS)} (search options go in "
                          "[options] or an [arms.<name>] table)")
    model = _text(content.get("model", SearchConfig.model), "model")
    task = backbone_task(model)  # an unknown model is refused here, naming the models
    budgets = _budgets(content.get("budgets"))
    seeds = _seeds(content.get("seeds", list(DEFAULT_SEEDS)))
    metric = _text(content.get("metric", DEFAULT_METRICS[task]), "metric")
    if not _METRIC_PATTERNS[task].fullmatch(metric):
        known = "recall@k or ndcg@k (k = 5, 10, 20)" if task == "top-k" else "auc or logloss"
        raise ConfigError(f"metric {metric!r} is not a test metric of the {task} model {model!r}; use {known}")
    shared = _table(content.get("options", {}), "[options]")
    _refuse_per_grid(shared, "[options]")
    arms_table = _table(content.get("arms"), "[arms]")
    if not arms_table:
        raise ConfigError("no arms; add at least one table [arms.<name>] (e.g. [arms.equal] and [arms.frequency])")
    arms = tuple(_arm(name, options, shared) for name, options in arms_table.items())
    names = [arm.name for arm in arms]
    baselines = _baselines(content.get("baselines"), names)
    data = _data(content.get("data"), base)
    grid = Grid(data, model, budgets, seeds, metric, baselines, arms, source)
    if isinstance(data, Mapping):
        grid.data_for(seeds[0])  # a data table that cannot be read fails here, not in every cell
    return grid


def _text(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key} must be text, got {value!r}")
    return value


def _table(value: Any, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key} must be a table, got {value!r}")
    return dict(value)


def _budgets(value: Any) -> tuple[str, ...]:
    if value is None:
        raise ConfigError('no budgets; give e.g. budgets = ["0.8", "0.9"] (sparsities, parameter counts or bytes like "2MB")')
    if not isinstance(value, list) or not value:
        raise ConfigError(f"budgets must be a non-empty list, got {value!r}")
    budgets = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise ConfigError(f"a budget is text or a number (0.9, 250000, \"2MB\"), got {item!r}")
        text = str(item).strip()
        if not _FOLDER_NAME.fullmatch(text) or text in budgets:
            raise ConfigError(f"budget {text!r} is {'given twice' if text in budgets else 'not a plain budget'}; "
                              "each budget names a folder of the runs")
        try:  # whether it reads as a budget at all; whether the data can meet it is told apart later
            Budget.parse(text, {"probe": 1}, 1, 0)
        except BudgetError as error:
            raise ConfigError(f"budget {text!r}: {error}") from None
        budgets.append(text)
    return tuple(budgets)


def _seeds(value: Any) -> tuple[int, ...]:
    if (not isinstance(value, list) or not value
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in value)):
        raise ConfigError(f"seeds must be a non-empty list of non-negative integers, got {value!r}")
    if len(set(value)) != len(value):
        raise ConfigError(f"seeds must be distinct, got {value!r}")
    return tuple(value)


def _refuse_per_grid(options: Mapping[str, Any], where: str) -> None:
    for key, grid_key in _PER_GRID.items():
        if key in options:
            raise ConfigError(f"{where} sets {key!r}; the grid sets it once for every arm: give {grid_key} at its top")


def _arm(name: str, options: Any, shared: Mapping[str, Any]) -> Arm:
    if not _FOLDER_NAME.fullmatch(name):
        raise ConfigError(f"arm name {name!r} must be a plain name (letters, digits, . _ + -): it names a folder of the runs")
    own = _table(options, f"[arms.{name}]")
    _refuse_per_grid(own, f"[arms.{name}]")
    merged = dict(shared)
    for key, value in own.items():
        merged[key] = {**merged[key], **value} if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping) else value
    merged.setdefault("controller", name)
    controller = merged["controller"]
    if not isinstance(controller, str):
        raise ConfigError(f"arm {name!r}: controller must be text, got {controller!r}")
    try:
        kind = CONTROLLERS.get(controller)  # plug-ins included; the error lists the controllers
    except ConfigError as error:
        raise ConfigError(f"arm {name!r}: {error}") from None
    space = merged.get("space", SearchConfig.space)
    if kind.spaces is not None and space not in kind.spaces:
        raise ConfigError(f"arm {name!r}: controller {controller!r} supports the spaces {kind.spaces}, not {space!r}")
    return Arm(name, merged)


def _baselines(value: Any, arms: list[str]) -> tuple[str, ...]:
    if value is None:
        return tuple(name for name in DEFAULT_BASELINES if name in arms)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"baselines must be a list of arm names, got {value!r}")
    unknown = [v for v in value if v not in arms]
    if unknown:
        raise ConfigError(f"baselines {unknown} are not arms; the arms are {', '.join(arms)}")
    return tuple(dict.fromkeys(value))


def _data(value: Any, base: Path) -> str | dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, str):
        path = (base / Path(value).expanduser()).resolve()
        if not path.exists():
            raise ConfigError(f"data {value!r}: {path} does not exist")
        return str(path)
    if not isinstance(value, Mapping):
        raise ConfigError(f"data must be a path or a table of DataSpec fields, got {value!r}")
    table = dict(value)
    known = {f.name for f in fields(DataSpec)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"data table: unknown fields {unknown}; the fields are {', '.join(sorted(known))}")
    if table.get("format", "auto") == "auto" and "path" not in table:
        raise ConfigError("data table: give a format (e.g. format = \"synthetic\") or a path")
    for key in _DATA_PATHS:
        if key not in table:
            continue
        given = table[key]
        paths = [given] if isinstance(given, str) else given
        if key == "path" and not isinstance(given, str):
            raise ConfigError(f"data table: path must be one path, got {given!r}")
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise ConfigError(f"data table: {key} must be a path or a list of paths, got {given!r}")
        resolved = [str((base / Path(p).expanduser()).resolve()) for p in paths]
        table[key] = resolved[0] if key == "path" else resolved
    return table
