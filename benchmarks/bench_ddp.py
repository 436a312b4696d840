"""What ``--ddp N`` buys: the same search with one process of N threads and with N processes of one thread each.

Runs, into ``--out`` (a finished run is read back):

* ``one-process``: ``--threads N`` (every core to one process);
* ``ddp``: ``--ddp N --threads 1`` (one core to each process; the supernet and every retrain data-parallel).

Prints the supernet's and the retrains' seconds of each, the ratio, and how far the two
runs' test metrics are apart (float rounding only: the same trials and allocation are
expected), then one JSON line.  Extra arguments go to both ``embnas search`` runs::

    python benchmarks/bench_ddp.py --out runs/bench_ddp/lastfm --processes 2 -- \\
        --train ../shared/data/lastfm_lightgcnpp_cf/train.txt.gz --valid ../shared/data/lastfm_lightgcnpp_cf/valid.txt.gz \\
        --test ../shared/data/lastfm_lightgcnpp_cf/test.txt.gz --model mf --controller random --trials 8 \\
        --retrain-top 2 --epochs 60 --lr 2e-3 --eval-every 5 --patience 10 --reference none
"""

from __future__ import annotations

import json

from bench_executor import arguments, search  # the same read-back-or-run helpers


def main() -> None:
    out, n, extra = arguments(__doc__, "processes")
    runs = {"one-process": search(out, "one-process", [*extra, "--threads", str(n)]),
            "ddp": search(out, "ddp", [*extra, "--threads", "1", "--ddp", str(n)])}
    rows = {name: {"supernet": m["timing"]["supernet"], "retrain": m["timing"]["retrain"],
                   "ndcg@20": m["allocated"]["test"]["ndcg@20"], "fingerprint": m["allocation"]["fingerprint"]}
            for name, m in runs.items()}
    print(f"\n{'run':>12} {'supernet s':>11} {'retrain s':>10}   test ndcg@20")
    for name, row in rows.items():
        print(f"{name:>12} {row['supernet']:>11.1f} {row['retrain']:>10.1f}   {row['ndcg@20']:.6f}")
    one, ddp = rows["one-process"], rows["ddp"]
    speedup = {stage: one[stage] / ddp[stage] for stage in ("supernet", "retrain")}
    gap = max(abs(runs["ddp"]["allocated"]["test"][k] - v) for k, v in runs["one-process"]["allocated"]["test"].items())
    same = one["fingerprint"] == ddp["fingerprint"]
    print(f"--ddp {n}: supernet {speedup['supernet']:.2f}x, retrain {speedup['retrain']:.2f}x as fast as one process of "
          f"{n} threads; the same allocation: {same}; test metrics apart by at most {gap:.2e}")
    print(json.dumps({"processes": n, "runs": rows, "speedup": speedup, "same_allocation": same, "metric_gap": gap}))


if __name__ == "__main__":
    main()
