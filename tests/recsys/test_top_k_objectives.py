"""Top-k objectives on every backbone: the sampled softmax and BPR with hard negatives (definitions, stacked variants, learning)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from nas.core import Allocation
from nas.pipeline.embedding import MaskableEmbedding, stack_row_dims
from nas.pipeline.tasks import TopKTask, task_for, top_k_variants_loss
from recsys.data import synthetic
from recsys.embedding import PlainEmbedding
from recsys.models import MF, NGCF, LightGCN, NeuMF
from recsys.models._losses import hardest, sampled_softmax
from recsys.train import TrainConfig, evaluate, top_k_loss, train_bpr

ROWS = {"user": 30, "item": 40}
DIM = 8


@pytest.fixture(autouse=True)
def _one_thread(one_thread):  # noqa: ANN001 - the shared fixture of tests/conftest.py
    """Every test here runs on one thread."""


def _graph() -> sp.csr_matrix:
    matrix = sp.random(ROWS["user"], ROWS["item"], density=0.15, random_state=0, format="csr")
    matrix.data[:] = 1.0
    return matrix


def _model(name: str, embedding) -> torch.nn.Module:  # noqa: ANN001
    """Each top-k backbone in evaluation mode (no dropout), so two calls see the same function."""
    torch.manual_seed(0)
    build = {
        "mf": lambda: MF(embedding),
        "lightgcn": lambda: LightGCN(embedding, _graph(), layers=2),
        "ngcf": lambda: NGCF(embedding, _graph(), layers=2, seed=1),
        "neumf": lambda: NeuMF(embedding, seed=1),
    }
    model = build[name]().eval()
    if name == "neumf":  # let the tower weigh in (its output weight starts at zero)
        with torch.no_grad():
            model.output.weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(2))
    return model


BATCH = (torch.tensor([0, 5, 9, 9, 12, 3]), torch.tensor([1, 2, 3, 1, 7, 8]), torch.tensor([4, 2, 6, 0, 1, 39]))


def _reference(model, users, pos, negatives, temperature: float) -> torch.Tensor:  # noqa: ANN001
    """Row by row from ``model.score``: the positive against every shared negative of another id."""
    losses = []
    for user, positive in zip(users.tolist(), pos.tolist()):
        others = [c for c in negatives.tolist() if c != positive]
        items = torch.tensor([positive, *others])
        logits = model.score(torch.full_like(items, user), items) / temperature
        losses.append(torch.logsumexp(logits, 0) - logits[0])
    return torch.stack(losses).mean()


def test_sampled_softmax_leaves_out_candidates_with_the_positives_id():
    positive = torch.tensor([2.0, 0.5])
    scores = torch.tensor([[2.0, 9.0, 1.0], [0.5, 1.0, 0.0]])  # row 0's candidate 0 is its positive again
    pos, candidates = torch.tensor([7, 3]), torch.tensor([7, 3, 5])
    # Row 0: candidates 7 (itself) is left out; 3 and 5 stay. Row 1: 3 is itself; 7 and 5 stay.
    expected = ((torch.logsumexp(torch.tensor([2.0, 9.0, 1.0]), 0) - 2.0)
                + (torch.logsumexp(torch.tensor([0.5, 0.5, 0.0]), 0) - 0.5)) / 2
    torch.testing.assert_close(sampled_softmax(positive, scores, pos, candidates, 1.0), expected)
    # The temperature divides every score, the positive's too.
    torch.testing.assert_close(sampled_softmax(positive, scores, pos, candidates, 0.5),
                               sampled_softmax(2 * positive, 2 * scores, pos, candidates, 1.0))


@pytest.mark.parametrize("name", ["mf", "lightgcn", "ngcf", "neumf"])
def test_softmax_loss_is_the_definition_from_the_models_own_scores(name):
    model = _model(name, PlainEmbedding(ROWS, DIM, std=0.3, seed=3))
    users, pos, neg = BATCH
    for temperature in (1.0, 0.2):
        loss = model.softmax_loss(users, pos, neg, 0.0, temperature)
        torch.testing.assert_close(loss, _reference(model, users, pos, neg, temperature))
    # The L2 term is BPR's: the same vectors, the same per-triple weight.
    l2 = model.bpr_loss(users, pos, neg, 0.01) - model.bpr_loss(users, pos, neg, 0.0)
    torch.testing.assert_close(model.softmax_loss(users, pos, neg, 0.01, 0.2) - model.softmax_loss(users, pos, neg, 0.0, 0.2), l2)


def test_neumf_scores_a_capped_share_of_the_negatives():
    model = _model("neumf", PlainEmbedding(ROWS, DIM, std=0.3, seed=3))
    model.softmax_candidates = 4
    users, pos, neg = BATCH
    torch.testing.assert_close(model.softmax_loss(users, pos, neg, 0.0, 0.5), _reference(model, users, pos, neg[:4], 0.5))


def test_the_trainers_softmax_takes_the_first_negatives_of_the_batch():
    model = _model("mf", PlainEmbedding(ROWS, DIM, std=0.3, seed=3))
    users, pos, neg = BATCH
    torch.testing.assert_close(top_k_loss("softmax", 0.5, negatives=3)(model, users, pos, neg, 0.0),
                               _reference(model, users, pos, neg[:3], 0.5))


@pytest.mark.parametrize("name", ["mf", "lightgcn", "neumf"])
def test_the_softmax_sandwich_is_the_mean_of_its_variants_losses(name):
    """One stacked step equals each allocation's loss alone, averaged (MF leaves its BPR prefix sums aside)."""
    embedding = MaskableEmbedding(ROWS, DIM, std=0.3, seed=3)
    model = _model(name, embedding)
    rng = np.random.default_rng(1)
    allocations = [Allocation({t: rng.integers(0, DIM + 1, n) for t, n in ROWS.items()}) for _ in range(3)]
    step = top_k_loss("softmax", 0.3)
    singles = []
    for allocation in allocations:
        embedding.set_allocation(allocation)
        singles.append(step(model, *BATCH, 0.01))
    embedding.set_allocation(None)
    stacked = top_k_variants_loss(model, stack_row_dims(allocations), BATCH, 0.01, step)
    torch.testing.assert_close(stacked, torch.stack(singles).mean())


def test_the_task_trains_every_batch_with_the_runs_objective():
    data = synthetic(n_users=30, n_items=40, mean_items_per_user=4.0, seed=0)
    model = _model("mf", PlainEmbedding(ROWS, DIM, std=0.3, seed=3))
    config = TrainConfig(epochs=1, batch_size=8, lr=0.01, reg=0.0, loss="softmax", temperature=0.5, negatives=8)
    task = task_for(data, config)
    assert isinstance(task, TopKTask) and task.loss == "softmax"
    torch.testing.assert_close(task.batch_loss(model, BATCH, 0.0), model.softmax_loss(*BATCH, 0.0, 0.5))
    torch.testing.assert_close(task_for(data).batch_loss(model, BATCH, 0.0), model.bpr_loss(*BATCH, 0.0))


def test_a_backbone_without_softmax_loss_is_told_to_train_with_bpr():
    class BprOnly:
        def bpr_loss(self, users, pos, neg, reg):  # noqa: ANN001, ANN201
            return torch.zeros(())

    with pytest.raises(TypeError, match="no softmax_loss.*loss='bpr'"):
        top_k_loss("softmax")(BprOnly(), *BATCH, 0.0)


@pytest.mark.parametrize(("changes", "match"), [({"loss": "hinge"}, "loss must be one of"),
                                                 ({"loss": "softmax", "temperature": 0.0}, "temperature must be > 0"),
                                                 ({"loss": "softmax", "negatives": 0}, "negatives must be at least 1"),
                                                 ({"loss": "softmax", "negatives": 9}, "at most batch_size")])
def test_bad_objectives_are_refused(changes, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(epochs=1, batch_size=8, lr=0.01, reg=0.0, **changes)


@pytest.mark.parametrize("name", ["mf", "lightgcn"])
def test_softmax_training_learns_far_above_random(name):
    data = synthetic(n_users=300, n_items=200, mean_items_per_user=12.0, seed=1)
    embedding = PlainEmbedding({"user": data.n_users, "item": data.n_items}, 16, std=0.1, seed=0)
    model = MF(embedding) if name == "mf" else LightGCN(embedding, data.train, layers=2)
    before = evaluate(model, data, "test")
    config = TrainConfig(epochs=30, batch_size=256, lr=0.01, reg=1e-4, eval_every=5, patience=100, seed=0,
                         loss="softmax", temperature=1.0, negatives=128)
    result = train_bpr(model, data, config, progress=False)
    after = evaluate(model, data, "test")
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert after["ndcg@20"] > 5 * before["ndcg@20"]  # about 8x (MF) and 9x (LightGCN)


USERS, POS = torch.tensor([0, 5, 9, 9, 12, 3]), torch.tensor([1, 2, 3, 1, 7, 8])
CANDIDATES = torch.tensor([[4, 2, 6, 30], [0, 1, 39, 17], [5, 5, 11, 20], [22, 23, 24, 25], [9, 8, 7, 6], [33, 0, 13, 2]])


def test_hardest_is_each_rows_argmax_and_the_variants_mean_decides():
    candidates = torch.tensor([[10, 11, 12], [20, 21, 22]])
    scores = torch.tensor([[0.1, 0.9, 0.3], [2.0, -1.0, 1.5]], requires_grad=True)
    chosen = hardest(scores, candidates)
    assert chosen.tolist() == [11, 20] and not chosen.requires_grad
    # Two stacked variants disagree on row 0; their mean prefers candidate 2 (0.6 against 0.5).
    stacked = torch.stack([torch.tensor([[0.0, 1.0, 0.2], [0.0, 0.0, 1.0]]), torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])])
    assert hardest(stacked, candidates).tolist() == [12, 22]


@pytest.mark.parametrize("name", ["mf", "lightgcn", "ngcf", "neumf"])
def test_bpr_with_candidates_is_bpr_on_the_candidate_the_model_scores_highest(name):
    """The definition, from the model's own scores row by row, and the same gradient as that negative drawn."""
    model = _model(name, PlainEmbedding(ROWS, DIM, std=0.3, seed=3))
    chosen = torch.tensor([int(c[model.score(torch.full_like(c, int(u)), c).argmax()]) for u, c in zip(USERS, CANDIDATES)])
    assert len(set(chosen.tolist())) > 1
    model.zero_grad()
    with_candidates = model.bpr_loss(USERS, POS, CANDIDATES, 0.01)
    with_candidates.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    drawn = model.bpr_loss(USERS, POS, chosen, 0.01)
    drawn.backward()
    torch.testing.assert_close(with_candidates, drawn)
    for got, expected in zip(grads, (p.grad for p in model.parameters())):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("name", ["mf", "lightgcn"])
def test_a_sandwich_step_shares_the_negative_its_variants_score_highest_on_average(name):
    embedding = MaskableEmbedding(ROWS, DIM, std=0.3, seed=3)
    model = _model(name, embedding)
    rng = np.random.default_rng(1)
    allocations = [Allocation({t: rng.integers(1, DIM + 1, n) for t, n in ROWS.items()}) for _ in range(3)]
    scores = []
    for allocation in allocations:
        embedding.set_allocation(allocation)
        scores.append(torch.stack([model.score(torch.full_like(c, int(u)), c) for u, c in zip(USERS, CANDIDATES)]))
    embedding.set_allocation(None)
    chosen = CANDIDATES.gather(1, torch.stack(scores).mean(0).argmax(1, keepdim=True)).squeeze(1)
    task = TopKTask(synthetic(n_users=30, n_items=40, mean_items_per_user=4.0, seed=0), hard_negatives=4)
    assert not task.plain_bpr  # MF's prefix sums take one uniform negative; candidates go through bpr_loss
    stacked = task.variants_loss(model, stack_row_dims(allocations), (USERS, POS, CANDIDATES), 0.01)
    torch.testing.assert_close(stacked, top_k_variants_loss(model, stack_row_dims(allocations), (USERS, POS, chosen), 0.01))
