"""Pictures of a finished run: where the budget went, against how often each row is seen.

``embnas report <run>`` writes ``<run>/report/allocation.png``: for every table, each
row's kept dimensions against its log training frequency (the block space adds its
group boundaries), so a user sees at a glance whether frequent rows got the room.
A search that measured fitness adds ``fitness.png``: every candidate's fitness by
trial and the best so far, which shows whether more trials would still pay.
An allocation with precisions colours each row by its precision and adds
``precisions.md``: the share of rows at each precision per frequency band
(:func:`precision_bands`).  Last, ``index.html`` gathers everything a person wants to
see of the run in one self-contained page (:mod:`nas.app.report_page`); a run still
searching gets only that page, showing its progress.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nas.core.allocation import Allocation
from nas.core._atomic import atomic_write
from nas.core.errors import ArtifactError
from nas.pipeline.data import load_data
from nas.pipeline.runs import Run
from nas.pipeline.build import Data, build_space
from nas.pipeline.replay import checked_budget, read_config
from nas.app.report_page import write_page

__all__ = ["BANDS", "plot_allocation", "plot_fitness", "precision_bands", "save_png", "write_report"]

_MAX_POINTS = 20_000

#: The frequency bands of :func:`precision_bands`: upper ends of the rank share, most frequent first.
BANDS = (0.01, 0.1, 0.5, 1.0)


def precision_bands(allocation: Allocation, frequencies: dict[str, np.ndarray], bands: tuple[float, ...] = BANDS) -> str:
    """A markdown table: per table and frequency band (top 1 %, 1-10 %, ... of rows by frequency),
    the rows, their mean size and the share at each precision.

    Raises:
        ValueError: for an allocation without precisions.
    """
    if allocation.row_precisions is None:
        raise ValueError("the allocation has no precisions")
    names = allocation.precisions
    lines = ["| table | rows by frequency | rows | mean size | " + " | ".join(names) + " |",
             "|---|---|--:|--:|" + "--:|" * len(names)]
    for table in allocation.tables:
        order = np.argsort(-frequencies[table], kind="stable")
        n, start = len(order), 0
        for share in bands:
            end = max(int(np.ceil(share * n)), start)
            rows = order[start:end]
            if rows.size:
                counts = np.bincount(allocation.row_precisions[table][rows], minlength=len(names)) / rows.size
                label = f"top {share:.0%}" if start == 0 else f"{start / n:.0%}-{share:.0%}"
                lines.append(f"| {table} | {label} | {rows.size:,} | {allocation.row_dims[table][rows].mean():.1f} | "
                             + " | ".join(f"{c:.0%}" for c in counts) + " |")
            start = end
    return "\n".join(lines) + "\n"


def plot_allocation(
    allocation: Allocation,
    frequencies: dict[str, np.ndarray],
    path: str | Path,
    *,
    boundaries: dict[str, np.ndarray] | None = None,
    title: str = "",
) -> Path:
    """Write a PNG of row size against ``log(1 + frequency)``, one panel per table.

    Args:
        allocation: the allocation to draw.
        frequencies: training frequency of every row, by table.
        path: the PNG to write (atomically).
        boundaries: per table, frequencies at which groups change (drawn as dashed lines).
        title: the figure's title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = allocation.tables
    figure, axes = plt.subplots(1, len(names), figsize=(5.0 * len(names), 4.0), squeeze=False)
    rng = np.random.default_rng(0)
    for axis, name in zip(axes[0], names):
        dims = allocation.kept_per_row(name)  # element masks: the values each row keeps
        log_frequency = np.log1p(frequencies[name].astype(np.float64))
        shown = np.arange(len(dims)) if len(dims) <= _MAX_POINTS else np.sort(rng.choice(len(dims), _MAX_POINTS, replace=False))
        jitter = rng.uniform(-0.15, 0.15, len(shown))
        if allocation.row_precisions is None:
            axis.scatter(log_frequency[shown], dims[shown] + jitter, s=4, alpha=0.35, linewidths=0)
        else:
            index = allocation.row_precisions[name][shown]
            for k, precision in enumerate(allocation.precisions):
                mine = index == k
                if mine.any():
                    axis.scatter(log_frequency[shown][mine], dims[shown][mine] + jitter[mine], s=4, alpha=0.45,
                                 linewidths=0, label=precision)
            axis.legend(loc="upper left", markerscale=3, title="precision")
        for cut in (boundaries or {}).get(name, ()):
            axis.axvline(np.log1p(cut), color="grey", linestyle="--", linewidth=0.8)
        axis.set_title(f"{name}: {len(dims):,} rows, mean {dims.mean():.2f} dims")
        axis.set_xlabel("log(1 + training frequency)")
        axis.set_ylabel("kept dimensions")
    if title:
        figure.suptitle(title)
    return save_png(figure, path)


def plot_fitness(trials: list[dict], path: str | Path, *, title: str = "") -> Path:
    """Write a PNG of each candidate's fitness against its trial number, with the best so far.

    When the controller logged a predicted fitness with its candidates (BET's note), the
    predictions are drawn beside the measurements: the predictor's learning shows as the
    two converging.

    Args:
        trials: the run's ``trial`` events (``trial`` and ``fitness`` fields, optionally
            ``note.predicted``).
        path: the PNG to write (atomically).
        title: the figure's title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort([t["trial"] for t in trials], kind="stable")
    trial = np.asarray([trials[i]["trial"] for i in order])
    fitness = np.asarray([trials[i]["fitness"] for i in order], dtype=np.float64)
    figure, axis = plt.subplots(figsize=(6.0, 4.0))
    axis.scatter(trial, fitness, s=12, alpha=0.6, label="candidate")
    axis.step(trial, np.maximum.accumulate(fitness), where="post", color="black", linewidth=1.2, label="best so far")
    predicted = np.asarray([(trials[i].get("note") or {}).get("predicted") for i in order], dtype=np.float64)
    if np.isfinite(predicted).any():
        axis.scatter(trial, predicted, s=12, marker="x", color="tab:orange", alpha=0.8, label="predicted before measuring")
    axis.set_xlabel("trial")
    axis.set_ylabel("fitness (quality / full model's)")
    axis.legend(loc="lower right")
    if title:
        axis.set_title(title)
    return save_png(figure, path)


def save_png(figure, path: str | Path) -> Path:  # noqa: ANN001 - a matplotlib Figure
    """Lay out ``figure`` (unless it lays itself out), write it as a PNG atomically, and free it."""
    import matplotlib.pyplot as plt

    if figure.get_layout_engine() is None:
        figure.tight_layout()
    target = Path(path)
    try:
        with atomic_write(target, "wb") as handle:
            figure.savefig(handle, format="png", dpi=110)
    finally:
        plt.close(figure)
    return target


def write_report(folder: str | Path, data: Data | None = None) -> list[Path]:
    """Write the report pictures of a finished run into ``<run>/report/``; returns their paths.

    ``data``: the run's data when the caller holds it (else it is loaded as the run describes
    it); its tables are checked against the run's budget either way.  Reads the run without locking it; every file read is checked (:mod:`nas.pipeline.runs`).

    Raises:
        ArtifactError: naming the run's file that is missing, damaged or changed since the run wrote it.
    """
    run = Run(folder)
    if not run.has("config.json"):
        raise ArtifactError(f"{folder} is not a run folder (no config.json); give a folder made by `embnas search`")
    if not run.has("allocation.npz"):  # still searching: the progress page only
        return [write_page(folder)]
    config = read_config(run)
    data = load_data(config.data) if data is None else data
    space = build_space(config, data)
    allocation = run.load_allocation("allocation.npz")
    checked_budget(run, config, data, allocation)  # its tables and sizes are the data's before they are drawn
    boundaries = None
    if hasattr(space, "boundaries") and hasattr(space, "sorted_rows"):
        # Group g of a table starts at sorted position boundaries[g]: mark the frequency there.
        boundaries = {}
        for name, cuts in space.boundaries().items():
            order = space.sorted_rows()[name]
            inner = np.asarray(cuts)[1:-1]
            boundaries[name] = data.frequencies()[name][order[inner - 1]] if inner.size else np.array([])
    title = f"{config.controller} on the {space.describe()} space, budget {config.budget}"
    written = [plot_allocation(allocation, data.frequencies(), run.path("report", "allocation.png"), boundaries=boundaries, title=title)]
    trials = list(run.events("trial"))
    if len(trials) > 1:
        written.append(plot_fitness(trials, run.path("report", "fitness.png"), title=title))
    if allocation.row_precisions is not None:
        target = run.path("report", "precisions.md")
        with atomic_write(target, "w") as handle:
            handle.write(f"# Precisions by frequency band: {title}\n\n" + precision_bands(allocation, data.frequencies()))
        written.append(target)
    written.append(write_page(folder, [path for path in written if path.suffix == ".png"]))
    return written
