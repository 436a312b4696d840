"""The main job: train the full model, search an allocation under the budget, retrain, evaluate, export.

Each stage leaves its result in the run folder (``nas.runs``) before the next
starts: the full model's checkpoint, one event per evaluated allocation, the
chosen allocation, the retrained model, the metrics and the export.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from controllers import CONTROLLERS
from nas.backbones import BACKBONES
from nas.core.allocation import Allocation
from nas.core.budget import Budget
from nas.core.controller import Controller
from nas.core.errors import ArtifactError, ConfigError
from nas.core.space import SearchSpace
from nas.core.tables import table_specs
from nas.data_source import DataSpec, load_data
from nas.embedding import MaskableEmbedding
from nas.evaluate import MaskedModelEvaluator
from nas.export import export_tables
from nas.runs import Run
from recsys.data import InteractionData
from recsys.models import Backbone
from recsys.train import TrainConfig, evaluate, train_bpr, user_subset
from search_spaces import SPACES

__all__ = ["SearchConfig", "TrainingOptions", "build_model", "build_search", "load_checkpoint", "run_search"]

_KS = (5, 10, 20)
#: Spaces with at most this many decisions have them listed in metrics.json and the summary.
_LISTED_DECISIONS = 64


@dataclass(frozen=True)
class TrainingOptions:
    """BPR training of the full model and of the retrained allocation (see :class:`recsys.train.TrainConfig`)."""

    epochs: int = 40
    batch_size: int = 2048
    lr: float = 5e-3
    reg: float = 1e-4
    eval_every: int = 2
    patience: int = 3
    sampling: str = "pair"

    def __post_init__(self) -> None:
        try:
            self.to_train_config(seed=0, threads=None)
        except ValueError as error:
            raise ConfigError(f"training option: {error}") from None

    def to_train_config(self, seed: int, threads: int | None) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, reg=self.reg,
            eval_every=self.eval_every, patience=self.patience, ks=_KS, seed=seed, threads=threads,
            sampling=self.sampling,
        )


@dataclass(frozen=True)
class SearchConfig:
    """Everything that defines a run; written to ``config.json`` and hashed.

    Attributes:
        data: the dataset.
        model: backbone name (``embnas`` lists them in ``--help``).
        d_max: full embedding width.
        d_min: fewest dimensions any row keeps.
        budget: the budget as typed by the user: sparsity (``0.9``), parameters or bytes (``2MB``).
        space: search-space name.
        space_options: keyword options of the space (``groups``, ``blocks``, ``grouping`` for
            the block space; ``grid`` for the per-feature and per-field spaces).
        controller: controller name.
        trials: allocations evaluated by controllers that learn from fitness.
        fitness_users: validation users sampled (with the seed) for fitness during the search; 0 for all.
        seed: fixes the data split, initialisations, sampling and the controller.
        train: how the full model and the retrained allocation are trained.
        device: torch device.
        threads: torch threads (``None`` leaves torch's default).
    """

    data: DataSpec = field(default_factory=DataSpec)
    model: str = "mf"
    d_max: int = 64
    d_min: int = 1
    budget: str = "0.9"
    space: str = "per-feature"
    space_options: dict[str, Any] = field(default_factory=dict)
    controller: str = "frequency"
    trials: int = 16
    fitness_users: int = 2000
    seed: int = 0
    train: TrainingOptions = field(default_factory=TrainingOptions)
    device: str = "cpu"
    threads: int | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.trials >= 1, f"--trials must be at least 1, got {self.trials}"),
            (self.seed >= 0, f"--seed must be non-negative, got {self.seed}"),
            (self.threads is None or self.threads >= 1, f"--threads must be at least 1, got {self.threads}"),
            (self.fitness_users >= 0, f"--fitness-users must be 0 (all) or more, got {self.fitness_users}"),
            (self.device == "cpu" or self.device.startswith("cuda"), f"unknown device {self.device!r}; use cpu or cuda[:N]"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def check_device(self) -> None:
        """Refuse a CUDA device torch cannot see (checked before training, not when a run is replayed)."""
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {self.device!r} asked for, but torch sees no CUDA device; use --device cpu")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the run's identity)."""
        data = asdict(self)
        data["data"] = self.data.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchConfig:
        """Inverse of :meth:`to_dict`."""
        fields = {k: v for k, v in data.items() if k != "data_fingerprint"}
        return cls(**{**fields, "data": DataSpec.from_dict(data["data"]), "train": TrainingOptions(**data["train"])})


def build_model(config: SearchConfig, data: InteractionData) -> Backbone:
    """The configured backbone on a fresh maskable embedding, seeded by the run's seed."""
    embedding = MaskableEmbedding(data.rows(), config.d_max, seed=config.seed)
    return BACKBONES.get(config.model)(embedding).to(config.device)  # type: ignore[attr-defined]


def build_search(config: SearchConfig, data: InteractionData) -> tuple[Budget, SearchSpace, Controller]:
    """The budget, search space and controller of a run (checked before any training)."""
    rows = data.rows()
    budget = Budget.parse(config.budget, rows, config.d_max, config.d_min)
    space = SPACES.get(config.space)(
        table_specs(rows), data.frequencies(), config.d_min, config.d_max, **config.space_options
    )
    controller = CONTROLLERS.get(config.controller)(space, budget, seed=config.seed)
    return budget, space, controller


def run_search(config: SearchConfig, runs_root: str | Path = "runs", name: str | None = None, *, progress: bool = True) -> dict[str, Any]:
    """Run the whole job and return its metrics (also written to ``metrics.json``).

    Stages already finished in the run folder (same configuration) are not redone.
    """
    started = time.perf_counter()
    config.check_device()
    data = load_data(config.data)
    budget, space, controller = build_search(config, data)
    if controller.needs_fitness and data.valid.nnz == 0:
        raise ConfigError(
            f"the {config.controller} controller learns from validation fitness, and this dataset has no validation split; "
            "add one (valid.txt) or use --controller equal or frequency"
        )
    # The run is tied to its configuration and to the data's content: a folder made from
    # other files refuses to continue. It is made only once data and budget are known good.
    run = Run.create(runs_root, {**config.to_dict(), "data_fingerprint": data.fingerprint()}, name)
    run.log_event("start", data=data.summary(), budget=budget.to_dict())
    train_config = config.train.to_train_config(config.seed, config.threads)

    full_model, full_stats = _train_or_load(run, "full", build_model(config, data), data, train_config, progress)
    full_test = evaluate(full_model, data, "test", _KS)

    allocation = _search(run, config, data, full_model, space, controller, budget, progress)

    retrained = build_model(config, data)
    retrained.embedding.set_allocation(allocation)
    retrained, retrain_stats = _train_or_load(
        run, "allocated", retrained, data, train_config, progress, allocation=allocation.fingerprint()
    )
    allocated_test = evaluate(retrained, data, "test", _KS)

    manifest = export_tables(run.path("export"), retrained.embedding, allocation, budget, config_hash=run.config_hash)
    metrics = {
        "run": str(run.folder),
        "data": data.summary(),
        "space": space.describe(),
        "controller": config.controller,
        "budget": {**budget.to_dict(), "description": budget.describe(), "max_bytes": budget.max_bytes},
        "allocation": {
            "values": allocation.cost,
            "retain_ratio": budget.retain_ratio(allocation.cost),
            "budget_used": allocation.cost / budget.max_values if budget.max_values else 1.0,
            "fingerprint": allocation.fingerprint(),
            "tables": allocation.summary(),
            "decisions": space.from_allocation(allocation).tolist() if space.n_decisions <= _LISTED_DECISIONS else None,
        },
        "export": {"bytes_stored": manifest["bytes_stored"], "folder": str(run.path("export"))},
        "full": {"valid": full_stats["valid"], "test": full_test, "train_seconds": full_stats["seconds"]},
        "allocated": {"valid": retrain_stats["valid"], "test": allocated_test, "train_seconds": retrain_stats["seconds"]},
        "seconds": time.perf_counter() - started,
    }
    run.write_json("metrics.json", metrics)
    run.log_event("done", seconds=metrics["seconds"])
    return metrics


def _train_or_load(
    run: Run,
    stage: str,
    model: Backbone,
    data: InteractionData,
    config: TrainConfig,
    progress: bool,
    allocation: str | None = None,
) -> tuple[Backbone, dict[str, Any]]:
    """Train ``model``, or reload it when the run already finished this stage for the same allocation."""
    finished = [e for e in run.events("trained") if e.get("stage") == stage and e.get("allocation") == allocation]
    checkpoint = f"{stage}.safetensors"
    if finished and run.has(f"checkpoints/{checkpoint}"):
        load_checkpoint(model, run, checkpoint)
        return model, finished[-1]
    result = train_bpr(model, data, config, progress=progress)
    run.save_tensors(checkpoint, dict(model.state_dict()))  # type: ignore[attr-defined]
    stats = {"stage": stage, "allocation": allocation, "valid": result.best_valid, "seconds": result.seconds,
             "best_epoch": result.best_epoch, "epochs_run": result.epochs_run}
    run.log_event("trained", **stats)
    return model, stats


def load_checkpoint(model: Backbone, run: Run, name: str) -> None:
    """Load a run's checkpoint into ``model``, refusing one whose tensors do not match it exactly."""
    try:
        model.load_state_dict(run.load_tensors(name), strict=True)  # type: ignore[attr-defined]
    except RuntimeError as error:
        raise ArtifactError(f"{run.path('checkpoints', name)} does not fit the configured model: {error}") from None


def _search(
    run: Run,
    config: SearchConfig,
    data: InteractionData,
    full_model: Backbone,
    space: SearchSpace,
    controller: Controller,
    budget: Budget,
    progress: bool,
) -> Allocation:
    """Ask the controller, measure fitness on the masked full model, tell, and keep its recommendation.

    A run that already finished its search (a ``searched`` event whose allocation is on
    disk) returns that allocation instead of searching again.
    """
    searched = list(run.events("searched"))
    if searched and run.has("allocation.npz"):
        allocation = Allocation.load(run.path("allocation.npz"))
        if allocation.fingerprint() == searched[-1]["fingerprint"]:
            allocation.validate(budget)
            return allocation
    trials = config.trials if controller.needs_fitness else 1
    evaluator = None
    if data.valid.nnz:
        users = user_subset(data.valid, config.fitness_users, config.seed)
        evaluator = MaskedModelEvaluator(full_model, data, users=users)
    bar = tqdm(range(trials), desc=f"search ({config.controller})", unit="trial", disable=not progress)
    for trial in bar:
        tic = time.perf_counter()
        decisions = controller.ask(1)[0]
        allocation = space.to_allocation(decisions)
        allocation.validate(budget)
        fitness = float(evaluator.fitness([allocation])[0]) if evaluator is not None else float("nan")
        if evaluator is not None:
            controller.tell(decisions[None, :], [fitness])
        run.log_event(
            "trial", trial=trial, fingerprint=allocation.fingerprint(), cost=allocation.cost, fitness=fitness,
            seconds=round(time.perf_counter() - tic, 4),
        )
        bar.set_postfix(fitness=f"{fitness:.4f}", best=f"{controller.best_fitness:.4f}")
    allocation = space.to_allocation(controller.recommend())
    allocation.validate(budget)
    allocation.save(run.path("allocation.npz"))
    run.log_event("searched", fingerprint=allocation.fingerprint(), cost=allocation.cost)
    return allocation


