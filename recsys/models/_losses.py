"""The two training objectives of top-k backbones, on scores the backbone has computed.

A backbone computes the scores its architecture defines; the objective is the same for
all of them:

* **BPR** [BPR]: each observed item should outscore one sampled
  unobserved item, ``mean(-log σ(s(u, i) - s(u, j)))``.
* **Sampled softmax** (InfoNCE): each observed item should win a softmax against ``k``
  negatives, ``mean(-log softmax(s(u, ·) / τ)[i])``.  The negatives are drawn uniformly
  and shared by the whole batch, so every user meets ``k`` of them for the price of one
  ``batch × k`` score block.  Uniform negatives need no correction for how they were
  drawn; the batch's own positives would (they come in proportion to popularity, and
  without a log-q correction the model learns to push popular items down).  It reaches
  BPR's quality in fewer epochs (docs/results.md, §11).

BPR's negative may also be chosen rather than drawn: :func:`hardest` keeps, of several
uniform candidates per triple, the one the model currently scores highest (dynamic
negative sampling [DNS]).  A uniform negative is soon one the model already ranks low,
whose gradient is near zero; the hardest of a few dozen still teaches something, so
training reaches a higher level in fewer epochs (docs/results.md §9.7).

Both take scores that may carry leading variant dimensions ``(A, …)`` (a provider
serving several masked allocations at once) and average over them.

Graph backbones may add a third term, :func:`info_nce` (SGL without augmentation,
"SGL-WA" [SimGCL]; paper 004 trains its LightGCN with it): each of the batch's users and
items should be told apart from the batch's others by the direction of its final vector.
It spreads the final vectors over the sphere, which a graph model's smoothing pulls
together, and it is what makes LightGCN converge in tens of epochs instead of hundreds.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["bpr", "candidate_scores", "hardest", "info_nce", "l2_penalty", "sampled_softmax"]


def bpr(difference: torch.Tensor) -> torch.Tensor:
    """``mean(-log σ(s(u, i) - s(u, j)))`` of the score differences (any shape)."""
    return nn.functional.softplus(-difference).mean()  # softplus(-x) = -log σ(x)


def hardest(scores: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Each row's highest-scoring candidate: int64 ids ``(batch,)`` of ``candidates (batch, M)``.

    ``scores`` are the model's ``(…, batch, M)`` scores of the candidates; over stacked
    variants (a supernet step) their mean decides, so the variants share one negative
    per triple.  The choice carries no gradient: the negative is then scored as a drawn
    one would be.
    """
    with torch.no_grad():
        if scores.dim() > 2:
            scores = scores.reshape(-1, *scores.shape[-2:]).mean(dim=0)
        return candidates.gather(1, scores.argmax(dim=1, keepdim=True)).squeeze(1)


def candidate_scores(users: torch.Tensor, items: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Dot-product scores ``(…, batch, M)`` of user vectors ``(…, batch, d)`` against the rows of the item
    vectors ``(…, n, d)`` that ``candidates (batch, M)`` name.

    One matrix product per row, without the ``(…, batch, M, d)`` elementwise product; an
    unstacked table is gathered by ``embedding``, about twice as fast on CPU as indexing.
    """
    vectors = nn.functional.embedding(candidates, items) if items.dim() == 2 else items[..., candidates, :]
    return (vectors @ users.unsqueeze(-1)).squeeze(-1)


def sampled_softmax(
    positive: torch.Tensor, scores: torch.Tensor, pos: torch.Tensor, candidates: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Mean cross-entropy of each row's positive against the batch's candidate items.

    Args:
        positive: ``(…, batch)`` score of each row's positive item.
        scores: ``(…, batch, C)`` scores of every user of the batch against every candidate.
        pos: int64 ``(batch,)`` ids of the positives.
        candidates: int64 ``(C,)`` item ids of the candidates.
        temperature: τ > 0; smaller values weigh the hardest negatives more.

    A candidate with the same id as a row's positive (the row's own positive among the
    batch's items, the same item as another row's positive, or drawn as a negative) is
    not a negative of that row: counting it would push the positive against itself.  It
    is left out of that row's softmax.
    """
    same = candidates.unsqueeze(0) == pos.unsqueeze(1)  # (batch, C)
    logits = torch.cat([positive.unsqueeze(-1), scores.masked_fill(same, float("-inf"))], dim=-1) / temperature
    return (torch.logsumexp(logits, dim=-1) - logits[..., 0]).mean()


def info_nce(vectors: torch.Tensor, ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE of each distinct row of ``ids`` against the others, its own vector its positive view.

    ``mean_i(logsumexp_j(z_i·z_j / τ) - z_i·z_i / τ)`` over the distinct ``ids``, with ``z`` the
    rows of ``vectors`` scaled to unit length (a row of zeros stays zero).  ``vectors`` may
    carry leading variant dimensions ``(A, rows, d)``; the mean is over them too.
    """
    unit = nn.functional.normalize(vectors[..., torch.unique(ids), :], dim=-1)
    logits = unit @ unit.transpose(-2, -1) / temperature
    return (torch.logsumexp(logits, dim=-1) - logits.diagonal(dim1=-2, dim2=-1)).mean()


def l2_penalty(reg: float, batch: int, *vectors: torch.Tensor) -> torch.Tensor | float:
    """``reg · Σ‖v‖² / 2 / batch`` over the looked-up vectors: ``reg`` per triple (LightGCN's convention).

    Stacked variants are summed, as their caller shares ``reg`` out between them.
    """
    if not reg:
        return 0.0
    return reg * 0.5 * sum(v.square().sum() for v in vectors) / batch
