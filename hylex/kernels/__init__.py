"""Numba kernels: sparse (impact, block-max) and BM25 top-k over inverted indexes, fusion of arms' top lists, merge of top-k lists.

Shared conventions (see :mod:`hylex.kernels.topk`): results are D float32 (nq, k) and I int64 (nq, k), score
descending with ties by doc id ascending, missing slots ``I == -1`` / ``D == -inf``. Each numba kernel has a
plain reference twin (``*_ref``) used by the tests.

Numba is imported only when a kernel first runs on it: a small workload (at most ``SMALL_WORK`` elements) runs on
the kernel's vectorized NumPy twin instead, with the same results bit for bit, so a one-shot search on a small index
does not import numba at all. ``kernel_backend("numba" | "numpy" | "auto")`` forces a side (tests, benchmarks,
warm-ups); ``load_kernels()`` imports numba and wraps every kernel.
"""
from __future__ import annotations

from hylex.kernels.blockmax import (
    impact_topk_approx,
    impact_topk_exact,
    impact_topk_ref,
)
from hylex.kernels.bm25 import bm25_topk, bm25_topk_ref
from hylex.kernels.fusion import fuse, fuse_ref
from hylex.kernels.topk import (
    MISSING_ID,
    MISSING_SCORE,
    SMALL_WORK,
    kernel_backend,
    load_kernels,
    merge_topk,
    merge_topk_ref,
)

__all__ = [
    "MISSING_ID",
    "MISSING_SCORE",
    "SMALL_WORK",
    "bm25_topk",
    "bm25_topk_ref",
    "fuse",
    "fuse_ref",
    "impact_topk_approx",
    "impact_topk_exact",
    "impact_topk_ref",
    "kernel_backend",
    "load_kernels",
    "merge_topk",
    "merge_topk_ref",
]
