"""MF and the BPR trainer on a small planted dataset (seconds, CPU)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.sparse import csr_matrix
from torch import nn

from recsys.data import InteractionData
from recsys.embedding import EmbeddingProvider, PlainEmbedding
from recsys.models import MF, Backbone
from recsys.train import TrainConfig, TrainResult, evaluate, train_bpr

N_USERS, N_ITEMS, CLUSTERS = 80, 40, 4


def _planted(seed: int = 0, *, valid: str = "cluster") -> InteractionData:
    """Users of cluster c like items of cluster c (10 each): 5 train, 1 valid, 2 test of them.

    ``valid="anti"`` puts the validation item in another cluster, so learning the
    clusters makes validation worse (drives early stopping); ``"none"`` leaves it empty.
    """
    rng = np.random.default_rng(seed)
    per = N_ITEMS // CLUSTERS
    splits: dict[str, list[tuple[int, int]]] = {"train": [], "valid": [], "test": []}
    for u in range(N_USERS):
        c = u % CLUSTERS
        items = c * per + rng.permutation(per)
        splits["train"] += [(u, int(i)) for i in items[:5]]
        splits["test"] += [(u, int(i)) for i in items[5:7]]
        if valid == "cluster":
            splits["valid"].append((u, int(items[7])))
        elif valid == "anti":
            splits["valid"].append((u, int(((c + 1) % CLUSTERS) * per + rng.integers(per))))

    def csr(pairs: list[tuple[int, int]]) -> csr_matrix:
        if not pairs:
            return csr_matrix((N_USERS, N_ITEMS), dtype=np.float32)
        u, i = np.array(pairs).T
        return csr_matrix((np.ones(len(u), np.float32), (u, i)), shape=(N_USERS, N_ITEMS))

    return InteractionData("planted", N_USERS, N_ITEMS, csr(splits["train"]), csr(splits["valid"]),
                           csr(splits["test"]), "keep")


def _model(seed: int = 0, dim: int = 16) -> MF:
    return MF(PlainEmbedding({"user": N_USERS, "item": N_ITEMS}, dim, std=0.1, seed=seed))


@pytest.fixture(autouse=True)
def _one_thread(one_thread):  # noqa: ANN001 - the shared fixture of tests/conftest.py
    """Every test here runs on one thread."""


CONFIG = TrainConfig(epochs=40, batch_size=64, lr=0.05, reg=1e-4, eval_every=5, patience=100, ks=(5, 10, 20), seed=3)


class TableProvider(nn.Module):
    """A provider that is not PlainEmbedding: one stacked parameter, tables as slices."""

    def __init__(self, rows: dict[str, int], dim: int) -> None:
        super().__init__()
        self.dim, self.rows = dim, dict(rows)
        self.offsets = {"user": 0, "item": rows["user"]}
        self.weight = nn.Parameter(torch.randn(sum(rows.values()), dim, generator=torch.Generator().manual_seed(1)) * 0.1)

    def lookup(self, table: str, ids: torch.Tensor) -> torch.Tensor:
        return self.weight[ids + self.offsets[table]]

    def table(self, table: str) -> torch.Tensor:
        return self.weight[self.offsets[table] : self.offsets[table] + self.rows[table]]


def test_mf_satisfies_backbone_and_scores_consistently():
    model = _model()
    assert isinstance(model, Backbone) and isinstance(model.embedding, EmbeddingProvider)
    users = torch.tensor([0, 3, 7])
    full = model.all_scores(users)
    assert full.shape == (3, N_ITEMS)
    items = torch.arange(N_ITEMS).expand(3, -1)
    torch.testing.assert_close(model.score(users[:, None].expand(-1, N_ITEMS), items), full)


def test_bpr_loss_follows_lightgcn_convention():
    model = _model()
    u, p, n = torch.tensor([0, 1, 2]), torch.tensor([4, 5, 6]), torch.tensor([7, 8, 9])
    eu, ep, en = (model.embedding.lookup(t, x) for t, x in (("user", u), ("item", p), ("item", n)))
    want = -nn.functional.logsigmoid((eu * ep).sum(1) - (eu * en).sum(1)).mean()
    want = want + 0.5 * 0.01 * (eu.pow(2).sum() + ep.pow(2).sum() + en.pow(2).sum()) / 3
    torch.testing.assert_close(model.bpr_loss(u, p, n, reg=0.01), want)


def test_mf_rejects_what_is_not_a_provider():
    with pytest.raises(TypeError, match="EmbeddingProvider"):
        MF(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="item"):
        MF(PlainEmbedding({"user": 3}, 4))


def test_mf_learns_planted_clusters_far_above_random():
    data = _planted()
    model = _model()
    before = evaluate(model, data, "test")
    result = train_bpr(model, data, CONFIG, progress=False)
    after = evaluate(model, data, "test")
    # Random ranking puts ~5/33 of the truth in the top 5; the clusters make it ~1.
    assert before["recall@5"] < 0.35
    assert after["recall@5"] > 0.9 and after["ndcg@5"] > 0.6 > 2 * before["ndcg@5"]
    assert isinstance(result, TrainResult) and result.epochs_run == CONFIG.epochs
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_early_stopping_restores_best_state():
    data = _planted(valid="anti")
    config = TrainConfig(epochs=60, batch_size=64, lr=0.05, reg=1e-4, eval_every=1, patience=3, seed=1)
    model = _model()
    result = train_bpr(model, data, config, progress=False)
    assert result.epochs_run < config.epochs  # stopped early
    assert result.best_epoch <= result.epochs_run - config.patience
    assert evaluate(model, data, "valid") == result.best_valid
    # The restored weights are those after exactly best_epoch epochs.
    replay = _model()
    train_bpr(replay, data, TrainConfig(**{**config.__dict__, "epochs": result.best_epoch}), progress=False)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, replay.state_dict()[key], rtol=0, atol=0)


def test_without_validation_trains_fixed_epochs():
    data = _planted(valid="none")
    config = TrainConfig(epochs=7, batch_size=64, lr=0.05, reg=1e-4, patience=1)
    result = train_bpr(_model(), data, config, progress=False)
    assert result.epochs_run == 7 and result.best_epoch == 7 and result.best_valid == {}
    assert all("valid" not in record for record in result.history)


def test_same_seed_same_history_and_metrics():
    data = _planted()
    config = TrainConfig(epochs=6, batch_size=32, lr=0.02, reg=1e-4, eval_every=2, seed=5)
    runs = []
    for _ in range(2):
        model = _model(seed=2)
        result = train_bpr(model, data, config, progress=False)
        runs.append(([(r["loss"], r.get("valid")) for r in result.history], evaluate(model, data, "test")))
    assert runs[0] == runs[1]


def test_any_embedding_provider_trains():
    data = _planted()
    model = MF(TableProvider({"user": N_USERS, "item": N_ITEMS}, 16))
    train_bpr(model, data, CONFIG, progress=True)
    assert evaluate(model, data, "test")["recall@5"] > 0.9


def test_eval_users_subset_and_test_excludes_valid():
    data = _planted()
    config = TrainConfig(epochs=2, batch_size=64, lr=0.05, reg=0.0, eval_users=10)
    result = train_bpr(_model(), data, config, progress=False)
    assert all(r["valid"]["users"] == 10 for r in result.history)
    # A scorer that ranks exactly the validation items first gets no credit on test.
    valid_dense = torch.from_numpy(data.valid.toarray())
    cheat = type("Cheat", (), {"all_scores": staticmethod(lambda u: valid_dense[u].clone())})()
    assert evaluate(cheat, data, "valid", ks=(1,))["recall@1"] == 1.0
    assert evaluate(cheat, data, "test", ks=(1,))["recall@1"] < 0.5


@pytest.mark.parametrize(
    "changes, match",
    [({"epochs": 0}, "epochs"), ({"lr": 0.0}, "lr"), ({"metric": "recall@50"}, "metric"),
     ({"metric": "auc@5"}, "metric"), ({"patience": 0}, "patience"), ({"eval_users": 0}, "eval_users")],
)
def test_config_validation(changes, match):
    base = {"epochs": 1, "batch_size": 8, "lr": 0.01, "reg": 0.0}
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{**base, **changes})


GOWALLA = "/work/shared/data/gowalla_lightgcn"


@pytest.mark.slow
def test_gowalla_mf_trains_an_epoch_and_evaluates_every_user():
    """Real data: one MF epoch and one full-ranking evaluation on Gowalla (opt-in: -m slow; its time is
    measured by benchmarks/bench_mf_epoch.py, never asserted)."""
    import os

    if not os.path.isdir(GOWALLA):
        pytest.skip(f"{GOWALLA} not present")
    from recsys.data import load_lightgcn

    data = load_lightgcn([f"{GOWALLA}/lightgcnpp_train.txt.gz", f"{GOWALLA}/lightgcnpp_valid.txt.gz"], None,
                         f"{GOWALLA}/test.txt.gz")
    model = MF(PlainEmbedding(data.rows(), 64, std=0.1, seed=0))
    config = TrainConfig(epochs=1, batch_size=2048, lr=1e-3, reg=1e-4, threads=2)
    result = train_bpr(model, data, config, progress=False)
    assert math.isfinite(result.history[0]["loss"]) and result.epochs_run == 1
    metrics = evaluate(model, data, "test")
    assert metrics["users"] == 29858 and 0.0 < metrics["recall@20"] < 0.2


def test_resuming_from_an_epoch_state_continues_exactly():
    """Stopping after epoch 3 and resuming from its state gives the uninterrupted run, bit for bit."""
    config = TrainConfig(epochs=8, batch_size=64, lr=0.05, reg=1e-4, eval_every=2, patience=100, seed=3)
    whole = _model()
    states: dict[int, dict] = {}
    from recsys.train import TrainHooks

    def keep(state: dict) -> None:
        import copy

        states[state["epoch"]] = copy.deepcopy(state)

    want = train_bpr(whole, _planted(), config, progress=False, hooks=TrainHooks(on_epoch_end=keep))
    assert sorted(states) == list(range(1, 9))
    resumed = _model(seed=99)  # other initial weights: the state must overwrite them all
    got = train_bpr(resumed, _planted(), config, progress=False, hooks=TrainHooks(resume=states[3]))
    assert got.best_epoch == want.best_epoch and got.best_valid == want.best_valid
    assert [h["loss"] for h in got.history] == [h["loss"] for h in want.history]
    for key, value in whole.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


def test_the_rate_decays_at_each_validation_without_improvement_and_a_resume_keeps_it():
    """``lr_decay`` multiplies the rate once per validation that does not beat the best, once one has beaten an earlier one."""
    config = TrainConfig(epochs=12, batch_size=64, lr=0.05, reg=1e-4, eval_every=2, patience=100, seed=3, lr_decay=0.5)
    states: dict[int, dict] = {}
    from recsys.train import TrainHooks

    def keep(state: dict) -> None:
        import copy

        states[state["epoch"]] = copy.deepcopy(state)

    want = train_bpr(_model(), _planted(valid="anti"), config, progress=False, hooks=TrainHooks(on_epoch_end=keep))
    expected, best, improved = 0.05, None, False
    for record in want.history:
        assert record["lr"] == pytest.approx(expected), record["epoch"]  # the rate this epoch trained at
        if "valid" in record:
            if best is None or record["valid"]["recall@20"] > best:
                improved, best = best is not None, record["valid"]["recall@20"]
            elif improved:
                expected *= 0.5
    assert expected < 0.05, "the anti-correlated validation must stop improving at least once"
    got = train_bpr(_model(seed=99), _planted(valid="anti"), config, progress=False, hooks=TrainHooks(resume=states[7]))
    assert [h["lr"] for h in got.history] == [h["lr"] for h in want.history]
    assert [h["loss"] for h in got.history] == [h["loss"] for h in want.history]


def test_validations_before_the_model_settles_are_recorded_but_never_chosen_nor_counted():
    """A ``settled`` hook that is False for the first epochs: the best and the patience start after them."""
    from recsys.train import TrainHooks

    config = TrainConfig(epochs=60, batch_size=64, lr=0.05, reg=1e-4, eval_every=1, patience=3, seed=1, lr_decay=0.5)
    plain = train_bpr(_model(), _planted(valid="anti"), config, progress=False)
    assert plain.best_epoch < 10, "the anti-correlated validation peaks early"
    epoch = {"now": 0}

    def count(now: int) -> None:
        epoch["now"] = now

    late = plain.best_epoch + 10
    result = train_bpr(_model(), _planted(valid="anti"), config, progress=False,
                       hooks=TrainHooks(on_epoch_start=count, settled=lambda: epoch["now"] >= late))
    assert result.best_epoch >= late and result.epochs_run >= late + config.patience
    assert all("valid" in record for record in result.history[:late])  # recorded all the same
    assert [r["lr"] for r in result.history[:late]] == [0.05] * late  # no decay before it settles
    assert result.epochs_run < config.epochs  # and early stopping works after it


def test_the_rate_does_not_decay_before_a_validation_beats_the_first():
    """A validation series that dips after the first: no decay until one beats it, then one per miss."""
    from recsys._loop import Fit, fit

    series = iter([0.5, 0.4, 0.3, 0.6, 0.55, 0.7, 0.65, 0.64])
    data = torch.zeros(4, 1)
    model = torch.nn.Linear(1, 1)
    loop = Fit(batches=lambda epoch: [(data,)], loss=lambda m, x, reg: m(x).pow(2).mean(),
               validate=lambda: {"m": next(series)}, metric="m")
    result = fit(model, loop, epochs=8, lr=1.0, reg=0.0, eval_every=1, patience=100, seed=0, threads=None,
                 hooks=None, progress=False, optimizer_factory=None, lr_decay=0.5)
    # the rate each epoch trained at: constant through the dip below the first validation (0.4, 0.3),
    # halved after each miss once 0.6 beat it (0.55, 0.65, 0.64)
    assert [r["lr"] for r in result.history] == [1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.25]


@pytest.mark.parametrize("decay", [0.0, -0.5, 1.5, float("nan")])
def test_a_decay_outside_zero_to_one_is_refused(decay: float):
    with pytest.raises(ValueError, match="lr_decay"):
        TrainConfig(epochs=1, batch_size=8, lr=0.1, reg=0.0, lr_decay=decay)


def test_custom_step_loss_and_epoch_callback_are_used():
    seen: list[int] = []
    from recsys.train import TrainHooks

    def zero_loss(model, users, pos, neg, reg):  # noqa: ANN001, ANN202
        return model.bpr_loss(users, pos, neg, reg) * 0.0

    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = TrainConfig(epochs=3, batch_size=64, lr=0.05, reg=0.0, seed=3)
    train_bpr(model, _planted(valid="none"), config, progress=False, hooks=TrainHooks(loss=zero_loss, on_epoch_start=seen.append))
    assert seen == [1, 2, 3]
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), "a zero loss leaves the weights where they were"
