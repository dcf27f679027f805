"""Top-k over an impact-quantized, block-partitioned inverted index: exact block-max MaxScore, and an approximate
mode with Seismic's ``query_cut`` and ``heap_factor``.

Index layout (built by :class:`hylex.indexing.impact.ImpactIndex`; V terms, nnz postings, nb blocks):

* ``indptr`` int64 (V+1,), ``docs`` int32 (nnz,) doc rows in ``[0, n_docs)`` strictly ascending within a term,
  ``impacts`` uint8 or uint16 (nnz,) quantized weights;
* ``block_indptr`` int64 (V+1,): term t's blocks are ``block_indptr[t]:block_indptr[t+1]``, one per
  ``block_size`` consecutive postings (so ``ceil(len_t / block_size)`` of them);
* ``block_max`` (impacts' dtype), ``block_first``, ``block_last`` int32 (nb,): each block's largest impact and its
  first / last doc id;
* ``scale``: the one global dequantization factor; a posting's weight is ``w = float32(impact) * float32(scale)``.

The kernels trust the block arrays to describe the postings (the wrappers check shapes and block counts, not
every block's maximum); wrong maxima or unsorted docs give wrong results, never out-of-bounds accesses.

Queries are flattened ragged arrays as in :mod:`hylex.kernels.sparse`: ``q_indptr`` int64 (nq+1,), ``q_terms``
int (total,) >= 0 (ids >= V are ignored), ``q_weights`` float32 (total,) finite (negative weights allowed).

score(q, d) = sum over q's terms t of ``q_weight[t] * w[t, d]``: float32 products, accumulated in float32 in query
term order (exactly as :func:`impact_topk_ref` and :func:`hylex.kernels.sparse.sparse_topk` on the dequantized
weights do, so all three give bit-identical scores). Only docs with score > 0 are hits; ``live[d] == 0`` removes
doc d. Results follow :mod:`hylex.kernels.topk`'s conventions (score desc, doc id asc, -1 / -inf padding).

Algorithm (:func:`impact_topk_exact`): document-at-a-time **MaxScore with block-max bounds**, per query:

1. Each in-vocabulary query term with postings is a cursor with an upper bound
   ``ub_t = max(0, q_weight * max impact of the term * scale)``. Cursors are sorted by ``ub_t`` ascending and
   ``cum[i]`` is the prefix sum of those bounds.
2. Once the heap holds k hits with threshold ``theta`` (the k-th score), the longest prefix with
   ``cum[i] < theta`` is *non-essential*: a doc found only in those lists cannot reach ``theta``. Candidates are
   drawn only from the *essential* lists (the next candidate is their smallest current doc id).
3. For a candidate d, each list's *block interval* at d gives a tighter bound: the block containing d contributes
   ``q_weight * block_max * scale``, a gap between blocks (or the end of the list) contributes 0. The sum holds
   for every doc up to the first interval boundary (the smallest block end / gap end over the lists), so it is
   computed once per interval, not per candidate. If it is below ``theta``, the essential cursors jump past the
   whole interval, block by block (block-max skipping).
4. Otherwise the essential lists' exact contributions are added, then the non-essential lists are probed from the
   largest bound down (seeking block by block, then within one block), stopping as soon as
   ``partial + remaining block bounds < theta``.
5. A doc that survives is scored exactly (float32, query term order) and offered to the heap; ``theta`` rises and
   more lists become non-essential.

Every pruning test compares a float64 bound plus a rounding margin ``(m + 4) * 2**-22 * sum_t |q_w| * maxw_t``
(m = query terms) strictly below ``theta``, so a doc is pruned only when its float32 score is certainly below the
k-th score: a doc tying ``theta`` (which may win on doc id) is always scored. The result is therefore the same
top-k as brute force over the quantized weights, ties included.

Approximate mode (:func:`impact_topk_approx`), Seismic's two knobs:

* ``query_cut``: each query keeps only its ``query_cut`` heaviest terms (largest query weight, ties by position;
  in-vocabulary terms with postings only) and drops the others, as Seismic visits only the posting lists of the
  query's top ``query_cut`` components. Scores are then the dot products with the truncated query (the dropped
  terms do not count), and the search over the truncated query is exact unless ``heap_factor`` says otherwise.
  (Seismic rescores its candidates with the full query through a forward index; this index has none.)
* ``heap_factor`` (> 0): as in Seismic (``PostingList::search``: skip a block when
  ``heap.len() == k && dot < heap_factor * heap.peek()``), a list prefix, block interval or candidate is evaluated
  only if its upper bound is at least ``heap_factor * theta``; i.e. every ``< theta`` test above becomes
  ``< heap_factor * theta``. ``heap_factor == 1`` is exact; ``< 1`` prunes less (still exact here, since the block
  maxima are true bounds, unlike Seismic's lossy summaries); ``> 1`` prunes more and may miss hits (the scores
  returned stay exact for the, possibly truncated, query).

With ``query_cut=None`` and ``heap_factor=1.0`` the approximate kernel runs the exact algorithm.
"""
from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np
from numba import prange

from hylex.kernels.topk import (
    MISSING_ID,
    MISSING_SCORE,
    _heap_drain,
    _heap_push,
    as_array,
    check_count,
    check_indptr,
    check_k,
    check_live,
    check_post_docs,
    check_queries,
    jit,
    select_topk_ref,
)

_INT32_MAX = int(np.iinfo(np.int32).max)
_IMPACT_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))
_BAD_DOCS = "docs must hold doc ids in [0, n_docs={n_docs})"


# ---------------------------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------------------------


def _check_uint(name: str, a: Any) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 1 or a.dtype not in _IMPACT_DTYPES:
        raise ValueError(f"{name} must be a 1-D uint8 or uint16 array, got {a.dtype} {a.shape}")
    return np.ascontiguousarray(a)


def _prepare(q_indptr, q_terms, q_weights, indptr, docs, impacts, block_indptr, block_max, block_first,
             block_last, scale, block_size, n_docs, k, live):
    """Validate and convert the inputs of the kernels; raise ValueError on bad input."""
    k = check_k(k)
    n_docs = check_count("n_docs", n_docs, upper=_INT32_MAX)
    q_indptr, q_terms, q_weights = check_queries(q_indptr, q_terms, q_weights)

    indptr = as_array("indptr", indptr, "i", 1, np.int64)
    docs = check_post_docs(docs, n_docs, "docs")
    impacts = _check_uint("impacts", impacts)
    if impacts.shape[0] != docs.shape[0]:
        raise ValueError(f"impacts and docs must have the same length, got {impacts.shape[0]} and {docs.shape[0]}")
    check_indptr("indptr", indptr, docs.shape[0])

    block_indptr = as_array("block_indptr", block_indptr, "i", 1, np.int64)
    block_max = _check_uint("block_max", block_max)
    if block_max.dtype != impacts.dtype:
        raise ValueError(f"block_max must have the dtype of impacts ({impacts.dtype}), got {block_max.dtype}")
    block_first = as_array("block_first", block_first, "i", 1, np.int32)
    block_last = as_array("block_last", block_last, "i", 1, np.int32)
    nb = block_max.shape[0]
    if block_first.shape[0] != nb or block_last.shape[0] != nb:
        raise ValueError(f"block_first and block_last must have the length of block_max ({nb}), got "
                         f"{block_first.shape[0]} and {block_last.shape[0]}")
    if block_indptr.shape[0] != indptr.shape[0]:
        raise ValueError(f"block_indptr must have the length of indptr ({indptr.shape[0]}), got "
                         f"{block_indptr.shape[0]}")
    check_indptr("block_indptr", block_indptr, nb)
    if isinstance(block_size, (bool, np.bool_)) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"block_size must be an integer >= 1, got {block_size!r}")
    block_size = int(block_size)
    if not np.array_equal(np.diff(block_indptr), -(-np.diff(indptr) // block_size)):
        raise ValueError("block_indptr must give each term ceil(postings / block_size) blocks")
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, (int, float, np.integer, np.floating)):
        raise ValueError(f"scale must be a number, got {scale!r}")
    scale = float(np.float32(scale))
    if not (math.isfinite(scale) and scale >= 0):
        raise ValueError(f"scale must be finite and >= 0, got {scale}")

    live = check_live(live, n_docs)
    return (q_indptr, q_terms, q_weights, indptr, docs, impacts, block_indptr, block_max, block_first, block_last,
            scale, block_size, n_docs, k, live)


def _check_approx(query_cut: Any, heap_factor: Any) -> tuple[int, float]:
    if query_cut is not None and (isinstance(query_cut, (bool, np.bool_)) or
                                  not isinstance(query_cut, (int, np.integer)) or query_cut < 1):
        raise ValueError(f"query_cut must be None or an integer >= 1, got {query_cut!r}")
    if isinstance(heap_factor, (bool, np.bool_)) or not isinstance(heap_factor, (int, float, np.integer, np.floating)):
        raise ValueError(f"heap_factor must be a number > 0, got {heap_factor!r}")
    heap_factor = float(heap_factor)
    if not (math.isfinite(heap_factor) and heap_factor > 0):
        raise ValueError(f"heap_factor must be finite and > 0, got {heap_factor}")
    return (-1 if query_cut is None else int(query_cut)), heap_factor


def _cut_queries(q_indptr, q_terms, q_weights, indptr, query_cut):
    """Keep, per query, only its ``query_cut`` heaviest usable terms (in the vocabulary, with postings; largest
    weight first, ties by position), in their original order. Returns the new ragged arrays."""
    nq = q_indptr.shape[0] - 1
    total = q_terms.shape[0]
    n_terms = indptr.shape[0] - 1
    qid = np.repeat(np.arange(nq, dtype=np.int64), np.diff(q_indptr))
    usable = q_terms < n_terms
    t = q_terms[usable]
    usable[usable] = indptr[t + 1] > indptr[t]
    order = np.lexsort((np.arange(total), -q_weights, ~usable, qid))  # per query: usable, heaviest, first
    rank = np.arange(total, dtype=np.int64) - q_indptr[qid[order]]
    keep = np.zeros(total, dtype=bool)
    keep[order] = (rank < query_cut) & usable[order]
    new_indptr = np.zeros(nq + 1, dtype=np.int64)
    np.cumsum(np.bincount(qid[keep], minlength=nq), out=new_indptr[1:])
    return new_indptr, q_terms[keep], q_weights[keep]


# ---------------------------------------------------------------------------------------------------------
# reference
# ---------------------------------------------------------------------------------------------------------


def impact_topk_ref(q_indptr: Any, q_terms: Any, q_weights: Any, indptr: Any, docs: Any, impacts: Any,
                    block_indptr: Any, block_max: Any, block_first: Any, block_last: Any, scale: float,
                    block_size: int, n_docs: int, k: int, live: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Plain-NumPy reference of :func:`impact_topk_exact`: brute force over the dequantized postings (one dense
    accumulator and one sort per query; the block arrays are validated but not used)."""
    (q_indptr, q_terms, q_weights, indptr, docs, impacts, block_indptr, block_max, block_first, block_last, scale,
     block_size, n_docs, k, live) = _prepare(q_indptr, q_terms, q_weights, indptr, docs, impacts, block_indptr,
                                             block_max, block_first, block_last, scale, block_size, n_docs, k, live)
    if docs.size and (docs.min() < 0 or docs.max() >= n_docs):
        raise ValueError(_BAD_DOCS.format(n_docs=n_docs))
    weights = impacts.astype(np.float32) * np.float32(scale)
    nq = q_indptr.shape[0] - 1
    n_terms = indptr.shape[0] - 1
    D = np.empty((nq, k), dtype=np.float32)
    I = np.empty((nq, k), dtype=np.int64)
    for q in range(nq):
        acc = np.zeros(n_docs, dtype=np.float32)
        for j in range(q_indptr[q], q_indptr[q + 1]):
            t = q_terms[j]
            if t >= n_terms:
                continue
            lo, hi = indptr[t], indptr[t + 1]
            np.add.at(acc, docs[lo:hi], q_weights[j] * weights[lo:hi])  # float32, in query term order
        hit = acc > 0
        if live is not None:
            hit &= live != 0
        rows = np.flatnonzero(hit)
        D[q], I[q] = select_topk_ref(acc[rows], rows, k)
    return D, I


# ---------------------------------------------------------------------------------------------------------
# numba kernel
# ---------------------------------------------------------------------------------------------------------


def _seek(docs, block_last, pos, bp, p_lo, p_end, b_lo, b_end, block_size, i, target):
    """Move cursor ``i`` to its first posting with doc >= ``target``: block by block, then inside one block."""
    p = pos[i]
    if p >= p_end[i] or docs[p] >= target:
        return
    b = bp[i]
    be = b_end[i]
    while b < be and block_last[b] < target:
        b += 1
    bp[i] = b
    if b == be:
        pos[i] = p_end[i]
        return
    start = p_lo[i] + (b - b_lo[i]) * block_size
    if p < start:
        p = start
    pe = p_end[i]
    while p < pe and docs[p] < target:
        p += 1
    pos[i] = p


def _impact_topk_kernel(q_indptr, q_terms, q_weights, indptr, docs, impacts, block_indptr, block_max,
                        block_first, block_last, scale, block_size, n_docs, k, live, use_live, heap_factor,
                        max_m, n_chunks, bad, out_D, out_I):
    """numba kernel (block-max MaxScore, see the module docstring); ``out_D``/``out_I`` come prefilled with
    padding, ``bad`` uint8 (n_chunks,) zeroed. Queries are dealt round-robin to ``n_chunks`` chunks (one per
    thread), each allocating its per-term buffers (``max_m`` = most terms of one query) once."""
    nq = q_indptr.shape[0] - 1
    n_terms = indptr.shape[0] - 1
    scale32 = np.float32(scale)
    scale64 = np.float64(scale32)
    end_doc = np.int64(1) << np.int64(62)
    for c in prange(n_chunks):
        e_w = np.empty(max_m, dtype=np.float32)
        e_w64 = np.empty(max_m, dtype=np.float64)
        e_ub = np.empty(max_m, dtype=np.float64)
        pos = np.empty(max_m, dtype=np.int64)
        p_lo = np.empty(max_m, dtype=np.int64)
        p_end = np.empty(max_m, dtype=np.int64)
        bp = np.empty(max_m, dtype=np.int64)
        b_lo = np.empty(max_m, dtype=np.int64)
        b_end = np.empty(max_m, dtype=np.int64)
        perm = np.empty(max_m, dtype=np.int64)
        cum = np.empty(max_m, dtype=np.float64)
        iub = np.zeros(max_m, dtype=np.float64)
        has = np.zeros(max_m, dtype=np.uint8)
        contrib = np.zeros(max_m, dtype=np.float32)
        heap_s = np.empty(k, dtype=np.float32)
        heap_d = np.empty(k, dtype=np.int64)
        for q in range(c, nq, n_chunks):
            # cursors, in query term order (the order scores are summed in)
            m = 0
            abs_sum = 0.0
            for j in range(q_indptr[q], q_indptr[q + 1]):
                t = q_terms[j]
                if t >= n_terms:
                    continue
                lo = indptr[t]
                hi = indptr[t + 1]
                if hi <= lo:
                    continue
                bl = block_indptr[t]
                bh = block_indptr[t + 1]
                mx = np.int64(0)
                for b in range(bl, bh):
                    if block_max[b] > mx:
                        mx = np.int64(block_max[b])
                w = q_weights[j]
                w64 = np.float64(w)
                u = w64 * (np.float64(mx) * scale64)
                e_w[m] = w
                e_w64[m] = w64
                e_ub[m] = u if u > 0.0 else 0.0
                abs_sum += abs(u)
                pos[m] = lo
                p_lo[m] = lo
                p_end[m] = hi
                bp[m] = bl
                b_lo[m] = bl
                b_end[m] = bh
                m += 1
            if m == 0:
                continue
            # cursors by upper bound ascending (insertion sort: m is small)
            for i in range(m):
                perm[i] = i
            for a in range(1, m):
                x = perm[a]
                b = a - 1
                while b >= 0 and e_ub[perm[b]] > e_ub[x]:
                    perm[b + 1] = perm[b]
                    b -= 1
                perm[b + 1] = x
            run = 0.0
            for r in range(m):
                run += e_ub[perm[r]]
                cum[r] = run
            margin = (m + 4) * (2.0 ** -22) * abs_sum
            ne = 0  # perm[:ne] is the non-essential prefix, perm[ne:] the essential lists
            size = 0
            full = False
            lim = 0.0  # heap_factor * theta, once the heap is full
            bsum = 0.0  # block-interval bound, valid for docs in [d, upto] (cached across candidates)
            upto = np.int64(-1)
            while True:
                if full:
                    while ne < m and cum[ne] + margin < lim:
                        ne += 1
                if ne >= m:
                    break
                d = end_doc
                for r in range(ne, m):
                    i = perm[r]
                    if pos[i] < p_end[i]:
                        x = np.int64(docs[pos[i]])
                        if x < d:
                            d = x
                if d == end_doc:
                    break
                if d < 0 or d >= n_docs:  # bad index: report instead of reading out of bounds
                    bad[c] = 1
                    break
                if use_live and live[d] == 0:
                    for r in range(ne, m):
                        i = perm[r]
                        if pos[i] < p_end[i] and docs[pos[i]] == d:
                            pos[i] += 1
                    continue
                if full:
                    if d > upto:
                        # block-interval bound at d: the same for every doc in [d, upto]
                        bsum = 0.0
                        upto = end_doc
                        for i in range(m):
                            b = bp[i]
                            be = b_end[i]
                            while b < be and block_last[b] < d:
                                b += 1
                            bp[i] = b
                            if b == be:
                                u = 0.0
                                e = end_doc
                            elif block_first[b] <= d:
                                u = e_w64[i] * (np.float64(block_max[b]) * scale64)
                                if u < 0.0:
                                    u = 0.0
                                e = np.int64(block_last[b])
                            else:
                                u = 0.0
                                e = np.int64(block_first[b]) - 1
                            iub[i] = u
                            bsum += u
                            if e < upto:
                                upto = e
                    if bsum + margin < lim:
                        for r in range(ne, m):
                            _seek(docs, block_last, pos, bp, p_lo, p_end, b_lo, b_end, block_size, perm[r], upto + 1)
                        continue
                # exact contributions of the essential cursors at d
                for i in range(m):
                    has[i] = 0
                s64 = 0.0
                rem = 0.0
                for r in range(m):
                    i = perm[r]
                    if r >= ne:
                        p = pos[i]
                        if p < p_end[i] and docs[p] == d:
                            cv = e_w[i] * (np.float32(impacts[p]) * scale32)
                            contrib[i] = cv
                            has[i] = 1
                            s64 += np.float64(cv)
                    elif full:
                        rem += iub[i]
                # the non-essential cursors, largest bound first, with early exit
                pruned = full and s64 + rem + margin < lim
                if not pruned:
                    for r in range(ne - 1, -1, -1):
                        i = perm[r]
                        _seek(docs, block_last, pos, bp, p_lo, p_end, b_lo, b_end, block_size, i, d)
                        p = pos[i]
                        if p < p_end[i] and docs[p] == d:
                            cv = e_w[i] * (np.float32(impacts[p]) * scale32)
                            contrib[i] = cv
                            has[i] = 1
                            s64 += np.float64(cv)
                        if full:
                            rem -= iub[i]
                            if s64 + rem + margin < lim:
                                pruned = True
                                break
                if not pruned:
                    s = np.float32(0.0)
                    for i in range(m):
                        if has[i] != 0:
                            s += contrib[i]
                    if s > 0:
                        size = _heap_push(heap_s, heap_d, size, k, s, d)
                        if size == k:
                            full = True
                            lim = heap_factor * np.float64(heap_s[0])
                for r in range(ne, m):
                    i = perm[r]
                    if pos[i] < p_end[i] and docs[pos[i]] == d:
                        pos[i] += 1
            _heap_drain(heap_s, heap_d, size, out_D[q], out_I[q])


def _search(q_indptr, q_terms, q_weights, indptr, docs, impacts, block_indptr, block_max, block_first, block_last,
            scale, block_size, n_docs, k, live, query_cut, heap_factor):
    (q_indptr, q_terms, q_weights, indptr, docs, impacts, block_indptr, block_max, block_first, block_last, scale,
     block_size, n_docs, k, live) = _prepare(q_indptr, q_terms, q_weights, indptr, docs, impacts, block_indptr,
                                             block_max, block_first, block_last, scale, block_size, n_docs, k, live)
    nq = q_indptr.shape[0] - 1
    D = np.full((nq, k), MISSING_SCORE, dtype=np.float32)
    I = np.full((nq, k), MISSING_ID, dtype=np.int64)
    if nq == 0 or n_docs == 0 or q_terms.shape[0] == 0:
        return D, I
    if query_cut > 0:
        q_indptr, q_terms, q_weights = _cut_queries(q_indptr, q_terms, q_weights, indptr, query_cut)
    max_m = int(np.diff(q_indptr).max())
    if max_m == 0:
        return D, I
    use_live = live is not None
    live_arr = live if use_live else np.ones(1, dtype=np.uint8)
    n_chunks = min(nq, numba.get_num_threads())
    bad = np.zeros(n_chunks, dtype=np.uint8)
    _impact_topk_nb(q_indptr, q_terms, q_weights, indptr, docs, impacts, block_indptr, block_max,
                    block_first, block_last, scale, block_size, n_docs, k, live_arr, use_live, heap_factor, max_m,
                    n_chunks, bad, D, I)
    if bad.any():
        raise ValueError(_BAD_DOCS.format(n_docs=n_docs))
    return D, I


def impact_topk_exact(q_indptr: Any, q_terms: Any, q_weights: Any, indptr: Any, docs: Any, impacts: Any,
                      block_indptr: Any, block_max: Any, block_first: Any, block_last: Any, scale: float,
                      block_size: int, n_docs: int, k: int, live: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k docs per query by dot product over an impact index (block-max MaxScore; numba, parallel over
    queries). See the module docstring for the layout and the algorithm.

    Args:
        q_indptr, q_terms, q_weights: ragged queries (int64 (nq+1,), int (total,) >= 0, float32 finite).
        indptr, docs, impacts, block_indptr, block_max, block_first, block_last, scale, block_size, n_docs: the
            index (``ImpactIndex.kernel_args()``).
        k: hits per query, >= 1.
        live: optional bool/uint8 (n_docs,); docs with ``live[d] == 0`` are never returned.

    Returns:
        D float32 (nq, k), I int64 (nq, k): the same as :func:`impact_topk_ref` (brute force over the dequantized
        weights), bit for bit.
    """
    return _search(q_indptr, q_terms, q_weights, indptr, docs, impacts, block_indptr, block_max, block_first,
                   block_last, scale, block_size, n_docs, k, live, -1, 1.0)


def impact_topk_approx(q_indptr: Any, q_terms: Any, q_weights: Any, indptr: Any, docs: Any, impacts: Any,
                       block_indptr: Any, block_max: Any, block_first: Any, block_last: Any, scale: float,
                       block_size: int, n_docs: int, k: int, live: Any = None, *, query_cut: int | None = None,
                       heap_factor: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Approximate top-k (Seismic's knobs) over an impact index; arguments as :func:`impact_topk_exact`.

    Args:
        query_cut: None (all terms) or >= 1: keep only the ``query_cut`` heaviest terms of each query (the
            dropped terms count neither for retrieval nor for the scores).
        heap_factor: > 0: a block interval, list or candidate is evaluated only if its upper bound is
            ``>= heap_factor * theta`` (theta = the current k-th score, once k hits are held). 1 is exact,
            < 1 prunes less, > 1 prunes more.

    Returns:
        D float32 (nq, k), I int64 (nq, k) as :func:`impact_topk_exact`, scored with the (truncated) query: with
        ``heap_factor`` > 1 hits may be missing, never mis-scored. Equal to :func:`impact_topk_exact` with
        ``query_cut=None, heap_factor=1.0`` (and to it on the truncated query with ``heap_factor=1.0``).
    """
    query_cut, heap_factor = _check_approx(query_cut, heap_factor)
    return _search(q_indptr, q_terms, q_weights, indptr, docs, impacts, block_indptr, block_max, block_first,
                   block_last, scale, block_size, n_docs, k, live, query_cut, heap_factor)


# ---------------------------------------------------------------------------------------------------------
# compilation
# ---------------------------------------------------------------------------------------------------------

_seek = jit(_seek)
_impact_topk_nb = jit(_impact_topk_kernel, parallel=True)
