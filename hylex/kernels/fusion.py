"""Fusion of the top-k lists of several retrieval arms (e.g. dense and sparse) into one top-k list.

Inputs: ``I`` int64 (n_arms, nq, depth) doc ids and ``D`` float32 (n_arms, nq, depth) scores, arms padded to
one depth with ``I == -1`` (any negative id is a missing hit; its score is ignored); ``weights`` float32
(n_arms,). Within one arm's list, only the first occurrence of a doc counts: later duplicates are dropped
before anything else (ranks and min/max are taken over the deduplicated valid hits, in list order).

* ``"convex"``: each arm's scores are min-max normalised per query, ``(s - min) / (max - min)``, or 1.0 for
  every hit when ``max == min``; fused = sum over arms of ``weight * norm`` (0 for an arm lacking the doc).
* ``"rrf"``: fused = sum over arms of ``weight / (rrf_k + rank)``, rank 1-based.

Every doc in the union of the arms' lists is a candidate, whatever its fused score. Fused scores are summed in
float64 in arm order, then rounded to float32, and ranked on that float32 value so the order agrees with the
returned D. Results follow :mod:`hylex.kernels.topk`'s conventions.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from hylex.kernels.topk import (
    MISSING_ID,
    MISSING_SCORE,
    _heap_drain,
    _heap_push,
    as_array,
    check_k,
    compile_kernels,
    select_topk_hits,
    select_topk_ref,
    use_numba,
)

prange = range  # numba.prange once the kernels are compiled (_compile)

CONVEX = 0
RRF = 1
METHODS = {"convex": CONVEX, "rrf": RRF}


def _prepare(I, D, weights, method, k, rrf_k):
    """Validate and convert the inputs of :func:`fuse`; raise ValueError on bad input."""
    k = check_k(k)
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    I = as_array("I", I, "i", 3, np.int64)
    D = as_array("D", D, "f", 3, np.float32)
    if D.shape != I.shape:
        raise ValueError(f"D and I must have the same shape (n_arms, nq, depth), got {D.shape} and {I.shape}")
    # checked before the float32 cast, which turns a finite 1e308 into infinity; a fused score is at most the
    # weights' sum, so that sum must be a float32 too
    weights = as_array("weights", weights, "f", 1, np.float64)
    if weights.shape[0] != I.shape[0]:
        raise ValueError(f"weights must have one entry per arm ({I.shape[0]}), got {weights.shape[0]}")
    if not np.isfinite(weights).all():
        raise ValueError("weights must be finite")
    if float(np.abs(weights).sum()) > float(np.finfo(np.float32).max):
        raise ValueError("the weights' absolute values must add up to at most float32's maximum (3.4e38): only "
                         "their ratios matter, scale them down")
    weights = weights.astype(np.float32)
    if not np.isfinite(D[I >= 0]).all():
        raise ValueError("D must be finite wherever I holds a hit (I >= 0)")
    if isinstance(rrf_k, (bool, np.bool_)) or not isinstance(rrf_k, (int, float, np.integer, np.floating)):
        raise ValueError(f"rrf_k must be a number >= 0, got {rrf_k!r}")
    rrf_k = float(rrf_k)
    if not (math.isfinite(rrf_k) and rrf_k >= 0):
        raise ValueError(f"rrf_k must be a finite number >= 0, got {rrf_k}")
    return I, D, weights, METHODS[method], k, rrf_k


def fuse_ref(I: Any, D: Any, weights: Any, method: str, k: int,
             rrf_k: float = 60.0) -> tuple[np.ndarray, np.ndarray]:
    """Plain-Python reference of :func:`fuse` (dicts and one sort per query)."""
    I, D, weights, method_id, k, rrf_k = _prepare(I, D, weights, method, k, rrf_k)
    n_arms, nq, depth = I.shape
    out_D = np.empty((nq, k), dtype=np.float32)
    out_I = np.empty((nq, k), dtype=np.int64)
    for q in range(nq):
        fused: dict[int, float] = {}
        for a in range(n_arms):
            docs: list[int] = []
            scores: list[float] = []
            seen: set[int] = set()
            for j in range(depth):
                d = int(I[a, q, j])
                if d >= 0 and d not in seen:
                    seen.add(d)
                    docs.append(d)
                    scores.append(float(D[a, q, j]))
            w = float(weights[a])
            if method_id == CONVEX and docs:
                lo, hi = min(scores), max(scores)
                contrib = [w * ((s - lo) / (hi - lo) if hi > lo else 1.0) for s in scores]
            else:
                contrib = [w / (rrf_k + r) for r in range(1, len(docs) + 1)]
            for d, c in zip(docs, contrib):
                fused[d] = fused.get(d, 0.0) + c
        docs_arr = np.array(list(fused), dtype=np.int64)
        out_D[q], out_I[q] = select_topk_ref(np.array(list(fused.values()), dtype=np.float32), docs_arr, k)
    return out_D, out_I


def _fuse_kernel(I, D, weights, method, rrf_k, k, out_D, out_I):
    """numba kernel; ``out_D``/``out_I`` come prefilled with padding. One query per prange iteration."""
    n_arms, nq, depth = I.shape
    for q in prange(nq):
        # gather the valid hits arm-major, in list order
        arm_start = np.empty(n_arms + 1, dtype=np.int64)
        n = 0
        for a in range(n_arms):
            arm_start[a] = n
            for j in range(depth):
                if I[a, q, j] >= 0:
                    n += 1
        arm_start[n_arms] = n
        docs = np.empty(n, dtype=np.int64)
        scores = np.empty(n, dtype=np.float64)
        arms = np.empty(n, dtype=np.int64)
        e = 0
        for a in range(n_arms):
            for j in range(depth):
                if I[a, q, j] >= 0:
                    docs[e] = I[a, q, j]
                    scores[e] = D[a, q, j]
                    arms[e] = a
                    e += 1
        # a stable sort by doc keeps each doc's entries in arm-major list order: the first entry of a
        # (doc, arm) run is that arm's first occurrence, and sums run in arm order as in the reference
        order = np.argsort(docs, kind="mergesort")
        keep = np.zeros(n, dtype=np.bool_)
        for i in range(n):
            e = order[i]
            if i == 0 or docs[e] != docs[order[i - 1]] or arms[e] != arms[order[i - 1]]:
                keep[e] = True
        contrib = np.zeros(n, dtype=np.float64)
        for a in range(n_arms):
            lo = arm_start[a]
            hi = arm_start[a + 1]
            w = np.float64(weights[a])
            if method == CONVEX:
                mn = np.inf
                mx = -np.inf
                for e in range(lo, hi):
                    if keep[e]:
                        mn = min(mn, scores[e])
                        mx = max(mx, scores[e])
                for e in range(lo, hi):
                    if keep[e]:
                        contrib[e] = w * ((scores[e] - mn) / (mx - mn) if mx > mn else 1.0)
            else:
                rank = 0
                for e in range(lo, hi):
                    if keep[e]:
                        rank += 1
                        contrib[e] = w / (rrf_k + rank)
        heap_s = np.empty(k, dtype=np.float32)
        heap_d = np.empty(k, dtype=np.int64)
        size = 0
        i = 0
        while i < n:
            d = docs[order[i]]
            acc = 0.0
            while i < n and docs[order[i]] == d:
                if keep[order[i]]:
                    acc += contrib[order[i]]
                i += 1
            size = _heap_push(heap_s, heap_d, size, k, np.float32(acc), d)
        _heap_drain(heap_s, heap_d, size, out_D[q], out_I[q])


def fuse(I: Any, D: Any, weights: Any, method: str, k: int,
         rrf_k: float = 60.0) -> tuple[np.ndarray, np.ndarray]:
    """Fuse per-arm top lists into one top-k list per query (numba, parallel over queries).

    Args:
        I: int64 (n_arms, nq, depth) doc ids; negative means no hit.
        D: float32 (n_arms, nq, depth) scores, finite where ``I >= 0``.
        weights: float32 (n_arms,) finite arm weights.
        method: ``"convex"`` (weighted sum of min-max normalised scores) or ``"rrf"``.
        k: hits per query, >= 1.
        rrf_k: RRF's rank offset, finite and >= 0 (used by ``"rrf"`` only).

    Returns:
        D float32 (nq, k), I int64 (nq, k): fused score descending, ties by doc id ascending; missing slots
        hold ``I == -1``, ``D == -inf``.
    """
    I, D, weights, method_id, k, rrf_k = _prepare(I, D, weights, method, k, rrf_k)
    nq = I.shape[1]
    out_D = np.full((nq, k), MISSING_SCORE, dtype=np.float32)
    out_I = np.full((nq, k), MISSING_ID, dtype=np.int64)
    if nq and I.size:
        if not use_numba(I.size, __name__):  # small: the NumPy twin, the same float64 sums and order
            return _fuse_np(I, D, weights, method_id, rrf_k, k)
        _compile()
        _fuse_nb(I, D, weights, method_id, rrf_k, k, out_D, out_I)
    return out_D, out_I


def _fuse_np(I, D, weights, method, rrf_k, k):
    """NumPy twin of :func:`_fuse_kernel` (every query at once): per arm and query, the first occurrence of each
    doc in list order, its contribution computed with the kernel's float64 operations, added per doc in arm order
    (one arm at a time, from 0.0), rounded to float32 and ranked as the kernel's heap does."""
    n_arms, nq, depth = I.shape
    a, q, j = np.nonzero(I >= 0)  # in (arm, query, list) order
    d = I[a, q, j]
    n = d.shape[0]
    if n == 0:
        return select_topk_hits(q, np.zeros(0, np.float32), d, nq, k)
    n_codes = int(d.max()) + 1
    if n_codes * n_arms * nq < 1 << 62:  # (arm, query, doc) keys fit in int64 as they are
        docs, code = None, d
    else:  # dense doc codes instead
        docs, code = np.unique(d, return_inverse=True)
        code = code.reshape(-1).astype(np.int64)
        n_codes = int(docs.shape[0])
    n_codes = np.int64(n_codes)
    # each doc's first occurrence in each (arm, query) list: a stable sort keeps list order among equal keys
    key = (a * nq + q) * n_codes + code
    order = np.argsort(key, kind="stable")
    first = np.ones(n, dtype=bool)
    first[1:] = key[order[1:]] != key[order[:-1]]
    kept = np.sort(order[first])  # back in (arm, query, list) order
    a, q, j, code = a[kept], q[kept], j[kept], code[kept]
    n = kept.shape[0]
    w = weights.astype(np.float64)[a]
    grp = a * nq + q
    starts = np.flatnonzero(np.concatenate(([True], grp[1:] != grp[:-1])))
    counts = np.diff(np.append(starts, n))
    if method == CONVEX:
        s = D[a, q, j].astype(np.float64)
        mn = np.repeat(np.minimum.reduceat(s, starts), counts)
        mx = np.repeat(np.maximum.reduceat(s, starts), counts)
        spread = mx > mn
        contrib = w * 1.0
        contrib[spread] = w[spread] * ((s[spread] - mn[spread]) / (mx[spread] - mn[spread]))
    else:
        rank = np.arange(n, dtype=np.int64) - np.repeat(starts, counts) + 1
        contrib = w / (rrf_k + rank)
    # the fused score of each (query, doc): its arms' contributions added in arm order
    fkey = q * n_codes + code
    ukey, gid = np.unique(fkey, return_inverse=True)
    gid = gid.reshape(-1)
    acc = np.zeros(ukey.shape[0], dtype=np.float64)
    for arm in range(n_arms):
        sel = a == arm
        acc[gid[sel]] += contrib[sel]  # one entry per (query, doc) and arm
    fused_docs = ukey % n_codes if docs is None else docs[ukey % n_codes]
    return select_topk_hits(ukey // n_codes, acc.astype(np.float32), fused_docs, nq, k)


# ---------------------------------------------------------------------------------------------------------
# compilation (on first use: see hylex.kernels.topk)
# ---------------------------------------------------------------------------------------------------------

_KERNELS = (("_fuse_nb", "_fuse_kernel", True),)
_fuse_nb: Any = None


def _compile() -> None:
    """Import numba and compile this module's kernel (once; its machine code comes from numba's cache)."""
    compile_kernels(globals(), _KERNELS)
