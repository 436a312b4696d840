"""Serve an exported MF model: the top-k items of a batch of users, from the exported tables only.

    embnas search                                               # trains, searches, writes runs/<id>/export
    python examples/serve_mf.py runs/<id>/export                # every PackedEmbedding layout
    embnas export runs/<id> --format torchrec                   # optional: TorchRec tables (embnas[torchrec])
    python examples/serve_mf.py runs/<id>/export --torchrec runs/<id>/export-torchrec

An MF score is the dot product of a user's and an item's vector.  The items are scored in
chunks looked up from the served table, keeping the best k so far, so serving never
holds a dense copy of the item table beside the layout's own memory.  For each way of
serving, the script prints its memory, the latency of one batch (median of ``--repeat``)
and checks that every way returns the same items as the first.  Only torch and
``nas.artifact`` are imported (TorchRec too with ``--torchrec``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from nas.artifact.serving import PackedArtifactError, PackedEmbedding


def top_k(tables, users: torch.Tensor, k: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores and ids of the ``k`` best items of each user, scanning the item table ``chunk`` ids at a time."""
    vectors = tables.lookup("user", users)  # (batch, d_max); zeros past each row's size
    items = tables.rows["item"]
    best_scores = torch.full((len(users), 0), float("-inf"))
    best_items = torch.zeros((len(users), 0), dtype=torch.int64)
    for start in range(0, items, chunk):
        ids = torch.arange(start, min(items, start + chunk))
        scores, where = (vectors @ tables.lookup("item", ids).to(vectors.dtype).T).topk(min(k, len(ids)), dim=1)
        scores, found = torch.cat([best_scores, scores], 1), torch.cat([best_items, where + start], 1)
        best_scores, where = scores.topk(min(k, scores.shape[1]), dim=1)
        best_items = found.gather(1, where)
    return best_scores, best_items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", help="a packed export folder (runs/<id>/export)")
    parser.add_argument("--torchrec", help="also serve this TorchRec export of the same run (embnas export --format torchrec)")
    parser.add_argument("--k", type=int, default=20, help="items returned per user (default: 20)")
    parser.add_argument("--batch", type=int, default=256, help="users per request (default: 256)")
    parser.add_argument("--chunk", type=int, default=65_536, help="items scored per matrix product (default: 65,536)")
    parser.add_argument("--repeat", type=int, default=20, help="timed batches per way of serving (default: 20)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    try:
        ways = {"PackedEmbedding packed": PackedEmbedding.load(args.export, layout="packed")}  # compiled where it builds
        if ways["PackedEmbedding packed"].native:
            ways["PackedEmbedding packed, eager"] = PackedEmbedding.load(args.export, layout="packed", native=False)
        ways |= {f"PackedEmbedding {layout}": PackedEmbedding.load(args.export, layout=layout)
                 for layout in ("tiered", "dense")}
        if args.torchrec:
            from nas.artifact.torchrec_tables import TorchRecTables

            ways["TorchRec EmbeddingBagCollection"] = TorchRecTables.load(args.torchrec)
    except (PackedArtifactError, ModuleNotFoundError) as error:
        raise SystemExit(f"serve_mf.py: {error}") from None
    first = next(iter(ways.values()))
    if set(first.rows) != {"user", "item"}:
        raise SystemExit(f"{args.export}: an MF export has tables user and item, this one has {sorted(first.rows)}")
    generator = torch.Generator().manual_seed(args.seed)
    users = torch.randint(0, first.rows["user"], (args.batch,), generator=generator)

    print(f"{first.rows['user']:,} users, {first.rows['item']:,} items, d_max {first.dim}; "
          f"batches of {args.batch} users, top {args.k}, {args.threads} thread(s)")
    print(f"{'served by':<32} {'memory':>12} {'ms / batch':>11} {'users / s':>10}  same top-k")
    reference = None
    for name, tables in ways.items():
        top_k(tables, users, args.k, args.chunk)  # warm up
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            _, items = top_k(tables, users, args.k, args.chunk)
            times.append(time.perf_counter() - start)
        reference = items if reference is None else reference
        median = statistics.median(times)
        print(f"{name:<32} {tables.memory_bytes():>10,} B {median * 1e3:>11.2f} {args.batch / median:>10,.0f}  "
              f"{'yes' if torch.equal(items, reference) else 'NO'}")
    print(f"\nfirst user {users[0].item()}: items {reference[0, :10].tolist()}...")


if __name__ == "__main__":
    main()
