"""BET against equal sizes and the frequency rule, its [BET, Table 2] ablation, and faithful vs fast mode.

    python benchmarks/bet_runs.py --dataset gowalla --plan main --shard 1/2 --threads 1   # and --shard 2/2 beside it
    python benchmarks/bet_runs.py --dataset gowalla --plan ablation --shard 1/2 --threads 1
    python benchmarks/bet_runs.py --dataset lastfm --plan main ablation faithful --threads 1
    python benchmarks/bet_runs.py --dataset lastfm --model lightgcn --plan main --threads 1
    python benchmarks/bet_runs.py --dataset gowalla --report        # the tables, from the finished runs

Every job is one ``embnas search`` run (``nas.search``) in
``runs/bet_<dataset>/<name>``, so an interrupted benchmark continues where it stopped and
a finished job is not run again.  Jobs whose supernet settings are identical share one
supernet (the first job's, copied in: training is deterministic under the seed), so the
wall time of a job that got its supernet this way leaves the supernet out; ``--report``
adds the supernet's own training time back for the ``x one training`` column.  Jobs, per sparsity (0.8, 0.9, 0.95 by default):

* ``main``: ``equal`` and ``frequency`` (their one proposal, retrained), and ``bet`` in the
  fast mode (sandwich supernet, fitness by masks on it, successive-halving retraining of
  the top 5);
* ``ablation``: BET with random selection only (``predictor=none``) and with the size-only
  predictor (``predictor=sizes``), both in the fast mode; the DeepSets row is ``main``'s;
* ``faithful``: BET as in [BET] (plain pre-training, each pick fine-tuned for 10
  epochs, the top 5 fully retrained);
* ``controllers``: every other controller (random search, ``rl``, ``nevergrad``, ``optuna``,
  one-shot ``darts``, the pruning baselines ``magprune`` and ``pep``), with successive-halving
  retraining where there are several candidates; multi-trial ones share the fast BET jobs'
  sandwich supernet, ``magprune`` the plain full model;
* ``proposals``: fast BET whose sandwich supernet trains on BET's own sampler instead of
  uniform sizes (``--supernet-proposals controller``);
* ``spaces``: two of them (``SPACE_CONTROLLERS``, ``--space-controllers``)
  on the per-field space and the block space (8 frequency groups × 4 column blocks);
* ``options``: the fast mode with each option beyond [BET] changed alone: every one
  of the top 5 fully retrained (``fullretrain``), four picks per iteration scored together
  (``batch4``), the block space (8 frequency groups × 4 column blocks), the per-field space,
  and the rule-based allocations evaluated before Algorithm 1 starts (``anchors``).

Data and training protocol (per dataset, as in ``fitness_trust.py``): MF, d_max 64, d_min 1,
trained on the dataset's train split, validated (early stopping, fitness) on its validation
split, tested once on test.  ``--report`` prints test Recall@20 / NDCG@20, bytes stored, and
wall time as a multiple of one full training (the plain full-model training of the
``equal`` run at the same sparsity, on the same machine).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import nas
from nas.pipeline.config import FineTuneConfig, SearchConfig, SupernetOptions, TrainingOptions
from nas.pipeline.data import DataSpec, load_data
from nas.pipeline.runs import Run
from nas.pipeline.search import run_search

DATASETS = {
    "lastfm": ("lastfm_lightgcnpp_cf", "train.txt.gz", "valid.txt.gz", "test.txt.gz"),
    "gowalla": ("gowalla_lightgcn", "lightgcnpp_train.txt.gz", "lightgcnpp_valid.txt.gz", "test.txt.gz"),
}
#: epochs, Adam lr, L2, epochs between validations, patience (validations).
PROTOCOL = {"lastfm": (200, 2e-3, 1e-4, 5, 3), "gowalla": (50, 1e-3, 1e-4, 5, 3)}
PLANS = ("main", "ablation", "faithful", "options", "controllers", "spaces", "proposals", "finetune")
#: Controllers run on the per-field and block spaces by the ``spaces`` plan.
SPACE_CONTROLLERS = ["nevergrad", "optuna"]
#: Every other controller of the project, in the fast mode where it searches by fitness.
OTHER_CONTROLLERS = ("random", "rl", "nevergrad", "optuna", "darts", "magprune", "pep")
#: Controllers whose supernet is the plain full-size model (shared with equal sizes'), or one of their own.
_PLAIN_SUPERNET = ("equal", "frequency", "magprune")
_OWN_SUPERNET = ("darts", "pep")


def jobs(dataset: str, plans: list[str], sparsities: list[float]) -> list[tuple[str, dict]]:
    """``(name, config overrides)`` of every job of the plans, in a fixed order."""
    fast = {"controller": "bet", "retrain": "halving"}
    faithful = {"controller": "bet", "retrain": "full", "evaluator": "finetune",
                "supernet": SupernetOptions(mode="full"), "finetune": FineTuneConfig.paper(reg=PROTOCOL[dataset][2])}
    out = []
    for plan in PLANS:
        for sparsity in sparsities if plan in plans else []:
            if plan == "main":
                out += [(f"equal-{sparsity}", {"controller": "equal"}), (f"frequency-{sparsity}", {"controller": "frequency"}),
                        (f"bet-{sparsity}", fast)]
            elif plan == "ablation":
                out += [(f"bet-random-{sparsity}", {**fast, "controller_options": {"predictor": "none"}}),
                        (f"bet-sizes-{sparsity}", {**fast, "controller_options": {"predictor": "sizes"}})]
            elif plan == "faithful":
                out += [(f"bet-faithful-{sparsity}", faithful)]
            elif plan == "controllers":
                out += [(f"{name}-{sparsity}", {"controller": name, "retrain": "halving"}) for name in OTHER_CONTROLLERS]
            elif plan == "finetune":  # the top 5 judged by a short fine-tune from the supernet, the best retrained
                out += [(f"bet-finetune-{sparsity}", {**fast, "retrain": "finetune"})]
            elif plan == "proposals":
                out += [(f"bet-own-{sparsity}", {**fast, "supernet": SupernetOptions(proposals="controller")})]
            elif plan == "spaces":
                for name in SPACE_CONTROLLERS:
                    out += [(f"{name}-perfield-{sparsity}", {"controller": name, "retrain": "halving", "space": "per-field"}),
                            (f"{name}-block-{sparsity}", {"controller": name, "retrain": "halving", "space": "block",
                                                          "space_options": {"groups": 8, "blocks": 4}})]
            else:
                out += [(f"bet-fullretrain-{sparsity}", {**fast, "retrain": "full"}),
                        (f"bet-batch4-{sparsity}", {**fast, "ask_batch": 4}),
                        (f"bet-block-{sparsity}", {**fast, "space": "block", "space_options": {"groups": 8, "blocks": 4}}),
                        (f"bet-perfield-{sparsity}", {**fast, "space": "per-field"}),
                        (f"bet-anchors-{sparsity}", {**fast, "controller_options": {"anchors": True}})]
    return [(name, {**overrides, "budget": name.rsplit("-", 1)[1]}) for name, overrides in out]


def config_for(dataset: str, data_dir: Path, overrides: dict, threads: int, seed: int = 0) -> SearchConfig:
    folder, train, valid, test = DATASETS[dataset]
    root = data_dir / folder
    epochs, lr, reg, eval_every, patience = PROTOCOL[dataset]
    data = DataSpec("lightgcn", (str(root / train),), (str(root / valid),), (str(root / test),))
    train_options = TrainingOptions(epochs=epochs, lr=lr, reg=reg, eval_every=eval_every, patience=patience)
    return SearchConfig(data=data, d_max=64, d_min=1, trials=50, train=train_options, threads=threads, seed=seed, **overrides)


#: Settings that do not change how the supernet is trained.
_SEARCH_ONLY = ("controller", "controller_options", "trials", "ask_batch", "fitness_users", "evaluator", "finetune",
                "retrain", "retrain_top")


def _supernet_key(config: dict) -> str:
    """What fixes a run's supernet: plain training ignores the budget and the space; sandwich training does not."""
    mode = "full" if config["controller"] in _PLAIN_SUPERNET else config["supernet"]["mode"]
    if config["controller"] in _OWN_SUPERNET:  # trained jointly with the controller: never shared
        mode = f"{config['controller']}:{json.dumps(config['controller_options'], sort_keys=True)}"
    ignored = (*_SEARCH_ONLY, "data_fingerprint") + (("budget", "space", "space_options", "supernet") if mode == "full" else ())
    return json.dumps({**{k: v for k, v in config.items() if k not in ignored}, "mode": mode}, sort_keys=True)


def share_supernet(folder: Path, name: str, config: SearchConfig, fingerprint: str) -> str | None:
    """Seed job ``name`` with the supernet a finished job of identical supernet settings trained.

    The supernet is deterministic under the seed, so this saves retraining the same weights
    (the plain full model of every equal, frequency and faithful job; the sandwich supernet of
    every fast BET job at one sparsity).  Returns the job it came from.
    """
    target = folder / name / "checkpoints" / "supernet.safetensors"
    if target.exists() or not folder.is_dir():
        return None
    key = _supernet_key(config.to_dict())
    for other in sorted(p for p in folder.iterdir() if p.name != name and (p / "config.json").exists()):
        source = Run(other)
        trained = [e for e in source.events("trained") if e["stage"] == "supernet"]
        recorded = SearchConfig.upgrade(source.config())
        same = _supernet_key(recorded) == key and recorded.get("data_fingerprint") == fingerprint
        if not trained or not source.has("checkpoints/supernet.safetensors") or not same:
            continue
        run = Run.create(folder, {**config.to_dict(), "data_fingerprint": fingerprint}, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source.path("checkpoints", "supernet.safetensors"), target.with_suffix(".tmp"))
        os.replace(target.with_suffix(".tmp"), target)
        run.log_event("trained", **{k: v for k, v in trained[-1].items() if k not in ("event", "time")})
        return other.name
    return None


def report(folder: Path, names: list[str]) -> list[dict]:
    """One row per finished job, with wall time relative to the plain training of the same sparsity's equal run."""
    rows = []
    for name in names:
        if not (folder / name / "metrics.json").exists():
            continue
        result = nas.SearchResult.read(folder / name)
        sparsity = name.rsplit("-", 1)[1]
        # A job stopped and resumed times only its last part: its wall time is not comparable.
        resumed = sum(1 for _ in Run(folder / name).events("start")) > 1
        reference_folder = folder / f"equal-{sparsity}"
        reference = nas.SearchResult.read(reference_folder) if (reference_folder / "metrics.json").exists() else None
        one_training = reference.full_train_seconds if reference else float("nan")
        test = result.metrics["test"]
        # A shared supernet was not trained in this job: count its training as if it had been.
        seconds = result.timings["total"] - result.timings["supernet"] + result.full_train_seconds
        full = reference.full_metrics["test"]["ndcg@20"] if reference else float("nan")
        rows.append({
            "job": name, "sparsity": float(sparsity), "recall@20": test["recall@20"], "ndcg@20": test["ndcg@20"],
            "retain": test["ndcg@20"] / full,
            "bytes": result.export_bytes, "values": result.allocation.cost,
            "seconds": None if resumed else seconds, "x_training": None if resumed else seconds / one_training,
            "timing": dict(result.timings), "one_training": one_training,
        })
    return rows


#: [BET, Table 1] (Gowalla, LightGCN): NDCG@20 of BET over equal sizes at 80 / 90 / 95 % sparsity.
PAPER_GAIN = {0.8: 0.1483 / 0.1400 - 1, 0.9: 0.1376 / 0.1217 - 1, 0.95: 0.1171 / 0.0872 - 1}


#: [LERSBench, Table 7] (Gowalla, LightGCN): NDCG retain ratio of the best method, PEP and MagPrune, by sparsity.
PAPER_RETAIN = {0.8: {"best (DHE)": 0.8844, "PEP": 0.8735, "MagPrune": 0.8551},
                0.95: {"best (PEP)": 0.7864, "PEP": 0.7864, "MagPrune": 0.2483}}


def retain_table(rows: list[dict]) -> str:
    """Every job's NDCG@20 as a share of the full model's (plain full-size training), beside [LERSBench, Table 7]."""
    lines = ["| job | sparsity | NDCG@20 retain ratio | [LERSBench] Table 7 (LightGCN, Gowalla) |", "|---|---|---|---|"]
    for r in rows:
        paper = PAPER_RETAIN.get(r["sparsity"])
        cited = ", ".join(f"{k} {v:.4f}" for k, v in paper.items()) if paper else "no 90 % column"
        lines.append(f"| {r['job']} | {r['sparsity']} | {r['retain']:.4f} | {cited} |")
    return "\n".join(lines)


def gains_table(rows: list[dict]) -> str:
    """Every job's test Recall@20 / NDCG@20 relative to equal sizes at its sparsity, beside [BET]'s own gain."""
    equal = {r["sparsity"]: r for r in rows if r["job"].startswith("equal-")}
    lines = ["| job | sparsity | Recall@20 vs equal | NDCG@20 vs equal | paper's BET (LightGCN, Gowalla) NDCG@20 |",
             "|---|---|---|---|---|"]
    for r in rows:
        base = equal.get(r["sparsity"])
        if base is None or r is base:
            continue
        paper = PAPER_GAIN.get(r["sparsity"]) if r["job"].startswith("bet") else None
        lines.append(f"| {r['job']} | {r['sparsity']} | {r['recall@20'] / base['recall@20'] - 1:+.1%} | "
                     f"{r['ndcg@20'] / base['ndcg@20'] - 1:+.1%} | {'' if paper is None else f'{paper:+.1%}'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(DATASETS), required=True)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--plan", nargs="+", choices=PLANS, default=["main"])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.8, 0.9, 0.95])
    parser.add_argument("--shard", default="1/1", help="k/n: run every n-th job from the k-th (run n shards side by side)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", default="mf", help="the backbone (runs in runs/bet_<dataset>_<model> unless mf)")
    parser.add_argument("--seed", type=int, default=0, help="the runs' seed (use another --runs folder per seed)")
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--space-controllers", nargs=2, default=SPACE_CONTROLLERS, metavar="NAME",
                        help="the two controllers of the spaces plan (default: %(default)s)")
    parser.add_argument("--jobs", nargs="+", metavar="NAME", help="only these jobs of the plans (e.g. rl-0.9 darts-0.9)")
    parser.add_argument("--report", action="store_true", help="print the tables of the finished jobs, run nothing")
    args = parser.parse_args()
    SPACE_CONTROLLERS[:] = args.space_controllers
    folder = args.runs / (f"bet_{args.dataset}" if args.model == "mf" else f"bet_{args.dataset}_{args.model}")
    planned = jobs(args.dataset, list(PLANS) if args.report else args.plan, args.sparsities)
    if args.jobs:
        unknown = set(args.jobs) - {name for name, _ in planned}
        if unknown:
            sys.exit(f"--jobs names jobs that are not in the plans: {sorted(unknown)}")
        planned = [(name, overrides) for name, overrides in planned if name in args.jobs]
    if args.report:
        rows = report(folder, [name for name, _ in planned])
        print("| job | sparsity | Recall@20 | NDCG@20 | bytes stored | wall time | x one training |\n|---|---|---|---|---|---|---|")
        for r in rows:
            timed = "resumed | -" if r["seconds"] is None else f"{r['seconds']:.0f} s | {r['x_training']:.2f}"
            print(f"| {r['job']} | {r['sparsity']} | {r['recall@20']:.4f} | {r['ndcg@20']:.4f} | {r['bytes']:,} | {timed} |")
        print(gains_table(rows))
        print(retain_table(rows))
        print(json.dumps(rows))
        return
    k, n = (int(x) for x in args.shard.split("/"))
    if not 1 <= k <= n:
        sys.exit(f"--shard must be k/n with 1 <= k <= n, got {args.shard}")
    fingerprint = None
    for name, overrides in planned[k - 1 :: n]:
        config = config_for(args.dataset, args.data_dir, {**overrides, "model": args.model}, args.threads, args.seed)
        fingerprint = fingerprint or load_data(config.data).fingerprint()
        shared = share_supernet(folder, name, config, fingerprint)
        print(f"== {name}" + (f" (supernet of {shared})" if shared else ""), flush=True)
        result = run_search(config, run_dir=folder / name, progress=False)
        test = result.metrics["test"]
        print(f"   recall@20 {test['recall@20']:.4f} ndcg@20 {test['ndcg@20']:.4f} in {result.seconds:.0f} s", flush=True)


if __name__ == "__main__":
    main()
