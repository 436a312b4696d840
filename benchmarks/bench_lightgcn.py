"""LightGCN training speed on CPU: our propagation against torch's CSR product and a straightforward LightGCN.

    python benchmarks/bench_lightgcn.py --threads 2                  # Gowalla, one full epoch each
    python benchmarks/bench_lightgcn.py --threads 2 --steps 50       # 50 batches each, scaled to an epoch
    python benchmarks/bench_lightgcn.py --gradient-rows              # which rows one step's gradient reaches

The straightforward model is the reference implementation's layout: one
``(n_users + n_items)²`` normalised adjacency as a COO sparse tensor, the two tables
concatenated and multiplied by it K times with ``torch.sparse.mm``.  Ours keeps the two
off-diagonal blocks in CSR form and propagates users and items separately, each product an
``embedding_bag`` (:mod:`recsys.models._graph`); "torch CSR" is the same model with each
product a torch ``csr @ dense`` instead (backpropagated by the transposed block as ours).
"ours + InfoNCE" adds the InfoNCE term (weight 0.1, τ 0.2) to ours: its cost; "bf16
propagation" multiplies in bfloat16 (``LightGCN(propagation_dtype=torch.bfloat16)``).  All train with
the same BPR batches (2,048 triples), Adam and L2, one after the other in this process, except
"hard negatives", whose batches carry ``--hard-negatives`` candidates per triple and whose loss
keeps the highest-scoring one (``TrainConfig.hard_negatives``); the
ratios to ours are printed with the times.  All give the same loss on the first batch
(checked), so they compute the same model.

``--gradient-rows`` measures instead the share of each table's rows whose gradient is not
zero after one BPR batch, for 0 to 3 propagation rounds (0 rounds is MF).  A sparse-gradient
optimiser (``torch.optim.SparseAdam``, row-wise Adagrad) saves work only on the rows a step
does not reach.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from recsys.data import BPRSampler, load_lightgcn
from recsys.embedding import PlainEmbedding
from recsys.models import LightGCN
from recsys.models._graph import CSRBlock, GraphBlocks, spmm

GOWALLA = Path("../shared/data/gowalla_lightgcn")


class PlainLightGCN(nn.Module):
    """LightGCN as the reference code writes it: one symmetric COO adjacency over users and items."""

    def __init__(self, embedding: PlainEmbedding, train: sp.csr_matrix, layers: int = 3) -> None:
        super().__init__()
        self.embedding, self.layers = embedding, layers
        n_users, n_items = train.shape
        adjacency = sp.bmat([[None, train], [train.T, None]], format="coo", dtype=np.float32)
        degree = np.asarray(adjacency.sum(axis=1)).ravel()
        scale = np.divide(1.0, np.sqrt(degree), out=np.zeros_like(degree), where=degree > 0)
        normalized = sp.diags(scale) @ adjacency @ sp.diags(scale)
        normalized = sp.coo_matrix(normalized)
        self.graph = torch.sparse_coo_tensor(
            np.vstack([normalized.row, normalized.col]), normalized.data.astype(np.float32), normalized.shape
        ).coalesce()
        self.n_users = n_users

    def bpr_loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, reg: float) -> torch.Tensor:
        ego = torch.cat([self.embedding.weights["user"], self.embedding.weights["item"]])
        layers = [ego]
        for _ in range(self.layers):
            layers.append(torch.sparse.mm(self.graph, layers[-1]))
        final = torch.stack(layers).mean(dim=0)
        final_u, final_i = final[: self.n_users], final[self.n_users :]
        u, p, n = final_u[users], final_i[pos], final_i[neg]
        loss = nn.functional.softplus(-(u * (p - n)).sum(dim=-1)).mean()
        ego_u, ego_p, ego_n = self.embedding.weights["user"][users], self.embedding.weights["item"][pos], self.embedding.weights["item"][neg]
        return loss + reg * 0.5 * (ego_u.square().sum() + ego_p.square().sum() + ego_n.square().sum()) / len(users)


class _TorchCSR:
    """A block whose product is torch's ``csr @ dense`` (what :func:`spmm` calls in place of ``embedding_bag``)."""

    def __init__(self, block: CSRBlock) -> None:
        self.matrix = block.to_torch_csr()

    def times(self, dense: torch.Tensor) -> torch.Tensor:
        return self.matrix @ dense.contiguous()


class TorchCSRBlocks(nn.Module):
    """:class:`GraphBlocks` whose products are torch ``csr @ dense``, backpropagated by the transposed block as ours."""

    def __init__(self, blocks: GraphBlocks) -> None:
        super().__init__()
        self.user_item, self.item_user = _TorchCSR(blocks.user_item), _TorchCSR(blocks.item_user)

    def round(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return spmm(self.user_item, self.item_user, items), spmm(self.item_user, self.user_item, users)


def torch_csr_lightgcn(embedding: PlainEmbedding, train: sp.csr_matrix) -> LightGCN:
    model = LightGCN(embedding, train)
    model.graph = TorchCSRBlocks(model.graph)
    return model


def time_training(
    model: nn.Module, sampler: BPRSampler, steps: int | None, batch: int, **loss_options: object
) -> tuple[float, float, int]:
    """Seconds the sampler takes to draw the epoch, seconds for ``steps`` batches (a whole epoch when ``None``),
    and the batches run.  The sampler draws a whole epoch at its first batch, so that draw is timed apart,
    once an epoch, and not scaled with the steps."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    tic = time.perf_counter()
    batches = sampler.epoch(batch)
    first = next(batches)
    draw = time.perf_counter() - tic
    tic, done = time.perf_counter(), 0
    for users, pos, neg in itertools.chain([first], batches):
        loss = model.bpr_loss(users, pos, neg, 1e-4, **loss_options)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        done += 1
        if steps is not None and done >= steps:
            break
    return draw, time.perf_counter() - tic, done


def gradient_rows(data, batch: int) -> None:  # noqa: ANN001
    """Print the share of rows with a non-zero gradient after one BPR batch, by propagation rounds."""
    users, pos, neg = next(iter(BPRSampler(data.train, seed=0).epoch(batch)))
    for layers in range(4):
        model = LightGCN(PlainEmbedding(data.rows(), 64, seed=0), data.train, layers)
        model.bpr_loss(users, pos, neg, 1e-4).backward()
        shares = {name.rsplit(".", 1)[-1]: float((p.grad != 0).any(dim=1).float().mean())
                  for name, p in model.named_parameters()}
        print(f"{layers} rounds, batch {batch}: rows with a gradient " + ", ".join(f"{k} {v:.1%}" for k, v in shares.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=GOWALLA)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, help="batches to time (default: one whole epoch)")
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--gradient-rows", action="store_true", help="measure which rows one step's gradient reaches, and stop")
    parser.add_argument("--hard-negatives", type=int, default=32,
                        help="candidates per triple of the 'hard negatives' row (BPR's negative the highest-scoring)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_lightgcn([args.data / "lightgcnpp_train.txt.gz", args.data / "lightgcnpp_valid.txt.gz"],
                         test=[args.data / "test.txt.gz"])
    if args.gradient_rows:
        gradient_rows(data, args.batch)
        return
    batches = -(-data.train.nnz // args.batch)
    ours = LightGCN(PlainEmbedding(data.rows(), 64, seed=0), data.train)
    models = {
        "ours (embedding_bag)": (ours, {}),
        "torch CSR": (torch_csr_lightgcn(PlainEmbedding(data.rows(), 64, seed=0), data.train), {}),
        "straightforward (COO adjacency)": (PlainLightGCN(PlainEmbedding(data.rows(), 64, seed=0), data.train), {}),
        "ours + InfoNCE": (LightGCN(PlainEmbedding(data.rows(), 64, seed=0), data.train), {"contrast": (0.1, 0.2)}),
        "ours, bf16 propagation": (LightGCN(PlainEmbedding(data.rows(), 64, seed=0), data.train,
                                            propagation_dtype=torch.bfloat16), {}),
        "ours + InfoNCE, bf16 propagation": (LightGCN(PlainEmbedding(data.rows(), 64, seed=0), data.train,
                                                      propagation_dtype=torch.bfloat16), {"contrast": (0.1, 0.2)}),
        f"ours, hard negatives ({args.hard_negatives})": (LightGCN(PlainEmbedding(data.rows(), 64, seed=0), data.train), {}),
    }
    candidates = {f"ours, hard negatives ({args.hard_negatives})": args.hard_negatives}
    probe = BPRSampler(data.train, seed=0)
    users, pos, neg = next(iter(probe.epoch(args.batch)))
    with torch.no_grad():
        losses = [float(m.bpr_loss(users, pos, neg, 1e-4)) for m, _ in list(models.values())[:3]]
    assert max(losses) - min(losses) < 1e-4, f"the models disagree on the first batch: {losses}"
    times = {}
    for name, (model, options) in models.items():
        sampler = BPRSampler(data.train, seed=0, candidates=candidates.get(name, 1))
        draw, seconds, done = time_training(model, sampler, args.steps, args.batch, **options)
        times[name] = draw + seconds / done * batches
        print(f"{name}: {draw:.1f} s to draw the epoch, {seconds:.1f} s for {done} batches -> {times[name]:.1f} s per epoch "
              f"({batches} batches)")
    base = times["ours (embedding_bag)"]
    for name, seconds in times.items():
        print(f"epoch time, {name} / ours: {seconds / base:.2f}x ({args.threads} threads, batch {args.batch})")


if __name__ == "__main__":
    main()
