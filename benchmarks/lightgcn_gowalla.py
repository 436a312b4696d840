"""LightGCN on Gowalla: the full model and the compressed grid of [LERSBench], one command, in parallel.

    python benchmarks/lightgcn_gowalla.py --data ../shared/data/gowalla_lightgcn --device cuda --deadline 480

Every cell is the real pipeline (``python -m nas.app.cli search``) with LightGCN (3 layers,
d = 64), trained on ``lightgcnpp_train``, early-stopped on ``lightgcnpp_valid`` and
tested on ``test`` (train and valid excluded), LightGCN's optimiser settings (Adam,
lr 1e-3, batch 2,048, L2 1e-4 per triple):

* ``equal`` at each sparsity: the full model (the run's plain training) and equal sizes;
* ``darts`` at each sparsity (why darts: docs/results.md §8).

All cells start together, one process each.  With ``--deadline`` and no ``--epochs``,
the epoch count is chosen so that the whole grid ends in time: every cell first trains
``--probe-epochs`` epochs at once (the same contention as the real grid), and each cell
then gets as many epochs as two trainings (search + retrain) of that measured speed
allow.  Every cell trains the same number of epochs, so retain ratios compare like with
like.  Results: ``<out>/summary.json`` and ``<out>/summary.md`` (a table with Recall@20,
NDCG@20, bytes stored and the retain ratio beside the best of [LERSBench, Table 7]).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import nas

#: [LERSBench, Table 7] (LightGCN, Gowalla): the best method's retain ratio at each sparsity
#: (MagPrune at 50 %, DHE at 80 %, PEP at 95 %).
PAPER_BEST_RETAIN = {0.5: 0.984, 0.8: 0.884, 0.95: 0.786}
#: Published LightGCN on Gowalla ([LightGCN, Table 3]): Recall@20, NDCG@20.
PUBLISHED_FULL = {"recall@20": 0.1830, "ndcg@20": 0.1554}


def cell_command(args: argparse.Namespace, controller: str, sparsity: float, epochs: int, name: str) -> list[str]:
    """The ``embnas search`` command line of one cell."""
    data = Path(args.data)
    if (data / "lightgcnpp_train.txt.gz").exists():  # Gowalla: the LightGCN train set with its valid part held out
        files = ["--train", str(data / "lightgcnpp_train.txt.gz"), "--valid", str(data / "lightgcnpp_valid.txt.gz"),
                 "--test", str(data / "test.txt.gz")]
    else:  # any folder with train / valid / test files
        files = ["--data", str(data)]
    return [
        sys.executable, "-m", "nas.app.cli", "search", *files, "--model", "lightgcn", "--budget", str(sparsity),
        "--controller", controller, "--recipe", args.recipe, "--epochs", str(epochs), "--batch-size", str(args.batch_size),
        "--lr", str(args.lr), "--reg", str(args.reg), "--eval-every", str(args.eval_every),
        "--patience", str(args.patience), "--retrain-top", "1", "--device", args.device,
        # The equal cell's first stage is the full model the retain ratios divide by: it trains to the end.
        *(["--supernet-epochs", str(args.supernet_epochs)] if args.supernet_epochs and controller != "equal" else []),
        "--threads", str(args.threads), "--seed", str(args.seed), "--runs", str(args.out / "runs"),
        "--name", name, "--quiet",
    ]


def launch(commands: dict[str, list[str]], logs: Path, deadline: float, parallel: int | None = None) -> dict[str, int | None]:
    """Run the commands, at most ``parallel`` at once (all by default), in the given order; at the
    deadline stop the running ones and start no more (a stopped run resumes when started again)."""
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path.cwd()), os.environ.get("PYTHONPATH")]))}
    waiting, processes = list(commands), {}
    while time.monotonic() < deadline:
        running = sum(p.poll() is None for p in processes.values())
        while waiting and running < (parallel or len(commands)):
            name = waiting.pop(0)
            with open(logs / f"{name}.log", "a") as log:
                processes[name] = subprocess.Popen(commands[name], stdout=log, stderr=subprocess.STDOUT, env=env)
            running += 1
        if not running:
            break
        time.sleep(2)
    for process in processes.values():
        if process.poll() is None:
            process.terminate()
    return {name: processes[name].wait() if name in processes else None for name in commands}


def epoch_seconds(run_folder: Path) -> float | None:
    """Seconds per epoch of the run's first training, evaluations included (from its event log)."""
    events = run_folder / "events.jsonl"
    if not events.exists():
        return None
    for event in map(json.loads, events.read_text().splitlines()):
        if event.get("event") == "trained" and event.get("stage") == "supernet" and event.get("epochs_run"):
            return event["seconds"] / event["epochs_run"]
    return None


def summarise(args: argparse.Namespace, cells: list[tuple[str, float]], epochs: int, codes: dict) -> dict:
    rows, full = [], None
    for controller, sparsity in cells:
        name = f"{controller}-{sparsity}"
        folder = args.out / "runs" / name
        if not (folder / "metrics.json").exists():
            rows.append({"cell": name, "exit": codes.get(name), "missing": True})
            continue
        result = nas.SearchResult.read(folder)
        test = result.metrics["test"]
        row = {"cell": name, "controller": controller, "sparsity": sparsity, "exit": codes.get(name),
               "recall@20": test["recall@20"], "ndcg@20": test["ndcg@20"],
               "bytes_stored": result.export_bytes, "seconds": result.seconds,
               "epochs_retrain": result.retrained[0].epochs}
        if controller == "equal" and full is None:
            full = {"recall@20": result.full_metrics["test"]["recall@20"], "ndcg@20": result.full_metrics["test"]["ndcg@20"],
                    "train_seconds": result.full_train_seconds, "from": name}
        rows.append(row)
    if full is None and args.full_ndcg is not None:
        full = {"ndcg@20": args.full_ndcg, "from": "--full-ndcg"}
    for row in rows:
        if full and "ndcg@20" in row:
            row["retain"] = row["ndcg@20"] / full["ndcg@20"]
            row["paper_best_retain"] = PAPER_BEST_RETAIN.get(row["sparsity"])
    return {"epochs": epochs, "protocol": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "full": full, "published_full": PUBLISHED_FULL, "cells": rows}


def markdown(summary: dict) -> str:
    full = summary["full"]
    lines = [f"LightGCN, {Path(summary['protocol']['data']).name}, {summary['epochs']} epochs at most per training", ""]
    if full:
        recall = f"Recall@20 {full['recall@20']:.4f}, " if "recall@20" in full else ""
        lines.append(f"full model ({full['from']}): {recall}NDCG@20 {full['ndcg@20']:.4f} "
                     f"(published {PUBLISHED_FULL['recall@20']} / {PUBLISHED_FULL['ndcg@20']})")
        lines.append("")
    lines += ["| cell | Recall@20 | NDCG@20 | bytes stored | retain (NDCG) | [LERSBench] best retain |",
              "|---|---|---|---|---|---|"]
    for row in summary["cells"]:
        if row.get("missing"):
            lines.append(f"| {row['cell']} | (no result, exit {row['exit']}) | | | | |")
            continue
        paper = row.get("paper_best_retain")
        lines.append(f"| {row['cell']} | {row['recall@20']:.4f} | {row['ndcg@20']:.4f} | {row['bytes_stored']:,} | "
                     f"{row.get('retain', float('nan')):.3f} | {'' if paper is None else paper} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/gowalla_lightgcn"))
    parser.add_argument("--out", type=Path, default=Path("runs/lightgcn_gowalla"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.8, 0.95])
    parser.add_argument("--controllers", nargs="+", default=["equal", "darts"])
    parser.add_argument("--epochs", type=int, help="epochs per training (default: fit the grid in --deadline)")
    parser.add_argument("--deadline", type=float, default=3600.0, help="seconds the whole grid may take")
    parser.add_argument("--max-epochs", type=int, default=1000)
    parser.add_argument("--supernet-epochs", type=int, help="epochs of the search's first stage (default: --epochs)")
    parser.add_argument("--parallel", type=int, help="cells run at once, in order (default: all)")
    parser.add_argument("--full-ndcg", type=float,
                        help="NDCG@20 of the full model trained by the same protocol elsewhere, for the retain "
                             "ratios of a grid without an equal cell")
    parser.add_argument("--probe-epochs", type=int, default=2)
    parser.add_argument("--recipe", default="none",
                        help="the training recipe under the options below (default: none, plain BPR as section 9 trained)")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--reg", type=float, default=1e-4)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--patience", type=int, default=4, help="evaluations without improvement before stopping")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per cell")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.monotonic()
    end = started + args.deadline
    cells = [(c, s) for s in args.sparsities for c in args.controllers]
    epochs = args.epochs
    probe = None
    if epochs is None:
        probe_args = argparse.Namespace(**{**vars(args), "out": args.out / "probe"})
        commands = {f"{c}-{s}": cell_command(probe_args, c, s, args.probe_epochs, f"{c}-{s}") for c, s in cells}
        tic = time.monotonic()
        launch(commands, args.out / "probe-logs", end)
        speeds = [epoch_seconds(args.out / "probe" / "runs" / name) for name in commands]
        measured = [s for s in speeds if s is not None]
        if not measured:
            raise SystemExit("the probe measured no epoch; see the probe logs")
        probe = {"seconds": time.monotonic() - tic, "epoch_seconds": dict(zip(commands, speeds))}
        slowest = max(measured)
        # Two trainings per cell (plain or one-shot, then the retrain), 20 % for evaluations
        # and start-up, and the probe's own overhead as a fixed cost.
        left = end - time.monotonic() - probe["seconds"] + args.probe_epochs * slowest * 2
        epochs = max(1, min(args.max_epochs, math.floor(left / (2 * slowest * 1.2))))
        print(f"probe: slowest cell {slowest:.2f} s/epoch with {len(cells)} cells at once -> {epochs} epochs", flush=True)
    commands = {f"{c}-{s}": cell_command(args, c, s, epochs, f"{c}-{s}") for c, s in cells}
    codes = launch(commands, args.out / "logs", end + 60, args.parallel)
    summary = summarise(args, cells, epochs, codes)
    summary["probe"] = probe
    summary["seconds"] = time.monotonic() - started
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    (args.out / "summary.md").write_text(markdown(summary))
    print(markdown(summary))


if __name__ == "__main__":
    main()
