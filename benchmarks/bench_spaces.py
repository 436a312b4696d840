"""Sample and project times of every search space on one layout, side by side, in one run.

Builds ``--fields`` tables holding ``--rows`` rows in all (two fields: a CF user/item
split of 40/60 %; more: CTR-like cardinalities falling geometrically) with power-law
frequencies (:mod:`nas.testing.data`), a budget at ``--sparsity``, and times for each
space ``sample`` and ``project`` (of a uniform random proposal), plain and with
``monotone=True``.  The baseline is a straightforward projection, :func:`legacy_project`
(64 bisection steps over the whole array and a full lexsort in the top-up), timed on the
per-feature decisions in the same run; ratios are baseline time / new time.

    python benchmarks/bench_spaces.py --rows 1000000 --fields 2 --repeat 5

Times are the median (and min) of ``--repeat`` interleaved rounds, in seconds: the
machine may be shared.  Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import numpy as np

from nas.core.budget import Budget
from nas.core.space import SearchSpace
from nas.testing.data import synthetic_fields
from search_spaces import SPACES


def legacy_project(decisions: np.ndarray, weights: np.ndarray, grid: np.ndarray, capacity: int) -> np.ndarray:
    """The straightforward projection (bisection, full lexsort; no fill check or errors): the baseline."""
    x = np.asarray(decisions, dtype=np.float64)
    lowest, highest = int(grid[0]), int(grid[-1])
    if int(weights.sum()) * highest <= capacity:
        return np.full(len(x), highest, dtype=np.int64)
    w = weights.astype(np.float64)
    low, high = 0.0, highest / x[x > 0].min()
    for _ in range(64):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if w @ np.clip(mid * x, lowest, highest) <= capacity else (low, mid)
    target = np.clip(low * x, lowest, highest)
    index = np.searchsorted(grid, target, side="right") - 1
    values = grid[index]
    residue, gap, last = target - values, capacity - int(weights @ values), len(grid) - 1
    while gap > 0:
        movable = np.flatnonzero(index < last)
        step_cost = weights[movable] * (grid[index[movable] + 1] - grid[index[movable]])
        movable, step_cost = movable[step_cost <= gap], step_cost[step_cost <= gap]
        if movable.size == 0:
            break
        order = np.lexsort((movable, -x[movable], -residue[movable]))
        chosen = order[np.cumsum(step_cost[order]) <= gap]
        picked = movable[chosen]
        gap -= int(step_cost[chosen].sum())
        index[picked] += 1
        values[picked] = grid[index[picked]]
        residue[picked] = 0.0
    return values


def layout_rows(total: int, fields: int) -> dict[str, int]:
    """Two fields: user/item 40/60 %; more: cardinalities falling by half per field, summing to ``total``."""
    if fields == 2:
        return {"user": int(total * 0.4), "item": total - int(total * 0.4)}
    shares = 0.5 ** np.arange(fields)
    rows = np.maximum(1, np.floor(total * shares / shares.sum()).astype(np.int64))
    rows[0] += total - int(rows.sum())
    return {f"f{i}": int(n) for i, n in enumerate(rows)}


def time_rounds(calls: dict[str, Callable[[], object]], repeat: int) -> dict[str, dict[str, float]]:
    """Median and min seconds of each call over ``repeat`` interleaved rounds (after one warm-up call each)."""
    for call in calls.values():
        call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeat):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            samples[name].append(time.perf_counter() - start)
    return {name: {"median_s": statistics.median(s), "min_s": min(s)} for name, s in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows over all fields")
    parser.add_argument("--fields", type=int, default=2)
    parser.add_argument("--d-max", type=int, default=64)
    parser.add_argument("--d-min", type=int, default=1)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--groups", type=int, default=16, help="G of the block space")
    parser.add_argument("--blocks", type=int, default=16, help="B of the block space (width d_max/B must fit the budget)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rows = layout_rows(args.rows, args.fields)
    fields = synthetic_fields(rows, exponent=1.1, interactions=5 * args.rows, seed=args.seed)
    budget = Budget.from_sparsity(args.sparsity, rows, args.d_max, args.d_min)
    options = {"per-feature": {}, "per-field": {}, "block": {"groups": args.groups, "blocks": args.blocks}}
    spaces: dict[str, SearchSpace] = {}
    setup: dict[str, dict[str, float]] = {}
    for name, extra in options.items():
        start = time.perf_counter()
        spaces[name] = SPACES.get(name)(fields.tables, fields.frequencies, args.d_min, args.d_max, **extra)
        built = time.perf_counter() - start
        start = time.perf_counter()
        spaces[name].frequency_order()
        setup[name] = {"build_s": built, "frequency_order_s": time.perf_counter() - start}

    rng = np.random.default_rng(args.seed)
    raw = {name: rng.uniform(0, args.d_max, space.n_decisions) for name, space in spaces.items()}
    calls: dict[str, Callable[[], object]] = {}
    for name, space in spaces.items():
        calls[f"{name}/sample"] = lambda s=space: s.sample(rng, budget)
        calls[f"{name}/project"] = lambda s=space, x=raw[name]: s.project(x, budget)
        calls[f"{name}/project-monotone"] = lambda s=space, x=raw[name]: s.project(x, budget, monotone=True)
    feature = spaces["per-feature"]
    calls["baseline/per-feature-project"] = lambda: legacy_project(
        raw["per-feature"], feature.weights, feature.grid, budget.max_values
    )
    times = time_rounds(calls, args.repeat)

    baseline = times["baseline/per-feature-project"]["median_s"]
    print(f"{args.rows:,} rows in {len(rows)} fields, d in [{args.d_min}, {args.d_max}], {budget.describe()} "
          f"({budget.max_values:,} values); median (min) of {args.repeat} rounds")
    header = f"{'space':<12}{'decisions':>11}{'build s':>9}{'order s':>9}   "
    print(header + f"{'sample s':>16}{'project s':>16}{'monotone s':>16}  fill")
    results = {}
    for name, space in spaces.items():
        cells = [times[f"{name}/{kind}"] for kind in ("sample", "project", "project-monotone")]
        spent = space.cost(space.project(raw[name], budget)) / budget.max_values
        print(f"{name:<12}{space.n_decisions:>11,}{setup[name]['build_s']:>9.3f}{setup[name]['frequency_order_s']:>9.3f}   "
              + "".join(f"{c['median_s']:>9.4f} ({c['min_s']:.3f})" for c in cells) + f"  {spent:.4f}")
        results[name] = {"decisions": space.n_decisions, **setup[name], "fill": spent,
                         **{kind: times[f"{name}/{kind}"] for kind in ("sample", "project", "project-monotone")}}
    print(f"baseline per-feature project (former algorithm): {baseline:.4f} s; "
          f"new/baseline ratio {times['per-feature/project']['median_s'] / baseline:.3f} "
          f"({baseline / times['per-feature/project']['median_s']:.1f}x faster)")
    print(json.dumps({"benchmark": "spaces", "rows": args.rows, "fields": len(rows), "d_min": args.d_min, "d_max": args.d_max,
                      "sparsity": args.sparsity, "max_values": budget.max_values, "repeat": args.repeat,
                      "baseline_project_s": times["baseline/per-feature-project"], "spaces": results}))


if __name__ == "__main__":
    main()
