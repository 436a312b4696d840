"""A run's report as one self-contained HTML page: ``<run>/report/index.html``.

The page needs no server, no network and no script: its charts are inline SVG (each
point an element with a ``data-point`` name and a ``<title>`` shown on hover), the
pictures of :mod:`nas.app.report` are inlined as PNG data, and the styles sit in the
page.  It is written from the run folder alone, so it can be regenerated at any time:

* a finished run gets its summary (model, data, space, controller, budget), quality
  against bytes (the full model and the allocation, on a log scale of bytes), every
  metric of both with their ratio, the allocation against frequency, fitness over
  trials (with BET's predictions), each training's validation curve, the timings of
  the stages and the export's bytes against the budget;
* a run still going gets a progress page from its events log (the stage reached, trials
  measured and the best fitness so far, trainings finished) that reloads itself every
  ``refresh`` seconds; ``embnas report RUN --watch`` rewrites it until the run is done.
"""

from __future__ import annotations

import base64
import html
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from nas.core._atomic import atomic_write
from nas.core.accounting import value_itemsize
from nas.core.errors import ArtifactError
from nas.pipeline.result import SearchResult
from nas.pipeline.runs import Run

__all__ = ["PAGE", "headline_metric", "html_page", "svg_chart", "watch", "write_page"]

#: The page, under ``<run>/report/``.
PAGE = "index.html"
_WIDTH, _HEIGHT = 500, 300
_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")

_STYLE = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
main{max-width:1080px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px}
.sub{color:#5a6270;margin:0 0 16px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:10px}
.card{background:#fff;border:1px solid #e1e4ea;border-radius:8px;padding:10px 12px}
.card b{display:block;font-size:12px;color:#5a6270;font-weight:600;text-transform:uppercase;letter-spacing:.03em}
.card span{font-size:17px}
section{background:#fff;border:1px solid #e1e4ea;border-radius:8px;padding:12px 16px;margin-top:14px}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
td,th{padding:3px 10px;text-align:right;border-bottom:1px solid #eef0f4}th{color:#5a6270;font-weight:600}
td:first-child,th:first-child{text-align:left}
img{max-width:100%}svg text{font:12px system-ui,sans-serif;fill:#1d2330}
.ok{color:#2a7a2a}.over{color:#b3261e}pre{font-size:12px;overflow:auto;background:#f6f7f9;padding:8px}
.charts{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
"""


def write_page(folder: str | Path, pictures: Iterable[Path] = (), *, refresh: int = 15) -> Path:
    """Write ``<run>/report/index.html`` (atomically) and return its path.

    Args:
        folder: the run folder.
        pictures: PNG files to inline, in order (the allocation, the fitness).
        refresh: for a run still going, seconds between the page's own reloads.
    """
    run = Run(folder)
    events = list(run.events())
    metrics = None
    if run.has("metrics.json") and any(e["event"] == "done" for e in events):
        metrics = SearchResult.read(folder).to_dict()  # refuses a damaged or changed metrics.json or allocation, naming it
    config = run.read_json("config.json") if run.has("config.json") else {}
    try:
        body = _finished(run, metrics, config, events, list(pictures)) if metrics else _progress(run, config, events)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ArtifactError(f"{run.path()}: metrics.json or events.jsonl lacks what the report shows ({type(error).__name__}: "
                            f"{error}); the file was written by another version or edited") from None
    page = html_page(f"embnas · {run.path().name}", body, refresh=None if metrics else refresh)
    target = run.path("report", PAGE)
    with atomic_write(target, "w") as handle:
        handle.write(page)
    return target


def html_page(title: str, body: str, *, refresh: int | None = None) -> str:
    """A whole page around ``body`` (HTML): the styles inline, reloading every ``refresh`` seconds if given."""
    head = f'<meta http-equiv="refresh" content="{int(refresh)}">' if refresh else ""
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">{head}<title>{_e(title)}</title>"
            f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><style>{_STYLE}</style></head>"
            f"<body><main>{body}</main></body></html>\n")


def watch(folder: str | Path, *, every: float = 15.0, rewrite: Callable[[str | Path], Any] | None = None) -> Path:
    """Rewrite the report every ``every`` seconds until the run logs that it is done; returns the page.

    ``rewrite`` writes the report (default :func:`write_page`; the command passes
    :func:`nas.app.report.write_report`, which adds the pictures once there is an allocation).
    """
    rewrite = rewrite or write_page
    run = Run(folder)
    while True:
        done = any(True for _ in run.events("done"))
        rewrite(folder)
        if done:
            return run.path("report", PAGE)
        time.sleep(max(0.5, every))


# -- the finished run ----------------------------------------------------------------------------
def _finished(run: Run, metrics: dict[str, Any], config: dict[str, Any], events: list[dict[str, Any]],
              pictures: list[Path]) -> str:
    budget, allocation, data = metrics["budget"], metrics["allocation"], metrics.get("data") or {}
    exported = (metrics.get("export") or {}).get("bytes_stored")
    limit = budget.get("max_bytes")
    parts = [f"<h1>{_e(metrics['model'])} · {_e(metrics['controller'])} · {_e(budget.get('description', ''))}</h1>",
             f"<p class=\"sub\">run {_e(run.path().name)}, {_e(metrics['space'])}, finished in "
             f"{_duration(metrics.get('seconds', 0))}</p>"]
    cards = [("data", _data_line(data)), ("budget", f"{_e(budget.get('description', ''))}, {_int(limit)} bytes"),
             ("kept", f"{_int(allocation['values'])} values, retain {allocation['retain_ratio']:.4f}"),
             ("export", _export_line(exported, limit)), ("controller", _e(metrics["controller"])),
             ("evaluator", _e(metrics.get("evaluator", "")))]
    parts.append('<div class="cards">' + "".join(f'<div class="card"><b>{k}</b><span>{v}</span></div>' for k, v in cards)
                 + "</div>")

    split, metric = _headline(metrics)
    parts.append("<section><h2>Quality against memory</h2>" + _front(metrics, split, metric) + "</section>")
    parts.append("<section><h2>Metrics</h2>" + _metrics_table(metrics) + "</section>")
    for picture in (path for path in pictures if path.is_file()):
        heading = {"allocation.png": "Where the budget went", "fitness.png": "Fitness over trials"}.get(picture.name, picture.stem)
        data_uri = "data:image/png;base64," + base64.b64encode(picture.read_bytes()).decode("ascii")
        parts.append(f'<section><h2>{_e(heading)}</h2><img alt="{_e(heading)}" src="{data_uri}"></section>')
    curves = _curves(events)
    if curves:
        parts.append("<section><h2>Training</h2><div class=\"charts\">" + curves + "</div></section>")
    timing = metrics.get("timing") or {}
    if timing:
        rows = "".join(f"<tr><td>{_e(stage)}</td><td>{_duration(seconds)}</td></tr>" for stage, seconds in timing.items())
        parts.append(f"<section><h2>Time</h2><table><tr><th>stage</th><th>time</th></tr>{rows}</table></section>")
    parts.append("<section><h2>Configuration</h2><details><summary>config.json</summary><pre>"
                 + _e(json.dumps(config, indent=1)) + "</pre></details></section>")
    return "".join(parts)


def headline_metric(names: Iterable[str]) -> str:
    """The metric a front shows among ``names``: NDCG@20 for top-k, AUC for clicks, else the first one."""
    names = [name for name in names if name != "users"]
    return next((preferred for preferred in ("ndcg@20", "auc") if preferred in names), names[0] if names else "")


def _headline(metrics: dict[str, Any]) -> tuple[str, str]:
    """The split and metric the front shows: test split, :func:`headline_metric`."""
    allocated = metrics.get("allocated") or {}
    split = "test" if "test" in allocated else next(iter(allocated), "valid")
    return split, headline_metric(allocated.get(split) or {})


def _front(metrics: dict[str, Any], split: str, metric: str) -> str:
    budget = metrics["budget"]
    full_bytes = sum(budget["rows"].values()) * budget["d_max"] * value_itemsize(budget.get("dtype", "float32"))
    points = []
    full = (metrics.get("full") or {}).get(split, {}).get(metric)
    if full is not None:
        points.append(("full", "full model (every row at d_max)", full_bytes, full))
    supernet = metrics.get("supernet") or {}
    at_full = (supernet.get(split) or {}).get(metric) if isinstance(supernet, dict) else None
    if at_full is not None:
        points.append(("supernet", f"the {supernet.get('kind', '')} supernet at full size", full_bytes, at_full))
    allocated = (metrics.get("allocated") or {}).get(split, {}).get(metric)
    exported = (metrics.get("export") or {}).get("bytes_stored") or budget.get("max_bytes")
    if allocated is not None and exported:
        points.append(("allocated", "this allocation (its export)", exported, allocated))
    if not points:
        return "<p>No metrics were recorded.</p>"
    series = [(label, [(x, y)], "points", name) for name, label, x, y in points]
    chart = svg_chart(series, x_label="bytes (log scale)", y_label=f"{split} {metric}", log_x=True,
                      vlines=[("budget", budget["max_bytes"])] if budget.get("max_bytes") else [])
    table = "".join(f"<tr><td>{_e(label)}</td><td>{_int(x)}</td><td>{y:.4f}</td></tr>" for _, label, x, y in points)
    return (f'<div class="charts">{chart}<table><tr><th></th><th>bytes</th><th>{_e(split)} {_e(metric)}</th></tr>'
            f"{table}</table></div>")


def _metrics_table(metrics: dict[str, Any]) -> str:
    full, allocated = metrics.get("full") or {}, metrics.get("allocated") or {}
    rows = []
    for split in ("test", "valid"):
        for name, value in (allocated.get(split) or {}).items():
            if name == "users":
                continue
            reference = (full.get(split) or {}).get(name)
            ratio = f"{value / reference:.3f}" if reference else ""
            ref = f"{reference:.4f}" if reference is not None else ""
            rows.append(f"<tr><td>{_e(split)} {_e(name)}</td><td>{ref}</td><td>{value:.4f}</td><td>{ratio}</td></tr>")
    return ("<table><tr><th>metric</th><th>full</th><th>allocated</th><th>ratio</th></tr>" + "".join(rows) + "</table>")


def _curves(events: list[dict[str, Any]]) -> str:
    charts = []
    for event in events:
        curve = event.get("curve") if event["event"] == "trained" else None
        if not curve:
            continue
        name = event["stage"] + (f" {event['allocation']}" if event.get("allocation") else "")
        loss = [(e, l) for e, l, _ in curve]
        valid = [(e, q) for e, _, q in curve if q is not None]
        charts.append(svg_chart([("validation quality", valid, "line", "valid")], x_label="epoch",
                                y_label="validation quality", title=name) if valid else "")
        charts.append(svg_chart([("training loss", loss, "line", "loss")], x_label="epoch", y_label="loss", title=name))
    return "".join(charts)


# -- a run still going -------------------------------------------------------------------------
def _progress(run: Run, config: dict[str, Any], events: list[dict[str, Any]]) -> str:
    setting = (config.get("config") or {}) if isinstance(config, dict) else {}
    trials = [e for e in events if e["event"] == "trial"]
    trained = [e for e in events if e["event"] == "trained"]
    last = events[-1] if events else None
    stage = _stage(events)
    parts = [f"<h1>{_e(setting.get('model', ''))} · {_e(setting.get('controller', ''))} · budget {_e(setting.get('budget', ''))}</h1>",
             f"<p class=\"sub\">run {_e(run.path().name)}: <b>{_e(stage)}</b>"
             + (f", last event {_ago(last['time'])}" if last and "time" in last else "")
             + ". This page reloads itself; <code>embnas report RUN --watch</code> keeps it current.</p>"]
    best = max((t["fitness"] for t in trials), default=None)
    cards = [("trials measured", f"{len(trials):,}" + (f" of {setting['trials']:,}" if setting.get("trials") else "")),
             ("best fitness", f"{best:.4f}" if best is not None else "–"),
             ("trainings finished", f"{len(trained):,}"), ("events", f"{len(events):,}")]
    parts.append('<div class="cards">' + "".join(f'<div class="card"><b>{k}</b><span>{v}</span></div>' for k, v in cards)
                 + "</div>")
    if len(trials) > 1:
        points = [(t["trial"], t["fitness"]) for t in trials]
        best_so_far, top = [], -math.inf
        for x, y in sorted(points):
            top = max(top, y)
            best_so_far.append((x, top))
        parts.append("<section><h2>Fitness over trials</h2>" + svg_chart(
            [("candidate", points, "points", "trial"), ("best so far", best_so_far, "line", "best")],
            x_label="trial", y_label="fitness") + "</section>")
    curves = _curves(events)
    if curves:
        parts.append("<section><h2>Training</h2><div class=\"charts\">" + curves + "</div></section>")
    return "".join(parts)


def _stage(events: list[dict[str, Any]]) -> str:
    if not events:
        return "starting"
    kinds = [e["event"] for e in events]
    if "done" in kinds:
        return "done"
    if "searched" in kinds:
        return "retraining the top candidates"
    if "trial" in kinds:
        return "searching"
    return "training the reference and the supernet"


# -- the SVG charts ------------------------------------------------------------------------------
def svg_chart(series: Sequence[tuple[str, Sequence[tuple[float, ...]], str, str]], *, x_label: str, y_label: str,
              title: str = "", log_x: bool = False, vlines: Sequence[tuple[str, float]] = (),
              hlines: Sequence[tuple[str, float]] = ()) -> str:
    """An inline SVG chart: each series ``(label, points, "line" | "points", name)``.

    A point is ``(x, y)`` or ``(x, y, err)``, drawn with a bar of ``± err``.  Every point is
    a ``<circle data-point="name">`` (lines too, so a test or a reader finds them), with a
    ``<title>`` shown on hover; ``vlines`` and ``hlines`` are labelled dashed markers.
    """
    xs = [p[0] for _, pts, _, _ in series for p in pts] + [x for _, x in vlines]
    ys = ([p[1] for _, pts, _, _ in series for p in pts] + [y for _, y in hlines]
          + [p[1] + sign * p[2] for _, pts, _, _ in series for p in pts if len(p) > 2 and math.isfinite(p[2])
             for sign in (-1, 1)])
    if not xs or not ys:
        return ""
    fx = (lambda v: math.log10(max(v, 1e-300))) if log_x else float
    x0, x1 = _span([fx(x) for x in xs])
    y0, y1 = _span(ys)
    left, right, top, bottom = 64, 16, 26 if title else 12, 42
    w, h = _WIDTH - left - right, _HEIGHT - top - bottom
    height = _HEIGHT + 8 + 16 * len(series)  # the legend sits under the axis label

    def px(x: float) -> float:
        return left + (fx(x) - x0) / (x1 - x0) * w

    def py(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * h

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{height}" viewBox="0 0 {_WIDTH} {height}" role="img">']
    if title:
        out.append(f'<text x="{left}" y="16" font-weight="600">{_e(title)}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#c9ced8"/>')
    for value in _ticks(y0, y1):
        out.append(f'<line x1="{left}" x2="{left + w}" y1="{py(value):.1f}" y2="{py(value):.1f}" stroke="#eef0f4"/>'
                   f'<text x="{left - 6}" y="{py(value) + 4:.1f}" text-anchor="end">{_tick(value)}</text>')
    for value in (_log_ticks(x0, x1) if log_x else _ticks(x0, x1)):
        out.append(f'<text x="{px(value):.1f}" y="{top + h + 16}" text-anchor="middle">{_tick(value)}</text>')
    out.append(f'<text x="{left + w / 2}" y="{_HEIGHT - 6}" text-anchor="middle">{_e(x_label)}</text>'
               f'<text transform="translate(14 {top + h / 2}) rotate(-90)" text-anchor="middle">{_e(y_label)}</text>')
    for label, x in vlines:
        out.append(f'<line x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{top}" y2="{top + h}" stroke="#888" stroke-dasharray="4 3"/>'
                   f'<text x="{px(x) + 4:.1f}" y="{top + h - 6}" fill="#555">{_e(label)}</text>')
    for label, y in hlines:
        out.append(f'<line x1="{left}" x2="{left + w}" y1="{py(y):.1f}" y2="{py(y):.1f}" stroke="#333" stroke-dasharray="6 3"/>'
                   f'<text x="{left + w - 4}" y="{py(y) - 4:.1f}" text-anchor="end">{_e(label)} {y:.4f}</text>')
    for k, (label, points, kind, name) in enumerate(series):
        colour = _COLOURS[k % len(_COLOURS)]
        if kind == "line" and len(points) > 1:
            path = " ".join(f"{px(p[0]):.1f},{py(p[1]):.1f}" for p in sorted(points))
            out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.6"/>')
        radius = 2 if kind == "line" and not any(len(p) > 2 for p in points) else 4
        for point in points:
            x, y = point[0], point[1]
            err = point[2] if len(point) > 2 and math.isfinite(point[2]) else None
            if err:
                out.append(f'<line x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{py(y - err):.1f}" y2="{py(y + err):.1f}" '
                           f'stroke="{colour}" stroke-width="1.2"/>')
            spread = f" ± {err:.4f}" if err else ""
            out.append(f'<circle data-point="{_e(name)}" cx="{px(x):.1f}" cy="{py(y):.1f}" r="{radius}" fill="{colour}">'
                       f"<title>{_e(label)}: {_tick(x)}, {y:.4f}{spread}</title></circle>")
        out.append(f'<circle cx="{left + 6}" cy="{_HEIGHT + 8 + 16 * k}" r="4" fill="{colour}"/>'
                   f'<text x="{left + 14}" y="{_HEIGHT + 12 + 16 * k}">{_e(label)}</text>')
    out.append("</svg>")
    return "".join(out)


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round values (1, 2 or 5 times a power of ten apart) between ``low`` and ``high``."""
    raw = (high - low) / max(1, count - 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step)
    return [k * step for k in range(first, int(math.floor(high / step)) + 1)]


def _log_ticks(low: float, high: float) -> list[float]:
    """1, 2 and 5 times the powers of ten between ``10**low`` and ``10**high`` (as values, not logs)."""
    for multiples in ((1, 2, 5), (1, 1.5, 2, 3, 4, 5, 7)):  # the finer set for a range of less than a decade
        values = [m * 10.0**e for e in range(math.floor(low), math.ceil(high) + 1) for m in multiples]
        inside = [v for v in values if low <= math.log10(v) <= high]
        if len(inside) >= 3:
            break
    return inside if len(inside) <= 7 else [v for v in inside if str(v).startswith("1")]


def _span(values: Sequence[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    pad = (high - low) * 0.08 or (abs(high) * 0.05 or 1.0)
    return low - pad, high + pad


def _tick(value: float) -> str:
    magnitude = abs(value)
    if magnitude >= 1e6:
        return f"{value / 1e6:.3g}M"
    if magnitude >= 1e3:
        return f"{value / 1e3:.3g}k"
    return f"{value:.3g}"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _int(value: Any) -> str:
    return f"{int(value):,}" if isinstance(value, (int, float)) else "–"


def _duration(seconds: float) -> str:
    seconds = float(seconds)
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _ago(when: float) -> str:
    return f"{_duration(max(0.0, time.time() - float(when)))} ago"


def _data_line(data: dict[str, Any]) -> str:
    if "users" in data:
        return f"{_e(data.get('name', ''))}: {_int(data['users'])} users, {_int(data.get('items'))} items"
    return _e(data.get("name", ""))


def _export_line(exported: Any, limit: Any) -> str:
    if not isinstance(exported, int) or not isinstance(limit, int):
        return "–"
    verdict = "ok" if exported <= limit else "over"
    return f'<span class="{verdict}">{exported:,} bytes ({exported / limit:.1%} of the budget)</span>'
