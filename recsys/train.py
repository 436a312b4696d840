"""Training of a top-k backbone (BPR or sampled softmax) with early stopping on validation, and evaluation.

The trainer is the same for every :class:`~recsys.models.Backbone`: Adam on the
model's parameters, (user, positive, negative) triples from
:class:`recsys.data.BPRSampler` scored by BPR or, with ``loss="softmax"``, by a
sampled softmax against negatives shared by the batch, full-ranking validation every ``eval_every``
epochs, the best state kept and restored at the end.  The loop itself
(:mod:`recsys._loop`) is shared with the click trainer.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from recsys._loop import Fit, OptimizerFactory, TrainHooks, TrainResult, check_loop_options, device_of, fit
from recsys.data import BPRSampler, InteractionData
from recsys.data.sampler import SAMPLING
from recsys.metrics import ranking_metrics
from recsys.models import Backbone

__all__ = ["INFO_NCE_TEMPERATURE", "LOSSES", "SOFTMAX_NEGATIVES", "SOFTMAX_TEMPERATURE", "OptimizerFactory", "StepLoss", "TrainConfig", "TrainHooks", "TrainResult", "device_of", "evaluate",
           "top_k_loss", "train_bpr", "user_subset"]

#: ``loss(model, users, pos, neg, reg) -> scalar``: the loss of one batch (default: the config's, :func:`top_k_loss`).
StepLoss = Callable[[Backbone, torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]

#: The objectives a top-k backbone trains with (see :mod:`recsys.models._losses`).
LOSSES = ("bpr", "softmax")
#: The softmax's defaults, chosen for compressed tables as well as full ones (the comparison
#: is in docs/results.md §11): a higher τ learns more slowly, and more negatives cost more
#: per step for a little more quality.
SOFTMAX_TEMPERATURE, SOFTMAX_NEGATIVES = 2.0, 256
#: The InfoNCE term's temperature unless given (paper 004's and SGL's 0.2).
INFO_NCE_TEMPERATURE = 0.2


def top_k_loss(
    loss: str = "bpr", temperature: float = SOFTMAX_TEMPERATURE, negatives: int = SOFTMAX_NEGATIVES,
    info_nce: float = 0.0, info_nce_temperature: float = INFO_NCE_TEMPERATURE,
) -> StepLoss:
    """The batch loss ``loss(model, users, pos, neg, reg)`` of an objective.

    ``"bpr"`` is ``model.bpr_loss``.  ``"softmax"`` is ``model.softmax_loss`` against the
    first ``negatives`` of the batch's sampled negatives (uniform unobserved items, in
    random order), shared by every row.  A positive ``info_nce`` adds that weight of the
    InfoNCE term at ``info_nce_temperature`` (:func:`recsys.models._losses.info_nce`), which
    graph backbones offer (their loss methods take ``contrast=(weight, temperature)``).

    Raises:
        ValueError: for an unknown objective, a temperature that is not a finite positive
            number, no negatives, or a negative or non-finite ``info_nce``.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    for name, value in (("temperature", temperature), ("info_nce_temperature", info_nce_temperature)):
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be > 0 and finite, got {value}")
    if negatives < 1:
        raise ValueError(f"negatives must be at least 1, got {negatives}")
    if not (info_nce >= 0 and math.isfinite(info_nce)):
        raise ValueError(f"info_nce must be a finite weight >= 0, got {info_nce}")
    extra = {"contrast": (info_nce, info_nce_temperature)} if info_nce else {}
    if loss == "bpr":
        def bpr(model: Backbone, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, reg: float) -> torch.Tensor:
            return _checked(model, "bpr_loss", extra)(users, pos, neg, reg, **extra)

        return bpr

    def softmax(model: Backbone, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, reg: float) -> torch.Tensor:
        method = getattr(model, "softmax_loss", None)
        if method is None:
            raise TypeError(f"{type(model).__name__} has no softmax_loss(users, pos, negatives, reg, temperature); "
                            "train it with loss='bpr'")
        return _checked(model, "softmax_loss", extra)(users, pos, neg[:negatives], reg, temperature, **extra)

    return softmax


def _checked(model: Backbone, name: str, extra: dict[str, object]) -> Callable[..., torch.Tensor]:
    """``model.<name>``, refused with what to change when it cannot take the InfoNCE term ``extra`` asks for."""
    method = getattr(model, name)
    if extra and "contrast" not in inspect.signature(method).parameters:
        raise TypeError(f"{type(model).__name__} has no InfoNCE term (graph backbones have one); train it with info_nce=0")
    return method


@dataclass(frozen=True)
class TrainConfig:
    """How to train a top-k backbone.

    Attributes:
        epochs: most passes over the training interactions (one triple per interaction).
        batch_size: triples per optimiser step.
        lr: Adam learning rate.
        reg: L2 weight on looked-up vectors, per triple (LightGCN's convention, ~1e-4).
        eval_every: epochs between validation evaluations.
        patience: evaluations without improvement of ``metric`` before stopping.
        metric: validation metric that selects the best state, e.g. ``"recall@20"``.
        ks: cut-offs computed at each evaluation; must include ``metric``'s.
        seed: seeds torch (initialisation-independent randomness) and the sampler.
        threads: torch intra-op threads during training; ``None`` leaves the setting.
        sampling: ``"pair"`` (each train pair once per epoch) or ``"user"`` (uniform
            users, as LightGCN samples); see :class:`recsys.data.BPRSampler`.
        eval_users: validate on a fixed random subset of this many validation
            users (chosen with ``seed``) to save time; ``None`` uses all.
        loss: ``"bpr"`` or ``"softmax"`` (each positive against shared uniform negatives, :data:`LOSSES`).
        temperature: the softmax's τ (ignored by BPR); the scores are divided by it.
        negatives: the softmax's negatives per batch, shared by its rows (at most ``batch_size``;
            the cost of a step grows with ``batch_size × negatives``).
        info_nce: weight of the InfoNCE term of graph backbones (0: none; paper 004 trains
            LightGCN with 0.1), see :func:`top_k_loss`.
        info_nce_temperature: that term's temperature.
        lr_decay: multiplies ``lr`` at every validation that does not improve on the best,
            once one has improved on an earlier one (1: constant); see :func:`recsys._loop.fit`.
        hard_negatives: BPR's negative is the one the model scores highest among this many
            uniform unobserved candidates per triple, drawn by the sampler (dynamic negative
            sampling, :func:`recsys.models._losses.hardest`); 1 is a uniform negative.
    """

    epochs: int
    batch_size: int
    lr: float
    reg: float
    eval_every: int = 1
    patience: int = 5
    metric: str = "recall@20"
    ks: tuple[int, ...] = (5, 10, 20)
    seed: int = 0
    threads: int | None = None
    eval_users: int | None = None
    sampling: str = "pair"
    loss: str = "bpr"
    temperature: float = SOFTMAX_TEMPERATURE
    negatives: int = SOFTMAX_NEGATIVES
    info_nce: float = 0.0
    info_nce_temperature: float = INFO_NCE_TEMPERATURE
    lr_decay: float = 1.0
    hard_negatives: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "ks", tuple(int(k) for k in self.ks))
        check_loop_options(self.epochs, self.batch_size, self.lr, self.reg, self.eval_every, self.patience, self.threads,
                           self.lr_decay)
        checks = [
            (len(self.ks) > 0 and min(self.ks) >= 1, f"ks must be positive cut-offs, got {self.ks}"),
            (self.sampling in SAMPLING, f"sampling must be one of {SAMPLING}, got {self.sampling!r}"),
            (self.eval_users is None or self.eval_users >= 1, f"eval_users must be >= 1 or None, got {self.eval_users}"),
            (isinstance(self.hard_negatives, int) and not isinstance(self.hard_negatives, bool) and self.hard_negatives >= 1,
             f"hard_negatives must be an integer >= 1, got {self.hard_negatives!r}"),
            (self.hard_negatives == 1 or self.loss == "bpr",
             f"hard_negatives chooses BPR's negative; the {self.loss} loss weighs its negatives by score already: "
             "use loss='bpr' or hard_negatives=1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        top_k_loss(self.loss, self.temperature, self.negatives, self.info_nce, self.info_nce_temperature)
        if self.loss == "softmax" and self.negatives > self.batch_size:
            raise ValueError(f"negatives ({self.negatives}) are drawn with the batch: at most batch_size ({self.batch_size})")
        name, _, k = self.metric.partition("@")
        if name not in ("recall", "ndcg") or not k.isdigit() or int(k) not in self.ks:
            raise ValueError(f"metric must be 'recall@k' or 'ndcg@k' with k in ks={self.ks}, got {self.metric!r}")


def evaluate(
    model: Backbone,
    data: InteractionData,
    split: str = "test",
    ks: Sequence[int] = (5, 10, 20),
    users: np.ndarray | None = None,
    *,
    chunk_size: int = 1024,
    progress: bool = False,
) -> dict[str, float]:
    """Full-ranking metrics of ``model`` on ``split`` (``"test"`` or ``"valid"``).

    Training interactions are excluded from the ranking, and for ``"test"`` the
    validation ones too (they are known by then). See
    :func:`recsys.metrics.ranking_metrics` for the definitions.
    """
    if split not in ("test", "valid"):
        raise ValueError(f"split must be 'test' or 'valid', got {split!r}")
    truth = data.test if split == "test" else data.valid
    exclude = [data.train]
    if split == "test" and data.valid.nnz:
        exclude.append(data.valid)
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        return ranking_metrics(
            _on_device_of(model), truth, exclude, ks, users=users, chunk_size=chunk_size, progress=progress
        )
    finally:
        if was_training:
            model.train()


def train_bpr(
    model: Backbone,
    data: InteractionData,
    config: TrainConfig,
    *,
    progress: bool = True,
    optimizer_factory: OptimizerFactory | None = None,
    hooks: TrainHooks | None = None,
) -> TrainResult:
    """Train ``model`` with BPR (or ``config.loss``), validating and early-stopping on ``data.valid``.

    Without validation interactions (``data.valid.nnz == 0``) the model trains
    for exactly ``config.epochs`` epochs and keeps its last state. Otherwise the
    state with the best ``config.metric`` is restored at the end, and training
    stops after ``config.patience`` evaluations without improvement.

    Speed on CPU: the default optimiser is Adam with ``fused=True`` (one kernel
    over all parameters, cheaper per step than the for-each variant on embedding
    tables); the loss is summed without a per-step ``.item()``.

    Args:
        model: the backbone; its ``parameters()`` are optimised.
        data: interactions with ``train``, ``valid`` and ``test`` matrices.
        config: the hyper-parameters.
        progress: show a tqdm bar over epochs (loss and metric in the postfix).
        optimizer_factory: builds the optimiser from the parameters, replacing
            Adam(lr=config.lr) (e.g. ``SparseAdam`` with a sparse-gradient provider).
        hooks: a custom loss, per-epoch callbacks and the state to resume from.

    Returns:
        A :class:`TrainResult`; the model holds the returned best state.

    Raises:
        recsys.errors.TrainingDiverged: the loss or the weights became non-finite (a
            learning rate too high, say); nothing of that epoch reaches ``hooks.on_epoch_end``.
    """
    sampler = BPRSampler(data.train, seed=config.seed, by=config.sampling, candidates=config.hard_negatives)
    eval_users = _eval_users(data, config) if data.valid.nnz else None
    loop = Fit(
        batches=lambda epoch: sampler.epoch(config.batch_size),
        loss=top_k_loss(config.loss, config.temperature, config.negatives, config.info_nce, config.info_nce_temperature),
        validate=(lambda: evaluate(model, data, "valid", config.ks, users=eval_users)) if data.valid.nnz else None,
        metric=config.metric,
        state=lambda: {"sampler": sampler.state_dict()},
        load_state=lambda state: sampler.load_state_dict(state["sampler"]),
    )
    return fit(model, loop, epochs=config.epochs, lr=config.lr, reg=config.reg, eval_every=config.eval_every,  # type: ignore[arg-type]
               patience=config.patience, seed=config.seed, threads=config.threads, hooks=hooks, progress=progress,
               optimizer_factory=optimizer_factory, lr_decay=config.lr_decay)


def _on_device_of(model: Backbone) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model.all_scores`` taking CPU user ids whatever device the model is on (scores stay there)."""
    device = device_of(model)
    if device.type == "cpu":
        return model.all_scores
    return lambda users: model.all_scores(users.to(device))


def _eval_users(data: InteractionData, config: TrainConfig) -> np.ndarray | None:
    """The validation users the trainer evaluates on (``None``: all)."""
    return user_subset(data.valid, config.eval_users, config.seed)


def user_subset(truth: sp.csr_matrix, size: int | None, seed: int) -> np.ndarray | None:
    """A fixed, seeded subset of ``size`` users among those with a ``truth`` item; ``None`` means all.

    Evaluating on a fixed subset keeps comparisons fair (every model sees the same users)
    while costing a fraction of a full-ranking pass.
    """
    if size is None or size <= 0:
        return None
    candidates = np.flatnonzero(np.diff(truth.indptr) > 0)
    if size >= len(candidates):
        return None
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(candidates, size=size, replace=False))
