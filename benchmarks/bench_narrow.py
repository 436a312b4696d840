"""LightGCN under a narrow allocation: propagating the served width against the full table's width.

    python benchmarks/bench_narrow.py --threads 1                   # Gowalla, widths 3, 8, 13, 32
    python benchmarks/bench_narrow.py --threads 1 --widths 3 --steps 20 --repeats 5

A masked table whose widest row keeps ``w`` of its ``d_max`` values is zero past column
``w`` in every row, and propagation keeps those columns zero, so LightGCN multiplies the
leading ``w`` columns alone (:func:`recsys.embedding.served_width`).  This times training
steps (batch 8,192, the hardest of ``--hard-negatives`` candidates, 32 by default, fused
Adam, L2) of the same masked model both ways, side by side in this process on the same batches:
"narrow" is :class:`~nas.pipeline.embedding.MaskableEmbedding` as it serves, "full width"
the same tables reporting ``served_width = d_max``.  Every row keeps ``w`` dimensions; a
mixed allocation costs what its widest row costs (at 95 % sparsity on Gowalla the frequency
rule's widest row keeps 8, equal sizes 3; 13 and 32 are equal sizes at 80 and 50 %).  The
repeats alternate the two, and the medians are compared.  Both give the same loss on the
first batch (checked).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
from pathlib import Path

import numpy as np
import torch
from bench_maskable import step_seconds

from nas.core import Allocation
from nas.pipeline.embedding import MaskableEmbedding
from recsys.data import BPRSampler, load_lightgcn
from recsys.models import LightGCN

GOWALLA = Path("../shared/data/gowalla_lightgcn")


class FullWidth(MaskableEmbedding):
    """The same masked tables, propagated at their full width."""

    served_width = property(lambda self: self.dim)


def model_for(provider: type[MaskableEmbedding], data, width: int, d_max: int) -> LightGCN:  # noqa: ANN001
    embedding = provider(data.rows(), d_max, seed=0)
    embedding.set_allocation(Allocation({name: np.full(n, width) for name, n in data.rows().items()}))
    return LightGCN(embedding, data.train)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=GOWALLA)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--widths", type=int, nargs="+", default=[3, 8, 13, 32])
    parser.add_argument("--d-max", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8192)
    parser.add_argument("--hard-negatives", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12, help="training steps per timing")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_lightgcn([args.data / "lightgcnpp_train.txt.gz", args.data / "lightgcnpp_valid.txt.gz"],
                         test=[args.data / "test.txt.gz"])
    sampler = BPRSampler(data.train, seed=0, by="user", candidates=args.hard_negatives)
    batches = list(itertools.islice(sampler.epoch(args.batch), args.steps))
    per_epoch = -(-data.train.nnz // args.batch)
    print(f"{len(batches)} steps of {args.batch} triples, {args.hard_negatives} candidates each, {args.threads} thread(s); "
          f"an epoch is {per_epoch} steps")
    print("| widest row | narrow, s a step | full width, s a step | full width / narrow |")
    print("|--:|--:|--:|--:|")
    for width in args.widths:
        models = {"narrow": model_for(MaskableEmbedding, data, width, args.d_max),
                  "full": model_for(FullWidth, data, width, args.d_max)}
        users, pos, neg = batches[0]
        with torch.no_grad():
            first = {name: float(model.bpr_loss(users, pos, neg, 1e-3)) for name, model in models.items()}
        assert abs(first["narrow"] - first["full"]) < 1e-5 * max(1.0, abs(first["full"])), first
        seconds: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(args.repeats):
            for name, model in models.items():
                seconds[name].append(step_seconds(model, batches, repeats=1))
        narrow, full = statistics.median(seconds["narrow"]), statistics.median(seconds["full"])
        print(f"| {width} | {narrow:.3f} | {full:.3f} | {full / narrow:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
