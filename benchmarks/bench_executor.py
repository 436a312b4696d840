"""What the Ray executor buys: one search run locally and as Ray tasks, side by side, timed by stage.

Runs, into ``--out`` (a finished run is read back, so a stopped benchmark continues):

* ``local-1``: the local executor, one torch thread;
* ``local-N``: the local executor, ``--workers`` torch threads (every core to one job at a time);
* ``ray``: ``--executor ray --workers N``, one torch thread per job (a local cluster of N CPUs).

Prints each run's search, retrain and total seconds, the Ray run's speed-up over both local ones,
and whether the Ray run reached the ``local-1`` run's allocation and test metrics (it must:
same threads per training), then one JSON line.  Extra arguments go to every ``embnas search``::

    python benchmarks/bench_executor.py --out runs/bench_executor/lastfm --workers 2 -- \\
        --train ../shared/data/lastfm_lightgcnpp_cf/train.txt.gz --valid ../shared/data/lastfm_lightgcnpp_cf/valid.txt.gz \\
        --test ../shared/data/lastfm_lightgcnpp_cf/test.txt.gz --model mf --controller random --trials 16 --ask-batch 8 \\
        --retrain-top 4 --epochs 100 --lr 2e-3 --eval-every 5 --patience 10 --fitness-users 0
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def search(out: Path, name: str, extra: list[str]) -> dict:
    if not (out / name / "metrics.json").exists():
        command = ["embnas", "search", "--runs", str(out), "--name", name, "--quiet", *extra]
        print("$ " + " ".join(command), flush=True)
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / name / "metrics.json").read_text())


def arguments(doc: str, count: str) -> tuple[Path, int, list[str]]:
    """``--out``, the ``--<count>`` of workers or processes (default 2) and the searches' own arguments after ``--``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(f"--{count}", type=int, default=2)
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="arguments of every embnas search (after --)")
    args = parser.parse_args()
    return args.out, getattr(args, count), [a for a in args.extra if a != "--"]


def main() -> None:
    out, n, extra = arguments(__doc__, "workers")
    runs = {
        "local-1": search(out, "local-1", [*extra, "--threads", "1"]),
        f"local-{n}": search(out, f"local-{n}", [*extra, "--threads", str(n)]),
        "ray": search(out, "ray", [*extra, "--threads", "1", "--executor", "ray", "--workers", str(n)]),
    }
    print(f"\n{'run':>8} {'search s':>9} {'retrain s':>10} {'both s':>8} {'total s':>8}   test ndcg@20")
    rows = {}
    for name, metrics in runs.items():
        timing = metrics["timing"]
        both = timing["search"] + timing["retrain"]
        rows[name] = {"search": timing["search"], "retrain": timing["retrain"], "both": both, "total": timing["total"],
                      "ndcg@20": metrics["allocated"]["test"]["ndcg@20"]}
        print(f"{name:>8} {timing['search']:>9.1f} {timing['retrain']:>10.1f} {both:>8.1f} {timing['total']:>8.1f}"
              f"   {rows[name]['ndcg@20']:.4f}")
    same = (runs["ray"]["allocation"]["fingerprint"] == runs["local-1"]["allocation"]["fingerprint"]
            and runs["ray"]["allocated"]["test"] == runs["local-1"]["allocated"]["test"])
    speedup = {name: rows[name]["both"] / rows["ray"]["both"] for name in rows if name != "ray"}
    print("ray's search and retrain stages: " + ", ".join(f"{v:.2f}x as fast as {k}" for k, v in speedup.items())
          + f"; the same allocation and test metrics as local-1: {same}")
    print(json.dumps({"workers": n, "runs": rows, "speedup": speedup, "same_as_local_1": same}))
    if not same:
        sys.exit("the Ray run differs from the local run with the same threads")


if __name__ == "__main__":
    main()
