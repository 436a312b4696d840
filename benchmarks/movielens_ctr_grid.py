"""DeepFM and DCN-v2 on MovieLens-100K click data: the full model and compressed tables at 80 and 90 % sparsity.

    python benchmarks/movielens_ctr_grid.py --data ../shared/data/ml-100k_recbole --jobs 2

Every cell is one ``embnas search`` run (``python -m nas.app.cli``) with the click defaults
(d_max 16, Adam 1e-3, batch 2,048, at most 15 epochs, early stopping on validation AUC,
patience 2; rating >= 4 is a click; 8:1:1 split, seed 0): for each model, sparsity and
controller.  The full model is the plain full-size training of the ``equal`` run (its
``full`` section).  Cells run ``--jobs`` at a time; a finished cell is not run again.
The table goes to stdout and ``<out>/summary.md``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nas


def run_cell(args: argparse.Namespace, model: str, sparsity: float, controller: str) -> tuple[str, float]:
    name = f"{model}-{controller}-{sparsity}"
    if (args.out / name / "metrics.json").exists():
        return name, 0.0
    command = [sys.executable, "-m", "nas.app.cli", "search", "--data", str(args.data), "--model", model,
               "--budget", str(sparsity), "--controller", controller, "--seed", str(args.seed),
               "--threads", str(args.threads), "--runs", str(args.out), "--name", name, "--quiet"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path.cwd()), os.environ.get("PYTHONPATH")]))}
    tic = time.perf_counter()
    with open(args.out / f"{name}.log", "w") as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
    return name, time.perf_counter() - tic


def table(args: argparse.Namespace) -> str:
    """Every finished cell; the retain ratio is over the plain full model of the model's first ``equal`` run."""
    lines = ["| model | allocation | sparsity | test AUC | test log loss | AUC retain | bytes stored | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for model in args.models:
        cells = {(s, c): args.out / f"{model}-{c}-{s}" for s in args.sparsities for c in args.controllers}
        found = {key: nas.SearchResult.read(folder) for key, folder in cells.items() if (folder / "metrics.json").exists()}
        plain = next((r for (s, c), r in found.items() if c == "equal"), None)
        full_auc = plain.full_metrics["test"]["auc"] if plain else float("nan")
        if plain:
            full, budget = plain.full_metrics["test"], plain.budget
            values = budget.full_values
            lines.append(f"| {model} | full model | 0 | {full['auc']:.4f} | {full['logloss']:.4f} | 1 | "
                         f"{values * 4:,} (values × 4 B) | {plain.full_train_seconds:.0f} (training) |")
        for (sparsity, controller) in cells:
            result = found.get((sparsity, controller))
            if result is None:
                lines.append(f"| {model} | {controller} | {sparsity} | (not run) | | | | |")
                continue
            test = result.metrics["test"]
            lines.append(f"| {model} | {controller} | {sparsity} | {test['auc']:.4f} | {test['logloss']:.4f} | "
                         f"{test['auc'] / full_auc:.4f} | {result.export_bytes:,} | {result.seconds:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/ml-100k_recbole"))
    parser.add_argument("--out", type=Path, default=Path("runs/movielens_ctr"))
    parser.add_argument("--models", nargs="+", default=["deepfm", "dcnv2"])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.8, 0.9])
    parser.add_argument("--controllers", nargs="+", default=["equal", "frequency", "darts", "magprune"])
    parser.add_argument("--jobs", type=int, default=2, help="cells run at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per cell")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", action="store_true", help="print the table of the finished cells, run nothing")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report:
        cells = [(m, s, c) for m in args.models for s in args.sparsities for c in args.controllers]
        with ThreadPoolExecutor(args.jobs) as pool:
            for name, seconds in pool.map(lambda cell: run_cell(args, *cell), cells):
                print(f"{name}: {seconds:.0f} s", flush=True)
    text = table(args)
    (args.out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
