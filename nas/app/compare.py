"""``embnas compare``: which allocation beats which, over a grid of arms × budgets × seeds.

A single search says little about a method: two seeds of one method often differ more
than two methods do.  :func:`compare` runs every cell of a grid (:mod:`nas.app.grid`),
each a search in its own run folder, and compares the arms seed by seed with a paired t
interval (:mod:`nas.app.stats`): an arm is called better than a baseline only when the
95 % interval of their mean difference excludes zero.

The run folders make the grid crash-safe and incremental: a finished cell is read
back, never rerun; an unfinished one continues from its checkpoints; a cell that fails
is reported (and logged to ``failures.jsonl``) while the others go on.  Running the
same command again after a crash or Ctrl-C therefore finishes only what is missing.

Outputs, in the output folder: ``comparison.md`` (a table per budget),
``comparison.json`` (the same numbers with every cell's seed and run folder) and
``comparison.png`` (quality against bytes stored, one line per arm) and ``comparison.html``
(the front and the tables in one self-contained page, linking each cell's report where
``embnas report`` wrote one).
"""

from __future__ import annotations

import html
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from nas.app.grid import Cell, Grid, feasible_cells, plan_cells, read_grid
from nas.app.report import save_png
from nas.app.stats import PairedDifference, Spread, paired_difference, spread
from nas.core._atomic import atomic_write, write_json
from nas.core.errors import ArtifactError, ConfigError
from nas.pipeline.build import Data
from nas.pipeline.config import SearchConfig
from nas.pipeline.data import load_data
from nas.pipeline.result import SearchResult
from nas.pipeline.runs import Run, config_hash

__all__ = ["COMPARISON_FORMAT", "CellFailure", "Comparison", "FullModel", "Group", "compare"]

#: Names ``comparison.json``.
COMPARISON_FORMAT = "embnas.comparison"
#: Version of the ``comparison.json`` layout.
COMPARISON_VERSION = 1
#: The stages whose time a comparison reports, in the order a search runs them.
STAGES = ("reference", "supernet", "search", "retrain", "total")

#: The append-only log of the cells that failed, one JSON object per line.
FAILURES_FILE = "failures.jsonl"


@dataclass(frozen=True)
class Group:
    """The cells of one arm at one budget, over the seeds.

    Attributes:
        arm: the arm.
        budget: the budget, as typed in the grid.
        quality: the test metric over the finished seeds.
        values: the test metric by seed.
        bytes: mean bytes of the export (``nan`` with no finished seed).
        cost: mean cost of the search in full-model trainings (``nan`` where unknown).
        versus: the paired difference from each baseline, by the baseline's name (not
            the arm itself).
        runs: the run folder of each finished seed.
        seconds: mean wall seconds of each stage (:data:`STAGES`) over the finished seeds;
            ``reference`` counts 0 for a cell that found the full model cached.
        full_seconds: mean training seconds of the full reference model.
        retain: the test metric over the same seed's plainly trained full model (the one
            the cell compared itself with), over the seeds that trained or found one.
    """

    arm: str
    budget: str
    quality: Spread
    values: Mapping[int, float]
    bytes: float
    cost: float
    versus: Mapping[str, PairedDifference]
    runs: Mapping[int, Path]
    seconds: Mapping[str, float] = field(default_factory=dict)
    full_seconds: float = math.nan
    retain: Spread = Spread(0, math.nan, math.nan)


@dataclass(frozen=True)
class FullModel:
    """One plainly trained full model (trained once per seed) and the arms that compared themselves with it.

    Attributes:
        arms: the arms whose cells found it as their reference, in the grid's order.
        values: its test metric by seed.
        quality: the same over the seeds.
    """

    arms: tuple[str, ...]
    values: Mapping[int, float]
    quality: Spread


@dataclass(frozen=True)
class CellFailure:
    """A cell that did not finish in this call.

    Attributes:
        arm: the arm.
        budget: the budget.
        seed: the seed.
        run: its run folder.
        error: the error's type.
        message: the error's message, on one line.
    """

    arm: str
    budget: str
    seed: int
    run: Path
    error: str
    message: str


@dataclass(frozen=True)
class Comparison:
    """What :func:`compare` found, and where it wrote it.

    Attributes:
        metric: the test metric compared.
        higher_is_better: whether a larger metric is better (``False`` for log loss).
        arms: the arms, in the grid's order.
        budgets: the budgets compared (those the data can meet).
        seeds: the grid's seeds.
        baselines: the arms the others are compared with.
        groups: one :class:`Group` per arm and budget.
        full_model: the plainly trained full-size model's test metric over the seeds
            (``None`` when no finished cell trained one): the one the baselines compare
            themselves with, where arms train differently (another recipe).
        full_models: every distinct full model the arms compared themselves with, each
            with the arms that did: one entry when every arm trains alike.
        missing: the cells without a result, as ``(arm, budget, seed)``.
        dropped: a line for each budget left out because the data cannot meet it.
        failures: the cells that failed in this call.
        markdown: the tables of ``comparison.md``.
        paths: the files written: ``"markdown"``, ``"json"``, ``"png"``, ``"html"``.
    """

    metric: str
    higher_is_better: bool
    arms: tuple[str, ...]
    budgets: tuple[str, ...]
    seeds: tuple[int, ...]
    baselines: tuple[str, ...]
    groups: tuple[Group, ...]
    full_model: Spread | None
    full_models: tuple[FullModel, ...]
    missing: tuple[tuple[str, str, int], ...]
    dropped: tuple[str, ...]
    failures: tuple[CellFailure, ...]
    markdown: str
    paths: Mapping[str, Path]

    def group(self, arm: str, budget: str) -> Group:
        """The :class:`Group` of ``arm`` at ``budget``."""
        for group in self.groups:
            if group.arm == arm and group.budget == budget:
                return group
        raise KeyError(f"no group for arm {arm!r} at budget {budget!r}")


def compare(
    grid: str | Path | Mapping[str, Any],
    out: str | Path | None = None,
    *,
    jobs: int = 1,
    report_only: bool = False,
    progress: bool = True,
    budgets: Sequence[str] | None = None,
    arms: Sequence[str] | None = None,
) -> Comparison:
    """Run the cells of a grid that are not finished, then compare the arms; returns the comparison.

    Everything that can be checked is checked before any cell runs: a wrong option is
    one :class:`~nas.core.errors.ConfigError` naming the arm or budget, and nothing runs;
    a budget the data cannot meet only drops its cells (a line on stderr says so).  A
    cell that fails is a line on stderr and a line in ``<out>/failures.jsonl``; the
    others go on.

    Args:
        grid: the grid file (TOML, see :mod:`nas.app.grid`), or its content as a mapping.
        out: the output folder; default: beside the grid file, named after it
            (``grids/lastfm.toml`` -> ``grids/lastfm/``).  Cells run in ``<out>/runs/``.
        jobs: cells run side by side, each in a process of its own with one torch thread.
        report_only: run nothing; write the outputs from the cells already finished.
        progress: draw a bar over the cells.
        budgets: run only the cells of these budgets (as the grid spells them); the
            outputs still cover every finished cell, so a grid can be run a corner at a time.
        arms: run only the cells of these arms, likewise.

    Returns:
        The :class:`Comparison`; its files are ``comparison.md``, ``comparison.json`` and
        ``comparison.png`` in ``out``.

    Raises:
        ConfigError: the grid cannot run as written (naming the arm or budget), or a
            cell's folder holds a run of another configuration.
        DataError: the grid's data is malformed.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"jobs must be at least 1, got {jobs!r}")
    spec = read_grid(grid)
    chosen = _selection(spec, budgets, arms)
    if out is None:
        if spec.source is None:
            raise ConfigError("give the output folder (out=...) for a grid given as a mapping")
        out = spec.source.parent / spec.source.stem
    out = Path(out).absolute()  # the outputs name the run folders wherever the command ran
    cells = plan_cells(spec, out)
    # The data once, here: a budget it cannot meet drops its cells before anything runs
    # (and out of the report, which then reads the same whether cells ran or not).
    data = load_data(cells[0].config.data)
    cells, dropped = feasible_cells(cells, data.rows())
    for line in dropped:
        print(f"embnas: {line}", file=sys.stderr)
    _check_recorded(cells, data)
    failures: list[CellFailure] = []
    todo = [cell for cell in cells if not _finished(cell) and chosen(cell)]
    if todo and not report_only:
        from nas.app._cells import run_cells

        def failed(cell: Cell, outcome: tuple[str, str, str | None]) -> None:
            failures.append(_record_failure(out, cell, *outcome))

        run_cells(todo, jobs=jobs, total=sum(map(chosen, cells)), progress=progress, failed=failed)
    results, unreadable = _results(cells)
    for cell, error in unreadable:
        failures.append(_record_failure(out, cell, type(error).__name__, " ".join(str(error).splitlines()), None))
    comparison = _compare(spec, cells, results, dropped, failures, out)
    _write(comparison, spec, cells, results, out)
    return comparison


# -- cells -----------------------------------------------------------------------------------------------
def _selection(spec: Grid, budgets: Sequence[str] | None, arms: Sequence[str] | None) -> Callable[[Cell], bool]:
    """Which cells to run: those of the named budgets and arms (all when ``None``); unknown names are refused."""
    for kind, named, known in (("budget", budgets, spec.budgets), ("arm", arms, [arm.name for arm in spec.arms])):
        unknown = [name for name in named or () if name not in known]
        if unknown:
            raise ConfigError(f"the grid has no {kind} {', '.join(map(repr, unknown))}; its {kind}s are {', '.join(known)}")
    return lambda cell: (budgets is None or cell.budget in budgets) and (arms is None or cell.arm in arms)


def _finished(cell: Cell) -> bool:
    return (cell.folder / "metrics.json").exists()


def _check_recorded(cells: Sequence[Cell], data: Data) -> None:
    """Refuse a cell folder that holds a run of another configuration or other data.

    A finished cell is read back rather than rerun, so a result of an older grid, or of
    the same grid over files that changed since, would otherwise be reported as this one's.

    Args:
        cells: the grid's cells.
        data: the data of the first cell (the others load their own only where it differs
            and a folder needs checking, as a split drawn by the seed does).

    Raises:
        ConfigError: naming the cell, its folder and what differs.
    """
    loaded = {config_hash(asdict(cells[0].config.data)): data} if cells else {}
    fingerprints: dict[str, str] = {}
    for cell in cells:
        if not (cell.folder / "config.json").exists():
            continue
        try:
            recorded = SearchConfig.upgrade(Run(cell.folder).config())
        except (ArtifactError, ConfigError, KeyError, TypeError, ValueError) as error:
            raise ConfigError(f"{cell.label}: {cell.folder} holds a configuration this grid cannot check "
                              f"({' '.join(str(error).splitlines())}); delete the folder to run the cell again") from None
        fingerprint = recorded.pop("data_fingerprint", None)
        expected = cell.config.to_dict()
        if config_hash(recorded) != config_hash(expected):
            keys = sorted(k for k in set(recorded) | set(expected)
                          if config_hash({k: recorded.get(k)}) != config_hash({k: expected.get(k)}))
            raise ConfigError(f"{cell.label}: {cell.folder} holds a run of another configuration (it differs in "
                              f"{', '.join(keys)}); the grid changed since it ran: delete that folder or give another "
                              "output folder")
        key = config_hash(asdict(cell.config.data))
        if fingerprint is not None and key not in fingerprints:
            fingerprints[key] = (loaded.get(key) or load_data(cell.config.data)).fingerprint()
        if fingerprint is not None and fingerprint != fingerprints[key]:
            raise ConfigError(f"{cell.label}: {cell.folder} holds a run on other data (the grid's data files changed "
                              "since it ran): delete that folder or give another output folder")


def _record_failure(out: Path, cell: Cell, error: str, message: str, trace: str | None) -> CellFailure:
    """Say that a cell failed (a line on stderr) and append it to ``failures.jsonl``."""
    from tqdm.auto import tqdm

    shown = message if trace is None else f"{error}: {message} (unexpected; the traceback is in {out / FAILURES_FILE})"
    tqdm.write(f"embnas: {cell.label} failed: {shown}", file=sys.stderr)
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "arm": cell.arm, "budget": cell.budget,
              "seed": cell.seed, "run": str(cell.folder), "error": error, "message": message,
              **({"traceback": trace} if trace is not None else {})}
    out.mkdir(parents=True, exist_ok=True)
    with open(out / FAILURES_FILE, "a", encoding="utf-8") as log:  # append-only: a torn last line is all a crash costs
        log.write(json.dumps(record) + "\n")
        log.flush()
        os.fsync(log.fileno())
    return CellFailure(cell.arm, cell.budget, cell.seed, cell.folder, error, message)


def _results(cells: Sequence[Cell]) -> tuple[dict[Cell, SearchResult], list[tuple[Cell, Exception]]]:
    """The results of the finished cells, and the cells whose result cannot be read (with why)."""
    results: dict[Cell, SearchResult] = {}
    unreadable: list[tuple[Cell, Exception]] = []
    for cell in cells:
        if _finished(cell):
            try:
                results[cell] = SearchResult.read(cell.folder)
            except ArtifactError as error:
                unreadable.append((cell, error))
    return results, unreadable


# -- statistics ------------------------------------------------------------------------------------------
def _compare(spec: Grid, cells: Sequence[Cell], results: Mapping[Cell, SearchResult], dropped: Sequence[str],
             failures: Sequence[CellFailure], out: Path) -> Comparison:
    metric = spec.metric
    for cell, result in results.items():
        if metric not in result.metrics["test"]:
            raise ConfigError(f"{cell.label}: its result has no test metric {metric!r} (it has "
                              f"{', '.join(sorted(result.metrics['test']))}); set metric in the grid to one of them")
    budgets = tuple(dict.fromkeys(cell.budget for cell in cells))
    arms = tuple(arm.name for arm in spec.arms)
    values: dict[tuple[str, str], dict[int, float]] = {}
    for cell, result in results.items():
        values.setdefault((cell.arm, cell.budget), {})[cell.seed] = float(result.metrics["test"][metric])
    groups = []
    for arm in arms:
        for budget in budgets:
            mine = [(cell, result) for cell, result in results.items() if cell.arm == arm and cell.budget == budget]
            own = values.get((arm, budget), {})
            versus = {base: paired_difference(own, values.get((base, budget), {}), higher_better=spec.higher_is_better)
                      for base in spec.baselines if base != arm}
            groups.append(Group(
                arm=arm, budget=budget, quality=spread(list(own.values())), values=dict(sorted(own.items())),
                bytes=_mean([r.export_bytes for _, r in mine]), cost=_mean([r.cost_ratio for _, r in mine]),
                versus=versus, runs={cell.seed: cell.folder for cell, _ in sorted(mine, key=lambda m: m[0].seed)},
                seconds={stage: _mean([r.timings.get(stage, 0.0) for _, r in mine]) for stage in STAGES},
                full_seconds=_mean([r.full_train_seconds for _, r in mine]),
                retain=spread([_retain(r, metric) for _, r in mine]),
            ))
    missing = tuple((cell.arm, cell.budget, cell.seed) for cell in cells if cell not in results)
    families = _reference_families(results, arms, metric)
    main = _baselines_full_model(families, spec.baselines)
    comparison = Comparison(
        metric=metric, higher_is_better=spec.higher_is_better, arms=arms, budgets=budgets, seeds=spec.seeds,
        baselines=spec.baselines, groups=tuple(groups), full_model=None if main is None else main.quality,
        full_models=tuple(families), missing=missing,
        dropped=tuple(dropped), failures=tuple(failures), markdown="",
        paths={"markdown": out / "comparison.md", "json": out / "comparison.json", "png": out / "comparison.png",
               "html": out / "comparison.html"},
    )
    return _with_markdown(comparison, len(cells))


def _retain(result: SearchResult, metric: str) -> float:
    """The cell's test metric over its own plainly trained full model's (``nan`` without one)."""
    if result.reference != "full":
        return math.nan
    full = result.full_metrics.get("test", {}).get(metric)
    return float(result.metrics["test"][metric]) / float(full) if full else math.nan


def _reference_families(results: Mapping[Cell, SearchResult], arms: Sequence[str], metric: str) -> list[FullModel]:
    """The distinct full models the cells compared themselves with, in the arms' order.

    A full model is trained once per data, training and seed, and cached (its folder
    names it), so arms that share a cached reference train alike; an arm with another
    recipe has references of its own, and a mean over both would describe neither.
    """
    folders: dict[str, set[str]] = {}
    values: dict[str, dict[int, float]] = {}
    for cell, result in results.items():
        if result.reference == "full" and metric in result.full_metrics.get("test", {}):
            folder = str(result.reference_dir or f"{cell.arm}:{cell.seed}")
            folders.setdefault(cell.arm, set()).add(folder)
            values.setdefault(folder, {})[cell.seed] = float(result.full_metrics["test"][metric])
    families: list[tuple[list[str], set[str]]] = []
    for arm in arms:
        if arm not in folders:
            continue
        joined = [family for family in families if family[1] & folders[arm]]
        members, shared = [arm], set(folders[arm])
        for family in joined:
            members, shared = family[0] + members, shared | family[1]
            families.remove(family)
        families.append((sorted(members, key=arms.index), shared))
    families.sort(key=lambda family: arms.index(family[0][0]))
    out = []
    for members, shared in families:
        by_seed: dict[int, list[float]] = {}
        for folder in shared:
            for seed, value in values[folder].items():
                by_seed.setdefault(seed, []).append(value)
        values_by_seed = {seed: _mean(found) for seed, found in sorted(by_seed.items())}
        out.append(FullModel(tuple(members), values_by_seed, spread(list(values_by_seed.values()))))
    return out


def _baselines_full_model(families: Sequence[FullModel], baselines: Sequence[str]) -> FullModel | None:
    """The full model the baselines compared themselves with (else the first arm's), ``None`` without one."""
    return next((family for family in families if set(family.arms) & set(baselines)), families[0] if families else None)


def _mean(values: Sequence[float]) -> float:
    finite = [float(v) for v in values if math.isfinite(float(v))]
    return sum(finite) / len(finite) if finite else math.nan


# -- comparison.md ---------------------------------------------------------------------------------------
def _with_markdown(comparison: Comparison, planned: int) -> Comparison:
    return replace(comparison, markdown=_markdown(comparison, planned))


def _markdown(c: Comparison, planned: int) -> str:
    direction = "higher" if c.higher_is_better else "lower"
    finished = planned - len(c.missing)
    lines = [
        f"# Comparison of allocations: test {c.metric}",
        "",
        f"{direction.capitalize()} is better. {finished} of {planned} cells finished; seeds {', '.join(map(str, c.seeds))}.",
        "Δ is the arm minus the baseline, paired by seed (the seeds finished in both), with its 95 % t interval",
        "and as % of the baseline's mean: \"better\" or \"worse\" only when the interval excludes zero, \"level\"",
        "when it holds zero, \"n/a\" with fewer than 2 paired seeds. bytes: the export's mean size;",
        "× one training: the search's cost in trainings of the full model; retain: the metric over the same",
        "seed's plainly trained full model (mean over the seeds).",
    ]
    for budget in c.budgets:
        baselines = list(c.baselines)
        header = ["arm", "n", f"{c.metric} (mean ± sd)", "retain", "bytes", "× one training"]
        right = [False, True, True, True, True, True]
        for base in baselines:
            header += [f"Δ vs {base} [95 % CI] (%)", f"vs {base}"]
            right += [True, False]
        rows = []
        for arm in c.arms:
            group = c.group(arm, budget)
            row = [arm, str(group.quality.n), _mean_sd(group.quality), _number(group.retain.mean, 3), _bytes(group.bytes),
                   _number(group.cost, 2)]
            for base in baselines:
                diff = group.versus.get(base)
                row += ["—", "—"] if diff is None else [_difference(diff), diff.verdict]
            rows.append(row)
        for full in c.full_models:
            rows.append([_full_label(c, full.arms), str(full.quality.n), _mean_sd(full.quality), "1", "", ""]
                        + [""] * (2 * len(baselines)))
        lines += ["", f"## Budget {budget}", "", _table(header, right, rows)]
        timed = [c.group(arm, budget) for arm in c.arms if c.group(arm, budget).quality.n]
        if timed:
            full = _mean([g.full_seconds for g in timed])
            lines += ["", f"Where the time goes (mean seconds per stage; the full model's training: {_number(full, 0)} s; "
                          "reference: its training, where a cell found it not yet cached):", "",
                      _table(["arm", *STAGES], [False, *[True] * len(STAGES)],
                             [[g.arm, *(_number(g.seconds.get(stage, math.nan), 0) for stage in STAGES)] for g in timed])]
    if c.dropped:
        lines += ["", *(f"- {line[0].upper()}{line[1:]}" for line in c.dropped)]
    if c.missing:
        shown = "; ".join(f"{arm} {budget} seed {seed}" for arm, budget, seed in c.missing[:20])
        more = f" and {len(c.missing) - 20} more" if len(c.missing) > 20 else ""
        lines += ["", f"Not finished: {shown}{more}. Run the same command again to finish them."]
    return "\n".join(lines) + "\n"


def _full_label(c: Comparison, members: Sequence[str]) -> str:
    """``full model``, naming the arms it serves where arms compare themselves with different ones."""
    return "full model" if len(c.full_models) <= 1 else f"full model ({', '.join(members)})"


def _table(header: list[str], right: list[bool], rows: list[list[str]]) -> str:
    """A markdown table, its columns padded to one width so that it also reads as plain text."""
    widths = [max(3, *(len(row[i]) for row in [header, *rows])) for i in range(len(header))]
    rule = ["-" * (w - 1) + ":" if r else "-" * w for w, r in zip(widths, right)]
    lines = [[cell.rjust(w) if r else cell.ljust(w) for cell, w, r in zip(row, widths, right)] for row in [header, *rows]]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [lines[0], rule, *lines[1:]])


def _number(value: float, digits: int = 4, sign: bool = False) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _mean_sd(quality: Spread) -> str:
    if quality.n == 0:
        return "n/a"
    return _number(quality.mean) + ("" if not math.isfinite(quality.sd) else f" ± {_number(quality.sd)}")


def _bytes(value: float) -> str:
    return f"{value:,.0f}" if math.isfinite(value) else "n/a"


def _difference(diff: PairedDifference) -> str:
    if diff.n == 0:
        return "n/a"
    interval = f" [{_number(diff.low, sign=True)}, {_number(diff.high, sign=True)}]" if diff.n >= 2 else ""
    percent = f" ({diff.percent:+.1f} %)" if math.isfinite(diff.percent) else ""
    return f"{_number(diff.mean, sign=True)}{interval}{percent}"


# -- files -----------------------------------------------------------------------------------------------
def _write(c: Comparison, spec: Grid, cells: Sequence[Cell], results: Mapping[Cell, SearchResult], out: Path) -> None:
    """Write ``comparison.md``, ``comparison.json``, ``comparison.png`` and ``comparison.html``, each atomically."""
    with atomic_write(c.paths["markdown"], "w") as handle:
        handle.write(c.markdown)
    write_json(c.paths["json"], _plain(_json(c, spec, cells, results)))
    _plot(c, c.paths["png"])
    with atomic_write(c.paths["html"], "w") as handle:
        handle.write(_page(c, out))


# -- comparison.html -------------------------------------------------------------------------------------
def _page(c: Comparison, out: Path) -> str:
    """The comparison as one self-contained page: the front of every arm, and a table per budget."""
    from nas.app.report_page import html_page, svg_chart

    e = html.escape
    series = []
    for arm in c.arms:
        points = sorted((g.bytes, g.quality.mean, g.quality.sd) for g in c.groups
                        if g.arm == arm and g.quality.n and math.isfinite(g.bytes))
        if points:
            series.append((arm, points, "line", arm))
    full = [(_full_label(c, f.arms), f.quality.mean) for f in c.full_models if math.isfinite(f.quality.mean)]
    chart = svg_chart(series, x_label="bytes stored (export, log scale)", y_label=f"test {c.metric}", log_x=True,
                      hlines=full) if series else "<p>No cell has finished yet.</p>"
    parts = [f"<h1>{e(c.metric)} against memory: {len(c.arms)} arms, {len(c.budgets)} budgets, {len(c.seeds)} seeds</h1>",
             f'<p class="sub">mean ± sd over the seeds; {"higher" if c.higher_is_better else "lower"} is better; '
             "an arm beats a baseline only where the paired 95 % interval excludes zero. "
             f"{len(c.missing)} cell(s) missing.</p>",
             f"<section><h2>The front</h2>{chart}</section>"]
    for budget in c.budgets:
        rows = []
        for arm in c.arms:
            g = c.group(arm, budget)
            versus = " ".join(f"<div>vs {e(base)}: {_difference(d) if d.n >= 2 else 'n/a'} <b>{e(d.verdict)}</b></div>"
                              for base, d in g.versus.items())
            links = " ".join(
                f'<a href="{e(os.path.relpath(run / "report" / "index.html", out))}">seed {seed}</a>'
                if (run / "report" / "index.html").is_file() else f"seed {seed}" for seed, run in sorted(g.runs.items()))
            rows.append(f"<tr><td>{e(arm)}</td><td>{_mean_sd(g.quality)}</td><td>{_bytes(g.bytes)}</td>"
                        f"<td style=\"text-align:left\">{versus}</td><td>{_number(g.cost, 2)}</td><td>{links}</td></tr>")
        parts.append(f"<section><h2>Budget {e(budget)}</h2><table><tr><th>arm</th><th>{e(c.metric)}</th><th>bytes</th>"
                     "<th>paired difference [95 % CI] (%)</th><th>cost (full trainings)</th><th>runs</th></tr>"
                     + "".join(rows) + "</table></section>")
    if c.dropped:
        parts.append("<section><h2>Left out</h2>" + "".join(f"<p>{e(line)}</p>" for line in c.dropped) + "</section>")
    return html_page(f"embnas · comparison of {c.metric}", "".join(parts))


def _json(c: Comparison, spec: Grid, cells: Sequence[Cell], results: Mapping[Cell, SearchResult]) -> dict[str, Any]:
    by_group: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for cell in cells:
        result = results.get(cell)
        entry: dict[str, Any] = {"seed": cell.seed, "run": str(cell.folder), "finished": result is not None}
        if result is not None:
            entry.update({c.metric: float(result.metrics["test"][c.metric]), "bytes": result.export_bytes,
                          "cost_ratio": result.cost_ratio, "reference": result.reference,
                          "full_model": result.full_metrics.get("test", {}).get(c.metric)})
        by_group.setdefault((cell.arm, cell.budget), []).append(entry)
    main = _baselines_full_model(c.full_models, c.baselines)
    return {
        "format": COMPARISON_FORMAT,
        "version": COMPARISON_VERSION,
        "grid": None if spec.source is None else str(spec.source),
        "metric": c.metric,
        "higher_is_better": c.higher_is_better,
        "arms": list(c.arms),
        "budgets": list(c.budgets),
        "seeds": list(c.seeds),
        "baselines": list(c.baselines),
        "confidence": 0.95,
        "full_model": None if main is None else _full_json(main),
        "full_models": [{"arms": list(full.arms), **_full_json(full)} for full in c.full_models],
        "groups": [
            {"arm": g.arm, "budget": g.budget, **_spread(g.quality), "bytes": g.bytes, "cost_ratio": g.cost,
             "seconds": dict(g.seconds), "full_seconds": g.full_seconds, "retain": _spread(g.retain),
             "versus": {base: {"n": d.n, "mean": d.mean, "sd": d.sd, "low": d.low, "high": d.high,
                               "percent": d.percent, "verdict": d.verdict, "seeds": list(d.seeds)}
                        for base, d in g.versus.items()},
             "cells": by_group.get((g.arm, g.budget), [])}
            for g in c.groups
        ],
        "missing": [{"arm": a, "budget": b, "seed": s} for a, b, s in c.missing],
        "dropped": list(c.dropped),
        "failures": [{"arm": f.arm, "budget": f.budget, "seed": f.seed, "run": str(f.run), "error": f.error,
                      "message": f.message} for f in c.failures],
    }


def _full_json(full: FullModel) -> dict[str, Any]:
    return {**_spread(full.quality), "by_seed": {str(seed): value for seed, value in full.values.items()}}


def _spread(value: Spread) -> dict[str, Any]:
    return {"n": value.n, "mean": value.mean, "sd": value.sd}


def _plain(value: Any) -> Any:
    """``value`` with every non-finite float as ``null`` (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# -- comparison.png --------------------------------------------------------------------------------------
#: Factor between the x positions of neighbouring arms at one budget (log axis).
_DODGE = 1.03

def _plot(c: Comparison, path: Path) -> Path:
    """Quality against bytes stored: a line per arm through its budgets, the full model as a horizontal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter, NullFormatter

    figure, axis = plt.subplots(figsize=(8.0, 4.5), layout="constrained")
    # tab10 repeats its colours after ten arms (a grid of every controller has eleven).
    colours = plt.get_cmap("tab10" if len(c.arms) <= 10 else "tab20").colors
    drawn: list[float] = []
    for index, arm in enumerate(c.arms):
        points = sorted((g.bytes, g.quality.mean, g.quality.sd) for g in c.groups
                        if g.arm == arm and g.quality.n and math.isfinite(g.bytes))
        if not points:
            continue
        x, y, sd = zip(*points)
        # Arms of one budget store nearly the same bytes: each is drawn a little aside (the table has the bytes).
        dodge = _DODGE ** (index - (len(c.arms) - 1) / 2)
        axis.errorbar([v * dodge for v in x], y, yerr=[s if math.isfinite(s) else 0.0 for s in sd], marker="o",
                      capsize=3, label=arm, color=colours[index % len(colours)])
        drawn += x
    for full, style in zip(c.full_models, itertools.cycle(("--", ":", "-.", (0, (5, 1))))):
        quality = full.quality
        if not math.isfinite(quality.mean):
            continue
        axis.axhline(quality.mean, color="black", linestyle=style, linewidth=1.0, label=_full_label(c, full.arms))
        if math.isfinite(quality.sd):
            axis.axhspan(quality.mean - quality.sd, quality.mean + quality.sd, color="black", alpha=0.08)
    if drawn:
        axis.set_xscale("log")
        axis.set_xlim(min(drawn) / 1.3, max(drawn) * 1.3)
        # A tick at each budget (its arms' mean bytes): the budgets are what the reader compares.
        ticks = [float(np.mean([g.bytes for g in c.groups if g.budget == budget and math.isfinite(g.bytes)] or [np.nan]))
                 for budget in c.budgets]
        axis.set_xticks([t for t in ticks if math.isfinite(t)])
        axis.xaxis.set_major_formatter(EngFormatter(unit="B", places=1))
        axis.xaxis.set_minor_formatter(NullFormatter())
        figure.legend(loc="outside right center")  # beside the axes: it never hides a point
    else:
        axis.text(0.5, 0.5, "no finished cells yet", ha="center", va="center", transform=axis.transAxes)
    axis.set_xlabel("bytes stored (export)")
    axis.set_ylabel(f"test {c.metric} (mean ± sd over seeds)")
    axis.set_title(f"{c.metric}: {'higher' if c.higher_is_better else 'lower'} is better")
    return save_png(figure, path)
