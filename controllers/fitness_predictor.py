"""Fitness predictors for BET: the DeepSets network of [BET, eqs. 7-10] and a size-only MLP.

An action is read as ``|grid|`` sets, one per candidate size ``d``: the decisions that
got size ``d``.  The DeepSets predictor

* encodes every decision's max-normalised frequency with its table's encoder ``ρ``
  (1 → 16 → 16; eq. 7), once per predictor state: the encoding does not depend on the action;
* averages the encodings of each set's members (weighted by how many rows a decision
  stands for, so that block and per-field decisions count as their rows), appends
  ``d / d_max`` and encodes the pair with ``μ`` (17 → 64 → 64; eq. 8).  An empty set has
  no members: its mean is the zero vector, and it still contributes ``μ([0; d/d_max])``,
  since eq. 9 averages over every size;
* averages the ``|grid|`` set encodings into the action embedding ``h_a`` (eq. 9), which
  Strategy III compares between actions, and decodes it with ``π`` (64 → 64 → 1; eq. 10).

The set means are segment sums (``index_add_`` over actions × sizes), computed for a few
actions at a time so that 100 actions over tens of thousands of rows never hold more than
a few tens of megabytes; there is no per-row Python loop.  Every MLP has two layers with a
LeakyReLU between them ([BET, section 4.3]; equations and tables cited here are [BET]'s too).

Searching precisions too, the sets are those of every (size, precision) pair, and each
set's encoding also sees the precision's bits / 32 (``μ``'s input is then 18 wide).

:class:`SizeOnlyPredictor` is the ablation of Table 2: an MLP that sees only the vector
of sizes (``d / d_max`` per decision), nothing of frequencies or sets.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["PREDICTORS", "DeepSetsPredictor", "FitnessPredictor", "SizeOnlyPredictor", "mlp"]

#: Most (action, decision) pairs gathered at once when computing set means.
_CHUNK = 1 << 20


def mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    """The two-layer MLP of section 4.3: Linear, LeakyReLU, Linear."""
    return nn.Sequential(nn.Linear(inputs, hidden), nn.LeakyReLU(), nn.Linear(hidden, outputs))


class FitnessPredictor(nn.Module):
    """Maps actions (grid indices per decision) to an embedding and a predicted fitness.

    Subclasses implement :meth:`embed`; the decoder ``π`` is shared.
    """

    embedding_size: int = 64

    def __init__(self) -> None:
        super().__init__()
        self.decoder = mlp(self.embedding_size, 64, 1)

    def embed(self, sizes: torch.Tensor) -> torch.Tensor:
        """Action embeddings ``h_a``, shape ``(m, embedding_size)``, from grid indices ``(m, n_decisions)``."""
        raise NotImplementedError

    def forward(self, sizes: torch.Tensor) -> torch.Tensor:
        """Predicted fitness, shape ``(m,)``."""
        return self.decoder(self.embed(sizes)).squeeze(-1)


class DeepSetsPredictor(FitnessPredictor):
    """BET's set-based predictor (eqs. 7-10) over any space's decisions.

    Args:
        table: table index of every decision (a separate encoder per table: users,
            items, or each field).
        frequency: training frequency of every decision (normalised by its table's maximum).
        weight: rows each decision stands for (one per decision in the per-feature space).
        grid: candidate sizes; ``d_max`` is the largest.
        bits: bits of each searched precision, when precisions are searched: the sets are
            then the (size, precision) pairs, size-major (index ``size * len(bits) + precision``).
    """

    def __init__(self, table: np.ndarray, frequency: np.ndarray, weight: np.ndarray, grid: np.ndarray,
                 bits: np.ndarray | None = None) -> None:
        super().__init__()
        table = np.asarray(table, dtype=np.int64)
        frequency = np.asarray(frequency, dtype=np.float64)
        n_tables = int(table.max()) + 1
        peak = np.zeros(n_tables)
        np.maximum.at(peak, table, frequency)
        normalised = frequency / np.where(peak[table] > 0, peak[table], 1.0)
        features = _candidate_features(grid, bits)
        self.member_encoders = nn.ModuleList(mlp(1, 16, 16) for _ in range(n_tables))
        self.size_encoder = mlp(16 + features.shape[1], 64, self.embedding_size)
        self.register_buffer("table", torch.as_tensor(table.copy()), persistent=False)
        self.register_buffer("frequency", torch.as_tensor(normalised, dtype=torch.float32).unsqueeze(1), persistent=False)
        self.register_buffer("weight", torch.as_tensor(np.asarray(weight, dtype=np.float32)), persistent=False)
        self.register_buffer("size_feature", torch.as_tensor(features), persistent=False)

    def member_encodings(self) -> torch.Tensor:
        """``q_n`` of every decision (eq. 7), shape ``(n_decisions, 16)``."""
        encoded = torch.empty(len(self.table), 16)
        for t, encoder in enumerate(self.member_encoders):
            rows = self.table == t
            encoded = encoded.index_put((rows,), encoder(self.frequency[rows]))
        return encoded

    def embed(self, sizes: torch.Tensor) -> torch.Tensor:
        m, n = sizes.shape
        n_sizes = len(self.size_feature)
        weighted = self.member_encodings() * self.weight.unsqueeze(1)
        per_chunk = max(1, _CHUNK // max(n, 1))
        means = []
        for start in range(0, m, per_chunk):
            chunk = sizes[start : start + per_chunk]
            slots = (torch.arange(len(chunk)).unsqueeze(1) * n_sizes + chunk).reshape(-1)
            sums = torch.zeros(len(chunk) * n_sizes, 16).index_add(0, slots, weighted.repeat(len(chunk), 1))
            counts = torch.zeros(len(chunk) * n_sizes).index_add(0, slots, self.weight.repeat(len(chunk)))
            means.append((sums / counts.clamp_min(1e-12).unsqueeze(1)).reshape(len(chunk), n_sizes, 16))
        mean = torch.cat(means)  # an empty set's sum is zero, so its mean is the zero vector
        features = torch.cat([mean, self.size_feature.expand(m, n_sizes, self.size_feature.shape[1])], dim=2)
        return self.size_encoder(features).mean(dim=1)


class SizeOnlyPredictor(FitnessPredictor):
    """Table 2's simpler predictor: an MLP on the sizes alone (``d / d_max`` per decision).

    Searching precisions, a decision's input is its share of the widest row's bits
    (``d / d_max * bits / 32``).
    """

    def __init__(self, n_decisions: int, grid: np.ndarray, bits: np.ndarray | None = None) -> None:
        super().__init__()
        features = _candidate_features(grid, bits)
        self.register_buffer("size_feature", torch.as_tensor(features.prod(axis=1)), persistent=False)
        self.encoder = mlp(n_decisions, 64, self.embedding_size)

    def embed(self, sizes: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.size_feature[sizes])


def _candidate_features(grid: np.ndarray, bits: np.ndarray | None) -> np.ndarray:
    """Per candidate: ``d / d_max``, and with precisions ``bits / 32`` (pairs size-major), float32 ``(K, 1 or 2)``."""
    grid = np.asarray(grid, dtype=np.float32)
    sizes = grid / grid.max()
    if bits is None:
        return sizes[:, None]
    widths = np.asarray(bits, dtype=np.float32) / 32.0
    return np.stack([np.repeat(sizes, len(widths)), np.tile(widths, len(sizes))], axis=1)


#: Predictor names accepted by the BET controller (``"none"``: random selection only).
PREDICTORS = ("deepsets", "sizes", "none")
