"""Lookup throughput of the served layouts against a dense ``nn.Embedding``, in one run.

Builds one table of ``--rows × --dim`` values, an allocation at ``--sparsity`` (row sizes
falling with frequency rank, as a searched allocation would give), exports it, loads it
with :class:`nas.artifact.serving.PackedEmbedding` in each layout (``packed`` with its
compiled gather, ``packed-eager`` in eager torch, ``tiered``, ``dense``) and times lookups
of the same ids, drawn both uniformly and with a power-law (Zipf) skew.  Each way is timed
in alternation with the dense ``nn.Embedding``, so that both see the same machine load,
and one way at a time, so that no way's memory traffic lands on another's timing; the
``nn.Emb`` column is the median of those baselines.  Prints a table, the serving memory of
each layout against the budget's bytes, and a JSON line.

The tiered layout does work per distinct row size, so ``--sizes`` also times allocations of
the same budget whose sizes are rounded down to multiples of 4 (``mult4``) or to powers of
two (``pow2``): fewer distinct sizes, fewer tiers.

    python benchmarks/bench_lookup.py --rows 100000 --dim 64 --sparsity 0.9 --batch 4096 65536

Ratios are a layout's throughput / dense throughput (1.0 = as fast as dense), from the median
of ``--repeat`` samples (the minimum is printed too: the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nas.core.allocation import Allocation
from nas.core.budget import Budget
from nas.pipeline.embedding import MaskableEmbedding
from nas.artifact.export import export_tables
from nas.artifact.serving import PackedEmbedding


#: How ``--sizes`` rounds a row size down (before clipping to [d_min, d_max]): fewer distinct sizes, fewer tiers.
ROUNDINGS = {
    "freq": lambda size: size,
    "mult4": lambda size: np.floor(size / 4) * 4,
    "pow2": lambda size: np.exp2(np.floor(np.log2(np.maximum(size, 1.0)))),
}


def frequency_allocation(rows: int, budget: Budget, exponent: float = 0.5, rounding: str = "freq") -> Allocation:
    """Row sizes proportional to ``(rank + 1) ** -exponent``, rounded, clipped to [d_min, d_max], at most the budget."""
    weight = (np.arange(rows) + 1.0) ** -exponent
    round_down = ROUNDINGS[rounding]

    def dims(scale: float) -> np.ndarray:
        return np.clip(round_down(np.floor(scale * weight)), budget.d_min, budget.d_max).astype(np.int64)

    low, high = 0.0, float(budget.d_max) / weight[-1]
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if dims(mid).sum() <= budget.max_values else (low, mid)
    return Allocation({"item": dims(low)})


def draw_ids(kind: str, rows: int, batch: int, generator: torch.Generator, zipf: float) -> torch.Tensor:
    if kind == "uniform":
        return torch.randint(0, rows, (batch,), generator=generator)
    # Zipf: id r is drawn with probability ∝ (r + 1) ** -zipf; low ids are the frequent, wide rows.
    probability = (torch.arange(rows, dtype=torch.float64) + 1.0) ** -zipf
    return torch.multinomial(probability, batch, replacement=True, generator=generator)


def time_side_by_side(calls: dict[str, callable], repeat: int, target_s: float = 2e-3) -> dict[str, dict[str, float]]:
    """Median and min seconds per call of each function, sampled in interleaved rounds.

    Each timed block starts after one untimed call, so that every way is timed with its own
    tables in the caches, as in a process that serves only it, rather than right after the
    other ways evicted them.
    """
    for call in calls.values():
        for _ in range(3):
            call()
    start = time.perf_counter()
    next(iter(calls.values()))()
    inner = max(1, int(target_s / max(time.perf_counter() - start, 1e-7)))
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeat):
        for name, call in calls.items():
            call()
            start = time.perf_counter()
            for _ in range(inner):
                call()
            samples[name].append((time.perf_counter() - start) / inner)
    return {name: {"median_s": statistics.median(s), "min_s": min(s)} for name, s in samples.items()}


#: The ways of serving timed: name -> keyword arguments of ``PackedEmbedding.load``.
LAYOUTS = {
    "packed": {"layout": "packed", "native": True},
    "packed-eager": {"layout": "packed", "native": False},
    "tiered": {"layout": "tiered"},
    "dense": {"layout": "dense"},
}


def measure(args: argparse.Namespace, budget: Budget, rounding: str, generator: torch.Generator) -> tuple[list[dict], dict]:
    """Time every layout of one allocation against a dense ``nn.Embedding``; return the rows and the sizes."""
    allocation = frequency_allocation(args.rows, budget, rounding=rounding)
    model = MaskableEmbedding({"item": args.rows}, args.dim, seed=args.seed)
    dense = nn.Embedding(args.rows, args.dim)
    with torch.no_grad():
        dense.weight.copy_(model.weights["item"])
    dense.requires_grad_(False)

    with tempfile.TemporaryDirectory() as tmp:
        manifest = export_tables(Path(tmp) / "export", model, allocation, budget)
        served = {name: PackedEmbedding.load(Path(tmp) / "export", **LAYOUTS[name]) for name in args.layouts}
    model.set_allocation(allocation)
    tiers = len(np.unique(allocation.row_dims["item"]))

    results = []
    with torch.no_grad():
        for batch in args.batch:
            for kind in ("uniform", "zipf"):
                ids = draw_ids(kind, args.rows, batch, generator, args.zipf)
                expected = model.lookup("item", ids).view(torch.int32)
                for layout, table in served.items():
                    assert torch.equal(table.lookup("item", ids).view(torch.int32), expected), f"{layout} lookup is not exact"
                row = {"sizes": rounding, "tiers": tiers, "batch": batch, "ids": kind}
                baselines = []
                for layout, table in served.items():  # each way in alternation with nn.Embedding, one way at a time
                    timing = time_side_by_side({"nn.Embedding": lambda ids=ids: dense(ids),
                                                layout: lambda ids=ids, table=table: table.lookup("item", ids)}, args.repeat)
                    base = timing["nn.Embedding"]
                    baselines.append(base["median_s"])
                    row[f"{layout}_us"] = round(timing[layout]["median_s"] * 1e6, 1)
                    row[f"ratio_{layout}"] = round(base["median_s"] / timing[layout]["median_s"], 3)
                    row[f"ratio_{layout}_min"] = round(base["min_s"] / timing[layout]["min_s"], 3)
                row["embedding_us"] = round(statistics.median(baselines) * 1e6, 1)
                row["embedding_Mrows_s"] = round(batch / statistics.median(baselines) / 1e6, 1)
                results.append(row)
    sizes = {
        "sizes": rounding,
        "tiers": tiers,
        "values_kept": allocation.cost,
        "budget_max_values": budget.max_values,
        "bytes_stored": manifest["bytes_stored"],
        "budget_max_bytes": budget.max_bytes,
        "dense_bytes": args.rows * args.dim * 4,
        **{f"serving_memory_{layout}": table.memory_bytes() for layout, table in served.items()},
    }
    return results, sizes


def print_table(header: str, lines: list[str]) -> None:
    """A header, a rule under it and the lines."""
    print(header)
    print("-" * len(header))
    for line in lines:
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--d-min", type=int, default=1)
    parser.add_argument("--batch", type=int, nargs="+", default=[4096, 65536])
    parser.add_argument("--sizes", nargs="+", choices=list(ROUNDINGS), default=list(ROUNDINGS),
                        help="allocations to time: the frequency rule as is, or its sizes rounded down (same budget)")
    parser.add_argument("--layouts", nargs="+", choices=list(LAYOUTS), default=list(LAYOUTS), help="the ways of serving to time")
    parser.add_argument("--repeat", type=int, default=30, help="interleaved samples per measurement")
    parser.add_argument("--zipf", type=float, default=1.05, help="power-law exponent of the skewed ids")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    budget = Budget.from_sparsity(args.sparsity, {"item": args.rows}, args.dim, args.d_min)
    generator = torch.Generator().manual_seed(args.seed)
    results, sizes = [], []
    for rounding in args.sizes:
        rows, memory = measure(args, budget, rounding, generator)
        results += rows
        sizes.append(memory)

    print(f"rows={args.rows} dim={args.dim} sparsity={args.sparsity} threads={torch.get_num_threads()} "
          f"repeat={args.repeat} zipf={args.zipf}  (ratio = layout throughput / dense nn.Embedding throughput, "
          "median of the samples; min = ratio of the fastest samples)")
    print_table(f"{'sizes':>6} {'tiers':>5} {'batch':>7} {'ids':>8} {'nn.Emb us':>9} "
                + " ".join(f"{layout + ' us':>15} {'ratio':>6} {'(min)':>6}" for layout in args.layouts),
                [f"{row['sizes']:>6} {row['tiers']:>5} {row['batch']:>7} {row['ids']:>8} {row['embedding_us']:>9} "
                 + " ".join(f"{row[f'{layout}_us']:>15} {row[f'ratio_{layout}']:>6} {row[f'ratio_{layout}_min']:>6}"
                            for layout in args.layouts) for row in results])
    print()
    print(f"serving memory in bytes, and as a share of the budget's {budget.max_bytes:,} bytes:")
    print_table(f"{'sizes':>6} {'tiers':>5} {'values kept':>12} {'on disk':>11} " + " ".join(f"{layout:>19}" for layout in args.layouts),
                [f"{memory['sizes']:>6} {memory['tiers']:>5} {memory['values_kept']:>12,} {memory['bytes_stored']:>11,} "
                 + " ".join(f"{memory[f'serving_memory_{layout}']:>11,} "
                            f"({memory[f'serving_memory_{layout}'] / budget.max_bytes:.3f})" for layout in args.layouts)
                 for memory in sizes])
    print(json.dumps({"config": vars(args), "lookup": results, "sizes": sizes}))


if __name__ == "__main__":
    main()
