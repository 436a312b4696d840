"""One sandwich step of an MF supernet with and without searched precisions, side by side.

    python benchmarks/bench_precision_step.py --users 29858 --items 40981 --batch 2048 --threads 2

A sandwich step trains several allocations at once (the largest, the smallest and two
random ones).  *sizes*: sizes only, which MF serves from prefix sums
(``prefix_bpr_loss``); *masked*: the same variants through the masked lookup (what a
step costs without the prefix path); *precision*: the variants also quantised row by row
to a random precision among fp32, fp16, int8 and int4 (fake quantisation, straight-through
gradients); *shared*: the same with scales shared by size (``--scales shared``), whose peaks
come from the whole table at every lookup.  *retrain* and *retrain shared*: one of the random
allocations alone, with its precisions, through the masked lookup: a step of the retraining
that follows a search, with one scale a row or shared scales.  Each timing is forward,
backward and an Adam step, interleaved so all of them see the same machine load; the table
gives the median and the ratio to *sizes* (the issue's target for *precision*: at most 1.5x).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from nas.core.allocation import Allocation
from nas.core.budget import Budget
from nas.core.precision import DEFAULT_PRECISIONS
from nas.core.tables import table_specs
from nas.pipeline.embedding import MaskableEmbedding, stack_precisions, stack_row_dims
from nas.pipeline.tasks import top_k_variants_loss
from nas.testing.data import synthetic_fields
from recsys.models import MF
from search_spaces import PerFeatureSpace


def variants(rows: dict[str, int], d_max: int, precisions: tuple[str, ...], seed: int) -> list[Allocation]:
    """The largest, the smallest and two random allocations of a per-feature space searching ``precisions``."""
    fields = synthetic_fields(rows, exponent=1.1, seed=seed)
    space = PerFeatureSpace(table_specs(rows), fields.frequencies, 1, d_max).with_precisions(precisions)
    budget = Budget.from_sparsity(0.9, rows, d_max, 1, precisions=precisions)
    rng = np.random.default_rng(seed)
    n = space.n_decisions
    ends = [space.join(np.full(n, d_max), np.zeros(n)), space.join(np.ones(n), np.full(n, len(precisions) - 1))]
    return [space.allocation(v) for v in ends + [space.sample(rng, budget) for _ in range(2)]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=29858)
    parser.add_argument("--items", type=int, default=40981)
    parser.add_argument("--d-max", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=30, help="timed steps of each kind")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = {"user": args.users, "item": args.items}
    allocations = variants(rows, args.d_max, DEFAULT_PRECISIONS, seed=0)
    chosen = stack_row_dims(allocations)
    precision = stack_precisions(allocations)
    model = MF(MaskableEmbedding(rows, args.d_max, seed=0))
    shared = MF(MaskableEmbedding(rows, args.d_max, seed=0, scales="shared"))
    optimizers = {id(m): torch.optim.Adam(m.parameters(), lr=1e-3) for m in (model, shared)}
    generator = torch.Generator().manual_seed(0)

    def step(kind: str) -> float:
        users = torch.randint(args.users, (args.batch,), generator=generator)
        pos, neg = torch.randint(args.items, (2, args.batch), generator=generator)
        net = shared if kind.endswith("shared") else model
        embedding, optimizer = net.embedding, optimizers[id(net)]
        tic = time.perf_counter()
        if kind in ("precision", "shared"):
            embedding.set_variant_precisions(precision, DEFAULT_PRECISIONS)
        try:
            if kind.startswith("retrain"):  # one allocation with its precisions, as a retraining steps
                embedding.set_allocation(allocations[2])
                try:
                    loss = net.bpr_loss(users, pos, neg, 1e-4)
                finally:
                    embedding.set_allocation(None)
            elif kind == "masked":  # the variants through the masked lookup: what the prefix path saves
                embedding.set_variants(chosen)
                try:
                    loss = net.bpr_loss(users, pos, neg, 1e-4 / len(allocations))
                finally:
                    embedding.set_variants(None)
            else:
                loss = top_k_variants_loss(net, chosen, (users, pos, neg), 1e-4)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        finally:
            embedding.set_variant_precisions(None)
        return time.perf_counter() - tic

    kinds = ("sizes", "masked", "precision", "shared", "retrain", "retrain shared")
    for kind in kinds:  # warm-up
        step(kind)
    samples: dict[str, list[float]] = {kind: [] for kind in kinds}
    for _ in range(args.steps):
        for kind in kinds:
            samples[kind].append(step(kind))
    median = {kind: statistics.median(values) for kind, values in samples.items()}
    print(f"MF sandwich step ({len(allocations)} variants), {args.users:,} users x {args.items:,} items, d_max "
          f"{args.d_max}, batch {args.batch}, {args.threads} threads, median of {args.steps}")
    print("| step | ms | × sizes |\n|---|--:|--:|")
    for kind in kinds:
        print(f"| {kind} | {median[kind] * 1e3:.1f} | {median[kind] / median['sizes']:.2f} |")
    print(json.dumps({"median_ms": {k: v * 1e3 for k, v in median.items()},
                      "ratio": {k: v / median["sizes"] for k, v in median.items()}}))


if __name__ == "__main__":
    main()
