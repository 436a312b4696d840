"""What a front costs against searching each budget on its own, and whether it reaches the same answers.

Runs, into ``--out`` (every part resumable: run the same command again after a stop):

* ``front``: ``embnas search --budget B1,B2,...`` (one supernet trained under every budget);
* ``single-<B>``: the same search at each budget alone, with its own supernet;
* ``same-<B>``: the same search at each budget alone, given ``--supernet-budgets B1,B2,...``,
  which must reach the front's answer at that budget.

Prints each budget's test metric for the three, the front's wall time against the sum of
the single searches' (and against one of them), and one JSON line.  Extra arguments go to
every ``embnas search`` (data, model, controller, training)::

    python benchmarks/front_cost.py --out runs/front_cost/lastfm --budgets 0.5,0.8,0.9,0.95 -- \\
        --train ../shared/data/lastfm_lightgcnpp_cf/train.txt.gz --valid ../shared/data/lastfm_lightgcnpp_cf/valid.txt.gz \\
        --test ../shared/data/lastfm_lightgcnpp_cf/test.txt.gz --model mf --controller shape --trials 18 --retrain-top 5 \\
        --retrain halving --epochs 200 --lr 2e-3 --eval-every 5 --patience 10
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def search(out: Path, name: str, budget: str, extra: list[str]) -> None:
    command = ["embnas", "search", "--runs", str(out), "--name", name, "--budget", budget, "--quiet", *extra]
    print("$ " + " ".join(command), flush=True)
    subprocess.run(command, check=True)


def seconds(run: Path) -> float:
    return float(json.loads((run / "metrics.json").read_text())["seconds"])


def test_metric(run: Path, metric: str) -> float:
    return float(json.loads((run / "metrics.json").read_text())["allocated"]["test"][metric])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budgets", required=True, help="comma-separated, as --budget takes them")
    parser.add_argument("--metric", default="ndcg@20")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="arguments of every embnas search (after --)")
    args = parser.parse_args()
    extra = [a for a in args.extra if a != "--"]
    budgets = [b.strip() for b in args.budgets.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)

    search(args.out, "front", args.budgets, extra)
    for budget in budgets:
        search(args.out, f"single-{budget}", budget, extra)
        search(args.out, f"same-{budget}", budget, [*extra, "--supernet-budgets", args.budgets])

    front = json.loads((args.out / "front" / "front.json").read_text())
    front_seconds = sum(entry["seconds"]["total"] for entry in front["budgets"])
    single_seconds = [seconds(args.out / f"single-{b}") for b in budgets]
    rows = []
    print(f"\n{'budget':>8} {'front':>8} {'same sn':>8} {'single':>8}   test {args.metric}")
    for entry, budget in zip(front["budgets"], budgets):
        same, single = test_metric(args.out / f"same-{budget}", args.metric), test_metric(args.out / f"single-{budget}", args.metric)
        rows.append({"budget": budget, "front": entry["test"][args.metric], "same_supernet": same, "single": single})
        print(f"{budget:>8} {entry['test'][args.metric]:>8.4f} {same:>8.4f} {single:>8.4f}")
    ratio_sum, ratio_one = front_seconds / sum(single_seconds), front_seconds / (sum(single_seconds) / len(budgets))
    print(f"front {front_seconds:.0f} s; the single searches {sum(single_seconds):.0f} s in all "
          f"({sum(single_seconds) / len(budgets):.0f} s each on average): the front costs {ratio_sum:.2f}x their sum, "
          f"{ratio_one:.2f}x one of them")
    print(json.dumps({"budgets": rows, "front_seconds": front_seconds, "single_seconds": single_seconds,
                      "front_vs_sum": ratio_sum, "front_vs_one": ratio_one}))
    if any(abs(r["front"] - r["same_supernet"]) > 1e-12 for r in rows):
        sys.exit("a front's budget and the single search given its supernet budgets differ")


if __name__ == "__main__":
    main()
