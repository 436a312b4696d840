"""MF on Gowalla under the equal-size and frequency-rule allocations at several sparsities and spaces.

    python benchmarks/gowalla_budgets.py --data-dir ../shared/data/gowalla_lightgcn --epochs E \
        --lr LR --reg REG --sparsities 0.5 0.8 0.9 --controllers equal frequency \
        --spaces per-feature per-field block --groups 8 --blocks 4

Trains the full MF (d = 64, BPR) on the original train set (``lightgcnpp_train`` +
``lightgcnpp_valid``) for a fixed number of epochs (chosen on validation by
``benchmarks/gowalla_full.py``), then, for every controller and sparsity, retrains MF from
scratch with the allocation applied by a maskable embedding (same seed, epochs and
hyper-parameters) and evaluates on ``test``.  Prints a markdown table and one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from controllers import CONTROLLERS
from nas.core import Budget, table_specs
from nas.pipeline.embedding import MaskableEmbedding
from recsys.data import load_lightgcn
from recsys.models import MF
from recsys.train import TrainConfig, evaluate, train_bpr
from search_spaces import SPACES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--reg", type=float, required=True)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.8, 0.9])
    parser.add_argument("--controllers", nargs="+", default=["equal", "frequency"])
    parser.add_argument("--spaces", nargs="+", default=["per-feature"])
    parser.add_argument("--groups", type=int, default=8, help="block space: frequency groups per table")
    parser.add_argument("--blocks", type=int, default=4, help="block space: column blocks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-full", action="store_true", help="do not train the full model")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    d = args.data_dir
    data = load_lightgcn([d / "lightgcnpp_train.txt.gz", d / "lightgcnpp_valid.txt.gz"], None, d / "test.txt.gz")
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, reg=args.reg, seed=args.seed,
                         threads=args.threads)
    rows = data.rows()
    options = {"block": {"groups": args.groups, "blocks": args.blocks}}
    spaces = {
        name: SPACES.get(name)(table_specs(rows), data.frequencies(), 1, args.dim, **options.get(name, {}))
        for name in args.spaces
    }
    results = []

    def train_and_test(label: str, space: str, sparsity: float, embedding: MaskableEmbedding, values: int) -> None:
        tic = time.perf_counter()
        model = MF(embedding)
        train_bpr(model, data, config, progress=False)
        metrics = evaluate(model, data, "test", (20,))
        row = {"allocation": label, "space": space, "sparsity": sparsity, "values": values,
               "retain_ratio": values / (sum(rows.values()) * args.dim),
               "recall@20": metrics["recall@20"], "ndcg@20": metrics["ndcg@20"],
               "seconds": round(time.perf_counter() - tic, 1)}
        results.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)

    if not args.skip_full:
        train_and_test("full", "-", 0.0, MaskableEmbedding(rows, args.dim, seed=args.seed), sum(rows.values()) * args.dim)
    for sparsity in args.sparsities:
        budget = Budget.from_sparsity(sparsity, rows, args.dim)
        for space_name, space in spaces.items():
            for name in args.controllers:
                allocation = space.to_allocation(CONTROLLERS.get(name)(space, budget, seed=args.seed).ask(1)[0])
                allocation.validate(budget)
                embedding = MaskableEmbedding(rows, args.dim, seed=args.seed)
                embedding.set_allocation(allocation)
                train_and_test(name, space.describe(), sparsity, embedding, allocation.cost)

    full = next((r for r in results if r["allocation"] == "full"), None)
    print("| space | allocation | sparsity | retain ratio | Recall@20 | NDCG@20 | vs full (Recall) |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        share = f"{r['recall@20'] / full['recall@20']:.3f}" if full else "-"
        print(f"| {r['space']} | {r['allocation']} | {r['sparsity']:g} | {r['retain_ratio']:.4f} | {r['recall@20']:.4f} | {r['ndcg@20']:.4f} | {share} |")
    print(json.dumps({"config": {k: str(v) for k, v in vars(args).items()}, "results": results}))


if __name__ == "__main__":
    main()
