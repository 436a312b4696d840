"""Train-step cost of the maskable embedding against plain tables, measured side by side.

    python benchmarks/bench_maskable.py --rows 70839 --dim 64 --batch 2048 --steps 300

Both models are MF with BPR and fused Adam, on the same random batches; the
maskable one applies a 90 %-sparse per-row allocation.  Prints the time per
step of each and the ratio (target: maskable / plain <= 1.2).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from nas.core import Allocation
from nas.pipeline.embedding import MaskableEmbedding
from recsys.embedding import PlainEmbedding
from recsys.models import MF


def step_seconds(model: MF, batches: list[tuple[torch.Tensor, ...]], repeats: int) -> float:
    """Best-of-``repeats`` mean seconds per optimiser step over ``batches``."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    best = float("inf")
    for _ in range(repeats):
        tic = time.perf_counter()
        for users, pos, neg in batches:
            loss = model.bpr_loss(users, pos, neg, 1e-4)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        best = min(best, (time.perf_counter() - tic) / len(batches))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=29858)
    parser.add_argument("--items", type=int, default=40981)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = {"user": args.users, "item": args.items}
    rng = np.random.default_rng(0)
    batches = [
        tuple(torch.as_tensor(rng.integers(0, n, args.batch)) for n in (args.users, args.items, args.items))
        for _ in range(args.steps)
    ]
    mean_dim = (1 - args.sparsity) * args.dim
    dims = {name: np.clip(rng.poisson(mean_dim, n), 1, args.dim) for name, n in rows.items()}
    maskable = MaskableEmbedding(rows, args.dim)
    maskable.set_allocation(Allocation(dims))
    plain_model, maskable_model = MF(PlainEmbedding(rows, args.dim)), MF(maskable)
    step_seconds(plain_model, batches[:20], 1)  # warm up both
    step_seconds(maskable_model, batches[:20], 1)
    plain = step_seconds(plain_model, batches, args.repeats)
    masked = step_seconds(maskable_model, batches, args.repeats)
    result = {
        "plain_ms_per_step": round(plain * 1e3, 3),
        "maskable_ms_per_step": round(masked * 1e3, 3),
        "ratio_maskable_over_plain": round(masked / plain, 3),
        "target": "<= 1.2",
        "config": vars(args),
    }
    print(f"plain nn.Embedding tables : {plain * 1e3:8.3f} ms/step")
    print(f"maskable, {args.sparsity:.0%} sparse   : {masked * 1e3:8.3f} ms/step")
    print(f"ratio                     : {masked / plain:8.3f}  (target <= 1.2)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
