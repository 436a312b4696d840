"""The ``embnas`` command: search, evaluate and export embedding-size allocations.

Errors the toolkit raises on purpose (bad data, an infeasible budget, a wrong
option) are printed as one line on stderr with a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

__all__ = ["main"]

_EXIT_ERROR = 2
#: The errors of a full disk or an exhausted quota.
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _add_search_options(parser: argparse.ArgumentParser) -> None:
    from nas.pipeline.config import (
        D_MAX_DEFAULTS,
        EVALUATORS,
        PROPAGATION_DTYPES,
        PROPOSAL_SOURCES,
        RETRAIN_MODES,
        REFERENCES,
        SUPERNET_MODES,
        TRAINING_DEFAULTS,
        SearchConfig,
    )
    from nas.core.precision import DEFAULT_PRECISIONS, SCALES
    from nas.pipeline.data import PATH_FORMATS
    from recsys.data import COLD_POLICIES
    from recsys.train import LOSSES

    defaults, train, click = SearchConfig(), TRAINING_DEFAULTS["top-k"], TRAINING_DEFAULTS["click"]

    def per_task(name: str) -> str:
        return f"(default: {getattr(train, name)}; click models: {getattr(click, name)}; lightgcn: its recipe's)"

    data = parser.add_argument_group("data")
    data.add_argument("--data", metavar="PATH",
                      help="a LightGCN folder (train/valid/test .txt[.gz]), a RecBole MovieLens folder (<name>.inter, .user, "
                           ".item: click data with user and item features) or a CSV/TSV file (interactions, or click rows "
                           "with --label-col); default: built-in synthetic data (click rows for a click model)")
    data.add_argument("--format", choices=PATH_FORMATS, default="auto",
                      help="format of --data; auto: a folder is LightGCN or MovieLens by its files, a file is click rows when "
                           "--label-col is given, else interactions (default: %(default)s)")
    data.add_argument("--train", nargs="+", metavar="FILE", help="LightGCN training files (several are concatenated)")
    data.add_argument("--valid", nargs="+", metavar="FILE", help="LightGCN validation files")
    data.add_argument("--test", nargs="+", metavar="FILE", help="LightGCN test files")
    data.add_argument("--user-col", default="user_id", help="CSV user column (default: %(default)s)")
    data.add_argument("--item-col", default="item_id", help="CSV item column (default: %(default)s)")
    data.add_argument("--sep", help="CSV field separator (default: tab for .tsv/.inter files, comma otherwise)")
    data.add_argument("--rating-col", help="CSV rating column; rows below --min-rating are not interactions")
    data.add_argument("--min-rating", type=float, help="least rating that counts as an interaction, e.g. 4")
    data.add_argument("--remap", action="store_true", help="LightGCN files: map ids to contiguous ones (gaps, huge ids)")
    data.add_argument("--cold", choices=COLD_POLICIES, default="keep",
                      help="users/items absent from train: keep them in the tables and evaluation, or drop their pairs (default: %(default)s)")
    clicks = parser.add_argument_group("click data (--model fm, deepfm or dcnv2)")
    clicks.add_argument("--label-col", help="click CSV: the label column, 0/1 or a number compared with --label-threshold")
    clicks.add_argument("--categorical", metavar="COLS", help="click CSV: categorical columns, comma-separated (one field each)")
    clicks.add_argument("--numeric", metavar="COLS",
                        help="click CSV: numeric columns, comma-separated (bucketed by floor(ln(x)^2) as in [LERSBench])")
    clicks.add_argument("--label-threshold", type=float,
                        help="a row clicks when its label is at least this (click CSV: default 0/1 labels; MovieLens: rating, default 4)")
    clicks.add_argument("--oov-threshold", type=int,
                        help="least train count of a value that keeps its own row; rarer ones share the field's OOV row "
                             "(default: 10 for click CSV, 2 for MovieLens)")
    search = parser.add_argument_group("search")
    search.add_argument("--budget", default=defaults.budget,
                        help="sparsity (0.9 keeps 10%%), parameter count (250000) or bytes (2MB, 512KiB); several, "
                             "comma-separated (0.5,0.8,0.95), search each with one shared supernet: a front, written with "
                             "front.html into --name (default: %(default)s)")
    search.add_argument("--supernet-budgets", metavar="LIST",
                        help="train the sandwich supernet under these budgets in turn (comma-separated), as a front "
                             "does: a single search given a front's budgets reaches that front's answer")
    search.add_argument("--precisions", nargs="?", const=",".join(DEFAULT_PRECISIONS), metavar="LIST",
                        help="search a precision for every row beside its size, from LIST (alone: "
                             f"{','.join(DEFAULT_PRECISIONS)}; also int2); a byte budget then counts the bits the export "
                             "stores; fp32 alone searches sizes only (default: the default LIST under a byte budget, "
                             "when the controller searches precisions; sizes only otherwise)")
    search.add_argument("--scales", choices=SCALES, default=defaults.scales,
                        help="where integer rows' scales live: one fp16 per row, or one per table, precision and size "
                             "(two bytes a row freed for values; what makes 1%% of the bytes feasible) (default: %(default)s)")
    search.add_argument("--d-max", type=int,
                        help=f"full embedding width (default: {D_MAX_DEFAULTS['top-k']}; click models: {D_MAX_DEFAULTS['click']})")
    search.add_argument("--d-min", type=int, default=defaults.d_min, help="fewest dimensions per row (default: %(default)s)")
    search.add_argument("--space", default=defaults.space,
                        help="search space: per-feature (a size per row), per-field (a size per table) or block (default: %(default)s)")
    search.add_argument("--space-option", action="append", default=[], metavar="KEY=VALUE",
                        help="a keyword option of the space, repeatable; values are JSON or text (e.g. groups=8, grid=pow2)")
    search.add_argument("--groups", type=int, help="shorthand for --space-option groups=G: frequency groups per table (block space)")
    search.add_argument("--blocks", type=int, help="shorthand for --space-option blocks=B: column blocks, dividing --d-max (block space)")
    search.add_argument("--grouping", help="shorthand for --space-option grouping=count|mass: groups of equal rows or equal "
                                           "interaction mass (block space)")
    search.add_argument("--grid", help="shorthand for --space-option grid=...: candidate sizes, 'pow2' or a list like "
                                       "4,8,16,32,64 (per-feature and per-field spaces)")
    search.add_argument("--controller", default=defaults.controller, help="controller; `embnas controllers` lists them (default: %(default)s)")
    search.add_argument("--controller-option", action="append", default=[], metavar="KEY=VALUE",
                        help="a keyword option of the controller, repeatable; values are JSON or text (e.g. candidates=100, predictor=sizes)")
    search.add_argument("--faithful", action="store_true",
                        help="BET as in its paper [BET]: plain pre-training, each pick fine-tuned for 10 epochs (lr 0.03, x0.98 every 200 steps), "
                             "the top 5 fully retrained; overrides --supernet, --evaluator, --finetune-steps and --retrain")
    search.add_argument("--trials", type=int, help="allocations evaluated by fitness-driven controllers (default: the controller's design, "
                        "24 for shape, else 16)")
    search.add_argument("--ask-batch", type=int, default=defaults.ask_batch, help="candidates asked of the controller at once and evaluated together (default: %(default)s)")
    search.add_argument("--fitness-users", type=int, default=defaults.fitness_users, help="validation users sampled for fitness, 0 for all; click data is scored on every validation row (default: %(default)s)")
    search.add_argument("--evaluator", choices=EVALUATORS, default=defaults.evaluator,
                        help="fitness by masks on the supernet, or BET's fine-tune of each allocation (default: %(default)s)")
    search.add_argument("--finetune-steps", type=int, default=defaults.finetune.steps, help="finetune evaluator: SGD steps per allocation (default: %(default)s)")
    search.add_argument("--supernet", choices=SUPERNET_MODES, default=defaults.supernet.mode,
                        help="supernet training: sandwich (largest, smallest and random allocations per step) or plain full-size (default: %(default)s)")
    search.add_argument("--supernet-proposals", choices=PROPOSAL_SOURCES, default=defaults.supernet.proposals,
                        help="the sandwich's random allocations: uniform sizes from the space, or the controller's own "
                             "proposal distribution (bet) (default: %(default)s)")
    search.add_argument("--supernet-epochs", type=int,
                        help="most epochs of the first stage (supernet, one-shot search or the rule controllers' "
                             "full-size reference) (default: --epochs)")
    search.add_argument("--retrain-top", type=int, help="fittest allocations retrained from scratch; the best on validation wins (default: 1 for shape, "
                        "beside the fitter rule, else 5)")
    search.add_argument("--retrain", choices=RETRAIN_MODES, default=defaults.retrain,
                        help="retrain every one of the top to the end; by successive halving (a third continue at each rung); or "
                             "fine-tune each briefly from the supernet's weights and retrain the best from scratch (default: %(default)s)")
    model = parser.add_argument_group("model and training")
    model.add_argument("--model", default=defaults.model,
                       help="backbone: top-k models for interaction data: mf, neumf (GMF + MLP tower on the same tables), "
                            "lightgcn or ngcf (3 propagation rounds; masks apply before propagation); click models for "
                            "click data: fm, deepfm (MLP 400-400-400) or dcnv2 (3 cross layers, MLP 512-512) (default: %(default)s)")
    model.add_argument("--epochs", type=int, help=f"most training epochs {per_task('epochs')}")
    model.add_argument("--batch-size", type=int, help=f"BPR triples (click rows) per step {per_task('batch_size')}")
    model.add_argument("--lr", type=float, help=f"Adam learning rate {per_task('lr')}")
    model.add_argument("--reg", type=float, help=f"L2 weight on looked-up vectors {per_task('reg')}")
    model.add_argument("--eval-every", type=int, help=f"epochs between validations {per_task('eval_every')}")
    model.add_argument("--patience", type=int,
                       help=f"validations without improvement (Recall@20; click models: AUC) before stopping {per_task('patience')}")
    model.add_argument("--lr-decay", type=float,
                       help="multiply the learning rate by this at every validation without improvement, once one has "
                            "improved: a large rate learns fast, the decayed one then goes on climbing "
                            f"(default: {train.lr_decay}, constant)")
    model.add_argument("--sampling", choices=("pair", "user"),
                       help=f"BPR triples per epoch: each train pair once, or uniform users as LightGCN (default: {train.sampling})")
    model.add_argument("--hard-negatives", type=int, metavar="M",
                       help="BPR's negative is the highest-scoring of M uniform candidates per triple (dynamic negative "
                            "sampling): a higher level in fewer epochs (docs/results.md §9.7) "
                            f"(default: {train.hard_negatives}, a uniform negative)")
    model.add_argument("--loss", choices=LOSSES,
                       help="top-k objective: BPR against one sampled item, or a sampled softmax of each positive against "
                            f"--negatives uniform items shared by the batch (fewer epochs) (default: {train.loss})")
    model.add_argument("--temperature", type=float,
                       help=f"the softmax's temperature: scores are divided by it (default: {train.temperature})")
    model.add_argument("--negatives", type=int,
                       help=f"the softmax's negatives per batch, at most --batch-size (default: {train.negatives})")
    model.add_argument("--info-nce", type=float,
                       help="weight of an InfoNCE term on the final vectors of graph backbones (lightgcn, ngcf): SGL "
                            "without augmentation; converges in far fewer epochs. Paper 004 uses 0.1, at which tables of "
                            f"a few dimensions a row stall for tens of epochs; 0.02 does not (default: {train.info_nce}, none)")
    model.add_argument("--info-nce-temperature", type=float,
                       help=f"the InfoNCE term's temperature (default: {train.info_nce_temperature})")
    model.add_argument("--propagation", choices=tuple(PROPAGATION_DTYPES),
                       help="the dtype LightGCN's propagation multiplies in: bf16 reads half the bytes (an epoch 2-13 %% "
                            "faster on CPU, quality level); tables, gradients and loss stay float32 "
                            f"(default: {train.propagation})")
    model.add_argument("--recipe", metavar="NAME",
                       help="named training options measured to bring a backbone to its published strength "
                            "(embnas recipes lists them); the options above, where given, still win (default: the "
                            "backbone's own, lightgcn: lightgcn-hard; none: the plain defaults above)")
    model.add_argument("--checkpoint-every", type=int,
                       help=f"epochs between training checkpoints (default: {train.checkpoint_every})")
    run = parser.add_argument_group("run")
    run.add_argument("--seed", type=int, default=defaults.seed, help="fixes the whole run (default: %(default)s)")
    run.add_argument("--device", default=defaults.device, help="torch device (default: %(default)s)")
    run.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    run.add_argument("--runs", default="runs", help="folder of run folders (default: %(default)s)")
    run.add_argument("--reference", choices=REFERENCES, default=defaults.reference,
                     help="what the allocated model is compared with: a plainly trained full model of the same "
                          "backbone, training and seed, trained once and cached for later runs; or none (the supernet "
                          "at full size, which flatters the ratio) (default: %(default)s)")
    run.add_argument("--reference-cache", type=Path,
                     help="folder of the cached full reference models (default: $EMBNAS_CACHE, else ~/.cache/embnas)")
    run.add_argument("--name", help="run folder name (default: time and config hash)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_executor_options(run)


def _add_executor_options(group: Any) -> None:
    """``--executor``, ``--workers`` and ``--ray-address`` (of ``search`` and ``resume``)."""
    group.add_argument("--executor", choices=("local", "ray"), default="local",
                       help="where the fitness rounds (--ask-batch) and the retrains of the top run: in this process, "
                            "or as Ray tasks (pip install \"embnas[ray]\"); the same result either way "
                            "(default: %(default)s)")
    group.add_argument("--workers", type=int,
                       help="ray: jobs at once, each with its share of the cluster's CPUs (and GPUs, fractions "
                            "allowed) (default: one per CPU)")
    group.add_argument("--ray-address", metavar="ADDRESS",
                       help="ray: a running cluster ('auto', ray://host:10001) (default: start one on this machine)")
    group.add_argument("--ddp", type=int, default=1, metavar="N",
                       help="train the supernet and each retrain with N processes of this machine, data-parallel "
                            "(torch DDP: gloo on a CPU, NCCL on GPUs, one each); the same result up to float "
                            "rounding (default: %(default)s)")


def _search_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`nas.search` that the command line gives."""
    from nas.core.errors import ConfigError
    from nas.pipeline.backbones import backbone_task
    from nas.pipeline.config import FineTuneConfig, SupernetOptions
    from nas.pipeline.data import DataSpec
    from nas.pipeline.recipes import training_defaults

    options = {"user_col": args.user_col, "item_col": args.item_col, "cold": args.cold, "seed": args.seed,
               "sep": args.sep, "rating_col": args.rating_col, "min_rating": args.min_rating, "remap": args.remap,
               "label_col": args.label_col, "categorical": _columns(args.categorical), "numeric": _columns(args.numeric),
               "label_threshold": args.label_threshold, "oov_threshold": args.oov_threshold}
    if (args.rating_col is None) != (args.min_rating is None):
        raise ConfigError("give --rating-col and --min-rating together")
    task = backbone_task(args.model)
    if args.train:
        if args.data:
            raise ConfigError("give either --data or --train/--valid/--test, not both")
        spec = DataSpec("lightgcn", tuple(args.train), tuple(args.valid or ()), tuple(args.test or ()), **options)
    elif args.data:
        spec = DataSpec.from_path(args.data, format=args.format, **options)
    else:
        spec = DataSpec("synthetic-ctr" if task == "click" else "synthetic", **options)
    given = {name: getattr(args, name) for name in ("epochs", "batch_size", "lr", "reg", "eval_every", "patience",
                                                    "sampling", "checkpoint_every", "loss", "temperature", "negatives",
                                                    "info_nce", "info_nce_temperature", "propagation", "lr_decay",
                                                    "hard_negatives")}
    base = training_defaults(args.model, task, args.recipe)
    train = replace(base, **{k: v for k, v in given.items() if v is not None})
    protocol = {
        "supernet": SupernetOptions(mode=args.supernet, proposals=args.supernet_proposals, epochs=args.supernet_epochs,
                                    budgets=_columns(args.supernet_budgets)),
        "evaluator": args.evaluator,
        "finetune": FineTuneConfig(steps=args.finetune_steps, reg=train.reg), "retrain": args.retrain,
    }
    if args.faithful:  # a preset: it only sets options
        protocol = {"supernet": SupernetOptions(mode="full", epochs=args.supernet_epochs), "evaluator": "finetune",
                    "finetune": FineTuneConfig.paper(reg=train.reg), "retrain": "full"}
    return dict(
        data=spec, model=args.model, d_max=args.d_max, d_min=args.d_min, budget=args.budget, space=args.space,
        space_options=_space_options(args), controller=args.controller,
        controller_options=_key_values(args.controller_option, "--controller-option"),
        trials=args.trials, ask_batch=args.ask_batch, fitness_users=args.fitness_users, retrain_top=args.retrain_top,
        seed=args.seed, train=train, device=args.device, threads=args.threads, reference=args.reference,
        precisions=None if args.precisions is None else tuple(p for p in args.precisions.split(",") if p.strip()),
        scales=args.scales,
        run_dir=Path(args.runs) / args.name if args.name else None, runs_root=args.runs, progress=not args.quiet,
        reference_cache=args.reference_cache, executor=args.executor, workers=args.workers,
        ray_address=args.ray_address, ddp=args.ddp,
        **protocol,
    )


def _config_from_args(args: argparse.Namespace):  # noqa: ANN202 - a SearchConfig
    """The configuration ``embnas search`` runs with these arguments."""
    from nas.app.api import configure

    arguments = _search_arguments(args)
    for key in ("run_dir", "runs_root", "progress", "reference_cache", "executor", "workers", "ray_address", "ddp"):
        arguments.pop(key)
    return configure(**arguments)


def _columns(text: str | None) -> tuple[str, ...]:
    """``"a,b, c"`` -> ``("a", "b", "c")``; nothing given -> ``()``."""
    return tuple(c.strip() for c in text.split(",") if c.strip()) if text else ()


def _key_values(pairs: Sequence[str], flag: str) -> dict[str, object]:
    """``KEY=VALUE`` pairs as keyword options; a value is read as JSON when it is JSON, else kept as text."""
    from nas.core.errors import ConfigError

    options: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ConfigError(f"{flag} takes KEY=VALUE with a Python name as KEY, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


#: Shorthand flags of space options: flag -> the option it sets.
_SPACE_SHORTHANDS = {"--groups": "groups", "--blocks": "blocks", "--grouping": "grouping", "--grid": "grid"}


def _space_options(args: argparse.Namespace) -> dict[str, object]:
    """The space's keyword options from ``--space-option`` and the shorthand flags.

    A shorthand the chosen space does not take is refused here, naming the spaces that
    take it (read from the registry, so plug-in spaces are covered too).
    """
    import inspect

    from nas.core.errors import ConfigError
    from nas.core.plugins import SPACES

    options = _key_values(args.space_option, "--space-option")
    shorthands = {flag: getattr(args, option) for flag, option in _SPACE_SHORTHANDS.items()}
    given = {flag: value for flag, value in shorthands.items() if value is not None}

    def takes(space: str, option: str) -> bool:
        return option in inspect.signature(SPACES.get(space)).parameters

    misplaced = [flag for flag in given if not takes(args.space, _SPACE_SHORTHANDS[flag])]
    if misplaced:
        takers = sorted({s for s in SPACES.names() for f in misplaced if takes(s, _SPACE_SHORTHANDS[f])})
        raise ConfigError(f"{', '.join(misplaced)} only apply to --space {' or '.join(takers) or '(none)'}, "
                          f"not {args.space}")
    for flag, value in given.items():
        option = _SPACE_SHORTHANDS[flag]
        if option in options:
            raise ConfigError(f"{flag} and --space-option {option}=... both given; keep one")
        options[option] = _grid(value) if option == "grid" else value
    return options


def _grid(text: str) -> object:
    """``--grid``: ``"pow2"`` or sizes separated by commas."""
    from nas.core.errors import ConfigError

    if text == "pow2":
        return "pow2"
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise ConfigError(f"--grid must be 'pow2' or sizes separated by commas, got {text!r}") from None


def _cmd_search(args: argparse.Namespace) -> int:
    from nas.app.api import front, search
    from nas.app.summary import summary_table

    arguments = _search_arguments(args)
    if "," not in str(args.budget):
        print(summary_table(search(**arguments)))
        return 0
    from nas.app.front import split_budgets
    from nas.app.report_page import headline_metric

    budgets = split_budgets(args.budget)
    arguments.pop("budget")
    folder = arguments.pop("run_dir")
    try:
        results = front(budgets=budgets, folder=folder, **arguments)
    except KeyboardInterrupt:
        again = "the same command" if args.name else "the same command with --name <the front's folder name>"
        print(f"embnas: interrupted; run {again} to finish the front (finished budgets are read back)", file=sys.stderr)
        return 130
    metric = headline_metric(results[0].metrics["test"])
    full = (results[0].full_metrics.get("test") or {}).get(metric)
    print(f"a front of {len(results)} budgets, one supernet ({results[0].controller}, {results[0].space}); "
          f"test {metric} of the full model {full:.4f}" if full is not None else f"a front of {len(results)} budgets")
    print(f"{'budget':>12} {'bytes':>12} {'test ' + metric:>14} {'of full':>8}  run")
    for budget, result in zip(budgets, results):
        value = result.metrics["test"][metric]
        ratio = f"{value / full:.3f}" if full else "-"
        print(f"{budget:>12} {result.export_bytes:>12,} {value:>14.4f} {ratio:>8}  {result.run_dir}")
    if results[0].run_dir is not None:
        print(f"the front: {results[0].run_dir.parent / 'front.html'}")
    return 0


def _cmd_resume(args: argparse.Namespace) -> int:
    from nas.app.api import resume
    from nas.app.summary import summary_table

    print(summary_table(resume(args.run, progress=not args.quiet, reference_cache=args.reference_cache,
                               executor=args.executor, workers=args.workers, ray_address=args.ray_address,
                               ddp=args.ddp)))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from nas.pipeline.replay import evaluate_run

    print(json.dumps(evaluate_run(args.run, args.split), indent=2))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from nas.pipeline.replay import export_run

    manifest = export_run(args.run, args.out, format=args.format, align=args.align)
    if args.format == "torchrec":
        tiers = sum(feature is not None for spec in manifest["tables"].values() for feature, *_ in spec["tiers"])
        print(f"exported to {manifest['folder']}: {len(manifest['tables'])} table(s) in {tiers} TorchRec table(s) of one "
              f"dimension each, {manifest['bytes']:,} bytes of values and remap (the budget leaves {manifest['bytes_limit']:,}); "
              "load with nas.artifact.torchrec_tables.TorchRecTables.load")
        return 0
    print(f"exported to {manifest['folder']}: {manifest['bytes_stored']:,} bytes "
          f"(budget {manifest['budget']['max_bytes']:,} bytes)")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from nas.app.report import write_report

    if args.watch is None:
        for path in write_report(args.run):
            print(f"wrote {path}")
        return 0
    from nas.app.report_page import watch

    page = watch(args.run, every=args.watch, rewrite=write_report)
    print(f"the run is done; wrote {page}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from nas.app.compare import compare

    try:
        comparison = compare(args.grid, args.out, jobs=args.jobs, report_only=args.report_only, progress=not args.quiet,
                             budgets=args.budgets, arms=args.arms)
    except KeyboardInterrupt:
        print("embnas: interrupted; run the same command again to finish the cells that are missing", file=sys.stderr)
        return 130
    print(comparison.markdown, end="")
    for path in comparison.paths.values():
        print(f"wrote {path}")
    return _EXIT_ERROR if comparison.failures else 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from nas.pipeline.tuning import format_options, tune_training

    try:
        tuning = tune_training(_config_from_args(args), trials=args.trainings, progress=not args.quiet,
                               reference_cache=args.reference_cache)
    except KeyboardInterrupt:
        print("embnas: interrupted; run the same command again: the finished trainings are read back from the "
              "reference cache, and the interrupted one continues from its last checkpoint", file=sys.stderr)
        return 130
    names = list(tuning.trials[0].options)
    best = tuning.trials[tuning.best]
    test = ", ".join(f"{key} {tuning.test[key]:.4f}" for key in ("recall@20", "ndcg@20", "auc", "logloss")
                     if key in tuning.test)
    cached = sum(trial.cached for trial in tuning.trials)
    print(tuning.table())
    print(f"best: {format_options(tuning.train, names)} (trial {tuning.best}; valid {tuning.metric} "
          f"{best.valid[tuning.metric]:.4f}; its test: {test})")
    count = len(tuning.trials)
    print(f"cost: {count} training{'s' if count > 1 else ''} of the full model, {tuning.trained_seconds:,.0f} s of training"
          + (f" ({cached} read from the reference cache)" if cached else "") + f"; {tuning.seconds:,.0f} s now")
    print(f"search with them: embnas search <the same options> {format_options(tuning.train, names)} "
          "(its full reference model is already trained)")
    return 0


def _cmd_controllers(args: argparse.Namespace) -> int:
    from nas.core.plugins import CONTROLLERS

    rows = [("name", "kind", "learns from", "spaces", "context", "what it does")]
    for name in CONTROLLERS.names():
        cls = CONTROLLERS.get(name)
        kind = "multi-trial" if cls.multi_trial else "one-shot"
        learns = "fitness" if cls.needs_fitness else ("training" if not cls.multi_trial else "nothing")
        spaces = ",".join(cls.spaces) if cls.spaces else "all"
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        context = "frequency" if cls.needs_context else "-"
        rows.append((name, kind, learns, spaces, context, doc))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        print("  ".join(value.ljust(width) for value, width in zip(row, widths)) + "  " + row[5])
    for name, reason in sorted(CONTROLLERS.broken.items()):
        print(f"{name}: not available ({reason})", file=sys.stderr)
    return 0


def _cmd_recipes(args: argparse.Namespace) -> int:
    from nas.pipeline.recipes import DEFAULT_RECIPES, NO_RECIPE, RECIPES

    for recipe in RECIPES.values():
        options = ", ".join(f"{key}={value}" for key, value in recipe.options.items())
        default = sorted(model for model, name in DEFAULT_RECIPES.items() if name == recipe.name)
        print(f"{recipe.name} (for {', '.join(recipe.backbones)}"
              + (f"; the default of {', '.join(default)}" if default else "") + f"): {recipe.summary}\n"
              f"    options: {options}\n    measured: {recipe.measured}")
    print(f"{NO_RECIPE}: the plain defaults of embnas search --help, for any backbone")
    print("on other data: embnas tune tunes a recipe's learning rate and L2 on validation")
    return 0


def _size_text(sizes: Sequence[int | None]) -> str:
    """Total download size: exact when every size is known, a lower bound when some are, ``?`` when none are."""
    known = [s for s in sizes if s is not None]
    if not known:
        return "?"
    value, unit = float(sum(known)), "B"
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000:
            break
        value /= 1000
    text = f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
    return text if len(known) == len(sizes) else f">{text}"


def _cmd_data_list(args: argparse.Namespace) -> int:
    from recsys.data.catalog import CATALOG, cache_state
    from recsys.data.download import cache_dir

    rows = [("name", "files", "size", "sha256", "cached", "description")]
    for dataset in CATALOG:
        pinned = sum(f.pinned for f in dataset.files)
        hashes = "pinned" if pinned == len(dataset.files) else "unpinned" if not pinned else f"{pinned}/{len(dataset.files)} pinned"
        rows.append((dataset.name, str(len(dataset.files)), _size_text([f.size for f in dataset.files]), hashes,
                     cache_state(dataset, args.cache), dataset.description))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        print("  ".join(value.ljust(width) for value, width in zip(row, widths)) + "  " + row[5])
    if args.files:
        print()
        for dataset in CATALOG:
            print(f"{dataset.name}: {dataset.source}")
            for remote in dataset.files:
                print(f"  {remote.name}  {_size_text([remote.size])}  {remote.sha256 or 'unpinned'}  {remote.url}")
    print(f"\ncache: {cache_dir(args.cache)}  (`embnas data get NAME` downloads one; unpinned files are checked "
          "against the hash their first download recorded)")
    return 0


def _cmd_data_get(args: argparse.Namespace) -> int:
    import shlex

    from nas.core.errors import ConfigError
    from recsys.data.catalog import FORMATS, SUMS_FILE, fetch, get_dataset

    try:
        dataset = get_dataset(args.name)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    try:
        got = fetch(dataset.name, args.cache, mirror=args.mirror, force=args.force, progress=not args.quiet)
    except KeyboardInterrupt:
        print("embnas: interrupted; run the same command again to resume the download", file=sys.stderr)
        return 130
    done = f"downloaded {', '.join(got.downloaded)}" if got.downloaded else "already in the cache, verified"
    print(f"{dataset.name}: {got.folder} ({done}{'; converted' if got.converted else ''})")
    print(f"format: {FORMATS[dataset.format]}")
    unpinned = [f.name for f in dataset.files if not f.pinned and f.name in got.downloaded]
    if unpinned:
        print(f"unpinned: the sha256 of {', '.join(unpinned)} is recorded in {got.folder / SUMS_FILE}; later downloads must match it")
    data = shlex.quote(str(got.data))
    if dataset.format == "lightgcn":
        splits = [str(got.folder / f"{s}.txt") if (got.folder / f"{s}.txt").exists() else None for s in ("train", "valid", "test")]
        print(f"use it: embnas search --data {data}")
        print(f"python: from recsys.data import load_lightgcn; data = load_lightgcn({', '.join(map(repr, splits))})")
    elif dataset.format == "ratings-tsv":
        print(f"use it: embnas search --data {data} --rating-col rating --min-rating 4   # ratings >= 4 as interactions")
        print("python: from recsys.data import load_interactions_csv; "
              f'data = load_interactions_csv({str(got.data)!r}, user_col="user_id", item_col="item_id", rating_col="rating")')
    else:
        print(f"file: {data}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``embnas`` argument parser."""
    from nas.artifact.torchrec_tables import ALIGNMENTS

    parser = argparse.ArgumentParser(prog="embnas", description="Embedding-size search for recommender systems under a hard memory budget.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    search = commands.add_parser("search", help="train, search an allocation under the budget, retrain, evaluate, export",
                                 description="Run the whole job. With no options: MF on the built-in synthetic data at sparsity 0.9.")
    _add_search_options(search)
    search.set_defaults(handler=_cmd_search)

    resume = commands.add_parser("resume", help="continue a run that was interrupted, from its last checkpoint",
                                 description="Continue a run folder where it stopped; the result is the one the uninterrupted run gives.")
    resume.add_argument("run", type=Path, help="the run folder (runs/<id>)")
    resume.add_argument("--quiet", action="store_true", help="no progress bars")
    resume.add_argument("--reference-cache", type=Path,
                        help="folder of the cached full reference models (default: $EMBNAS_CACHE, else ~/.cache/embnas)")
    _add_executor_options(resume)
    resume.set_defaults(handler=_cmd_resume)

    evaluate = commands.add_parser("evaluate", help="re-evaluate a finished run's retrained model", description="Recompute the metrics of a run's retrained, allocated model.")
    evaluate.add_argument("run", type=Path, help="the run folder (runs/<id>)")
    evaluate.add_argument("--split", choices=("test", "valid"), default="test", help="split to evaluate (default: %(default)s)")
    evaluate.set_defaults(handler=_cmd_evaluate)

    export = commands.add_parser("export", help="export a run's allocated tables for serving", description="Write the packed, budget-checked tables of a run.")
    export.add_argument("run", type=Path, help="the run folder (runs/<id>)")
    export.add_argument("--out", type=Path, help="export folder (default: <run>/export, or <run>/export-torchrec)")
    export.add_argument("--format", choices=("packed", "torchrec"), default="packed",
                        help="packed: the budget-checked artifact PackedEmbedding serves; torchrec: one TorchRec "
                             "EmbeddingBagConfig per table and row size, their state dict and the id remap (default: packed)")
    export.add_argument("--align", type=int, choices=ALIGNMENTS, default=1,
                        help="torchrec only: round every dimension up to a multiple of this with zero columns, as "
                             "FBGEMM's fused kernels want (4); refused when the rounding does not fit the budget (default: 1)")
    export.set_defaults(handler=_cmd_export)

    report = commands.add_parser("report", help="write a run's report page (HTML) and pictures",
                                 description="Write <run>/report/index.html, one self-contained page (quality against bytes, "
                                             "metrics, the allocation against frequency, fitness over trials, training "
                                             "curves, timings, the export against the budget), and its pictures; for a "
                                             "run still searching, a page of its progress.")
    report.add_argument("run", type=Path, help="the run folder (runs/<id>)")
    report.add_argument("--watch", type=float, nargs="?", const=15.0, default=None, metavar="SECONDS",
                        help="rewrite the page every SECONDS (default 15) until the run is done; open it in a browser, "
                             "it reloads itself")
    report.set_defaults(handler=_cmd_report)

    grid = commands.add_parser("compare", help="compare allocations over a grid of arms x budgets x seeds (paired statistics)",
                               description="Run every cell of a grid file (arms x budgets x seeds, each a search in its own "
                                           "run folder) that is not finished, then compare each arm with the baselines seed "
                                           "by seed: a 95 % t interval of the mean difference, 'better' or 'worse' only "
                                           "when it excludes zero. Writes comparison.md, .json and .png. Running it again "
                                           "finishes only what is missing; the exit status is 2 when a cell failed.")
    grid.add_argument("grid", type=Path, metavar="GRID.toml", help="the grid file (see README: Compare allocations)")
    grid.add_argument("--out", type=Path, help="output folder; the cells run in <out>/runs (default: beside the grid "
                                               "file, named after it)")
    grid.add_argument("--jobs", type=int, default=1, help="cells run side by side, one process and one torch thread "
                                                          "each (default: %(default)s)")
    grid.add_argument("--report-only", action="store_true", help="run nothing; write the outputs from the finished cells")
    grid.add_argument("--budgets", type=_columns, metavar="B[,B...]", help="run only the cells of these budgets, as the "
                                                                        "grid spells them (the outputs cover every finished cell)")
    grid.add_argument("--arms", type=_columns, metavar="A[,A...]", help="run only the cells of these arms")
    grid.add_argument("--quiet", action="store_true", help="no progress bar")
    grid.set_defaults(handler=_cmd_compare)

    tune = commands.add_parser("tune", help="tune the backbone's learning rate and L2 on validation (Optuna), for data "
                                            "without a measured recipe",
                               description="Train the plain full model with the options given (the first trial), then "
                                           "with learning rates and L2 weights an Optuna study proposes around them; "
                                           "print every trial's validation and the best options. Each training is "
                                           "cached as the reference model of its options: running it again reads the "
                                           "finished ones back, and a search with the best options finds its reference "
                                           "trained.")
    _add_search_options(tune)
    tune.add_argument("--trainings", type=int, default=12, help="full trainings, the first included (default: %(default)s)")
    tune.set_defaults(handler=_cmd_tune)

    listing = commands.add_parser("controllers", help="list the available controllers", description="List registered controllers, built-in and from plug-ins.")
    listing.set_defaults(handler=_cmd_controllers)
    recipes = commands.add_parser("recipes", help="list the named training recipes with their measured quality and cost",
                                  description="List the recipes --recipe takes: the training options each sets, for "
                                              "which backbones, and what it measured.")
    recipes.set_defaults(handler=_cmd_recipes)

    data = commands.add_parser("data", help="list and download public datasets (Gowalla, Yelp2018, Last.fm, MovieLens, CTR samples)",
                               description="Public datasets by name, downloaded, verified by sha256 and converted into a cache "
                                           "folder (--cache, else $EMBNAS_CACHE, else ~/.cache/embnas).")
    actions = data.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    data_list = actions.add_parser("list", help="the datasets: files, size, whether hashes are pinned, whether cached",
                                   description="List the catalog of public datasets.")
    data_list.add_argument("--cache", type=Path, help="cache folder (default: $EMBNAS_CACHE, else ~/.cache/embnas)")
    data_list.add_argument("--files", action="store_true", help="also list every file with its URL and sha256")
    data_list.set_defaults(handler=_cmd_data_list)
    data_get = actions.add_parser("get", help="download, verify and convert a dataset; prints how to use it",
                                  description="Download a dataset into <cache>/NAME (resuming an interrupted download), check "
                                              "every file's sha256, convert it to a loader's format, and print the command to use it.")
    data_get.add_argument("name", metavar="NAME", help="a dataset name from `embnas data list`")
    data_get.add_argument("--cache", type=Path, help="cache folder (default: $EMBNAS_CACHE, else ~/.cache/embnas)")
    data_get.add_argument("--mirror", metavar="URL",
                          help="fetch <URL>/NAME/<file> instead of the upstream URLs: a mirror laid out like the cache, "
                               "or a local folder (default: $EMBNAS_MIRROR, else upstream)")
    data_get.add_argument("--force", action="store_true", help="download and convert again even if the cache is complete")
    data_get.add_argument("--quiet", action="store_true", help="no progress bars")
    data_get.set_defaults(handler=_cmd_data_get)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``embnas`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    from nas.core.errors import EmbnasError
    from recsys.errors import DataError, TrainingDiverged

    try:
        return int(args.handler(args))
    except (EmbnasError, DataError, TrainingDiverged) as error:
        print(f"embnas: error: {_one_line(error)}", file=sys.stderr)
        return _EXIT_ERROR
    except OSError as error:
        # Run folders say how to continue themselves (StorageError); this catches a full disk
        # anywhere else (an export folder, a report's pictures).
        if error.errno not in _DISK_FULL:
            raise
        where = f"{error.filename}: " if error.filename else ""
        print(f"embnas: error: {where}no space left on device; free space and run the command again (a run "
              "continues with `embnas resume <run folder>`)", file=sys.stderr)
        return _EXIT_ERROR
    except KeyboardInterrupt:
        print("embnas: interrupted; continue with `embnas resume <run folder>`", file=sys.stderr)
        return 130


def _one_line(error: BaseException) -> str:
    """The error's message on one line (a message that quotes a file's content may hold line breaks)."""
    return " ".join(str(error).splitlines())


if __name__ == "__main__":
    raise SystemExit(main())
