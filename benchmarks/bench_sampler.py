"""How long the BPR sampler takes to draw an epoch, with its collision filter and without.

    python benchmarks/bench_sampler.py --candidates 32          # Gowalla, hard-negative candidates
    python benchmarks/bench_sampler.py --candidates 1 --by pair # one uniform negative

Every drawn negative is checked against the train pairs and redrawn if it is one.  The
check is a binary search (``searchsorted``) in the sorted train keys; the sampler first asks
a filter of hashed slots (:data:`recsys.data.sampler.FILTER_SLOTS_PER_PAIR` a pair) and
searches only the draws whose slot holds a train pair.  "searchsorted alone" is the same
sampler with the filter bypassed; both draw the same epoch (checked).  The two alternate
``--rounds`` times in this process, each from a fresh sampler with the same seed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from recsys.data import BPRSampler, load_lightgcn

GOWALLA = Path("../shared/data/gowalla_lightgcn")


class SearchOnly(BPRSampler):
    """The sampler with every check a binary search, as before the filter."""

    def _is_train(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        keys = users * self.n_items + items
        pos = np.searchsorted(self._keys, keys)
        hit = np.zeros(keys.size, dtype=bool)
        inside = pos < self._keys.size
        hit[inside] = self._keys[pos[inside]] == keys[inside]
        return hit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=GOWALLA)
    parser.add_argument("--candidates", type=int, default=32)
    parser.add_argument("--by", choices=("pair", "user"), default="user")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    data = load_lightgcn([args.data / "lightgcnpp_train.txt.gz", args.data / "lightgcnpp_valid.txt.gz"])
    times: dict[str, list[float]] = {"searchsorted alone": [], "filter, then searchsorted": []}
    draws = {}
    for _ in range(args.rounds):
        for name, cls in (("searchsorted alone", SearchOnly), ("filter, then searchsorted", BPRSampler)):
            sampler = cls(data.train, seed=0, by=args.by, candidates=args.candidates)
            tic = time.perf_counter()
            draws[name] = list(sampler.epoch(8192))  # drawn whole at the first batch, then sliced
            times[name].append(time.perf_counter() - tic)
    assert all(torch.equal(a, b) for x, y in zip(*draws.values()) for a, b in zip(x, y)), "the two drew different epochs"
    pairs = data.train.nnz
    for name, seconds in times.items():
        print(f"{name}: {', '.join(f'{s:.2f}' for s in seconds)} s to draw an epoch "
              f"({pairs:,} triples x {args.candidates} candidates)")
    ratio = np.median(times["searchsorted alone"]) / np.median(times["filter, then searchsorted"])
    print(f"searchsorted alone / filter: {ratio:.2f}x (medians)")


if __name__ == "__main__":
    main()
