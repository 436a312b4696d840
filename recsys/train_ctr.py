"""Training and evaluation of click models (:class:`~recsys.models.CTRBackbone`) on :class:`~recsys.data.CTRData`.

The loop is :func:`recsys.train.train_bpr`'s (:mod:`recsys._loop`), with its hooks
and result types (:class:`~recsys.train.TrainHooks`, :class:`~recsys.train.TrainResult`),
so a caller that checkpoints, resumes or replaces the loss of BPR training does
the same here: Adam on the model's parameters, the train rows in a fresh
shuffled order each epoch, validation AUC every ``eval_every`` epochs, the best
state kept and restored, early stopping after ``patience`` evaluations without
improvement. Settings follow [LERSBench] (batch 2,048, section 5.2.4; 15 epochs
per trial, AUC as the target, section 5.2.1; learning rate 1e-3 as in its code).

Each epoch's order is drawn from a generator seeded with ``(seed, epoch)``, so
a run resumed after epoch ``e`` sees exactly the batches it would have seen,
with no generator state to save beyond torch's (dropout).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from recsys._loop import Fit, OptimizerFactory, TrainHooks, TrainResult, check_loop_options, device_of, fit
from recsys.data import SPLITS, CTRData
from recsys.data.ctr import shared_tensor
from recsys.metrics import ctr_metrics
from recsys.models import CTRBackbone

__all__ = ["CTR_METRICS", "CTRStepLoss", "CTRTrainConfig", "evaluate_ctr", "evaluate_ctr_many", "predict_logits", "train_ctr"]

#: ``loss(model, x, y, reg) -> scalar``: the loss of one batch (default ``model.ctr_loss``); set as ``TrainHooks.loss``.
CTRStepLoss = Callable[[CTRBackbone, torch.Tensor, torch.Tensor, float], torch.Tensor]

CTR_METRICS = ("auc", "logloss")
"""Validation metrics that can select the best state: AUC (higher is better) or log loss (lower is better)."""


@dataclass(frozen=True)
class CTRTrainConfig:
    """How to train a click model.

    Attributes:
        epochs: most passes over the train rows ([LERSBench]: 15 per trial).
        batch_size: rows per optimiser step ([LERSBench]: 2,048).
        lr: Adam learning rate ([LERSBench] searches [1e-5, 1e-2]; its code uses 1e-3).
        reg: L2 weight on the looked-up vectors, per example (see
            :meth:`~recsys.models.CTRBackbone.ctr_loss`; [LERSBench] searches λ in [1e-5, 1e-2]).
        eval_every: epochs between validation evaluations.
        patience: evaluations without improvement of ``metric`` before stopping.
        metric: ``"auc"`` or ``"logloss"``, on the validation split.
        seed: seeds torch (dropout) and the per-epoch shuffles.
        threads: torch intra-op threads during training; ``None`` leaves the setting.
        eval_batch_size: rows scored at a time when evaluating.
        lr_decay: multiplies ``lr`` at every validation that does not improve on the best,
            once one has improved on an earlier one (1: constant); see :func:`recsys._loop.fit`.
    """

    epochs: int = 15
    batch_size: int = 2048
    lr: float = 1e-3
    reg: float = 1e-5
    eval_every: int = 1
    patience: int = 2
    metric: str = "auc"
    seed: int = 0
    threads: int | None = None
    eval_batch_size: int = 16384
    lr_decay: float = 1.0

    def __post_init__(self) -> None:
        check_loop_options(self.epochs, self.batch_size, self.lr, self.reg, self.eval_every, self.patience, self.threads,
                           self.lr_decay)
        checks = [
            (self.metric in CTR_METRICS, f"metric must be one of {CTR_METRICS}, got {self.metric!r}"),
            (self.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {self.eval_batch_size}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def predict_logits(model: CTRBackbone, x: np.ndarray, *, batch_size: int = 16384) -> np.ndarray:
    """Logits of the id rows ``x`` ``(n, n_fields)``, in eval mode and without gradients.

    Returns:
        float32 ``(n,)``, or ``(A, n)`` when the model's provider serves ``A`` variants.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = device_of(model)
    ids = shared_tensor(np.ascontiguousarray(x, dtype=np.int64))  # no copy of a split already int64
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()  # type: ignore[attr-defined]
    try:
        parts = []
        with torch.no_grad():
            for start in range(0, ids.shape[0], batch_size):
                parts.append(model.logits(ids[start : start + batch_size].to(device)).float().cpu())
    finally:
        if was_training:
            model.train()  # type: ignore[attr-defined]
    if not parts:
        return np.zeros(0, dtype=np.float32)
    return torch.cat(parts, dim=-1).numpy()


def evaluate_ctr_many(model: CTRBackbone, data: CTRData, split: str = "test", *, batch_size: int = 16384) -> list[dict[str, float]]:
    """``{"auc", "logloss"}`` on ``split`` for each variant the model's provider serves (one for a plain model)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    logits = predict_logits(model, data.x[split], batch_size=batch_size)
    rows = logits.reshape(1, -1) if logits.ndim == 1 else logits
    return [ctr_metrics(data.y[split], row) for row in rows]


def evaluate_ctr(model: CTRBackbone, data: CTRData, split: str = "test", *, batch_size: int = 16384) -> dict[str, float]:
    """AUC and log loss of ``model`` on ``split`` (``"test"``, ``"valid"`` or ``"train"``).

    Scored in batches of ``batch_size`` rows under ``no_grad`` in eval mode (no
    dropout); the metrics are :func:`recsys.metrics.ctr_metrics` (scikit-learn's).

    Raises:
        ValueError: the provider serves several variants (use :func:`evaluate_ctr_many`).
    """
    results = evaluate_ctr_many(model, data, split, batch_size=batch_size)
    if len(results) != 1:
        raise ValueError(f"the model returns {len(results)} variants' logits; use evaluate_ctr_many")
    return results[0]


def train_ctr(
    model: CTRBackbone,
    data: CTRData,
    config: CTRTrainConfig,
    hooks: TrainHooks | None = None,
    *,
    progress: bool = True,
    optimizer_factory: OptimizerFactory | None = None,
) -> TrainResult:
    """Train ``model`` on ``data.x["train"]``, validating and early-stopping on ``data.x["valid"]``.

    Without usable validation rows (none, or one class only when the metric is
    AUC) the model trains for exactly ``config.epochs`` epochs and keeps its last
    state. Otherwise the state with the best ``config.metric`` is restored at the
    end.

    Args:
        model: the click model; its ``parameters()`` are optimised.
        data: the encoded rows.
        config: the hyper-parameters.
        hooks: as for :func:`recsys.train.train_bpr`, except that ``loss`` is
            called as ``loss(model, x, y, reg)`` (a :data:`CTRStepLoss`) with an
            int64 ``(b, n_fields)`` id batch and float32 labels ``(b,)``. The
            state handed to ``on_epoch_end`` (and taken by ``resume``) holds
            ``epoch``, ``stopped``, ``model``, ``optimizer``, ``torch_rng``,
            ``history``, ``best_value``, ``best_epoch``, ``best_valid``,
            ``best_state`` and ``since_best``: plain data and tensors only.
        progress: show a tqdm bar over epochs (loss and metric in the postfix).
        optimizer_factory: builds the optimiser from the parameters, replacing Adam(lr=config.lr).

    Returns:
        A :class:`~recsys.train.TrainResult` (``history[i]["valid"]`` holds
        ``{"auc", "logloss"}``); the model holds the best state.

    Raises:
        recsys.errors.TrainingDiverged: the loss or the weights became non-finite (a
            learning rate too high, say); nothing of that epoch reaches ``hooks.on_epoch_end``.
    """
    if data.size("train") == 0:
        raise ValueError("the data has no train rows")
    x_train, y_train = data.tensors("train")
    valid_y = data.y["valid"]
    validate = valid_y.size > 0 and (config.metric != "auc" or 0 < valid_y.sum() < valid_y.size)

    def batches(epoch: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.from_numpy(np.random.default_rng([config.seed, epoch]).permutation(x_train.shape[0]))
        for begin in range(0, len(order), config.batch_size):
            rows = order[begin : begin + config.batch_size]
            yield x_train[rows], y_train[rows]

    loop = Fit(
        batches=batches,
        loss=lambda m, x, y, reg: m.ctr_loss(x, y, reg),
        validate=(lambda: evaluate_ctr(model, data, "valid", batch_size=config.eval_batch_size)) if validate else None,
        metric=config.metric,
        higher_is_better=config.metric == "auc",
    )
    return fit(model, loop, epochs=config.epochs, lr=config.lr, reg=config.reg, eval_every=config.eval_every,  # type: ignore[arg-type]
               patience=config.patience, seed=config.seed, threads=config.threads, hooks=hooks, progress=progress,
               optimizer_factory=optimizer_factory, lr_decay=config.lr_decay)
