"""FM, DeepFM and DCN-v2 over one table per field; CTR training and evaluation (seconds, CPU)."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score
from torch import nn

from recsys.data import CTRData
from recsys.embedding import EmbeddingProvider, PlainEmbedding
from recsys.metrics import ctr_fitness, ctr_metrics
from recsys.models import FM, CTRBackbone, DCNv2, DeepFM
from recsys.train import TrainHooks
from recsys.train_ctr import (
    CTRTrainConfig,
    evaluate_ctr,
    evaluate_ctr_many,
    predict_logits,
    train_ctr,
)

ROWS = {"u": 7, "i": 5, "g": 3}
FIELDS = tuple(ROWS)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs on one thread."""


class PrefixProvider(nn.Module):
    """Plain tables served with per-row prefix sizes: one allocation, or ``A`` stacked variants.

    ``sizes[table]`` is ``(rows,)`` (one allocation) or ``(A, rows)`` (variants); a table
    absent from ``sizes`` is served in full and unstacked, as the maskable embedding does.
    """

    def __init__(self, plain: PlainEmbedding, sizes: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.plain, self.sizes = plain, dict(sizes)
        self.dim, self.rows = plain.dim, plain.rows

    def _keep(self, table: str, ids: torch.Tensor) -> torch.Tensor | None:
        if table not in self.sizes:
            return None
        return torch.arange(self.dim) < self.sizes[table][..., ids].unsqueeze(-1)

    def lookup(self, table: str, ids: torch.Tensor) -> torch.Tensor:
        vectors = self.plain.lookup(table, ids)
        keep = self._keep(table, ids)
        return vectors if keep is None else torch.where(keep, vectors, torch.zeros(()))

    def table(self, table: str) -> torch.Tensor:
        return self.lookup(table, torch.arange(self.rows[table]))


def _plain(dim: int = 6, seed: int = 0) -> PlainEmbedding:
    return PlainEmbedding(ROWS, dim, std=0.3, seed=seed)


def _batch(n: int = 9, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, r, (n,), generator=g) for r in ROWS.values()], dim=1)


def _models(embedding: EmbeddingProvider) -> list[nn.Module]:
    torch.manual_seed(0)
    return [
        FM(embedding, FIELDS),
        DeepFM(embedding, FIELDS, hidden=(8, 4), dropout=0.3),
        DCNv2(embedding, FIELDS, cross_layers=2, hidden=(8,), dropout=0.3),
        DCNv2(embedding, FIELDS, cross_layers=1, hidden=(8,), structure="parallel", first_order=True),
    ]


def _same_weights(source: nn.Module, target: nn.Module) -> None:
    """Copy every non-embedding parameter of ``source`` into ``target`` (same architecture)."""
    wanted = {k: v for k, v in source.state_dict().items() if ".weights." not in k}
    target.load_state_dict(wanted, strict=False)


# ---- the models' arithmetic ------------------------------------------------------------------------------


def test_fm_second_order_is_the_pairwise_sum() -> None:
    embedding = _plain()
    model = FM(embedding, FIELDS)
    x = _batch()
    vectors = [embedding.lookup(name, x[:, k]) for k, name in enumerate(FIELDS)]
    pairwise = sum((vectors[a] * vectors[b]).sum(-1) for a in range(3) for b in range(a + 1, 3))
    assert torch.allclose(model.logits(x), pairwise, atol=1e-6)  # first-order term starts at zero
    with torch.no_grad():
        model.linear.copy_(torch.arange(sum(ROWS.values()), dtype=torch.float32))
        model.bias.fill_(0.5)
    offsets = torch.tensor([0, 7, 12])
    first = (x + offsets).sum(-1).float() + 0.5
    assert torch.allclose(model.logits(x), first + pairwise, atol=1e-5)
    assert model.forward(x).shape == (9,)


@pytest.mark.parametrize("index", range(4))
def test_forward_shapes_and_stacked_variants(index: int) -> None:
    plain = _plain()
    model = _models(plain)[index].eval()
    x = _batch()
    assert model.logits(x).shape == (9,)
    sizes = {"u": torch.tensor([[6] * 7, [2] * 7, [0, 1, 2, 3, 4, 5, 6]]), "i": torch.tensor([[6] * 5, [3] * 5, [1] * 5])}
    stacked_model = _models(PrefixProvider(plain, sizes))[index].eval()  # "g" stays full and unstacked
    _same_weights(model, stacked_model)
    stacked = stacked_model.logits(x)
    assert stacked.shape == (3, 9)
    for a in range(3):  # each variant equals the model over that one allocation
        single = _models(PrefixProvider(plain, {k: v[a] for k, v in sizes.items()}))[index].eval()
        _same_weights(model, single)
        assert torch.allclose(stacked[a], single.logits(x), atol=1e-5)
    assert torch.allclose(stacked[0], model.logits(x), atol=1e-5)  # size 6 = the full width
    loss = stacked_model.ctr_loss(x, torch.ones(9), reg=0.0)
    assert loss.shape == () and torch.isfinite(loss)


@pytest.mark.parametrize("index", range(4))
def test_masked_rows_behave_as_zeroed_vectors(index: int) -> None:
    plain, zeroed = _plain(), _plain()
    k = {"u": torch.tensor([6, 0, 3, 1, 6, 2, 4]), "i": torch.tensor([1, 1, 0, 6, 2]), "g": torch.tensor([3, 0, 6])}
    with torch.no_grad():
        for name, dims in k.items():
            zeroed.weights[name][torch.arange(6) >= dims.unsqueeze(-1)] = 0.0
    masked_model = _models(PrefixProvider(plain, k))[index].eval()
    zeroed_model = _models(zeroed)[index].eval()
    _same_weights(masked_model, zeroed_model)
    x = _batch(40, seed=1)
    assert torch.allclose(masked_model.logits(x), zeroed_model.logits(x), atol=1e-6)


def test_ctr_loss_is_bce_plus_l2_per_example() -> None:
    embedding = _plain()
    model = DeepFM(embedding, FIELDS, hidden=(4,))
    x, y = _batch(), torch.tensor([1, 0, 1, 1, 0, 0, 1, 0, 1.0])
    logits = model.logits(x)
    vectors = torch.stack([embedding.lookup(n, x[:, k]) for k, n in enumerate(FIELDS)], 1)
    bce = nn.functional.binary_cross_entropy_with_logits(logits, y)
    assert torch.allclose(model.ctr_loss(x, y, 0.0), bce)
    assert torch.allclose(model.ctr_loss(x, y, 0.1), bce + 0.1 * 0.5 * vectors.square().sum() / 9)


def test_models_check_their_inputs() -> None:
    plain = _plain()
    assert all(isinstance(m, CTRBackbone) for m in _models(plain))
    with pytest.raises(ValueError, match=r"lacks \['z'\]"):
        FM(plain, ("u", "z"))
    with pytest.raises(TypeError, match="EmbeddingProvider"):
        FM(object(), FIELDS)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="structure"):
        DCNv2(plain, FIELDS, structure="mixed")
    with pytest.raises(ValueError, match=r"shape \(batch, 3\)"):
        FM(plain, FIELDS).logits(torch.zeros(4, 2, dtype=torch.int64))
    default = DCNv2(PlainEmbedding(ROWS, 16), FIELDS)
    assert len(default.cross) == 3 and default.cross[0].weight.shape == (48, 48)
    assert [m.out_features for m in default.deep if isinstance(m, nn.Linear)] == [512, 512]
    assert [m.out_features for m in DeepFM(plain, FIELDS).deep if isinstance(m, nn.Linear)] == [400, 400, 400]


# ---- metrics and evaluation ------------------------------------------------------------------------------


def test_ctr_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    y, z = rng.integers(0, 2, 300), rng.normal(size=300)
    metrics = ctr_metrics(y, z)
    assert metrics["auc"] == pytest.approx(roc_auc_score(y, z))
    assert metrics["logloss"] == pytest.approx(log_loss(y, 1 / (1 + np.exp(-z))))
    assert ctr_fitness(metrics) == metrics["auc"]
    assert np.isnan(ctr_metrics(np.ones(4), z[:4])["auc"])
    with pytest.raises(KeyError):
        ctr_fitness({"logloss": 0.5})


# ---- training on a planted interaction -------------------------------------------------------------------


def _interaction_data(n: int = 6000, seed: int = 0) -> CTRData:
    """Clicks depend only on the *pair* of fields a and b: p = σ(3 · s_a · s_b), s = ±1 per value.

    No single field carries signal (each value clicks half the time), so a model must
    learn the interaction; the best possible AUC is about 0.95. Field c is noise.
    """
    rng = np.random.default_rng(seed)
    cards = (12, 10, 5)
    x = np.stack([rng.integers(0, c - 1, n) for c in cards], axis=1)  # the last id (OOV) unused
    sign_a, sign_b = rng.choice([-1, 1], cards[0]), rng.choice([-1, 1], cards[1])
    p = 1 / (1 + np.exp(-3.0 * sign_a[x[:, 0]] * sign_b[x[:, 1]]))
    y = (rng.random(n) < p).astype(np.float32)
    cut = [int(n * 0.8), int(n * 0.9)]
    parts = np.split(np.arange(n), cut)
    return CTRData.from_arrays("planted", ("a", "b", "c"), cards, *[(x[p], y[p]) for p in parts])


@pytest.mark.parametrize("kind", ["fm", "deepfm", "dcnv2"])
def test_training_learns_a_field_interaction(kind: str) -> None:
    data = _interaction_data()
    embedding = PlainEmbedding(data.rows(), 8, std=0.1, seed=0)
    model = {
        "fm": lambda: FM(embedding, data.fields),
        "deepfm": lambda: DeepFM(embedding, data.fields, hidden=(32, 32)),
        "dcnv2": lambda: DCNv2(embedding, data.fields, cross_layers=2, hidden=(32, 32)),
    }[kind]()
    config = CTRTrainConfig(epochs=12, batch_size=256, lr=0.01, reg=1e-5, patience=3, seed=1)
    result = train_ctr(model, data, config, progress=False)
    test = evaluate_ctr(model, data, "test")
    assert test["auc"] >= 0.8, (kind, test, result.best_valid)
    assert result.best_valid["auc"] == max(r["valid"]["auc"] for r in result.history)
    assert evaluate_ctr(model, data, "valid")["auc"] == pytest.approx(result.best_valid["auc"])  # best state restored


def test_early_stopping_on_logloss_and_no_validation() -> None:
    data = _interaction_data(1500)
    model = FM(PlainEmbedding(data.rows(), 4, seed=0), data.fields)
    config = CTRTrainConfig(epochs=30, batch_size=64, lr=0.05, metric="logloss", patience=2, seed=0)
    result = train_ctr(model, data, config, progress=False)
    losses = [r["valid"]["logloss"] for r in result.history]
    assert result.best_valid["logloss"] == min(losses) and result.epochs_run <= 30
    if result.epochs_run < 30:
        assert result.epochs_run - result.best_epoch == 2
    empty = CTRData.from_arrays("nv", data.fields, data.cardinalities, (data.x["train"], data.y["train"]),
                                (data.x["valid"][:0], data.y["valid"][:0]), (data.x["test"], data.y["test"]))
    result = train_ctr(FM(PlainEmbedding(data.rows(), 4), data.fields), empty, CTRTrainConfig(epochs=3), progress=False)
    assert result.epochs_run == 3 == result.best_epoch and result.best_valid == {}
    with pytest.raises(ValueError, match="metric"):
        CTRTrainConfig(metric="recall@20")


def test_resume_gives_the_uninterrupted_result_and_hooks_are_called() -> None:
    data = _interaction_data(1500)
    config = CTRTrainConfig(epochs=6, batch_size=128, lr=0.01, patience=10, seed=2)

    def model() -> DeepFM:
        torch.manual_seed(0)
        return DeepFM(PlainEmbedding(data.rows(), 4, seed=0), data.fields, hidden=(8,), dropout=0.5)

    states: list[dict] = []
    whole = model()
    want = train_ctr(whole, data, config, TrainHooks(on_epoch_end=lambda s: states.append(copy.deepcopy(s))),
                     progress=False)
    resumed = model()
    got = train_ctr(resumed, data, config, TrainHooks(resume=states[2]), progress=False)
    assert got.best_epoch == want.best_epoch and got.best_valid == want.best_valid
    for key, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key

    seen: list[int] = []
    calls = {"loss": 0, "step": 0}

    def loss(m: CTRBackbone, x: torch.Tensor, y: torch.Tensor, reg: float) -> torch.Tensor:
        calls["loss"] += 1
        assert x.shape[1] == 3 and x.dtype == torch.int64 and y.dtype == torch.float32
        return m.ctr_loss(x, y, reg)

    hooks = TrainHooks(loss=loss, on_epoch_start=seen.append,  # type: ignore[arg-type]
                       after_step=lambda: calls.__setitem__("step", calls["step"] + 1))
    train_ctr(model(), data, CTRTrainConfig(epochs=2, batch_size=400), hooks, progress=False)
    assert seen == [1, 2] and calls == {"loss": 6, "step": 6}  # 1200 train rows: 3 batches an epoch


def test_evaluate_many_scores_each_variant() -> None:
    data = _interaction_data(600)
    plain = PlainEmbedding(data.rows(), 4, seed=0)
    sizes = {"a": torch.tensor([[4] * 12, [1] * 12]), "b": torch.tensor([[4] * 10, [0] * 10])}
    model = FM(PrefixProvider(plain, sizes), data.fields)
    many = evaluate_ctr_many(model, data, "test", batch_size=7)
    assert len(many) == 2 and many[0] == pytest.approx(evaluate_ctr(FM(plain, data.fields), data, "test"))
    assert predict_logits(model, data.x["test"], batch_size=5).shape == (2, data.size("test"))
    with pytest.raises(ValueError, match="evaluate_ctr_many"):
        evaluate_ctr(model, data)
