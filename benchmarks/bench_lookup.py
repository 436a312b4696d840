"""Lookup throughput of the served packed table against a dense ``nn.Embedding``, in one run.

Builds one table of ``--rows × --dim`` values, an allocation at ``--sparsity`` (row sizes
falling with frequency rank, as a searched allocation would give), exports it, loads it
with :class:`nas.artifact.serving.PackedEmbedding` and times lookups of the same ids, drawn both
uniformly and with a power-law (Zipf) skew, interleaving dense and packed calls so that
both see the same machine load.  Prints a table and a JSON line.

    python benchmarks/bench_lookup.py --rows 100000 --dim 64 --sparsity 0.9 --batch 4096 65536

Ratios are packed throughput / dense throughput (1.0 = as fast as dense), from the median
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


def frequency_allocation(rows: int, budget: Budget, exponent: float = 0.5) -> Allocation:
    """Row sizes proportional to ``(rank + 1) ** -exponent``, clipped to [d_min, d_max], at most the budget."""
    weight = (np.arange(rows) + 1.0) ** -exponent

    def dims(scale: float) -> np.ndarray:
        return np.clip(np.floor(scale * weight), budget.d_min, budget.d_max).astype(np.int64)

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
    """Median and min seconds per call of each function, sampled in interleaved rounds."""
    for call in calls.values():
        for _ in range(3):
            call()
    start = time.perf_counter()
    next(iter(calls.values()))()
    inner = max(1, int(target_s / max(time.perf_counter() - start, 1e-7)))
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeat):
        for name, call in calls.items():
            start = time.perf_counter()
            for _ in range(inner):
                call()
            samples[name].append((time.perf_counter() - start) / inner)
    return {name: {"median_s": statistics.median(s), "min_s": min(s)} for name, s in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--d-min", type=int, default=1)
    parser.add_argument("--batch", type=int, nargs="+", default=[4096, 65536])
    parser.add_argument("--repeat", type=int, default=30, help="interleaved samples per measurement")
    parser.add_argument("--zipf", type=float, default=1.05, help="power-law exponent of the skewed ids")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    budget = Budget.from_sparsity(args.sparsity, {"item": args.rows}, args.dim, args.d_min)
    allocation = frequency_allocation(args.rows, budget)
    model = MaskableEmbedding({"item": args.rows}, args.dim, seed=args.seed)
    dense = nn.Embedding(args.rows, args.dim)
    with torch.no_grad():
        dense.weight.copy_(model.weights["item"])
    dense.requires_grad_(False)

    with tempfile.TemporaryDirectory() as tmp:
        manifest = export_tables(Path(tmp) / "export", model, allocation, budget)
        packed = PackedEmbedding.load(Path(tmp) / "export")
        padded = PackedEmbedding.load(Path(tmp) / "export", layout="dense")
    model.set_allocation(allocation)

    generator = torch.Generator().manual_seed(args.seed)
    results = []
    with torch.no_grad():
        for batch in args.batch:
            for kind in ("uniform", "zipf"):
                ids = draw_ids(kind, args.rows, batch, generator, args.zipf)
                expected = model.lookup("item", ids).view(torch.int32)
                assert torch.equal(packed.lookup("item", ids).view(torch.int32), expected), "packed lookup is not exact"
                assert torch.equal(padded.lookup("item", ids).view(torch.int32), expected), "dense layout is not exact"
                timing = time_side_by_side(
                    {
                        "dense": lambda ids=ids: dense(ids),
                        "packed": lambda ids=ids: packed.lookup("item", ids),
                        "packed_dense_layout": lambda ids=ids: padded.lookup("item", ids),
                    },
                    args.repeat,
                )
                base = timing["dense"]
                results.append({
                    "batch": batch,
                    "ids": kind,
                    "dense_us": round(base["median_s"] * 1e6, 1),
                    "packed_us": round(timing["packed"]["median_s"] * 1e6, 1),
                    "dense_layout_us": round(timing["packed_dense_layout"]["median_s"] * 1e6, 1),
                    "ratio_packed": round(base["median_s"] / timing["packed"]["median_s"], 3),
                    "ratio_packed_min": round(base["min_s"] / timing["packed"]["min_s"], 3),
                    "ratio_dense_layout": round(base["median_s"] / timing["packed_dense_layout"]["median_s"], 3),
                    "dense_Mrows_s": round(batch / base["median_s"] / 1e6, 1),
                    "packed_Mrows_s": round(batch / timing["packed"]["median_s"] / 1e6, 1),
                })

    sizes = {
        "values_kept": allocation.cost,
        "budget_max_values": budget.max_values,
        "bytes_stored": manifest["bytes_stored"],
        "budget_max_bytes": budget.max_bytes,
        "dense_bytes": args.rows * args.dim * 4,
        "serving_memory_packed": packed.memory_bytes(),
        "serving_memory_dense_layout": padded.memory_bytes(),
    }
    print(f"rows={args.rows} dim={args.dim} sparsity={args.sparsity} threads={torch.get_num_threads()} "
          f"repeat={args.repeat} zipf={args.zipf}  (ratio = packed throughput / dense nn.Embedding throughput)")
    header = f"{'batch':>7} {'ids':>8} {'dense us':>10} {'packed us':>10} {'ratio':>7} {'ratio(min)':>10} {'dense-layout ratio':>19}"
    print(header)
    print("-" * len(header))
    for row in results:
        print(f"{row['batch']:>7} {row['ids']:>8} {row['dense_us']:>10} {row['packed_us']:>10} {row['ratio_packed']:>7} "
              f"{row['ratio_packed_min']:>10} {row['ratio_dense_layout']:>19}")
    print()
    for key, value in sizes.items():
        print(f"{key:>28}: {value:>12,}")
    print(json.dumps({"config": vars(args), "lookup": results, "sizes": sizes}))


if __name__ == "__main__":
    main()
