"""Shapes of the frequency rule, retrained one by one, and how two fitness functions rank them.

    python benchmarks/shape_probe.py retrain --budget 0.95 --seed 0 --shapes 0,0 1,0 2,-1 2,0 3,0 2,1
    python benchmarks/shape_probe.py fitness --budget 0.95 --seed 0 [--supernet RUN_FOLDER]

``retrain``: each shape ``alpha,tilt`` of :mod:`controllers.shape` (sizes ∝ log(1 + f)^α, tilted
between tables by 2^τ) retrained from scratch on LightGCN / Last.fm (the protocol of
``benchmarks/grids/lastfm_lightgcn.toml`` with ``--patience``), one run each, validation and
test NDCG@20 printed.  ``fitness``: the fitness of the shape controller's 18 design points by
masks on the plainly trained full model (the cached reference), or on the supernet weights of
a run folder (its finished ``supernet.safetensors`` or the last state of an unfinished one).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import nas
from nas.pipeline.build import build_evaluator, build_model, build_search
from nas.pipeline.config import SearchConfig, TrainingOptions
from nas.pipeline.data import DataSpec, load_data
from nas.pipeline.runs import Run

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lastfm_lightgcnpp_cf"


def options(args: argparse.Namespace) -> dict:
    data = DataSpec("lightgcn", (str(args.data / "train.txt.gz"),), (str(args.data / "valid.txt.gz"),),
                    (str(args.data / "test.txt.gz"),))
    train = TrainingOptions(epochs=200, lr=2e-3, reg=1e-4, eval_every=5, patience=args.patience)
    return {"data": data, "model": "lightgcn", "budget": args.budget, "d_max": 64, "d_min": 1, "seed": args.seed,
            "train": train, "threads": 1}


def retrain(args: argparse.Namespace) -> None:
    base = options(args)
    data = base.pop("data")
    for shape in args.shapes:
        alpha, tilt = (float(v) for v in shape.split(","))
        result = nas.search(data, controller="shape", trials=1, retrain_top=1, progress=False,
                            controller_options={"alphas": [alpha], "tilts": [tilt]}, **base)
        sizes = " / ".join(f"{t['mean']:.1f}" for t in result.allocation.summary().values())
        print(f"alpha {alpha:g} tilt {tilt:g}: sizes {sizes}, valid NDCG@20 {result.metrics['valid']['ndcg@20']:.4f}, "
              f"test NDCG@20 {result.metrics['test']['ndcg@20']:.4f}", flush=True)


def fitness(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    config = SearchConfig(controller="shape", trials=18, **options(args))
    data = load_data(config.data)
    budget, space, controller = build_search(config, data)
    model = build_model(config, data)
    if args.supernet is None:  # the cached reference (an equal-sizes search trains it when it is not cached yet)
        base = options(args)
        entry = nas.search(base.pop("data"), controller="equal", progress=False, **base).reference_dir
        weights = Run(entry).load_tensors("reference.safetensors")
    else:
        run = Run(args.supernet)
        weights = (run.load_tensors("supernet.safetensors") if run.has("checkpoints/supernet.safetensors")
                   else run.load_state("supernet.state.safetensors")["model"])
    model.load_state_dict(weights)
    evaluator = build_evaluator(config, data, model)
    for alpha, tilt in controller.design:
        decisions = space.project(controller.direction(alpha, tilt), budget)
        print(f"alpha {alpha:g} tilt {tilt:g}: fitness {evaluator.fitness([space.to_allocation(decisions)])[0]:.4f}",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("retrain", "fitness"))
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--budget", default="0.95")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--shapes", nargs="+", default=["0,0", "1,0", "2,-1", "2,0", "3,0", "2,1"])
    parser.add_argument("--supernet", type=Path, help="a run folder whose supernet weights to mask (default: the plain model)")
    args = parser.parse_args()
    (retrain if args.mode == "retrain" else fitness)(args)


if __name__ == "__main__":
    main()
