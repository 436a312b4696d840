"""LightGCN's InfoNCE term: its weight and temperature against BPR alone, for the full table and for small rows.

    python benchmarks/lightgcn_info_nce.py                       # Last.fm, the grid of docs/results.md §9.4
    python benchmarks/lightgcn_info_nce.py --report              # the table of what has run
    python benchmarks/lightgcn_info_nce.py --terms 0,0.2 --batch-size 8192 --lr 1e-2 --lr-decay 0.5 \
        --sampling user --patience 10 --out runs/lightgcn_bpr_fast.jsonl   # BPR alone, another training
    python benchmarks/lightgcn_info_nce.py --terms 0,0.2 --hard-negatives 32 --out runs/lightgcn_hard.jsonl   # hard negatives

Every cell trains LightGCN (3 rounds) from the same initialisation with every row kept at
``d`` dimensions (``d = 64`` is the full table) by a maskable embedding, BPR plus the
InfoNCE term at weight ``W`` and temperature ``τ`` (``W = 0``: BPR alone), validated every
``--eval-every`` epochs with early stopping on NDCG@20, then tested once.  Each finished
cell is appended to ``--out`` as one JSON line and skipped when the command runs again, so
an interrupted grid resumes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from nas.core import Allocation
from nas.pipeline.embedding import MaskableEmbedding
from recsys.data import load_lightgcn
from recsys.models import LightGCN
from recsys.train import TrainConfig, evaluate, train_bpr

LASTFM = Path("../shared/data/lastfm_lightgcnpp_cf")
#: (weight, temperature) of the term; weight 0 is BPR alone.
TERMS = ((0.0, 0.2), (0.1, 0.2), (0.1, 1.0), (0.05, 0.5), (0.2, 1.0), (0.02, 0.2))


def run_cell(data, d: int, weight: float, tau: float, args: argparse.Namespace) -> dict:  # noqa: ANN001
    embedding = MaskableEmbedding(data.rows(), 64, seed=args.seed)
    if d < 64:
        embedding.set_allocation(Allocation({name: np.full(n, d) for name, n in data.rows().items()}))
    model = LightGCN(embedding, data.train)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, reg=args.reg,
                         eval_every=args.eval_every, patience=args.patience, metric="ndcg@20", ks=(20,), seed=args.seed,
                         threads=args.threads, sampling=args.sampling, lr_decay=args.lr_decay, info_nce=weight,
                         info_nce_temperature=tau, hard_negatives=args.hard_negatives)
    tic = time.perf_counter()
    result = train_bpr(model, data, config, progress=False)
    return {"d": d, "weight": weight, "tau": tau, "best_epoch": result.best_epoch, "epochs_run": len(result.history),
            "seconds": round(time.perf_counter() - tic, 1), "valid": result.best_valid,
            "test": evaluate(model, data, "test", (20,))}


def report(lines: list[dict], dims: list[int], terms: tuple[tuple[float, float], ...] = TERMS) -> str:
    cells = {(r["d"], r["weight"], r["tau"]): r for r in lines}
    rows = ["| InfoNCE W, τ | " + " | ".join(f"d = {d}" for d in dims) + " |", "|---" * (len(dims) + 1) + "|"]
    for weight, tau in terms:
        label = "none (BPR)" if weight == 0 else f"{weight:g}, {tau:g}"
        values = [f"{cells[d, weight, tau]['test']['ndcg@20']:.4f} ({cells[d, weight, tau]['best_epoch']})"
                  if (d, weight, tau) in cells else "" for d in dims]
        rows.append(f"| {label} | " + " | ".join(values) + " |")
    return "\n".join(rows)


def _term(text: str) -> tuple[float, float]:
    weight, _, tau = text.partition(",")
    try:
        return float(weight), float(tau)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a term is W,τ such as 0.02,0.2, got {text!r}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=LASTFM, help="a LightGCN folder with train / valid / test")
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 6, 3])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--reg", type=float, default=1e-4, help="L2 per triple")
    parser.add_argument("--hard-negatives", type=int, default=1,
                        help="BPR's negative: the highest-scoring of this many uniform candidates (1: uniform)")
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--patience", type=int, default=3, help="validations without improvement before stopping")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--sampling", choices=("pair", "user"), default="pair")
    parser.add_argument("--lr-decay", type=float, default=1.0,
                        help="multiply the learning rate at every validation without improvement (1: constant)")
    parser.add_argument("--terms", type=_term, nargs="+", default=list(TERMS),
                        help="the (W, τ) cells as W,τ (0,0.2: BPR alone) (default: the grid of §9.4)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/lightgcn_info_nce.jsonl"))
    parser.add_argument("--report", action="store_true", help="print the table of the finished cells and stop")
    args = parser.parse_args()
    done = [json.loads(line) for line in args.out.read_text().splitlines()] if args.out.exists() else []
    if args.report:
        print(report(done, args.dims, tuple(args.terms)))
        return
    torch.set_num_threads(args.threads)
    data = load_lightgcn(args.data / "train.txt.gz", args.data / "valid.txt.gz", args.data / "test.txt.gz")
    finished = {(r["d"], r["weight"], r["tau"]) for r in done}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for d in args.dims:
        for weight, tau in args.terms:
            if (d, weight, tau) in finished:
                continue
            record = run_cell(data, d, weight, tau, args)
            with args.out.open("a") as out:
                out.write(json.dumps(record) + "\n")
            print(f"d {d}, W {weight:g}, τ {tau:g}: test NDCG@20 {record['test']['ndcg@20']:.4f} "
                  f"(best epoch {record['best_epoch']}, {record['seconds']:.0f} s)", flush=True)
    print(report(done + [json.loads(line) for line in args.out.read_text().splitlines()[len(done):]], args.dims,
                 tuple(args.terms)))


if __name__ == "__main__":
    main()
