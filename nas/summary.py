"""The table printed at the end of a run: what the budget bought, side by side with the full model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["summary_table"]


def _rows_to_text(rows: list[tuple[str, str]]) -> str:
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"  {key.ljust(width)}  {value}" for key, value in rows)


def summary_table(metrics: Mapping[str, Any]) -> str:
    """A plain-text summary of a run's ``metrics.json``."""
    budget, allocation = metrics["budget"], metrics["allocation"]
    full, allocated = metrics["full"]["test"], metrics["allocated"]["test"]
    sizes = ", ".join(
        f"{name} mean {stats['mean']:.2f} [{stats['min']}-{stats['max']}]" for name, stats in allocation["tables"].items()
    )
    facts = [
        ("run", metrics["run"]),
        ("data", f"{metrics['data']['name']}: {metrics['data']['users']:,} users, {metrics['data']['items']:,} items"),
        ("search", f"{metrics['controller']} controller, {metrics['space']} space"),
        ("budget", f"{budget['description']}: at most {budget['max_values']:,} values, {budget['max_bytes']:,} bytes"),
        ("used", f"{allocation['values']:,} values ({allocation['budget_used']:.1%} of the budget, "
                 f"retain ratio {allocation['retain_ratio']:.4f}), {metrics['export']['bytes_stored']:,} bytes exported"),
        ("row sizes", sizes),
        *([("decisions", " ".join(str(v) for v in allocation["decisions"]))] if allocation.get("decisions") else []),
        ("time", f"{metrics['seconds']:.1f} s"),
    ]
    header = f"  {'test metric':<12}{'full':>10}{'allocated':>11}{'ratio':>8}"
    lines = [header, "  " + "-" * (len(header) - 2)]
    for key in ("recall@20", "ndcg@20", "recall@10", "ndcg@10"):
        if key in full and key in allocated:
            ratio = allocated[key] / full[key] if full[key] else float("nan")
            lines.append(f"  {key:<12}{full[key]:>10.4f}{allocated[key]:>11.4f}{ratio:>8.3f}")
    return _rows_to_text(facts) + "\n\n" + "\n".join(lines)
