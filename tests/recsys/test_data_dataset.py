"""InteractionData: canonical matrices, frequencies, summary, fingerprint."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.data import COLD_POLICIES, InteractionData, pairs_to_csr


def _data(**overrides: object) -> InteractionData:
    shape = (3, 4)
    fields = dict(
        name="toy",
        n_users=3,
        n_items=4,
        train=pairs_to_csr(np.array([0, 0, 1, 2]), np.array([1, 0, 1, 1]), shape),
        valid=pairs_to_csr(np.array([1]), np.array([2]), shape),
        test=pairs_to_csr(np.array([2]), np.array([3]), shape),
        cold_policy="keep",
    )
    fields.update(overrides)
    return InteractionData(**fields)  # type: ignore[arg-type]


def test_pairs_to_csr_is_canonical_binary_float32() -> None:
    m = pairs_to_csr(np.array([2, 0, 0]), np.array([1, 3, 0]), (3, 4))
    assert isinstance(m, sp.csr_matrix) and m.dtype == np.float32
    assert m.has_sorted_indices and m.has_canonical_format
    assert m.indptr.tolist() == [0, 2, 2, 3] and m.indices.tolist() == [0, 3, 1]
    assert (m.data == 1).all()


def test_frequencies_rows_and_summary() -> None:
    d = _data()
    assert d.user_frequency.dtype == np.int64 and d.user_frequency.tolist() == [2, 1, 1]
    assert d.item_frequency.tolist() == [1, 3, 0, 0]
    assert set(d.frequencies()) == {"user", "item"}
    assert d.rows() == {"user": 3, "item": 4}
    with pytest.raises(ValueError):
        d.item_frequency[0] = 5  # cached arrays are read-only
    s = d.summary()
    assert (s["users"], s["items"], s["train_pairs"], s["valid_pairs"], s["test_pairs"]) == (3, 4, 4, 1, 1)
    assert s["cold_items"] == 2 and s["cold_users"] == 0 and s["cold_policy"] == "keep"
    assert s["density"] == pytest.approx(4 / 12)


def test_non_canonical_input_is_normalised() -> None:
    coo = sp.coo_matrix((np.array([3.0, 1.0, 1.0]), (np.array([1, 0, 1]), np.array([2, 1, 2]))), shape=(3, 4))
    d = _data(valid=coo)  # a duplicate pair, values other than one, COO format
    assert isinstance(d.valid, sp.csr_matrix) and d.valid.dtype == np.float32
    assert d.valid.nnz == 2 and (d.valid.data == 1).all() and d.valid.has_canonical_format


def test_invalid_construction() -> None:
    with pytest.raises(ValueError, match="'keep', 'drop'"):
        _data(cold_policy="ignore")
    with pytest.raises(ValueError, match="shape"):
        _data(test=sp.csr_matrix((3, 5), dtype=np.float32))
    with pytest.raises(ValueError, match="user_ids"):
        _data(user_ids=np.arange(2))
    assert COLD_POLICIES == ("keep", "drop")


def test_fingerprint_ties_structure_not_names_or_dtypes() -> None:
    a = _data()
    assert len(a.fingerprint()) == 64 and a.fingerprint() == _data().fingerprint()
    assert _data(name="other", notes=("x",)).fingerprint() == a.fingerprint()
    train64 = a.train.copy()
    train64.indices = train64.indices.astype(np.int64)
    train64.indptr = train64.indptr.astype(np.int64)
    assert _data(train=train64).fingerprint() == a.fingerprint()
    # the same pair in another split is other data
    moved = _data(valid=a.test, test=a.valid)
    assert moved.fingerprint() != a.fingerprint()
    wider = _data(n_items=5, train=sp.hstack([a.train, sp.csr_matrix((3, 1))]).tocsr(),
                  valid=sp.csr_matrix((3, 5)), test=sp.csr_matrix((3, 5)))
    assert wider.fingerprint() != _data(valid=sp.csr_matrix((3, 4)), test=sp.csr_matrix((3, 4))).fingerprint()
