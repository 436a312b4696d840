"""What one BET iteration costs on Gowalla's shape, apart from evaluating the pick.

    python benchmarks/bench_bet.py --threads 1

On the real Gowalla frequencies (29,858 users, 40,981 items; ``../shared/data``) or, with
``--synthetic``, power-law frequencies of the same shape: draws m = 100 actions
(family, parameter and share per table, sorted draws, projection onto the budget with the
frequency order), scores them with the DeepSets predictor, and takes N = 2 predictor
updates, at sparsity 0.8, 0.9 and 0.95.  Prints the median of ``--repeat`` runs of each step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from controllers import BET
from nas.core import Budget
from nas.testing import synthetic_fields
from recsys.data import load_lightgcn
from search_spaces import PerFeatureSpace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data/gowalla_lightgcn"))
    parser.add_argument("--synthetic", action="store_true", help="power-law frequencies of Gowalla's shape")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.synthetic:
        fields = synthetic_fields([29_858, 40_981], exponent=1.1, seed=0)
        tables, frequencies = fields.tables, fields.frequencies
    else:
        d = args.data_dir
        data = load_lightgcn([d / "lightgcnpp_train.txt.gz"], [d / "lightgcnpp_valid.txt.gz"], d / "test.txt.gz")
        from nas.core import table_specs

        tables, frequencies = table_specs(data.rows()), data.frequencies()
    space = PerFeatureSpace(tables, frequencies, 1, 64)
    results = []
    for sparsity in (0.8, 0.9, 0.95):
        budget = Budget.from_sparsity(sparsity, space.rows(), 64, 1)
        controller = BET(space, budget, seed=0)
        controller.sampler.sample(controller.rng, 2)  # warm caches (frequency order)
        times: dict[str, list[float]] = {"sample 100": [], "predict 100": [], "2 updates": []}
        for _ in range(args.repeat):
            tic = time.perf_counter()
            actions = controller.sampler.sample(controller.rng, 100)
            times["sample 100"].append(time.perf_counter() - tic)
            tic = time.perf_counter()
            controller.predict(actions.decisions)
            times["predict 100"].append(time.perf_counter() - tic)
            tic = time.perf_counter()
            controller.tell(actions.decisions[:1], [0.5])
            times["2 updates"].append(time.perf_counter() - tic)
            spent = actions.decisions.sum(axis=1) / budget.max_values
            assert spent.max() <= 1.0 and spent.min() >= 0.99
        row = {"sparsity": sparsity, **{k: statistics.median(v) for k, v in times.items()}}
        results.append(row)
        print(f"sparsity {sparsity}: " + ", ".join(f"{k} {v:.3f} s" for k, v in row.items() if k != "sparsity"), flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
