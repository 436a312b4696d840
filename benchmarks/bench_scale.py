"""How the per-feature search and the export scale with the number of rows: time and peak memory per stage.

For each size in ``--rows`` (rows over a user/item layout, 40/60 %, power-law frequencies),
a fresh process runs every stage once and reports its wall time and its peak resident
memory above what the process held before the stage (Linux: the peak is reset through
``/proc/self/clear_refs`` before each stage and read from ``VmHWM``):

    frequencies   the synthetic frequencies (setup)
    space         the per-feature space and its frequency order
    sample        one random feasible allocation (``space.sample``)
    project       the projection of a uniform random proposal onto the budget
    <controller>  construction, one ``ask`` and one ``tell``, for each of ``--controllers``
    allocation    ``space.allocation`` of the projected decisions, ``Allocation.save`` and ``load``
    export        ``export_tables`` of float32 tables under the allocation (d_max ``--export-d-max``)
    load          ``PackedEmbedding.load`` of that export, then a lookup of 65,536 ids

The export needs the full-size tables in memory (rows × d_max float32), so it runs at a
small ``--export-d-max`` (8 by default: 3.2 GB at 10⁸ rows) under its own budget
(``--export-sparsity``).

    python benchmarks/bench_scale.py --rows 1000000 10000000 100000000

Prints one table and one JSON line per size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np


def _rss_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def measure(name: str, call: Callable[[], Any], results: dict[str, dict[str, float]]) -> Any:
    """Run ``call`` once; record its seconds and its peak memory above the memory held before it."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")  # reset VmHWM to the current RSS
    except OSError:
        pass
    before = _rss_kib("VmRSS")
    start = time.perf_counter()
    value = call()
    seconds = time.perf_counter() - start
    peak = _rss_kib("VmHWM")
    results[name] = {"seconds": seconds, "peak_mib": max(0, peak - before) / 1024, "process_peak_mib": peak / 1024}
    print(f"  {name:<22}{seconds:>9.2f} s {results[name]['peak_mib']:>10,.0f} MiB", file=sys.stderr, flush=True)
    return value


def ask_and_tell(controller_class: Any, space: Any, budget: Any) -> None:
    controller = controller_class(space, budget, seed=0)
    controller.tell(controller.ask(1), [0.5])


def allocation_round_trip(space: Any, decisions: np.ndarray, path: Path) -> Any:
    from nas.core.allocation import Allocation

    space.allocation(decisions).save(path)
    return Allocation.load(path)


def one_size(rows: int, args: argparse.Namespace) -> dict[str, Any]:
    """Every stage at ``rows`` rows, in this process."""
    import torch

    from nas import CONTROLLERS
    from nas.artifact.export import export_tables
    from nas.artifact.serving import PackedEmbedding
    from nas.core.budget import Budget
    from nas.testing.data import synthetic_fields
    from search_spaces.per_feature import PerFeatureSpace

    torch.set_num_threads(1)
    layout = {"user": int(rows * 0.4), "item": rows - int(rows * 0.4)}
    results: dict[str, dict[str, float]] = {}
    fields = measure("frequencies", lambda: synthetic_fields(layout, exponent=1.1, interactions=5 * rows, seed=0), results)
    budget = Budget.from_sparsity(args.sparsity, layout, args.d_max, 1)

    def build_space() -> PerFeatureSpace:
        space = PerFeatureSpace(fields.tables, fields.frequencies, 1, args.d_max)
        space.frequency_order()
        return space

    space = measure("space", build_space, results)
    rng = np.random.default_rng(0)
    measure("sample", partial(space.sample, rng, budget), results)
    decisions = measure("project", partial(space.project, rng.uniform(0, args.d_max, space.n_decisions), budget), results)
    for name in args.controllers:
        measure(name, partial(ask_and_tell, CONTROLLERS.get(name), space, budget), results)

    with tempfile.TemporaryDirectory(prefix="bench-scale-", dir=args.scratch) as scratch:
        path = Path(scratch) / "allocation.npz"
        measure("allocation", partial(allocation_round_trip, space, decisions, path), results)
        allocation_bytes = path.stat().st_size
        del decisions, space

        export_budget = Budget.from_sparsity(args.export_sparsity, layout, args.export_d_max, 1)
        export_space = PerFeatureSpace(fields.tables, fields.frequencies, 1, args.export_d_max)
        export_allocation = export_space.allocation(export_space.project(
            np.log1p(np.concatenate([fields.frequencies[n] for n in layout])), export_budget))
        del export_space
        generator = torch.Generator().manual_seed(0)
        weights = {name: torch.randn(n, args.export_d_max, generator=generator) for name, n in layout.items()}
        folder = Path(scratch) / "export"
        manifest = measure("export", partial(export_tables, folder, weights, export_allocation, export_budget), results)
        del weights, export_allocation
        ids = torch.randint(0, layout["item"], (65_536,), generator=generator)

        def load_and_look_up() -> int:
            table = PackedEmbedding.load(folder)
            table.lookup("item", ids)
            return table.memory_bytes()

        served_bytes = measure("load", load_and_look_up, results)
    return {"rows": rows, "d_max": args.d_max, "sparsity": args.sparsity, "stages": results,
            "allocation_file_bytes": allocation_bytes, "export_bytes": manifest["bytes_stored"],
            "served_bytes": served_bytes, "peak_rss_mib": max(stage["process_peak_mib"] for stage in results.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--d-max", type=int, default=64)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--controllers", nargs="*", default=["frequency", "random", "shape"])
    parser.add_argument("--export-d-max", type=int, default=8)
    parser.add_argument("--export-sparsity", type=float, default=0.8)
    parser.add_argument("--scratch", default=None, help="folder for the allocation file and the export (default: the system's)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child process: one size
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_size(args.one, args)))
        return

    rows_done = []
    for rows in args.rows:
        print(f"{rows:,} rows", file=sys.stderr, flush=True)
        argv = [sys.executable, __file__, "--one", str(rows), "--d-max", str(args.d_max), "--sparsity", str(args.sparsity),
                "--export-d-max", str(args.export_d_max), "--export-sparsity", str(args.export_sparsity),
                "--controllers", *args.controllers] + (["--scratch", args.scratch] if args.scratch else [])
        done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        sys.stderr.write(done.stderr)
        if done.returncode:
            print(f"{rows:,} rows failed (exit {done.returncode})", file=sys.stderr)
            continue
        rows_done.append(json.loads(done.stdout.strip().splitlines()[-1]))
    if not rows_done:
        return
    stages = list(rows_done[0]["stages"])
    print(f"\nseconds (peak MiB above the stage's start), d_max {args.d_max}, sparsity {args.sparsity}; "
          f"export at d_max {args.export_d_max}, sparsity {args.export_sparsity}; one thread")
    print(f"{'stage':<14}" + "".join(f"{r['rows']:>24,}" for r in rows_done))
    for stage in stages:
        cells = [r["stages"].get(stage) for r in rows_done]
        print(f"{stage:<14}" + "".join(f"{c['seconds']:>12.2f} ({c['peak_mib']:>7,.0f})" if c else f"{'-':>24}" for c in cells))
    for label, key in (("allocation file", "allocation_file_bytes"), ("export", "export_bytes"), ("served", "served_bytes")):
        print(f"{label + ' bytes':<14}" + "".join(f"{r[key]:>24,}" for r in rows_done))
    print(f"{'process peak':<14}" + "".join(f"{r['peak_rss_mib']:>20,.0f} MiB" for r in rows_done))
    for record in rows_done:
        print(json.dumps(record))


if __name__ == "__main__":
    main()
