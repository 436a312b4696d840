"""How far can the cheap fitness be trusted?  Kendall τ between each evaluator and retraining.

    python benchmarks/fitness_trust.py --dataset lastfm --threads 1
    python benchmarks/fitness_trust.py --dataset gowalla --threads 1

For 24 allocations spanning sparsity 0.5-0.95, from the equal-size, frequency-rule and
random baselines on the per-feature and block 8×4 spaces, the script

1. *retrains* MF (d = 64, BPR, early stopping on validation) with each allocation applied
   from scratch and records its validation quality ([BET, eq. 13] on every validation user):
   the ground truth the cheap fitness tries to predict.  Results are appended to a cache
   (``--cache``), so an interrupted run continues where it stopped;
2. *evaluates* the same allocations with every evaluator: the masked full model
   (``masked``: plain pre-training, BET's starting point), the sandwich-trained supernet
   (``supernet``) and BET's fine-tune protocol (``finetune``: 200 SGD steps from the
   pre-trained weights), on a fixed sample of validation users as in a search;
3. prints Kendall τ (and Spearman ρ) of each evaluator's fitness against the retrained
   quality, over all allocations and within each sparsity, with the wall time of each part
   as a ratio to one full-model training.

With ``--precisions`` the allocations carry a precision per row (``fp32, fp16, int8, int4``)
under byte budgets of 20, 10 and 5 % of the float32 tables' bytes: equal sizes at each
precision, the frequency rule at int8 and int4, and two random draws of sizes and precisions
per budget, every model trained and scored through the
quantisation it would ship with (the supernet's sandwich variants are quantised too).  "Within
a sparsity" then reads "within a byte budget".

Data: ``../shared/data/lastfm_lightgcnpp_cf`` (train / valid / test) or
``../shared/data/gowalla_lightgcn`` (``lightgcnpp_train`` / ``lightgcnpp_valid`` / ``test``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.stats import kendalltau, spearmanr

from controllers import CONTROLLERS
from nas.core import Allocation, Budget, table_specs
from nas.pipeline.embedding import MaskableEmbedding
from recsys.data import InteractionData, load_lightgcn
from recsys.metrics import FITNESS_KS, fitness_quality
from recsys.models import MF
from recsys.train import TrainConfig, evaluate, train_bpr
from search_spaces import SPACES

DATASETS = {
    "lastfm": ("lastfm_lightgcnpp_cf", "train.txt.gz", "valid.txt.gz", "test.txt.gz"),
    "gowalla": ("gowalla_lightgcn", "lightgcnpp_train.txt.gz", "lightgcnpp_valid.txt.gz", "test.txt.gz"),
}
#: Training protocol per dataset: (max epochs, lr, L2, eval every, patience).
PROTOCOL = {"lastfm": (200, 2e-3, 1e-4, 5, 3), "gowalla": (50, 1e-3, 1e-4, 5, 3)}
D_MAX = 64


@dataclass(frozen=True)
class Candidate:
    """One allocation of the benchmark, named by how it was made."""

    space: str
    controller: str
    sparsity: float  # with a byte budget: 1 - its share of the float32 tables' bytes
    seed: int
    precision: str | None = None  # a rule's precision (only under a byte budget)
    bytes: bool = False

    @property
    def label(self) -> str:
        if not self.bytes:
            return f"{self.space}/{self.controller}#{self.seed}@{self.sparsity:g}"
        return f"{self.space}/{self.controller}:{self.precision or 'drawn'}#{self.seed}@{1 - self.sparsity:g}B"


#: The precisions searched with ``--precisions``.
PRECISIONS = ("fp32", "fp16", "int8", "int4")


def candidates(precisions: bool = False) -> list[Candidate]:
    """The 24 allocations: 20 per-feature and 4 block ones, sparsity 0.5 to 0.95; or 24 under byte budgets."""
    if precisions:
        rules = [("equal", p) for p in PRECISIONS] + [("frequency", "int8"), ("frequency", "int4")]
        return [
            Candidate("per-feature", controller, sparsity, seed, precision, bytes=True)
            for sparsity in (0.8, 0.9, 0.95)
            for controller, precision, seed in [(c, p, 0) for c, p in rules] + [("random", None, k) for k in range(2)]
        ]
    result = [
        Candidate("per-feature", controller, sparsity, seed)
        for sparsity in (0.5, 0.7, 0.8, 0.9, 0.95)
        for controller, seed in (("equal", 0), ("frequency", 0), ("random", 0), ("random", 1))
    ]
    result += [Candidate("block", "frequency", s, 0) for s in (0.7, 0.9)]
    result += [Candidate("block", "random", s, 0) for s in (0.8, 0.95)]
    return result


def load(dataset: str, root: Path) -> InteractionData:
    folder, train, valid, test = DATASETS[dataset]
    d = root / folder
    if not d.exists():
        sys.exit(f"{d} not found: pass --data-root pointing at the shared data folder")
    return load_lightgcn(d / train, d / valid, d / test)


def candidate_budget(candidate: Candidate, rows: dict[str, int]) -> Budget:
    """The candidate's budget: its sparsity, or bytes at its share of the float32 tables."""
    if not candidate.bytes:
        return Budget.from_sparsity(candidate.sparsity, rows, D_MAX)
    full_bytes = sum(rows.values()) * D_MAX * 4
    return Budget.from_bytes(int(full_bytes * (1 - candidate.sparsity)), rows, D_MAX, 1, precisions=PRECISIONS)


def build_allocation(candidate: Candidate, data: InteractionData) -> tuple[Allocation, Budget]:
    rows = data.rows()
    options = {"groups": 8, "blocks": 4} if candidate.space == "block" else {}
    space = SPACES.get(candidate.space)(table_specs(rows), data.frequencies(), 1, D_MAX, **options)
    budget = candidate_budget(candidate, rows)
    chosen = {}
    if candidate.bytes:
        space = space.with_precisions(PRECISIONS)
        chosen = {"precision": candidate.precision} if candidate.precision else {}  # random draws its own
    controller = CONTROLLERS.get(candidate.controller)(space, budget, seed=candidate.seed, **chosen)
    allocation = space.allocation(controller.ask(1)[0])
    allocation.validate(budget)
    return allocation, budget


def train_config(dataset: str, seed: int, threads: int) -> TrainConfig:
    epochs, lr, reg, every, patience = PROTOCOL[dataset]
    return TrainConfig(epochs=epochs, batch_size=2048, lr=lr, reg=reg, eval_every=every, patience=patience,
                       seed=seed, threads=threads)


def retrain(data: InteractionData, allocation: Allocation | None, config: TrainConfig) -> dict[str, float]:
    """Validation quality (all users) of MF retrained from scratch under ``allocation``."""
    tic = time.perf_counter()
    embedding = MaskableEmbedding(data.rows(), D_MAX, seed=config.seed)
    embedding.set_allocation(allocation)
    model = MF(embedding)
    result = train_bpr(model, data, config, progress=False)
    quality = fitness_quality(evaluate(model, data, "valid", FITNESS_KS))
    return {"quality": quality, "epochs": result.best_epoch, "seconds": time.perf_counter() - tic}


def read_cache(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    records = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        records[record["label"]] = record
    return records


def retrain_phase(args: argparse.Namespace, data: InteractionData) -> dict[str, dict]:
    config = train_config(args.dataset, args.seed, args.threads)
    todo = [("full", None)] + [(c.label, c) for c in candidates(args.precisions)]
    shard, shards = (int(v) for v in args.shard.split("/"))
    for position, (label, candidate) in enumerate(todo):
        cache = read_cache(args.cache)  # re-read: other shards append to the same cache
        if label in cache or position % shards != shard:
            continue
        allocation, budget = (None, None) if candidate is None else build_allocation(candidate, data)
        record = {"label": label, **retrain(data, allocation, config)}
        if allocation is not None:
            record.update(fingerprint=allocation.fingerprint(), retain_ratio=budget.retain_ratio(allocation.cost),
                          sparsity=candidate.sparsity, bits=allocation.bits() if candidate.bytes else None)
        cache[label] = record
        with open(args.cache, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        print(json.dumps(record), file=sys.stderr, flush=True)
    return read_cache(args.cache)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(DATASETS), required=True)
    parser.add_argument("--data-root", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--phase", choices=("retrain", "evaluate", "all"), default="all")
    parser.add_argument("--cache", type=Path, default=None, help="retrain results (JSON lines); default runs/fitness_trust_<dataset>.jsonl")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shard", default="0/1", help="retrain only the allocations k, k+n, ... (k/n), to run n processes side by side")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fitness-users", type=int, default=2000, help="validation users sampled for fitness (0: all)")
    parser.add_argument("--supernet-random", type=int, nargs="+", default=[2, 0],
                        help="sandwich supernets to train, by random allocations per step (the first is timed in the pipeline)")
    parser.add_argument("--partial", action="store_true",
                        help="evaluate while retrains still run; tau uses the allocations retrained by the end")
    parser.add_argument("--precisions", action="store_true",
                        help=f"allocations with a precision per row ({', '.join(PRECISIONS)}) under byte budgets")
    parser.add_argument("--skip-finetune-timing", action="store_true", help="do not time the fine-tune evaluator on 100 allocations")
    args = parser.parse_args()
    args.cache = args.cache or Path("runs") / f"fitness_trust_{args.dataset}{'_precisions' if args.precisions else ''}.jsonl"
    args.cache.parent.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    data = load(args.dataset, args.data_root)
    truth = read_cache(args.cache) if args.phase == "evaluate" else retrain_phase(args, data)
    if args.phase == "retrain":
        return
    missing = [c.label for c in candidates(args.precisions) if c.label not in truth] + ([] if "full" in truth else ["full"])
    if missing and not args.partial:
        sys.exit(f"{len(missing)} retrains are not in {args.cache} yet (other shards still running?): {missing[:3]} ...")
    evaluate_phase(args, data, truth)


def evaluate_phase(args: argparse.Namespace, data: InteractionData, truth: dict[str, dict]) -> None:
    from nas.pipeline.config import FineTuneConfig
    from nas.pipeline.evaluators import FineTuneEvaluator, SupernetEvaluator
    from nas.pipeline.config import SupernetOptions
    from nas.pipeline.supernet import train_supernet
    from recsys.train import user_subset

    config = train_config(args.dataset, args.seed, args.threads)
    users = user_subset(data.valid, args.fitness_users, args.seed)
    rows = data.rows()
    space = SPACES.get("per-feature")(table_specs(rows), data.frequencies(), 1, D_MAX)
    if args.precisions:
        space = space.with_precisions(PRECISIONS)
    made = [(c, *build_allocation(c, data)) for c in candidates(args.precisions)]
    allocations = [allocation for _, allocation, _ in made]
    timing: dict[str, float] = {}

    def timed(label: str, fn):  # noqa: ANN001, ANN202
        tic = time.perf_counter()
        value = fn()
        timing[label] = time.perf_counter() - tic
        print(f"{label}: {timing[label]:.1f} s", file=sys.stderr, flush=True)
        return value

    pretrained = MF(MaskableEmbedding(rows, D_MAX, seed=args.seed))
    timed("full training", lambda: train_bpr(pretrained, data, config, progress=False))
    # One supernet for the benchmark's whole range of budgets (a search trains it for its one budget).
    budgets = list({c.sparsity: budget for c, _, budget in made}.values())
    supernets = {}
    for random in args.supernet_random:
        model = MF(MaskableEmbedding(rows, D_MAX, seed=args.seed))
        timed(f"supernet training (sandwich, {random} random)", lambda m=model, r=random: train_supernet(
            m, data, space, budgets, config, SupernetOptions(mode="sandwich", random=r), progress=False))
        supernets[random] = model
    supernet = supernets[args.supernet_random[0]]

    evaluators = {
        "masked pre-trained": SupernetEvaluator(pretrained, data, users),
        **{f"supernet (sandwich, {r} random)": SupernetEvaluator(m, data, users) for r, m in supernets.items()},
        "fine-tune 200 SGD steps": FineTuneEvaluator(pretrained, data, users, FineTuneConfig(reg=config.reg), seed=args.seed),
        "fine-tune 200 Adam steps": FineTuneEvaluator(
            pretrained, data, users, FineTuneConfig(reg=config.reg, optimizer="adam", lr=config.lr, gamma=1.0), seed=args.seed),
    }
    fitness = {name: timed(f"fitness of {len(allocations)} allocations: {name}", lambda e=e: e.fitness(allocations))
               for name, e in evaluators.items()}
    # Cost of 100 allocations per evaluator, on fresh random feasible allocations.
    rng = np.random.default_rng(args.seed + 1)
    hundred = [space.allocation(space.sample(rng, budgets[i % len(budgets)])) for i in range(100)]
    for name, factory in (
        ("supernet", lambda: SupernetEvaluator(supernet, data, users, batch=1)),
        ("supernet, 8 per pass", lambda: SupernetEvaluator(supernet, data, users, batch=8)),
        ("fine-tune", lambda: FineTuneEvaluator(pretrained, data, users, FineTuneConfig(reg=config.reg), seed=args.seed)),
    ):
        if name == "fine-tune" and args.skip_finetune_timing:
            continue
        evaluator = factory()
        evaluator.reference  # noqa: B018 - measured apart from the 100 allocations
        timed(f"100 allocations: {name}", lambda e=evaluator: e.fitness(hundred))

    truth = read_cache(args.cache)  # retrains finished meanwhile (with --partial)
    kept = [i for i, (c, _, _) in enumerate(made) if c.label in truth]
    made = [made[i] for i in kept]
    fitness = {name: values[kept] for name, values in fitness.items()}
    allocations = [allocations[i] for i in kept]
    quality = np.array([truth[c.label]["quality"] for c, _, _ in made])
    sparsity = np.array([c.sparsity for c, _, _ in made])
    rows_out = []
    for name, values in fitness.items():
        tau = kendalltau(values, quality).statistic
        rho = spearmanr(values, quality).statistic
        within = [kendalltau(values[sparsity == s], quality[sparsity == s]).statistic for s in sorted(set(sparsity))]
        rows_out.append({"evaluator": name, "kendall_tau": tau, "spearman": rho,
                         "tau_within_sparsity_mean": float(np.nanmean(within)),
                         "tau_within": dict(zip(map(str, sorted(set(sparsity))), within))})
    full_seconds = timing["full training"]
    print(f"\n{args.dataset}: {len(allocations)} allocations, sparsity {sparsity.min():g}-{sparsity.max():g}, "
          f"fitness on {'all' if users is None else len(users)} validation users")
    print("| evaluator | Kendall τ | Spearman ρ | mean τ within a sparsity |")
    print("|---|---|---|---|")
    for r in rows_out:
        print(f"| {r['evaluator']} | {r['kendall_tau']:.3f} | {r['spearman']:.3f} | {r['tau_within_sparsity_mean']:.3f} |")
    retrain_seconds = float(np.mean([truth[c.label]["seconds"] for c, _, _ in made]))
    timing["retrain top 5 (mean retrain × 5)"] = 5 * retrain_seconds
    first = f"supernet training (sandwich, {args.supernet_random[0]} random)"
    search = timing[first] + timing["100 allocations: supernet"]
    timing["pipeline: supernet + 100 evaluations + retrain top 5"] = search + 5 * retrain_seconds
    timing["pipeline: supernet + 100 evaluations + retrain top 1"] = search + retrain_seconds
    print("\n| step | seconds | × one full training |")
    print("|---|---|---|")
    for label, seconds in timing.items():
        print(f"| {label} | {seconds:.1f} | {seconds / full_seconds:.2f} |")
    print(json.dumps({"dataset": args.dataset, "trust": rows_out, "timing": timing,
                      "allocations": [{"label": c.label, "quality": float(q),
                                       **{name: float(v[i]) for name, v in fitness.items()}}
                                      for i, ((c, _, _), q) in enumerate(zip(made, quality))]}))


if __name__ == "__main__":
    main()
