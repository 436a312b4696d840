"""Tasks: what differs between top-k recommendation and click prediction, behind one small interface.

Every stage of a search (supernet, fitness, retraining, test, export) is the same
whatever the data, except for a handful of operations that depend on what the model
learns from.  A :class:`Task` is bound to a dataset and does exactly those:

==========================  ====================================  ====================================
operation                   top-k (:class:`TopKTask`)             click (:class:`ClickTask`)
==========================  ====================================  ====================================
data                        :class:`~recsys.data.InteractionData`  :class:`~recsys.data.CTRData`
backbones                   ``mf``, ``lightgcn``, ``neumf``, ...   ``fm``, ``deepfm``, ``dcnv2``
train (with hooks)          :func:`recsys.train.train_bpr`        :func:`recsys.train_ctr.train_ctr`
a batch                     ``(users, pos, neg)``                 ``(x, y)``
loss of a batch             ``model.bpr_loss`` (``softmax_loss``)  ``model.ctr_loss``
metrics of a split          Recall@k, NDCG@k (full ranking)       AUC, log loss
fitness numerator           BET eq. 13 (:func:`fitness_quality`)  AUC (:func:`ctr_fitness`)
many allocations at once    :func:`ranking_metrics_many`          :func:`evaluate_ctr_many`
==========================  ====================================  ====================================

The fitness of an allocation is its numerator divided by the full model's (BET eq. 12)
in both cases.  :func:`task_for` picks the task of a dataset; the backbone registry
(:mod:`nas.pipeline.backbones`) records which task each model belongs to.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from nas.core.errors import ConfigError
from recsys.data import BPRSampler, CTRData, InteractionData
from recsys.metrics import (
    FITNESS_KS,
    ctr_fitness,
    fitness_quality,
    ranking_metrics_many,
)
from recsys.train import (
    INFO_NCE_TEMPERATURE,
    SOFTMAX_NEGATIVES,
    SOFTMAX_TEMPERATURE,
    TrainConfig,
    TrainHooks,
    TrainResult,
    device_of,
    evaluate,
    top_k_loss,
    train_bpr,
    user_subset,
)
from recsys.train_ctr import CTRTrainConfig, evaluate_ctr, evaluate_ctr_many, train_ctr

if TYPE_CHECKING:
    from nas.pipeline.config import TrainingOptions
    from nas.core.controller import OneShotController

__all__ = ["TASKS", "Batch", "ClickTask", "Task", "TopKTask", "Variants", "top_k_variants_loss", "ctr_variants_loss", "task_for"]

#: One training batch as the task's trainer hands it over: ``(users, pos, neg)`` or ``(x, y)``.
Batch = tuple[torch.Tensor, ...]
#: ``{table: (A, rows)}`` sizes of the ``A`` allocations a sandwich step trains at once.
Variants = Mapping[str, torch.Tensor]

#: Scores held in memory at once by a batched ranking pass (the ``A × users × items`` float32 block).
_SCORE_MEMORY = 512 * 2**20
#: Rows scored at once by a click model serving one allocation; divided by the number served together.
_CTR_ROWS = 16384


def top_k_variants_loss(
    model: Any, chosen: Variants, batch: Batch, reg: float, step_loss: Callable[..., torch.Tensor] | None = None
) -> torch.Tensor:
    """The batch loss averaged over the allocations ``chosen`` (one sandwich step of a top-k supernet).

    ``step_loss(model, users, pos, neg, reg)`` is the objective (BPR when ``None``; see
    :func:`recsys.train.top_k_loss`); it must average its data term over stacked variants as
    ``bpr_loss`` does.  For BPR, a dot-product backbone that offers ``prefix_bpr_loss`` (MF)
    computes every variant from prefix sums; otherwise the batch is looked up once and every
    variant's masked copy served, stacked.
    """
    users, pos, neg = batch
    embedding = model.embedding
    count = len(next(iter(chosen.values())))
    prefix_loss = getattr(model, "prefix_bpr_loss", None)
    if step_loss is None and prefix_loss is not None and embedding.allocation is None and not embedding.quantises_variants:
        return prefix_loss(users, pos, neg, reg, lambda table, ids: chosen[table][:, ids].long())
    embedding.set_variants(chosen)
    try:
        # The data term is a mean over variants and triples; the L2 term sums over the
        # stacked vectors, so its weight is shared out to keep one triple's weight ``reg``.
        return (step_loss or top_k_loss("bpr"))(model, users, pos, neg, reg / count)
    finally:
        embedding.set_variants(None)


def ctr_variants_loss(model: Any, chosen: Variants, batch: Batch, reg: float) -> torch.Tensor:
    """The click loss averaged over the allocations ``chosen`` (one sandwich step of a click supernet).

    ``ctr_loss`` already averages both its terms over the stacked variants, so ``reg``
    keeps its per-example meaning without being divided.
    """
    x, y = batch
    model.embedding.set_variants(chosen)
    try:
        return model.ctr_loss(x, y, reg)
    finally:
        model.embedding.set_variants(None)


class Task(ABC):
    """The operations of the pipeline that depend on the kind of data, bound to one dataset.

    Args:
        data: the dataset the task trains and evaluates on.
    """

    #: Registry name of the task (the ``task`` of its backbones, see :mod:`nas.pipeline.backbones`).
    name: ClassVar[str] = ""
    #: The metrics the run summary shows, in order, and whether higher is better.
    headline: ClassVar[tuple[tuple[str, bool], ...]] = ()
    #: Standard deviation of the tables' normal initialisation.
    embedding_std: ClassVar[float] = 0.1

    def __init__(self, data: Any) -> None:
        self.data = data

    # -- training -----------------------------------------------------------------------------------
    @abstractmethod
    def train_config(self, options: TrainingOptions, seed: int, threads: int | None) -> Any:
        """The trainer's configuration for a run's training options."""

    @abstractmethod
    def train(self, model: Any, config: Any, hooks: TrainHooks | None = None, *, progress: bool = True) -> TrainResult:
        """Train ``model`` with early stopping on validation; ``hooks.loss`` is called as ``loss(model, *batch, reg)``."""

    @abstractmethod
    def batch_loss(self, model: Any, batch: Batch, reg: float) -> torch.Tensor:
        """The model's own loss of one batch, as its embedding currently serves it."""

    @abstractmethod
    def variants_loss(self, model: Any, chosen: Variants, batch: Batch, reg: float) -> torch.Tensor:
        """The loss of one batch averaged over several allocations served at once (the sandwich)."""

    @abstractmethod
    def finetune_batches(self, batch_size: int, seed: int, *, epochs: int | None, steps: int) -> Iterable[Batch]:
        """Training batches for fine-tuning: ``epochs`` passes, or ``steps`` batches when ``epochs`` is ``None``."""

    def one_shot_loss(self, controller: OneShotController) -> Callable[..., torch.Tensor]:
        """The per-batch loss of one-shot training: the controller's relaxation around :meth:`batch_loss`."""

        def loss(model: Any, *args: Any) -> torch.Tensor:
            *batch, reg = args
            return controller.relaxed_loss(model, lambda: self.batch_loss(model, tuple(batch), reg))

        return loss

    # -- evaluation ---------------------------------------------------------------------------------
    @property
    @abstractmethod
    def has_validation(self) -> bool:
        """Whether the data can measure validation quality (fitness needs it)."""

    @abstractmethod
    def evaluate(self, model: Any, split: str = "test", subset: np.ndarray | None = None) -> dict[str, float]:
        """The task's metrics of ``model`` on ``split`` (``"valid"`` or ``"test"``)."""

    @abstractmethod
    def quality(self, metrics: Mapping[str, float]) -> float:
        """The fitness numerator of a metrics dict (higher is better)."""

    @abstractmethod
    def stacked_qualities(self, model: Any, variants: int, subset: np.ndarray | None = None) -> list[float]:
        """Validation quality of each of the ``variants`` allocations ``model``'s embedding serves at once."""

    def validation_subset(self, size: int, seed: int) -> np.ndarray | None:
        """The fixed, seeded part of the validation data fitness is measured on (``None``: all of it)."""
        return None

    def validating_on_subset(self, config: Any, size: int) -> Any:
        """``config`` validating on the part of the validation data fitness uses (``size``; 0: all of it)."""
        return config


class TopKTask(Task):
    """Top-k recommendation from user-item interactions: BPR (or sampled softmax) training, full-ranking Recall and NDCG.

    Args:
        data: the interactions.
        loss: the objective of every batch the task trains on (``"bpr"`` or ``"softmax"``,
            :data:`recsys.train.LOSSES`): the trainer's, the fine-tune's, the supernet's and
            the one-shot controllers' alike.
        temperature: the softmax's τ.
        negatives: the softmax's negatives per batch.
        info_nce: weight of a graph backbone's InfoNCE term (0: none).
        info_nce_temperature: that term's temperature.
        hard_negatives: BPR's uniform candidates per triple, of which the model's highest-scoring
            is the negative (1: a uniform negative); the fine-tunes' batches carry them too.
    """

    name = "top-k"
    headline = (("recall@20", True), ("ndcg@20", True), ("recall@10", True), ("ndcg@10", True))
    embedding_std = 0.1

    data: InteractionData

    def __init__(
        self, data: InteractionData, loss: str = "bpr", temperature: float = SOFTMAX_TEMPERATURE,
        negatives: int = SOFTMAX_NEGATIVES,
        info_nce: float = 0.0,
        info_nce_temperature: float = INFO_NCE_TEMPERATURE,
        hard_negatives: int = 1,
    ) -> None:
        super().__init__(data)
        self.loss = loss
        self.hard_negatives = hard_negatives
        # Plain BPR has fast paths (MF's prefix sums, the controllers' own BPR entry point) for
        # one uniform negative; chosen negatives go through the backbone's bpr_loss instead.
        self.plain_bpr = loss == "bpr" and not info_nce and hard_negatives == 1
        self.step_loss = top_k_loss(loss, temperature, negatives, info_nce, info_nce_temperature)

    def train_config(self, options: TrainingOptions, seed: int, threads: int | None) -> TrainConfig:
        return options.to_train_config(seed, threads)

    def train(self, model: Any, config: TrainConfig, hooks: TrainHooks | None = None, *, progress: bool = True) -> TrainResult:
        return train_bpr(model, self.data, config, progress=progress, hooks=hooks)

    def batch_loss(self, model: Any, batch: Batch, reg: float) -> torch.Tensor:
        return self.step_loss(model, *batch, reg)

    def variants_loss(self, model: Any, chosen: Variants, batch: Batch, reg: float) -> torch.Tensor:
        return top_k_variants_loss(model, chosen, batch, reg, None if self.plain_bpr else self.step_loss)

    def finetune_batches(self, batch_size: int, seed: int, *, epochs: int | None, steps: int) -> Iterable[Batch]:
        sampler = BPRSampler(self.data.train, seed=seed, candidates=self.hard_negatives)
        if epochs is not None:
            return itertools.chain.from_iterable(sampler.epoch(batch_size) for _ in range(epochs))
        return itertools.islice(_forever(lambda: sampler.epoch(batch_size)), steps)

    def one_shot_loss(self, controller: OneShotController) -> Callable[..., torch.Tensor]:
        # BPR training calls the controller's BPR entry point, which every one-shot controller has;
        # another objective goes through relaxed_loss, as click models do.
        return controller.supernet_loss if self.plain_bpr else super().one_shot_loss(controller)

    @property
    def has_validation(self) -> bool:
        return bool(self.data.valid.nnz)

    def evaluate(self, model: Any, split: str = "test", subset: np.ndarray | None = None) -> dict[str, float]:
        return evaluate(model, self.data, split, FITNESS_KS, users=subset)

    def quality(self, metrics: Mapping[str, float]) -> float:
        return fitness_quality(metrics)

    def stacked_qualities(self, model: Any, variants: int, subset: np.ndarray | None = None) -> list[float]:
        device = device_of(model)
        n_items = self.data.valid.shape[1]
        chunk = max(1, min(1024, _SCORE_MEMORY // (4 * n_items * variants)))
        results = ranking_metrics_many(
            lambda users: model.all_scores(users.to(device)), variants,
            self.data.valid, [self.data.train], FITNESS_KS, users=subset, chunk_size=chunk,
        )
        return [fitness_quality(result) for result in results]

    def validation_subset(self, size: int, seed: int) -> np.ndarray | None:
        return user_subset(self.data.valid, size, seed)

    def validating_on_subset(self, config: TrainConfig, size: int) -> TrainConfig:
        # The trainer draws its subset with user_subset and the same seed: the fitness users themselves.
        return replace(config, eval_users=size or None)


class ClickTask(Task):
    """Click prediction from multi-field rows: binary cross-entropy training, AUC and log loss.

    The tables start small (standard deviation 0.01, as [LERSBench]'s models and
    ``benchmarks/ctr_movielens.py``): at 0.1 the pairwise terms of a dozen fields start
    large and the models overfit sooner.  Fitness is measured on every validation row
    (scoring rows is cheap next to ranking every item), so the run's ``fitness_users``
    does not apply.
    """

    name = "click"
    headline = (("auc", True), ("logloss", False))
    embedding_std = 0.01

    data: CTRData

    def train_config(self, options: TrainingOptions, seed: int, threads: int | None) -> CTRTrainConfig:
        try:
            return CTRTrainConfig(
                epochs=options.epochs, batch_size=options.batch_size, lr=options.lr, reg=options.reg,
                eval_every=options.eval_every, patience=options.patience, metric="auc", seed=seed, threads=threads,
                lr_decay=options.lr_decay,
            )
        except ValueError as error:
            raise ConfigError(f"training option: {error}") from None

    def train(self, model: Any, config: CTRTrainConfig, hooks: TrainHooks | None = None, *, progress: bool = True) -> TrainResult:
        return train_ctr(model, self.data, config, hooks, progress=progress)

    def batch_loss(self, model: Any, batch: Batch, reg: float) -> torch.Tensor:
        x, y = batch
        return model.ctr_loss(x, y, reg)

    def variants_loss(self, model: Any, chosen: Variants, batch: Batch, reg: float) -> torch.Tensor:
        return ctr_variants_loss(model, chosen, batch, reg)

    def finetune_batches(self, batch_size: int, seed: int, *, epochs: int | None, steps: int) -> Iterable[Batch]:
        x, y = self.data.tensors("train")
        n = x.shape[0]

        def epoch(number: int) -> Iterator[Batch]:
            order = torch.from_numpy(np.random.default_rng([seed, number]).permutation(n))
            for start in range(0, n, batch_size):
                rows = order[start : start + batch_size]
                yield x[rows], y[rows]

        if epochs is not None:
            return itertools.chain.from_iterable(epoch(e) for e in range(1, epochs + 1))
        numbers = itertools.count(1)
        return itertools.islice(_forever(lambda: epoch(next(numbers))), steps)

    @property
    def has_validation(self) -> bool:
        y = self.data.y["valid"]
        return bool(y.size) and 0 < float(y.sum()) < y.size  # AUC needs both classes

    def evaluate(self, model: Any, split: str = "test", subset: np.ndarray | None = None) -> dict[str, float]:
        return evaluate_ctr(model, self.data, split)

    def quality(self, metrics: Mapping[str, float]) -> float:
        return ctr_fitness(metrics)

    def stacked_qualities(self, model: Any, variants: int, subset: np.ndarray | None = None) -> list[float]:
        results = evaluate_ctr_many(model, self.data, "valid", batch_size=max(256, _CTR_ROWS // variants))
        return [ctr_fitness(result) for result in results]


#: The task of each kind of data.
TASKS: dict[str, type[Task]] = {TopKTask.name: TopKTask, ClickTask.name: ClickTask}


def task_for(data: Any, training: Any = None) -> Task:
    """The task of a dataset: :class:`TopKTask` for interactions, :class:`ClickTask` for click rows.

    A run builds its task once and hands it to every stage; the stages accept data too
    (for direct use), and a task given where data is expected passes through unchanged.

    Args:
        data: the dataset, or a task (returned as it is).
        training: the run's training options or trainer configuration; a top-k task trains
            with its ``loss``, ``temperature`` and ``negatives`` (BPR when ``None``).
    """
    if isinstance(data, Task):
        return data
    if isinstance(data, CTRData):
        return ClickTask(data)
    if isinstance(data, InteractionData):
        if training is None:
            return TopKTask(data)
        return TopKTask(data, training.loss, training.temperature, training.negatives,
                        training.info_nce, training.info_nce_temperature, training.hard_negatives)
    raise ConfigError(f"no task learns from {type(data).__name__}; give InteractionData or CTRData")


def _forever(epoch: Callable[[], Iterable[Batch]]) -> Iterator[Batch]:
    while True:
        yield from epoch()
