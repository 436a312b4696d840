"""Hard negatives (``hard_negatives``): the sampler's candidates, training with them, and the options' checks.

The choice itself on every backbone is tested with the other objectives (test_top_k_objectives.py), the
command-line option with the other training options (tests/nas/test_objectives.py).
"""

from __future__ import annotations


import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nas.pipeline.tasks import TopKTask, task_for
from recsys.data import BPRSampler, pairs_to_csr, synthetic
from recsys.embedding import PlainEmbedding
from recsys.models import MF, LightGCN
from recsys.train import TrainConfig, evaluate, train_bpr


@pytest.fixture(autouse=True)
def _one_thread(one_thread):  # noqa: ANN001 - the shared fixture of tests/conftest.py
    """Every test here runs on one thread."""


@st.composite
def _train_matrices(draw: st.DrawFn) -> sp.csr_matrix:
    n_users, n_items = draw(st.integers(1, 8)), draw(st.integers(2, 12))
    dense = np.array(draw(st.lists(st.booleans(), min_size=n_users * n_items, max_size=n_users * n_items)))
    dense = dense.reshape(n_users, n_items)
    dense[dense.all(axis=1), 0] = False  # a user with every item has no negative
    u, i = np.nonzero(dense)
    return pairs_to_csr(u, i, (n_users, n_items))


@settings(max_examples=60, deadline=None)
@given(_train_matrices(), st.sampled_from(["pair", "user"]), st.integers(2, 6), st.integers(1, 5), st.integers(0, 2**16))
def test_candidates_are_unobserved_items_of_their_triples_user(train, by, candidates, batch_size, seed):
    sampler = BPRSampler(train, seed=seed, by=by, candidates=candidates)
    n_items = train.shape[1]
    train_keys = set((np.repeat(np.arange(train.shape[0]), np.diff(train.indptr)) * n_items + train.indices).tolist())
    for users, pos, neg in sampler.epoch(batch_size):
        assert neg.shape == (len(users), candidates) and neg.dtype == torch.int64
        assert all(int(u) * n_items + int(p) in train_keys for u, p in zip(users, pos))
        keys = users.unsqueeze(1) * n_items + neg
        assert not any(int(k) in train_keys for k in keys.reshape(-1))


@pytest.mark.parametrize("by", ["pair", "user"])
def test_one_candidate_is_the_uniform_stream_and_candidates_resume_exactly(by):
    train = synthetic(n_users=40, n_items=60, mean_items_per_user=5.0, seed=0).train

    def two_epochs(sampler: BPRSampler) -> list[tuple[torch.Tensor, ...]]:
        return [b for _ in range(2) for b in sampler.epoch(16)]

    plain, one = two_epochs(BPRSampler(train, seed=3, by=by)), two_epochs(BPRSampler(train, seed=3, by=by, candidates=1))
    assert all(torch.equal(x, y) for a, b in zip(plain, one) for x, y in zip(a, b))
    whole = two_epochs(BPRSampler(train, seed=3, by=by, candidates=5))
    interrupted = BPRSampler(train, seed=3, by=by, candidates=5)
    head = list(zip(range(3), interrupted.epoch(16)))
    resumed = BPRSampler(train, seed=3, by=by, candidates=5)
    resumed.load_state_dict(interrupted.state_dict())
    rest = two_epochs(resumed)
    assert len(head) + len(rest) == len(whole)
    assert all(torch.equal(x, y) for a, b in zip([b for _, b in head] + rest, whole) for x, y in zip(a, b))


@pytest.mark.parametrize("bad", [0, -2, 1.5, True])
def test_bad_candidate_counts_are_refused(bad):
    train = synthetic(n_users=10, n_items=20, mean_items_per_user=3.0, seed=0).train
    with pytest.raises(ValueError, match="candidates must be an integer >= 1"):
        BPRSampler(train, candidates=bad)
    with pytest.raises(ValueError, match="hard_negatives must be an integer >= 1"):
        TrainConfig(epochs=1, batch_size=8, lr=0.01, reg=0.0, hard_negatives=bad)


def test_hard_negatives_choose_bprs_negative_only():
    with pytest.raises(ValueError, match="hard_negatives chooses BPR's negative.*loss='bpr'"):
        TrainConfig(epochs=1, batch_size=8, lr=0.01, reg=0.0, loss="softmax", negatives=8, hard_negatives=4)


def test_the_fine_tunes_batches_carry_the_candidates():
    data = synthetic(n_users=30, n_items=40, mean_items_per_user=4.0, seed=0)
    task = task_for(data, TrainConfig(epochs=1, batch_size=8, lr=0.01, reg=0.0, hard_negatives=3))
    assert isinstance(task, TopKTask) and task.hard_negatives == 3
    users, _, neg = next(iter(task.finetune_batches(8, seed=0, epochs=1, steps=0)))
    assert neg.shape == (len(users), 3)


@pytest.mark.parametrize("name", ["mf", "lightgcn"])
def test_training_with_hard_negatives_learns_and_a_seed_fixes_it(name):
    data = synthetic(n_users=300, n_items=200, mean_items_per_user=12.0, seed=1)

    def trained() -> tuple[float, float, float]:
        embedding = PlainEmbedding({"user": data.n_users, "item": data.n_items}, 16, std=0.1, seed=0)
        model = MF(embedding) if name == "mf" else LightGCN(embedding, data.train, layers=2)
        before = evaluate(model, data, "test")["ndcg@20"]
        config = TrainConfig(epochs=15, batch_size=256, lr=0.01, reg=1e-4, eval_every=5, patience=100, seed=0,
                             hard_negatives=8)
        result = train_bpr(model, data, config, progress=False)
        return before, evaluate(model, data, "test")["ndcg@20"], result.history[-1]["loss"]

    first, second = trained(), trained()
    assert first == second
    before, after, _ = first
    assert after > 5 * before
