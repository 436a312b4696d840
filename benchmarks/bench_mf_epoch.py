"""One BPR-MF training epoch on Gowalla: embnas's trainer against a straightforward loop, side by side.

    python benchmarks/bench_mf_epoch.py --data-dir ../shared/data/gowalla_lightgcn --threads 2

*straightforward*: negatives drawn per example in Python (rejecting items the user
has, as LightGCN's reference sampler does), shuffled triples, ``torch.optim.Adam``
with its default (for-each) implementation.
*embnas*: :class:`recsys.data.BPRSampler` (vectorised rejection sampling) and
:func:`recsys.train.train_bpr` (fused Adam).  Same model (MF, d = 64), batch and
learning rate.  Prints both epoch times and the speed-up (target: embnas <= 10 s).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from recsys.data import load_lightgcn
from recsys.embedding import PlainEmbedding
from recsys.models import MF
from recsys.train import TrainConfig, train_bpr


def straightforward_epoch(model: MF, train, batch_size: int, lr: float, reg: float, seed: int) -> float:
    """Seconds for one epoch of the plain Python-sampling, for-each-Adam loop."""
    rng = np.random.default_rng(seed)
    tic = time.perf_counter()
    positives = [set(train.indices[train.indptr[u] : train.indptr[u + 1]].tolist()) for u in range(train.shape[0])]
    users = np.repeat(np.arange(train.shape[0]), np.diff(train.indptr))
    items = train.indices.copy()
    negatives = np.empty_like(items)
    n_items = train.shape[1]
    for k, u in enumerate(users.tolist()):
        while True:
            j = int(rng.integers(n_items))
            if j not in positives[u]:
                break
        negatives[k] = j
    order = rng.permutation(len(users))
    users, items, negatives = (torch.as_tensor(a[order]) for a in (users, items, negatives))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for start in range(0, len(users), batch_size):
        batch = slice(start, start + batch_size)
        loss = model.bpr_loss(users[batch], items[batch], negatives[batch], reg)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - tic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--reg", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2, help="epochs timed for each (the median is reported)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    d = args.data_dir
    data = load_lightgcn([d / "lightgcnpp_train.txt.gz", d / "lightgcnpp_valid.txt.gz"], None, d / "test.txt.gz")
    plain_times = [
        straightforward_epoch(MF(PlainEmbedding(data.rows(), 64, seed=0)), data.train, args.batch_size, args.lr, args.reg, e)
        for e in range(args.epochs)
    ]
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, reg=args.reg, threads=args.threads)
    result = train_bpr(MF(PlainEmbedding(data.rows(), 64, seed=0)), data, config, progress=False)
    ours = [r["seconds"] for r in result.history]
    report = {
        "straightforward_epoch_s": round(float(np.median(plain_times)), 2),
        "embnas_epoch_s": round(float(np.median(ours)), 2),
        "speedup": round(float(np.median(plain_times) / np.median(ours)), 2),
        "train_pairs": int(data.train.nnz),
        "threads": args.threads,
    }
    print(f"straightforward loop : {report['straightforward_epoch_s']:6.2f} s/epoch")
    print(f"embnas trainer       : {report['embnas_epoch_s']:6.2f} s/epoch  (target <= 10 s)")
    print(f"speed-up             : {report['speedup']:6.2f}x")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
