"""A front: one search per budget, sharing one supernet, for a user who wants to see what each byte buys.

``embnas search --budget 0.5,0.8,0.9,0.95`` runs the same search at every budget into one
folder::

    <front>/supernet/          the sandwich supernet, trained once under all the budgets
                               (:func:`~nas.pipeline.search.shared_supernet`)
    <front>/budget-0.5/ ...    a complete run per budget: its search, retrain, export, report page
    <front>/front.json         each budget's bytes and test metrics, and the full model's
    <front>/front.html         the front as a page (quality against bytes, a row per budget)

Each budget's run is an ordinary run folder (``embnas evaluate``, ``export``, ``report`` and
``resume`` work on it) whose configuration says which budgets its supernet was trained
under (``supernet.budgets``); a single-budget search given the same ``--supernet-budgets``
trains the same supernet and reaches the same answer.  The full reference model comes
from the shared cache, so it is trained once too.  A front stopped at any point continues
where it stopped when the same command runs again: finished budgets are read back, the
supernet is not trained twice.  Controllers without a sandwich supernet (the rules, one-shot
controllers) search each budget on their own first stage, as single runs do.
"""

from __future__ import annotations

import html
import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from nas.app.report import write_report
from nas.app.report_page import headline_metric, html_page, svg_chart
from nas.core._atomic import atomic_write, write_json
from nas.core.errors import ConfigError
from nas.pipeline.build import Data
from nas.pipeline.config import SearchConfig
from nas.pipeline.data import load_data
from nas.pipeline.executors import Executor
from nas.pipeline.result import SearchResult
from nas.pipeline.runs import config_hash
from nas.pipeline.search import run_search

__all__ = ["FRONT_FILE", "budget_folder", "run_front", "split_budgets"]

#: The front's summary, in its folder.
FRONT_FILE = "front.json"


def split_budgets(text: str) -> list[str]:
    """``"0.5, 0.8,2MB"`` -> ``["0.5", "0.8", "2MB"]``; refuses an empty or repeated budget."""
    budgets = [part.strip() for part in str(text).split(",")]
    if any(not b for b in budgets):
        raise ConfigError(f"a front's budgets are separated by commas, each one a budget: got {text!r}")
    if len(set(budgets)) != len(budgets):
        raise ConfigError(f"a front names each budget once: got {text!r}")
    return budgets


def budget_folder(budget: str) -> str:
    """The folder name of one budget's run: ``budget-0.8``, ``budget-2MB``."""
    return "budget-" + re.sub(r"[^A-Za-z0-9.]+", "_", budget)


def run_front(
    config: SearchConfig,
    budgets: Sequence[str],
    data: Data | None = None,
    folder: str | Path | None = None,
    *,
    runs_root: str | Path | None = None,
    progress: bool = True,
    reference_cache: str | Path | None = None,
    executor: Executor | None = None,
    ddp: int = 1,
) -> list[SearchResult]:
    """Search ``config`` at every budget of ``budgets`` into one front folder; one result per budget, in order.

    Args:
        config: the search; its ``budget`` is replaced by each of ``budgets`` in turn, and its
            supernet is trained under all of them.
        budgets: the budgets, as typed (sparsity, parameters or bytes).
        data: the data in memory; ``None`` loads what ``config.data`` describes.
        folder: the front's folder (made, or continued).
        runs_root: with no ``folder``, make ``<runs_root>/<time>-front-<hash>``.
        progress, reference_cache, executor, ddp: as for :func:`~nas.pipeline.search.run_search`.
    """
    if len(budgets) < 2:
        raise ConfigError("a front needs at least two budgets (one budget is a plain search)")
    if config.supernet.budgets and tuple(config.supernet.budgets) != tuple(budgets):
        raise ConfigError("a front trains its supernet under its own budgets; drop --supernet-budgets")
    data = load_data(config.data) if data is None else data
    shared = replace(config, supernet=replace(config.supernet, budgets=tuple(budgets)))
    if folder is None:
        if runs_root is None:
            raise ConfigError("a front is written to a folder: give folder (--name) or runs_root (--runs)")
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        folder = Path(runs_root) / f"{stamp}-front-{config_hash({**shared.to_dict(), 'budget': None})[:8]}"
    root = Path(folder)
    made = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for budget in budgets:
            if progress:
                print(f"front: budget {budget} ({len(results) + 1} of {len(budgets)})", flush=True)
            results.append(run_search(replace(shared, budget=budget), data, root / budget_folder(budget),
                                      progress=progress, reference_cache=reference_cache,
                                      shared_supernet=root / "supernet", executor=executor, ddp=ddp))
    except BaseException:
        if made and not any(root.iterdir()):  # refused before anything was written: leave no empty front behind
            root.rmdir()
        raise
    for result in results:  # the page links each budget's own report
        write_report(result.run_dir, data)
    summary = front_summary(results, budgets)
    write_json(root / FRONT_FILE, summary)
    with atomic_write(root / "front.html", "w") as handle:
        handle.write(front_page(summary))
    return results


def front_summary(results: Sequence[SearchResult], budgets: Sequence[str]) -> dict[str, Any]:
    """``front.json``: per budget its folder, bytes and metrics; the full model's metrics; the time of each stage."""
    first = results[0]
    return {
        "format": "embnas.front",
        "version": 1,
        "model": first.model,
        "controller": first.controller,
        "space": first.space,
        "full": {"test": dict(first.full_metrics.get("test") or {})},
        "budgets": [
            {"budget": budget, "run": str(result.run_dir), "bytes": result.export_bytes,
             "max_bytes": result.budget.max_bytes, "retain_ratio": result.budget.retain_ratio(result.allocation.cost),
             "test": dict(result.metrics["test"]), "seconds": dict(result.timings)}
            for budget, result in zip(budgets, results)
        ],
    }


def front_page(summary: dict[str, Any]) -> str:
    """``front.html``: quality against bytes for every budget and the full model, and a row per budget."""
    e = html.escape
    metric = headline_metric(summary["budgets"][0]["test"])
    points = [(entry["bytes"], entry["test"][metric]) for entry in summary["budgets"] if entry.get("bytes")]
    full = summary["full"]["test"].get(metric)
    chart = svg_chart([(f"{summary['controller']} at each budget", points, "line", "budget")],
                      x_label="bytes stored (export, log scale)", y_label=f"test {metric}", log_x=True,
                      hlines=[("full model", full)] if full is not None and math.isfinite(full) else [])
    rows = []
    for entry in summary["budgets"]:
        ratio = f"{entry['test'][metric] / full:.3f}" if full else "–"
        rows.append(f"<tr><td><a href=\"{e(Path(entry['run']).name)}/report/index.html\">{e(entry['budget'])}</a></td>"
                    f"<td>{entry['bytes']:,}</td><td>{entry['retain_ratio']:.4f}</td><td>{entry['test'][metric]:.4f}</td>"
                    f"<td>{ratio}</td><td>{entry['seconds'].get('total', 0):.0f} s</td></tr>")
    body = (f"<h1>{e(summary['model'])} · {e(summary['controller'])} · a front of {len(summary['budgets'])} budgets</h1>"
            f"<p class=\"sub\">{e(summary['space'])}; one supernet shared by every budget</p>"
            f"<section><h2>Quality against memory</h2>{chart}</section>"
            f"<section><h2>Budgets</h2><table><tr><th>budget</th><th>bytes</th><th>retain</th><th>test {metric}</th>"
            f"<th>of full</th><th>time</th></tr>{''.join(rows)}</table></section>"
            f"<section><h2>front.json</h2><details><pre>{e(json.dumps(summary, indent=1))}</pre></details></section>")
    return html_page("embnas · front", body)
