"""Numba kernels: sparse (impact, block-max) and BM25 top-k over inverted indexes, fusion of arms' top lists, merge of top-k lists.

Shared conventions (see :mod:`hylex.kernels.topk`): results are D float32 (nq, k) and I int64 (nq, k), score
descending with ties by doc id ascending, missing slots ``I == -1`` / ``D == -inf``. Each numba kernel has a
plain reference twin (``*_ref``) used by the tests.
"""
from __future__ import annotations

from hylex.kernels.blockmax import (
    impact_topk_approx,
    impact_topk_exact,
    impact_topk_ref,
)
from hylex.kernels.bm25 import bm25_topk, bm25_topk_ref
from hylex.kernels.fusion import fuse, fuse_ref
from hylex.kernels.topk import MISSING_ID, MISSING_SCORE, merge_topk, merge_topk_ref

__all__ = [
    "MISSING_ID",
    "MISSING_SCORE",
    "bm25_topk",
    "bm25_topk_ref",
    "fuse",
    "fuse_ref",
    "impact_topk_approx",
    "impact_topk_exact",
    "impact_topk_ref",
    "merge_topk",
    "merge_topk_ref",
]
