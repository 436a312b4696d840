"""Interaction data: loaders, the split, the BPR sampler and a synthetic dataset.

Every loader returns an :class:`InteractionData` (train/valid/test binary CSR
matrices over the ``"user"`` and ``"item"`` tables); every malformed file
raises :class:`recsys.errors.DataError` naming the file and the line.
"""

from recsys.data.dataset import COLD_POLICIES, SPLITS, InteractionData, pairs_to_csr
from recsys.data.lightgcn import load_lightgcn
from recsys.data.sampler import BPRSampler
from recsys.data.split import split_per_user
from recsys.data.synthetic import synthetic
from recsys.data.tabular import load_interactions_csv

__all__ = [
    "COLD_POLICIES",
    "SPLITS",
    "BPRSampler",
    "InteractionData",
    "load_interactions_csv",
    "load_lightgcn",
    "pairs_to_csr",
    "split_per_user",
    "synthetic",
]
