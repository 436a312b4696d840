"""A full model (MF or LightGCN, d = 64) on Gowalla, LightGCN split: choose epochs on validation, report test.

Protocol (no test peeking):

1. *select*: train on ``lightgcnpp_train``, validate on ``lightgcnpp_valid``
   (full ranking, train excluded), early-stop on Recall@20; the best epoch is
   the number of epochs to train.
2. *final*: train on the original train set (``lightgcnpp_train`` +
   ``lightgcnpp_valid``) for that many epochs from the same initialisation,
   then evaluate once on ``test.txt.gz`` (train excluded).

``--epochs N`` skips step 1 and trains the final model for N epochs.  The report has
each stage's seconds and median seconds per epoch, so a recipe's cost is read beside its
quality.  Numbers go to stdout as one JSON object (and to ``--out``); progress goes to stderr.

Examples::

    python benchmarks/gowalla_full.py --data-dir ../shared/data/gowalla_lightgcn            # MF, BPR
    python benchmarks/gowalla_full.py --data-dir ../shared/data/gowalla_lightgcn --model lightgcn \
        --reg 1e-4 --info-nce 0.1 --eval-every 5                                           # LightGCN, SGL-WA
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from nas.pipeline.config import PROPAGATION_DTYPES
from recsys.data import load_lightgcn
from recsys.embedding import PlainEmbedding
from recsys.metrics import fitness_quality
from recsys.models import MF, LightGCN
from recsys.train import (
    INFO_NCE_TEMPERATURE,
    LOSSES,
    SOFTMAX_NEGATIVES,
    SOFTMAX_TEMPERATURE,
    TrainConfig,
    TrainHooks,
    evaluate,
    train_bpr,
)


def build(name: str, data, dim: int, seed: int, layers: int, propagation: str = "fp32"):  # noqa: ANN001, ANN201
    """The full model: MF, or LightGCN with ``layers`` rounds over ``data``'s training graph."""
    embedding = PlainEmbedding(data.rows(), dim, std=0.1, seed=seed)
    if name == "mf":
        return MF(embedding)
    return LightGCN(embedding, data.train, layers, propagation_dtype=PROPAGATION_DTYPES[propagation])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True, help="folder with the LightGCN Gowalla files")
    parser.add_argument("--model", choices=("mf", "lightgcn"), default="mf")
    parser.add_argument("--layers", type=int, default=3, help="LightGCN's propagation rounds")
    parser.add_argument("--propagation", choices=tuple(PROPAGATION_DTYPES), default="fp32",
                        help="the dtype LightGCN's rounds multiply in")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--reg", type=float, default=1e-3, help="L2 per triple, LightGCN convention")
    parser.add_argument("--max-epochs", type=int, default=400, help="most epochs of the selection run")
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--patience", type=int, default=3, help="evaluations without improvement")
    parser.add_argument("--eval-users", type=int, default=10000, help="validate on a fixed random subset of users (0: all)")
    parser.add_argument("--epochs", type=int, default=None, help="skip selection; train the final model this long")
    parser.add_argument("--sampling", choices=("pair", "user"), default="pair",
                        help="BPR triples: each train pair once per epoch, or uniform users (LightGCN)")
    parser.add_argument("--loss", choices=LOSSES, default="bpr")
    parser.add_argument("--temperature", type=float, default=SOFTMAX_TEMPERATURE, help="the softmax's")
    parser.add_argument("--negatives", type=int, default=SOFTMAX_NEGATIVES, help="the softmax's")
    parser.add_argument("--info-nce", type=float, default=0.0, help="weight of LightGCN's InfoNCE term (SGL-WA)")
    parser.add_argument("--info-nce-temperature", type=float, default=INFO_NCE_TEMPERATURE)
    parser.add_argument("--lr-decay", type=float, default=1.0,
                        help="multiply the learning rate at every validation that does not improve (1: constant)")
    parser.add_argument("--hard-negatives", type=int, default=1,
                        help="BPR's negative: the highest-scoring of this many uniform candidates (1: uniform)")
    parser.add_argument("--test-curve", action="store_true",
                        help="also test the selection run at each validation (a learning curve; selection stays on validation)")
    parser.add_argument("--select-only", action="store_true",
                        help="stop after the selection run (with --test-curve: its test curve is the result)")
    parser.add_argument("--out", type=Path, help="also write the report to this JSON file")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    d = args.data_dir
    report: dict = {"hyper": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "threads": torch.get_num_threads()}

    def config(epochs: int) -> TrainConfig:
        return TrainConfig(epochs=epochs, batch_size=args.batch_size, lr=args.lr, reg=args.reg,
                           eval_every=args.eval_every, patience=args.patience, ks=(5, 10, 20), seed=args.seed,
                           threads=args.threads, eval_users=args.eval_users or None,
                           sampling=args.sampling, loss=args.loss, temperature=args.temperature,
                           negatives=args.negatives, info_nce=args.info_nce,
                           info_nce_temperature=args.info_nce_temperature, lr_decay=args.lr_decay,
                           hard_negatives=args.hard_negatives)

    epochs = args.epochs
    if epochs is None:
        select = load_lightgcn(d / "lightgcnpp_train.txt.gz", d / "lightgcnpp_valid.txt.gz", d / "test.txt.gz")
        model = build(args.model, select, args.dim, args.seed, args.layers, args.propagation)
        tested: dict[int, dict] = {}

        def test_curve(state: dict) -> None:
            if state["epoch"] % args.eval_every == 0:
                tested[state["epoch"]] = evaluate(model, select, "test", ks=(20,))
                print(f"epoch {state['epoch']}: test {tested[state['epoch']]}", file=sys.stderr, flush=True)

        hooks = TrainHooks(on_epoch_end=test_curve) if args.test_curve else None
        result = train_bpr(model, select, config(args.max_epochs), progress=not args.no_progress, hooks=hooks)
        epochs = result.best_epoch
        report["select"] = {
            "best_epoch": result.best_epoch, "epochs_run": result.epochs_run, "seconds": result.seconds,
            "epoch_seconds_median": float(np.median([r["seconds"] for r in result.history])),
            "best_valid": result.best_valid,
            "curve": [{"epoch": r["epoch"], "loss": r["loss"], "seconds": r["seconds"],
                       "recall@20": r["valid"]["recall@20"], "ndcg@20": r["valid"]["ndcg@20"],
                       **({"test": tested[r["epoch"]]} if r["epoch"] in tested else {})}
                      for r in result.history if "valid" in r],
        }
        print(f"selected {epochs} epochs: valid {result.best_valid}", file=sys.stderr)
    if args.select_only:
        return _report(report, args.out)

    full = load_lightgcn([d / "lightgcnpp_train.txt.gz", d / "lightgcnpp_valid.txt.gz"], None, d / "test.txt.gz")
    model = build(args.model, full, args.dim, args.seed, args.layers, args.propagation)
    result = train_bpr(model, full, config(epochs), progress=not args.no_progress)
    tic = time.perf_counter()
    torch.set_num_threads(args.threads)
    test = evaluate(model, full, "test", ks=(5, 10, 20))
    eval_seconds = time.perf_counter() - tic
    epoch_seconds = [r["seconds"] for r in result.history]
    report["final"] = {
        "train_pairs": int(full.train.nnz), "test_pairs": int(full.test.nnz), "epochs": epochs,
        "epoch_seconds_median": float(np.median(epoch_seconds)), "train_seconds": result.seconds,
        "full_eval_seconds": eval_seconds, "final_loss": result.history[-1]["loss"],
        "test": test, "fitness_quality": fitness_quality(test),
    }
    return _report(report, args.out)


def _report(report: dict, out: Path | None) -> dict:
    """Print the report as JSON, and write it to ``out`` when given."""
    text = json.dumps(report, indent=2)
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
