"""The loaders and the sampler on the real datasets in ../shared/data (skipped when absent).

Counts are those of ../shared/data/MANIFEST.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.data import BPRSampler, InteractionData, load_interactions_csv, load_lightgcn
from recsys.errors import DataError


@pytest.fixture(scope="module")
def gowalla(shared_data: Path) -> InteractionData:
    """Gowalla with the original LightGCN split: train = lightgcnpp_train + lightgcnpp_valid."""
    folder = shared_data / "gowalla_lightgcn"
    return load_lightgcn([folder / "lightgcnpp_train.txt.gz", folder / "lightgcnpp_valid.txt.gz"],
                         test=folder / "test.txt.gz")


def _lastfm(shared_data: Path, cold: str) -> InteractionData:
    folder = shared_data / "lastfm_lightgcnpp_cf"
    return load_lightgcn(folder / "train.txt.gz", folder / "valid.txt.gz", folder / "test.txt.gz", cold=cold)


def test_gowalla_original_split(gowalla: InteractionData, shared_data: Path) -> None:
    assert (gowalla.n_users, gowalla.n_items) == (29_858, 40_981)
    assert gowalla.train.nnz == 810_128 and gowalla.test.nnz == 217_242 and gowalla.valid.nnz == 0
    assert gowalla.train.multiply(gowalla.test).nnz == 0  # train and test are disjoint
    assert gowalla.notes == ()  # no cold ids, no overlaps
    assert (gowalla.user_frequency > 0).all() and (gowalla.item_frequency > 0).all()
    # the train set is exactly the UI block of LightGCN's adjacency matrix
    adj = sp.load_npz(shared_data / "gowalla_lightgcn" / "s_adj_mat.npz").tocsr()
    ui = adj[: gowalla.n_users, gowalla.n_users :]
    assert ui.shape == gowalla.train.shape and (ui != gowalla.train).nnz == 0


def test_gowalla_lightgcnpp_split(shared_data: Path) -> None:
    folder = shared_data / "gowalla_lightgcn"
    d = load_lightgcn(folder / "lightgcnpp_train.txt.gz", folder / "lightgcnpp_valid.txt.gz", folder / "test.txt.gz")
    assert (d.n_users, d.n_items) == (29_858, 40_981)
    assert d.train.nnz == 719_081 and d.valid.nnz == 91_047 and d.test.nnz == 217_242
    assert d.summary()["cold_items"] == 2  # 2 items occur in valid/test only (MANIFEST caveat)
    assert d.train.multiply(d.valid).nnz == 0
    remapped = load_lightgcn(folder / "lightgcnpp_train.txt.gz", folder / "lightgcnpp_valid.txt.gz",
                             folder / "test.txt.gz", remap=True)
    assert remapped.fingerprint() == d.fingerprint()  # ids are already contiguous


def test_lastfm_cold_items(shared_data: Path) -> None:
    keep, drop = _lastfm(shared_data, "keep"), _lastfm(shared_data, "drop")
    assert (keep.n_users, keep.n_items) == (1_885, 17_388)
    assert (keep.train.nnz, keep.valid.nnz, keep.test.nnz) == (64_315, 9_143, 18_321)
    assert (keep.item_frequency[13_973:] == 0).all() and (keep.item_frequency[:13_973] > 0).all()
    assert (drop.n_users, drop.n_items) == (1_885, 13_973)
    assert drop.train.nnz == 64_315
    assert (keep.valid.nnz - drop.valid.nnz, keep.test.nnz - drop.test.nnz) == (1_214, 2_543)
    assert drop.notes == (
        "dropped 1,214 valid pairs with ids unseen in train (1,168 cold items, 0 cold users)",
        "dropped 2,543 test pairs with ids unseen in train (2,382 cold items, 0 cold users)",
    )
    assert (drop.train != keep.train[:, :13_973]).nnz == 0


def test_movielens_100k(shared_data: Path) -> None:
    path = shared_data / "ml-100k_recbole" / "ml-100k.inter.gz"
    d = load_interactions_csv(path, user_col="user_id", item_col="item_id")
    assert d.name == "ml-100k" and (d.n_users, d.n_items) == (943, 1_682)
    assert d.train.nnz + d.valid.nnz + d.test.nnz == 100_000
    assert d.train.nnz == 80_000 and (d.user_frequency >= 1).all()  # per-user rounding sums to 80% here
    assert d.user_ids.tolist() == list(range(1, 944)) and d.item_ids.tolist() == list(range(1, 1_683))
    liked = load_interactions_csv(path, user_col="user_id", item_col="item_id", rating_col="rating", min_rating=4)
    assert liked.train.nnz + liked.valid.nnz + liked.test.nnz == 34_174 + 21_201  # ratings 4 and 5
    assert liked.n_users < 943 or liked.n_items < 1_682
    with pytest.raises(DataError, match="columns found: 'user_id:token', 'item_id:token'"):
        load_interactions_csv(path, user_col="user", item_col="item_id")


def test_sampler_epoch_on_gowalla(gowalla: InteractionData) -> None:
    train = gowalla.train
    sampler = BPRSampler(train, seed=0)
    batches = list(sampler.epoch(2048))
    assert len(batches) == -(-train.nnz // 2048)
    users, pos, neg = (np.concatenate([b[k].numpy() for b in batches]) for k in range(3))
    keys = np.repeat(np.arange(train.shape[0]), np.diff(train.indptr)) * train.shape[1] + train.indices
    assert np.array_equal(np.sort(users * train.shape[1] + pos), keys)  # every pair exactly once
    neg_keys = users * train.shape[1] + neg
    hit = np.searchsorted(keys, neg_keys)
    assert not (keys[np.minimum(hit, keys.size - 1)] == neg_keys).any()  # no negative is a train item
    again = BPRSampler(train, seed=0).epoch(2048)
    for k in range(3):
        first = next(again)
        assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(first, batches[k]))
