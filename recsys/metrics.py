"""Full-ranking top-k metrics (Recall@k, NDCG@k) for implicit-feedback recommenders.

The protocol is LightGCN's: every user with at least one held-out ("truth") item
is scored against *all* items, the items the user already interacted with in
training (and, for the test split, in validation) are removed from the ranking,
and the top ``k`` of what remains is compared with the truth items.

Work is chunked over users so that only ``chunk_size × n_items`` scores live in
memory at a time (Gowalla: 1024 × 40,981 float32 ≈ 160 MiB), and vectorised
within a chunk: one ``torch.topk`` with the largest ``k``, hits by a sorted-key
membership test, no Python loop over users.

Ties are broken deterministically: among equal scores the **lower item id ranks
first**, both inside the top-k list and at its boundary (which of several
equally scored items makes the cut).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from scipy.sparse import csr_matrix

__all__ = ["ranking_metrics", "ranking_metrics_many", "fitness_quality", "FITNESS_KS", "ctr_metrics", "ctr_fitness"]

#: The cut-offs averaged by :func:`fitness_quality` [BET, eq. 13].
FITNESS_KS: tuple[int, ...] = (5, 10, 20)


def ranking_metrics(
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    truth: csr_matrix,
    exclude: csr_matrix | Sequence[csr_matrix] | None,
    ks: Sequence[int] = (5, 10, 20),
    *,
    users: np.ndarray | None = None,
    chunk_size: int = 1024,
    progress: bool = False,
) -> dict[str, float]:
    """Mean Recall@k and NDCG@k over users with at least one truth item.

    Definitions (binary relevance, LightGCN's):

    * Recall@k = (truth items in the top k) / (number of truth items of the user);
    * NDCG@k = DCG / IDCG with DCG = Σ_{hits} 1 / log2(rank + 2) (rank from 0) and
      IDCG the DCG of a list whose first ``min(k, |truth|)`` entries are hits.

    Excluded items are ranked after every other item and never count as hits. A
    truth item that is also excluded still counts in ``|truth|`` (it is simply
    unreachable), as in the reference implementation where test and train may
    overlap. A list may thus hold fewer than ``k`` candidates; ``k`` larger
    than the number of items is allowed.

    Args:
        score_fn: maps an int64 (CPU) tensor of user ids to a float tensor of shape
            ``(len(user_ids), n_items)`` on any device; higher is better. It is called under
            ``torch.no_grad()``. Scores must not be NaN. The returned tensor is
            overwritten in place (excluded items set to ``-inf``), so return a
            fresh one (a matmul does), not a view of stored state.
        truth: ``n_users × n_items`` matrix whose non-zeros are the held-out items.
        exclude: matrix (or matrices) of the same shape whose non-zeros are
            removed from each user's ranking, e.g. the training interactions.
        ks: the cut-offs, each ≥ 1.
        users: optional user ids to restrict the evaluation to (users without
            truth items are still skipped).
        chunk_size: users scored at a time; memory is about
            ``chunk_size × n_items × 4`` bytes for the scores.
        progress: show a tqdm bar over chunks.

    Returns:
        ``{"recall@k": ..., "ndcg@k": ... for each k, "users": count}``; the
        metrics are 0.0 when no user qualifies.
    """
    return ranking_metrics_many(
        lambda chunk: score_fn(chunk).unsqueeze(0), 1, truth, exclude, ks,
        users=users, chunk_size=chunk_size, progress=progress,
    )[0]


def ranking_metrics_many(
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    n_models: int,
    truth: csr_matrix,
    exclude: csr_matrix | Sequence[csr_matrix] | None,
    ks: Sequence[int] = (5, 10, 20),
    *,
    users: np.ndarray | None = None,
    chunk_size: int = 1024,
    progress: bool = False,
) -> list[dict[str, float]]:
    """:func:`ranking_metrics` of ``n_models`` scorers at once, sharing the work they have in common.

    ``score_fn`` returns ``(n_models, len(user_ids), n_items)``.  The exclusion and
    truth look-ups of a chunk of users are built once for all models and the top-k
    is one call over all of them, so scoring many variants of a model (allocations
    of one supernet) costs little more than their matrix products.  Memory is about
    ``n_models × chunk_size × n_items × 4`` bytes: lower ``chunk_size`` with many models.
    """
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be non-empty positive cut-offs, got {ks!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if n_models < 1:
        raise ValueError(f"n_models must be >= 1, got {n_models}")
    truth = csr_matrix(truth)
    truth.sum_duplicates()
    n_users, n_items = truth.shape
    excludes = _as_list(exclude)
    for matrix in excludes:
        if matrix.shape != truth.shape:
            raise ValueError(f"exclude has shape {matrix.shape}, truth has {truth.shape}; they must match")

    n_truth_all = np.diff(truth.indptr)
    candidates = np.flatnonzero(n_truth_all > 0)
    if users is not None:
        candidates = np.intersect1d(candidates, np.asarray(users, dtype=np.int64))
    sums = np.zeros((n_models, 2, len(ks)))  # [model, recall|ndcg, k]
    k_max = max(ks)
    k_eff = min(k_max, n_items)
    # discounts[r] = 1 / log2(r + 2); idcg_table[m] = Σ_{r < m} discounts[r].
    discounts = 1.0 / np.log2(np.arange(k_max, dtype=np.float64) + 2.0)
    idcg_table = np.concatenate([[0.0], np.cumsum(discounts)])
    k_index = np.asarray(ks) - 1

    chunks = [candidates[i : i + chunk_size] for i in range(0, len(candidates), chunk_size)]
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc="eval", unit="chunk", leave=False)
    with torch.no_grad():
        for chunk in chunks:
            expected = (n_models, len(chunk), n_items)
            scores = score_fn(torch.from_numpy(chunk.astype(np.int64)))
            if tuple(scores.shape) != expected:
                raise ValueError(f"score_fn returned shape {tuple(scores.shape)}, expected {expected}")
            # Overwritten in place (excluded items -> -inf): score_fn must return a fresh tensor.
            # Exclusion and top-k run where the scores are (a GPU's scores never cross to the host).
            scores = scores.detach().to(torch.float32).reshape(n_models * len(chunk), n_items)
            device = scores.device
            excluded_keys = _chunk_keys(excludes, chunk, n_items)
            if excluded_keys.numel():
                offsets = torch.arange(n_models, device=device).unsqueeze(1) * (len(chunk) * n_items)
                scores.view(-1)[(offsets + excluded_keys.to(device)).view(-1)] = -torch.inf
            top = _top_items(scores, k_eff).view(n_models, len(chunk), k_eff).cpu()
            local = torch.arange(len(chunk)).view(1, -1, 1) * n_items
            keys = (local + top).view(-1)
            hits = torch.isin(keys, _chunk_keys([truth], chunk, n_items))
            if excluded_keys.numel():
                hits &= ~torch.isin(keys, excluded_keys)
            hits_np = hits.view(n_models, len(chunk), k_eff).numpy().astype(np.float64)
            if k_eff < k_max:
                hits_np = np.pad(hits_np, ((0, 0), (0, 0), (0, k_max - k_eff)))
            n_truth = n_truth_all[chunk].astype(np.float64)
            recall = np.cumsum(hits_np, axis=2)[:, :, k_index] / n_truth[None, :, None]
            idcg = idcg_table[np.minimum(n_truth[:, None], np.asarray(ks)[None, :]).astype(np.int64)]
            ndcg = np.cumsum(hits_np * discounts, axis=2)[:, :, k_index] / idcg[None]
            sums[:, 0] += recall.sum(axis=1)
            sums[:, 1] += ndcg.sum(axis=1)
    count = len(candidates)
    results = []
    for model_sums in sums:
        result = {f"{name}@{k}": (float(model_sums[m, j]) / count if count else 0.0)
                  for j, k in enumerate(ks) for m, name in enumerate(("recall", "ndcg"))}
        result["users"] = float(count)
        results.append(result)
    return results


def fitness_quality(metrics: Mapping[str, float]) -> float:
    """Scalar quality of a ranking: mean over k ∈ {5, 10, 20} of (Recall@k + NDCG@k) / 2.

    This is BET's fitness numerator [BET, eq. 13]; the ratio to the
    unmasked model (eq. 12) is taken by the caller.

    Raises:
        KeyError: when ``metrics`` lacks one of the six values.
    """
    missing = [f"{m}@{k}" for k in FITNESS_KS for m in ("recall", "ndcg") if f"{m}@{k}" not in metrics]
    if missing:
        raise KeyError(f"fitness_quality needs {missing}; evaluate with ks covering {FITNESS_KS}")
    return float(np.mean([(metrics[f"recall@{k}"] + metrics[f"ndcg@{k}"]) / 2.0 for k in FITNESS_KS]))


def ctr_metrics(labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """AUC and log loss of click predictions ([LERSBench, section 5.2.1]: AUC, then LogLoss).

    Computed with scikit-learn's ``roc_auc_score`` and ``log_loss`` on
    ``sigmoid(logits)`` in float64 (``log_loss`` clips probabilities away from 0
    and 1).

    Args:
        labels: 0/1 clicks ``(n,)``.
        logits: predicted logits ``(n,)``.

    Returns:
        ``{"auc": ..., "logloss": ...}``; AUC is NaN when ``labels`` hold one
        class only (it is undefined), both are NaN when ``n == 0``.
    """
    from scipy.special import expit
    from sklearn.metrics import log_loss, roc_auc_score

    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    if y.shape != z.shape:
        raise ValueError(f"labels {y.shape} and logits {z.shape} must have the same length")
    if y.size == 0:
        return {"auc": float("nan"), "logloss": float("nan")}
    p = expit(z)
    auc = float(roc_auc_score(y, z)) if 0 < y.sum() < y.size else float("nan")  # ranks: logits suffice
    return {"auc": auc, "logloss": float(log_loss(y, p, labels=[0.0, 1.0]))}


def ctr_fitness(metrics: Mapping[str, float]) -> float:
    """Scalar quality of a click model: its AUC (the CTR fitness numerator; the ratio to the full model is the caller's).

    Raises:
        KeyError: when ``metrics`` has no ``"auc"``.
    """
    if "auc" not in metrics:
        raise KeyError("ctr_fitness needs 'auc'; evaluate with recsys.train_ctr.evaluate_ctr")
    return float(metrics["auc"])

def _as_list(exclude: csr_matrix | Sequence[csr_matrix] | None) -> list[csr_matrix]:
    if exclude is None:
        return []
    if isinstance(exclude, (list, tuple)):
        return [csr_matrix(m) for m in exclude]
    return [csr_matrix(exclude)]


def _chunk_keys(matrices: Sequence[csr_matrix], chunk: np.ndarray, n_items: int) -> torch.Tensor:
    """Sorted unique flat keys ``local_row * n_items + item`` of the non-zeros of ``chunk``'s rows."""
    parts = []
    for matrix in matrices:
        rows = matrix[chunk]
        local = np.repeat(np.arange(len(chunk), dtype=np.int64), np.diff(rows.indptr))
        parts.append(local * n_items + rows.indices.astype(np.int64))
    if not parts:
        return torch.empty(0, dtype=torch.int64)
    return torch.from_numpy(np.unique(np.concatenate(parts)))


def _top_items(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Item ids of the top ``k`` per row, ordered by (score desc, item id asc).

    ``torch.topk`` does not say which of several equal scores it keeps, so rows
    where the k-th score is tied beyond the cut are redone exactly: everything
    strictly above the k-th score, then the lowest-id tied items.
    """
    n_items = scores.shape[1]
    # One extra candidate tells whether the k-th score is tied just past the cut.
    values, items = torch.topk(scores, min(k + 1, n_items), dim=1, sorted=True)
    if values.shape[1] > k:
        ambiguous = torch.nonzero(values[:, k - 1] == values[:, k]).view(-1)
        values, items = values[:, :k].contiguous(), items[:, :k].contiguous()
    else:
        ambiguous = torch.empty(0, dtype=torch.int64, device=scores.device)
    kth = values[:, -1:]
    if ambiguous.numel():
        sub = scores[ambiguous]
        sub_kth = kth[ambiguous]
        above = sub > sub_kth
        tied = sub == sub_kth
        need = k - above.sum(dim=1, keepdim=True)
        chosen = above | (tied & (torch.cumsum(tied, dim=1) <= need))
        fixed = torch.nonzero(chosen)[:, 1].view(len(ambiguous), k)
        items[ambiguous] = fixed
        values[ambiguous] = torch.gather(sub, 1, fixed)
    # Stable sorts: first by item id, then by score descending, keeps lower ids first among ties.
    items, order = torch.sort(items, dim=1, stable=True)
    values = torch.gather(values, 1, order)
    _, order = torch.sort(values, dim=1, descending=True, stable=True)
    return torch.gather(items, 1, order)
