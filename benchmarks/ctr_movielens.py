"""FM, DeepFM and DCN-v2 at full size on MovieLens-100K as click data: test AUC, log loss, seconds.

    python benchmarks/ctr_movielens.py --data-dir ../shared/data/ml-100k_recbole

The data is :func:`recsys.data.load_movielens_ctr` (rating >= 4 is a click; fields
user, item, age, gender, occupation, zip, genres, year; random 8:1:1 split per row;
values seen fewer than 2 times in train share their field's OOV row).  Each model has
one ``d = 16`` table per field and [LERSBench]'s sizes (Table 4): DeepFM's MLP
400-400-400, DCN-v2's 3 full-rank cross layers stacked under a 512-512 MLP.  Training:
Adam, batch 2,048 (section 5.2.4), at most 15 epochs (section 5.2.1), the epoch with
the best validation AUC kept (patience 2).  The test split is scored once, at the end.
A table goes to stdout, then one JSON object; ``seconds`` is training plus validation.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from recsys.data import load_movielens_ctr
from recsys.embedding import PlainEmbedding
from recsys.models import FM, DCNv2, DeepFM
from recsys.train_ctr import CTRTrainConfig, evaluate_ctr, train_ctr

MODELS = ("fm", "deepfm", "dcnv2")


def build(kind: str, embedding: PlainEmbedding, fields: tuple[str, ...], dropout: float) -> torch.nn.Module:
    """The model of ``kind`` with [LERSBench]'s sizes."""
    if kind == "fm":
        return FM(embedding, fields)
    if kind == "deepfm":
        return DeepFM(embedding, fields, hidden=(400, 400, 400), dropout=dropout)
    return DCNv2(embedding, fields, cross_layers=3, hidden=(512, 512), dropout=dropout, structure="stacked")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data/ml-100k_recbole"))
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--reg", type=float, default=1e-5, help="L2 on looked-up vectors, per example")
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument("--oov-threshold", type=int, default=2)
    parser.add_argument("--std", type=float, default=0.01, help="normal initialisation of the tables (0.1 overfits sooner)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    tic = time.perf_counter()
    data = load_movielens_ctr(args.data_dir, oov_threshold=args.oov_threshold, seed=args.seed)
    report: dict = {
        "hyper": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "threads": torch.get_num_threads(),
        "data": data.summary(),
        "load_seconds": time.perf_counter() - tic,
        "models": {},
    }
    config = CTRTrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, reg=args.reg,
                            patience=args.patience, seed=args.seed)
    print(f"{'model':8} {'test AUC':>9} {'test logloss':>13} {'valid AUC':>10} {'best epoch':>11} {'seconds':>8}")
    for kind in args.models:
        torch.manual_seed(args.seed)
        embedding = PlainEmbedding(data.rows(), args.dim, std=args.std, seed=args.seed)
        model = build(kind, embedding, data.fields, args.dropout)
        result = train_ctr(model, data, config, progress=args.progress)
        test = evaluate_ctr(model, data, "test")
        parameters = sum(p.numel() for p in model.parameters())
        report["models"][kind] = {
            "test": test, "valid": result.best_valid, "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run, "seconds": result.seconds, "parameters": parameters,
            "embedding_parameters": sum(data.cardinalities) * args.dim,
        }
        print(f"{kind:8} {test['auc']:9.4f} {test['logloss']:13.4f} {result.best_valid.get('auc', float('nan')):10.4f} "
              f"{result.best_epoch:11d} {result.seconds:8.1f}")
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
