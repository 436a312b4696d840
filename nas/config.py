"""What defines a run: the data, model, budget, space, controller, supernet, evaluator and training.

A :class:`SearchConfig` is written to the run's ``config.json`` and hashed; a run
folder only continues under the configuration that made it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from nas.core.errors import ConfigError
from nas.data_source import DataSpec
from nas.evaluate import EVALUATORS, FineTuneConfig
from nas.supernet import SupernetOptions
from recsys.train import TrainConfig

__all__ = ["KS", "RETRAIN_MODES", "SearchConfig", "TrainingOptions"]

#: Cut-offs of every evaluation of a run (those of BET's fitness, eq. 13).
KS = (5, 10, 20)

#: How the fittest allocations are retrained (see :func:`nas.search.halving_rungs`).
RETRAIN_MODES = ("full", "halving")


@dataclass(frozen=True)
class TrainingOptions:
    """BPR training of the supernet and of the retrained allocations (see :class:`recsys.train.TrainConfig`).

    ``checkpoint_every`` epochs the whole training state is saved in the run, so a run
    killed mid-training resumes from that epoch.
    """

    epochs: int = 40
    batch_size: int = 2048
    lr: float = 5e-3
    reg: float = 1e-4
    eval_every: int = 2
    patience: int = 3
    sampling: str = "pair"
    checkpoint_every: int = 1

    def __post_init__(self) -> None:
        if self.checkpoint_every < 1:
            raise ConfigError(f"checkpoint_every must be at least 1 epoch, got {self.checkpoint_every}")
        try:
            self.to_train_config(seed=0, threads=None)
        except ValueError as error:
            raise ConfigError(f"training option: {error}") from None

    def to_train_config(self, seed: int, threads: int | None) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, reg=self.reg,
            eval_every=self.eval_every, patience=self.patience, ks=KS, seed=seed, threads=threads,
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
        controller_options: keyword options of the controller (``candidates``, ``predictor``
            for BET, for example).
        trials: allocations evaluated by controllers that learn from fitness.
        ask_batch: candidates asked of the controller at once and evaluated together.
        fitness_users: validation users sampled (with the seed) for fitness during the search; 0 for all.
        supernet: how the supernet is trained (sandwich or plain full-size pre-training).
        evaluator: ``"supernet"`` (masks on the supernet) or ``"finetune"`` (BET's protocol).
        finetune: the fine-tuning protocol of the ``finetune`` evaluator.
        retrain_top: the best allocations by fitness retrained from scratch; the best of
            them on validation is the run's answer.
        retrain: ``"full"`` (every one trained to the end) or ``"halving"`` (successive
            halving: all briefly, the best longer, one to the end).
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
    controller_options: dict[str, Any] = field(default_factory=dict)
    trials: int = 16
    ask_batch: int = 1
    fitness_users: int = 2000
    supernet: SupernetOptions = field(default_factory=SupernetOptions)
    evaluator: str = "supernet"
    finetune: FineTuneConfig = field(default_factory=FineTuneConfig)
    retrain_top: int = 5
    retrain: str = "full"
    seed: int = 0
    train: TrainingOptions = field(default_factory=TrainingOptions)
    device: str = "cpu"
    threads: int | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.trials >= 1, f"--trials must be at least 1, got {self.trials}"),
            (self.ask_batch >= 1, f"--ask-batch must be at least 1, got {self.ask_batch}"),
            (self.retrain_top >= 1, f"--retrain-top must be at least 1, got {self.retrain_top}"),
            (self.retrain in RETRAIN_MODES, f"--retrain must be one of {RETRAIN_MODES}, got {self.retrain!r}"),
            (self.evaluator in EVALUATORS, f"--evaluator must be one of {EVALUATORS}, got {self.evaluator!r}"),
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
    def upgrade(cls, recorded: dict[str, Any]) -> dict[str, Any]:
        """A configuration written by an earlier version, with the options added since at their defaults."""
        upgraded = cls.from_dict(recorded).to_dict()
        if "data_fingerprint" in recorded:
            upgraded["data_fingerprint"] = recorded["data_fingerprint"]
        return upgraded

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchConfig:
        """Inverse of :meth:`to_dict`."""
        fields = {k: v for k, v in data.items() if k != "data_fingerprint"}
        nested = {
            "data": DataSpec.from_dict(data["data"]),
            "train": TrainingOptions(**data["train"]),
            "supernet": SupernetOptions(**data.get("supernet", {})),
            "finetune": FineTuneConfig(**data.get("finetune", {})),
        }
        return cls(**{**fields, **nested})


