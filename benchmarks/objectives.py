"""BPR against the sampled softmax: the full model and equal sizes under a budget, for each top-k objective.

    python benchmarks/objectives.py --dataset lastfm --models mf lightgcn --objectives bpr softmax:2 softmax:4 softmax:4:1024
    python benchmarks/objectives.py --dataset lastfm --report

Every job is one ``embnas search`` run (``nas.search``) with ``--controller
equal``: its plain training is the full model, and its retrained allocation is every row at
the same size under the budget.  The data splits, optimiser, epochs, early stopping and
seed are those of ``benchmarks/bet_runs.py`` (``PROTOCOL``); only the objective changes
(``bpr``, or ``softmax:τ:k`` for the sampled softmax at temperature τ against k negatives).  Jobs run one after
another in ``runs/objectives_<dataset>/<model>-<objective>-<sparsity>``; a finished job is
not run again and an interrupted one resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from bet_runs import DATASETS, PROTOCOL, config_for

import nas
from nas.pipeline.search import run_search
from recsys.train import SOFTMAX_NEGATIVES, SOFTMAX_TEMPERATURE


def parse_objective(text: str) -> dict:
    """``"bpr"``, ``"softmax"``, ``"softmax:τ"`` or ``"softmax:τ:k"`` as training options (defaults where left out)."""
    loss, *rest = text.split(":")
    if loss == "bpr" and not rest:
        return {"loss": "bpr"}
    if loss == "softmax" and len(rest) <= 2:
        options = {"loss": "softmax", "temperature": SOFTMAX_TEMPERATURE, "negatives": SOFTMAX_NEGATIVES}
        if rest:
            options["temperature"] = float(rest[0])
        if len(rest) == 2:
            options["negatives"] = int(rest[1])
        return options
    raise argparse.ArgumentTypeError(f"an objective is 'bpr' or 'softmax[:TEMPERATURE[:NEGATIVES]]', got {text!r}")


def job_name(model: str, objective: str, sparsity: float) -> str:
    return f"{model}-{objective.replace(':', '_')}-{sparsity}"


def run_job(args: argparse.Namespace, model: str, objective: str, sparsity: float) -> None:
    base = config_for(args.dataset, args.data_dir, {"controller": "equal", "model": model, "budget": str(sparsity)},
                      args.threads, args.seed)
    config = replace(base, train=replace(base.train, **parse_objective(objective)))
    run_search(config, run_dir=args.runs / job_name(model, objective, sparsity), progress=not args.quiet)


def report(runs: Path) -> str:
    """A markdown table of every finished job under ``runs``."""
    lines = ["| model | objective | full Recall@20 | full NDCG@20 | best epoch / run | s per epoch | "
             "equal Recall@20 | equal NDCG@20 | retain (NDCG) |", "|---|---|---|---|---|---|---|---|---|"]
    for folder in sorted(runs.iterdir()):
        if not (folder / "metrics.json").exists():
            continue
        result = nas.SearchResult.read(folder)
        config = json.loads((folder / "config.json").read_text())["config"]
        train = config["train"]
        objective = "bpr" if train["loss"] == "bpr" else f"softmax τ={train['temperature']:g}, {train['negatives']} negatives"
        trained = next(json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()
                       if '"stage":"supernet"' in line)
        full, equal = result.full_metrics["test"], result.metrics["test"]
        per_epoch = trained["seconds"] / max(trained["epochs_run"], 1)
        lines.append(
            f"| {config['model']} | {objective} | {full['recall@20']:.4f} | {full['ndcg@20']:.4f} | "
            f"{trained['best_epoch']} / {trained['epochs_run']} | {per_epoch:.2f} | {equal['recall@20']:.4f} | "
            f"{equal['ndcg@20']:.4f} | {equal['ndcg@20'] / full['ndcg@20']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(DATASETS), required=True)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--models", nargs="+", default=["mf"])
    parser.add_argument("--objectives", nargs="+", default=["bpr", "softmax"])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.9])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=Path, help="default: runs/objectives_<dataset>")
    parser.add_argument("--report", action="store_true", help="only print the table of the finished jobs")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    for objective in args.objectives:
        parse_objective(objective)
    args.runs = args.runs or Path("runs") / f"objectives_{args.dataset}"
    if not args.report:
        for model in args.models:
            for objective in args.objectives:
                for sparsity in args.sparsities:
                    print(f"== {job_name(model, objective, sparsity)}", flush=True)
                    run_job(args, model, objective, sparsity)
    print(f"{args.dataset}, seed {args.seed}, protocol (epochs, lr, L2, eval every, patience) {PROTOCOL[args.dataset]}")
    print(report(args.runs))


if __name__ == "__main__":
    sys.exit(main())
