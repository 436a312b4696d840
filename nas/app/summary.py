"""The table printed at the end of a run: what the budget bought, side by side with the full model.

Top-k runs show Recall and NDCG at 20 and 10, click runs AUC and log loss (lower is
better: its ratio above 1 is a loss).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nas.core.accounting import export_byte_limit, masked_value_limit
from nas.pipeline.result import SearchResult

__all__ = ["summary_table"]


def _rows_to_text(rows: list[tuple[str, str]]) -> str:
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"  {key.ljust(width)}  {value}" for key, value in rows)


def summary_table(result: SearchResult) -> str:
    """A plain-text summary of a search's result."""
    allocation = result.allocation
    full, allocated = result.full_metrics["test"], result.metrics["test"]
    tables = allocation.summary()
    sizes = ", ".join(
        f"{name} mean {stats['mean']:.2f} [{stats['min']}-{stats['max']}]" for name, stats in tables.items()
    )
    exported = "exported" if result.run_dir is not None else "in the export"
    facts = [
        ("run", str(result.run_dir) if result.run_dir is not None else "in memory (no run folder)"),
        ("data", _data_text(result.data)),
        ("search", f"{result.controller} controller, {result.space} space"),
        ("budget", _budget_text(result)),
        ("used", f"{allocation.cost:,} values{_bits_text(result)} ({result.budget_used:.1%} of the budget, "
                 f"retain ratio {result.retain_ratio:.4f}), {result.export_bytes:,} bytes {exported}"),
        ("kept per row" if any(t["masked"] for t in tables.values()) else "row sizes", sizes),
        *([("precisions", _precisions_text(tables))] if allocation.row_precisions is not None else []),
        *([("decisions", " ".join(str(v) for v in result.decisions))] if result.decisions else []),
        *_search_facts(result),
        ("time", _time_text(result)),
    ]
    facts.append(("full", _REFERENCES.get(result.reference, result.reference)
                  + (f" (cached in {result.reference_dir})" if result.reference_dir is not None else "")))
    supernet = (result.supernet_metrics or {}).get("test") or {}
    if supernet:
        facts.append(("supernet", _REFERENCES.get(result.supernet or "", str(result.supernet)) + ", for comparison"))
    header = (f"  {'test metric':<12}{'full':>10}" + (f"{'supernet':>10}" if supernet else "")
              + f"{'allocated':>11}{'ratio':>8}")
    lines = [header, "  " + "-" * (len(header) - 2)]
    for key in _METRICS:
        if key in full and key in allocated:
            beside = f"{supernet[key]:>10.4f}" if key in supernet else (" " * 10 if supernet else "")
            lines.append(f"  {key:<12}{full[key]:>10.4f}{beside}{allocated[key]:>11.4f}{result.ratio(key):>8.3f}")
    return _rows_to_text(facts) + "\n\n" + "\n".join(lines)


#: What the "full" model of a result is, in words.
_REFERENCES = {
    "full": "a plainly trained full model (every row at d_max), same backbone, training and seed",
    "sandwich": "the sandwich-trained supernet with every row at d_max",
    "one-shot": "the supernet trained with the controller, every row at d_max and unmasked",
}

#: The test metrics shown, in order, of whichever task the run had.
_METRICS = ("recall@20", "ndcg@20", "recall@10", "ndcg@10", "auc", "logloss")


def _budget_text(result: SearchResult) -> str:
    """The budget and the limits that really apply to this allocation's export.

    An allocation with element masks stores a bit per value slot on top of the values:
    a value budget (sparsity, parameters) pays those bytes on top of its values, so the
    export may take more than the budget's own byte figure; a byte budget holds them
    within its bytes, leaving fewer values.  Both limits come from
    :mod:`nas.core.accounting`, as the export's check does.
    """
    budget = result.budget
    if budget.unit == "bits":
        stored = "values and scales" if budget.scales == "row" else "values (scales shared by size)"
        return (f"{budget.describe()}: at most {budget.max_bits:,} bits of {stored} at precisions "
                f"{', '.join(budget.precisions)}, {budget.max_bytes:,} bytes")
    if not result.allocation.element_masks:
        return f"{budget.describe()}: at most {budget.max_values:,} values, {budget.max_bytes:,} bytes"
    limit = export_byte_limit(budget, element_mask=True)
    values = masked_value_limit(budget)
    if budget.kind == "bytes":
        return f"{budget.describe()}: at most {values:,} values, {limit:,} bytes, element masks included"
    masks = limit - budget.max_bytes
    return (f"{budget.describe()}: at most {values:,} values, {limit:,} bytes with the element masks "
            f"(stored on top of a value budget: {budget.max_bytes:,} bytes of values and row sizes "
            f"+ {masks:,} bytes of masks)")


def _bits_text(result: SearchResult) -> str:
    """`` in N bits`` for an allocation with precisions (what a byte budget counts), else nothing."""
    allocation = result.allocation
    return f" in {allocation.bits(result.budget.scales):,} bits" if allocation.row_precisions is not None else ""


def _precisions_text(tables: Mapping[str, Mapping[str, Any]]) -> str:
    """Each table's share of rows at each precision: ``user int8 70%, int4 30%; item int4 100%``."""
    parts = []
    for name, stats in tables.items():
        counts = {p: c for p, c in stats.get("rows_at", {}).items() if c}
        total = sum(counts.values()) or 1
        parts.append(f"{name} " + ", ".join(f"{p} {c / total:.0%}" for p, c in counts.items()))
    return "; ".join(parts)


def _data_text(data: Mapping[str, Any]) -> str:
    if "fields" in data:  # click data
        return (f"{data['name']}: {data['fields']} fields, {data['rows']:,} table rows, "
                f"{data['train_rows']:,} train rows (click rate {data['train_click_rate']:.1%})")
    return f"{data['name']}: {data['users']:,} users, {data['items']:,} items"


def _search_facts(result: SearchResult) -> list[tuple[str, str]]:
    if not result.trials:
        return []
    trials = result.trials
    facts = [("trials", f"{trials} allocation{'s' if trials != 1 else ''} evaluated by the {result.evaluator} evaluator")]
    if result.fitness_driven:
        top = len({r.fingerprint for r in result.retrained})
        how = {"halving": "by successive halving", "finetune": "fine-tuned from the supernet, the best retrained"}.get(
            result.retrain, "by fitness") if top > 1 else "by fitness"
        facts.append(("retrained", f"top {top} {how}; chosen on validation: fitness {result.fitness:.4f}, "
                                   f"fingerprint {result.allocation.fingerprint()}"))
    else:
        facts.append(("fitness", f"{result.fitness:.4f} (the controller's proposal, retrained)"))
    return facts


def _time_text(result: SearchResult) -> str:
    timing = result.timings
    parts = ", ".join(f"{stage} {timing[stage]:.1f} s" for stage in ("reference", "supernet", "search", "retrain")
                      if stage in timing)
    return f"{result.seconds:.1f} s" + (f" ({parts})" if parts else "")
