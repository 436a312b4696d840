"""Interaction data: loaders, the split, the BPR sampler and a synthetic dataset.

Every loader returns an :class:`InteractionData` (train/valid/test binary CSR
matrices over the ``"user"`` and ``"item"`` tables); every malformed file
raises :class:`recsys.errors.DataError` naming the file and the line.
Multi-field click data (CTR) is a :class:`CTRData`: per-field ids and 0/1 labels.
"""

from recsys.data.ctr import CTRData
from recsys.data.ctr_csv import load_ctr_csv
from recsys.data.dataset import COLD_POLICIES, SPLITS, InteractionData, pairs_to_csr
from recsys.data.lightgcn import load_lightgcn
from recsys.data.movielens import load_movielens_ctr
from recsys.data.sampler import BPRSampler
from recsys.data.split import split_per_user
from recsys.data.synthetic import synthetic
from recsys.data.synthetic_ctr import synthetic_ctr
from recsys.data.tabular import load_interactions_csv

__all__ = [
    "COLD_POLICIES",
    "SPLITS",
    "BPRSampler",
    "CTRData",
    "InteractionData",
    "load_ctr_csv",
    "load_interactions_csv",
    "load_lightgcn",
    "load_movielens_ctr",
    "pairs_to_csr",
    "split_per_user",
    "synthetic",
    "synthetic_ctr",
]
