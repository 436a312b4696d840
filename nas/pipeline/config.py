"""What defines a run: the data, model, budget, space, controller, supernet, evaluator and training.

A :class:`SearchConfig` is written to the run's ``config.json`` and hashed; a run
folder only continues under the configuration that made it.
"""

from __future__ import annotations

import math
import numbers
import os
import reprlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

import torch

from nas.pipeline.backbones import TASKS, backbone_task, models_of_task
from nas.core.errors import ConfigError
from nas.core.budget import Budget
from nas.core.plugins import CONTROLLERS
from nas.core.precision import DEFAULT_PRECISIONS, SCALES, parse_precisions
from nas.pipeline.data import CLICK_FORMATS, TOP_K_FORMATS, DataSpec
from recsys.metrics import FITNESS_KS
from recsys.train import INFO_NCE_TEMPERATURE, SOFTMAX_NEGATIVES, SOFTMAX_TEMPERATURE, TrainConfig

if TYPE_CHECKING:
    from nas.core.controller import Controller

__all__ = [
    "D_MAX_DEFAULTS",
    "D_MAX_LIMIT",
    "EVALUATORS",
    "PROPOSAL_SOURCES",
    "REFERENCES",
    "RETRAIN_MODES",
    "SUPERNET_MODES",
    "TRAINING_COPIES",
    "PROPAGATING_BACKBONES",
    "PROPAGATION_DTYPES",
    "TRAINING_DEFAULTS",
    "FineTuneConfig",
    "SearchConfig",
    "SupernetOptions",
    "TrainingOptions",
    "available_memory",
    "check_memory",
    "training_memory",
]

#: How the fittest allocations are retrained (see :func:`nas.pipeline.search.halving_rungs` and
#: :func:`nas.pipeline.search.finetune_epochs`).
RETRAIN_MODES = ("full", "halving", "finetune")

#: How the supernet is trained (see :mod:`nas.pipeline.supernet`); ``auto`` leaves it to the controller.
SUPERNET_MODES = ("auto", "sandwich", "full")
#: Where the sandwich's random allocations come from.
PROPOSAL_SOURCES = ("space", "controller")


#: Allocations a fitness-driven search evaluates when neither the run nor its controller says.
DEFAULT_TRIALS = 16
#: Fittest allocations retrained when neither the run nor its controller says.
DEFAULT_RETRAIN_TOP = 5


def _installed(controller: str) -> type[Controller] | None:
    """The controller's class, or ``None`` when it is not installed (reported where the controller is built)."""
    return CONTROLLERS.get(controller) if controller in CONTROLLERS else None


def _default_trials(controller: str, precisions: int) -> int:
    """The trials the controller's search is designed for (if it is installed and says), else :data:`DEFAULT_TRIALS`."""
    cls = _installed(controller)
    preferred = cls.preferred_trials(precisions) if cls is not None else None
    return DEFAULT_TRIALS if preferred is None else int(preferred)


def _default_retrain_top(controller: str) -> int:
    """How many of its fittest the controller has retrained (if it is installed and says), else :data:`DEFAULT_RETRAIN_TOP`."""
    cls = _installed(controller)
    preferred = cls.preferred_retrain_top if cls is not None else None
    return DEFAULT_RETRAIN_TOP if preferred is None else int(preferred)


def _default_precisions(budget: object, controller: str) -> tuple[str, ...]:
    """The precisions a run searches when none are given: the default set under a byte budget, if the controller can.

    A controller that cannot search precisions (or one not installed) searches sizes alone,
    as it always did.
    """
    cls = _installed(controller)
    if not Budget.counts_bytes(str(budget)) or cls is None:
        return ()
    return DEFAULT_PRECISIONS if cls.searches_precision else ()


def _refuse_non_finite(section: str, options: Any, flags: Mapping[str, str] | None = None) -> None:
    """Refuse an infinite or NaN number anywhere in a configuration section's fields (option dicts included).

    Every float option of a run is a rate, a weight or a factor: an infinite or NaN one
    trains straight to NaN weights (or to nothing), so it is refused where it is given.

    Raises:
        ConfigError: naming the option (and its command-line flag, when it has one) and the value.
    """
    for item in fields(options):
        for name, value in _numbers(item.name, getattr(options, item.name)):
            if not math.isfinite(value):
                flag = (flags or {}).get(item.name)
                raise ConfigError(f"{section} option {name}{f' ({flag})' if flag else ''} must be a finite number, "
                                  f"got {value!r}")


def _numbers(name: str, value: Any) -> list[tuple[str, float]]:
    """The real, non-integral numbers in ``value`` (searched through dicts and lists), by dotted name."""
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return [(name, float(value))]
    if isinstance(value, Mapping):
        return [found for key, inner in value.items() for found in _numbers(f"{name}.{key}", inner)]
    if isinstance(value, (list, tuple)):
        return [found for i, inner in enumerate(value) for found in _numbers(f"{name}[{i}]", inner)]
    return []


@dataclass(frozen=True)
class SupernetOptions:
    """How the supernet is trained.

    Attributes:
        mode: ``"sandwich"``, ``"full"`` (see :mod:`nas.pipeline.supernet`), or ``"auto"``:
            the supernet the controller's fitness is designed for
            (:attr:`~nas.core.controller.Controller.preferred_supernet`), else the sandwich.
        random: random feasible allocations per step beside the largest and the smallest.
        pool: random allocations drawn per epoch, among which each step picks ``random``.
        proposals: ``"space"`` (uniform sizes, projected) or ``"controller"`` (the
            controller's proposal distribution, when it has one).
        epochs: most epochs of this first stage (the supernet, a one-shot controller's
            search, or a rule controller's full-size reference); ``None`` trains it as long
            as the retrained allocation.  A search needs the weights to rank sizes, not to
            converge, so a shorter supernet buys most of a search's cost back (successive
            halving sizes its early rungs by the supernet's best epoch, so they shorten too).
        budgets: the budgets the sandwich's random allocations are drawn under, in turn
            (as typed: ``0.5``, ``2MB``); empty: the run's own.  The searches of one front
            (``--budget 0.5,0.8,0.95``) share one supernet trained under all of them.
    """

    mode: str = "auto"
    random: int = 2
    pool: int = 16
    proposals: str = "space"
    epochs: int | None = None
    budgets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "budgets", tuple(str(b).strip() for b in self.budgets))
        if any(not b or "," in b for b in self.budgets):
            raise ConfigError(f"supernet budgets must be budgets such as 0.5 or 2MB, one each, got {list(self.budgets)}")
        _refuse_non_finite("supernet", self)
        if self.mode not in SUPERNET_MODES:
            raise ConfigError(f"supernet mode must be one of {SUPERNET_MODES}, got {self.mode!r}")
        if self.proposals not in PROPOSAL_SOURCES:
            raise ConfigError(f"supernet proposals must be one of {PROPOSAL_SOURCES}, got {self.proposals!r}")
        if self.random < 0 or self.pool < max(1, self.random):
            raise ConfigError(f"supernet needs 0 <= random <= pool and pool >= 1, got random={self.random}, pool={self.pool}")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"--supernet-epochs must be at least 1, got {self.epochs}")

    def resolved(self, preferred: str | None) -> SupernetOptions:
        """These options with ``auto`` replaced by ``preferred`` (a controller's choice), else the sandwich."""
        return self if self.mode != "auto" else replace(self, mode=preferred or "sandwich")



#: How fitness is measured: masks on the supernet, or BET's fine-tune of each allocation.
EVALUATORS = ("supernet", "finetune")

#: What the allocated model is compared with: a plainly trained, cached full model, or none (the supernet).
REFERENCES = ("full", "none")


@dataclass(frozen=True)
class FineTuneConfig:
    """How each allocation is fine-tuned from the pre-trained weights before it is ranked.

    The default follows the protocol as summarised for this toolkit (SGD, lr 0.03
    decayed ×0.98 after every step, 200 steps).  [BET] itself fine-tunes for
    ``epochs = 10`` with the decay applied every 200 steps: :meth:`paper`.

    Attributes:
        steps: optimiser steps (ignored when ``epochs`` is set).
        epochs: fine-tune for this many passes over the training pairs instead.
        lr: initial SGD learning rate.
        gamma: multiplicative learning-rate decay.
        decay_every: steps between decays.
        batch_size: BPR triples (click data: rows) per step.
        reg: L2 weight of the loss (as in training).
        optimizer: ``"sgd"`` (the protocol's) or ``"adam"``.
    """

    steps: int = 200
    epochs: int | None = None
    lr: float = 0.03
    gamma: float = 0.98
    decay_every: int = 1
    batch_size: int = 2048
    reg: float = 1e-4
    optimizer: str = "sgd"

    def __post_init__(self) -> None:
        _refuse_non_finite("fine-tuning", self)
        if self.optimizer not in ("sgd", "adam"):
            raise ConfigError(f"fine-tuning optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.steps < 1 or (self.epochs is not None and self.epochs < 1):
            raise ConfigError(f"fine-tuning needs at least one step, got steps={self.steps}, epochs={self.epochs}")
        checks = [
            (self.lr > 0, f"fine-tuning lr must be > 0, got {self.lr}"),
            (0 < self.gamma <= 1, f"fine-tuning gamma must be in (0, 1], got {self.gamma}"),
            (self.decay_every >= 1, f"fine-tuning decay_every must be at least 1 step, got {self.decay_every}"),
            (self.batch_size >= 1, f"fine-tuning batch_size must be at least 1, got {self.batch_size}"),
            (self.reg >= 0, f"fine-tuning reg must be >= 0, got {self.reg}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @classmethod
    def paper(cls, reg: float = 1e-4) -> FineTuneConfig:
        """[BET, section 4.3]: 10 epochs, lr 0.03 decayed ×0.98 every 200 steps."""
        return cls(epochs=10, decay_every=200, reg=reg)


@dataclass(frozen=True)
class TrainingOptions:
    """Training of the supernet and of the retrained allocations.

    Top-k backbones train with BPR or, with ``loss="softmax"``, a sampled softmax against
    ``negatives`` uniform items shared by each batch, at ``temperature``
    (:class:`recsys.train.TrainConfig`); click backbones
    with binary cross-entropy (:class:`recsys.train_ctr.CTRTrainConfig`, early stopping
    on validation AUC; ``sampling`` does not apply, and ``loss`` must stay ``"bpr"``).  ``checkpoint_every`` epochs the
    whole training state is saved in the run, so a run killed mid-training resumes from
    that epoch.  ``propagation`` is the dtype LightGCN's rounds multiply in
    (:data:`PROPAGATION_DTYPES`; the tables, their gradients and the loss stay float32).
    ``lr_decay`` multiplies the learning rate at every validation without improvement
    (1: constant), so a rate chosen too large still ends where a smaller one would.
    ``hard_negatives`` above 1 makes BPR's negative the highest-scoring of that many uniform
    candidates per triple (top-k backbones only).
    :data:`TRAINING_DEFAULTS` holds each task's defaults.
    """

    epochs: int = 40
    batch_size: int = 2048
    lr: float = 5e-3
    reg: float = 1e-4
    eval_every: int = 2
    patience: int = 3
    sampling: str = "pair"
    checkpoint_every: int = 1
    loss: str = "bpr"
    temperature: float = SOFTMAX_TEMPERATURE
    negatives: int = SOFTMAX_NEGATIVES
    info_nce: float = 0.0
    info_nce_temperature: float = INFO_NCE_TEMPERATURE
    propagation: str = "fp32"
    lr_decay: float = 1.0
    hard_negatives: int = 1

    def __post_init__(self) -> None:
        _refuse_non_finite("training", self, _TRAINING_FLAGS)
        if self.propagation not in PROPAGATION_DTYPES:
            raise ConfigError(f"propagation must be one of {', '.join(PROPAGATION_DTYPES)}, got {self.propagation!r}")
        if self.checkpoint_every < 1:
            raise ConfigError(f"checkpoint_every must be at least 1 epoch, got {self.checkpoint_every}")
        try:
            self.to_train_config(seed=0, threads=None)
        except ValueError as error:
            raise ConfigError(f"training option: {error}") from None

    def to_train_config(self, seed: int, threads: int | None) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, reg=self.reg,
            eval_every=self.eval_every, patience=self.patience, ks=FITNESS_KS, seed=seed, threads=threads,
            sampling=self.sampling, loss=self.loss, temperature=self.temperature, negatives=self.negatives,
            info_nce=self.info_nce, info_nce_temperature=self.info_nce_temperature, lr_decay=self.lr_decay,
            hard_negatives=self.hard_negatives,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form; without the InfoNCE term, in float32, at a constant rate and with uniform negatives,
        exactly what it was before any of them existed (same run identity)."""
        data = asdict(self)
        if self.lr_decay == 1.0:
            del data["lr_decay"]
        if self.hard_negatives == 1:
            del data["hard_negatives"]
        if not self.info_nce:
            del data["info_nce"], data["info_nce_temperature"]
        if self.propagation == "fp32":
            del data["propagation"]
        return data


#: The dtypes a graph backbone's propagation may multiply in (``propagation`` of
#: :class:`TrainingOptions`): bfloat16 halves the bytes each sparse product reads.
PROPAGATION_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}
#: The backbones whose propagation can run in another dtype (they take ``propagation_dtype``).
PROPAGATING_BACKBONES = ("lightgcn",)


#: The command-line flags of the training options that have one (named in error messages).
_TRAINING_FLAGS = {name: "--" + name.replace("_", "-") for name in ("epochs", "batch_size", "lr", "reg", "eval_every",
                                                                    "patience", "sampling", "loss", "temperature", "negatives",
                                                                    "info_nce", "info_nce_temperature", "propagation",
                                                                    "lr_decay", "hard_negatives")}


#: Training defaults of each task: BPR as LightGCN trains for top-k; [LERSBench]'s for click
#: models (Adam at 1e-3, batch 2,048, at most 15 epochs, validation AUC every epoch with
#: patience 2, L2 1e-5 on the looked-up vectors; see :class:`recsys.train_ctr.CTRTrainConfig`).
TRAINING_DEFAULTS: dict[str, TrainingOptions] = {
    "top-k": TrainingOptions(),
    "click": TrainingOptions(epochs=15, batch_size=2048, lr=1e-3, reg=1e-5, eval_every=1, patience=2),
}

#: Full embedding width of each task unless given: 64 for top-k; 16 for click models [LERSBench, Table 4].
D_MAX_DEFAULTS: dict[str, int] = {"top-k": 64, "click": 16}

#: The widest ``d_max`` a run accepts: the largest row size the export's ``uint16`` row sizes
#: hold (:func:`nas.core.accounting.dims_dtype`), a thousand times the widths recommenders use
#: (16 to 64).  A wider one is a typo (``--d-max 100000``) and would only fail later, when
#: its tables do not fit in memory (:func:`check_memory` catches narrower ones that do not).
D_MAX_LIMIT = 65_535


#: The type every plain field of :class:`SearchConfig` must have (a configuration read
#: from a damaged config.json is refused here, not deep inside a stage).
_SEARCH_TYPES: dict[str, type | tuple[type, ...]] = {
    "model": str, "budget": str, "space": str, "controller": str, "evaluator": str, "retrain": str, "device": str,
    "reference": str, "precisions": tuple, "scales": str, "space_options": dict, "controller_options": dict, "trials": (int, type(None)), "ask_batch": int, "fitness_users": int,
    "retrain_top": int, "seed": int, "d_min": int, "d_max": (int, type(None)), "threads": (int, type(None)),
    "data": DataSpec, "supernet": SupernetOptions, "finetune": FineTuneConfig, "train": (TrainingOptions, type(None)),
}


def _check_types(options: Any, types: Mapping[str, type | tuple[type, ...]]) -> None:
    """Raise :class:`ConfigError` naming the first field whose value is not of its type (a bool is not an int)."""
    for name, kind in types.items():
        value = getattr(options, name)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, (int, type(None)))):
            names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise ConfigError(f"the option {name} must be {names}, got {reprlib.repr(value)}")


@dataclass(frozen=True)
class SearchConfig:
    """Everything that defines a run; written to ``config.json`` and hashed.

    Attributes:
        data: the dataset.
        model: backbone name (``embnas`` lists them in ``--help``); a top-k model needs
            interaction data, a click model click data (:mod:`nas.pipeline.backbones`).
        d_max: full embedding width (``None``: the model's task's default, :data:`D_MAX_DEFAULTS`).
        d_min: fewest dimensions any row keeps.
        budget: the budget as typed by the user: sparsity (``0.9``), parameters or bytes (``2MB``).
        space: search-space name.
        space_options: keyword options of the space (``groups``, ``blocks``, ``grouping`` for
            the block space; ``grid`` for the per-feature and per-field spaces).
        controller: controller name.
        controller_options: keyword options of the controller (``candidates``, ``predictor``
            for BET, for example).
        trials: allocations evaluated by controllers that learn from fitness (``None``: the
            controller's :meth:`~nas.core.controller.Controller.preferred_trials`, else
            :data:`DEFAULT_TRIALS`).
        ask_batch: candidates asked of the controller at once and evaluated together.
        fitness_users: validation users sampled (with the seed) for fitness during the search; 0 for all
            (click data is scored on every validation row).
        supernet: how the supernet is trained (sandwich or plain full-size pre-training).
        evaluator: ``"supernet"`` (masks on the supernet) or ``"finetune"`` (BET's protocol).
        finetune: the fine-tuning protocol of the ``finetune`` evaluator.
        retrain_top: the best allocations by fitness retrained from scratch; the best of
            them on validation is the run's answer (``None``: the controller's
            :attr:`~nas.core.controller.Controller.preferred_retrain_top`, else
            :data:`DEFAULT_RETRAIN_TOP`).
        retrain: ``"full"`` (every one trained to the end), ``"halving"`` (successive
            halving: all briefly, the best longer, one to the end) or ``"finetune"``
            (each briefly fine-tuned from the supernet's weights, the best on validation
            retrained from scratch to the end).
        seed: fixes the data split, initialisations, sampling and the controller.
        train: how the full model and the retrained allocation are trained (``None``: the
            task's defaults, :data:`TRAINING_DEFAULTS`; :func:`nas.search`, :func:`nas.configure`
            and the command line start from the backbone's default recipe instead,
            :data:`nas.pipeline.recipes.DEFAULT_RECIPES`).
        device: torch device.
        threads: torch threads (``None`` leaves torch's default).
        reference: what the allocated model is compared with: ``"full"``, a plainly trained
            full-size model of the same backbone, training and seed, trained once and
            cached for every later run (:mod:`nas.pipeline.reference`); ``"none"`` trains
            no reference and compares with the supernet at full size (cheaper, but a
            supernet is weaker than a plainly trained model, so the ratio flatters).
        precisions: precisions searched beside the sizes (``("fp32", "fp16", "int8", "int4")``,
            :mod:`nas.core.precision`); under a byte budget the budget then counts the bits the
            export stores.  Empty, or ``("fp32",)`` alone: every value at float32, sizes only.
            ``None`` (the default) chooses: :data:`~nas.core.precision.DEFAULT_PRECISIONS` for a
            byte budget and a controller that searches precisions (a byte budget says memory is
            what counts, and what a byte buys is more dimensions at fewer bits: docs/results.md,
            section 15.3), sizes only otherwise.
        scales: where integer rows' scales live (``"row"``: one per row; ``"shared"``: one
            per table, precision and size, which leaves a byte budget two bytes a row more
            for values; :mod:`nas.core.precision`).  Only with precisions.
    """

    data: DataSpec = field(default_factory=DataSpec)
    model: str = "mf"
    d_max: int | None = None
    d_min: int = 1
    budget: str = "0.9"
    space: str = "per-feature"
    space_options: dict[str, Any] = field(default_factory=dict)
    controller: str = "frequency"
    controller_options: dict[str, Any] = field(default_factory=dict)
    trials: int | None = None
    ask_batch: int = 1
    fitness_users: int = 2000
    supernet: SupernetOptions = field(default_factory=SupernetOptions)
    evaluator: str = "supernet"
    finetune: FineTuneConfig = field(default_factory=FineTuneConfig)
    retrain_top: int | None = None
    retrain: str = "full"
    seed: int = 0
    train: TrainingOptions | None = None
    device: str = "cpu"
    threads: int | None = None
    reference: str = "full"
    precisions: tuple[str, ...] | None = None
    scales: str = "row"

    def __post_init__(self) -> None:
        _refuse_non_finite("search", self, {"space_options": "--space-option", "controller_options": "--controller-option"})
        if self.retrain_top is None:
            object.__setattr__(self, "retrain_top", _default_retrain_top(self.controller))
        if self.precisions is None:
            object.__setattr__(self, "precisions", _default_precisions(self.budget, self.controller))
        if isinstance(self.precisions, (list, str)):
            object.__setattr__(self, "precisions", tuple(self.precisions.split(",") if isinstance(self.precisions, str)
                                                         else self.precisions))
        _check_types(self, _SEARCH_TYPES)
        if self.precisions:
            try:
                object.__setattr__(self, "precisions", parse_precisions(self.precisions))
            except ConfigError as error:
                raise ConfigError(f"--precisions: {error}") from None
            if self.precisions == ("fp32",):  # nothing to choose between: the sizes-only run, exactly
                object.__setattr__(self, "precisions", ())
        if self.trials is None:
            object.__setattr__(self, "trials", _default_trials(self.controller, len(self.precisions)))
        checks = [
            (self.d_max is None or 1 <= self.d_max <= D_MAX_LIMIT,
             f"--d-max must be between 1 and {D_MAX_LIMIT:,} (embedding widths are 16 to 64 in practice), got {self.d_max}"),
            (0 <= self.d_min, f"--d-min must be non-negative, got {self.d_min}"),
            (self.trials >= 1, f"--trials must be at least 1, got {self.trials}"),
            (self.ask_batch >= 1, f"--ask-batch must be at least 1, got {self.ask_batch}"),
            (self.retrain_top >= 1, f"--retrain-top must be at least 1, got {self.retrain_top}"),
            (self.retrain in RETRAIN_MODES, f"--retrain must be one of {RETRAIN_MODES}, got {self.retrain!r}"),
            (self.evaluator in EVALUATORS, f"--evaluator must be one of {EVALUATORS}, got {self.evaluator!r}"),
            (self.reference in REFERENCES, f"--reference must be one of {REFERENCES}, got {self.reference!r}"),
            (self.seed >= 0, f"--seed must be non-negative, got {self.seed}"),
            (self.threads is None or self.threads >= 1, f"--threads must be at least 1, got {self.threads}"),
            (self.fitness_users >= 0, f"--fitness-users must be 0 (all) or more, got {self.fitness_users}"),
            (self.device == "cpu" or self.device.startswith("cuda"), f"unknown device {self.device!r}; use cpu or cuda[:N]"),
            (self.scales in SCALES, f"--scales must be one of {SCALES}, got {self.scales!r}"),
            (self.scales == "row" or bool(self.precisions),
             f"--scales {self.scales} shares the scales of integer precisions, and this run searches none; "
             "give --precisions (e.g. fp32,fp16,int8,int4) or leave --scales out"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        task = self.task
        if task != self.data.task:
            formats = {"top-k": TOP_K_FORMATS, "click": CLICK_FORMATS}
            raise ConfigError(
                f"the model {self.model!r} is a {task} model, for {TASKS[task]}, but the data ({self.data.format}) is "
                f"{TASKS[self.data.task]}; on this data use one of {', '.join(models_of_task(self.data.task))}, or give "
                f"{task} data (formats {', '.join(formats[task])}) for {', '.join(models_of_task(task))}"
            )
        if task == "click" and self.train is not None and self.train.loss != "bpr":
            raise ConfigError(f"--loss {self.train.loss} is an objective of top-k models; click models train with "
                              "binary cross-entropy, so leave --loss out")
        if task == "click" and self.train is not None and self.train.hard_negatives != 1:
            raise ConfigError("--hard-negatives chooses the negative item of top-k models' BPR; click models learn from "
                              "labelled rows, so leave it out")
        if self.train is not None and self.train.info_nce and (task == "click" or self.model in ("mf", "neumf")):
            raise ConfigError(f"--info-nce is a term of graph backbones (lightgcn, ngcf); {self.model} has none, "
                              "so leave it out")
        if self.train is not None and self.train.propagation != "fp32" and self.model not in PROPAGATING_BACKBONES:
            raise ConfigError(f"--propagation {self.train.propagation} applies to {', '.join(PROPAGATING_BACKBONES)}; "
                              f"{self.model} propagates nothing, so leave it out")
        if self.d_max is None:
            object.__setattr__(self, "d_max", D_MAX_DEFAULTS[task])
        if self.train is None:
            object.__setattr__(self, "train", TRAINING_DEFAULTS[task])

    @property
    def task(self) -> str:
        """The task of the model (``"top-k"`` or ``"click"``, see :mod:`nas.pipeline.tasks`)."""
        return backbone_task(self.model)

    def check_device(self) -> None:
        """Refuse a CUDA device torch cannot see (checked before training, not when a run is replayed)."""
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {self.device!r} asked for, but torch sees no CUDA device; use --device cpu")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the run's identity); without precisions, exactly what it was before they existed."""
        data = asdict(self)
        data["data"] = self.data.to_dict()
        if self.train is not None:
            data["train"] = self.train.to_dict()
        data["precisions"] = list(self.precisions)
        if not self.precisions:
            del data["precisions"]
        if self.scales == "row":  # per-row scales: the identity a run had before scales could be shared
            del data["scales"]
        if self.supernet.budgets:  # a supernet under the run's own budget: the identity it had before fronts
            data["supernet"]["budgets"] = list(self.supernet.budgets)
        else:
            del data["supernet"]["budgets"]
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
        # A run recorded before the plainly trained reference existed compared with its supernet.
        # A run recorded without precisions searched sizes only, whatever its budget.
        fields = {"reference": "none", "precisions": (), **{k: v for k, v in data.items() if k != "data_fingerprint"}}
        nested = {
            "data": DataSpec.from_dict(data["data"]),
            "train": TrainingOptions(**data["train"]) if data.get("train") is not None else None,
            "supernet": SupernetOptions(**data.get("supernet", {})),
            "finetune": FineTuneConfig(**data.get("finetune", {})),
        }
        return cls(**{**fields, **nested})


#: Copies of the full tables that training holds at once: the weights, their gradients and
#: Adam's two moments (float32 each).  Early stopping's best state and a checkpoint add more,
#: so this is a lower bound: what it refuses surely cannot run.
TRAINING_COPIES = 4


def training_memory(rows: Mapping[str, int], d_max: int, copies: int = TRAINING_COPIES) -> int:
    """Bytes the full embedding tables need while training: ``copies × rows × d_max × 4`` (float32).

    Args:
        rows: rows of each table, by name.
        d_max: the full width.
        copies: full-size copies held at once (:data:`TRAINING_COPIES`).
    """
    return copies * sum(int(n) for n in rows.values()) * int(d_max) * 4


def available_memory(device: str = "cpu") -> int | None:
    """Bytes free for new tensors on ``device``, or ``None`` when that cannot be told.

    A CUDA device reports its free memory (``torch.cuda.mem_get_info``); the CPU the
    kernel's estimate of memory available without swapping (``MemAvailable`` of
    ``/proc/meminfo``), else the free physical pages.
    """
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            return None
        try:
            return int(torch.cuda.mem_get_info(torch.device(device))[0])
        except (RuntimeError, AssertionError, ValueError):
            return None
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the kernel writes kB (KiB)
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_AVPHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(config: SearchConfig, rows: Mapping[str, int], available: int | None = None) -> None:
    """Refuse a run whose full tables cannot be trained in the memory of its device.

    Called where the configuration meets the data (the table sizes are known only then),
    before any training: a width that cannot fit otherwise runs until the first epoch
    exhausts the memory.  Only the tables are counted (:func:`training_memory`), so the
    check refuses what surely fails and lets through what might fit.

    Args:
        config: the run's configuration (its ``d_max`` and ``device``).
        rows: rows of each embedding table, by name.
        available: free bytes on the device; ``None`` measures them (:func:`available_memory`),
            and the check is skipped when they cannot be measured.

    Raises:
        ConfigError: naming the bytes needed, the bytes available and what to change.
    """
    d_max = int(config.d_max or D_MAX_DEFAULTS[config.task])
    needed = training_memory(rows, d_max)
    if available is None:
        available = available_memory(config.device)
    if available is None or needed <= available:
        return
    total = sum(int(n) for n in rows.values())
    raise ConfigError(
        f"--d-max {d_max} needs at least {needed:,} bytes ({needed / 2**30:,.1f} GiB) to train the tables on {config.device}: "
        f"{TRAINING_COPIES} copies (weights, gradients, Adam's two moments) of {total:,} rows x {d_max} float32 values, "
        f"but only {available:,} bytes ({available / 2**30:,.1f} GiB) are available; lower --d-max "
        f"(at most {max(available // (TRAINING_COPIES * total * 4), 0):,} fits) or use a device with more memory"
    )
